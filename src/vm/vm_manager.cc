#include "vm/vm_manager.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "base/env.h"
#include "disk_format/disk_format.h"
#include "nbd_export/nbd_file.h"
#include "vm/encrypted_disk.h"
#include "vm/internal/process.h"
#include "vm/internal/qemu_command.h"
#include "vm/internal/vm_record.h"

namespace vmseal::vm {
namespace {

using internal::VmRecord;

constexpr size_t kStderrTailBytes = 600;
constexpr int64_t kKillWaitMs = 5000;
constexpr int64_t kPollMs = 50;
// Watcher rounds a watched qemu may spend exiting (alive, empty cmdline)
// before it counts as ended anyway.
constexpr int kMaxExitingRounds = 50;

Status MakePrivateDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "mkdir", path);
  }
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISDIR(st.st_mode)) return FailedPreconditionError("not a directory: " + path);
  if ((st.st_mode & 0777) != 0700 && ::chmod(path.c_str(), 0700) != 0) {
    return ErrnoToStatus(errno, "chmod", path);
  }
  return OkStatus();
}

// Removes `path`; a missing file is not an error.
Status RemoveIfExists(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoToStatus(errno, "remove", path);
  return OkStatus();
}

// Creates or truncates `path` with mode 0600.
Status CreatePrivateFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create", path);
  Status s;
  if (::fchmod(fd, 0600) != 0) s = ErrnoToStatus(errno, "chmod", path);
  ::close(fd);
  return s;
}

StatusOr<VmRecord> ReadRecord(const std::string& path, const std::string& name) {
  if (!Env::Default()->FileExists(path)) return NotFoundError("no such vm: " + name);
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), path));
  auto record = internal::ParseVmRecord(text);
  if (!record.ok()) return record.status().WithPrefix(path);
  if (record->info.name != name) {
    return DataLossError(path + ": vm state file names vm " + record->info.name);
  }
  return record;
}

Status WriteRecord(const std::string& path, const VmRecord& record) {
  return WriteStringToFileAtomic(Env::Default(), path, internal::SerializeVmRecord(record), 0600);
}

VmInfo InfoOf(const VmRecord& record) {
  VmInfo info = record.info;
  bool running = !record.stopped && internal::ProcessRunsCommand(info.pid, record.argv);
  info.state = running ? VmRunState::kRunning : VmRunState::kStopped;
  return info;
}

Status CheckDiskFormat(const VmDisk& disk) {
  std::unique_ptr<RandomAccessFile> file;
  if (disk.source == DiskSource::kNbd) {
    ASSIGN_OR_RETURN(file, nbd_export::OpenNbdFile(disk.path));
  } else {
    ASSIGN_OR_RETURN(file, Env::Default()->NewRandomAccessFile(disk.path));
  }
  ASSIGN_OR_RETURN(disk_format::DiskInfo found, disk_format::Inspect(*file));
  const DiskFormat format =
      found.format == disk_format::Format::kQcow2 ? DiskFormat::kQcow2 : DiskFormat::kRaw;
  if (format != disk.format) {
    return InvalidArgumentError(std::string(disk_format::kRefusalPrefix) + "disk is " +
                                disk_format::FormatName(found.format) + ", launched as " +
                                DiskFormatName(disk.format));
  }
  return OkStatus();
}

// A regular file of the host's, narrowed to 0600.
Status CheckPrivateFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return NotFoundError("vm disk missing: " + path);
    return ErrnoToStatus(errno, "stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    return InvalidArgumentError("vm disk is not a regular file: " + path);
  }
  if ((st.st_mode & 0077) != 0 && ::chmod(path.c_str(), 0600) != 0) {
    return ErrnoToStatus(errno, "chmod", path);
  }
  return OkStatus();
}

// A disk as qemu will open it: a local file is a regular file narrowed to
// 0600; the tenant's bytes (file or export) are of the format they are
// launched as. An overlay and an encrypted file are the host's own (qemu
// opens them as LUKS qcow2 with no backing name): not inspected.
Status CheckLocalDisk(const VmDisk& disk) {
  if (disk.source == DiskSource::kFile) RETURN_IF_ERROR(CheckPrivateFile(disk.path));
  if (!disk.overlay_path.empty()) RETURN_IF_ERROR(CheckPrivateFile(disk.overlay_path));
  if (disk.encrypted) return OkStatus();
  // The disk-format rules once more, right before qemu sees the disk, with
  // the format qemu will be told (docs/format/disk-format.md §6).
  return CheckDiskFormat(disk);
}

// The layout of the host's encrypted disk file `path`, from its magic: a
// LUKS1 container (CreateEncryptedOverlay) or a qcow2 with built-in LUKS
// encryption (files made before the container layout).
StatusOr<EncryptedFileLayout> EncryptedLayoutOf(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return ErrnoToStatus(errno, "open", path);
  char magic[6] = {};
  const ssize_t n = ::pread(fd, magic, sizeof(magic), 0);
  ::close(fd);
  if (n == static_cast<ssize_t>(sizeof(magic)) && std::memcmp(magic, "LUKS\xba\xbe", 6) == 0) {
    return EncryptedFileLayout::kLuksContainer;
  }
  if (n >= 4 && std::memcmp(magic, "QFI\xfb", 4) == 0) return EncryptedFileLayout::kQcow2Luks;
  return FailedPreconditionError("not an encrypted disk file of this host: " + path);
}

