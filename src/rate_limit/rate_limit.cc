#include "rate_limit/rate_limit.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace vmseal::rate_limit {
namespace {

int64_t CeilSeconds(double s) { return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(s))); }

}  // namespace

Clock SteadyClock() {
  return [] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  };
}

KeyedTokenBucket::KeyedTokenBucket(Options options, Clock clock)
    : options_(options), clock_(std::move(clock)) {}

Decision KeyedTokenBucket::Take(const std::string& key) {
  if (options_.per_second <= 0) return {};
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = buckets_.find(key);
  if (it == buckets_.end()) {
    if (buckets_.size() >= std::max<size_t>(1, options_.max_keys)) {
      buckets_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(key);
    it = buckets_.emplace(key, Bucket{options_.burst, now, lru_.begin()}).first;
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  Bucket& b = it->second;
  b.tokens = std::min(options_.burst, b.tokens + (now - b.updated) * options_.per_second);
  b.updated = now;
  if (b.tokens >= 1) {
    b.tokens -= 1;
    return {};
  }
  return {false, CeilSeconds((1 - b.tokens) / options_.per_second)};
}

size_t KeyedTokenBucket::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buckets_.size();
}

FailureBackoff::FailureBackoff(Options options, Clock clock)
    : options_(options), clock_(std::move(clock)) {}

Decision FailureBackoff::Check(const std::string& key) const {
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end() || it->second.blocked_until <= now) return {};
  return {false, CeilSeconds(it->second.blocked_until - now)};
}

void FailureBackoff::ExpireLocked(double now) {
  // The least recently failed entries are at the back.
  while (!lru_.empty()) {
    const Entry& e = entries_.at(lru_.back());
    if (e.blocked_until > now || now - e.last_failure < options_.forget_after_seconds) break;
    entries_.erase(lru_.back());
    lru_.pop_back();
  }
}

void FailureBackoff::RecordFailure(const std::string& key) {
  const double now = clock_();
  std::lock_guard<std::mutex> lock(mu_);
  ExpireLocked(now);
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= std::max<size_t>(1, options_.max_keys)) {
      entries_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(key);
    it = entries_.emplace(key, Entry{}).first;
    it->second.lru = lru_.begin();
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  Entry& e = it->second;
  e.failures += 1;
  e.last_failure = now;
  const int over = e.failures - options_.free_failures;
  if (over > 0) {
    const double block =
        std::min(options_.max_seconds, options_.base_seconds * std::ldexp(1.0, std::min(over - 1, 30)));
    e.blocked_until = now + block;
  }
}

void FailureBackoff::RecordSuccess(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  lru_.erase(it->second.lru);
  entries_.erase(it);
}

size_t FailureBackoff::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

std::optional<ConcurrencyLimit::Ticket> ConcurrencyLimit::TryAcquireFor(double seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  if (max_ > 0) {
    const auto wait = std::chrono::duration<double>(std::max(0.0, seconds));
    if (!freed_.wait_for(lock, wait, [this] { return in_use_ < max_; })) {
      ++refused_;
      return std::nullopt;
    }
  }
  ++in_use_;
  peak_ = std::max(peak_, in_use_);
  return Ticket(this);
}

void ConcurrencyLimit::Release() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
  }
  freed_.notify_one();
}

int64_t ConcurrencyLimit::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

int64_t ConcurrencyLimit::peak() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

uint64_t ConcurrencyLimit::refused() const {
  std::lock_guard<std::mutex> lock(mu_);
  return refused_;
}

std::string RateLimitedMessage(std::string_view what, int64_t retry_after_seconds) {
  return "rate_limited: " + std::string(what) + "; retry in " +
         std::to_string(std::max<int64_t>(1, retry_after_seconds)) + " s";
}

int64_t RetryAfterOf(std::string_view message) {
  constexpr std::string_view kMark = "; retry in ";
  const size_t at = message.rfind(kMark);
  if (at == std::string_view::npos || !message.ends_with(" s")) return 0;
  std::string_view digits = message.substr(at + kMark.size());
  digits.remove_suffix(2);
  if (digits.empty() || digits.size() > 9) return 0;
  int64_t n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + (c - '0');
  }
  return n;
}

}  // namespace vmseal::rate_limit
