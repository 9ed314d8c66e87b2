#include "csp/pg_db.h"

#include <libpq-fe.h>

#include <cstring>
#include <string_view>
#include <variant>
#include <vector>

#include "csp/sqlite_db.h"

namespace vmseal::csp {
namespace {

struct ResultClearer {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultClearer>;
using Param = std::variant<int64_t, std::string>;
using Rows = std::vector<std::vector<std::string>>;

// Serialises job writes of every replica ("vmsealjb" in ASCII).
constexpr char kJobWriteLockSql[] = "SELECT pg_advisory_xact_lock(8533459064185644642)";
// Serialises schema migrations.
constexpr char kMigrateLockSql[] = "SELECT pg_advisory_xact_lock(8533459064185644653)";

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS customers (
  customer_id TEXT PRIMARY KEY,
  login_id TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  created_unix BIGINT NOT NULL,
  key_id TEXT NOT NULL DEFAULT '',
  key_algorithm TEXT NOT NULL DEFAULT '',
  public_key_pem TEXT NOT NULL DEFAULT '',
  cert_pem TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS sessions (
  token_sha256 TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL REFERENCES customers(customer_id),
  expires_unix BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
  image_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL REFERENCES customers(customer_id),
  name TEXT NOT NULL,
  object_key TEXT NOT NULL,
  size_bytes BIGINT NOT NULL,
  sha256 TEXT NOT NULL,
  policy_json TEXT NOT NULL,
  created_unix BIGINT NOT NULL,
  tagged_image_id TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS images_by_customer ON images(customer_id, created_unix);
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL,
  state TEXT NOT NULL,
  host_id TEXT NOT NULL,
  updated_unix BIGINT NOT NULL,
  record TEXT NOT NULL,
  version BIGINT NOT NULL,
  seq BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_customer ON jobs(customer_id);
CREATE INDEX IF NOT EXISTS jobs_by_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_by_host_state ON jobs(host_id, state);
CREATE SEQUENCE IF NOT EXISTS jobs_seq;
CREATE TABLE IF NOT EXISTS hosts (
  host_id TEXT PRIMARY KEY,
  last_heartbeat_unix BIGINT NOT NULL,
  record TEXT NOT NULL);
)sql";

Status PgError(PGconn* conn, const PGresult* res, std::string_view what) {
  std::string detail = res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn);
  while (!detail.empty() && (detail.back() == '\n' || detail.back() == ' ')) detail.pop_back();
  const std::string msg = "database " + std::string(what) + ": " + detail;
  const char* state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  if (state != nullptr && std::strcmp(state, "23505") == 0) {
    return AlreadyExistsError("record already exists");
  }
  if (state != nullptr && std::strncmp(state, "23", 2) == 0) return FailedPreconditionError(msg);
  if (PQstatus(conn) != CONNECTION_OK) return UnavailableError(msg);
  return InternalError(msg);
}

// Runs `sql` ($1..$n placeholders); the rows of a query, `*affected` the
// rows a command changed.
StatusOr<Rows> Run(PGconn* conn, const char* sql, const std::vector<Param>& params,
                   int64_t* affected = nullptr) {
  if (PQstatus(conn) != CONNECTION_OK) PQreset(conn);
  std::vector<std::string> storage(params.size());
  std::vector<const char*> values(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    if (const auto* n = std::get_if<int64_t>(&params[i])) {
      storage[i] = std::to_string(*n);
    } else {
      storage[i] = std::get<std::string>(params[i]);
    }
    values[i] = storage[i].c_str();
  }
  ResultPtr res(PQexecParams(conn, sql, static_cast<int>(params.size()), nullptr, values.data(),
                             nullptr, nullptr, 0));
  const ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(conn, res.get(), "exec");
  Rows rows;
  for (int r = 0; r < PQntuples(res.get()); ++r) {
    std::vector<std::string> row;
    for (int c = 0; c < PQnfields(res.get()); ++c) {
      row.emplace_back(PQgetvalue(res.get(), r, c),
                       static_cast<size_t>(PQgetlength(res.get(), r, c)));
    }
    rows.push_back(std::move(row));
  }
  if (affected != nullptr) {
    const char* n = PQcmdTuples(res.get());
    *affected = (n != nullptr && *n) ? std::atoll(n) : 0;
  }
  return rows;
}

Status Script(PGconn* conn, const char* sql) {
  ResultPtr res(PQexec(conn, sql));
  const ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(conn, res.get(), "exec");
  return OkStatus();
}

// Runs `body` in one transaction (after `lock_sql`, if any); rolled back on
// any error.
template <typename T, typename F>
StatusOr<T> InTx(PGconn* conn, const char* lock_sql, F body) {
  RETURN_IF_ERROR(Script(conn, "BEGIN"));
  StatusOr<T> out = [&]() -> StatusOr<T> {
    if (lock_sql != nullptr) RETURN_IF_ERROR(Script(conn, lock_sql));
    return body();
  }();
  if (!out.ok()) {
    (void)Script(conn, "ROLLBACK");
    return out;
  }
  RETURN_IF_ERROR(Script(conn, "COMMIT"));
  return out;
}

int64_t Int(const std::string& s) { return std::atoll(s.c_str()); }

constexpr char kCustomerSelect[] =
    "SELECT customer_id, login_id, password_hash, created_unix, key_id, key_algorithm, "
    "public_key_pem, cert_pem FROM customers WHERE ";
constexpr char kImageSelect[] =
    "SELECT image_id, customer_id, name, object_key, size_bytes, sha256, policy_json, "
    "created_unix, tagged_image_id FROM images WHERE ";

CustomerRecord ToCustomer(const std::vector<std::string>& r) {
  return {r[0], r[1], r[2], Int(r[3]), r[4], r[5], r[6], r[7]};
}
ImageRecord ToImage(const std::vector<std::string>& r) {
  return {r[0], r[1], r[2], r[3], static_cast<uint64_t>(Int(r[4])), r[5], r[6], Int(r[7]), r[8]};
}

}  // namespace

StatusOr<std::unique_ptr<PortalStore>> OpenPortalStore(const std::string& url,
                                                       const std::string& sqlite_path) {
  if (url.starts_with("postgres://") || url.starts_with("postgresql://")) {
    // A password in the URL would sit in argv for every local user to read.
    const size_t start = url.find("://") + 3;
    const std::string authority = url.substr(start, url.find('/', start) - start);
    const size_t at = authority.rfind('@');
    if (at != std::string::npos && authority.substr(0, at).find(':') != std::string::npos) {
      return InvalidArgumentError(
          "--store must not carry a password: give it in PGPASSFILE (~/.pgpass) instead");
    }
    ASSIGN_OR_RETURN(auto pg, PgPortalDb::Open(url));
    return std::unique_ptr<PortalStore>(std::move(pg));
  }
  if (!url.empty()) {
    return InvalidArgumentError("--store must be a postgres:// or postgresql:// URL");
  }
  ASSIGN_OR_RETURN(auto lite, SqlitePortalDb::Open(sqlite_path));
  return std::unique_ptr<PortalStore>(std::move(lite));
}

StatusOr<std::unique_ptr<PgPortalDb>> PgPortalDb::Open(const std::string& url) {
  PGconn* conn = PQconnectdb(url.c_str());
  if (conn == nullptr) return UnavailableError("postgres: out of memory");
  std::unique_ptr<PgPortalDb> db(new PgPortalDb(conn));
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(conn);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    // libpq's message names host and port, never the password.
    return UnavailableError("postgres: cannot connect: " + msg);
  }
  RETURN_IF_ERROR(Script(conn, "SET client_min_messages TO warning"));
  auto migrated = InTx<int>(conn, kMigrateLockSql, [&]() -> StatusOr<int> {
    RETURN_IF_ERROR(Script(conn, kSchema));
    ASSIGN_OR_RETURN(Rows v, Run(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_version", {}));
    const int64_t version = Int(v[0][0]);
    if (version > kPortalSchemaVersion) {
      return FailedPreconditionError("the portal database has schema version " +
                                     std::to_string(version) + ", newer than this binary's " +
                                     std::to_string(kPortalSchemaVersion));
    }
    if (version < kPortalSchemaVersion) {
      RETURN_IF_ERROR(Run(conn, "DELETE FROM schema_version", {}).status());
      RETURN_IF_ERROR(Run(conn, "INSERT INTO schema_version(version) VALUES($1)",
                          {int64_t{kPortalSchemaVersion}})
                          .status());
    }
    return kPortalSchemaVersion;
  });
  RETURN_IF_ERROR(migrated.status());
  return db;
}

PgPortalDb::~PgPortalDb() { PQfinish(conn_); }

namespace {
// Advisory locks of upload sessions: the two-key form (its key space is apart
// from the one-key locks of job writes and migrations), class "vup1", object
// the first 32 bits of the upload id (32 hex digits). Two uploads whose ids
// share them make each other busy now and then; nothing worse.
constexpr int64_t kUploadLockClass = 0x76757031;
StatusOr<int64_t> UploadLockKey(const std::string& upload_id) {
  if (upload_id.size() < 8) return InvalidArgumentError("bad upload id");
  uint32_t key = 0;
  for (size_t i = 0; i < 8; ++i) {
    const char c = upload_id[i];
    const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return InvalidArgumentError("bad upload id");
    key = key << 4 | static_cast<uint32_t>(v);
  }
  return static_cast<int64_t>(static_cast<int32_t>(key));
}
}  // namespace

StatusOr<bool> PgPortalDb::TryLockUpload(const std::string& upload_id) {
  ASSIGN_OR_RETURN(int64_t key, UploadLockKey(upload_id));
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows, Run(conn_, "SELECT pg_try_advisory_lock($1::int, $2::int)",
                                  {kUploadLockClass, key}));
  return rows.size() == 1 && !rows[0].empty() && rows[0][0] == "t";
}

Status PgPortalDb::UnlockUpload(const std::string& upload_id) {
  ASSIGN_OR_RETURN(int64_t key, UploadLockKey(upload_id));
  std::lock_guard<std::mutex> lock(mu_);
  // False (not held) when the connection was reset meanwhile: the lock went
  // with the old session.
  return Run(conn_, "SELECT pg_advisory_unlock($1::int, $2::int)", {kUploadLockClass, key})
      .status();
}

Status PgPortalDb::InsertCustomer(const CustomerRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s = Run(conn_,
                 "INSERT INTO customers(customer_id, login_id, password_hash, created_unix, "
                 "key_id, key_algorithm, public_key_pem, cert_pem) VALUES($1,$2,$3,$4,$5,$6,$7,$8)",
                 {r.customer_id, r.login_id, r.password_hash, r.created_unix, r.key_id,
                  r.key_algorithm, r.public_key_pem, r.cert_pem})
                 .status();
  if (s.code() == StatusCode::kAlreadyExists) return AlreadyExistsError("customer already exists");
  return s;
}

StatusOr<CustomerRecord> PgPortalDb::FindCustomerByLogin(const std::string& login_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows,
                   Run(conn_, (std::string(kCustomerSelect) + "login_id=$1").c_str(), {login_id}));
  if (rows.empty()) return NotFoundError("no such customer");
  return ToCustomer(rows[0]);
}

StatusOr<CustomerRecord> PgPortalDb::FindCustomerById(const std::string& customer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows, Run(conn_, (std::string(kCustomerSelect) + "customer_id=$1").c_str(),
                                  {customer_id}));
  if (rows.empty()) return NotFoundError("no such customer");
  return ToCustomer(rows[0]);
}

