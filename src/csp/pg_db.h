// The portal's state (PortalDb + StateStore) in PostgreSQL, so that several
// portal replicas share one database (`vmseal csp serve --store
// postgres://...`). Job writes are serialised by one transaction-scoped
// advisory lock, so the jobs' seq column increases in commit order
// (StateStore::LoadJobsSince never skips a write).
#ifndef VMSEAL_CSP_PG_DB_H_
#define VMSEAL_CSP_PG_DB_H_

#include <memory>
#include <mutex>
#include <string>

#include "csp/state_store.h"

struct pg_conn;

namespace vmseal::csp {

class PgPortalDb final : public PortalStore {
 public:
  // Connects to `url` and migrates the schema (one transaction, under an
  // advisory lock so that replicas starting together migrate once).
  // UNAVAILABLE when the server cannot be reached (the URL is not echoed).
  static StatusOr<std::unique_ptr<PgPortalDb>> Open(const std::string& url);
  ~PgPortalDb() override;

  Status InsertCustomer(const CustomerRecord& record) override;
  StatusOr<CustomerRecord> FindCustomerByLogin(const std::string& login_id) override;
  StatusOr<CustomerRecord> FindCustomerById(const std::string& customer_id) override;
  Status InsertSession(const SessionRecord& record) override;
  StatusOr<SessionRecord> FindSession(const std::string& token_sha256_hex) override;
  Status DeleteSession(const std::string& token_sha256_hex) override;
  StatusOr<int64_t> DeleteExpiredSessions(int64_t now_unix) override;
  Status InsertImage(const ImageRecord& record) override;
  StatusOr<ImageRecord> FindImage(const std::string& customer_id,
                                  const std::string& image_id) override;
  StatusOr<std::vector<ImageRecord>> ListImages(const std::string& customer_id) override;
  Status DeleteImage(const std::string& customer_id, const std::string& image_id) override;
  // A session-level advisory lock (pg_try_advisory_lock) on this
  // connection, keyed by the upload id.
  StatusOr<bool> TryLockUpload(const std::string& upload_id) override;
  Status UnlockUpload(const std::string& upload_id) override;

  StatusOr<int64_t> PutJob(const StoredJob& job) override;
  StatusOr<std::vector<StoredJob>> LoadJobsSince(int64_t seq) override;
  Status PutHost(const StoredHost& host) override;
  StatusOr<std::vector<StoredHost>> LoadHosts() override;

 private:
  explicit PgPortalDb(pg_conn* conn) : conn_(conn) {}
  pg_conn* const conn_;  // owned; PQfinish in the destructor
  // One connection, used by one thread at a time.
  std::mutex mu_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_PG_DB_H_
