// Builds qemu's command line and validates VM specs. Internal to vmseal_vm.
#ifndef VMSEAL_VM_INTERNAL_QEMU_COMMAND_H_
#define VMSEAL_VM_INTERNAL_QEMU_COMMAND_H_

#include <string>
#include <vector>

#include "base/status.h"
#include "vm/vm_manager.h"

namespace vmseal::vm::internal {

// Limits on a VmSpec (docs/vm.md).
inline constexpr uint32_t kMaxCpus = 256;
inline constexpr uint64_t kMinMemoryMib = 16;
inline constexpr uint64_t kMaxMemoryMib = 1048576;
inline constexpr size_t kMaxNameLength = 64;
inline constexpr size_t kMaxDisks = 16;

// The files qemu uses for one VM.
struct QemuPaths {
  std::string serial_log;
  std::string qmp_socket;
  // >= 0: qemu serves QMP on this inherited listening socket (the agent
  // bound it at qmp_socket) instead of creating qmp_socket itself: a VM
  // user cannot create files in the agent's run/ directory.
  int qmp_fd = -1;
  // spec.firmware == kEfi: the OVMF code image (read-only pflash0) and the
  // VM's own variable store (pflash1).
  std::string efi_code;
  std::string efi_vars;
};

// The pflash node names of an EFI VM.
inline constexpr const char* kEfiCodeNodeName = "efi-code";
inline constexpr const char* kEfiVarsNodeName = "efi-vars";

// INVALID_ARGUMENT unless `name` is 1..64 of [A-Za-z0-9._-] and does not
// start with '.'.
Status ValidateVmName(const std::string& name);

// Name, cpus, memory and a non-empty disk path.
Status ValidateVmSpec(const VmSpec& spec);

// The spec's disks as a list: spec.disks, or the one boot disk
// {disk_path, disk_format} of the single-disk form.
std::vector<VmDisk> DisksOf(const VmSpec& spec);

// Doubles every ',' so that `value` is one qemu option value.
std::string QemuEscape(const std::string& value);

// qemu's seccomp sandbox for every VM: no obsolete system calls, no setuid
// or capabilities, no fork/exec, no scheduler or CPU-affinity changes.
inline constexpr const char* kQemuSandbox =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

// The block graph's node names: the file node and the format node on it.
inline constexpr const char* kDiskFileNodeName = "disk0-file";
inline constexpr const char* kDiskNodeName = "disk0";

// The JSON -blockdev of the disk's protocol node: the `file` driver on
// spec.disk_path (JSON, so a path needs no comma escaping).
std::string DiskProtocolNode(const VmSpec& spec);

// The JSON -blockdev of the disk's format node on the file node:
// {"driver":"raw",...} or {"driver":"qcow2",...,"backing":null}; never a
// data-file (docs/format/disk-format.md §6).
std::string DiskFormatNode(const VmSpec& spec);
// The same for disk `index` of a list (node names disk<index>-file, disk<index>).
std::string DiskProtocolNode(const VmDisk& disk, size_t index);
std::string DiskFormatNode(const VmDisk& disk, size_t index);

// The argv (argv[0] = qemu_binary) running `spec` headless: no display, no
// default devices, the seccomp sandbox (kQemuSandbox), the serial port to
// paths.serial_log, QMP on paths.qmp_socket, the disk as an explicit
// -blockdev graph (file node, format node) on virtio-blk-pci as the boot
// device, no NIC unless user_network. `accel` must be kKvm or kTcg. For
// firmware kEfi: a q35 machine whose pflash0/pflash1 are paths.efi_code
// (read-only) and paths.efi_vars, with SMM and secure pflash for
// secure_boot.
// The node names of disk `index`: "disk<index>-file" and "disk<index>" (the
// node the device uses), and with an overlay "disk<index>-base" (the tenant's
// format node) and "disk<index>-overlay-file".
std::string DiskFileNodeName(size_t index);
std::string DiskNodeName(size_t index);
std::string DiskBaseNodeName(size_t index);
std::string DiskOverlayFileNodeName(size_t index);
// LUKS container nodes of an encrypted disk file (copy mode) and of an
// overlay (EncryptedFileLayout::kLuksContainer).
std::string DiskLuksNodeName(size_t index);
std::string DiskOverlayLuksNodeName(size_t index);

// The qemu secret object holding the VM's disk secret, read from this
// inherited descriptor (a pipe the agent fills: never argv, env or a file).
inline constexpr const char* kDiskSecretId = "vmseal-disk-secret";
inline constexpr int kDiskSecretFd = 3;
// Further disk secrets (VmDisk::secret_slot > 0): slot k is the object
// "vmseal-disk-secret-<k>" read from descriptor kExtraDiskSecretFdBase + k - 1.
inline constexpr int kExtraDiskSecretFdBase = 6;
// Slots 0 .. kMaxDiskSecretSlots - 1 (one per disk of a VM).
inline constexpr uint32_t kMaxDiskSecretSlots = 16;
// The secret object id and inherited descriptor of secret slot `slot`.
std::string DiskSecretId(uint32_t slot);
int DiskSecretFd(uint32_t slot);
// The secret slots the disks of `spec` use (those that need a secret),
// ascending, each once.
std::vector<uint32_t> DiskSecretSlots(const VmSpec& spec);
// The inherited QMP listening socket of a VM run under a VM user.
inline constexpr int kQmpListenFd = 4;
// qemu's end of the socket pair to the VM's swtpm (VmSpec::tpm), and the
// swtpm's end as the swtpm inherits it.
inline constexpr int kTpmCtrlFd = 5;
inline constexpr int kSwtpmCtrlFd = 3;

// The swtpm command line of a VM's vTPM: TPM 2.0, state in `state_dir`
// (files 0600), control channel on inherited descriptor kSwtpmCtrlFd, ends
// when qemu closes it.
std::vector<std::string> BuildSwtpmArgv(const std::string& swtpm_binary,
                                        const std::string& state_dir);
// How long qemu's NBD client keeps retrying a lost export (nbdkit restarted
// after an agent crash) before it fails the guest's requests, seconds.
inline constexpr int kNbdReconnectDelaySeconds = 60;

// Whether a disk (or any disk of `spec`) needs the disk secret.
bool NeedsDiskSecret(const VmDisk& disk);
bool NeedsDiskSecret(const VmSpec& spec);

// Every -blockdev of disk `index`, bottom up (JSON texts).
std::vector<std::string> DiskBlockdevs(const VmDisk& disk, size_t index);

std::vector<std::string> BuildQemuArgv(const std::string& qemu_binary, const VmSpec& spec,
                                       Accel accel, const QemuPaths& paths);

}  // namespace vmseal::vm::internal

#endif  // VMSEAL_VM_INTERNAL_QEMU_COMMAND_H_
