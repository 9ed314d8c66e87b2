#include "json/json.h"
#include "vm/internal/process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <grp.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

namespace vmseal::vm::internal {
namespace {

// Wait statuses of children reaped by ProcessAlive, for ReapedStatusText.
std::mutex reaped_mu;
std::map<pid_t, int>& Reaped() {
  static auto* reaped = new std::map<pid_t, int>();
  return *reaped;
}

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes the fd now.
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

std::string WaitStatusText(int status) {
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}

// A QMP connection: newline-delimited JSON with a deadline.
class QmpConnection {
 public:
  QmpConnection(int fd, int64_t deadline_ms) : fd_(fd), deadline_ms_(deadline_ms) {}

  // The next message that is not an event.
  StatusOr<nlohmann::json> ReadReply() {
    for (;;) {
      ASSIGN_OR_RETURN(std::string line, ReadLine());
      StatusOr<nlohmann::json> parsed = ParseJsonObject(line, "qmp message");
      if (!parsed.ok()) return InternalError("qmp: malformed message from qemu");
      nlohmann::json j = *std::move(parsed);
      if (j.contains("event")) continue;
      return j;
    }
  }

  Status Send(const std::string& command, const nlohmann::json* arguments = nullptr) {
    nlohmann::json m = {{"execute", command}};
    if (arguments != nullptr) m["arguments"] = *arguments;
    std::string msg = m.dump() + "\n";
    size_t off = 0;
    while (off < msg.size()) {
      ssize_t n = ::send(fd_, msg.data() + off, msg.size() - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return UnavailableError(std::string("qmp: send: ") + std::strerror(errno));
      }
      off += static_cast<size_t>(n);
    }
    return OkStatus();
  }