Status PgPortalDb::InsertSession(const SessionRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  return Run(conn_, "INSERT INTO sessions(token_sha256, customer_id, expires_unix) VALUES($1,$2,$3)",
             {r.token_sha256_hex, r.customer_id, r.expires_unix})
      .status();
}

StatusOr<SessionRecord> PgPortalDb::FindSession(const std::string& token_sha256_hex) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows, Run(conn_,
                                  "SELECT token_sha256, customer_id, expires_unix FROM sessions "
                                  "WHERE token_sha256=$1",
                                  {token_sha256_hex}));
  if (rows.empty()) return NotFoundError("no such session");
  return SessionRecord{rows[0][0], rows[0][1], Int(rows[0][2])};
}

Status PgPortalDb::DeleteSession(const std::string& token_sha256_hex) {
  std::lock_guard<std::mutex> lock(mu_);
  return Run(conn_, "DELETE FROM sessions WHERE token_sha256=$1", {token_sha256_hex}).status();
}

StatusOr<int64_t> PgPortalDb::DeleteExpiredSessions(int64_t now_unix) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  RETURN_IF_ERROR(Run(conn_, "DELETE FROM sessions WHERE expires_unix<=$1", {now_unix}, &n).status());
  return n;
}

Status PgPortalDb::InsertImage(const ImageRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  return Run(conn_,
             "INSERT INTO images(image_id, customer_id, name, object_key, size_bytes, sha256, "
             "policy_json, created_unix, tagged_image_id) VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9)",
             {r.image_id, r.customer_id, r.name, r.object_key, static_cast<int64_t>(r.size_bytes),
              r.sha256_hex, r.policy_json, r.created_unix, r.tagged_image_id})
      .status();
}

