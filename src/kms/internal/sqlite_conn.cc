#include <sqlite3.h>

#include <map>

#include "kms/internal/sql.h"

namespace vmseal::kms::internal {
namespace {

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

Status SqliteError(sqlite3* db, int rc, std::string_view what) {
  std::string msg = std::string("sqlite ") + std::string(what) + ": " +
                    (db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) return UnavailableError(msg);
  if ((rc & 0xff) == SQLITE_CONSTRAINT) return AlreadyExistsError(msg);
  if (rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB) return DataLossError(msg);
  if (rc == SQLITE_FULL) return ResourceExhaustedError(msg);
  if (rc == SQLITE_CANTOPEN) return UnavailableError(msg);
  return InternalError(msg);
}

class SqliteConn : public SqlConn {
 public:
  explicit SqliteConn(DbPtr db) : db_(std::move(db)) {}
  SqlDialect dialect() const override { return SqlDialect::kSqlite; }

  StatusOr<SqlResult> Exec(std::string_view sql, const std::vector<SqlValue>& params) override {
    // Statements are prepared once per SQL text and reused (reset after
    // each run); the Store's SQL is a fixed set of strings.
    int rc = SQLITE_OK;
    auto cached = stmts_.find(sql);
    if (cached == stmts_.end()) {
      sqlite3_stmt* raw = nullptr;
      rc = sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
      if (rc != SQLITE_OK) return SqliteError(db_.get(), rc, "prepare");
      if (stmts_.size() >= kMaxCachedStatements) stmts_.clear();
      cached = stmts_.emplace(std::string(sql), StmtPtr(raw)).first;
    }
    sqlite3_stmt* const stmt_raw = cached->second.get();
    struct Resetter {
      sqlite3_stmt* s;
      ~Resetter() {
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
      }
    } const resetter{stmt_raw};
    struct Borrowed {
      sqlite3_stmt* s;
      sqlite3_stmt* get() const { return s; }
    } const stmt{stmt_raw};
    for (size_t i = 0; i < params.size(); ++i) {
      int idx = static_cast<int>(i + 1);
      const SqlValue& v = params[i];
      if (std::holds_alternative<std::nullptr_t>(v)) {
        rc = sqlite3_bind_null(stmt.get(), idx);
      } else if (const int64_t* n = std::get_if<int64_t>(&v)) {
        rc = sqlite3_bind_int64(stmt.get(), idx, *n);
      } else {
        const std::string& s = std::get<std::string>(v);
        rc = sqlite3_bind_text64(stmt.get(), idx, s.data(), s.size(), SQLITE_TRANSIENT,
                                 SQLITE_UTF8);
      }
      if (rc != SQLITE_OK) return SqliteError(db_.get(), rc, "bind");
    }
    SqlResult result;
    while (true) {
      rc = sqlite3_step(stmt.get());
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) return SqliteError(db_.get(), rc, "step");
      int n = sqlite3_column_count(stmt.get());
      std::vector<std::optional<std::string>> row;
      for (int c = 0; c < n; ++c) {
        if (sqlite3_column_type(stmt.get(), c) == SQLITE_NULL) {
          row.emplace_back(std::nullopt);
        } else {
          const unsigned char* text = sqlite3_column_text(stmt.get(), c);
          int len = sqlite3_column_bytes(stmt.get(), c);
          row.emplace_back(std::string(reinterpret_cast<const char*>(text), static_cast<size_t>(len)));
        }
      }
      result.rows.push_back(std::move(row));
    }
    result.affected = sqlite3_changes64(db_.get());
    return result;
  }

  Status ExecScript(std::string_view sql) override {
    std::string s(sql);
    char* err = nullptr;
    int rc = sqlite3_exec(db_.get(), s.c_str(), nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      std::string msg = err != nullptr ? err : sqlite3_errstr(rc);
      sqlite3_free(err);
      return SqliteError(nullptr, rc, msg);
    }
    return OkStatus();
  }

  Status BeginWrite() override { return ExecScript("BEGIN IMMEDIATE"); }

 private:
  static constexpr size_t kMaxCachedStatements = 128;
  // Declared after db_: finalized before the database closes.
  DbPtr db_;
  std::map<std::string, StmtPtr, std::less<>> stmts_;
};

}  // namespace

StatusOr<std::unique_ptr<SqlConn>> OpenSqlite(const std::string& path) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) return SqliteError(db.get(), rc, "open " + path);
  sqlite3_busy_timeout(db.get(), 10000);
  auto conn = std::make_unique<SqliteConn>(std::move(db));
  // WAL for concurrent readers; synchronous=FULL so that an acknowledged
  // commit survives power loss, not only a process crash.
  RETURN_IF_ERROR(conn->ExecScript("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; "
                                   "PRAGMA foreign_keys=ON;"));
  ASSIGN_OR_RETURN(auto mode, conn->Exec("PRAGMA journal_mode", {}));
  if (mode.rows.empty() || mode.rows[0][0].value_or("") != "wal") {
    return FailedPreconditionError("sqlite: cannot enable WAL on " + path);
  }
  return std::unique_ptr<SqlConn>(std::move(conn));
}

}  // namespace vmseal::kms::internal
