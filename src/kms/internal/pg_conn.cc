#include <libpq-fe.h>

#include <cstring>
#include <map>
#include <string>

#include "kms/internal/sql.h"

namespace vmseal::kms::internal {
namespace {

struct ConnCloser {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultClearer {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnCloser>;
using ResultPtr = std::unique_ptr<PGresult, ResultClearer>;

// The advisory lock key that serializes KMS writers ("vmseal" in ASCII).
constexpr const char* kWriteLockSql = "SELECT pg_advisory_xact_lock(118109115101097108)";

Status PgError(PGconn* conn, const PGresult* res, std::string_view what) {
  std::string msg = std::string("postgres ") + std::string(what) + ": ";
  const char* state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  std::string detail = res != nullptr ? PQresultErrorMessage(res) : PQerrorMessage(conn);
  while (!detail.empty() && (detail.back() == '\n' || detail.back() == ' ')) detail.pop_back();
  msg += detail;
  if (state != nullptr) {
    if (std::strcmp(state, "23505") == 0) return AlreadyExistsError(msg);
    if (std::strncmp(state, "40", 2) == 0) return AbortedError(msg);
  }
  if (PQstatus(conn) != CONNECTION_OK) return UnavailableError(msg);
  return InternalError(msg);
}

// Rewrites `?` placeholders to $1..$n (our SQL has no literal `?`).
std::string Numbered(std::string_view sql) {
  std::string out;
  int n = 0;
  for (char c : sql) {
    if (c == '?') {
      out.push_back('$');
      out.append(std::to_string(++n));
    } else {
      out += c;
    }
  }
  return out;
}

class PgConn : public SqlConn {
 public:
  explicit PgConn(ConnPtr conn) : conn_(std::move(conn)) {}
  SqlDialect dialect() const override { return SqlDialect::kPostgres; }

  StatusOr<SqlResult> Exec(std::string_view sql, const std::vector<SqlValue>& params) override {
    std::vector<std::string> storage(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (size_t i = 0; i < params.size(); ++i) {
      if (const int64_t* n = std::get_if<int64_t>(&params[i])) {
        storage[i] = std::to_string(*n);
        values[i] = storage[i].c_str();
      } else if (const std::string* s = std::get_if<std::string>(&params[i])) {
        values[i] = s->c_str();
      }
    }
    ResultPtr res;
    ASSIGN_OR_RETURN(const std::string* name, Prepared(sql, static_cast<int>(params.size())));
    if (name != nullptr) {
      res.reset(PQexecPrepared(conn_.get(), name->c_str(), static_cast<int>(params.size()),
                               values.data(), nullptr, nullptr, 0));
    } else {
      std::string text = Numbered(sql);
      res.reset(PQexecParams(conn_.get(), text.c_str(), static_cast<int>(params.size()), nullptr,
                             values.data(), nullptr, nullptr, 0));
    }
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(conn_.get(), res.get(), "exec");
    SqlResult result;
    int rows = PQntuples(res.get());
    int cols = PQnfields(res.get());
    for (int r = 0; r < rows; ++r) {
      std::vector<std::optional<std::string>> row;
      for (int c = 0; c < cols; ++c) {
        if (PQgetisnull(res.get(), r, c)) {
          row.emplace_back(std::nullopt);
        } else {
          row.emplace_back(std::string(PQgetvalue(res.get(), r, c),
                                       static_cast<size_t>(PQgetlength(res.get(), r, c))));
        }
      }
      result.rows.push_back(std::move(row));
    }
    const char* affected = PQcmdTuples(res.get());
    result.affected = (affected != nullptr && *affected) ? std::atoll(affected) : 0;
    return result;
  }

  Status ExecScript(std::string_view sql) override {
    std::string s(sql);
    ResultPtr res(PQexec(conn_.get(), s.c_str()));
    ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(conn_.get(), res.get(), "exec");
    return OkStatus();
  }

  Status BeginWrite() override {
    RETURN_IF_ERROR(ExecScript("BEGIN"));
    Status s = ExecScript(kWriteLockSql);
    if (!s.ok()) (void)ExecScript("ROLLBACK");
    return s;
  }

 private:
  // The Store's statements are a fixed set of strings: each is prepared
  // once per connection (parsed and planned once on the server) and run
  // with PQexecPrepared. Only plain DML is prepared (EXPLAIN and other
  // utility statements cannot be); nullptr means "run it unprepared".
  StatusOr<const std::string*> Prepared(std::string_view sql, int nparams) {
    auto it = prepared_.find(sql);
    if (it != prepared_.end()) return &it->second;
    const std::string_view head = sql.substr(0, sql.find(' '));
    if (head != "SELECT" && head != "INSERT" && head != "UPDATE" && head != "DELETE") {
      return static_cast<const std::string*>(nullptr);
    }
    if (prepared_.size() >= kMaxPrepared) return static_cast<const std::string*>(nullptr);
    std::string name = "vmseal_" + std::to_string(prepared_.size());
    std::string text = Numbered(sql);
    ResultPtr res(PQprepare(conn_.get(), name.c_str(), text.c_str(), nparams, nullptr));
    if (!res || PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
      return PgError(conn_.get(), res.get(), "prepare");
    }
    return &prepared_.emplace(std::string(sql), std::move(name)).first->second;
  }

  static constexpr size_t kMaxPrepared = 256;
  ConnPtr conn_;
  std::map<std::string, std::string, std::less<>> prepared_;  // SQL -> statement name
};

}  // namespace

StatusOr<std::unique_ptr<SqlConn>> OpenPostgres(const std::string& url) {
  ConnPtr conn(PQconnectdb(url.c_str()));
  if (!conn) return UnavailableError("postgres: out of memory");
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    std::string msg = PQerrorMessage(conn.get());
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    // The URL may carry a password: never echo it.
    return UnavailableError("postgres: cannot connect: " + msg);
  }
  auto c = std::make_unique<PgConn>(std::move(conn));
  RETURN_IF_ERROR(c->ExecScript("SET client_min_messages TO warning"));
  return std::unique_ptr<SqlConn>(std::move(c));
}

}  // namespace vmseal::kms::internal
