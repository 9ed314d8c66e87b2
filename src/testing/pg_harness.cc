#include "testing/pg_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

namespace vmseal::testing {
namespace {

// A port that was free a moment ago (bind 127.0.0.1:0, read, close).
StatusOr<int> PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  if (port <= 0) return InternalError("no free port");
  return port;
}

// fork + (optionally) drop to uid/gid + exec; output appended to log_path.
StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log_path,
                      bool drop, uid_t uid, gid_t gid) {
  pid_t pid = ::fork();
  if (pid < 0) return InternalError("fork failed");
  if (pid == 0) {
    int log = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) {
      ::dup2(log, 1);
      ::dup2(log, 2);
      ::close(log);
    }
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (drop && (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0)) {
      ::_exit(126);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for `pid` up to `seconds`; returns its exit status or -1 on timeout.
int WaitPid(pid_t pid, int seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -2;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

StatusOr<int> RunAndWait(const std::vector<std::string>& argv, const std::string& log,
                         bool drop, uid_t uid, gid_t gid, int seconds) {
  ASSIGN_OR_RETURN(pid_t pid, Spawn(argv, log, drop, uid, gid));
  int rc = WaitPid(pid, seconds);
  if (rc == -1) {
    ::kill(pid, SIGKILL);
    WaitPid(pid, 5);
    return DeadlineExceededError(argv[0] + " timed out");
  }
  return rc;
}

std::string Tail(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return "";
  std::string text;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) text.append(buf, n);
  std::fclose(f);
  if (text.size() > 600) text = text.substr(text.size() - 600);
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

}  // namespace

StatusOr<std::string> FindPostgresBinDir() {
  glob_t g{};
  std::vector<std::string> dirs;
  if (::glob("/usr/lib/postgresql/*/bin/postgres", 0, nullptr, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc; ++i) {
      dirs.push_back(std::filesystem::path(g.gl_pathv[i]).parent_path().string());
    }
  }
  ::globfree(&g);
  if (dirs.empty()) return NotFoundError("no /usr/lib/postgresql/*/bin/postgres (install postgresql)");
  std::sort(dirs.begin(), dirs.end());
  return dirs.back();
}

StatusOr<std::unique_ptr<PgHarness>> PgHarness::Start(int ready_timeout_seconds) {
  std::unique_ptr<PgHarness> h(new PgHarness());
  ASSIGN_OR_RETURN(h->bin_dir_, FindPostgresBinDir());
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base != nullptr && *base ? base : "/tmp") + "/vmseal-pg-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return InternalError("mkdtemp failed");
  h->dir_ = tmpl;
  ::mkdir((h->dir_ + "/sock").c_str(), 0700);
  if (::geteuid() == 0) {
    passwd* pw = ::getpwnam("postgres");
    if (pw == nullptr) return FailedPreconditionError("running as root and no `postgres` user");
    h->drop_privileges_ = true;
    h->run_uid_ = pw->pw_uid;
    h->run_gid_ = pw->pw_gid;
    for (const char* sub : {"", "/sock"}) {
      if (::chown((h->dir_ + sub).c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        return InternalError("chown of the temp dir failed");
      }
    }
  }
  const std::string log = h->dir_ + "/log";
  ASSIGN_OR_RETURN(int rc, RunAndWait({h->bin_dir_ + "/initdb", "-D", h->dir_ + "/data", "-U",
                                       "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"},
                                      log, h->drop_privileges_, h->run_uid_, h->run_gid_, 120));
  if (rc != 0) return InternalError("initdb failed: " + Tail(log));
  ASSIGN_OR_RETURN(h->port_, PickFreePort());
  ASSIGN_OR_RETURN(h->pid_, Spawn({h->bin_dir_ + "/postgres", "-D", h->dir_ + "/data", "-k",
                                   h->dir_ + "/sock", "-h", "127.0.0.1", "-p",
                                   std::to_string(h->port_), "-c", "fsync=off", "-c",
                                   "max_connections=200"},
                                  log, h->drop_privileges_, h->run_uid_, h->run_gid_));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(ready_timeout_seconds);
  while (true) {
    ASSIGN_OR_RETURN(int ready, RunAndWait({h->bin_dir_ + "/pg_isready", "-q", "-h", "127.0.0.1",
                                            "-p", std::to_string(h->port_)},
                                           "/dev/null", false, 0, 0, 10));
    if (ready == 0) break;
    if (WaitPid(h->pid_, 0) != -1) {
      h->pid_ = -1;
      return InternalError("postgres exited: " + Tail(log));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceededError("postgres not ready: " + Tail(log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return h;
}

PgHarness::~PgHarness() {
  if (pid_ > 0) {
    ::kill(pid_, SIGINT);  // fast shutdown
    if (WaitPid(pid_, 30) == -1) {
      ::kill(pid_, SIGKILL);
      WaitPid(pid_, 10);
    }
  }
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

StatusOr<std::string> PgHarness::CreateDatabase(const std::string& name) {
  if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      })) {
    return InvalidArgumentError("bad database name");
  }
  ASSIGN_OR_RETURN(int rc, RunAndWait({bin_dir_ + "/psql", "-q", "-h", "127.0.0.1", "-p",
                                       std::to_string(port_), "-U", "postgres", "-d", "postgres",
                                       "-c", "CREATE DATABASE " + name},
                                      dir_ + "/psql.log", false, 0, 0, 60));
  if (rc != 0) return InternalError("CREATE DATABASE failed: " + Tail(dir_ + "/psql.log"));
  return "postgres://postgres@127.0.0.1:" + std::to_string(port_) + "/" + name;
}

}  // namespace vmseal::testing
