// The inspector's rules on crafted images: one test per rule of
// docs/format/disk-format.md, each checking the refusal reason, plus
// truncation and mutation sweeps for hostile input.
#include "disk_format/disk_format.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "disk_format/disk_format_spec.h"
#include "testing/test_util.h"

namespace vmseal::disk_format {
namespace {

namespace s = spec;

void PutBe32(std::vector<uint8_t>& b, size_t at, uint32_t v) {
  for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
void PutBe64(std::vector<uint8_t>& b, size_t at, uint64_t v) {
  PutBe32(b, at, static_cast<uint32_t>(v >> 32));
  PutBe32(b, at + 4, static_cast<uint32_t>(v));
}

// A file of `size` bytes whose first bytes are `data` and the rest zeros,
// counting the bytes read (the inspector must never read a whole disk).
class SparseFile final : public RandomAccessFile {
 public:
  SparseFile(std::vector<uint8_t> data, uint64_t size) : data_(std::move(data)), size_(size) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= size_) return size_t{0};
    const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), size_ - offset));
    for (size_t i = 0; i < n; ++i) {
      out[i] = offset + i < data_.size() ? data_[offset + i] : 0;
    }
    bytes_read_ += n;
    return n;
  }
  StatusOr<uint64_t> Size() const override { return size_; }
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  std::vector<uint8_t> data_;
  uint64_t size_;
  mutable uint64_t bytes_read_ = 0;
};

class FailingFile final : public RandomAccessFile {
 public:
  StatusOr<size_t> Read(uint64_t, std::span<uint8_t>) const override {
    return DataLossError("read disk.img: input/output error");
  }
  StatusOr<uint64_t> Size() const override { return uint64_t{1} << 20; }
};

// A valid, empty qcow2 laid out as qemu-img lays it out: header and
// extensions in cluster 0, refcount table in cluster 1, L1 table in
// cluster 3 (cluster 2 is the first refcount block).
struct Qcow2Builder {
  uint32_t version = 3;
  uint32_t cluster_bits = 16;
  uint64_t size = 64 << 20;
  uint64_t incompatible = 0;
  uint64_t autoclear = 0;
  uint32_t header_length = 112;
  uint8_t compression_type = 0;
  uint32_t refcount_order = 4;
  uint32_t crypt_method = 0;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  // Extensions after the header: {type, data}; the end marker is added.
  std::vector<std::pair<uint32_t, std::string>> extensions;
  bool end_marker = true;

  uint64_t cluster() const { return uint64_t{1} << cluster_bits; }
  uint32_t L1Entries() const {
    const uint64_t per = cluster() * (cluster() / ((incompatible & s::kIncompatExtendedL2) ? 16 : 8));
    return static_cast<uint32_t>((size + per - 1) / per);
  }
  uint64_t FileSize() const { return 3 * cluster() + std::max<uint64_t>(cluster(), L1Entries() * 8); }

  // The first cluster (everything else of the file is zeros).
  std::vector<uint8_t> Header() const {
    std::vector<uint8_t> b(cluster(), 0);
    std::memcpy(b.data(), s::kQcowMagic, 4);
    PutBe32(b, s::kOffVersion, version);
    PutBe64(b, s::kOffBackingFileOffset, backing_file_offset);
    PutBe32(b, s::kOffBackingFileSize, backing_file_size);
    PutBe32(b, s::kOffClusterBits, cluster_bits);
    PutBe64(b, s::kOffSize, size);
    PutBe32(b, s::kOffCryptMethod, crypt_method);
    PutBe32(b, s::kOffL1Size, L1Entries());
    PutBe64(b, s::kOffL1TableOffset, 3 * cluster());
    PutBe64(b, s::kOffRefcountTableOffset, cluster());
    PutBe32(b, s::kOffRefcountTableClusters, 1);
    size_t off = s::kV2HeaderBytes;
    if (version >= 3) {
      PutBe64(b, s::kOffIncompatibleFeatures, incompatible);
      PutBe64(b, s::kOffAutoclearFeatures, autoclear);
      PutBe32(b, s::kOffRefcountOrder, refcount_order);
      PutBe32(b, s::kOffHeaderLength, header_length);
      if (header_length > s::kOffCompressionType && b.size() > s::kOffCompressionType) {
        b[s::kOffCompressionType] = compression_type;
      }
      off = header_length;
    }
    for (const auto& [type, data] : extensions) {
      if (off + 8 + data.size() > b.size()) b.resize(off + 8 + data.size() + 8);
      PutBe32(b, off, type);
      PutBe32(b, off + 4, static_cast<uint32_t>(data.size()));
      std::memcpy(b.data() + off + 8, data.data(), data.size());
      off += 8 + (data.size() + 7) / 8 * 8;
    }
    if (!end_marker && off + 8 <= b.size()) {
      // Fill the rest of the area with a non-end type so no marker is found.
      PutBe32(b, off, 0x12345678);
      PutBe32(b, off + 4, static_cast<uint32_t>(b.size() - off - 8 + 8));
    }
    return b;
  }