 private:
  StatusOr<std::string> ReadLine() {
    for (;;) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (buffer_.size() > 1 << 20) return InternalError("qmp: message too long");
      int64_t left = deadline_ms_ - MonotonicMs();
      if (left <= 0) return DeadlineExceededError("qmp: no answer from qemu in time");
      pollfd p{fd_, POLLIN, 0};
      int rc = ::poll(&p, 1, static_cast<int>(left));
      if (rc < 0 && errno != EINTR) {
        return UnavailableError(std::string("qmp: poll: ") + std::strerror(errno));
      }
      if (rc <= 0) continue;
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        return UnavailableError(std::string("qmp: recv: ") + std::strerror(errno));
      }
      if (n == 0) return UnavailableError("qmp: qemu closed the connection");
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  const int fd_;
  const int64_t deadline_ms_;
  std::string buffer_;
};

}  // namespace

int64_t MonotonicMs() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

int64_t WallClockMs() {
  timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

StatusOr<pid_t> SpawnProcess(const std::vector<std::string>& argv, const std::string& log_path,
                             int inherit_fd) {
  SpawnOptions options;
  if (inherit_fd >= 0) options.inherit_fds.push_back(inherit_fd);
  return SpawnProcessWith(argv, log_path, options);
}

StatusOr<pid_t> SpawnProcessWith(const std::vector<std::string>& argv,
                                 const std::string& log_path, const SpawnOptions& options) {
  if (argv.empty()) return InvalidArgumentError("spawn: empty argv");
  if (options.inherit_fds.size() > 24) return InvalidArgumentError("spawn: too many fds");
  // Everything the child needs is prepared here: between fork and exec only
  // async-signal-safe calls are made.
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (devnull.get() < 0) return InternalError(std::string("open /dev/null: ") + std::strerror(errno));
  Fd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (log.get() < 0) {
    return InternalError("open " + log_path + ": " + std::strerror(errno));
  }
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    return InternalError(std::string("pipe: ") + std::strerror(errno));
  }
  Fd err_read(pipefd[0]);
  // Above the inherited numbers, so that placing them clobbers nothing.
  constexpr int kHighFd = 32;
  Fd err_write(::fcntl(pipefd[1], F_DUPFD_CLOEXEC, kHighFd));
  ::close(pipefd[1]);
  if (err_write.get() < 0) return InternalError(std::string("dup: ") + std::strerror(errno));
  std::vector<std::unique_ptr<Fd>> inherit;
  std::vector<int> inherit_raw;
  for (int fd : options.inherit_fds) {
    inherit.push_back(std::make_unique<Fd>(fd >= 0 ? ::fcntl(fd, F_DUPFD_CLOEXEC, kHighFd) : -1));
    if (fd >= 0 && inherit.back()->get() < 0) {
      return InternalError(std::string("dup: ") + std::strerror(errno));
    }
    inherit_raw.push_back(inherit.back()->get());
  }
  const bool drop = options.uid != 0;
  const std::vector<gid_t> groups = options.groups;
  const int nice_value = options.nice_value;

  pid_t pid = ::fork();
  if (pid < 0) return InternalError(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    auto fail = [&](int e) {
      (void)!::write(err_write.get(), &e, sizeof e);
      ::_exit(127);
    };
    ::setsid();
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::dup2(devnull.get(), 0) < 0 || ::dup2(log.get(), 1) < 0 || ::dup2(log.get(), 2) < 0) {
      fail(errno);
    }
    const int first_free = 3 + static_cast<int>(inherit_raw.size());
    for (size_t i = 0; i < inherit_raw.size(); ++i) {
      if (inherit_raw[i] >= 0 && ::dup2(inherit_raw[i], 3 + static_cast<int>(i)) < 0) {
        fail(errno);  // dup2 clears CLOEXEC
      }
      if (inherit_raw[i] < 0) ::close(3 + static_cast<int>(i));
    }
    // Close every inherited fd except stdio, the passed ones and the error pipe.
    int keep = err_write.get();
    for (int fd = first_free; fd < 1024; ++fd) {
      if (fd != keep) ::close(fd);
    }
    if (nice_value != 0 && ::setpriority(PRIO_PROCESS, 0, nice_value) != 0) fail(errno);
    if (drop) {
      // Groups first (they need privilege), then gid, then uid; checked,
      // so that a failed drop never runs the program privileged.
      if (::setgroups(groups.size(), groups.data()) != 0) fail(errno);
      if (::setresgid(options.gid, options.gid, options.gid) != 0) fail(errno);
      if (::setresuid(options.uid, options.uid, options.uid) != 0) fail(errno);
      uid_t r, e, s;
      if (::getresuid(&r, &e, &s) != 0 || r != options.uid || e != options.uid ||
          s != options.uid || ::setuid(0) == 0) {
        fail(EPERM);
      }
      if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(errno);
    }
    ::execvp(cargv[0], cargv.data());
    fail(errno);
  }
  // The read below ends at exec (close-on-exec) or at the child's report.
  err_write.Close();

  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(err_read.get(), &child_errno, sizeof child_errno);
  } while (n < 0 && errno == EINTR);
  if (n == sizeof child_errno) {
    int status;
    ::waitpid(pid, &status, 0);
    if (child_errno == ENOENT) return NotFoundError("qemu not found: " + argv[0]);
    if (child_errno == EACCES) return PermissionDeniedError("cannot execute " + argv[0]);
    if (child_errno == EPERM && drop) {
      return PermissionDeniedError("cannot run " + argv[0] + " as uid " +
                                   std::to_string(options.uid));
    }
    return InternalError("exec " + argv[0] + ": " + std::strerror(child_errno));
  }
  return pid;
}

StatusOr<int> ListenUnixSocket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return InvalidArgumentError("unix socket path too long: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return InternalError(std::string("socket: ") + std::strerror(errno));
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return InternalError("remove " + path + ": " + std::strerror(errno));
  }
  // Its directory is private to the agent (0700, or 0710 for VM users), so
  // the window before the chmod reaches no one.
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return InternalError("bind " + path + ": " + std::strerror(errno));
  }
  if (::chmod(path.c_str(), 0600) != 0) {
    return InternalError("chmod " + path + ": " + std::strerror(errno));
  }
  if (::listen(fd.get(), 8) != 0) {
    return InternalError("listen " + path + ": " + std::strerror(errno));
  }
  const int out = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (out < 0) return InternalError(std::string("dup: ") + std::strerror(errno));
  return out;
}

