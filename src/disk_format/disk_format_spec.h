// Constants of the disk-format rules, each with the section of
// docs/format/disk-format.md that defines it. Internal to vmseal_disk_format
// and its tests.
#ifndef VMSEAL_DISK_FORMAT_DISK_FORMAT_SPEC_H_
#define VMSEAL_DISK_FORMAT_DISK_FORMAT_SPEC_H_

#include <cstdint>
#include <string_view>

namespace vmseal::disk_format::spec {

// §2 What is read of a non-qcow2 image: its first bytes and its last sector.
inline constexpr uint64_t kProbeBytes = 4096;
inline constexpr uint64_t kFooterBytes = 512;

// §5 Limits.
inline constexpr uint64_t kMaxVirtualSizeBytes = uint64_t{64} << 40;  // 64 TiB
inline constexpr uint32_t kMinClusterBits = 9;                        // 512 B
inline constexpr uint32_t kMaxClusterBits = 21;                       // 2 MiB
inline constexpr uint32_t kMinClusterBitsExtendedL2 = 14;             // 16 KiB
inline constexpr uint32_t kMaxRefcountOrder = 6;                      // 64-bit refcounts
inline constexpr uint32_t kV2RefcountOrder = 4;
inline constexpr uint64_t kMaxL1TableBytes = uint64_t{32} << 20;       // qemu's limit
inline constexpr uint64_t kMaxRefcountTableBytes = uint64_t{8} << 20;  // qemu's limit
inline constexpr uint32_t kMaxSnapshots = 65536;                       // qemu's limit

// §4 The qcow2 header (all fields big-endian).
inline constexpr uint8_t kQcowMagic[4] = {'Q', 'F', 'I', 0xfb};
inline constexpr uint32_t kV2HeaderBytes = 72;
inline constexpr uint32_t kV3MinHeaderBytes = 104;
inline constexpr uint32_t kOffVersion = 4;
inline constexpr uint32_t kOffBackingFileOffset = 8;
inline constexpr uint32_t kOffBackingFileSize = 16;
inline constexpr uint32_t kOffClusterBits = 20;
inline constexpr uint32_t kOffSize = 24;
inline constexpr uint32_t kOffCryptMethod = 32;
inline constexpr uint32_t kOffL1Size = 36;
inline constexpr uint32_t kOffL1TableOffset = 40;
inline constexpr uint32_t kOffRefcountTableOffset = 48;
inline constexpr uint32_t kOffRefcountTableClusters = 56;
inline constexpr uint32_t kOffNbSnapshots = 60;
inline constexpr uint32_t kOffSnapshotsOffset = 64;
inline constexpr uint32_t kOffIncompatibleFeatures = 72;
inline constexpr uint32_t kOffCompatibleFeatures = 80;
inline constexpr uint32_t kOffAutoclearFeatures = 88;
inline constexpr uint32_t kOffRefcountOrder = 96;
inline constexpr uint32_t kOffHeaderLength = 100;
inline constexpr uint32_t kOffCompressionType = 104;

// §4.2 Incompatible feature bits.
inline constexpr uint64_t kIncompatDirty = uint64_t{1} << 0;
inline constexpr uint64_t kIncompatCorrupt = uint64_t{1} << 1;
inline constexpr uint64_t kIncompatDataFile = uint64_t{1} << 2;
inline constexpr uint64_t kIncompatCompressionType = uint64_t{1} << 3;
inline constexpr uint64_t kIncompatExtendedL2 = uint64_t{1} << 4;
inline constexpr uint64_t kIncompatKnown = (uint64_t{1} << 5) - 1;
// §4.2 Autoclear feature bits.
inline constexpr uint64_t kAutoclearBitmaps = uint64_t{1} << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = uint64_t{1} << 1;

// §4.2 compression_type values.
inline constexpr uint8_t kCompressionZlib = 0;
inline constexpr uint8_t kCompressionZstd = 1;

// §4.3 Header extension types.
inline constexpr uint32_t kExtEnd = 0x00000000;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCryptoHeader = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;
inline constexpr uint32_t kFeatureTableEntryBytes = 48;
inline constexpr uint32_t kBitmapsExtensionBytes = 24;

}  // namespace vmseal::disk_format::spec

#endif  // VMSEAL_DISK_FORMAT_DISK_FORMAT_SPEC_H_