  SparseFile File() const { return SparseFile(Header(), FileSize()); }
};

StatusOr<DiskInfo> InspectBuilt(const Qcow2Builder& b) { return Inspect(b.File()); }

// Expects a refusal whose message is exactly "unsafe_disk_format: <reason>"
// when `exact`, or contains `reason` otherwise.
#define EXPECT_REFUSED(result, reason)                                             \
  do {                                                                             \
    auto r_ = (result);                                                            \
    ASSERT_FALSE(r_.ok());                                                         \
    EXPECT_EQ(r_.status().code(), StatusCode::kInvalidArgument);                   \
    EXPECT_TRUE(r_.status().message().starts_with(kRefusalPrefix))                 \
        << r_.status().message();                                                  \
    EXPECT_NE(r_.status().message().find(reason), std::string::npos)               \
        << r_.status().message();                                                  \
  } while (0)

TEST(DiskFormatTest, AcceptsASelfContainedQcow2V3) {
  Qcow2Builder b;
  auto info = InspectBuilt(b);
  ASSERT_OK(info);
  EXPECT_EQ(info->format, Format::kQcow2);
  EXPECT_EQ(info->virtual_size, 64u << 20);
  EXPECT_EQ(info->file_size, b.FileSize());
  EXPECT_EQ(info->qcow2_version, 3u);
  EXPECT_STREQ(FormatName(info->format), "qcow2");
}

TEST(DiskFormatTest, AcceptsAQcow2V2) {
  Qcow2Builder b;
  b.version = 2;
  auto info = InspectBuilt(b);
  ASSERT_OK(info);
  EXPECT_EQ(info->qcow2_version, 2u);
}

TEST(DiskFormatTest, AcceptsRawAndReportsItsSize) {
  std::vector<uint8_t> disk(3 * 512 + 7, 0xab);
  auto info = Inspect(disk);
  ASSERT_OK(info);
  EXPECT_EQ(info->format, Format::kRaw);
  EXPECT_EQ(info->virtual_size, disk.size());
  EXPECT_EQ(info->file_size, disk.size());
  EXPECT_STREQ(FormatName(info->format), "raw");
}

TEST(DiskFormatTest, RefusesAnEmptyImage) {
  EXPECT_REFUSED(Inspect(std::span<const uint8_t>()), "image is empty");
}

TEST(DiskFormatTest, RefusesABackingFile) {
  Qcow2Builder b;
  b.backing_file_offset = 0x200;
  b.backing_file_size = 11;
  EXPECT_EQ(InspectBuilt(b).status().message(),
            "unsafe_disk_format: qcow2 names a backing file");
}

TEST(DiskFormatTest, RefusesABackingFileSizeWithoutOffset) {
  Qcow2Builder b;
  b.backing_file_size = 11;
  EXPECT_REFUSED(InspectBuilt(b), "qcow2 names a backing file");
}

TEST(DiskFormatTest, RefusesABackingFormatExtension) {
  Qcow2Builder b;
  b.extensions = {{s::kExtBackingFormat, "raw"}};
  EXPECT_REFUSED(InspectBuilt(b), "backing file format");
}

TEST(DiskFormatTest, RefusesTheExternalDataFileBit) {
  Qcow2Builder b;
  b.incompatible = s::kIncompatDataFile;
  EXPECT_REFUSED(InspectBuilt(b), "external data file (incompatible feature bit 2)");
}

TEST(DiskFormatTest, RefusesADataFileExtensionEvenWithoutTheBit) {
  Qcow2Builder b;
  b.extensions = {{s::kExtDataFile, "/etc/shadow"}};
  EXPECT_REFUSED(InspectBuilt(b), "qcow2 names an external data file");
}

