// The serial-console text of each job's VM as its host last reported it,
// for the customer's console page (docs/console.md "Serial console").
//
// The host already holds the guest's serial output in plaintext (it runs
// qemu); relaying its tail to the portal shows the portal nothing the host
// could not, and nothing but what the guest chose to print. Kept in memory
// (bounded per job and in jobs) and, with a store, as one object per job
// under "console-logs/" in the portal's object store, so a portal restart
// keeps the text the host relayed last.
#ifndef VMSEAL_CSP_CONSOLE_LOGS_H_
#define VMSEAL_CSP_CONSOLE_LOGS_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>

#include "base/status.h"
#include "store/object_store.h"

namespace vmseal::csp {

// Thread-safe.
class ConsoleLogs {
 public:
  // `store` (not owned, may be null: memory only) keeps each job's text
  // across restarts.
  explicit ConsoleLogs(store::ObjectStore* store = nullptr) : store_(store) {}

  // The most text kept per job (the tail), and the most jobs (the oldest
  // reported is forgotten first).
  static constexpr size_t kMaxTextBytes = 64 << 10;
  static constexpr size_t kMaxJobs = 4096;

  struct Entry {
    std::string text;
    int64_t updated_unix = 0;
  };

  // Replaces the job's text with `text` (its last kMaxTextBytes); with a
  // store, written there first (an error leaves the previous text).
  Status Put(const std::string& job_id, std::string text, int64_t now_unix);
  // The job's text (from the store when not in memory); NOT_FOUND when its
  // host reported none.
  StatusOr<Entry> Get(const std::string& job_id) const;
  // Forgets a job (its VM was deleted), in the store too.
  void Erase(const std::string& job_id);
  // Grows with every Put and Erase on this replica (one atomic load), so a
  // live view need not Get while it stays the same.
  uint64_t Generation() const { return generation_.load(std::memory_order_acquire); }

  // The store key of a job's text.
  static std::string KeyFor(const std::string& job_id) { return "console-logs/" + job_id; }

 private:
  void Remember(const std::string& job_id, Entry e) const;  // mu_ held

  store::ObjectStore* const store_;
  mutable std::mutex mu_;
  std::atomic<uint64_t> generation_{0};
  mutable std::map<std::string, Entry> logs_;
  mutable std::deque<std::string> order_;  // first reported first
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_CONSOLE_LOGS_H_
