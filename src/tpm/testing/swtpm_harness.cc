#include "tpm/testing/swtpm_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

namespace vmseal::tpm::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Runs argv with stdout/stderr to `log_path`; returns its exit status or -1.
// Bounded by `timeout_ms` (then SIGKILL).
int RunQuiet(const std::vector<std::string>& argv, const std::string& log_path, int timeout_ms) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Status WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  f.close();
  if (!f) return InternalError("cannot write " + path);
  return OkStatus();
}

// A TPM2_GetRandom(1) over the socket protocol of swtpm (plain TPM command
// bytes on the server socket): answers once the TPM is ready.
bool TpmAnswers(const std::string& sock_path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (sock_path.size() >= sizeof(addr.sun_path)) {
    close(fd);
    return false;
  }
  std::memcpy(addr.sun_path, sock_path.c_str(), sock_path.size() + 1);
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const uint8_t cmd[] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7B, 0, 1};
    uint8_t resp[64];
    if (write(fd, cmd, sizeof(cmd)) == static_cast<ssize_t>(sizeof(cmd))) {
      timeval tv{0, 200000};
      setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ssize_t n = read(fd, resp, sizeof(resp));
      ok = n >= 10 && resp[6] == 0 && resp[7] == 0 && resp[8] == 0 && resp[9] == 0;
    }
  }
  close(fd);
  return ok;
}

}  // namespace

StatusOr<std::unique_ptr<Swtpm>> Swtpm::Start(const SwtpmOptions& options) {
  std::string parent = options.parent_dir;
  if (parent.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string templ = parent + "/vmseal-swtpm-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return InternalError("mkdtemp " + templ);
  std::unique_ptr<Swtpm> tpm(new Swtpm(templ, options.ready_timeout_ms));
  if (mkdir((templ + "/state").c_str(), 0700) != 0) return InternalError("mkdir state");
  if (options.create_certificates) RETURN_IF_ERROR(tpm->Manufacture());
  RETURN_IF_ERROR(tpm->Launch());
  return tpm;
}

Status Swtpm::Manufacture() {
  const std::string ca = dir_ + "/ca";
  if (mkdir(ca.c_str(), 0700) != 0) return InternalError("mkdir ca");
  RETURN_IF_ERROR(WriteFile(dir_ + "/localca.conf", "statedir = " + ca + "\nsigningkey = " + ca +
                                                        "/signkey.pem\nissuercert = " + ca +
                                                        "/issuercert.pem\ncertserial = " + ca +
                                                        "/certserial\n"));
  RETURN_IF_ERROR(WriteFile(dir_ + "/localca.options",
                            "--platform-manufacturer vmseal\n--platform-version 2.1\n"
                            "--platform-model swtpm\n"));
  RETURN_IF_ERROR(WriteFile(dir_ + "/swtpm_setup.conf",
                            "create_certs_tool = /usr/bin/swtpm_localca\n"
                            "create_certs_tool_config = " +
                                dir_ +
                                "/localca.conf\n"
                                "create_certs_tool_options = " +
                                dir_ + "/localca.options\n"));
  int rc = RunQuiet({"swtpm_setup", "--tpm2", "--tpmstate", dir_ + "/state", "--config",
                     dir_ + "/swtpm_setup.conf", "--create-ek-cert", "--create-platform-cert",
                     "--lock-nvram", "--overwrite", "--pcr-banks", "sha256"},
                    dir_ + "/swtpm_setup.log", 60000);
  if (rc != 0) return UnavailableError("swtpm_setup failed; see " + dir_ + "/swtpm_setup.log");
  std::string bundle;
  for (const char* name : {"/swtpm-localca-rootca-cert.pem", "/issuercert.pem"}) {
    std::ifstream f(ca + name, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    if (!f) return InternalError(std::string("missing local CA file ") + name);
    bundle += ss.str();
  }
  ca_bundle_pem_ = std::move(bundle);
  return OkStatus();
}

Status Swtpm::Launch() {
  if (pid_ > 0) return FailedPreconditionError("swtpm already running");
  const std::string sock = dir_ + "/tpm.sock";
  unlink(sock.c_str());
  unlink((sock + ".ctrl").c_str());
  std::vector<std::string> argv = {"swtpm",
                                   "socket",
                                   "--tpm2",
                                   "--tpmstate",
                                   "dir=" + dir_ + "/state",
                                   "--server",
                                   "type=unixio,path=" + sock,
                                   "--ctrl",
                                   "type=unixio,path=" + sock + ".ctrl",
                                   "--flags",
                                   "not-need-init,startup-clear",
                                   "--log",
                                   "file=" + dir_ + "/swtpm.log,level=1"};
  pid_t pid = fork();
  if (pid < 0) return InternalError("fork swtpm");
  if (pid == 0) {
    int fd = open((dir_ + "/swtpm.out").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  pid_ = pid;
  auto deadline = Clock::now() + std::chrono::milliseconds(ready_timeout_ms_);
  while (Clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return UnavailableError("swtpm exited at start; see " + dir_ + "/swtpm.out");
    }
    if (TpmAnswers(sock)) return OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  (void)Stop();
  return UnavailableError("swtpm did not answer in time");
}

Status Swtpm::Stop() {
  if (pid_ <= 0) return OkStatus();
  RunQuiet({"swtpm_ioctl", "--unix", dir_ + "/tpm.sock.ctrl", "-s"}, dir_ + "/ioctl.log", 2000);
  auto deadline = Clock::now() + std::chrono::seconds(2);
  int status = 0;
  while (waitpid(pid_, &status, WNOHANG) != pid_) {
    if (Clock::now() > deadline) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  pid_ = -1;
  return OkStatus();
}

Status Swtpm::Restart() {
  RETURN_IF_ERROR(Stop());
  return Launch();
}

Swtpm::~Swtpm() {
  (void)Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace vmseal::tpm::testing