TEST(DiskFormatTest, RefusesTheRawExternalDataBit) {
  Qcow2Builder b;
  b.autoclear = s::kAutoclearDataFileRaw;
  EXPECT_REFUSED(InspectBuilt(b), "external data file (raw external data bit)");
}

TEST(DiskFormatTest, RefusesUnknownIncompatibleFeatureBits) {
  Qcow2Builder b;
  b.incompatible = uint64_t{1} << 5;
  EXPECT_EQ(InspectBuilt(b).status().message(),
            "unsafe_disk_format: qcow2 has unknown incompatible feature bits 0x20");
  b.incompatible = (uint64_t{1} << 63) | s::kIncompatDirty;
  EXPECT_REFUSED(InspectBuilt(b), "unknown incompatible feature bits 0x8000000000000000");
}

TEST(DiskFormatTest, RefusesTheCorruptBit) {
  Qcow2Builder b;
  b.incompatible = s::kIncompatCorrupt;
  EXPECT_REFUSED(InspectBuilt(b), "qcow2 is marked corrupt");
}

TEST(DiskFormatTest, AcceptsTheDirtyBit) {
  Qcow2Builder b;
  b.incompatible = s::kIncompatDirty;
  EXPECT_OK(InspectBuilt(b));
}

TEST(DiskFormatTest, RefusesEncryption) {
  for (uint32_t method : {1u, 2u, 7u}) {
    SCOPED_TRACE(method);
    Qcow2Builder b;
    b.crypt_method = method;
    EXPECT_REFUSED(InspectBuilt(b), "qcow2 is encrypted (crypt_method " +
                                        std::to_string(method) + ")");
  }
}

TEST(DiskFormatTest, RefusesAnEncryptionHeaderExtension) {
  Qcow2Builder b;
  b.extensions = {{s::kExtCryptoHeader, std::string(16, '\0')}};
  EXPECT_REFUSED(InspectBuilt(b), "encryption header");
}

TEST(DiskFormatTest, ClusterBitsMustBe9To21) {
  for (uint32_t bits : {9u, 12u, 21u}) {
    SCOPED_TRACE(bits);
    Qcow2Builder b;
    b.cluster_bits = bits;
    b.header_length = 104;
    EXPECT_OK(InspectBuilt(b));
  }
  for (uint32_t bits : {0u, 8u, 22u, 63u, 64u, 0xffffffffu}) {
    SCOPED_TRACE(bits);
    Qcow2Builder b;
    auto header = b.Header();
    PutBe32(header, s::kOffClusterBits, bits);
    EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "cluster_bits");
  }
}

TEST(DiskFormatTest, HeaderLengthMustBeAMultipleOf8From104ToTheCluster) {
  for (uint32_t length : {0u, 72u, 100u, 108u, 113u, 65544u}) {
    SCOPED_TRACE(length);
    Qcow2Builder b;
    b.header_length = length;
    EXPECT_REFUSED(InspectBuilt(b), "header_length");
  }
  Qcow2Builder b;
  b.header_length = 104;
  EXPECT_OK(InspectBuilt(b));
}

TEST(DiskFormatTest, RefcountOrderAbove6IsRefused) {
  Qcow2Builder b;
  b.refcount_order = 6;
  EXPECT_OK(InspectBuilt(b));
  b.refcount_order = 7;
  EXPECT_REFUSED(InspectBuilt(b), "refcount_order 7");
}

TEST(DiskFormatTest, ZstdCompressionIsAcceptedWhenBitAndFieldAgree) {
  Qcow2Builder b;
  b.incompatible = s::kIncompatCompressionType;
  b.compression_type = s::kCompressionZstd;
  EXPECT_OK(InspectBuilt(b));
  b.compression_type = s::kCompressionZlib;
  EXPECT_REFUSED(InspectBuilt(b), "disagree");
  b.incompatible = 0;
  b.compression_type = s::kCompressionZstd;
  EXPECT_REFUSED(InspectBuilt(b), "disagree");
  b.incompatible = s::kIncompatCompressionType;
  b.compression_type = 2;
  EXPECT_REFUSED(InspectBuilt(b), "compression_type 2 is unknown");
}

TEST(DiskFormatTest, ExtendedL2NeedsClustersOfAtLeast16KiB) {
  Qcow2Builder b;
  b.incompatible = s::kIncompatExtendedL2;
  EXPECT_OK(InspectBuilt(b));
  b.cluster_bits = 13;
  EXPECT_REFUSED(InspectBuilt(b), "extended L2");
}

