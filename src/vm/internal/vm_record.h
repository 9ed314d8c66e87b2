// The per-VM state file (docs/vm.md, "State file"). Internal to vmseal_vm.
#ifndef VMSEAL_VM_INTERNAL_VM_RECORD_H_
#define VMSEAL_VM_INTERNAL_VM_RECORD_H_

#include <string>
#include <vector>

#include "base/status.h"
#include "vm/vm_manager.h"

namespace vmseal::vm::internal {

inline constexpr int kVmRecordVersion = 1;
// A state file larger than this is refused as corrupt.
inline constexpr size_t kMaxVmRecordBytes = 64 * 1024;

// What a state file holds: the VM (its `state` is not stored: it is derived
// from the process) and qemu's exact argv, compared with /proc/<pid>/cmdline.
struct VmRecord {
  VmInfo info;
  std::vector<std::string> argv;
  // The VM's swtpm's exact argv (VmInfo::tpm), empty without one.
  std::vector<std::string> tpm_argv;
  // true once Stop has run (the pid is then not looked at again).
  bool stopped = false;
};

// JSON text of `record`.
std::string SerializeVmRecord(const VmRecord& record);

// Parses and validates a state file; DATA_LOSS with the reason when it is
// not valid JSON, has the wrong version, or lacks or mistypes a field.
StatusOr<VmRecord> ParseVmRecord(const std::string& text);

}  // namespace vmseal::vm::internal

#endif  // VMSEAL_VM_INTERNAL_VM_RECORD_H_