// The OVMF image `path` must be a readable regular file.
Status CheckFirmwareFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return NotFoundError("OVMF firmware missing: " + path + " (Debian package ovmf)");
    }
    return ErrnoToStatus(errno, "stat", path);
  }
  if (!S_ISREG(st.st_mode)) return FailedPreconditionError("OVMF firmware is not a file: " + path);
  return OkStatus();
}

// Copies the vars template `from` to a new private file `to` (0600): the
// VM's own variable store, so no VM sees or changes another's variables.
Status CopyPrivateFile(const std::string& from, const std::string& to) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(Env::Default(), from));
  if (bytes.empty()) return FailedPreconditionError("OVMF vars template is empty: " + from);
  return WriteStringToFileAtomic(Env::Default(), to, bytes, 0600);
}

// Ends the VM's swtpm once its qemu is gone: it leaves by itself when qemu
// closes the control channel (--terminate); otherwise SIGTERM, then
// SIGKILL, only while the pid still runs the recorded command line. Reaps
// it when it is our child.
void EndSwtpm(pid_t pid, const std::vector<std::string>& argv) {
  if (pid <= 0 || argv.empty()) return;
  bool gone = internal::WaitForExit(pid, 3000);
  if (!gone && internal::ProcessRunsCommand(pid, argv)) {
    ::kill(pid, SIGTERM);
    gone = internal::WaitForExit(pid, 2000);
  }
  if (!gone && internal::ProcessRunsCommand(pid, argv)) {
    ::kill(pid, SIGKILL);
    (void)internal::WaitForExit(pid, kKillWaitMs);
  }
  int status = 0;
  (void)internal::TakeReapedStatus(pid, &status);
}

// The signal qemu says it terminated on ("terminating on signal N" in its
// log: qemu exits 0 after SIGTERM/SIGINT/SIGHUP), or 0.
int LoggedTerminationSignal(const std::string& qemu_log) {
  const std::string tail = internal::FileTail(qemu_log, 4096);
  const std::string key = "terminating on signal ";
  size_t at = tail.rfind(key);
  if (at == std::string::npos) return 0;
  return std::atoi(tail.c_str() + at + key.size());
}

// Why qemu ended: from its wait status when it was our child
// (`have_status`), else from its log only.
VmEnd EndOf(bool have_status, int status, const std::string& qemu_log) {
  VmEnd end;
  end.unix_ms = internal::WallClockMs();
  const int logged = LoggedTerminationSignal(qemu_log);
  if (have_status && WIFSIGNALED(status)) {
    end.reason = VmEndReason::kKilled;
    end.code = WTERMSIG(status);
    end.text = "killed by signal " + std::to_string(end.code);
  } else if (have_status && WIFEXITED(status) && WEXITSTATUS(status) != 0) {
    end.reason = VmEndReason::kExited;
    end.code = WEXITSTATUS(status);
    end.text = "qemu exited with status " + std::to_string(end.code);
  } else if (logged > 0) {
    end.reason = VmEndReason::kKilled;
    end.code = logged;
    end.text = "qemu terminated on signal " + std::to_string(logged);
  } else if (have_status) {
    end.reason = VmEndReason::kGuestPowerOff;
    end.text = "qemu exited with status 0 (guest power-off)";
  } else {
    end.reason = VmEndReason::kUnknown;
    end.text = "qemu ended (not a child of this agent: exit status unknown)";
  }
  return end;
}

// A pipe holding the disk secret as qemu reads it (a secret object with
// format=raw: the passphrase text, here the secret's 64 hex digits); returns
// the read end (the write end is closed).
StatusOr<int> SecretPipe(const SecretBytes& secret) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe", "disk secret");
  SecretBytes text = DiskSecretPassphrase(secret);
  const ssize_t w = ::write(fds[1], text.UnsafeData(), text.size());
  ::close(fds[1]);
  if (w != static_cast<ssize_t>(text.size())) {
    ::close(fds[0]);
    return InternalError("writing the disk secret pipe failed");
  }
  return fds[0];
}

// Lets group `gid` traverse directory `dir` (owned by this process): its
// group becomes `gid` and it gains g+x (0700 -> 0710). Never adds read or
// write for anyone. A directory that is VM user `uid`'s own (an export's
// state dir) already lets it through (kNoVmUser: no such user).
constexpr uid_t kNoVmUser = static_cast<uid_t>(-1);
Status LetGroupTraverse(const std::string& dir, gid_t gid, uid_t uid) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", dir);
  if (!S_ISDIR(st.st_mode)) return FailedPreconditionError("not a directory: " + dir);
  if ((st.st_mode & S_IXOTH) != 0) return OkStatus();  // everyone may traverse it
  if (uid != kNoVmUser && uid != 0 && st.st_uid == uid && (st.st_mode & S_IXUSR) != 0) {
    return OkStatus();
  }
  if (st.st_gid == gid && (st.st_mode & S_IXGRP) != 0) return OkStatus();
  if (st.st_uid != ::geteuid()) {
    return FailedPreconditionError("vm users cannot reach " + dir +
                                   " (not owned by the agent, no search permission for them)");
  }
  if (st.st_gid != gid && ::chown(dir.c_str(), static_cast<uid_t>(-1), gid) != 0) {
    return ErrnoToStatus(errno, "chgrp", dir);
  }
  // chown may clear set-id bits; the mode is set from what it was.
  const mode_t mode = (st.st_mode & 07777 & ~static_cast<mode_t>(S_IRGRP | S_IWGRP)) | S_IXGRP;
  if (::chmod(dir.c_str(), mode) != 0) return ErrnoToStatus(errno, "chmod", dir);
  return OkStatus();
}

