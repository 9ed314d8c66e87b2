#include "demo/internal/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "base/env.h"

extern char** environ;

namespace vmseal::demo::internal {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// environ plus `extra` (which wins), as owned strings and a char* array.
struct Envp {
  std::vector<std::string> owned;
  std::vector<char*> ptrs;
  explicit Envp(const std::map<std::string, std::string>& extra) {
    for (char** e = environ; *e != nullptr; ++e) {
      std::string kv(*e);
      auto eq = kv.find('=');
      if (eq != std::string::npos && extra.count(kv.substr(0, eq)) != 0) continue;
      owned.push_back(std::move(kv));
    }
    for (const auto& [k, v] : extra) owned.push_back(k + "=" + v);
    for (auto& s : owned) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
  }
};

struct Argv {
  std::vector<std::string> owned;
  std::vector<char*> ptrs;
  explicit Argv(const std::vector<std::string>& argv) : owned(argv) {
    for (auto& s : owned) ptrs.push_back(s.data());
    ptrs.push_back(nullptr);
  }
};

// posix_spawnp with the given file actions; errors name the program only.
StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, posix_spawn_file_actions_t* fa,
                      bool own_group, const std::map<std::string, std::string>& env) {
  if (argv.empty()) return InvalidArgumentError("empty command");
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (own_group) {
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
  }
  Argv a(argv);
  Envp e(env);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, a.ptrs[0], fa, &attr, a.ptrs.data(), e.ptrs.data());
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return ErrnoToStatus(rc, "start", argv[0]);
  return pid;
}

}  // namespace

std::string Tail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  std::streamoff size = in.tellg();
  std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                             ? size - static_cast<std::streamoff>(max_bytes)
                             : 0;
  in.seekg(start);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StatusOr<std::unique_ptr<Service>> Service::Start(std::string name,
                                                  const std::vector<std::string>& argv,
                                                  const std::string& log_path,
                                                  const std::map<std::string, std::string>& env) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  auto pid = Spawn(argv, &fa, /*own_group=*/true, env);
  posix_spawn_file_actions_destroy(&fa);
  if (!pid.ok()) return pid.status().WithPrefix(name);
  return std::unique_ptr<Service>(new Service(std::move(name), log_path, *pid));
}

Service::~Service() { Stop(); }

bool Service::Alive() {
  if (reaped_) return false;
  int st = 0;
  pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exit_status_ = st;
    return false;
  }
  return r == 0;
}

Status Service::Died() const {
  std::string how = WIFEXITED(exit_status_)
                        ? "exit status " + std::to_string(WEXITSTATUS(exit_status_))
                        : "killed by signal " + std::to_string(WTERMSIG(exit_status_));
  return FailedPreconditionError(name_ + " exited (" + how + "); last log lines:\n" +
                                 Tail(log_path_, 1500));
}

StatusOr<std::string> Service::WaitForFile(const std::string& path, int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  while (true) {
    std::ifstream in(path);
    std::string text;
    if (in && std::getline(in, text) && !text.empty()) return text;
    if (!Alive()) return Died();
    if (NowMs() > deadline) {
      return DeadlineExceededError(name_ + " did not write " + path + " within " +
                                   std::to_string(timeout_ms / 1000) + " s; log: " + log_path_);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Status Service::WaitForLog(const std::string& needle, int timeout_ms) {
  const int64_t deadline = NowMs() + timeout_ms;
  while (true) {
    if (Tail(log_path_, 1 << 20).find(needle) != std::string::npos) return OkStatus();
    if (!Alive()) return Died();
    if (NowMs() > deadline) {
      return DeadlineExceededError(name_ + ": \"" + needle + "\" not seen within " +
                                   std::to_string(timeout_ms / 1000) + " s; log: " + log_path_);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Service::Stop(int grace_ms) {
  if (reaped_ || pid_ <= 0) return;
  if (!Alive()) return;
  ::kill(-pid_, SIGTERM);
  const int64_t deadline = NowMs() + grace_ms;
  while (Alive() && NowMs() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (Alive()) {
    ::kill(-pid_, SIGKILL);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    reaped_ = true;
  }
}

StatusOr<CommandResult> RunCommand(const std::vector<std::string>& argv, int timeout_ms,
                                   const std::map<std::string, std::string>& env,
                                   const std::string& err_path) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe", "");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  if (!err_path.empty()) {
    posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0600);
  }
  auto pid = Spawn(argv, &fa, /*own_group=*/false, env);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (!pid.ok()) {
    ::close(fds[0]);
    return pid.status();
  }
  CommandResult result;
  const int64_t deadline = NowMs() + timeout_ms;
  bool timed_out = false;
  char buf[65536];
  while (true) {
    int64_t left = deadline - NowMs();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    result.out.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(*pid, SIGKILL);
  int st = 0;
  while (::waitpid(*pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (timed_out) {
    return DeadlineExceededError(argv[0] + " " + (argv.size() > 1 ? argv[1] : "") +
                                 " did not finish within " + std::to_string(timeout_ms / 1000) +
                                 " s");
  }
  result.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return result;
}

}  // namespace vmseal::demo::internal
