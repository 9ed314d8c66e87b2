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
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "csp/portal_db.h"

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
  // Optimistic concurrency between portal replicas sharing one store: the
  // version this record was read at (0: not stored yet). PutJob writes only
  // over that version.
  int64_t version = 0;
  // Set by the store: increases with every write to any job (commit order),
  // so that a replica can read what changed since it last looked.
  int64_t seq = 0;
  // A placement's compare-and-set on its host's slots, checked in the
  // write's transaction (0: no check): the write is refused with
  // RESOURCE_EXHAUSTED "no_slot" (nothing written) unless fewer than
  // `slot_capacity` other stored jobs on `host_id` are in a slot-holding
  // state (kSlotHoldingStatesSql). Not stored.
  int64_t slot_capacity = 0;
};

// The job states (JobStateName) in which a job holds a slot of its host: on
// the host (placed .. running), or stopping/deleting until the host reports
// the end (docs/format/portal-state.md §2). jobs.cc checks that it matches.
inline constexpr char kSlotHoldingStatesSql[] =
    "('placed','fetching','attesting','decrypting','running','stopping','deleting')";

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

  // Writes the job if its stored version is still `job.version` (0: the
  // job must not exist yet) and returns the new version. ABORTED "conflict"
  // (and nothing written) when another writer changed it meanwhile.
  virtual StatusOr<int64_t> PutJob(const StoredJob& job) = 0;
  // The jobs written after `seq` (0: every job), in seq order.
  virtual StatusOr<std::vector<StoredJob>> LoadJobsSince(int64_t seq) = 0;

  // Inserts or replaces the host `host.host_id`.
  virtual Status PutHost(const StoredHost& host) = 0;
  // Every stored host, by host id.
  virtual StatusOr<std::vector<StoredHost>> LoadHosts() = 0;
};

// All of the portal's state in one database: SqlitePortalDb (default, one
// portal) or PgPortalDb (`--store postgres://...`, several replicas).
class PortalStore : public PortalDb, public StateStore {};

// Opens the store named by `url`: postgres:// or postgresql:// for
// PostgreSQL, else `sqlite_path` (the portal's data directory's portal.db).
// The URL may carry a password: it is never logged or echoed.
StatusOr<std::unique_ptr<PortalStore>> OpenPortalStore(const std::string& url,
                                                       const std::string& sqlite_path);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_STATE_STORE_H_