// LetGroupTraverse for every directory from / down to `dir` (absolute or
// relative to the working directory).
Status LetGroupTraverseDownTo(const std::string& dir, gid_t gid) {
  const std::filesystem::path normal = std::filesystem::absolute(dir).lexically_normal();
  for (auto p = normal; !p.empty() && p != p.root_path(); p = p.parent_path()) {
    RETURN_IF_ERROR(LetGroupTraverse(p.string(), gid, kNoVmUser));
  }
  return OkStatus();
}

// The supplementary groups of a VM user: the traversal group, and "kvm"
// when the VM uses KVM (the device is usually 0660 root:kvm).
std::vector<gid_t> VmUserGroups(const VmUserRange& range, Accel accel) {
  std::vector<gid_t> groups = {static_cast<gid_t>(range.first_id)};
  if (accel == Accel::kKvm) {
    if (const group* kvm = ::getgrnam("kvm"); kvm != nullptr) groups.push_back(kvm->gr_gid);
  }
  return groups;
}

}  // namespace

const char* VmEndReasonName(VmEndReason reason) {
  switch (reason) {
    case VmEndReason::kStopped:
      return "stopped";
    case VmEndReason::kGuestPowerOff:
      return "guest_poweroff";
    case VmEndReason::kExited:
      return "exited";
    case VmEndReason::kKilled:
      return "killed";
    case VmEndReason::kUnknown:
      return "unknown";
  }
  return "unknown";
}

const char* FirmwareName(Firmware firmware) {
  return firmware == Firmware::kEfi ? "efi" : "bios";
}

StatusOr<Firmware> ParseFirmware(const std::string& name) {
  if (name == "bios") return Firmware::kBios;
  if (name == "efi") return Firmware::kEfi;
  return InvalidArgumentError("unknown firmware \"" + name + "\" (want bios or efi)");
}

const char* DiskSourceName(DiskSource source) {
  return source == DiskSource::kNbd ? "nbd" : "file";
}

StatusOr<DiskSource> ParseDiskSource(const std::string& name) {
  if (name == "file") return DiskSource::kFile;
  if (name == "nbd") return DiskSource::kNbd;
  return InvalidArgumentError("unknown disk source \"" + name + "\" (want file or nbd)");
}

const char* DiskFormatName(DiskFormat format) {
  return format == DiskFormat::kQcow2 ? "qcow2" : "raw";
}

StatusOr<DiskFormat> ParseDiskFormat(const std::string& name) {
  if (name == "raw") return DiskFormat::kRaw;
  if (name == "qcow2") return DiskFormat::kQcow2;
  return InvalidArgumentError("unknown disk format \"" + name + "\" (want raw or qcow2)");
}

const char* AccelName(Accel accel) {
  switch (accel) {
    case Accel::kAuto:
      return "auto";
    case Accel::kKvm:
      return "kvm";
    case Accel::kTcg:
      return "tcg";
  }
  return "auto";
}

StatusOr<Accel> ParseAccel(const std::string& name) {
  if (name == "auto") return Accel::kAuto;
  if (name == "kvm") return Accel::kKvm;
  if (name == "tcg") return Accel::kTcg;
  return InvalidArgumentError("unknown accelerator \"" + name + "\" (want auto, kvm or tcg)");
}

StatusOr<std::unique_ptr<VmManager>> VmManager::Create(const VmManagerOptions& options) {
  if (options.state_dir.empty()) return InvalidArgumentError("vm state dir is empty");
  if (options.qemu_binary.empty()) return InvalidArgumentError("qemu binary is empty");
  if (options.launch_timeout_ms <= 0 || options.stop_timeout_ms <= 0 ||
      options.watch_interval_ms <= 0) {
    return InvalidArgumentError("vm launch, stop and watch intervals must be positive");
  }
  const VmUserRange& users = options.vm_users;
  if (users.count > 0) {
    if (users.first_id == 0 || users.count < 2 ||
        static_cast<uint64_t>(users.first_id) + users.count > 0xffffffffull) {
      return InvalidArgumentError("vm user ids: first_id must be > 0, count >= 2, and the range "
                                  "must end below 2^32-1");
    }
    if (::geteuid() != 0) {
      return FailedPreconditionError("vm users need the agent to run as root");
    }
  }
  for (const char* sub : {"", "/disks", "/vms", "/run"}) {
    RETURN_IF_ERROR(MakePrivateDir(options.state_dir + sub));
  }
  if (users.count > 0) {
    // VM users reach their own files (serial log, sockets, overlays) by
    // path: every directory from / down to run/ must let their group pass.
    // Nothing above state_dir is readable to them by this.
    const gid_t traverse = static_cast<gid_t>(users.first_id);
    RETURN_IF_ERROR(LetGroupTraverseDownTo(options.state_dir, traverse));
    RETURN_IF_ERROR(LetGroupTraverse(options.state_dir + "/run", traverse, kNoVmUser));
  }
  // The QMP socket path (named by a 16-character digest of the vm name, so
  // that long names fit) must fit sockaddr_un.
  const size_t fixed = std::string("/run/").size() + 16 + std::string(".qmp").size();
  if (options.state_dir.size() + fixed >= sizeof(sockaddr_un{}.sun_path)) {
    return InvalidArgumentError("vm state dir path too long for a unix socket (max " +
                                std::to_string(sizeof(sockaddr_un{}.sun_path) - 1 - fixed) +
                                " characters): " + options.state_dir);
  }
  std::unique_ptr<VmManager> manager(new VmManager(options));
  // VMs an earlier agent launched and that were running then: watched from
  // now on (through /proc; they are not our children).
  ASSIGN_OR_RETURN(std::vector<VmInfo> vms, manager->List());
  for (const VmInfo& vm : vms) {
    ASSIGN_OR_RETURN(VmRecord record, ReadRecord(manager->StatePath(vm.name), vm.name));
    if (!record.stopped) manager->Watch(vm.name, vm.pid, record.argv);
  }
  VmManager* raw = manager.get();
  manager->watcher_ = std::thread([raw] { raw->WatchLoop(); });
  return manager;
}

