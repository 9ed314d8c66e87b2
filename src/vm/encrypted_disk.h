// The host's encrypted disk files (docs/vm.md "Encrypted disk files"): a
// LUKS1 container (AES-256-XTS, opened by qemu's `luks` driver) whose payload
// is a qcow2 image, under a random per-VM disk secret. Streamed launch puts
// the guest's writes into such an overlay over the read-only export; copy
// mode writes the whole disk into one. No plaintext of a tenant's disk, and
// no qcow2 metadata in the clear, is ever written to a file.
//
// The LUKS header is written in-process by libcryptsetup with a fixed PBKDF2
// iteration count: qemu-img's own LUKS creation always runs a PBKDF
// benchmark (two runs of >= 0.5 s CPU), whatever iter-time asks for. The
// secret is 32 random bytes, so PBKDF2 needs no work factor
// (kLuksPbkdfIterations, LUKS1's minimum). The secret reaches qemu-img (and
// qemu, VmManager::Launch) through an inherited pipe read as a secret object
// (/dev/fd/3): never argv, the environment or a file.
#ifndef VMSEAL_VM_ENCRYPTED_DISK_H_
#define VMSEAL_VM_ENCRYPTED_DISK_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "json/json.h"
#include "vm/vm_manager.h"

namespace vmseal::vm {

// Size of a VM's disk secret.
inline constexpr size_t kDiskSecretBytes = 32;
// PBKDF2-SHA256 iterations of the key slot and of the volume-key digest
// (LUKS1's minimum; see above).
inline constexpr uint32_t kLuksPbkdfIterations = 1000;

// A fresh random disk secret (kDiskSecretBytes, from the CSPRNG).
SecretBytes NewDiskSecret();

// The passphrase qemu is given for `secret`: its 64 lowercase hex digits
// (qemu's LUKS driver wants a UTF-8 passphrase without NUL).
SecretBytes DiskSecretPassphrase(const SecretBytes& secret);

struct QemuImgOptions {
  // qemu-img binary, looked up in PATH when it has no '/'. Default "qemu-img".
  std::string binary = "qemu-img";
  // Bound on the run; the process is killed after it. Default 10 min.
  int64_t timeout_ms = 600000;
  // qemu-img's nice value (0..19). The overlay pool fills in the background
  // at 19, so that it does not slow a booting VM. Default 0.
  int nice_value = 0;
  // When set and it becomes true, qemu-img is killed and the call returns
  // CANCELLED (nothing left at the path). Not owned. Default none.
  const std::atomic<bool>* cancel = nullptr;
};

// The qemu block node of the LUKS container `path` opened with the secret
// object `secret_id` (driver luks over driver file).
nlohmann::json EncryptedContainerNode(const std::string& path, const std::string& secret_id);
// The qemu block node of the encrypted disk file `path`: qcow2, no backing
// file, over EncryptedContainerNode.
nlohmann::json EncryptedImageNode(const std::string& path, const std::string& secret_id);

// Creates `path` (mode 0600, must not exist) as an empty encrypted disk file
// (a LUKS1 container holding a qcow2 of `virtual_size_bytes` that names no
// backing file): VmManager layers it over a disk (VmDisk::overlay_path).
// Runs no PBKDF benchmark (~0.05 s). INVALID_ARGUMENT for a bad secret,
// ALREADY_EXISTS if `path` exists, INTERNAL with libcryptsetup's or
// qemu-img's message when it fails (nothing is left at `path` then).
Status CreateEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                              uint64_t virtual_size_bytes, const SecretBytes& secret);

// Grows the encrypted disk file `path` (CreateEncryptedOverlay, under
// `secret`) to `virtual_size_bytes` (qemu-img resize of the qcow2 inside;
// ~0.05 s).
// INVALID_ARGUMENT when the size is 0 or the secret is not 32 bytes;
// INTERNAL with qemu-img's message tail when it fails (a smaller size, a
// wrong secret); the caller then removes the file.
Status GrowEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                            uint64_t virtual_size_bytes, const SecretBytes& secret);

// Copy mode without creating the target: converts the tenant's disk served
// on `nbd_socket` (read as `format`, no backing file) into `path`, an
// existing, never-written encrypted disk file under `secret` of exactly the
// disk's virtual size (an overlay from the pool, OverlayPool::Take), with
// `qemu-img convert -n --target-is-zero`. INTERNAL with qemu-img's message tail when it fails
// (a wrong secret, a target of another size); the caller then shreds `path`
// (it may hold part of the disk, encrypted).
Status ConvertIntoEncrypted(const QemuImgOptions& options, const std::string& nbd_socket,
                            DiskFormat format, const std::string& path,
                            const SecretBytes& secret);

}  // namespace vmseal::vm

#endif  // VMSEAL_VM_ENCRYPTED_DISK_H_
