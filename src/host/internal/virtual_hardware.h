// Reads the CPU count and memory size of the first VirtualSystem from an
// OVF descriptor (VirtualHardwareSection Items of ResourceType 3 and 4).
#ifndef VMSEAL_HOST_INTERNAL_VIRTUAL_HARDWARE_H_
#define VMSEAL_HOST_INTERNAL_VIRTUAL_HARDWARE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace vmseal::host::internal {

struct VirtualHardware {
  uint32_t cpus = 1;
  uint64_t memory_mib = 512;
  // File ids (References ovf:id) of the disks in the order the VM gets them;
  // the first boots. Empty when the descriptor attaches no disk through
  // its VirtualHardwareSection (the caller then uses References order).
  // Order (docs/host.md "Disk order"): the disk a BootOrderSection names
  // (vmw:BootOrderSection type="disk", instanceId = the disk Item's
  // InstanceID) first; then disk drive Items (ResourceType 17) by their
  // controller's place among the controllers and their AddressOnParent,
  // ties in document order.
  std::vector<std::string> disk_file_ids;
  // true when a BootOrderSection named the boot disk.
  bool boot_named = false;
  // The platform of the VirtualHardwareSection's vmseal:Platform
  // (docs/format/package.md §2.4, which seal writes from the exporter's own
  // settings); BIOS without a TPM when there is none.
  bool efi = false;
  bool secure_boot = false;
  bool tpm = false;
};

// Limits applied to what a package may ask of a host.
inline constexpr uint32_t kMaxCpus = 64;
inline constexpr uint64_t kMaxMemoryMib = 256 * 1024;

// Missing items keep the defaults above. A disk Item whose HostResource names
// no Disk of the DiskSection (ovf:/disk/<diskId>) or File (ovf:/file/<id>),
// two Items on one disk, a BootOrderSection naming no disk Item, a
// vmseal:Platform with an unknown value or Secure Boot without EFI, or two
// vmseal:Platform elements, is
// INVALID_ARGUMENT. Values out of range (0, above the
// limits, or unknown AllocationUnits) are INVALID_ARGUMENT.
StatusOr<VirtualHardware> ReadVirtualHardware(std::string_view descriptor_xml);

}  // namespace vmseal::host::internal

#endif  // VMSEAL_HOST_INTERNAL_VIRTUAL_HARDWARE_H_
