#include "vm/encrypted_disk.h"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
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

// Runs qemu-img `args` (after the binary) with the secret on fd 3 (none when
// `secret` is null); its output goes to `log_path`, which is removed
// afterwards.
Status RunQemuImg(const QemuImgOptions& options, const std::vector<std::string>& args,
                  const SecretBytes* secret, const std::string& log_path) {
  std::vector<std::string> argv = {options.binary};
  argv.insert(argv.end(), args.begin(), args.end());
  int fds[2] = {-1, -1};
  if (secret != nullptr) {
    if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe", "disk secret");
    SecretBytes text = DiskSecretPassphrase(*secret);
    const ssize_t w = ::write(fds[1], text.UnsafeData(), text.size());
    ::close(fds[1]);
    if (w != static_cast<ssize_t>(text.size())) {
      ::close(fds[0]);
      return InternalError("writing the disk secret pipe failed");
    }
  }
  internal::SpawnOptions spawn;
  if (fds[0] >= 0) spawn.inherit_fds = {fds[0]};
  spawn.nice_value = options.nice_value;
  auto pid = internal::SpawnProcessWith(argv, log_path, spawn);
  if (fds[0] >= 0) ::close(fds[0]);
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

// The LUKS1 container (docs/vm.md "Encrypted disk files").
constexpr const char* kLuksCipher = "aes";
constexpr const char* kLuksCipherMode = "xts-plain64";
constexpr const char* kLuksHash = "sha256";
// AES-256 in XTS mode: two 256-bit keys.
constexpr size_t kLuksVolumeKeyBytes = 64;
// cryptsetup aligns the payload of a LUKS1 header with a 512-bit key at
// 2 MiB; the file is made that long plus room for the qcow2 header.
constexpr uint64_t kLuksFileInitialBytes = (2 << 20) + (1 << 20);

// libcryptsetup's crypto backend is set up on first use; one caller at a
// time keeps that (and its log callback) simple.
std::mutex& CryptsetupMutex() {
  static std::mutex mu;
  return mu;
}

void KeepLastError(int level, const char* msg, void* usrptr) {
  if (level != CRYPT_LOG_ERROR || msg == nullptr) return;
  std::string* last = static_cast<std::string*>(usrptr);
  *last = msg;
  while (!last->empty() && (last->back() == '\n' || last->back() == ' ')) last->pop_back();
}

// Writes a LUKS1 header with one key slot, keyed by `secret`'s passphrase,
// over the start of the existing file `path`. The volume key comes from the
// CSPRNG and lives only in wiped memory.
Status FormatLuksContainer(const std::string& path, const SecretBytes& secret) {
  std::lock_guard<std::mutex> lock(CryptsetupMutex());
  crypt_device* raw = nullptr;
  int r = crypt_init(&raw, path.c_str());
  if (r < 0) return InternalError("luks format of " + path + ": cannot open (" + std::to_string(r) + ")");
  std::unique_ptr<crypt_device, void (*)(crypt_device*)> cd(raw, &crypt_free);
  std::string last_error;
  crypt_set_log_callback(cd.get(), &KeepLastError, &last_error);
  auto failed = [&](const char* step, int rc) {
    return InternalError("luks format of " + path + ": " + step + " failed (" +
                         std::to_string(rc) + (last_error.empty() ? "" : ": " + last_error) + ")");
  };
  crypt_pbkdf_type pbkdf = {};
  pbkdf.type = CRYPT_KDF_PBKDF2;
  pbkdf.hash = kLuksHash;
  pbkdf.iterations = kLuksPbkdfIterations;
  pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
  if ((r = crypt_set_pbkdf_type(cd.get(), &pbkdf)) < 0) return failed("pbkdf", r);
  crypt_params_luks1 params = {};
  params.hash = kLuksHash;
  SecretBytes volume_key = SecretBytes::Random(kLuksVolumeKeyBytes);
  r = crypt_format(cd.get(), CRYPT_LUKS1, kLuksCipher, kLuksCipherMode, nullptr,
                   reinterpret_cast<const char*>(volume_key.UnsafeData()), volume_key.size(),
                   &params);
  if (r < 0) return failed("header", r);
  SecretBytes passphrase = DiskSecretPassphrase(secret);
  r = crypt_keyslot_add_by_volume_key(
      cd.get(), 0, reinterpret_cast<const char*>(volume_key.UnsafeData()), volume_key.size(),
      reinterpret_cast<const char*>(passphrase.UnsafeData()), passphrase.size());
  if (r < 0) return failed("key slot", r);
  return OkStatus();
}

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

}  // namespace

nlohmann::json EncryptedContainerNode(const std::string& path, const std::string& secret_id) {
  return {{"driver", "luks"},
          {"key-secret", secret_id},
          {"file", {{"driver", "file"}, {"filename", path}}}};
}

nlohmann::json EncryptedImageNode(const std::string& path, const std::string& secret_id) {
  return {{"driver", "qcow2"},
          {"backing", nullptr},
          {"file", EncryptedContainerNode(path, secret_id)}};
}

Status CreateEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                              uint64_t virtual_size_bytes, const SecretBytes& secret) {
  RETURN_IF_ERROR(CheckSecret(secret));
  if (virtual_size_bytes == 0) return InvalidArgumentError("overlay: the disk size is 0");
  // Claimed first (O_EXCL, 0600), so that only our file is ever written.
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create", path);
  Status s;
  if (::ftruncate(fd, static_cast<off_t>(kLuksFileInitialBytes)) != 0) {
    s = ErrnoToStatus(errno, "truncate", path);
  }
  ::close(fd);
  if (s.ok()) s = FormatLuksContainer(path, secret);
  // An empty qcow2 (no tenant data, no secret) is made beside it and copied
  // into the container's payload, where qemu encrypts it.
  const std::string empty = path + ".empty";
  if (s.ok()) {
    ::unlink(empty.c_str());
    s = RunQemuImg(options,
                   {"create", "-q", "-f", "qcow2", empty, std::to_string(virtual_size_bytes)},
                   nullptr, path + ".log");
  }
  if (s.ok()) {
    s = RunQemuImg(options,
                   {"convert", "-q", "-n", "--object", SecretObject(), "-f", "raw", "-O", "luks",
                    empty, "json:" + DumpJson(EncryptedContainerNode(path, internal::kDiskSecretId))},
                   &secret, path + ".log");
  }
  ::unlink(empty.c_str());
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

Status GrowEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                            uint64_t virtual_size_bytes, const SecretBytes& secret) {
  RETURN_IF_ERROR(CheckSecret(secret));
  if (virtual_size_bytes == 0) return InvalidArgumentError("overlay: the disk size is 0");
  return RunQemuImg(options,
                    {"resize", "-q", "--object", SecretObject(),
                     "json:" + DumpJson(EncryptedImageNode(path, internal::kDiskSecretId)),
                     std::to_string(virtual_size_bytes)},
                    &secret, path + ".log");
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
                     "json:" + DumpJson(EncryptedImageNode(path, internal::kDiskSecretId))},
                    &secret, path + ".log");
}

}  // namespace vmseal::vm