StatusOr<ImageRecord> PgPortalDb::FindImage(const std::string& customer_id,
                                            const std::string& image_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows,
                   Run(conn_, (std::string(kImageSelect) + "image_id=$1 AND customer_id=$2").c_str(),
                       {image_id, customer_id}));
  if (rows.empty()) return NotFoundError("no such image");
  return ToImage(rows[0]);
}

StatusOr<std::vector<ImageRecord>> PgPortalDb::ListImages(const std::string& customer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows,
                   Run(conn_,
                       (std::string(kImageSelect) +
                        "customer_id=$1 ORDER BY created_unix, image_id")
                           .c_str(),
                       {customer_id}));
  std::vector<ImageRecord> out;
  for (const auto& r : rows) out.push_back(ToImage(r));
  return out;
}

Status PgPortalDb::DeleteImage(const std::string& customer_id, const std::string& image_id) {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  RETURN_IF_ERROR(Run(conn_, "DELETE FROM images WHERE image_id=$1 AND customer_id=$2",
                      {image_id, customer_id}, &n)
                      .status());
  if (n == 0) return NotFoundError("no such image");
  return OkStatus();
}

StatusOr<int64_t> PgPortalDb::PutJob(const StoredJob& j) {
  std::lock_guard<std::mutex> lock(mu_);
  // Under the job-write lock: the version check and the write are atomic
  // across replicas, and seq (nextval inside the lock) grows in commit order.
  return InTx<int64_t>(conn_, kJobWriteLockSql, [&]() -> StatusOr<int64_t> {
    ASSIGN_OR_RETURN(Rows v, Run(conn_, "SELECT version FROM jobs WHERE job_id=$1", {j.job_id}));
    const int64_t stored = v.empty() ? 0 : Int(v[0][0]);
    if (stored != j.version) return AbortedError("conflict: the job changed meanwhile");
    if (j.slot_capacity > 0) {
      // Every replica's job writes hold the same lock: the count and the
      // write are atomic across replicas.
      static const std::string kCount =
          std::string("SELECT COUNT(*) FROM jobs WHERE state IN ") + kSlotHoldingStatesSql +
          " AND host_id=$1 AND job_id<>$2";
      ASSIGN_OR_RETURN(Rows c, Run(conn_, kCount.c_str(), {j.host_id, j.job_id}));
      const int64_t used = c.empty() ? 0 : Int(c[0][0]);
      if (used >= j.slot_capacity) {
        return ResourceExhaustedError("no_slot: host " + j.host_id + " has no free slot (" +
                                      std::to_string(used) + "/" + std::to_string(j.slot_capacity) +
                                      " in use)");
      }
    }
    RETURN_IF_ERROR(Run(conn_,
                        "INSERT INTO jobs(job_id, customer_id, state, host_id, updated_unix, "
                        "record, version, seq) VALUES($1,$2,$3,$4,$5,$6,$7,nextval('jobs_seq')) "
                        "ON CONFLICT(job_id) DO UPDATE SET state=excluded.state, "
                        "host_id=excluded.host_id, updated_unix=excluded.updated_unix, "
                        "record=excluded.record, version=excluded.version, seq=excluded.seq",
                        {j.job_id, j.customer_id, j.state, j.host_id, j.updated_unix,
                         j.record_json, j.version + 1})
                        .status());
    return j.version + 1;
  });
}

