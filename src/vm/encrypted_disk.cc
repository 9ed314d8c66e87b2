#include "vm/encrypted_disk.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "base/env.h"
#include "json/json.h"
#include "vm/internal/process.h"
#include "vm/internal/qemu_command.h"

namespace vmseal::vm {
namespace {

constexpr size_t kMessageTailBytes = 400;

std::string SecretObject() {
  return std::string("secret,id=") + internal::kDiskSecretId + ",format=raw,file=/dev/fd/" +
         std::to_string(internal::kDiskSecretFd);
}

std::string LuksCreateOptions() {
  return std::string("encrypt.format=luks,encrypt.key-secret=") + internal::kDiskSecretId +
         ",encrypt.iter-time=" + std::to_string(kLuksIterTimeMs);
}

Status RunQemuImgOnce(const QemuImgOptions& options, const std::vector<std::string>& args,
                      const SecretBytes& secret, const std::string& log_path);

// Runs qemu-img `args` (after the binary) with the secret on fd 3; its
// output goes to `log_path`, which is removed afterwards. qemu's LUKS PBKDF
// benchmark fails now and then on this kernel ("Unable to get accurate CPU
// usage": per-thread CPU time reads 0 under load) even with a small
// iter-time: that run is retried, a few times.
Status RunQemuImg(const QemuImgOptions& options, const std::vector<std::string>& args,
                  const SecretBytes& secret, const std::string& log_path) {
  constexpr int kAttempts = 5;
  Status s;
  for (int i = 0; i < kAttempts; ++i) {
    s = RunQemuImgOnce(options, args, secret, log_path);
    if (s.ok() || s.message().find("Unable to get accurate CPU usage") == std::string::npos) {
      return s;
    }
  }
  return s;
}

Status RunQemuImgOnce(const QemuImgOptions& options, const std::vector<std::string>& args,
                  const SecretBytes& secret, const std::string& log_path) {
  std::vector<std::string> argv = {options.binary};
  argv.insert(argv.end(), args.begin(), args.end());
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe", "disk secret");
  {
    SecretBytes text = DiskSecretPassphrase(secret);
    const ssize_t w = ::write(fds[1], text.UnsafeData(), text.size());
    ::close(fds[1]);
    if (w != static_cast<ssize_t>(text.size())) {
      ::close(fds[0]);
      return InternalError("writing the disk secret pipe failed");
    }
  }
  internal::SpawnOptions spawn;
  spawn.inherit_fds = {fds[0]};
  spawn.nice_value = options.nice_value;
  auto pid = internal::SpawnProcessWith(argv, log_path, spawn);
  ::close(fds[0]);
  if (!pid.ok()) {
    ::unlink(log_path.c_str());
    return pid.status();
  }
  // Waited for in slices, so that a cancel is seen within kCancelPollMs.
  constexpr int64_t kCancelPollMs = 50;
  bool exited = false, cancelled = false;
  for (int64_t waited = 0; !exited && waited < options.timeout_ms; waited += kCancelPollMs) {
    if (options.cancel != nullptr && options.cancel->load()) {
      cancelled = true;
      break;
    }
    exited = internal::WaitForExit(*pid, std::min(kCancelPollMs, options.timeout_ms - waited));
  }
  if (!exited) {
    ::kill(*pid, SIGKILL);
    internal::WaitForExit(*pid, 5000);
    int ignored;
    (void)internal::TakeReapedStatus(*pid, &ignored);
    ::unlink(log_path.c_str());
    if (cancelled) return CancelledError("qemu-img " + args[0] + " cancelled");
    return DeadlineExceededError("qemu-img did not finish within " +
                                 std::to_string(options.timeout_ms) + " ms");
  }
  int status = 0;
  const bool have = internal::TakeReapedStatus(*pid, &status);
  const std::string tail = internal::FileTail(log_path, kMessageTailBytes);
  ::unlink(log_path.c_str());
  if (!have || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return InternalError("qemu-img " + args[0] + " failed: " + tail);
  }
  return OkStatus();
}

Status CheckSecret(const SecretBytes& secret) {
  if (secret.size() != kDiskSecretBytes) {
    return InvalidArgumentError("the disk secret must be 32 bytes");
  }
  return OkStatus();
}

}  // namespace

SecretBytes NewDiskSecret() { return SecretBytes::Random(kDiskSecretBytes); }

SecretBytes DiskSecretPassphrase(const SecretBytes& secret) {
  static const char kHex[] = "0123456789abcdef";
  SecretBytes out(secret.size() * 2);
  uint8_t* o = out.UnsafeMutableData();
  const uint8_t* in = secret.UnsafeData();
  for (size_t i = 0; i < secret.size(); ++i) {
    o[2 * i] = static_cast<uint8_t>(kHex[in[i] >> 4]);
    o[2 * i + 1] = static_cast<uint8_t>(kHex[in[i] & 15]);
  }
  return out;
}

namespace {

// The source of a conversion as an explicit node: the inspected format, no
// backing file whatever a qcow2 header says, the export read-only.
nlohmann::json NbdSourceNode(const std::string& nbd_socket, DiskFormat format) {
  nlohmann::json source = {
      {"driver", DiskFormatName(format)},
      {"read-only", true},
      {"file",
       {{"driver", "nbd"}, {"server", {{"type", "unix"}, {"path", nbd_socket}}}, {"export", ""}}}};
  if (format == DiskFormat::kQcow2) source["backing"] = nullptr;
  return source;
}

// An encrypted qcow2 of ours as an explicit node: no backing file, our secret.
nlohmann::json EncryptedImageNode(const std::string& path) {
  return {{"driver", "qcow2"},
          {"backing", nullptr},
          {"encrypt", {{"key-secret", internal::kDiskSecretId}}},
          {"file", {{"driver", "file"}, {"filename", path}}}};
}

}  // namespace

Status CreateEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                              uint64_t virtual_size_bytes, const SecretBytes& secret) {
  RETURN_IF_ERROR(CheckSecret(secret));
  if (virtual_size_bytes == 0) return InvalidArgumentError("overlay: the disk size is 0");
  // Claimed first (O_EXCL, 0600), so that qemu-img only ever writes our file.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create", path);
  ::close(fd);
  Status s = RunQemuImg(options,
                        {"create", "-q", "-f", "qcow2", "--object", SecretObject(), "-o",
                         LuksCreateOptions(), path, std::to_string(virtual_size_bytes)},
                        secret, path + ".log");
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

Status GrowEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                            uint64_t virtual_size_bytes, const SecretBytes& secret) {
  RETURN_IF_ERROR(CheckSecret(secret));
  if (virtual_size_bytes == 0) return InvalidArgumentError("overlay: the disk size is 0");
  return RunQemuImg(options,
                    {"resize", "-q", "--object", SecretObject(),
                     "json:" + DumpJson(EncryptedImageNode(path)),
                     std::to_string(virtual_size_bytes)},
                    secret, path + ".log");
}

