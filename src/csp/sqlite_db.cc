#include "csp/sqlite_db.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <initializer_list>
#include <variant>

namespace vmseal::csp {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS customers (
  customer_id TEXT PRIMARY KEY,
  login_id TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  created_unix INTEGER NOT NULL,
  key_id TEXT NOT NULL DEFAULT '',
  key_algorithm TEXT NOT NULL DEFAULT '',
  public_key_pem TEXT NOT NULL DEFAULT '',
  cert_pem TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS sessions (
  token_sha256 TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL REFERENCES customers(customer_id),
  expires_unix INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS images (
  image_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL REFERENCES customers(customer_id),
  name TEXT NOT NULL,
  object_key TEXT NOT NULL,
  size_bytes INTEGER NOT NULL,
  sha256 TEXT NOT NULL,
  policy_json TEXT NOT NULL,
  created_unix INTEGER NOT NULL,
  tagged_image_id TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS images_by_customer ON images(customer_id, created_unix);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
)sql";

// Migration to version 2 (issue 17): jobs and hosts leave memory.
constexpr char kMigration2[] = R"sql(
CREATE TABLE jobs (
  job_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  state TEXT NOT NULL,
  host_id TEXT NOT NULL,
  updated_unix INTEGER NOT NULL,
  record TEXT NOT NULL,
  version INTEGER NOT NULL,
  seq INTEGER NOT NULL);
CREATE INDEX jobs_by_customer ON jobs(customer_id);
CREATE INDEX jobs_by_seq ON jobs(seq);
CREATE INDEX jobs_by_state ON jobs(state, host_id);
CREATE TABLE hosts (
  host_id TEXT PRIMARY KEY,
  last_heartbeat_unix INTEGER NOT NULL,
  record TEXT NOT NULL);
)sql";

struct StmtDeleter {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtDeleter>;
using Param = std::variant<int64_t, std::string>;

Status DbError(sqlite3* db, const char* what) {
  return InternalError(std::string("database ") + what + ": " + sqlite3_errmsg(db));
}

StatusOr<StmtPtr> Prepare(sqlite3* db, const char* sql, std::initializer_list<Param> params) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &raw, nullptr) != SQLITE_OK) return DbError(db, "prepare");
  StmtPtr stmt(raw);
  int i = 1;
  for (const Param& p : params) {
    int rc;
    if (const auto* n = std::get_if<int64_t>(&p)) {
      rc = sqlite3_bind_int64(raw, i, *n);
    } else {
      const std::string& s = std::get<std::string>(p);
      rc = sqlite3_bind_text(raw, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    }
    if (rc != SQLITE_OK) return DbError(db, "bind");
    ++i;
  }
  return stmt;
}

// Runs a statement that returns no rows; ALREADY_EXISTS on a constraint.
Status Exec(sqlite3* db, const char* sql, std::initializer_list<Param> params,
            int* changes = nullptr) {
  ASSIGN_OR_RETURN(StmtPtr stmt, Prepare(db, sql, params));
  int rc = sqlite3_step(stmt.get());
  if (rc == SQLITE_CONSTRAINT) return AlreadyExistsError("record already exists");
  if (rc != SQLITE_DONE) return DbError(db, "step");
  if (changes != nullptr) *changes = sqlite3_changes(db);
  return OkStatus();
}

std::string Text(sqlite3_stmt* s, int col) {
  const unsigned char* t = sqlite3_column_text(s, col);
  return t == nullptr ? "" : reinterpret_cast<const char*>(t);
}

ImageRecord ReadImage(sqlite3_stmt* s) {
  ImageRecord r;
  r.image_id = Text(s, 0);
  r.customer_id = Text(s, 1);
  r.name = Text(s, 2);
  r.object_key = Text(s, 3);
  r.size_bytes = static_cast<uint64_t>(sqlite3_column_int64(s, 4));
  r.sha256_hex = Text(s, 5);
  r.policy_json = Text(s, 6);
  r.created_unix = sqlite3_column_int64(s, 7);
  r.tagged_image_id = Text(s, 8);
  return r;
}

constexpr char kImageColumns[] =
    "image_id, customer_id, name, object_key, size_bytes, sha256, policy_json, created_unix, "
    "tagged_image_id";

}  // namespace