VmManager::VmManager(VmManagerOptions options) : options_(std::move(options)) {}

VmManager::~VmManager() {
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    quit_ = true;
  }
  watch_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void VmManager::Watch(const std::string& name, pid_t pid, std::vector<std::string> argv) {
  std::lock_guard<std::mutex> lock(watch_mu_);
  Watched w;
  w.pid = pid;
  w.argv = std::move(argv);
  watched_[name] = std::move(w);
}

void VmManager::Unwatch(const std::string& name) {
  std::lock_guard<std::mutex> lock(watch_mu_);
  watched_.erase(name);
}

void VmManager::WatchLoop() {
  std::unique_lock<std::mutex> lock(watch_mu_);
  while (!quit_) {
    watch_cv_.wait_for(lock, std::chrono::milliseconds(options_.watch_interval_ms));
    if (quit_) break;
    lock.unlock();
    WatchOnce();
    lock.lock();
  }
}

void VmManager::WatchOnce() {
  std::map<std::string, Watched> snapshot;
  {
    std::lock_guard<std::mutex> lock(watch_mu_);
    snapshot = watched_;
  }
  for (const auto& [name, w] : snapshot) {
    // ProcessAlive (under ProcessRunsCommand) reaps `w.pid` if it is our
    // exited child, and only that pid.
    if (internal::ProcessRunsCommand(w.pid, w.argv)) continue;
    // A process that is exiting has an empty /proc/<pid>/cmdline before it
    // becomes a zombie: wait for it to finish (so that our child is reaped
    // and its status known), for a bounded number of rounds.
    if (internal::ProcessAlive(w.pid) &&
        internal::FileTail("/proc/" + std::to_string(w.pid) + "/cmdline", 1).empty()) {
      std::lock_guard<std::mutex> lock(watch_mu_);
      auto it = watched_.find(name);
      if (it != watched_.end() && ++it->second.exiting_rounds < kMaxExitingRounds) continue;
    }
    int status = 0;
    const bool have_status = internal::TakeReapedStatus(w.pid, &status);
    std::string qemu_log;
    int64_t run = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto record = ReadRecord(StatePath(name), name);
      if (record.ok()) {
        qemu_log = record->info.qemu_log_path;
        run = record->info.run;
      }
    }
    VmEnd end = EndOf(have_status, status, qemu_log);
    end.run = run;
    Unwatch(name);
    if (RecordEnd(name, w.pid, end) && options_.on_end) options_.on_end(name, end);
  }
}

bool VmManager::RecordEnd(const std::string& name, pid_t pid, const VmEnd& end) {
  std::lock_guard<std::mutex> lock(mu_);
  auto record = ReadRecord(StatePath(name), name);
  // Stopped meanwhile (Stop reported it), deleted, or relaunched.
  if (!record.ok() || record->stopped || record->info.pid != pid) return false;
  record->stopped = true;
  record->info.ended = true;
  record->info.end = end;
  (void)RemoveIfExists(record->info.qmp_socket_path);
  EndSwtpm(record->info.tpm_pid, record->tpm_argv);
  return WriteRecord(StatePath(name), *record).ok();
}

Status VmManager::GrantAccess(const std::string& name, const std::string& path) {
  RETURN_IF_ERROR(internal::ValidateVmName(name));
  std::lock_guard<std::mutex> lock(mu_);
  uint32_t uid = 0;
  if (auto it = reserved_uids_.find(name); it != reserved_uids_.end()) {
    uid = it->second;
  } else {
    ASSIGN_OR_RETURN(VmRecord record, ReadRecord(StatePath(name), name));
    uid = record.info.uid;
  }
  if (uid == 0) return OkStatus();
  return GrantAccessLocked(uid, path);
}

StatusOr<uint32_t> VmManager::UserFor(const std::string& name) {
  RETURN_IF_ERROR(internal::ValidateVmName(name));
  if (options_.vm_users.count == 0) return uint32_t{0};
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = reserved_uids_.find(name); it != reserved_uids_.end()) return it->second;
  if (Env::Default()->FileExists(StatePath(name))) {
    ASSIGN_OR_RETURN(VmRecord record, ReadRecord(StatePath(name), name));
    if (record.info.uid != 0) return record.info.uid;
  }
  ASSIGN_OR_RETURN(uint32_t uid, AllocateUidLocked());
  reserved_uids_[name] = uid;
  return uid;
}

void VmManager::ReleaseUser(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  reserved_uids_.erase(name);
}

std::vector<uint32_t> VmManager::UserGroups() const {
  if (options_.vm_users.count == 0) return {};
  return {options_.vm_users.first_id};
}

