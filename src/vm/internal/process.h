// Child processes and qemu's QMP socket. Internal to vmseal_vm.
#ifndef VMSEAL_VM_INTERNAL_PROCESS_H_
#define VMSEAL_VM_INTERNAL_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::vm::internal {

// Starts argv (argv[0] looked up in PATH) as a child in a new session, stdin
// from /dev/null, stdout and stderr appended to `log_path`, no other fds.
// NOT_FOUND when argv[0] cannot be found, PERMISSION_DENIED when it cannot be
// executed; the error is known before this returns.
// `inherit_fd` >= 0: that descriptor becomes the child's descriptor 3 (e.g. a
// pipe holding a secret); it stays owned by the caller.
StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv, const std::string& log_path,
                             int inherit_fd = -1);

// Who a child runs as and what it inherits beyond stdio.
struct SpawnOptions {
  // Descriptors the child gets as 3, 4, ... in this order (-1: that number
  // stays closed; at most 24); they stay owned by the caller.
  std::vector<int> inherit_fds;
  // uid 0 (default): the child keeps the caller's credentials. Otherwise,
  // between fork and exec, the child sets its supplementary groups to
  // `groups`, its real/effective/saved gid to `gid` and uid to `uid`, and
  // PR_SET_NO_NEW_PRIVS, and fails (PERMISSION_DENIED) if any of it does not
  // hold. Needs CAP_SETUID/CAP_SETGID.
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  // The child's nice value (setpriority), e.g. 19 for background work that
  // must not slow a VM's boot. Default 0: the caller's.
  int nice_value = 0;
};

// SpawnProcess with options.
StatusOr<pid_t> SpawnProcessWith(const std::vector<std::string>& argv,
                                 const std::string& log_path, const SpawnOptions& options);

// true when `pid` exists and is not a zombie, or is a zombie child of this
// process that cannot be reaped yet (its other threads still exiting). Reaps
// `pid` (that pid only) if it is an exited child of this process.


bool ProcessAlive(pid_t pid);

// true when `pid` is alive and its /proc/<pid>/cmdline is exactly `argv`.
bool ProcessRunsCommand(pid_t pid, const std::vector<std::string>& argv);

// Polls ProcessAlive until it is false or `timeout_ms` passes; returns
// whether the process is gone.
bool WaitForExit(pid_t pid, int64_t timeout_ms);

// If `pid` is an exited child, its wait status as text ("exit status 1",
// "killed by signal 9"), reported once; otherwise "".
std::string ReapedStatusText(pid_t pid);

// If `pid` is an exited child (reaped now or earlier by ProcessAlive), sets
// *status to its wait status, forgets it and returns true; otherwise false.
bool TakeReapedStatus(pid_t pid, int* status);

// Connects to a QMP socket, negotiates capabilities and runs `command`
// (e.g. "quit", "query-status"); returns the "return" member as JSON text.
// UNAVAILABLE when the socket does not answer, DEADLINE_EXCEEDED after
// `timeout_ms`, INTERNAL when qemu returns an error.
StatusOr<std::string> QmpExecute(const std::string& socket_path, const std::string& command,
                                 int64_t timeout_ms);

// The same with an "arguments" object (JSON text; "" = none).
StatusOr<std::string> QmpExecuteWithArguments(const std::string& socket_path,
                                              const std::string& command,
                                              const std::string& arguments_json,
                                              int64_t timeout_ms);

// The last `max_bytes` of a file ("" when it cannot be read), as one line:
// control characters become spaces.
std::string FileTail(const std::string& path, size_t max_bytes);

// A listening unix socket bound at `path` (mode 0600, the caller's), for a
// child to serve on through an inherited descriptor. Returns the fd.
StatusOr<int> ListenUnixSocket(const std::string& path);

// Milliseconds on the monotonic and the wall clock.
int64_t MonotonicMs();
int64_t WallClockMs();

}  // namespace vmseal::vm::internal

#endif  // VMSEAL_VM_INTERNAL_PROCESS_H_
