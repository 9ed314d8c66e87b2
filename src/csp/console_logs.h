// The serial-console text of each job's VM as its host last reported it,
// for the customer's console page (docs/console.md "Serial console").
//
// The host already holds the guest's serial output in plaintext (it runs
// qemu); relaying its tail to the portal shows the portal nothing the host
// could not, and nothing but what the guest chose to print. Kept in memory
// only (a restart forgets it until the host reports again), bounded per job
// and in jobs.
#ifndef VMSEAL_CSP_CONSOLE_LOGS_H_
#define VMSEAL_CSP_CONSOLE_LOGS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "base/status.h"

namespace vmseal::csp {

// Thread-safe.
class ConsoleLogs {
 public:
  // The most text kept per job (the tail), and the most jobs (the oldest
  // reported is forgotten first).
  static constexpr size_t kMaxTextBytes = 64 << 10;
  static constexpr size_t kMaxJobs = 4096;

  struct Entry {
    std::string text;
    int64_t updated_unix = 0;
  };

  // Replaces the job's text with `text` (its last kMaxTextBytes).
  void Put(const std::string& job_id, std::string text, int64_t now_unix);
  // The job's text; NOT_FOUND when its host reported none.
  StatusOr<Entry> Get(const std::string& job_id) const;
  // Forgets a job (its VM was deleted).
  void Erase(const std::string& job_id);

 private:
  mutable std::mutex mu_;
  std::map<std::string, Entry> logs_;
  std::deque<std::string> order_;  // first reported first
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_CONSOLE_LOGS_H_
