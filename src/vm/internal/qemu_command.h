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

// The files qemu uses for one VM.
struct QemuPaths {
  std::string serial_log;
  std::string qmp_socket;
};

// INVALID_ARGUMENT unless `name` is 1..64 of [A-Za-z0-9._-] and does not
// start with '.'.
Status ValidateVmName(const std::string& name);

// Name, cpus, memory and a non-empty disk path.
Status ValidateVmSpec(const VmSpec& spec);

// Doubles every ',' so that `value` is one qemu option value.
std::string QemuEscape(const std::string& value);

// The argv (argv[0] = qemu_binary) running `spec` headless: no display, no
// default devices, the serial port to paths.serial_log, QMP on
// paths.qmp_socket, the disk on virtio-blk, no NIC unless user_network.
// `accel` must be kKvm or kTcg.
std::vector<std::string> BuildQemuArgv(const std::string& qemu_binary, const VmSpec& spec,
                                       Accel accel, const QemuPaths& paths);

}  // namespace vmseal::vm::internal

#endif  // VMSEAL_VM_INTERNAL_QEMU_COMMAND_H_
