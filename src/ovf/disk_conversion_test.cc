// Seal converts the disks exporters write (VMDK, VHD, VHDX) into qcow2 with
// qemu-img (docs/format/package.md §2.3). Every image here is made by
// qemu-img on this machine from random data; the unsealed qcow2 must hold
// the same guest-visible bytes (qemu-img compare), the sealed descriptor
// must validate and name qcow2, and images that would make qemu-img read
// files outside their folder, or a parent disk, are refused before a byte is
// converted.
#include "ovf/disk_conversion.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "ovf/ovf_test_helpers.h"
#include "ovf/package.h"
#include "ovf/package_format.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

namespace fs = std::filesystem;
using ::vmseal::ovf::testing::RawMember;
using ::vmseal::ovf::testing::RawTar;
using ::vmseal::ovf::testing::TestKey;
using ::vmseal::ovf::testing::ValidatesAgainstSchema;
using ::vmseal::testing::ListDir;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

std::string RandomBytes(size_t n) {
  std::string out(n, '\0');
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<char>(std::rand() & 0xff);
  return out;
}

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  for (size_t p = s->find(from); p != std::string::npos; p = s->find(from, p + to.size())) {
    s->replace(p, from.size(), to);
  }
}

class DiskConversionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    raw_ = dir_.File("source.raw");
    // 3 MiB: random data with a hole of zeros in the middle.
    std::string data = RandomBytes(1 << 20) + std::string(1 << 20, '\0') +
                       RandomBytes(1 << 20);
    WriteFileOrDie(raw_, data);
  }
  // qemu-img convert of the raw source into `name` with `args`.
  std::string Make(const std::string& name, std::vector<std::string> args) {
    std::string out = dir_.File(name);
    std::vector<std::string> cmd = {"qemu-img", "convert", "-f", "raw"};
    cmd.insert(cmd.end(), args.begin(), args.end());
    cmd.push_back(raw_);
    cmd.push_back(out);
    std::string log;
    EXPECT_EQ(RunCommand(cmd, &log), 0) << log;
    return out;
  }
  SealOptions Options(std::vector<std::string> inputs) {
    SealOptions o;
    o.inputs = std::move(inputs);
    o.recipient_pem = TestKey().public_pem;
    o.image_id = "img-conv";
    o.tenant = "acme";
    return o;
  }
  // Seals `input`, checks the sealed descriptor, unseals into a fresh
  // directory and returns it.
  std::string SealAndUnseal(const std::string& input, const std::string& stem) {
    const std::string ova = dir_.File(stem + ".ova");
    EXPECT_OK(SealPackage(Env::Default(), Options({input}), ova));
    auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
    EXPECT_OK(p);
    if (!p.ok()) return "";
    EXPECT_EQ((*p)->files().size(), 1u);
    if ((*p)->files().empty()) return "";
    EXPECT_EQ((*p)->files()[0].disk_format_uri, kQcow2FormatUri);
    const std::string plain = dir_.File(stem + "-plain");
    EXPECT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, plain));
    EXPECT_TRUE(ValidatesAgainstSchema(plain + "/" + stem + ".ovf"));
    // Nothing but the output is left beside it (no staging directory).
    for (const std::string& n : ListDir(dir_.path())) {
      EXPECT_EQ(n.find(".stage-"), std::string::npos) << n;
    }
    return plain;
  }
  // The guest sees the raw source's bytes in `qcow2` (sizes may differ by
  // zeros at the end: VHD rounds up to its geometry).
  ::testing::AssertionResult SameGuestBytes(const std::string& qcow2) {
    std::string log;
    int rc = RunCommand({"qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw_, qcow2}, &log);
    if (rc == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "qemu-img compare: " << rc << " " << log;
  }
  void ExpectSealFails(const std::string& input, StatusCode code, const std::string& substr) {
    auto before = ListDir(dir_.path());
    EXPECT_STATUS(SealPackage(Env::Default(), Options({input}), dir_.File("refused.ova")), code,
                  substr);
    EXPECT_EQ(ListDir(dir_.path()), before);
  }

  TempDir dir_;
  std::string raw_;
};

struct Case {
  const char* name;
  const char* file;
  std::vector<std::string> args;
  SourceDiskFormat format;
};

TEST_F(DiskConversionTest, EveryExporterDiskFormatConvertsToTheSameGuestBytes) {
  const std::vector<Case> cases = {
      {"vmdk streamOptimized (VMware ovftool, VirtualBox)", "stream.vmdk",
       {"-O", "vmdk", "-o", "subformat=streamOptimized"}, SourceDiskFormat::kVmdk},
      {"vmdk monolithicSparse (VMware Workstation)", "sparse.vmdk",
       {"-O", "vmdk", "-o", "subformat=monolithicSparse"}, SourceDiskFormat::kVmdk},
      {"vmdk monolithicFlat (descriptor + extent)", "flat.vmdk",
       {"-O", "vmdk", "-o", "subformat=monolithicFlat"}, SourceDiskFormat::kVmdkDescriptor},
      {"vmdk twoGbMaxExtentSparse", "split.vmdk",
       {"-O", "vmdk", "-o", "subformat=twoGbMaxExtentSparse"}, SourceDiskFormat::kVmdkDescriptor},
      {"vhd dynamic (Hyper-V, Azure tools)", "dynamic.vhd", {"-O", "vpc"}, SourceDiskFormat::kVhd},
      {"vhd fixed (Azure)", "fixed.vhd", {"-O", "vpc", "-o", "subformat=fixed"},
       SourceDiskFormat::kVhd},
      {"vhdx (Hyper-V)", "disk.vhdx", {"-O", "vhdx"}, SourceDiskFormat::kVhdx},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string image = Make(c.file, c.args);
    auto file = Env::Default()->NewRandomAccessFile(image);
    ASSERT_OK(file);
    auto detected = DetectSourceDiskFormat(**file);
    ASSERT_OK(detected);
    EXPECT_EQ(*detected, c.format);
    const std::string plain = SealAndUnseal(image, "conv" + std::to_string(++n));
    EXPECT_TRUE(SameGuestBytes(plain + "/disk1.qcow2"));
  }
}

TEST_F(DiskConversionTest, RawAndQcow2AreSealedAsTheyAre) {
  auto raw = Env::Default()->NewRandomAccessFile(raw_);
  ASSERT_OK(raw);
  EXPECT_EQ(*DetectSourceDiskFormat(**raw), SourceDiskFormat::kRaw);
  const std::string qcow2 = Make("disk.qcow2", {"-O", "qcow2"});
  const std::string plain = SealAndUnseal(qcow2, "q");
  EXPECT_EQ(ReadFileOrDie(plain + "/disk1.qcow2"), ReadFileOrDie(qcow2));
}

// A VirtualBox-style OVA whose disk is a real streamOptimized VMDK: the
// sealed package carries "vbox-disk001.qcow2" and a Disk that says qcow2,
// and still validates against DSP8023.
TEST_F(DiskConversionTest, OvaWithAStreamOptimizedVmdkIsSealedAsQcow2) {
  const std::string vmdk = Make("vbox-disk001.vmdk", {"-O", "vmdk", "-o",
                                                      "subformat=streamOptimized"});
  std::string text =
      ReadFileOrDie(vmseal::testing::SourceDir() + "/tests/testdata/ovf/vbox-1.0.ovf");
  const std::string ova = dir_.File("vbox.ova");
  WriteFileOrDie(ova, RawTar({{"vbox.ovf", text}, {"vbox-disk001.vmdk", ReadFileOrDie(vmdk)}}));
  const std::string plain = SealAndUnseal(ova, "vbox-sealed");
  EXPECT_TRUE(SameGuestBytes(plain + "/vbox-disk001.qcow2"));
  EXPECT_FALSE(fs::exists(plain + "/vbox-disk001.vmdk"));
  const std::string sealed_text = ReadFileOrDie(plain + "/vbox-sealed.ovf");
  EXPECT_NE(sealed_text.find(std::string(kQcow2FormatUri)), std::string::npos);
  EXPECT_EQ(sealed_text.find("vmdk.html"), std::string::npos);
  EXPECT_NE(sealed_text.find("ovf:capacity=\"3145728\""), std::string::npos) << sealed_text;
}

TEST_F(DiskConversionTest, VmdkWithAParentIsRefused) {
  const std::string base = Make("base.vmdk", {"-O", "vmdk"});
  const std::string child = dir_.File("child.vmdk");
  std::string log;
  ASSERT_EQ(RunCommand({"qemu-img", "create", "-q", "-f", "vmdk", "-b", base, "-F", "vmdk", child},
                       &log),
            0)
      << log;
  ExpectSealFails(child, StatusCode::kInvalidArgument, "child.vmdk: has a parent");
}

TEST_F(DiskConversionTest, VmdkDescriptorNamingAHostFileIsRefusedBeforeQemuImgRuns) {
  // A monolithicFlat descriptor whose extent is a host file: converting it
  // would seal that file into the image.
  for (const std::string& extent : {std::string("/etc/hostname"), std::string("../x.raw"),
                                    std::string("sub/extent.raw")}) {
    SCOPED_TRACE(extent);
    const std::string d = dir_.File("evil.vmdk");
    WriteFileOrDie(d, "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
                      "createType=\"monolithicFlat\"\nRW 16 FLAT \"" +
                          extent + "\" 0\n");
    ExpectSealFails(d, StatusCode::kInvalidArgument,
                    "evil.vmdk: names the file \"" + extent + "\", which is not a plain file name");
    fs::remove(d);
  }
}

TEST_F(DiskConversionTest, VmdkDescriptorWhoseExtentIsALinkIsRefused) {
  const std::string d = dir_.File("linked.vmdk");
  fs::create_symlink("/etc/hostname", dir_.File("linked-flat.vmdk"));
  WriteFileOrDie(d, "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
                    "createType=\"monolithicFlat\"\nRW 16 FLAT \"linked-flat.vmdk\" 0\n");
  ExpectSealFails(d, StatusCode::kInvalidArgument,
                  "its extent \"linked-flat.vmdk\" is not a regular file");
}

TEST_F(DiskConversionTest, VmdkDescriptorWithAParentHintIsRefused) {
  const std::string flat = Make("delta.vmdk", {"-O", "vmdk", "-o", "subformat=monolithicFlat"});
  std::string text = ReadFileOrDie(flat);
  ReplaceAll(&text, "parentCID=ffffffff",
                              "parentCID=12345678\nparentFileNameHint=\"/etc/base.vmdk\"");
  WriteFileOrDie(flat, text);
  ExpectSealFails(flat, StatusCode::kInvalidArgument, "delta.vmdk: is a delta disk");
}

TEST_F(DiskConversionTest, FlatVmdkInsideAPackageIsRefusedWithTheReason) {
  const std::string flat = Make("vbox-disk001.vmdk", {"-O", "vmdk", "-o",
                                                      "subformat=monolithicFlat"});
  std::string text =
      ReadFileOrDie(vmseal::testing::SourceDir() + "/tests/testdata/ovf/vbox-1.0.ovf");
  const std::string ova = dir_.File("flat.ova");
  WriteFileOrDie(ova, RawTar({{"vbox.ovf", text}, {"vbox-disk001.vmdk", ReadFileOrDie(flat)}}));
  ExpectSealFails(ova, StatusCode::kUnimplemented,
                  "vbox-disk001.vmdk is a VMDK text descriptor (monolithicFlat)");
}

TEST_F(DiskConversionTest, DeclaredVmdkThatIsRawIsRefused) {
  std::string text =
      ReadFileOrDie(vmseal::testing::SourceDir() + "/tests/testdata/ovf/vbox-1.0.ovf");
  const std::string ova = dir_.File("liar.ova");
  WriteFileOrDie(ova, RawTar({{"vbox.ovf", text}, {"vbox-disk001.vmdk", ReadFileOrDie(raw_)}}));
  ExpectSealFails(ova, StatusCode::kInvalidArgument,
                  "disk vbox-disk001.vmdk: ovf:format \"http://www.vmware.com/interfaces/"
                  "specifications/vmdk.html#streamOptimized\" names vmdk but the file is raw");
}

TEST_F(DiskConversionTest, VmdkQemuImgCannotReadIsRefusedWithItsMessage) {
  const std::string bad = dir_.File("broken.vmdk");
  WriteFileOrDie(bad, "KDMV" + RandomBytes(4096));
  ExpectSealFails(bad, StatusCode::kInvalidArgument,
                  "disk conversion: broken.vmdk: qemu-img cannot read it as vmdk");
}

TEST_F(DiskConversionTest, ConvertDisksOffSealsTheVmdkAsItIs) {
  const std::string vmdk = Make("stream.vmdk", {"-O", "vmdk", "-o", "subformat=streamOptimized"});
  SealOptions o = Options({vmdk});
  o.convert_disks = false;
  const std::string ova = dir_.File("kept.ova");
  ASSERT_OK(SealPackage(Env::Default(), o, ova));
  const std::string plain = dir_.File("kept-plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, plain));
  EXPECT_EQ(ReadFileOrDie(plain + "/disk1.raw"), ReadFileOrDie(vmdk));
}

}  // namespace
}  // namespace vmseal::ovf

namespace vmseal::ovf {
namespace {

// Seal converts into memory when the qcow2 fits (no temporary file on
// disk): the same qemu-img command, so byte for byte the same qcow2 as the
// conversion into a file, for every source format.
TEST_F(DiskConversionTest, InMemoryConversionIsByteIdenticalToTheFileConversion) {
  const std::vector<std::pair<std::vector<std::string>, SourceDiskFormat>> cases = {
      {{"-O", "vmdk", "-o", "subformat=streamOptimized"}, SourceDiskFormat::kVmdk},
      {{"-O", "vmdk", "-o", "subformat=monolithicSparse"}, SourceDiskFormat::kVmdk},
      {{"-O", "vmdk", "-o", "subformat=monolithicFlat"}, SourceDiskFormat::kVmdkDescriptor},
      {{"-O", "vpc"}, SourceDiskFormat::kVhd},
      {{"-O", "vhdx"}, SourceDiskFormat::kVhdx},
  };
  int n = 0;
  for (const auto& [args, format] : cases) {
    SCOPED_TRACE(args[1] + (args.size() > 2 ? " " + args[3] : ""));
    const std::string folder = dir_.File("m" + std::to_string(++n));
    fs::create_directories(folder);
    const std::string image = folder + "/disk.img";
    std::vector<std::string> cmd = {"qemu-img", "convert", "-q", "-f", "raw"};
    cmd.insert(cmd.end(), args.begin(), args.end());
    cmd.push_back(raw_);
    cmd.push_back(image);
    std::string log;
    ASSERT_EQ(RunCommand(cmd, &log), 0) << log;
    const std::string on_disk = dir_.File("file" + std::to_string(n) + ".qcow2");
    auto file = ConvertToQcow2(Env::Default(), image, format, folder, on_disk);
    ASSERT_OK(file);
    auto memory = ConvertToQcow2InMemory(Env::Default(), image, format, folder, 64 << 20);
    ASSERT_OK(memory);
    ASSERT_TRUE(memory->has_value()) << "a 3 MiB disk fits 64 MiB";
    EXPECT_EQ((*memory)->result.virtual_size, file->virtual_size);
    EXPECT_EQ((*memory)->result.file_size, file->file_size);
    auto size = (*memory)->file->Size();
    ASSERT_OK(size);
    std::string bytes(*size, '\0');
    auto read = (*memory)->file->Read(
        0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(bytes.data()), bytes.size()));
    ASSERT_OK(read);
    EXPECT_EQ(*read, bytes.size());
    EXPECT_TRUE(bytes == ReadFileOrDie(on_disk)) << "the in-memory qcow2 differs";
  }
}

// Too large for the budget: nothing converted, the caller converts to a
// file; the source checks still run first (a parent is refused either way).
TEST_F(DiskConversionTest, InMemoryConversionDeclinesWhatDoesNotFit) {
  const std::string folder = dir_.File("big");
  fs::create_directories(folder);
  std::string log;
  ASSERT_EQ(RunCommand({"qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", raw_,
                        folder + "/disk.vmdk"},
                       &log),
            0)
      << log;
  auto memory = ConvertToQcow2InMemory(Env::Default(), folder + "/disk.vmdk",
                                       SourceDiskFormat::kVmdk, folder, 1 << 20);
  ASSERT_OK(memory);
  EXPECT_FALSE(memory->has_value());
  auto none = ConvertToQcow2InMemory(Env::Default(), folder + "/disk.vmdk",
                                     SourceDiskFormat::kVmdk, folder, 0);
  ASSERT_OK(none);
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(ListDir(folder).size(), 1u);  // no file was written beside it
  EXPECT_GT(DefaultInMemoryConversionBytes(), 0u);
}

}  // namespace
}  // namespace vmseal::ovf
