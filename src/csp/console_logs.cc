#include "csp/console_logs.h"

#include <algorithm>

namespace vmseal::csp {

void ConsoleLogs::Put(const std::string& job_id, std::string text, int64_t now_unix) {
  if (text.size() > kMaxTextBytes) text.erase(0, text.size() - kMaxTextBytes);
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, inserted] = logs_.try_emplace(job_id);
  it->second = Entry{std::move(text), now_unix};
  if (!inserted) return;
  order_.push_back(job_id);
  while (logs_.size() > kMaxJobs && !order_.empty()) {
    logs_.erase(order_.front());
    order_.pop_front();
  }
}

StatusOr<ConsoleLogs::Entry> ConsoleLogs::Get(const std::string& job_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = logs_.find(job_id);
  if (it == logs_.end()) return NotFoundError("no console output reported for this VM yet");
  return it->second;
}

void ConsoleLogs::Erase(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (logs_.erase(job_id) == 0) return;
  order_.erase(std::remove(order_.begin(), order_.end(), job_id), order_.end());
}

}  // namespace vmseal::csp
