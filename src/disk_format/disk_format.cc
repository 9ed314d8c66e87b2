#include "disk_format/disk_format.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "disk_format/disk_format_spec.h"

namespace vmseal::disk_format {
namespace {

namespace s = spec;

Status Refuse(std::string reason) {
  return InvalidArgumentError(std::string(kRefusalPrefix) + std::move(reason));
}

std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// Big-endian reads; callers check that `at + width <= b.size()`.
uint32_t Be32(std::span<const uint8_t> b, size_t at) {
  return (uint32_t{b[at]} << 24) | (uint32_t{b[at + 1]} << 16) | (uint32_t{b[at + 2]} << 8) |
         uint32_t{b[at + 3]};
}
uint64_t Be64(std::span<const uint8_t> b, size_t at) {
  return (uint64_t{Be32(b, at)} << 32) | Be32(b, at + 4);
}

bool HasPrefix(std::span<const uint8_t> b, size_t at, std::string_view magic) {
  return at <= b.size() && b.size() - at >= magic.size() &&
         std::memcmp(b.data() + at, magic.data(), magic.size()) == 0;
}

// Reads [offset, offset + length) of `file`, or fewer bytes at its end.
StatusOr<std::vector<uint8_t>> ReadAt(const RandomAccessFile& file, uint64_t offset,
                                      uint64_t length) {
  std::vector<uint8_t> out(length);
  size_t done = 0;
  while (done < out.size()) {
    ASSIGN_OR_RETURN(size_t n, file.Read(offset + done, std::span(out).subspan(done)));
    if (n == 0) break;
    done += n;
  }
  out.resize(done);
  return out;
}

// §3 Formats qemu knows that the host refuses, found by their magic. The
// host never lets qemu probe, but a "raw" image that is really one of these
// is not what its owner meant, and another tool that does probe would
// follow the file names some of them carry (VMDK descriptors, VHDX parent
// locators).
struct ForeignMagic {
  bool at_end;          // offset counts back from the end of the file
  uint64_t offset;
  std::string_view magic;
  const char* what;
};
constexpr ForeignMagic kForeignMagics[] = {
    {false, 0, "QED\0", "a QED image"},
    {false, 0, "KDMV", "a VMDK sparse extent"},
    {false, 0, "COWD", "a VMDK ESX sparse extent"},
    {false, 0, "# Disk DescriptorFile", "a VMDK descriptor"},
    {false, 0, "vhdxfile", "a VHDX image"},
    {false, 0, "conectix", "a VHD image (header copy of the footer)"},
    {true, 512, "conectix", "a VHD image (footer)"},
    {false, 0x40, "\x7f\x10\xda\xbe", "a VDI image"},
    {false, 0, "<<< Oracle VM VirtualBox Disk Image >>>", "a VDI image"},
    {false, 0, "LUKS\xba\xbe", "a LUKS volume"},
    {false, 0, "WithoutFreeSpace", "a Parallels image"},
    {false, 0, "WithouFreSpacExt", "a Parallels image"},
    {true, 512, "koly", "a DMG image"},
    {false, 0, "#!/bin/sh\n#V2.0 Format\n", "a cloop image"},
    {false, 0, "Bochs Virtual HD Image", "a Bochs image"},
};

Status CheckNotForeign(std::span<const uint8_t> head, std::span<const uint8_t> tail) {
  for (const ForeignMagic& m : kForeignMagics) {
    bool found = false;
    if (m.at_end) {
      found = tail.size() >= m.offset && HasPrefix(tail, tail.size() - m.offset, m.magic);
    } else {
      found = HasPrefix(head, m.offset, m.magic);
    }
    if (found) return Refuse(std::string("image is ") + m.what + ", not raw or qcow2");
  }
  return OkStatus();
}

// The fields of a qcow2 header that the rules use (§4.1).
struct Qcow2Header {
  uint32_t version = 0;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 0;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = s::kV2RefcountOrder;
  uint32_t header_length = s::kV2HeaderBytes;
  uint8_t compression_type = s::kCompressionZlib;
};

StatusOr<Qcow2Header> ParseHeader(std::span<const uint8_t> b) {
  Qcow2Header h;
  if (b.size() < s::kOffVersion + 4) return Refuse("qcow2 header is truncated");
  h.version = Be32(b, s::kOffVersion);
  if (h.version == 1) {
    return Refuse("image is qcow version 1, which qemu opens only with backing files and "
                  "AES");
  }
  if (h.version != 2 && h.version != 3) {
    return Refuse("qcow2 version " + std::to_string(h.version) + " is not 2 or 3");
  }
  const uint32_t fixed = h.version == 2 ? s::kV2HeaderBytes : s::kV3MinHeaderBytes;
  if (b.size() < fixed) return Refuse("qcow2 header is truncated");
  h.backing_file_offset = Be64(b, s::kOffBackingFileOffset);
  h.backing_file_size = Be32(b, s::kOffBackingFileSize);
  h.cluster_bits = Be32(b, s::kOffClusterBits);
  h.size = Be64(b, s::kOffSize);
  h.crypt_method = Be32(b, s::kOffCryptMethod);
  h.l1_size = Be32(b, s::kOffL1Size);
  h.l1_table_offset = Be64(b, s::kOffL1TableOffset);
  h.refcount_table_offset = Be64(b, s::kOffRefcountTableOffset);
  h.refcount_table_clusters = Be32(b, s::kOffRefcountTableClusters);
  h.nb_snapshots = Be32(b, s::kOffNbSnapshots);
  h.snapshots_offset = Be64(b, s::kOffSnapshotsOffset);
  if (h.version == 3) {
    h.incompatible_features = Be64(b, s::kOffIncompatibleFeatures);
    h.autoclear_features = Be64(b, s::kOffAutoclearFeatures);
    h.refcount_order = Be32(b, s::kOffRefcountOrder);
    h.header_length = Be32(b, s::kOffHeaderLength);
    if (h.header_length > s::kOffCompressionType && b.size() > s::kOffCompressionType) {
      h.compression_type = b[s::kOffCompressionType];
    }
  }
  return h;
}

// §4.2 Everything that names a file outside the image, or that qemu would
// not open as a plain self-contained disk.
Status CheckHeader(const Qcow2Header& h) {
  if (h.backing_file_offset != 0 || h.backing_file_size != 0) {
    return Refuse("qcow2 names a backing file");
  }
  if (h.incompatible_features & s::kIncompatDataFile) {
    return Refuse("qcow2 uses an external data file (incompatible feature bit 2)");
  }
  if (h.autoclear_features & s::kAutoclearDataFileRaw) {
    return Refuse("qcow2 uses an external data file (raw external data bit)");
  }
  if (h.crypt_method != 0) {
    return Refuse("qcow2 is encrypted (crypt_method " + std::to_string(h.crypt_method) + ")");
  }
  const uint64_t unknown = h.incompatible_features & ~s::kIncompatKnown;
  if (unknown != 0) return Refuse("qcow2 has unknown incompatible feature bits " + Hex(unknown));
  if (h.incompatible_features & s::kIncompatCorrupt) return Refuse("qcow2 is marked corrupt");

  if (h.cluster_bits < s::kMinClusterBits || h.cluster_bits > s::kMaxClusterBits) {
    return Refuse("qcow2 cluster_bits " + std::to_string(h.cluster_bits) + " is outside " +
                  std::to_string(s::kMinClusterBits) + ".." + std::to_string(s::kMaxClusterBits));
  }
  const uint64_t cluster = uint64_t{1} << h.cluster_bits;
  if (h.version == 3) {
    if (h.header_length < s::kV3MinHeaderBytes || h.header_length % 8 != 0 ||
        h.header_length > cluster) {
      return Refuse("qcow2 header_length " + std::to_string(h.header_length) +
                    " is not a multiple of 8 between 104 and the cluster size");
    }
    if (h.refcount_order > s::kMaxRefcountOrder) {
      return Refuse("qcow2 refcount_order " + std::to_string(h.refcount_order) +
                    " is above 6");
    }
  }
  const bool zstd_bit = (h.incompatible_features & s::kIncompatCompressionType) != 0;
  if (h.compression_type != s::kCompressionZlib && h.compression_type != s::kCompressionZstd) {
    return Refuse("qcow2 compression_type " + std::to_string(h.compression_type) +
                  " is unknown");
  }
  if (zstd_bit != (h.compression_type != s::kCompressionZlib)) {
    return Refuse("qcow2 compression type bit and compression_type field disagree");
  }
  const bool extended_l2 = (h.incompatible_features & s::kIncompatExtendedL2) != 0;
  if (extended_l2 && h.cluster_bits < s::kMinClusterBitsExtendedL2) {
    return Refuse("qcow2 extended L2 entries need clusters of at least 16 KiB");
  }

  // §5 Sizes.
  if (h.size > s::kMaxVirtualSizeBytes) {
    return Refuse("qcow2 virtual size " + std::to_string(h.size) + " is above 64 TiB");
  }
  const uint64_t l2_entries = cluster / (extended_l2 ? 16 : 8);
  const uint64_t bytes_per_l1_entry = cluster * l2_entries;  // <= 2^39
  const uint64_t l1_needed = (h.size + bytes_per_l1_entry - 1) / bytes_per_l1_entry;
  if (uint64_t{h.l1_size} * 8 > s::kMaxL1TableBytes) {
    return Refuse("qcow2 L1 table of " + std::to_string(h.l1_size) + " entries is too large");
  }
  if (h.l1_size < l1_needed) {
    return Refuse("qcow2 L1 table of " + std::to_string(h.l1_size) +
                  " entries cannot map the virtual size");
  }
  auto aligned_table = [&](uint64_t offset, uint64_t bytes) {
    // Not in the header cluster, cluster-aligned, and addressable (< 2^56).
    return offset >= cluster && offset % cluster == 0 && offset < (uint64_t{1} << 56) &&
           bytes <= (uint64_t{1} << 56) - offset;
  };
  if (h.l1_size > 0 && !aligned_table(h.l1_table_offset, uint64_t{h.l1_size} * 8)) {
    return Refuse("qcow2 L1 table offset " + Hex(h.l1_table_offset) + " is invalid");
  }
  const uint64_t refcount_bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
  if (h.refcount_table_clusters == 0 || refcount_bytes > s::kMaxRefcountTableBytes) {
    return Refuse("qcow2 refcount table of " + std::to_string(h.refcount_table_clusters) +
                  " clusters is empty or too large");
  }
  if (!aligned_table(h.refcount_table_offset, refcount_bytes)) {
    return Refuse("qcow2 refcount table offset " + Hex(h.refcount_table_offset) +
                  " is invalid");
  }
  if (h.nb_snapshots > s::kMaxSnapshots) {
    return Refuse("qcow2 has " + std::to_string(h.nb_snapshots) + " snapshots, above 65536");
  }
  if (h.nb_snapshots > 0 && !aligned_table(h.snapshots_offset, 0)) {
    return Refuse("qcow2 snapshot table offset " + Hex(h.snapshots_offset) + " is invalid");
  }
  return OkStatus();
}

// §4.3 The header extensions between the header and the end of the first
// cluster (`area` holds the first cluster, or the whole file if shorter).
Status CheckExtensions(const Qcow2Header& h, std::span<const uint8_t> area, uint64_t cluster) {
  bool seen_feature_table = false, seen_bitmaps = false;
  uint64_t off = h.header_length;
  while (off < cluster) {
    if (area.size() < off || area.size() - off < 8) {
      if (off + 8 > cluster) return Refuse("qcow2 header extension runs past the first cluster");
      return Refuse("qcow2 header extensions run past the end of the file");
    }
    const uint32_t type = Be32(area, off);
    const uint32_t length = Be32(area, off + 4);
    if (type == s::kExtEnd) break;
    const uint64_t padded = (uint64_t{length} + 7) / 8 * 8;
    if (padded > cluster - off - 8) {
      return Refuse("qcow2 header extension " + Hex(type) + " runs past the first cluster");
    }
    if (padded > area.size() - off - 8) {
      return Refuse("qcow2 header extension " + Hex(type) + " runs past the end of the file");
    }
    switch (type) {
      case s::kExtBackingFormat:
        return Refuse("qcow2 names a backing file format (header extension 0xe2792aca)");
      case s::kExtDataFile:
        return Refuse("qcow2 names an external data file (header extension 0x44415441)");
      case s::kExtCryptoHeader:
        return Refuse("qcow2 has an encryption header (header extension 0x537be77)");
      case s::kExtFeatureTable:
        if (seen_feature_table) return Refuse("qcow2 repeats the feature name table");
        if (length % s::kFeatureTableEntryBytes != 0) {
          return Refuse("qcow2 feature name table length " + std::to_string(length) +
                        " is not a multiple of 48");
        }
        seen_feature_table = true;
        break;
      case s::kExtBitmaps:
        if (seen_bitmaps) return Refuse("qcow2 repeats the bitmaps extension");
        if (length != s::kBitmapsExtensionBytes) {
          return Refuse("qcow2 bitmaps extension length " + std::to_string(length) +
                        " is not 24");
        }
        seen_bitmaps = true;
        break;
      default:
        break;  // qemu keeps unknown extensions without interpreting them (§4.3)
    }
    off += 8 + padded;
  }
  return OkStatus();
}

StatusOr<DiskInfo> InspectQcow2(const RandomAccessFile& file, uint64_t file_size,
                                std::span<const uint8_t> head) {
  ASSIGN_OR_RETURN(Qcow2Header h, ParseHeader(head));
  RETURN_IF_ERROR(CheckHeader(h));
  const uint64_t cluster = uint64_t{1} << h.cluster_bits;
  std::vector<uint8_t> first_cluster;
  std::span<const uint8_t> area = head;
  if (head.size() < std::min(cluster, file_size)) {
    ASSIGN_OR_RETURN(first_cluster, ReadAt(file, 0, std::min(cluster, file_size)));
    area = first_cluster;
  }
  RETURN_IF_ERROR(CheckExtensions(h, area.first(std::min<uint64_t>(area.size(), cluster)),
                                  cluster));
  // §5 The tables qemu reads when it opens the image lie inside the file.
  if (h.l1_size > 0 && h.l1_table_offset + uint64_t{h.l1_size} * 8 > file_size) {
    return Refuse("qcow2 L1 table lies past the end of the file");
  }
  const uint64_t refcount_bytes = uint64_t{h.refcount_table_clusters} << h.cluster_bits;
  if (h.refcount_table_offset + refcount_bytes > file_size) {
    return Refuse("qcow2 refcount table lies past the end of the file");
  }
  DiskInfo info;
  info.format = Format::kQcow2;
  info.virtual_size = h.size;
  info.file_size = file_size;
  info.qcow2_version = h.version;
  return info;
}

// A read-only view of memory as a file (for Inspect(span)).
class SpanFile final : public RandomAccessFile {
 public:
  explicit SpanFile(std::span<const uint8_t> data) : data_(data) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= data_.size()) return size_t{0};
    const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), data_.size() - offset));
    std::memcpy(out.data(), data_.data() + offset, n);
    return n;
  }
  StatusOr<uint64_t> Size() const override { return data_.size(); }

 private:
  const std::span<const uint8_t> data_;
};

}  // namespace

