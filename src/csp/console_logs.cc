#include "csp/console_logs.h"

#include <algorithm>
#include <cstdlib>

#include "base/env.h"

namespace vmseal::csp {
namespace {

// The stored form: "<updated_unix>\n" then the text.
std::string Encode(const ConsoleLogs::Entry& e) { return std::to_string(e.updated_unix) + "\n" + e.text; }

StatusOr<ConsoleLogs::Entry> Decode(const std::string& bytes) {
  const size_t nl = bytes.find('\n');
  if (nl == std::string::npos || nl == 0 || nl > 20) return DataLossError("console log object is malformed");
  char* end = nullptr;
  const long long t = std::strtoll(bytes.c_str(), &end, 10);
  if (end != bytes.c_str() + nl) return DataLossError("console log object is malformed");
  return ConsoleLogs::Entry{bytes.substr(nl + 1), t};
}

}  // namespace

void ConsoleLogs::Remember(const std::string& job_id, Entry e) const {
  auto [it, inserted] = logs_.try_emplace(job_id);
  it->second = std::move(e);
  if (!inserted) return;
  order_.push_back(job_id);
  while (logs_.size() > kMaxJobs && !order_.empty()) {
    logs_.erase(order_.front());
    order_.pop_front();
  }
}

Status ConsoleLogs::Put(const std::string& job_id, std::string text, int64_t now_unix) {
  if (text.size() > kMaxTextBytes) text.erase(0, text.size() - kMaxTextBytes);
  Entry e{std::move(text), now_unix};
  if (store_ != nullptr) {
    const std::string bytes = Encode(e);
    store::StringReader r(bytes);
    RETURN_IF_ERROR(store_->Put(KeyFor(job_id), r, {.max_size_bytes = kMaxTextBytes + 32}).status());
  }
  std::lock_guard<std::mutex> lock(mu_);
  Remember(job_id, std::move(e));
  generation_.fetch_add(1, std::memory_order_acq_rel);
  return OkStatus();
}

StatusOr<ConsoleLogs::Entry> ConsoleLogs::Get(const std::string& job_id) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = logs_.find(job_id);
    if (it != logs_.end()) return it->second;
  }
  if (store_ == nullptr) return NotFoundError("no console output reported for this VM yet");
  auto file = store_->Get(KeyFor(job_id));
  if (!file.ok()) {
    if (file.status().code() == StatusCode::kNotFound) return NotFoundError("no console output reported for this VM yet");
    return file.status();
  }
  ASSIGN_OR_RETURN(uint64_t size, (*file)->Size());
  if (size > kMaxTextBytes + 32) return DataLossError("console log object is too large");
  std::string bytes(static_cast<size_t>(size), '\0');
  ASSIGN_OR_RETURN(size_t n, (*file)->Read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(bytes.data()), bytes.size())));
  bytes.resize(n);
  ASSIGN_OR_RETURN(Entry e, Decode(bytes));
  std::lock_guard<std::mutex> lock(mu_);
  // A Put that raced with this read wins.
  auto it = logs_.find(job_id);
  if (it != logs_.end()) return it->second;
  Remember(job_id, e);
  return e;
}

void ConsoleLogs::Erase(const std::string& job_id) {
  if (store_ != nullptr) (void)store_->Delete(KeyFor(job_id));
  std::lock_guard<std::mutex> lock(mu_);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  if (logs_.erase(job_id) == 0) return;
  order_.erase(std::remove(order_.begin(), order_.end(), job_id), order_.end());
}

}  // namespace vmseal::csp
