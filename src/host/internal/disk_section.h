// Reads what an OVF descriptor's DiskSection declares about a disk file.
#ifndef VMSEAL_HOST_INTERNAL_DISK_SECTION_H_
#define VMSEAL_HOST_INTERNAL_DISK_SECTION_H_

#include <string>
#include <string_view>

#include "base/status.h"

namespace vmseal::host::internal {

// The ovf:format URI of the DiskSection's Disk whose ovf:fileRef is
// `file_id` (the first such Disk), or "" when no Disk names the file or it
// has no format. INVALID_ARGUMENT for a descriptor that is not well-formed
// XML or has a DOCTYPE.
StatusOr<std::string> DeclaredDiskFormat(std::string_view descriptor_xml,
                                         std::string_view file_id);

}  // namespace vmseal::host::internal

#endif  // VMSEAL_HOST_INTERNAL_DISK_SECTION_H_
