// A narrow SQL connection seam with two implementations (SQLite, libpq), so
// that the Store is written once. SQL uses `?` placeholders; the PostgreSQL
// connection rewrites them to $1..$n.
#ifndef VMSEAL_KMS_INTERNAL_SQL_H_
#define VMSEAL_KMS_INTERNAL_SQL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "base/status.h"

namespace vmseal::kms::internal {

// A bound parameter: NULL, an integer or text.
using SqlValue = std::variant<std::nullptr_t, int64_t, std::string>;

struct SqlResult {
  // Each cell as text; nullopt for NULL.
  std::vector<std::vector<std::optional<std::string>>> rows;
  // Rows changed by INSERT/UPDATE/DELETE.
  int64_t affected = 0;
};

enum class SqlDialect { kSqlite, kPostgres };

// One database connection. Not thread-safe: the Store serializes use.
class SqlConn {
 public:
  virtual ~SqlConn() = default;
  virtual SqlDialect dialect() const = 0;
  // Runs one statement.
  virtual StatusOr<SqlResult> Exec(std::string_view sql, const std::vector<SqlValue>& params) = 0;
  // Runs statements without parameters (schema scripts, BEGIN/COMMIT).
  virtual Status ExecScript(std::string_view sql) = 0;
  // BEGIN that takes the write lock at once (SQLite BEGIN IMMEDIATE; on
  // PostgreSQL BEGIN plus a transaction-scoped advisory lock), so concurrent
  // writers (threads or processes) serialize instead of failing late.
  virtual Status BeginWrite() = 0;
};

// Opens (creating if needed) a SQLite file in WAL mode with a busy timeout.
StatusOr<std::unique_ptr<SqlConn>> OpenSqlite(const std::string& path);
// Connects to a postgres:// or postgresql:// URL.
StatusOr<std::unique_ptr<SqlConn>> OpenPostgres(const std::string& url);

}  // namespace vmseal::kms::internal

#endif  // VMSEAL_KMS_INTERNAL_SQL_H_
