// The disk-format inspector: decides, from the bytes of a decrypted disk
// image and before any qemu process sees it, whether the host may hand the
// image to qemu, and as which format (docs/format/disk-format.md).
//
// A tenant's image is hostile input. qemu follows names written inside a
// qcow2 header (a backing file, an external data file) and opens those host
// files for the guest: CVE-2024-32498 and the older qcow2 backing-file
// advisories. The inspector accepts exactly two formats, raw and a
// self-contained qcow2 (v2 or v3), and refuses everything else with a
// Status whose message starts with kRefusalPrefix. The host then passes the
// format explicitly to qemu (never probed) with no backing and no data file.
#ifndef VMSEAL_DISK_FORMAT_DISK_FORMAT_H_
#define VMSEAL_DISK_FORMAT_DISK_FORMAT_H_

#include <cstdint>
#include <span>
#include <string_view>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::disk_format {

// Every refusal is INVALID_ARGUMENT with a message that starts with this,
// followed by the reason, e.g. "unsafe_disk_format: qcow2 names a backing
// file". Read errors of the file keep their own code and message.
inline constexpr std::string_view kRefusalPrefix = "unsafe_disk_format: ";

// The formats the host runs.
enum class Format { kRaw, kQcow2 };

// "raw" or "qcow2" (qemu's driver names).
const char* FormatName(Format format);

// What the inspector found in an accepted image.
struct DiskInfo {
  Format format = Format::kRaw;
  // The size of the disk the guest sees, in bytes: the file size for raw,
  // the header's size field for qcow2.
  uint64_t virtual_size = 0;
  // The size of the image file in bytes.
  uint64_t file_size = 0;
  // qcow2 only: the header version, 2 or 3 (0 for raw).
  uint32_t qcow2_version = 0;
};

// Inspects the image in `file`. Reads at most the first cluster of a qcow2
// image (2 MiB), or the first 4 KiB and the last 512 bytes of anything
// else; never the whole file. Returns the format and sizes of an acceptable
// image, INVALID_ARGUMENT "unsafe_disk_format: <reason>" for any other, or
// the file's own error if a read fails. Thread-safe (reads only).
StatusOr<DiskInfo> Inspect(const RandomAccessFile& file);

// The same rules over an image held in memory (whole, or a prefix: then
// file_size is the prefix's length). Never reads outside `image`.
StatusOr<DiskInfo> Inspect(std::span<const uint8_t> image);

}  // namespace vmseal::disk_format

#endif  // VMSEAL_DISK_FORMAT_DISK_FORMAT_H_
