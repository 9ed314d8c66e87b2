// Child processes for the demo: long-running services (each with its own log
// file, stopped by pid) and one-shot commands whose standard output the demo
// reads (JSON) while their standard error (progress bars) goes to the
// terminal. Not thread-safe.
#ifndef VMSEAL_DEMO_INTERNAL_SUBPROCESS_H_
#define VMSEAL_DEMO_INTERNAL_SUBPROCESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::demo::internal {

// A background service. The destructor stops it (SIGTERM, then SIGKILL
// after a bounded wait).
class Service {
 public:
  // Starts `argv` (argv[0] an absolute path or found in PATH) in its own
  // process group, stdin /dev/null, stdout+stderr appended to `log_path`,
  // with `env` added to this process's environment.
  static StatusOr<std::unique_ptr<Service>> Start(
      std::string name, const std::vector<std::string>& argv, const std::string& log_path,
      const std::map<std::string, std::string>& env = {});
  ~Service();
  Service(const Service&) = delete;
  Service& operator=(const Service&) = delete;

  // Waits until `path` exists and is non-empty (a port file), or the
  // process dies (FAILED_PRECONDITION with the log's tail), or `timeout_ms`.
  StatusOr<std::string> WaitForFile(const std::string& path, int timeout_ms);
  // Waits until the log contains `needle`.
  Status WaitForLog(const std::string& needle, int timeout_ms);
  bool Alive();
  // SIGTERM, wait up to `grace_ms`, then SIGKILL. Idempotent.
  void Stop(int grace_ms = 5000);

  const std::string& name() const { return name_; }
  const std::string& log_path() const { return log_path_; }
  pid_t pid() const { return pid_; }

 private:
  Service(std::string name, std::string log_path, pid_t pid)
      : name_(std::move(name)), log_path_(std::move(log_path)), pid_(pid) {}
  Status Died() const;
  std::string name_;
  std::string log_path_;
  pid_t pid_;
  bool reaped_ = false;
  int exit_status_ = 0;
};

struct CommandResult {
  int exit_code = -1;    // -1 when killed by a signal
  std::string out;       // standard output
};

// Runs `argv` to completion (bounded by `timeout_ms`; then SIGKILL and
// DEADLINE_EXCEEDED). Standard output is captured; standard error is
// inherited (progress bars reach the terminal) unless `err_path` is set,
// in which case it is appended there.
StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv, int timeout_ms,
                                   const std::map<std::string, std::string>& env = {},
                                   const std::string& err_path = "");

// The last `max_bytes` of a file ("" when unreadable).
std::string Tail(const std::string& path, size_t max_bytes);

}  // namespace vmseal::demo::internal

#endif  // VMSEAL_DEMO_INTERNAL_SUBPROCESS_H_