StatusOr<std::unique_ptr<SqlitePortalDb>> SqlitePortalDb::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  std::unique_ptr<SqlitePortalDb> out(db != nullptr ? new SqlitePortalDb(db) : nullptr);
  if (rc != SQLITE_OK) {
    return UnavailableError("open database " + path + ": " +
                            (db != nullptr ? sqlite3_errmsg(db) : "out of memory"));
  }
  if (path != ":memory:") ::chmod(path.c_str(), 0600);
  sqlite3_busy_timeout(db, 5000);
  char* err = nullptr;
  std::string setup = std::string("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;") + kSchema;
  if (sqlite3_exec(db, setup.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "unknown";
    sqlite3_free(err);
    return InternalError("create database schema: " + msg);
  }
  // Databases made before customers had KMS keys and images their tag's
  // image id: add the columns.
  for (const char* column : {"customers ADD COLUMN key_id", "customers ADD COLUMN key_algorithm",
                             "customers ADD COLUMN public_key_pem", "customers ADD COLUMN cert_pem",
                             "images ADD COLUMN tagged_image_id"}) {
    std::string alter = std::string("ALTER TABLE ") + column + " TEXT NOT NULL DEFAULT ''";
    if (sqlite3_exec(db, alter.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK &&
        std::string_view(sqlite3_errmsg(db)).find("duplicate column") == std::string_view::npos) {
      return InternalError(std::string("upgrade database schema: ") + sqlite3_errmsg(db));
    }
  }
  RETURN_IF_ERROR(out->Migrate());
  return out;
}

Status SqlitePortalDb::Migrate() {
  std::lock_guard<std::mutex> lock(mu_);
  auto exec = [this](const char* sql) -> Status {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err != nullptr ? err : "unknown";
      sqlite3_free(err);
      return InternalError(std::string("migrate database schema: ") + msg);
    }
    return OkStatus();
  };
  // BEGIN IMMEDIATE: two portals opening one file migrate one after the other.
  RETURN_IF_ERROR(exec("BEGIN IMMEDIATE"));
  auto version = [this]() -> StatusOr<int> {
    ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_, "SELECT MAX(version) FROM schema_version", {}));
    if (sqlite3_step(s.get()) != SQLITE_ROW) return DbError(db_, "step");
    return sqlite3_column_type(s.get(), 0) == SQLITE_NULL ? 1 : sqlite3_column_int(s.get(), 0);
  }();
  Status st = version.status();
  if (st.ok() && *version > kPortalSchemaVersion) {
    st = FailedPreconditionError("the portal database has schema version " +
                                 std::to_string(*version) + ", newer than this binary's " +
                                 std::to_string(kPortalSchemaVersion));
  }
  if (st.ok() && *version < 2) st = exec(kMigration2);
  if (st.ok() && *version < kPortalSchemaVersion) {
    st = Exec(db_, "DELETE FROM schema_version", {});
    if (st.ok()) {
      st = Exec(db_, "INSERT INTO schema_version(version) VALUES(?)",
                {static_cast<int64_t>(kPortalSchemaVersion)});
    }
  }
  if (!st.ok()) {
    (void)exec("ROLLBACK");
    return st;
  }
  return exec("COMMIT");
}

StatusOr<int> SqlitePortalDb::SchemaVersion() {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_, "SELECT MAX(version) FROM schema_version", {}));
  if (sqlite3_step(s.get()) != SQLITE_ROW) return DbError(db_, "step");
  return sqlite3_column_int(s.get(), 0);
}

