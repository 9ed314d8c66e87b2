// PortalDb over SQLite (its own database file, WAL journal).
#ifndef VMSEAL_CSP_SQLITE_DB_H_
#define VMSEAL_CSP_SQLITE_DB_H_

#include <memory>
#include <mutex>
#include <string>

#include "csp/portal_db.h"
#include "csp/state_store.h"

struct sqlite3;

namespace vmseal::csp {

// The schema's version lives in table schema_version; Open applies the
// missing migrations in order, in one transaction.
inline constexpr int kPortalSchemaVersion = 2;

class SqlitePortalDb final : public PortalStore {
 public:
  // Opens or creates the database at `path` (mode 0600) and migrates its
  // schema to kPortalSchemaVersion. FAILED_PRECONDITION for a database of a
  // newer schema than this binary knows.
  // ":memory:" gives a private in-memory database (tests).
  static StatusOr<std::unique_ptr<SqlitePortalDb>> Open(const std::string& path);
  ~SqlitePortalDb() override;

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

  StatusOr<int64_t> PutJob(const StoredJob& job) override;
  StatusOr<std::vector<StoredJob>> LoadJobsSince(int64_t seq) override;
  Status PutHost(const StoredHost& host) override;
  StatusOr<std::vector<StoredHost>> LoadHosts() override;
  // The schema version recorded in the database.
  StatusOr<int> SchemaVersion();

 private:
  explicit SqlitePortalDb(sqlite3* db) : db_(db) {}
  // Applies the migrations the database lacks, in one transaction.
  Status Migrate();
  // `column` is a fixed column name, never caller input.
  StatusOr<CustomerRecord> FindCustomerBy(const char* column, const std::string& value);
  sqlite3* const db_;  // owned; closed in the destructor
  // One connection, used by one thread at a time.
  std::mutex mu_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_SQLITE_DB_H_
