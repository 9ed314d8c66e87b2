// Live job status for the console (docs/console.md "Live status"): the
// server-sent event streams of GET /v1/jobs/{id}/events, without a store
// read per stream per poll.
//
// What a poll of one stream costs when nothing changed: three atomic loads
// (the job manager's change count, the console text's generation, the
// logout count). What changes are seen by:
//   - a change this replica makes to a job bumps JobManager::ChangeCount()
//     in-process: every stream sees it at its next poll;
//   - a change another replica made is in the store: the hub reads the
//     store's change counter (the jobs written since the last look, one
//     query) at most once per `store_sync_ms` for ALL its streams;
//   - the session is re-checked (a database read) at most every
//     `session_recheck_ms`, and at the next poll after any logout on this
//     replica;
//   - the relayed serial console is read again when this replica stored a
//     new text, and at most every `console_recheck_ms` otherwise (a host
//     may report to another replica).
#ifndef VMSEAL_CSP_JOB_EVENTS_H_
#define VMSEAL_CSP_JOB_EVENTS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "base/status.h"
#include "csp/accounts.h"
#include "csp/console_logs.h"
#include "csp/jobs.h"
#include "net/https_server.h"

namespace vmseal::csp {

// The job event streams of one portal replica: their caps and the one
// store read they share. Thread-safe; streams keep it alive.
class JobEventHub : public std::enable_shared_from_this<JobEventHub> {
 public:
  struct Options {
    // Streams open at once on this replica (beyond: UNAVAILABLE).
    int max_streams = 256;
    // Streams open at once per customer (beyond: RESOURCE_EXHAUSTED), so
    // one customer cannot take the replica's streams from the others.
    int max_streams_per_customer = 8;
    // How often the store is read for other replicas' job writes, once for
    // all streams, in milliseconds.
    int64_t store_sync_ms = 500;
    // A stream's session is checked again at least this often (ms), and at
    // once after a logout on this replica.
    int64_t session_recheck_ms = 5000;
    // A job's console text is read again at least this often (ms) without a
    // change on this replica.
    int64_t console_recheck_ms = 5000;
    // Monotonic milliseconds (tests inject a fake); default steady_clock.
    std::function<int64_t()> now_ms;
  };
  // The caller's principal, checked again now (a session lookup).
  using Who = std::function<StatusOr<Principal>()>;
  // The job as the stream's `job` event carries it (the API's JSON text).
  using Render = std::function<std::string(const Job&)>;

  // `jobs` must outlive the hub; `console_logs` and `accounts` may be null.
  static std::shared_ptr<JobEventHub> Create(Options options, JobManager* jobs,
                                             ConsoleLogs* console_logs, Accounts* accounts);

  // A stream of the job `job_id` of `who()`: NOT_FOUND for another
  // customer's job; RESOURCE_EXHAUSTED "too many event streams for this
  // account" or UNAVAILABLE "too many event streams" over the caps. The
  // stream's place is freed when it is destroyed.
  StatusOr<std::unique_ptr<net::EventStream>> Open(Who who, const std::string& job_id, Render render);

  // Streams open now, in all and of one customer.
  int open_streams() const;
  int open_streams_of(const std::string& customer_id) const;

  // The job change count after reading other replicas' writes if the last
  // read is store_sync_ms old (only one caller reads; the others go on).
  uint64_t Changes();

 private:
  class Stream;
  JobEventHub(Options options, JobManager* jobs, ConsoleLogs* console_logs, Accounts* accounts);
  int64_t NowMs() const;
  void Release(const std::string& customer_id);

  const Options options_;
  JobManager* const jobs_;
  ConsoleLogs* const console_logs_;
  Accounts* const accounts_;
  mutable std::mutex mu_;
  int open_ = 0;
  std::map<std::string, int> per_customer_;
  std::mutex sync_mu_;
  std::atomic<int64_t> last_sync_ms_{INT64_MIN / 2};
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_JOB_EVENTS_H_