StatusOr<int64_t> SqlitePortalDb::PutJob(const StoredJob& j) {
  std::lock_guard<std::mutex> lock(mu_);
  // One connection per process, and SQLite serialises writers: the version
  // check and the write are one transaction.
  if (sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return DbError(db_, "begin");
  }
  auto body = [&]() -> StatusOr<int64_t> {
    ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_, "SELECT version FROM jobs WHERE job_id=?", {j.job_id}));
    int rc = sqlite3_step(s.get());
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) return DbError(db_, "step");
    const int64_t stored = rc == SQLITE_ROW ? sqlite3_column_int64(s.get(), 0) : 0;
    if (stored != j.version) return AbortedError("conflict: the job changed meanwhile");
    if (j.slot_capacity > 0) {
      static const std::string kCount =
          std::string("SELECT COUNT(*) FROM jobs WHERE state IN ") + kSlotHoldingStatesSql +
          " AND host_id=? AND job_id<>?";
      ASSIGN_OR_RETURN(StmtPtr c, Prepare(db_, kCount.c_str(), {j.host_id, j.job_id}));
      if (sqlite3_step(c.get()) != SQLITE_ROW) return DbError(db_, "step");
      const int64_t used = sqlite3_column_int64(c.get(), 0);
      if (used >= j.slot_capacity) {
        return ResourceExhaustedError("no_slot: host " + j.host_id + " has no free slot (" +
                                      std::to_string(used) + "/" + std::to_string(j.slot_capacity) +
                                      " in use)");
      }
    }
    RETURN_IF_ERROR(Exec(db_,
                         "INSERT INTO jobs(job_id, customer_id, state, host_id, updated_unix, "
                         "record, version, seq) VALUES(?,?,?,?,?,?,?,"
                         "(SELECT COALESCE(MAX(seq),0)+1 FROM jobs)) "
                         "ON CONFLICT(job_id) DO UPDATE SET state=excluded.state, "
                         "host_id=excluded.host_id, updated_unix=excluded.updated_unix, "
                         "record=excluded.record, version=excluded.version, seq=excluded.seq",
                         {j.job_id, j.customer_id, j.state, j.host_id, j.updated_unix,
                          j.record_json, j.version + 1}));
    return j.version + 1;
  };
  StatusOr<int64_t> out = body();
  if (!out.ok()) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return out;
  }
  if (sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) {
    Status st = DbError(db_, "commit");
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    return st;
  }
  return out;
}

StatusOr<std::vector<StoredJob>> SqlitePortalDb::LoadJobsSince(int64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_,
                                      "SELECT job_id, customer_id, state, host_id, updated_unix, "
                                      "record, version, seq FROM jobs WHERE seq>? ORDER BY seq",
                                      {seq}));
  std::vector<StoredJob> out;
  for (;;) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(db_, "step");
    out.push_back({Text(s.get(), 0), Text(s.get(), 1), Text(s.get(), 2), Text(s.get(), 3),
                   sqlite3_column_int64(s.get(), 4), Text(s.get(), 5),
                   sqlite3_column_int64(s.get(), 6), sqlite3_column_int64(s.get(), 7)});
  }
  return out;
}

Status SqlitePortalDb::PutHost(const StoredHost& h) {
  std::lock_guard<std::mutex> lock(mu_);
  return Exec(db_,
              "INSERT INTO hosts(host_id, last_heartbeat_unix, record) VALUES(?,?,?) "
              "ON CONFLICT(host_id) DO UPDATE SET last_heartbeat_unix=excluded.last_heartbeat_unix, "
              "record=excluded.record",
              {h.host_id, h.last_heartbeat_unix, h.record_json});
}

StatusOr<std::vector<StoredHost>> SqlitePortalDb::LoadHosts() {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_,
                                      "SELECT host_id, last_heartbeat_unix, record FROM hosts "
                                      "ORDER BY host_id",
                                      {}));
  std::vector<StoredHost> out;
  for (;;) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(db_, "step");
    out.push_back({Text(s.get(), 0), sqlite3_column_int64(s.get(), 1), Text(s.get(), 2)});
  }
  return out;
}

SqlitePortalDb::~SqlitePortalDb() { sqlite3_close(db_); }

Status SqlitePortalDb::InsertCustomer(const CustomerRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s = Exec(db_,
                  "INSERT INTO customers(customer_id, login_id, password_hash, created_unix, "
                  "key_id, key_algorithm, public_key_pem, cert_pem) VALUES(?,?,?,?,?,?,?,?)",
                  {r.customer_id, r.login_id, r.password_hash, r.created_unix, r.key_id,
                   r.key_algorithm, r.public_key_pem, r.cert_pem});
  if (s.code() == StatusCode::kAlreadyExists) return AlreadyExistsError("customer already exists");
  return s;
}

namespace {
constexpr char kCustomerColumns[] =
    "SELECT customer_id, login_id, password_hash, created_unix, key_id, key_algorithm, "
    "public_key_pem, cert_pem FROM customers WHERE ";
}  // namespace

