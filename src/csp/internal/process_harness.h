// Test-only: runs the real `vmseal` binary as a server process (KMS, portal)
// on a free loopback port, waits for its port file (bounded), and stops it by
// pid. Used by the process-level and integration tests of the portal.
#ifndef VMSEAL_CSP_INTERNAL_PROCESS_HARNESS_H_
#define VMSEAL_CSP_INTERNAL_PROCESS_HARNESS_H_

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "testing/test_util.h"

extern char** environ;

namespace vmseal::csp::testing {

class ServerProcess {
 public:
  // Starts `argv` (argv[0] is the binary) with stdout+stderr appended to
  // `log`, and waits up to `timeout_seconds` for `port_file` to appear.
  static StatusOr<std::unique_ptr<ServerProcess>> Start(std::vector<std::string> argv,
                                                        const std::string& log,
                                                        const std::string& port_file,
                                                        int timeout_seconds = 30) {
    ::unlink(port_file.c_str());
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                     0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) return InternalError("posix_spawn failed");
    std::unique_ptr<ServerProcess> p(new ServerProcess(pid, log));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
    while (true) {
      if (Env::Default()->FileExists(port_file)) {
        auto text = ReadFileToString(Env::Default(), port_file);
        if (text.ok() && !text->empty() && text->back() == '\n') {
          p->port_ = std::stoi(*text);
          return p;
        }
      }
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        p->pid_ = -1;
        return InternalError("server exited early: " + p->Log());
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return DeadlineExceededError("server did not start: " + p->Log());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~ServerProcess() { Stop(); }
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  // kill -9: the process gets no chance to flush or close anything.
  void Kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }
  int port() const { return port_; }
  // The process id (e.g. to SIGSTOP it), or -1 once stopped.
  pid_t pid() const { return pid_; }
  std::string Log() const {
    auto text = ReadFileToString(Env::Default(), log_);
    return text.ok() ? *text : "";
  }

 private:
  ServerProcess(pid_t pid, std::string log) : pid_(pid), log_(std::move(log)) {}
  pid_t pid_;
  std::string log_;
  int port_ = 0;
};

// A real KMS (`vmseal kms init` + `kms serve`, SQLite store) in `dir`, with
// a portal identity at dir/portal.pem + dir/portal-key.pem.
struct KmsInstance {
  std::string dir;
  std::unique_ptr<ServerProcess> process;
  std::string url() const { return "https://127.0.0.1:" + std::to_string(process->port()); }
  std::string ca() const { return dir + "/ca.pem"; }
  std::string portal_cert() const { return dir + "/portal.pem"; }
  std::string portal_key() const { return dir + "/portal-key.pem"; }
  // Issues an mTLS identity (`vmseal kms issue-identity`): PREFIX.pem and
  // PREFIX-key.pem with PREFIX = dir/name.
  Status IssueIdentity(const std::string& role, const std::string& name) const {
    std::string out;
    int rc = vmseal::testing::RunCommand({vmseal::testing::VmsealBinary(), "kms",
                                          "issue-identity", "--dir", dir, "--role", role, "--name",
                                          name, "--out", dir + "/" + name},
                                         &out, 60);
    if (rc != 0) return InternalError("issue-identity: " + out);
    return OkStatus();
  }
};

inline StatusOr<KmsInstance> StartKms(const std::string& dir) {
  std::string out;
  if (vmseal::testing::RunCommand({vmseal::testing::VmsealBinary(), "kms", "init", "--dir", dir},
                                  &out, 60) != 0) {
    return InternalError("kms init: " + out);
  }
  KmsInstance kms;
  kms.dir = dir;
  if (vmseal::testing::RunCommand({vmseal::testing::VmsealBinary(), "kms", "issue-identity",
                                   "--dir", dir, "--role", "portal", "--name", "portal",
                                   "--out", dir + "/portal"},
                                  &out, 60) != 0) {
    return InternalError("kms issue-identity: " + out);
  }
  ASSIGN_OR_RETURN(kms.process,
                   ServerProcess::Start({vmseal::testing::VmsealBinary(), "kms", "serve",
                                         "--config", dir + "/kms.json", "--port", "0",
                                         "--port-file", dir + "/port"},
                                        dir + "/serve.log", dir + "/port"));
  return kms;
}

}  // namespace vmseal::csp::testing

#endif  // VMSEAL_CSP_INTERNAL_PROCESS_HARNESS_H_
