// Reads the CPU count and memory size of the first VirtualSystem from an
// OVF descriptor (VirtualHardwareSection Items of ResourceType 3 and 4).
#ifndef VMSEAL_HOST_INTERNAL_VIRTUAL_HARDWARE_H_
#define VMSEAL_HOST_INTERNAL_VIRTUAL_HARDWARE_H_

#include <cstdint>
#include <string_view>

#include "base/status.h"

namespace vmseal::host::internal {

struct VirtualHardware {
  uint32_t cpus = 1;
  uint64_t memory_mib = 512;
};

// Limits applied to what a package may ask of a host.
inline constexpr uint32_t kMaxCpus = 64;
inline constexpr uint64_t kMaxMemoryMib = 256 * 1024;

// Missing items keep the defaults above. Values out of range (0, above the
// limits, or unknown AllocationUnits) are INVALID_ARGUMENT.
StatusOr<VirtualHardware> ReadVirtualHardware(std::string_view descriptor_xml);

}  // namespace vmseal::host::internal

#endif  // VMSEAL_HOST_INTERNAL_VIRTUAL_HARDWARE_H_