StatusOr<CustomerRecord> SqlitePortalDb::FindCustomerBy(const char* column,
                                                        const std::string& value) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string sql = std::string(kCustomerColumns) + column + "=?";
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_, sql.c_str(), {value}));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return NotFoundError("no such customer");
  if (rc != SQLITE_ROW) return DbError(db_, "step");
  CustomerRecord out;
  out.customer_id = Text(s.get(), 0);
  out.login_id = Text(s.get(), 1);
  out.password_hash = Text(s.get(), 2);
  out.created_unix = sqlite3_column_int64(s.get(), 3);
  out.key_id = Text(s.get(), 4);
  out.key_algorithm = Text(s.get(), 5);
  out.public_key_pem = Text(s.get(), 6);
  out.cert_pem = Text(s.get(), 7);
  return out;
}

StatusOr<CustomerRecord> SqlitePortalDb::FindCustomerByLogin(const std::string& login_id) {
  return FindCustomerBy("login_id", login_id);
}

StatusOr<CustomerRecord> SqlitePortalDb::FindCustomerById(const std::string& customer_id) {
  return FindCustomerBy("customer_id", customer_id);
}

Status SqlitePortalDb::InsertSession(const SessionRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  return Exec(db_, "INSERT INTO sessions(token_sha256, customer_id, expires_unix) VALUES(?,?,?)",
              {r.token_sha256_hex, r.customer_id, r.expires_unix});
}

StatusOr<SessionRecord> SqlitePortalDb::FindSession(const std::string& token_sha256_hex) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_,
                                      "SELECT token_sha256, customer_id, expires_unix FROM "
                                      "sessions WHERE token_sha256=?",
                                      {token_sha256_hex}));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return NotFoundError("no such session");
  if (rc != SQLITE_ROW) return DbError(db_, "step");
  return SessionRecord{Text(s.get(), 0), Text(s.get(), 1), sqlite3_column_int64(s.get(), 2)};
}

Status SqlitePortalDb::DeleteSession(const std::string& token_sha256_hex) {
  std::lock_guard<std::mutex> lock(mu_);
  return Exec(db_, "DELETE FROM sessions WHERE token_sha256=?", {token_sha256_hex});
}

StatusOr<int64_t> SqlitePortalDb::DeleteExpiredSessions(int64_t now_unix) {
  std::lock_guard<std::mutex> lock(mu_);
  int changes = 0;
  RETURN_IF_ERROR(Exec(db_, "DELETE FROM sessions WHERE expires_unix<=?", {now_unix}, &changes));
  return static_cast<int64_t>(changes);
}

Status SqlitePortalDb::InsertImage(const ImageRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  return Exec(db_,
              "INSERT INTO images(image_id, customer_id, name, object_key, size_bytes, sha256, "
              "policy_json, created_unix, tagged_image_id) VALUES(?,?,?,?,?,?,?,?,?)",
              {r.image_id, r.customer_id, r.name, r.object_key,
               static_cast<int64_t>(r.size_bytes), r.sha256_hex, r.policy_json, r.created_unix,
               r.tagged_image_id});
}

StatusOr<ImageRecord> SqlitePortalDb::FindImage(const std::string& customer_id,
                                                const std::string& image_id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string sql = std::string("SELECT ") + kImageColumns +
                    " FROM images WHERE image_id=? AND customer_id=?";
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_, sql.c_str(), {image_id, customer_id}));
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return NotFoundError("no such image");
  if (rc != SQLITE_ROW) return DbError(db_, "step");
  return ReadImage(s.get());
}

StatusOr<std::vector<ImageRecord>> SqlitePortalDb::ListImages(const std::string& customer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string sql = std::string("SELECT ") + kImageColumns +
                    " FROM images WHERE customer_id=? ORDER BY created_unix, image_id";
  ASSIGN_OR_RETURN(StmtPtr s, Prepare(db_, sql.c_str(), {customer_id}));
  std::vector<ImageRecord> out;
  for (;;) {
    int rc = sqlite3_step(s.get());
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) return DbError(db_, "step");
    out.push_back(ReadImage(s.get()));
  }
  return out;
}

Status SqlitePortalDb::DeleteImage(const std::string& customer_id, const std::string& image_id) {
  std::lock_guard<std::mutex> lock(mu_);
  int changes = 0;
  RETURN_IF_ERROR(Exec(db_, "DELETE FROM images WHERE image_id=? AND customer_id=?",
                       {image_id, customer_id}, &changes));
  if (changes == 0) return NotFoundError("no such image");
  return OkStatus();
}

}  // namespace vmseal::csp