TEST(DiskFormatTest, VirtualSizeIsAtMost64TiB) {
  Qcow2Builder b;
  b.size = s::kMaxVirtualSizeBytes;
  auto info = InspectBuilt(b);
  ASSERT_OK(info);
  EXPECT_EQ(info->virtual_size, s::kMaxVirtualSizeBytes);
  b.size = s::kMaxVirtualSizeBytes + 1;
  EXPECT_REFUSED(InspectBuilt(b), "above 64 TiB");
  b.size = ~uint64_t{0};
  EXPECT_REFUSED(InspectBuilt(b), "above 64 TiB");
}

TEST(DiskFormatTest, RawAbove64TiBIsRefused) {
  EXPECT_REFUSED(Inspect(SparseFile({}, s::kMaxVirtualSizeBytes + 512)), "above 64 TiB");
}

TEST(DiskFormatTest, L1TableMustMapTheVirtualSize) {
  Qcow2Builder b;
  b.size = uint64_t{4} << 30;  // 8 L1 entries of 512 MiB
  auto header = b.Header();
  PutBe32(header, s::kOffL1Size, 7);
  EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "cannot map the virtual size");
}

TEST(DiskFormatTest, L1TableAbove32MiBIsRefused) {
  Qcow2Builder b;
  auto header = b.Header();
  PutBe32(header, s::kOffL1Size, (32u << 20) / 8 + 1);
  EXPECT_REFUSED(Inspect(SparseFile(header, uint64_t{1} << 30)), "too large");
}

TEST(DiskFormatTest, TableOffsetsMustBeClusterAlignedOutsideTheHeader) {
  struct Case {
    uint32_t field;
    uint64_t value;
    const char* reason;
  };
  for (const Case& c : {Case{s::kOffL1TableOffset, 0, "L1 table offset 0x0"},
                        Case{s::kOffL1TableOffset, 0x30001, "L1 table offset 0x30001"},
                        Case{s::kOffL1TableOffset, ~uint64_t{0} << 16, "L1 table offset"},
                        Case{s::kOffRefcountTableOffset, 0, "refcount table offset"},
                        Case{s::kOffRefcountTableOffset, 0x10200, "refcount table offset"},
                        Case{s::kOffRefcountTableOffset, uint64_t{1} << 56,
                             "refcount table offset"}}) {
    SCOPED_TRACE(c.reason);
    Qcow2Builder b;
    auto header = b.Header();
    PutBe64(header, c.field, c.value);
    EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), c.reason);
  }
}

TEST(DiskFormatTest, TablesMustLieInsideTheFile) {
  Qcow2Builder b;
  auto header = b.Header();
  EXPECT_REFUSED(Inspect(SparseFile(header, 3 * b.cluster() + 4)), "L1 table lies past");
  PutBe64(header, s::kOffRefcountTableOffset, 16 * b.cluster());
  EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "refcount table lies past");
}

TEST(DiskFormatTest, RefcountTableMustBeNonEmptyAndAtMost8MiB) {
  Qcow2Builder b;
  auto header = b.Header();
  PutBe32(header, s::kOffRefcountTableClusters, 0);
  EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "refcount table of 0 clusters");
  PutBe32(header, s::kOffRefcountTableClusters, 129);  // 129 x 64 KiB
  EXPECT_REFUSED(Inspect(SparseFile(header, uint64_t{1} << 30)), "refcount table of 129");
}

TEST(DiskFormatTest, SnapshotCountAndOffsetAreChecked) {
  Qcow2Builder b;
  auto header = b.Header();
  PutBe32(header, s::kOffNbSnapshots, 65537);
  PutBe64(header, s::kOffSnapshotsOffset, 0x40000);
  EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "65537 snapshots");
  PutBe32(header, s::kOffNbSnapshots, 1);
  PutBe64(header, s::kOffSnapshotsOffset, 0x40010);
  EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "snapshot table offset");
  PutBe64(header, s::kOffSnapshotsOffset, 0x40000);
  EXPECT_OK(Inspect(SparseFile(header, b.FileSize())));
}

