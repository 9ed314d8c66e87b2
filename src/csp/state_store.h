// Durable state of the portal's job manager and host registry (issue 17):
// every job with its attempts, placements and lease, and every registered
// host, survive a restart (or a kill -9) of `vmseal csp serve`.
//
// The store keeps opaque records beside the few columns it indexes; the
// records' JSON is owned by jobs.cc and hosts.cc (docs/format/portal-state.md).
// SqlitePortalDb (sqlite_db.h) implements it in the portal database.
#ifndef VMSEAL_CSP_STATE_STORE_H_
#define VMSEAL_CSP_STATE_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::csp {

// One job as stored: indexed columns and the full record.
struct StoredJob {
  std::string job_id;
  std::string customer_id;
  // JobStateName of the job's state.
  std::string state;
  // The host of the current attempt ("" when none).
  std::string host_id;
  int64_t updated_unix = 0;
  // The job's record (JSON object), written and read by jobs.cc.
  std::string record_json;
};

// One registered host as stored.
struct StoredHost {
  std::string host_id;
  int64_t last_heartbeat_unix = 0;
  // The host's record (JSON object), written and read by hosts.cc.
  std::string record_json;
};

// Thread-safe. Each Put is one transaction: after it returns OK the record
// survives a crash of the process; after an error the stored record is the
// previous one.
class StateStore {
 public:
  virtual ~StateStore() = default;

  // Inserts or replaces the job `job.job_id`.
  virtual Status PutJob(const StoredJob& job) = 0;
  // Every stored job, by job id.
  virtual StatusOr<std::vector<StoredJob>> LoadJobs() = 0;

  // Inserts or replaces the host `host.host_id`.
  virtual Status PutHost(const StoredHost& host) = 0;
  // Every stored host, by host id.
  virtual StatusOr<std::vector<StoredHost>> LoadHosts() = 0;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_STATE_STORE_H_