Status ConvertIntoEncrypted(const QemuImgOptions& options, const std::string& nbd_socket,
                            DiskFormat format, const std::string& path,
                            const SecretBytes& secret) {
  RETURN_IF_ERROR(CheckSecret(secret));
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISREG(st.st_mode)) return FailedPreconditionError("not a regular file: " + path);
  return RunQemuImg(options,
                    {"convert", "-q", "-n", "--target-is-zero", "-W", "--object", SecretObject(),
                     "-O", "qcow2", "json:" + DumpJson(NbdSourceNode(nbd_socket, format)),
                     "json:" + DumpJson(EncryptedImageNode(path))},
                    secret, path + ".log");
}

Status ConvertToEncrypted(const QemuImgOptions& options, const std::string& nbd_socket,
                          DiskFormat format, const std::string& path, const SecretBytes& secret) {
  RETURN_IF_ERROR(CheckSecret(secret));
  if (Env::Default()->FileExists(path)) return AlreadyExistsError("exists: " + path);
  const nlohmann::json source = NbdSourceNode(nbd_socket, format);
  const std::string tmp = path + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create", tmp);
  ::close(fd);
  Status s = RunQemuImg(options,
                        {"convert", "-q", "-W", "--object", SecretObject(), "-O", "qcow2", "-o",
                         LuksCreateOptions(), "json:" + DumpJson(source), tmp},
                        secret, path + ".log");
  if (s.ok() && ::chmod(tmp.c_str(), 0600) != 0) s = ErrnoToStatus(errno, "chmod", tmp);
  if (s.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) s = ErrnoToStatus(errno, "rename", tmp);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace vmseal::vm
