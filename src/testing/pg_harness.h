// A real PostgreSQL server for tests: initdb in a temp dir, postgres on
// 127.0.0.1 with a free port and a private unix socket dir, trust auth for
// the `postgres` role. When the test runs as root the server runs as the
// `postgres` OS user (PostgreSQL refuses root). Stopped by pid (SIGINT, then
// SIGKILL after a bounded wait) on destruction.
#ifndef VMSEAL_TESTING_PG_HARNESS_H_
#define VMSEAL_TESTING_PG_HARNESS_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "base/status.h"

namespace vmseal::testing {

class PgHarness {
 public:
  // Starts a server; waits up to `ready_timeout_seconds` for pg_isready.
  static StatusOr<std::unique_ptr<PgHarness>> Start(int ready_timeout_seconds = 60);
  ~PgHarness();
  PgHarness(const PgHarness&) = delete;
  PgHarness& operator=(const PgHarness&) = delete;

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  // Creates database `name` (letters, digits, underscore) and returns its
  // URL, "postgres://postgres@127.0.0.1:<port>/<name>".
  StatusOr<std::string> CreateDatabase(const std::string& name);

 private:
  PgHarness() = default;
  std::string dir_;      // temp root: data/, sock/, log
  std::string bin_dir_;  // /usr/lib/postgresql/<v>/bin
  int port_ = 0;
  pid_t pid_ = -1;
  uid_t run_uid_ = 0;
  gid_t run_gid_ = 0;
  bool drop_privileges_ = false;
};

// The directory holding initdb/postgres/psql, or NOT_FOUND.
StatusOr<std::string> FindPostgresBinDir();

}  // namespace vmseal::testing

#endif  // VMSEAL_TESTING_PG_HARNESS_H_
