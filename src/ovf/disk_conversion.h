// Disk conversion at seal time (docs/format/package.md §2.3): VMDK, VHD and
// VHDX disks, which exporters write and the host refuses to boot, are
// converted on the customer's machine with qemu-img into a self-contained
// qcow2 before they are sealed. The host then only ever sees raw or qcow2
// (src/disk_format), and the converted image passes the same inspector.
//
// qemu-img follows file names written inside some of these formats (a VMDK
// descriptor's extents, a VMDK or VHDX parent). The conversion refuses any
// image whose extents are not confined to the allowed directory, and any
// image with a parent (backing file), before qemu-img reads a byte of data.
#ifndef VMSEAL_OVF_DISK_CONVERSION_H_
#define VMSEAL_OVF_DISK_CONVERSION_H_

#include <optional>
#include <string>
#include <string_view>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::ovf {

// The formats a sealed package may carry (raw, qcow2) and the ones that seal
// converts. kUnknown: none of these (treated as raw by the caller).
enum class SourceDiskFormat { kRaw, kQcow2, kVmdk, kVmdkDescriptor, kVhd, kVhdx };

// qemu-img's driver name ("raw", "qcow2", "vmdk", "vpc", "vhdx").
const char* QemuDriverName(SourceDiskFormat format);
// Whether seal converts this format.
bool NeedsConversion(SourceDiskFormat format);

// The format of the image in `file`, from its magic bytes: "KDMV" (VMDK
// sparse and streamOptimized), "# Disk DescriptorFile" (a VMDK text
// descriptor: monolithicFlat and friends), "vhdxfile" (VHDX), "conectix" at
// the start or in the last 512 bytes (VHD dynamic or fixed), the qcow2 magic;
// anything else is raw.
StatusOr<SourceDiskFormat> DetectSourceDiskFormat(const RandomAccessFile& file);

// The format an OVF Disk's ovf:format URI names: VMware's vmdk.html URIs
// (#streamOptimized, #monolithicSparse, #sparse, ...) -> kVmdk, Microsoft's
// VHD and VHDX URIs -> kVhd/kVhdx, vmseal's raw/qcow2 URIs; nullopt-like
// kRaw with *known = false for any other or empty URI.
SourceDiskFormat FormatFromUri(std::string_view uri, bool* known);

struct ConversionResult {
  uint64_t virtual_size = 0;  // bytes the guest sees
  uint64_t file_size = 0;     // bytes of the qcow2 file
};

// Converts `source_path` (of format `format`, which NeedsConversion) into a
// new qcow2 file at `dest_path` (must not exist) with qemu-img, found on
// PATH. Every file the image names (VMDK extents) must be a regular file
// directly inside `confine_dir`; an image with a backing file is refused.
// The result is checked by the disk-format inspector. INVALID_ARGUMENT
// "disk conversion: ..." naming the file and the reason on refusal;
// FAILED_PRECONDITION when qemu-img is missing; qemu-img's message (first
// lines) when it fails. On error `dest_path` does not exist.
StatusOr<ConversionResult> ConvertToQcow2(Env* env, const std::string& source_path,
                                          SourceDiskFormat format,
                                          const std::string& confine_dir,
                                          const std::string& dest_path);

// A conversion held in memory (ConvertToQcow2InMemory).
struct MemoryConversion {
  ConversionResult result;
  // The qcow2 bytes, read-only; the memory is freed when this is destroyed.
  std::unique_ptr<RandomAccessFile> file;
};

// Like ConvertToQcow2 (the same checks and the same qemu-img command, so
// the same bytes), but qemu-img writes into an anonymous memory file
// (memfd) instead of a file on disk, which seal would write once more into
// the package. Only when `qemu-img measure` says the qcow2 needs at most
// `max_bytes`; otherwise, or without memfd, returns nullopt and nothing
// was converted (the caller converts to a file). Errors as ConvertToQcow2.
StatusOr<std::optional<MemoryConversion>> ConvertToQcow2InMemory(
    Env* env, const std::string& source_path, SourceDiskFormat format,
    const std::string& confine_dir, uint64_t max_bytes);

// The default `max_bytes` for ConvertToQcow2InMemory: a quarter of the
// memory the kernel reports available (MemAvailable), at most 8 GiB; 0
// when it cannot tell.
uint64_t DefaultInMemoryConversionBytes();

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_DISK_CONVERSION_H_