StatusOr<std::vector<StoredJob>> PgPortalDb::LoadJobsSince(int64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows, Run(conn_,
                                  "SELECT job_id, customer_id, state, host_id, updated_unix, "
                                  "record, version, seq FROM jobs WHERE seq>$1 ORDER BY seq",
                                  {seq}));
  std::vector<StoredJob> out;
  for (const auto& r : rows) {
    out.push_back({r[0], r[1], r[2], r[3], Int(r[4]), r[5], Int(r[6]), Int(r[7])});
  }
  return out;
}

Status PgPortalDb::PutHost(const StoredHost& h) {
  std::lock_guard<std::mutex> lock(mu_);
  return Run(conn_,
             "INSERT INTO hosts(host_id, last_heartbeat_unix, record) VALUES($1,$2,$3) "
             "ON CONFLICT(host_id) DO UPDATE SET last_heartbeat_unix=excluded.last_heartbeat_unix, "
             "record=excluded.record",
             {h.host_id, h.last_heartbeat_unix, h.record_json})
      .status();
}

StatusOr<std::vector<StoredHost>> PgPortalDb::LoadHosts() {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Rows rows, Run(conn_,
                                  "SELECT host_id, last_heartbeat_unix, record FROM hosts "
                                  "ORDER BY host_id",
                                  {}));
  std::vector<StoredHost> out;
  for (const auto& r : rows) out.push_back({r[0], Int(r[1]), r[2]});
  return out;
}

}  // namespace vmseal::csp
