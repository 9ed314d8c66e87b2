#include "nbd_export/export.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include <openssl/crypto.h>

#include "base/env.h"
#include "json/json.h"

namespace vmseal::nbd_export {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kKeyFd = 3;
// The mutual-TLS material of a remote source, as PEM on pipes.
constexpr int kCaFd = 4;
constexpr int kCertFd = 5;
constexpr int kClientKeyFd = 6;
// A pipe holds 64 KiB: everything is written before the fork.
constexpr size_t kMaxPemBytes = size_t{60} << 10;
constexpr size_t kDataKeyBytes = 32;
// How often Unlock looks whether nbdkit listens.
constexpr int kListenPollMs = 5;

std::string SocketPath(const ExportOptions& o) { return o.state_dir + "/nbd.sock"; }
std::string PidPath(const ExportOptions& o) { return o.state_dir + "/nbdkit.pid"; }
std::string LogPath(const ExportOptions& o) { return o.state_dir + "/nbdkit.log"; }
std::string EventsPath(const ExportOptions& o) { return o.state_dir + "/events.jsonl"; }

Status Validate(const ExportOptions& o) {
  if (o.plugin_path.empty()) return InvalidArgumentError("export: plugin_path is required");
  if (o.state_dir.empty()) return InvalidArgumentError("export: state_dir is required");
  if (o.package_path.empty() == o.remote.url.empty()) {
    return InvalidArgumentError("export: exactly one source (package_path or remote.url)");
  }
  if (SocketPath(o).size() >= sizeof(sockaddr_un::sun_path)) {
    return InvalidArgumentError("export: state_dir is too long for a unix socket path");
  }
  for (const std::string* v : {&o.disk_id, &o.expected_image_id, &o.expected_tenant}) {
    if (v->find('\0') != std::string::npos) return InvalidArgumentError("export: NUL in option");
  }
  return OkStatus();
}

// A /proc file (whose size reads as 0, so not through Env).
std::string ReadProcFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The text of a file nbdkit writes (in a directory a VM user may own): a
// regular file opened without following a symlink, so a hostile export
// cannot make the agent read another file. NOT_FOUND when missing.
StatusOr<std::string> ReadExportFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ErrnoToStatus(errno, "open", path);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return FailedPreconditionError("export: not a regular file: " + path);
  }
  std::string out;
  char buf[65536];
  while (true) {
    const ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
    if (out.size() > (uint64_t{64} << 20)) break;
  }
  close(fd);
  return out;
}

// The pid in the pid file, or -1.
pid_t ReadPid(const std::string& path) {
  auto text = ReadExportFile(path);
  if (!text.ok()) return -1;
  long v = std::strtol(text->c_str(), nullptr, 10);
  return v > 1 ? static_cast<pid_t>(v) : -1;
}

// Whether `pid` is a live (not zombie) nbdkit serving `socket`.
bool IsOurNbdkit(pid_t pid, const std::string& socket) {
  if (pid <= 1 || kill(pid, 0) != 0) return false;
  const std::string stat = ReadProcFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z') {
    return false;
  }
  const std::string cmd = ReadProcFile("/proc/" + std::to_string(pid) + "/cmdline");
  std::vector<std::string> args;
  std::stringstream ss(cmd);
  for (std::string a; std::getline(ss, a, '\0');) args.push_back(a);
  if (args.empty() || std::filesystem::path(args[0]).filename() != "nbdkit") return false;
  for (const std::string& a : args) {
    if (a == socket) return true;
  }
  return false;
}

