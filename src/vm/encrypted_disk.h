// The host's encrypted disk files (docs/vm.md "Encrypted disks"): qcow2 with
// LUKS encryption (qemu's encrypt.format=luks) under a random per-VM disk
// secret. Streamed launch puts the guest's writes into an encrypted overlay
// over the read-only export; copy mode writes the whole disk as one. No
// plaintext of a tenant's disk is ever written to a file.
//
// The secret reaches qemu-img (and qemu, VmManager::Launch) through an
// inherited pipe read as a secret object (/dev/fd/3): never argv, the
// environment or a file. It is 32 random bytes, so LUKS's PBKDF needs no work
// factor: the key slot uses the smallest iteration time qemu accepts
// (kLuksIterTimeMs; qemu's own PBKDF benchmark fails on kernels without
// per-thread CPU time).
#ifndef VMSEAL_VM_ENCRYPTED_DISK_H_
#define VMSEAL_VM_ENCRYPTED_DISK_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "vm/vm_manager.h"

namespace vmseal::vm {

// Size of a VM's disk secret.
inline constexpr size_t kDiskSecretBytes = 32;
// LUKS key-slot PBKDF time, milliseconds (see above).
inline constexpr int kLuksIterTimeMs = 1;

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
  // at 19, so that its PBKDF benchmark does not slow a booting VM. Default 0.
  int nice_value = 0;
  // When set and it becomes true, qemu-img is killed and the call returns
  // CANCELLED (nothing left at the path). Not owned. Default none.
  const std::atomic<bool>* cancel = nullptr;
};

// Creates `path` (mode 0600, must not exist) as an empty LUKS-encrypted
// qcow2 of `virtual_size_bytes` that names no backing file: VmManager layers
// it over a disk (VmDisk::overlay_path). INVALID_ARGUMENT for a bad secret,
// ALREADY_EXISTS if `path` exists, INTERNAL with qemu-img's message tail when
// it fails (nothing is left at `path` then).
Status CreateEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                              uint64_t virtual_size_bytes, const SecretBytes& secret);

// Grows the encrypted qcow2 `path` (CreateEncryptedOverlay, under `secret`)
// to `virtual_size_bytes` (qemu-img resize: it opens the LUKS header with the
// key slot's stored iteration count and runs no PBKDF benchmark; ~0.1 s).
// INVALID_ARGUMENT when the size is 0 or the secret is not 32 bytes;
// INTERNAL with qemu-img's message tail when it fails (a smaller size, a
// wrong secret); the caller then removes the file.
Status GrowEncryptedOverlay(const QemuImgOptions& options, const std::string& path,
                            uint64_t virtual_size_bytes, const SecretBytes& secret);

// Copy mode: converts the tenant's disk served on NBD unix socket
// `nbd_socket` (read as `format`, with no backing file) into `path` (mode
// 0600, must not exist), a LUKS-encrypted qcow2 under `secret` that
// VmManager opens as VmDisk{encrypted = true}. Written through a temp file
// beside `path` and renamed: on failure nothing is left.
Status ConvertToEncrypted(const QemuImgOptions& options, const std::string& nbd_socket,
                          DiskFormat format, const std::string& path, const SecretBytes& secret);

// Copy mode without creating the target: converts the tenant's disk served
// on `nbd_socket` (read as `format`, no backing file) into `path`, an
// existing, never-written encrypted qcow2 under `secret` of exactly the
// disk's virtual size (an overlay from the pool, OverlayPool::Take).
// `qemu-img convert -n --target-is-zero`: no LUKS header is made, so no
// PBKDF benchmark runs. INTERNAL with qemu-img's message tail when it fails
// (a wrong secret, a target of another size); the caller then shreds `path`
// (it may hold part of the disk, encrypted).
Status ConvertIntoEncrypted(const QemuImgOptions& options, const std::string& nbd_socket,
                            DiskFormat format, const std::string& path,
                            const SecretBytes& secret);

}  // namespace vmseal::vm

#endif  // VMSEAL_VM_ENCRYPTED_DISK_H_