TEST(DiskFormatTest, QcowVersion1AndUnknownVersionsAreRefused) {
  Qcow2Builder b;
  auto header = b.Header();
  PutBe32(header, s::kOffVersion, 1);
  EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())), "qcow version 1");
  for (uint32_t v : {0u, 4u, 0xffffffffu}) {
    PutBe32(header, s::kOffVersion, v);
    EXPECT_REFUSED(Inspect(SparseFile(header, b.FileSize())),
                   "qcow2 version " + std::to_string(v) + " is not 2 or 3");
  }
}

TEST(DiskFormatTest, UnknownHeaderExtensionsAreAcceptedAndKnownOnesChecked) {
  Qcow2Builder b;
  b.extensions = {{0x0badc0de, "ignored by qemu"},
                  {s::kExtFeatureTable, std::string(3 * 48, 'x')},
                  {s::kExtBitmaps, std::string(24, '\0')}};
  EXPECT_OK(InspectBuilt(b));
  b.extensions = {{s::kExtFeatureTable, std::string(47, 'x')}};
  EXPECT_REFUSED(InspectBuilt(b), "feature name table length 47");
  b.extensions = {{s::kExtFeatureTable, std::string(48, 'x')},
                  {s::kExtFeatureTable, std::string(48, 'x')}};
  EXPECT_REFUSED(InspectBuilt(b), "repeats the feature name table");
  b.extensions = {{s::kExtBitmaps, std::string(16, '\0')}};
  EXPECT_REFUSED(InspectBuilt(b), "bitmaps extension length 16");
}

TEST(DiskFormatTest, HeaderExtensionsMustEndInsideTheFirstCluster) {
  Qcow2Builder b;
  b.cluster_bits = 9;
  b.extensions = {{0x0badc0de, std::string(512, 'x')}};
  EXPECT_REFUSED(InspectBuilt(b), "runs past the first cluster");
  // A length field near 2^32 must not wrap.
  Qcow2Builder c;
  auto header = c.Header();
  PutBe32(header, 112, 0x0badc0de);
  PutBe32(header, 116, 0xfffffffc);
  EXPECT_REFUSED(Inspect(SparseFile(header, c.FileSize())), "runs past the first cluster");
}

TEST(DiskFormatTest, HeaderExtensionsMustEndInsideTheFile) {
  Qcow2Builder b;
  b.extensions = {{0x0badc0de, std::string(100, 'x')}};
  auto header = b.Header();
  header.resize(200);  // the extension's data is cut
  EXPECT_REFUSED(Inspect(header), "runs past the end of the file");
}

TEST(DiskFormatTest, TruncatedHeadersAreRefusedNotOverread) {
  Qcow2Builder b;
  const std::vector<uint8_t> header = b.Header();
  for (size_t n = 1; n <= 200; ++n) {
    SCOPED_TRACE(n);
    // A fresh copy of exactly n bytes, so ASan sees any read past it.
    std::vector<uint8_t> prefix(header.begin(), header.begin() + n);
    auto r = Inspect(prefix);
    if (n < 4) {
      ASSERT_OK(r);  // too short to carry any magic: raw
      continue;
    }
    ASSERT_FALSE(r.ok());
    EXPECT_TRUE(r.status().message().starts_with(kRefusalPrefix)) << r.status().message();
  }
}

// An accumulated randomized test: random byte changes to a valid header are
// either accepted or refused with the prefix; the inspector never crashes or
// reads outside its buffer, and never accepts a header naming external
// files.
TEST(DiskFormatTest, RandomMutationsAreAcceptedOrRefusedCleanly) {
  std::mt19937_64 rng(20240611);
  Qcow2Builder b;
  b.extensions = {{s::kExtFeatureTable, std::string(48, 'f')}};
  const std::vector<uint8_t> header = b.Header();
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> m(header.begin(), header.begin() + 4096);
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) m[8 + rng() % 200] = static_cast<uint8_t>(rng());
    m.resize(4096 - rng() % 2048);
    SparseFile file(m, b.FileSize());
    auto r = Inspect(file);
    if (r.ok()) {
      ++accepted;
      ASSERT_EQ(r->format, Format::kQcow2);
      // Accepted: no backing file, no data file, no encryption.
      ASSERT_EQ(m[8] | m[9] | m[10] | m[11] | m[12] | m[13] | m[14] | m[15], 0);
      ASSERT_EQ(m[79] & 0x06, 0);
      ASSERT_EQ(m[35], 0);
    } else {
      ASSERT_EQ(r.status().code(), StatusCode::kInvalidArgument);
      ASSERT_TRUE(r.status().message().starts_with(kRefusalPrefix)) << r.status().message();
    }
    ASSERT_LE(file.bytes_read(), b.cluster() + 4096);
  }
  EXPECT_GT(accepted, 0);
}