bool SocketAnswers(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// The plugin's error from nbdkit's log as a Status ("... vmseal: CODE: msg").
Status ErrorFromLog(const std::string& log_path, const std::string& fallback) {
  auto text = ReadExportFile(log_path);
  if (!text.ok()) return UnavailableError(fallback);
  const std::string marker = "vmseal: ";
  size_t pos = text->rfind(marker);
  if (pos == std::string::npos) {
    std::string tail = text->size() > 300 ? text->substr(text->size() - 300) : *text;
    while (!tail.empty() && tail.back() == '\n') tail.pop_back();
    return UnavailableError(fallback + (tail.empty() ? "" : ": " + tail));
  }
  std::string line = text->substr(pos + marker.size());
  line = line.substr(0, line.find('\n'));
  for (int c = 1; c <= static_cast<int>(StatusCode::kUnauthenticated); ++c) {
    const std::string name(StatusCodeName(static_cast<StatusCode>(c)));
    if (line.starts_with(name + ": ")) {
      return Status(static_cast<StatusCode>(c), "export: " + line.substr(name.size() + 2));
    }
  }
  return FailedPreconditionError("export: " + line);
}

}  // namespace

int ExportThreads(const ExportOptions& options) {
  if (options.threads > 0) return options.threads;
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  // A remote source's thread may wait for a range fetch (no CPU held): at
  // least 4 there, so that reads of cached blocks go on meanwhile.
  const long least = options.package_path.empty() ? 4 : 2;
  return static_cast<int>(std::clamp<long>(cpus, least, 16));
}

