// Rate limits for anonymous and abusive callers (docs/operations.md, "Rate
// limits"): a token bucket per key (client address, customer, login id) and
// an exponential back-off after failures (password guessing). Both hold a
// bounded number of keys, so a flood of distinct keys costs bounded memory,
// and both take the time from a caller-supplied clock so tests are exact.
//
// Thread-safe.
#ifndef VMSEAL_RATE_LIMIT_RATE_LIMIT_H_
#define VMSEAL_RATE_LIMIT_RATE_LIMIT_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace vmseal::rate_limit {

// Monotonic seconds (fractional). Default: std::chrono::steady_clock.
using Clock = std::function<double()>;
Clock SteadyClock();

// The answer to "may this caller proceed now?".
struct Decision {
  bool allowed = true;
  // When refused: whole seconds until a retry can succeed (>= 1), for the
  // Retry-After header.
  int64_t retry_after_seconds = 0;
};

// A token bucket per key: `burst` requests at once, refilled at `per_second`.
// A rate of 0 disables the limit (every request is allowed).
class KeyedTokenBucket {
 public:
  struct Options {
    double per_second = 0;
    double burst = 1;
    // Keys tracked at once. When full, the least recently used key is
    // forgotten (it starts again with a full bucket): an attacker cycling
    // through more keys than this gains at most one extra burst per cycle,
    // which is why there is also a global bucket in front of per-key ones.
    size_t max_keys = 65536;
  };
  explicit KeyedTokenBucket(Options options, Clock clock = SteadyClock());

  // Takes one token from `key`'s bucket if there is one.
  Decision Take(const std::string& key);
  // Keys currently tracked.
  size_t size() const;
  const Options& options() const { return options_; }

 private:
  struct Bucket {
    double tokens;
    double updated;
    std::list<std::string>::iterator lru;
  };
  const Options options_;
  const Clock clock_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_;
  std::list<std::string> lru_;  // front: most recently used
};

// Failures per key with exponential back-off: after `free_failures`
// failures, each further failure blocks the key for
// base_seconds * 2^(n - free_failures - 1), capped at max_seconds. A
// success clears the key. Keys are forgotten when their block has expired
// and `forget_after_seconds` have passed since their last failure, or when
// `max_keys` are tracked (least recently failed first).
class FailureBackoff {
 public:
  struct Options {
    int free_failures = 5;
    double base_seconds = 1;
    double max_seconds = 900;
    double forget_after_seconds = 3600;
    size_t max_keys = 65536;
  };
  explicit FailureBackoff(Options options, Clock clock = SteadyClock());

  // Whether `key` may try now (refused while it is blocked).
  Decision Check(const std::string& key) const;
  void RecordFailure(const std::string& key);
  void RecordSuccess(const std::string& key);
  size_t size() const;
  const Options& options() const { return options_; }

 private:
  struct Entry {
    int failures = 0;
    double blocked_until = 0;
    double last_failure = 0;
    std::list<std::string>::iterator lru;
  };
  void ExpireLocked(double now);
  const Options options_;
  const Clock clock_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // front: most recent failure
};

// At most `max` holders of an expensive resource at once (e.g. Argon2id
// hashes, 64 MiB each): a bound on memory and CPU that rates alone do not
// give when many addresses arrive together. TryAcquireFor waits at most
// `seconds` for a place. `max` 0: no limit. Thread-safe.
class ConcurrencyLimit {
 public:
  // A held place; given back when destroyed. Move-only.
  class Ticket {
   public:
    Ticket(Ticket&& other) noexcept : limit_(std::exchange(other.limit_, nullptr)) {}
    Ticket& operator=(Ticket&&) = delete;
    Ticket(const Ticket&) = delete;
    ~Ticket() {
      if (limit_ != nullptr) limit_->Release();
    }

   private:
    friend class ConcurrencyLimit;
    explicit Ticket(ConcurrencyLimit* limit) : limit_(limit) {}
    ConcurrencyLimit* limit_;
  };

  explicit ConcurrencyLimit(int64_t max) : max_(max) {}
  ConcurrencyLimit(const ConcurrencyLimit&) = delete;
  ConcurrencyLimit& operator=(const ConcurrencyLimit&) = delete;

  // A place, or nullopt if none freed within `seconds` (counted as refused).
  std::optional<Ticket> TryAcquireFor(double seconds);

  int64_t max() const { return max_; }
  int64_t in_use() const;
  // The most held at once so far, and the refusals so far.
  int64_t peak() const;
  uint64_t refused() const;

 private:
  void Release();

  const int64_t max_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  int64_t in_use_ = 0;
  int64_t peak_ = 0;
  uint64_t refused_ = 0;
};

// The one spelling of a refusal: "rate_limited: <what>; retry in N s". A
// RESOURCE_EXHAUSTED status with this message is answered 429, and the HTTP
// adapters set Retry-After from it (RetryAfterOf).
std::string RateLimitedMessage(std::string_view what, int64_t retry_after_seconds);
// N of "...; retry in N s" at the end of `message`; 0 if it has none.
int64_t RetryAfterOf(std::string_view message);

}  // namespace vmseal::rate_limit

#endif  // VMSEAL_RATE_LIMIT_RATE_LIMIT_H_