TEST(DiskFormatTest, ReadsOnlyTheHeadOfALargeImage) {
  Qcow2Builder b;
  b.size = uint64_t{1} << 40;
  SparseFile qcow(b.Header(), uint64_t{1} << 39);
  ASSERT_OK(Inspect(qcow));
  EXPECT_LE(qcow.bytes_read(), b.cluster() + 4096);
  SparseFile raw({}, uint64_t{1} << 40);
  ASSERT_OK(Inspect(raw));
  EXPECT_LE(raw.bytes_read(), 4096u + 512u);
}

TEST(DiskFormatTest, ReadErrorsKeepTheirOwnStatus) {
  auto r = Inspect(FailingFile());
  EXPECT_STATUS(r, StatusCode::kDataLoss, "input/output error");
  EXPECT_FALSE(r.status().message().starts_with(kRefusalPrefix));
}

// §3 "Raw" images that are another format qemu knows.
struct Foreign {
  const char* name;
  bool at_end;
  uint64_t offset;
  std::string magic;
  const char* reason;
};

class ForeignFormatTest : public ::testing::TestWithParam<Foreign> {};

TEST_P(ForeignFormatTest, IsRefusedByName) {
  const Foreign& f = GetParam();
  std::vector<uint8_t> disk(64 * 1024, 0x11);
  const uint64_t at = f.at_end ? disk.size() - f.offset : f.offset;
  std::memcpy(disk.data() + at, f.magic.data(), f.magic.size());
  EXPECT_REFUSED(Inspect(disk), std::string("image is ") + f.reason + ", not raw or qcow2");
}

INSTANTIATE_TEST_SUITE_P(
    Magics, ForeignFormatTest,
    ::testing::Values(
        Foreign{"qed", false, 0, std::string("QED\0", 4), "a QED image"},
        Foreign{"vmdk_sparse", false, 0, "KDMV", "a VMDK sparse extent"},
        Foreign{"vmdk_cowd", false, 0, "COWD", "a VMDK ESX sparse extent"},
        Foreign{"vmdk_descriptor", false, 0,
                "# Disk DescriptorFile\nRW 8 FLAT \"/etc/shadow\" 0\n", "a VMDK descriptor"},
        Foreign{"vhdx", false, 0, "vhdxfile", "a VHDX image"},
        Foreign{"vhd_header", false, 0, "conectix", "a VHD image (header copy of the footer)"},
        Foreign{"vhd_footer", true, 512, "conectix", "a VHD image (footer)"},
        Foreign{"vdi", false, 0x40, "\x7f\x10\xda\xbe", "a VDI image"},
        Foreign{"vdi_text", false, 0, "<<< Oracle VM VirtualBox Disk Image >>>", "a VDI image"},
        Foreign{"luks", false, 0, "LUKS\xba\xbe", "a LUKS volume"},
        Foreign{"parallels", false, 0, "WithoutFreeSpace", "a Parallels image"},
        Foreign{"parallels_ext", false, 0, "WithouFreSpacExt", "a Parallels image"},
        Foreign{"dmg", true, 512, "koly", "a DMG image"},
        Foreign{"cloop", false, 0, "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$IMAGE\n",
                "a cloop image"},
        Foreign{"bochs", false, 0, "Bochs Virtual HD Image", "a Bochs image"}),
    [](const ::testing::TestParamInfo<Foreign>& i) { return std::string(i.param.name); });

TEST(DiskFormatTest, MagicsElsewhereInARawImageAreData) {
  std::vector<uint8_t> disk(64 * 1024, 0);
  for (std::string_view m : {"conectix", "KDMV", "vhdxfile", "koly", "QFI\xfb"}) {
    std::memcpy(disk.data() + 4096 + 512 * (m.size() % 7), m.data(), m.size());
  }
  std::memcpy(disk.data() + disk.size() - 1024, "conectix", 8);
  std::memcpy(disk.data() + 1, "KDMV", 4);
  auto info = Inspect(disk);
  ASSERT_OK(info);
  EXPECT_EQ(info->format, Format::kRaw);
}

}  // namespace
}  // namespace vmseal::disk_format