namespace {

std::vector<std::string> Argv(const ExportOptions& o) {
  std::vector<std::string> a = {o.nbdkit_path, "--foreground"};
  if (o.exit_with_parent) a.push_back("--exit-with-parent");
  a.insert(a.end(), {"--readonly", "--unix", SocketPath(o), "--pidfile", PidPath(o),
                     "--threads", std::to_string(ExportThreads(o)),
                     o.plugin_path, "keyfd=" + std::to_string(kKeyFd),
                     "events=" + EventsPath(o)});
  if (!o.package_path.empty()) {
    a.push_back("package=" + o.package_path);
  } else {
    a.push_back("url=" + o.remote.url);
    a.push_back("cafd=" + std::to_string(kCaFd));
    if (!o.remote.cert_file.empty()) {
      a.push_back("certfd=" + std::to_string(kCertFd));
      a.push_back("clientkeyfd=" + std::to_string(kClientKeyFd));
    }
    a.push_back("cache=" + o.state_dir);
    a.push_back("readahead=" + std::to_string(o.readahead_bytes));
    a.push_back(std::string("prefetch=") + (o.prefetch ? "true" : "false"));
  }
  if (!o.disk_id.empty()) a.push_back("disk=" + o.disk_id);
  if (!o.expected_image_id.empty()) a.push_back("image-id=" + o.expected_image_id);
  if (!o.expected_tenant.empty()) a.push_back("tenant=" + o.expected_tenant);
  return a;
}

// Sends SIGTERM, waits up to 5 s, then SIGKILL. `child`: reap with waitpid.
void Terminate(pid_t pid, bool child) {
  if (pid <= 0) return;
  auto gone = [&] {
    if (child) return waitpid(pid, nullptr, WNOHANG) == pid;
    return kill(pid, 0) != 0;
  };
  if (gone()) return;
  kill(pid, SIGTERM);
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (Clock::now() < deadline) {
    if (gone()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid, SIGKILL);
  if (child) {
    waitpid(pid, nullptr, 0);
  } else {
    for (int i = 0; i < 500 && kill(pid, 0) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

void RemoveRunFiles(const ExportOptions& o) {
  unlink(SocketPath(o).c_str());
  unlink(PidPath(o).c_str());
}

// Gives state_dir and its direct entries to the VM user (lchown: a link a
// hostile export left is changed, never what it names). The directory is
// created by us and its parents are the agent's, so it cannot be swapped.
Status GiveStateDir(const ExportOptions& o) {
  const uid_t id = o.run_as_uid;
  if (lchown(o.state_dir.c_str(), id, id) != 0) return ErrnoToStatus(errno, "chown", o.state_dir);
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(o.state_dir, ec)) {
    if (lchown(e.path().c_str(), id, id) != 0 && errno != ENOENT) {
      return ErrnoToStatus(errno, "chown", e.path().string());
    }
  }
  if (ec) return ErrnoToStatus(ec.value(), "list", o.state_dir);
  return OkStatus();
}

// A pipe (O_CLOEXEC) whose read end holds `bytes` and end of file; -1 on
// failure.
int FilledPipe(std::span<const uint8_t> bytes) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = write(p[1], bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  close(p[1]);
  if (done != bytes.size()) {
    close(p[0]);
    return -1;
  }
  return p[0];
}

// A pipe carrying the PEM file at `path` (read by the agent, which may; the
// VM user nbdkit runs as may not).
StatusOr<int> PemPipe(const std::string& path, const char* what) {
  auto text = ReadFileToString(Env::Default(), path);
  if (!text.ok()) return text.status().WithPrefix(std::string("export: ") + what);
  if (text->empty() || text->size() > kMaxPemBytes) {
    OPENSSL_cleanse(text->data(), text->size());
    return InvalidArgumentError(std::string("export: ") + what + " must be 1 byte to 60 KiB");
  }
  const int fd = FilledPipe({reinterpret_cast<const uint8_t*>(text->data()), text->size()});
  OPENSSL_cleanse(text->data(), text->size());
  if (fd < 0) return InternalError(std::string("export: cannot pass the ") + what);
  return fd;
}

}  // namespace

Export::Export(ExportOptions options, pid_t pid, bool child, bool reused)
    : options_(std::move(options)),
      socket_path_(SocketPath(options_)),
      pid_(pid),
      child_(child),
      reused_(reused) {}

Export::~Export() {
  if (!detached_) (void)Stop();
}

StatusOr<std::unique_ptr<Export>> Export::Start(const ExportOptions& options,
                                                const SecretBytes& data_key) {
  if (data_key.size() != kDataKeyBytes) return InvalidArgumentError("export: bad data key size");
  ASSIGN_OR_RETURN(std::unique_ptr<Export> e, Spawn(options));
  RETURN_IF_ERROR(e->Unlock(data_key));
  return e;
}

StatusOr<std::unique_ptr<Export>> Export::Spawn(const ExportOptions& options) {
  RETURN_IF_ERROR(Validate(options));
  std::error_code ec;
  std::filesystem::create_directories(options.state_dir, ec);
  if (ec) return ErrnoToStatus(ec.value(), "create", options.state_dir);
  if (chmod(options.state_dir.c_str(), 0700) != 0) {
    return ErrnoToStatus(errno, "chmod", options.state_dir);
  }
  if (IsOurNbdkit(ReadPid(PidPath(options)), SocketPath(options))) {
    return AlreadyExistsError("export: an nbdkit already serves " + SocketPath(options));
  }
  RemoveRunFiles(options);

  if (options.run_as_uid != 0) {
    if (geteuid() != 0) return FailedPreconditionError("export: run_as_uid needs root");
    RETURN_IF_ERROR(GiveStateDir(options));
  }

  // A remote source's TLS material travels in pipes the child inherits,
  // written before the fork (a pipe holds 64 KiB); the key in a socket pair
  // whose other end the agent keeps (close-on-exec) and writes in Unlock,
  // so nothing else ever carries them.
  // fds[i] becomes descriptor kKeyFd + i in the child (-1: none).
  int fds[4] = {-1, -1, -1, -1};
  auto close_fds = [&] {
    for (int& fd : fds) {
      if (fd >= 0) close(fd);
      fd = -1;
    }
  };
  int key_pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, key_pair) != 0) {
    return ErrnoToStatus(errno, "socketpair", "export key channel");
  }
  // Ours only sends; theirs only receives.
  (void)shutdown(key_pair[0], SHUT_RD);
  (void)shutdown(key_pair[1], SHUT_WR);
  fds[0] = key_pair[1];
  struct KeyEnd {
    int fd;
    ~KeyEnd() {
      if (fd >= 0) close(fd);
    }
  } key_end{key_pair[0]};
  if (options.package_path.empty()) {
    auto ca = PemPipe(options.remote.ca_file, "CA file");
    if (!ca.ok()) {
      close_fds();
      return ca.status();
    }
    fds[1] = *ca;
    if (!options.remote.cert_file.empty()) {
      auto cert = PemPipe(options.remote.cert_file, "client certificate");
      auto key = cert.ok() ? PemPipe(options.remote.key_file, "client key") : cert.status();
      if (cert.ok()) fds[2] = *cert;
      if (!key.ok()) {
        close_fds();
        return key.status();
      }
      fds[3] = *key;
    }
  }
  // A fresh log: a file a VM user left in its place (a link to a host file)
  // is removed, never followed or truncated.
  unlink(LogPath(options).c_str());
  const int log_fd = open(LogPath(options).c_str(),
                          O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_APPEND | O_CLOEXEC, 0600);
  if (log_fd >= 0 && options.run_as_uid != 0) {
    (void)!fchown(log_fd, options.run_as_uid, options.run_as_uid);
  }
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  // Above the descriptors the child sets up, so no dup2 clobbers another.
  int hi[4] = {-1, -1, -1, -1};
  bool fds_ok = true;
  for (int i = 0; i < 4; ++i) {
    if (fds[i] < 0) continue;
    hi[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
    fds_ok = fds_ok && hi[i] >= 0;
  }
  close_fds();
  const int log_hi = log_fd < 0 ? -1 : fcntl(log_fd, F_DUPFD_CLOEXEC, 10);
  const int null_hi = null_fd < 0 ? -1 : fcntl(null_fd, F_DUPFD_CLOEXEC, 10);
  if (log_fd >= 0) close(log_fd);
  if (null_fd >= 0) close(null_fd);
  auto close_all = [&] {
    for (int fd : {hi[0], hi[1], hi[2], hi[3], log_hi, null_hi}) {
      if (fd >= 0) close(fd);
    }
  };
  if (!fds_ok || log_hi < 0 || null_hi < 0) {
    close_all();
    return InternalError("export: cannot prepare the child's descriptors");
  }

  const std::vector<std::string> args = Argv(options);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const uid_t uid = options.run_as_uid;
  std::vector<gid_t> groups(options.run_as_groups.begin(), options.run_as_groups.end());
  if (groups.empty()) groups.push_back(uid);

  const pid_t pid = fork();
  if (pid < 0) {
    close_all();
    return ErrnoToStatus(errno, "fork", options.nbdkit_path);
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    if (dup2(null_hi, 0) < 0 || dup2(log_hi, 1) < 0 || dup2(log_hi, 2) < 0) _exit(126);
    for (int i = 0; i < 4; ++i) {
      if (hi[i] >= 0 && dup2(hi[i], kKeyFd + i) < 0) _exit(126);
    }
    close_range(kClientKeyFd + 1, ~0U, 0);
    if (uid != 0) {
      // The VM's user for good: groups, gid, then uid (all three ids), and
      // no way back up through a set-id binary.
      if (setgroups(groups.size(), groups.data()) != 0 || setresgid(uid, uid, uid) != 0 ||
          setresuid(uid, uid, uid) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        _exit(125);
      }
    }
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close_all();

  std::unique_ptr<Export> e(new Export(options, pid, /*child=*/true, /*reused=*/false));
  e->key_fd_ = key_end.fd;
  key_end.fd = -1;
  return e;
}

Status Export::Unlock(const SecretBytes& data_key) {
  if (key_fd_ < 0) return FailedPreconditionError("export: not waiting for a key");
  if (data_key.size() != kDataKeyBytes) {
    (void)Stop();
    return InvalidArgumentError("export: bad data key size");
  }
  // The key, then end of file. MSG_NOSIGNAL: an nbdkit that already ended
  // (a refused package) is an error here, read from its log below.
  size_t done = 0;
  while (done < data_key.size()) {
    const ssize_t w = send(key_fd_, data_key.UnsafeData() + done, data_key.size() - done,
                           MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    done += static_cast<size_t>(w);
  }
  close(key_fd_);
  key_fd_ = -1;
  const auto deadline = Clock::now() + std::chrono::milliseconds(options_.start_timeout_ms);
  while (true) {
    int wstatus = 0;
    if (pid_ <= 0 || waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      RemoveRunFiles(options_);
      return ErrorFromLog(LogPath(options_), "export: nbdkit exited during start");
    }
    if (ReadPid(PidPath(options_)) == pid_ && SocketAnswers(socket_path_)) return OkStatus();
    if (Clock::now() > deadline) {
      (void)Stop();
      return DeadlineExceededError("export: nbdkit did not listen in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(kListenPollMs));
  }
}

StatusOr<std::unique_ptr<Export>> Export::Reattach(const ExportOptions& options,
                                                   const SecretBytes& data_key) {
  RETURN_IF_ERROR(Validate(options));
  const pid_t pid = ReadPid(PidPath(options));
  if (IsOurNbdkit(pid, SocketPath(options)) && SocketAnswers(SocketPath(options))) {
    return std::unique_ptr<Export>(new Export(options, pid, /*child=*/false, /*reused=*/true));
  }
  if (pid > 1 && IsOurNbdkit(pid, SocketPath(options))) {
    Terminate(pid, /*child=*/false);  // alive but not answering
  }
  return Start(options, data_key);
}

Status Export::StopServing(const std::string& state_dir) {
  ExportOptions o;
  o.state_dir = state_dir;
  const pid_t pid = ReadPid(PidPath(o));
  if (IsOurNbdkit(pid, SocketPath(o))) Terminate(pid, /*child=*/false);
  RemoveRunFiles(o);
  return OkStatus();
}

std::string Export::Uri() const { return "nbd+unix:///?socket=" + socket_path_; }

nlohmann::json Export::QemuBlockdev() const {
  return {{"driver", "nbd"},
          {"server", {{"type", "unix"}, {"path", socket_path_}}},
          {"export", ""}};
}

bool Export::Running() {
  if (pid_ <= 0) return false;
  if (child_) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    return true;
  }
  if (!IsOurNbdkit(pid_, socket_path_)) {
    pid_ = -1;
    return false;
  }
  return true;
}

StatusOr<ExportProgress> Export::Progress() const {
  ExportProgress p;
  if (!options_.package_path.empty()) {
    p.complete = true;
    return p;
  }
  auto text = ReadExportFile(options_.state_dir + "/progress.json");
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return p;
    return text.status();
  }
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonObject(*text, "progress.json"));
  if (!j["cached_bytes"].is_number_unsigned() || !j["total_bytes"].is_number_unsigned() ||
      !j["complete"].is_boolean()) {
    return DataLossError("export: malformed progress.json");
  }
  p.cached_bytes = j["cached_bytes"].get<uint64_t>();
  p.total_bytes = j["total_bytes"].get<uint64_t>();
  p.complete = j["complete"].get<bool>();
  return p;
}

StatusOr<std::vector<ExportEvent>> Export::Events() const {
  std::vector<ExportEvent> out;
  auto text = ReadExportFile(EventsPath(options_));
  if (!text.ok()) {
    if (text.status().code() == StatusCode::kNotFound) return out;
    return text.status();
  }
  std::stringstream ss(*text);
  for (std::string line; std::getline(ss, line);) {
    if (line.empty()) continue;
    ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonObject(line, "event"));
    ExportEvent e;
    e.event = j.value("event", "");
    e.fields = std::move(j);
    out.push_back(std::move(e));
  }
  return out;
}

Status Export::Stop() {
  // An export still waiting for its key reads end of file and exits.
  if (key_fd_ >= 0) {
    close(key_fd_);
    key_fd_ = -1;
  }
  if (pid_ > 0) Terminate(pid_, child_);
  pid_ = -1;
  RemoveRunFiles(options_);
  return OkStatus();
}

}  // namespace vmseal::nbd_export