Status VmManager::GrantAccessLocked(uint32_t uid, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path root = fs::absolute(options_.state_dir).lexically_normal();
  const fs::path target = fs::absolute(path).lexically_normal();
  const fs::path rel = target.lexically_relative(root);
  if (rel.empty() || rel.native().starts_with("..") || rel == ".") {
    return InvalidArgumentError("vm file outside the vm state dir: " + path);
  }
  struct stat st;
  if (::lstat(target.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISREG(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISDIR(st.st_mode)) {
    return InvalidArgumentError("vm file is not a regular file, socket or directory: " + path);
  }
  if (::lchown(target.c_str(), uid, uid) != 0) return ErrnoToStatus(errno, "chown", path);
  if (::chmod(target.c_str(), S_ISDIR(st.st_mode) ? 0700 : 0600) != 0) {
    return ErrnoToStatus(errno, "chmod", path);
  }
  const gid_t traverse = static_cast<gid_t>(options_.vm_users.first_id);
  for (fs::path d = target.parent_path(); d != root.parent_path() && !d.empty();
       d = d.parent_path()) {
    RETURN_IF_ERROR(LetGroupTraverse(d.string(), traverse, uid));
    if (d == root) break;
  }
  return OkStatus();
}

Status VmManager::LetVmUsersRead(const std::string& path) {
  if (options_.vm_users.count == 0) return OkStatus();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError("not a regular file: " + path);
  const gid_t traverse = static_cast<gid_t>(options_.vm_users.first_id);
  if ((st.st_mode & S_IROTH) == 0 && !(st.st_gid == traverse && (st.st_mode & S_IRGRP) != 0)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPreconditionError("vm users cannot read " + path + " (mode " + mode +
                                   "): give others read permission, e.g. chmod o+r");
  }
  return LetGroupTraverseDownTo(std::filesystem::path(path).parent_path().string(), traverse);
}

StatusOr<uint32_t> VmManager::AllocateUidLocked() {
  const std::string dir = options_.state_dir + "/vms";
  std::vector<uint32_t> used;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string file = entry.path().filename().string();
    if (!file.ends_with(".json")) continue;
    auto text = ReadFileToString(Env::Default(), entry.path().string());
    if (!text.ok()) continue;
    auto record = internal::ParseVmRecord(*text);
    if (record.ok() && record->info.uid != 0) used.push_back(record->info.uid);
  }
  if (ec) return ErrnoToStatus(ec.value(), "list", dir);
  for (const auto& [name, uid] : reserved_uids_) used.push_back(uid);
  const VmUserRange& r = options_.vm_users;
  for (uint32_t uid = r.first_id + 1; uid < r.first_id + r.count; ++uid) {
    if (std::find(used.begin(), used.end(), uid) == used.end()) return uid;
  }
  return ResourceExhaustedError("no free vm user id (" + std::to_string(r.count - 1) +
                                " in use)");
}

StatusOr<std::string> VmManager::DiskPath(const std::string& name) const {
  RETURN_IF_ERROR(internal::ValidateVmName(name));
  return options_.state_dir + "/disks/" + name + ".img";
}

std::string VmManager::StatePath(const std::string& name) const {
  return options_.state_dir + "/vms/" + name + ".json";
}

// 16 hex characters of FNV-1a 64 over the name: stable, short, and unique
// enough among the VMs of one host (names are unique; the path is recorded).
static std::string QmpSocketName(const std::string& name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string VmManager::RunPath(const std::string& name, const char* suffix) const {
  return options_.state_dir + "/run/" + name + suffix;
}

Accel VmManager::ResolvedAccel() const {
  if (options_.accel != Accel::kAuto) return options_.accel;
  int fd = ::open(options_.kvm_device.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Accel::kTcg;
  ::close(fd);
  return Accel::kKvm;
}

StatusOr<VmInfo> VmManager::Launch(const VmSpec& spec, const SecretBytes* disk_secret) {
  return Launch(spec, std::vector<const SecretBytes*>{disk_secret});
}

StatusOr<VmInfo> VmManager::Launch(const VmSpec& spec,
                                   const std::vector<const SecretBytes*>& disk_secrets) {
  RETURN_IF_ERROR(internal::ValidateVmSpec(spec));
  const std::vector<uint32_t> secret_slots = internal::DiskSecretSlots(spec);
  for (uint32_t slot : secret_slots) {
    if (slot >= internal::kMaxDiskSecretSlots) {
      return InvalidArgumentError("vm " + spec.name + ": disk secret slot out of range");
    }
    if (slot >= disk_secrets.size() || disk_secrets[slot] == nullptr ||
        disk_secrets[slot]->size() != kDiskSecretBytes) {
      return InvalidArgumentError("vm " + spec.name + ": an overlay or encrypted disk needs the " +
                                  "32-byte disk secret");
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  const std::string state_path = StatePath(spec.name);
  if (Env::Default()->FileExists(state_path)) {
    return AlreadyExistsError("vm " + spec.name + " already exists");
  }
  std::vector<VmDisk> disks = internal::DisksOf(spec);
  for (VmDisk& disk : disks) {
    RETURN_IF_ERROR(CheckLocalDisk(disk));
    if (!disk.overlay_path.empty() || disk.encrypted) {
      ASSIGN_OR_RETURN(disk.encrypted_layout,
                       EncryptedLayoutOf(disk.overlay_path.empty() ? disk.path : disk.overlay_path));
    }
  }
  VmSpec launch_spec = spec;
  if (!spec.disks.empty()) launch_spec.disks = disks;

  VmRecord record;
  VmInfo& info = record.info;
  info.name = spec.name;
  info.disks = disks;
  for (const VmDisk& disk : disks) {
    if (disk.boot) {
      info.disk_path = disk.path;
      info.disk_format = disk.format;
    }
  }
  info.cpus = spec.cpus;
  info.memory_mib = spec.memory_mib;
  info.run = spec.run;
  info.firmware = spec.firmware;
  info.secure_boot = spec.secure_boot;
  // Until the launch's own cleanup takes over below, an error leaves
  // neither the vars copy nor the TPM state directory behind.
  struct PreparedFiles {
    std::string vars, tpm_dir;
    bool armed = true;
    ~PreparedFiles() {
      if (!armed) return;
      if (!vars.empty()) (void)::unlink(vars.c_str());
      std::error_code ec;
      if (!tpm_dir.empty()) std::filesystem::remove_all(tpm_dir, ec);
    }
  } prepared;
  if (spec.tpm) {
    // A fresh TPM per launch: no state of an earlier VM of this name.
    info.tpm = true;
    info.tpm_state_dir = RunPath(spec.name, ".tpm");
    if (info.tpm_state_dir.find(',') != std::string::npos) {
      return InvalidArgumentError("vm state dir must not contain ',' for a vTPM: " +
                                  options_.state_dir);
    }
    std::error_code ec;
    std::filesystem::remove_all(info.tpm_state_dir, ec);
    if (ec) return ErrnoToStatus(ec.value(), "remove", info.tpm_state_dir);
    prepared.tpm_dir = info.tpm_state_dir;
    RETURN_IF_ERROR(MakePrivateDir(info.tpm_state_dir));
  }
  std::string efi_code;
  if (spec.firmware == Firmware::kEfi) {
    const OvmfFiles& ovmf = options_.ovmf;
    efi_code = spec.secure_boot ? ovmf.secure_boot_code : ovmf.code;
    const std::string& vars = spec.secure_boot ? ovmf.secure_boot_vars : ovmf.vars;
    RETURN_IF_ERROR(CheckFirmwareFile(efi_code));
    RETURN_IF_ERROR(CheckFirmwareFile(vars));
    info.efi_vars_path = RunPath(spec.name, ".efivars.fd");
    prepared.vars = info.efi_vars_path;
    RETURN_IF_ERROR(CopyPrivateFile(vars, info.efi_vars_path));
  }
  info.accel = ResolvedAccel();
  info.serial_log_path = RunPath(spec.name, ".serial.log");
  info.qemu_log_path = RunPath(spec.name, ".qemu.log");
  info.qmp_socket_path = RunPath(QmpSocketName(spec.name), ".qmp");
  RETURN_IF_ERROR(RemoveIfExists(info.qmp_socket_path));
  RETURN_IF_ERROR(CreatePrivateFile(info.serial_log_path));
  RETURN_IF_ERROR(CreatePrivateFile(info.qemu_log_path));
  internal::QemuPaths paths{info.serial_log_path, info.qmp_socket_path};
  paths.efi_code = efi_code;
  paths.efi_vars = info.efi_vars_path;
  internal::SpawnOptions spawn;
  int qmp_fd = -1;
  if (options_.vm_users.count > 0) {
    // qemu runs as this VM's own uid: it gets its serial log, disks,
    // overlays and sockets, and the QMP socket as a listening descriptor.
    // The uid its exports already run as (UserFor), else a new one.
    if (auto it = reserved_uids_.find(spec.name); it != reserved_uids_.end()) {
      info.uid = it->second;
    } else {
      ASSIGN_OR_RETURN(info.uid, AllocateUidLocked());
    }
    RETURN_IF_ERROR(GrantAccessLocked(info.uid, info.serial_log_path));
    if (!info.efi_vars_path.empty()) RETURN_IF_ERROR(GrantAccessLocked(info.uid, info.efi_vars_path));
    if (info.tpm && ::chown(info.tpm_state_dir.c_str(), info.uid, info.uid) != 0) {
      return ErrnoToStatus(errno, "chown", info.tpm_state_dir);
    }
    for (const VmDisk& disk : disks) {
      RETURN_IF_ERROR(GrantAccessLocked(info.uid, disk.path));
      if (!disk.overlay_path.empty()) RETURN_IF_ERROR(GrantAccessLocked(info.uid, disk.overlay_path));
    }
    ASSIGN_OR_RETURN(qmp_fd, internal::ListenUnixSocket(info.qmp_socket_path));
    paths.qmp_fd = internal::kQmpListenFd;
    spawn.uid = info.uid;
    spawn.gid = info.uid;
    spawn.groups = VmUserGroups(options_.vm_users, info.accel);
  }
  struct FdCloser {
    int fd;
    ~FdCloser() {
      if (fd >= 0) ::close(fd);
    }
  } qmp_closer{qmp_fd};
  record.argv = internal::BuildQemuArgv(options_.qemu_binary, launch_spec, info.accel, paths);

  prepared.armed = false;  // `cleanup` removes them from here on
  auto cleanup = [&] {
    (void)RemoveIfExists(state_path);
    (void)RemoveIfExists(info.qmp_socket_path);
    if (!info.efi_vars_path.empty()) (void)RemoveIfExists(info.efi_vars_path);
    if (info.tpm_pid > 0) EndSwtpm(info.tpm_pid, record.tpm_argv);
    if (info.tpm) {
      std::error_code ec;
      std::filesystem::remove_all(info.tpm_state_dir, ec);
    }
  };
  info.started_unix_ms = internal::WallClockMs();
  {
    // The secret's text goes into a pipe (64 bytes fit its buffer) whose read
    // end qemu inherits as fd 3: never argv, the environment or a file.
    // One pipe per secret slot; all are closed when this block ends.
    struct SecretFds {
      std::map<uint32_t, int> fds;
      ~SecretFds() {
        for (auto& [slot, fd] : fds) ::close(fd);
      }
    } secret_fds;
    for (uint32_t slot : secret_slots) {
      auto fd = SecretPipe(*disk_secrets[slot]);
      if (!fd.ok()) {
        cleanup();
        return fd.status();
      }
      secret_fds.fds[slot] = *fd;
      // A VM user reopens it as /dev/fd/N: the pipe must be its own.
      if (info.uid != 0 && ::fchown(*fd, info.uid, info.uid) != 0) {
        const int e = errno;
        cleanup();
        return ErrnoToStatus(e, "chown", "disk secret pipe");
      }
    }
    const int secret_fd = secret_fds.fds.count(0) ? secret_fds.fds[0] : -1;
    spawn.inherit_fds = {secret_fd, qmp_fd};
    int tpm_qemu_fd = -1;
    if (info.tpm) {
      // The vTPM first: qemu connects to it at start. swtpm runs as the
      // VM's uid too, and only reaches its state directory.
      int sv[2];
      if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        const int e = errno;
        cleanup();
        return ErrnoToStatus(e, "socketpair", "vtpm");
      }
      internal::SpawnOptions tpm_spawn;
      tpm_spawn.uid = spawn.uid;
      tpm_spawn.gid = spawn.gid;
      if (info.uid != 0) tpm_spawn.groups = {static_cast<gid_t>(options_.vm_users.first_id)};
      tpm_spawn.inherit_fds = {sv[1]};
      record.tpm_argv = internal::BuildSwtpmArgv(options_.swtpm_binary, info.tpm_state_dir);
      auto tpm_pid =
          internal::SpawnProcessWith(record.tpm_argv, RunPath(spec.name, ".swtpm.log"), tpm_spawn);
      ::close(sv[1]);
      if (!tpm_pid.ok()) {
        ::close(sv[0]);
        cleanup();
        return tpm_pid.status().WithPrefix("vtpm");
      }
      info.tpm_pid = *tpm_pid;
      tpm_qemu_fd = sv[0];
      spawn.inherit_fds.push_back(tpm_qemu_fd);
    }
    // Slots > 0 after the vTPM's descriptor (internal::DiskSecretFd).
    for (const auto& [slot, fd] : secret_fds.fds) {
      if (slot == 0) continue;
      const size_t index = static_cast<size_t>(internal::DiskSecretFd(slot) - 3);
      if (spawn.inherit_fds.size() <= index) spawn.inherit_fds.resize(index + 1, -1);
      spawn.inherit_fds[index] = fd;
    }
    while (!spawn.inherit_fds.empty() && spawn.inherit_fds.back() < 0) spawn.inherit_fds.pop_back();
    auto pid = internal::SpawnProcessWith(record.argv, info.qemu_log_path, spawn);
    if (tpm_qemu_fd >= 0) ::close(tpm_qemu_fd);
    if (!pid.ok()) {
      cleanup();
      return pid.status();
    }
    info.pid = *pid;
  }
  // Recorded before the wait, so that an agent crash right now still knows
  // about this qemu.
  Status written = WriteRecord(state_path, record);
  if (!written.ok()) {
    ::kill(info.pid, SIGKILL);
    internal::WaitForExit(info.pid, kKillWaitMs);
    cleanup();
    return written;
  }
  reserved_uids_.erase(spec.name);  // the record holds it now

  const int64_t deadline = internal::MonotonicMs() + options_.launch_timeout_ms;
  for (;;) {
    if (!internal::ProcessAlive(info.pid)) {
      std::string how = internal::ReapedStatusText(info.pid);
      cleanup();
      return FailedPreconditionError(
          "qemu exited during launch of vm " + spec.name + (how.empty() ? "" : " (" + how + ")") +
          ": " + internal::FileTail(info.qemu_log_path, kStderrTailBytes));
    }
    int64_t left = deadline - internal::MonotonicMs();
    if (left <= 0) break;
    auto reply = internal::QmpExecute(info.qmp_socket_path, "query-status",
                                      std::min<int64_t>(left, 2000));
    if (reply.ok()) {
      info.state = VmRunState::kRunning;
      Watch(info.name, info.pid, record.argv);
      return info;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(kPollMs));
  }
  ::kill(info.pid, SIGKILL);
  internal::WaitForExit(info.pid, kKillWaitMs);
  cleanup();
  return DeadlineExceededError("qemu monitor of vm " + spec.name + " did not answer within " +
                               std::to_string(options_.launch_timeout_ms) + " ms: " +
                               internal::FileTail(info.qemu_log_path, kStderrTailBytes));
}

StatusOr<std::vector<VmInfo>> VmManager::List() {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string dir = options_.state_dir + "/vms";
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return ErrnoToStatus(errno, "open", dir);
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string file = e->d_name;
    const std::string suffix = ".json";
    if (file.size() <= suffix.size() ||
        file.compare(file.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    std::string name = file.substr(0, file.size() - suffix.size());
    if (internal::ValidateVmName(name).ok()) names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  std::vector<VmInfo> out;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(VmRecord record, ReadRecord(StatePath(name), name));
    out.push_back(InfoOf(record));
  }
  return out;
}

StatusOr<VmInfo> VmManager::Get(const std::string& name) {
  RETURN_IF_ERROR(internal::ValidateVmName(name));
  std::lock_guard<std::mutex> lock(mu_);
  return GetLocked(name);
}

StatusOr<VmInfo> VmManager::GetLocked(const std::string& name) {
  ASSIGN_OR_RETURN(VmRecord record, ReadRecord(StatePath(name), name));
  return InfoOf(record);
}

Status VmManager::Stop(const std::string& name) {
  RETURN_IF_ERROR(internal::ValidateVmName(name));
  VmEnd end;
  {
    std::unique_lock<std::mutex> lock(mu_);
    ASSIGN_OR_RETURN(VmRecord record, ReadRecord(StatePath(name), name));
    if (record.stopped) return OkStatus();
    // From here the watcher leaves this VM to Stop (and RecordEnd sees the
    // stopped record should it already be past its check).
    Unwatch(name);
    ASSIGN_OR_RETURN(end, StopRecordLocked(&record));
  }
  if (options_.on_end) options_.on_end(name, end);
  return OkStatus();
}

StatusOr<VmEnd> VmManager::StopRecordLocked(internal::VmRecord* record_ptr) {
  internal::VmRecord& record = *record_ptr;
  const std::string& name = record.info.name;
  const pid_t pid = record.info.pid;
  VmEnd end;
  end.reason = VmEndReason::kStopped;
  end.text = "stopped by VmManager::Stop";
  // Ended before Stop looked: reported with its own reason.
  if (!internal::ProcessRunsCommand(pid, record.argv)) {
    int status = 0;
    bool have_status = internal::TakeReapedStatus(pid, &status);
    end = EndOf(have_status, status, record.info.qemu_log_path);
  }
  // Signals go only to a pid that still runs our command line: a recycled
  // pid belongs to someone else.
  if (internal::ProcessRunsCommand(pid, record.argv)) {
    bool gone = false;
    if (internal::QmpExecute(record.info.qmp_socket_path, "quit", 2000).ok()) {
      gone = internal::WaitForExit(pid, options_.stop_timeout_ms);
    }
    if (!gone && internal::ProcessRunsCommand(pid, record.argv)) {
      ::kill(pid, SIGTERM);
      gone = internal::WaitForExit(pid, options_.stop_timeout_ms);
    }
    if (!gone && internal::ProcessRunsCommand(pid, record.argv)) {
      ::kill(pid, SIGKILL);
      gone = internal::WaitForExit(pid, kKillWaitMs);
    }
    if (!gone) return InternalError("qemu of vm " + name + " (pid " + std::to_string(pid) +
                                    ") did not exit after SIGKILL");
  }
  int status = 0;
  (void)internal::TakeReapedStatus(pid, &status);  // forget our child's status
  EndSwtpm(record.info.tpm_pid, record.tpm_argv);
  end.unix_ms = internal::WallClockMs();
  end.run = record.info.run;
  record.stopped = true;
  record.info.ended = true;
  record.info.end = end;
  (void)RemoveIfExists(record.info.qmp_socket_path);
  RETURN_IF_ERROR(WriteRecord(StatePath(name), record));
  return end;
}

Status VmManager::Delete(const std::string& name) {
  RETURN_IF_ERROR(Stop(name));
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(VmRecord record, ReadRecord(StatePath(name), name));
  // The disk first: it is the one thing that must not stay behind.
  if (record.info.disks.empty()) RETURN_IF_ERROR(RemoveIfExists(record.info.disk_path));
  for (const VmDisk& disk : record.info.disks) {
    if (disk.source == DiskSource::kFile) RETURN_IF_ERROR(RemoveIfExists(disk.path));
    if (!disk.overlay_path.empty()) RETURN_IF_ERROR(RemoveIfExists(disk.overlay_path));
  }
  RETURN_IF_ERROR(RemoveIfExists(record.info.serial_log_path));
  RETURN_IF_ERROR(RemoveIfExists(record.info.qemu_log_path));
  RETURN_IF_ERROR(RemoveIfExists(record.info.qmp_socket_path));
  if (!record.info.efi_vars_path.empty()) RETURN_IF_ERROR(RemoveIfExists(record.info.efi_vars_path));
  if (record.info.tpm) {
    // The vTPM's state holds the guest's TPM secrets: it goes with the VM.
    std::error_code ec;
    std::filesystem::remove_all(record.info.tpm_state_dir, ec);
    if (ec) return ErrnoToStatus(ec.value(), "remove", record.info.tpm_state_dir);
    RETURN_IF_ERROR(RemoveIfExists(RunPath(name, ".swtpm.log")));
  }
  RETURN_IF_ERROR(RemoveIfExists(StatePath(name)));
  reserved_uids_.erase(name);
  return Env::Default()->SyncDir(options_.state_dir + "/vms");
}

Status VmManager::WaitForSerialMarker(const std::string& name, const std::string& marker,
                                      int64_t timeout_ms) {
  if (marker.empty()) return InvalidArgumentError("serial marker is empty");
  ASSIGN_OR_RETURN(VmInfo info, Get(name));
  const int64_t deadline = internal::MonotonicMs() + timeout_ms;
  std::ifstream log;
  std::string window;  // unread text plus the last marker.size()-1 bytes
  for (;;) {
    // Whether the VM is alive is checked before reading, so that output
    // written just before it stopped is still seen.
    ASSIGN_OR_RETURN(VmInfo now, Get(name));
    bool running = now.state == VmRunState::kRunning;
    if (!log.is_open()) log.open(info.serial_log_path, std::ios::binary);
    if (log.is_open()) {
      char buf[8192];
      for (;;) {
        log.read(buf, sizeof buf);
        std::streamsize n = log.gcount();
        if (n <= 0) break;
        window.append(buf, static_cast<size_t>(n));
        if (window.find(marker) != std::string::npos) return OkStatus();
        if (window.size() > marker.size()) window.erase(0, window.size() - marker.size());
      }
      log.clear();
    }
    if (!running) {
      return FailedPreconditionError("vm " + name + " stopped before its serial console showed " +
                                     "the marker");
    }
    if (internal::MonotonicMs() >= deadline) {
      return DeadlineExceededError("vm " + name + ": marker not on the serial console after " +
                                   std::to_string(timeout_ms) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace vmseal::vm