const char* FormatName(Format format) {
  return format == Format::kQcow2 ? "qcow2" : "raw";
}

StatusOr<DiskInfo> Inspect(const RandomAccessFile& file) {
  ASSIGN_OR_RETURN(uint64_t file_size, file.Size());
  if (file_size == 0) return Refuse("image is empty");
  ASSIGN_OR_RETURN(std::vector<uint8_t> head,
                   ReadAt(file, 0, std::min(file_size, s::kProbeBytes)));
  if (HasPrefix(head, 0, std::string_view(reinterpret_cast<const char*>(s::kQcowMagic), 4))) {
    return InspectQcow2(file, file_size, head);
  }
  std::vector<uint8_t> tail;
  if (file_size >= s::kFooterBytes) {
    ASSIGN_OR_RETURN(tail, ReadAt(file, file_size - s::kFooterBytes, s::kFooterBytes));
  }
  RETURN_IF_ERROR(CheckNotForeign(head, tail));
  if (file_size > s::kMaxVirtualSizeBytes) {
    return Refuse("raw image of " + std::to_string(file_size) + " bytes is above 64 TiB");
  }
  DiskInfo info;
  info.format = Format::kRaw;
  info.virtual_size = file_size;
  info.file_size = file_size;
  return info;
}

StatusOr<DiskInfo> Inspect(std::span<const uint8_t> image) {
  SpanFile file(image);
  return Inspect(static_cast<const RandomAccessFile&>(file));
}

}  // namespace vmseal::disk_format