bool ProcessAlive(pid_t pid) {
  if (pid <= 0) return false;
  int status;
  pid_t r = ::waitpid(pid, &status, WNOHANG);
  if (r == pid) {
    std::lock_guard<std::mutex> lock(reaped_mu);
    Reaped()[pid] = status;
    return false;
  }
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  // A zombie someone else has to reap is gone for our purposes.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  size_t paren = content.rfind(')');
  if (paren == std::string::npos || paren + 2 >= content.size()) return false;
  char state = content[paren + 2];
  if (state == 'Z' || state == 'X') {
    // It became a zombie after the waitpid above: reap it now if it is our
    // child (only this pid), so that it does not stay a zombie; someone
    // else's zombie is gone for our purposes.
    // A zombie thread-group leader whose other threads are still exiting
    // cannot be reaped yet (waitpid gives 0): our child then still counts as
    // alive, so that callers come back and reap it.
    pid_t again = ::waitpid(pid, &status, WNOHANG);
    if (again == pid) {
      std::lock_guard<std::mutex> lock(reaped_mu);
      Reaped()[pid] = status;
      return false;
    }
    return again == 0;
  }
  return true;
}

bool ProcessRunsCommand(pid_t pid, const std::vector<std::string>& argv) {
  if (!ProcessAlive(pid)) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string expected;
  for (const std::string& a : argv) {
    expected += a;
    expected.push_back('\0');
  }
  return content == expected;
}

bool WaitForExit(pid_t pid, int64_t timeout_ms) {
  int64_t deadline = MonotonicMs() + timeout_ms;
  for (;;) {
    if (!ProcessAlive(pid)) return true;
    if (MonotonicMs() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string ReapedStatusText(pid_t pid) {
  ProcessAlive(pid);
  std::lock_guard<std::mutex> lock(reaped_mu);
  auto it = Reaped().find(pid);
  if (it == Reaped().end()) return "";
  std::string text = WaitStatusText(it->second);
  Reaped().erase(it);
  return text;
}

bool TakeReapedStatus(pid_t pid, int* status) {
  ProcessAlive(pid);
  std::lock_guard<std::mutex> lock(reaped_mu);
  auto it = Reaped().find(pid);
  if (it == Reaped().end()) return false;
  *status = it->second;
  Reaped().erase(it);
  return true;
}

StatusOr<std::string> QmpExecute(const std::string& socket_path, const std::string& command,
                                 int64_t timeout_ms) {
  return QmpExecuteWithArguments(socket_path, command, "", timeout_ms);
}

StatusOr<std::string> QmpExecuteWithArguments(const std::string& socket_path,
                                              const std::string& command,
                                              const std::string& arguments_json,
                                              int64_t timeout_ms) {
  nlohmann::json arguments;
  if (!arguments_json.empty()) {
    arguments = nlohmann::json::parse(arguments_json, nullptr, /*allow_exceptions=*/false);
    if (!arguments.is_object()) return InvalidArgumentError("qmp: arguments are not an object");
  }
  int64_t deadline = MonotonicMs() + timeout_ms;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) {
    return InvalidArgumentError("qmp socket path too long: " + socket_path);
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return InternalError(std::string("socket: ") + std::strerror(errno));
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return UnavailableError("qmp: connect " + socket_path + ": " + std::strerror(errno));
  }
  QmpConnection conn(fd.get(), deadline);
  ASSIGN_OR_RETURN(nlohmann::json greeting, conn.ReadReply());
  if (!greeting.contains("QMP")) return InternalError("qmp: no greeting from qemu");
  RETURN_IF_ERROR(conn.Send("qmp_capabilities"));
  ASSIGN_OR_RETURN(nlohmann::json caps, conn.ReadReply());
  if (!caps.contains("return")) return InternalError("qmp: qmp_capabilities refused");
  RETURN_IF_ERROR(conn.Send(command, arguments_json.empty() ? nullptr : &arguments));
  ASSIGN_OR_RETURN(nlohmann::json reply, conn.ReadReply());
  if (reply.contains("error")) {
    std::string desc = reply["error"].value("desc", std::string("unknown error"));
    return InternalError("qmp: " + command + ": " + desc);
  }
  if (!reply.contains("return")) return InternalError("qmp: unexpected reply to " + command);
  return reply["return"].dump();
}

std::string FileTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                             ? size - static_cast<std::streamoff>(max_bytes)
                             : 0;
  in.seekg(start);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (char& c : data) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  size_t b = data.find_first_not_of(' ');
  size_t e = data.find_last_not_of(' ');
  if (b == std::string::npos) return "";
  return data.substr(b, e - b + 1);
}

}  // namespace vmseal::vm::internal
