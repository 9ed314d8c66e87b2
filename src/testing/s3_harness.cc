#include "testing/s3_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace vmseal::testing {
namespace {

bool CanConnect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  ::close(fd);
  return ok;
}

void StopPid(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 50; ++i) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
}

}  // namespace

StatusOr<int> PickFreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return InternalError("socket failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    return InternalError("bind to a free port failed");
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

StatusOr<std::unique_ptr<S3Server>> S3Server::Start(const std::vector<std::string>& buckets,
                                                    int ready_timeout_seconds) {
  const std::string script = SourceDir() + "/tools/s3/node_modules/s3rver/bin/s3rver.js";
  if (::access(script.c_str(), R_OK) != 0) {
    return FailedPreconditionError("s3rver is not installed at " + script +
                                   " (run scripts/setup.sh)");
  }
  ASSIGN_OR_RETURN(int port, PickFreeLoopbackPort());
  auto dir = std::make_unique<TempDir>();
  std::vector<std::string> args = {"node",          script,       "--silent",
                                   "--address",     "127.0.0.1",  "--port",
                                   std::to_string(port), "--directory", dir->path()};
  for (const std::string& b : buckets) {
    args.push_back("--configure-bucket");
    args.push_back(b);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  pid_t pid = ::fork();
  if (pid < 0) return InternalError("fork failed");
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_RDWR);
    if (devnull >= 0) {
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
    }
    ::execvp("node", argv.data());
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(ready_timeout_seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return UnavailableError("s3rver exited during startup (status " +
                              std::to_string(status) + ")");
    }
    if (CanConnect(port)) {
      return std::unique_ptr<S3Server>(new S3Server(pid, port, std::move(dir)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  StopPid(pid);
  return DeadlineExceededError("s3rver did not accept connections within " +
                               std::to_string(ready_timeout_seconds) + " s");
}

S3Server::~S3Server() { StopPid(pid_); }

}  // namespace vmseal::testing
