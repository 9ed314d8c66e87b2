// Unit tests: qemu command-line construction, spec validation and the state
// file format. No qemu is started.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>

#include "json/json.h"
#include "testing/test_util.h"
#include "vm/encrypted_disk.h"
#include "vm/internal/qemu_command.h"
#include "vm/internal/vm_record.h"
#include "vm/vm_manager.h"

namespace vmseal::vm {
namespace {

using internal::BuildQemuArgv;
using internal::ParseVmRecord;
using internal::SerializeVmRecord;
using internal::VmRecord;

VmSpec SampleSpec() {
  VmSpec spec;
  spec.name = "web-1";
  spec.disk_path = "/var/lib/vmseal/disks/web-1.img";
  spec.cpus = 2;
  spec.memory_mib = 512;
  return spec;
}

// The value following `flag` in argv ("" when absent); `nth` picks among repeats.
std::string FlagValue(const std::vector<std::string>& argv, const std::string& flag, int nth = 0) {
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == flag && nth-- == 0) return argv[i + 1];
  }
  return "";
}

bool HasArg(const std::vector<std::string>& argv, const std::string& arg) {
  return std::find(argv.begin(), argv.end(), arg) != argv.end();
}

const internal::QemuPaths kPaths = {"/s/run/web-1.serial.log", "/s/run/web-1.qmp"};

TEST(QemuCommandTest, StartsWithTheQemuBinary) {
  auto argv = BuildQemuArgv("/opt/qemu/bin/qemu-system-x86_64", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(argv[0], "/opt/qemu/bin/qemu-system-x86_64");
}

TEST(QemuCommandTest, CpusAndMemoryComeFromTheSpec) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-smp"), "2");
  EXPECT_EQ(FlagValue(argv, "-m"), "512M");
}

TEST(QemuCommandTest, AcceleratorIsKvmOrTcg) {
  EXPECT_EQ(FlagValue(BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths), "-accel"), "tcg");
  EXPECT_EQ(FlagValue(BuildQemuArgv("qemu", SampleSpec(), Accel::kKvm, kPaths), "-accel"), "kvm");
}

TEST(QemuCommandTest, HeadlessWithoutDefaultDevices) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-display"), "none");
  EXPECT_TRUE(HasArg(argv, "-nodefaults"));
  EXPECT_FALSE(HasArg(argv, "-daemonize"));
  EXPECT_FALSE(HasArg(argv, "-nographic"));
}

TEST(QemuCommandTest, SerialGoesToTheLogFile) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-chardev", 0), "file,id=serial0,path=/s/run/web-1.serial.log");
  EXPECT_EQ(FlagValue(argv, "-serial"), "chardev:serial0");
}

TEST(QemuCommandTest, QmpListensOnTheSocket) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-chardev", 1), "socket,id=qmp0,path=/s/run/web-1.qmp,server=on,wait=off");
  EXPECT_EQ(FlagValue(argv, "-mon"), "chardev=qmp0,mode=control");
}

// The -blockdev values of argv, parsed.
std::vector<nlohmann::json> BlockdevNodes(const std::vector<std::string>& argv) {
  std::vector<nlohmann::json> nodes;
  for (int i = 0; !FlagValue(argv, "-blockdev", i).empty(); ++i) {
    auto node = ParseJson(FlagValue(argv, "-blockdev", i));
    EXPECT_OK(node);
    nodes.push_back(node.ok() ? *node : nlohmann::json());
  }
  return nodes;
}

TEST(QemuCommandTest, RawDiskIsAFileNodeUnderARawNodeOnVirtio) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk0-file"},
                                      {"filename", "/var/lib/vmseal/disks/web-1.img"}}));
  EXPECT_EQ(nodes[1], nlohmann::json({{"driver", "raw"},
                                      {"node-name", "disk0"},
                                      {"file", "disk0-file"}}));
  EXPECT_EQ(FlagValue(argv, "-device"), "virtio-blk-pci,drive=disk0,bootindex=0");
  EXPECT_EQ(FlagValue(argv, "-device", 1), "");
}

TEST(QemuCommandTest, Qcow2DiskHasNoBackingAndNoDataFile) {
  VmSpec spec = SampleSpec();
  spec.disk_format = DiskFormat::kQcow2;
  auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths);
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk0-file"},
                                      {"filename", "/var/lib/vmseal/disks/web-1.img"}}));
  EXPECT_EQ(nodes[1], nlohmann::json({{"driver", "qcow2"},
                                      {"node-name", "disk0"},
                                      {"file", "disk0-file"},
                                      {"backing", nullptr}}));
  ASSERT_TRUE(nodes[1].contains("backing"));
  EXPECT_TRUE(nodes[1]["backing"].is_null());
  EXPECT_FALSE(nodes[1].contains("data-file"));
  EXPECT_EQ(FlagValue(argv, "-device"), "virtio-blk-pci,drive=disk0,bootindex=0");
}

VmSpec ThreeDiskSpec() {
  VmSpec spec = SampleSpec();
  spec.disk_path.clear();
  spec.disks = {{"/d/a.img", DiskFormat::kRaw, false},
                {"/d/b.qcow2", DiskFormat::kQcow2, true},
                {"/d/c.img", DiskFormat::kRaw, false}};
  return spec;
}

TEST(QemuCommandTest, DiskListIsAttachedInOrderWithTheBootDiskAtBootindex0) {
  auto argv = BuildQemuArgv("qemu", ThreeDiskSpec(), Accel::kTcg, kPaths);
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 6u);
  EXPECT_EQ(nodes[0], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk0-file"},
                                      {"filename", "/d/a.img"}}));
  EXPECT_EQ(nodes[1], nlohmann::json({{"driver", "raw"},
                                      {"node-name", "disk0"},
                                      {"file", "disk0-file"}}));
  EXPECT_EQ(nodes[2], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk1-file"},
                                      {"filename", "/d/b.qcow2"}}));
  EXPECT_EQ(nodes[3], nlohmann::json({{"driver", "qcow2"},
                                      {"node-name", "disk1"},
                                      {"file", "disk1-file"},
                                      {"backing", nullptr}}));
  EXPECT_EQ(nodes[4], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk2-file"},
                                      {"filename", "/d/c.img"}}));
  EXPECT_EQ(nodes[5], nlohmann::json({{"driver", "raw"},
                                      {"node-name", "disk2"},
                                      {"file", "disk2-file"}}));
  EXPECT_EQ(FlagValue(argv, "-device", 0), "virtio-blk-pci,drive=disk0");
  EXPECT_EQ(FlagValue(argv, "-device", 1), "virtio-blk-pci,drive=disk1,bootindex=0");
  EXPECT_EQ(FlagValue(argv, "-device", 2), "virtio-blk-pci,drive=disk2");
  EXPECT_EQ(FlagValue(argv, "-device", 3), "");
}

TEST(VmSpecTest, DiskListNeedsExactlyOneBootDisk) {
  VmSpec spec = ThreeDiskSpec();
  EXPECT_OK(internal::ValidateVmSpec(spec));
  spec.disks[0].boot = true;
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "exactly one boot disk, has 2");
  spec.disks[0].boot = spec.disks[1].boot = false;
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "exactly one boot disk, has 0");
}

TEST(VmSpecTest, DiskListAndDiskPathTogetherAreRejected) {
  VmSpec spec = ThreeDiskSpec();
  spec.disk_path = "/d/x.img";
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "both disk_path and a disk list");
}

TEST(VmSpecTest, SameFileTwiceIsRejected) {
  VmSpec spec = ThreeDiskSpec();
  spec.disks[2].path = "/d/a.img";
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "disks 0 and 2 are the same file");
}

TEST(VmSpecTest, EmptyDiskInListIsRejected) {
  VmSpec spec = ThreeDiskSpec();
  spec.disks[1].path.clear();
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "disk 1 path is empty");
}

TEST(QemuCommandTest, NoLegacyDriveOption) {
  VmSpec spec = SampleSpec();
  for (DiskFormat f : {DiskFormat::kRaw, DiskFormat::kQcow2}) {
    spec.disk_format = f;
    auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths);
    EXPECT_FALSE(HasArg(argv, "-drive"));
    EXPECT_FALSE(HasArg(argv, "-hda"));
    EXPECT_FALSE(HasArg(argv, "-snapshot"));
  }
}

TEST(QemuCommandTest, DiskPathNeedsNoEscapingInJson) {
  VmSpec spec = SampleSpec();
  spec.disk_path = "/d/a,format=qcow2,b\"c\\d.img";
  auto nodes = BlockdevNodes(BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths));
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[0]["filename"], spec.disk_path);
  EXPECT_EQ(nodes[0].size(), 3u);  // no option smuggled in by the path
}

TEST(QemuCommandTest, QemuRunsInTheSeccompSandbox) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-sandbox"),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  EXPECT_EQ(FlagValue(argv, "-sandbox", 1), "");
}

TEST(QemuCommandTest, NoNetworkByDefault) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-nic"), "none");
}

TEST(QemuCommandTest, UserNetworkWhenAsked) {
  VmSpec spec = SampleSpec();
  spec.user_network = true;
  EXPECT_EQ(FlagValue(BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths), "-nic"),
            "user,model=virtio-net-pci");
}

TEST(VmSpecTest, SampleIsValid) { EXPECT_OK(internal::ValidateVmSpec(SampleSpec())); }

TEST(VmSpecTest, NameWithSlashIsRejected) {
  VmSpec spec = SampleSpec();
  spec.name = "../etc";
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument, "vm name");
}

TEST(VmSpecTest, NameStartingWithDotIsRejected) {
  VmSpec spec = SampleSpec();
  spec.name = ".hidden";
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument, "start with '.'");
}

TEST(VmSpecTest, OverlongNameIsRejected) {
  VmSpec spec = SampleSpec();
  spec.name = std::string(65, 'a');
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument, "1 to 64");
}

TEST(VmSpecTest, ZeroCpusIsRejected) {
  VmSpec spec = SampleSpec();
  spec.cpus = 0;
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument, "cpus");
}

TEST(VmSpecTest, TooLittleMemoryIsRejected) {
  VmSpec spec = SampleSpec();
  spec.memory_mib = 8;
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument, "memory");
}

TEST(VmSpecTest, EmptyDiskPathIsRejected) {
  VmSpec spec = SampleSpec();
  spec.disk_path.clear();
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument, "disk path");
}

TEST(ParseNamesTest, DiskFormatAndAccelRoundTrip) {
  for (DiskFormat f : {DiskFormat::kRaw, DiskFormat::kQcow2}) {
    auto parsed = ParseDiskFormat(DiskFormatName(f));
    ASSERT_OK(parsed);
    EXPECT_EQ(*parsed, f);
  }
  for (Accel a : {Accel::kAuto, Accel::kKvm, Accel::kTcg}) {
    auto parsed = ParseAccel(AccelName(a));
    ASSERT_OK(parsed);
    EXPECT_EQ(*parsed, a);
  }
}

TEST(ParseNamesTest, UnknownDiskFormatIsRejected) {
  EXPECT_STATUS(ParseDiskFormat("vmdk"), StatusCode::kInvalidArgument, "vmdk");
}

TEST(ParseNamesTest, UnknownAccelIsRejected) {
  EXPECT_STATUS(ParseAccel("hvf"), StatusCode::kInvalidArgument, "hvf");
}

VmRecord SampleRecord() {
  VmRecord r;
  r.info.name = "web-1";
  r.info.pid = 4242;
  r.info.disk_path = "/s/disks/web-1.img";
  r.info.disk_format = DiskFormat::kQcow2;
  r.info.cpus = 2;
  r.info.memory_mib = 512;
  r.info.accel = Accel::kTcg;
  r.info.serial_log_path = "/s/run/web-1.serial.log";
  r.info.qemu_log_path = "/s/run/web-1.qemu.log";
  r.info.qmp_socket_path = "/s/run/web-1.qmp";
  r.info.started_unix_ms = 1700000000123;
  r.argv = {"qemu-system-x86_64", "-m", "512M"};
  return r;
}

TEST(VmRecordTest, RoundTrips) {
  VmRecord in = SampleRecord();
  auto out = ParseVmRecord(SerializeVmRecord(in));
  ASSERT_OK(out);
  EXPECT_EQ(out->info.name, in.info.name);
  EXPECT_EQ(out->info.pid, in.info.pid);
  EXPECT_EQ(out->info.disk_path, in.info.disk_path);
  EXPECT_EQ(out->info.disk_format, in.info.disk_format);
  EXPECT_EQ(out->info.cpus, in.info.cpus);
  EXPECT_EQ(out->info.memory_mib, in.info.memory_mib);
  EXPECT_EQ(out->info.accel, in.info.accel);
  EXPECT_EQ(out->info.serial_log_path, in.info.serial_log_path);
  EXPECT_EQ(out->info.qemu_log_path, in.info.qemu_log_path);
  EXPECT_EQ(out->info.qmp_socket_path, in.info.qmp_socket_path);
  EXPECT_EQ(out->info.started_unix_ms, in.info.started_unix_ms);
  EXPECT_EQ(out->argv, in.argv);
  EXPECT_FALSE(out->stopped);
}

TEST(VmRecordTest, ParsesTheDocumentedExample) {
  // The example in docs/vm.md, "State file".
  const char* text = R"({
  "version": 1, "name": "web-1", "pid": 4242, "stopped": false,
  "disk_path": "/var/lib/vmseal/vm/disks/web-1.img", "disk_format": "raw",
  "cpus": 2, "memory_mib": 512, "accel": "tcg",
  "serial_log": "/var/lib/vmseal/vm/run/web-1.serial.log",
  "qemu_log": "/var/lib/vmseal/vm/run/web-1.qemu.log",
  "qmp_socket": "/var/lib/vmseal/vm/run/web-1.qmp",
  "started_unix_ms": 1700000000123,
  "argv": ["qemu-system-x86_64", "-name", "vmseal-web-1"]
})";
  auto r = ParseVmRecord(text);
  ASSERT_OK(r);
  EXPECT_EQ(r->info.pid, 4242);
  EXPECT_EQ(r->argv.size(), 3u);
}

// Mutates one field of the serialized sample and expects DATA_LOSS naming it.
void ExpectCorrupt(const std::function<void(nlohmann::json&)>& mutate, const std::string& substr) {
  nlohmann::json j = nlohmann::json::parse(SerializeVmRecord(SampleRecord()));
  mutate(j);
  EXPECT_STATUS(ParseVmRecord(j.dump()), StatusCode::kDataLoss, substr);
}

VmSpec StreamedSpec() {
  VmSpec spec = SampleSpec();
  spec.disk_path.clear();
  VmDisk d;
  d.path = "/s/d0/nbd.sock";
  d.source = DiskSource::kNbd;
  d.format = DiskFormat::kQcow2;
  d.overlay_path = "/s/d0.qcow2";
  d.boot = true;
  spec.disks = {d};
  return spec;
}

TEST(QemuCommandTest, StreamedDiskIsAnEncryptedOverlayOverTheReadOnlyExport) {
  auto argv = BuildQemuArgv("qemu", StreamedSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-object"),
            "secret,id=vmseal-disk-secret,format=raw,file=/dev/fd/3");
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 5u);
  EXPECT_EQ(nodes[0], nlohmann::json({{"driver", "nbd"},
                                      {"node-name", "disk0-file"},
                                      {"server", {{"type", "unix"}, {"path", "/s/d0/nbd.sock"}}},
                                      {"export", ""},
                                      {"reconnect-delay", 60},
                                      {"read-only", true}}));
  EXPECT_EQ(nodes[1], nlohmann::json({{"driver", "qcow2"},
                                      {"node-name", "disk0-base"},
                                      {"file", "disk0-file"},
                                      {"backing", nullptr},
                                      {"read-only", true}}));
  EXPECT_EQ(nodes[2], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk0-overlay-file"},
                                      {"filename", "/s/d0.qcow2"}}));
  // The overlay is a qcow2 inside a LUKS container opened with the secret.
  EXPECT_EQ(nodes[3], nlohmann::json({{"driver", "luks"},
                                      {"node-name", "disk0-overlay-luks"},
                                      {"file", "disk0-overlay-file"},
                                      {"key-secret", "vmseal-disk-secret"}}));
  EXPECT_EQ(nodes[4], nlohmann::json({{"driver", "qcow2"},
                                      {"node-name", "disk0"},
                                      {"file", "disk0-overlay-luks"},
                                      {"backing", "disk0-base"}}));
  EXPECT_EQ(FlagValue(argv, "-device"), "virtio-blk-pci,drive=disk0,bootindex=0");
  // The secret is never on the command line.
  for (const std::string& a : argv) EXPECT_EQ(a.find("data="), std::string::npos) << a;
}

TEST(QemuCommandTest, EncryptedCopyIsAQcow2InALuksContainerWithoutBacking) {
  VmSpec spec = SampleSpec();
  spec.disk_path.clear();
  spec.disks = {{"/s/d0.qcow2", DiskFormat::kQcow2, true}};
  spec.disks[0].encrypted = true;
  auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths);
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 3u);
  EXPECT_EQ(nodes[0], nlohmann::json({{"driver", "file"},
                                      {"node-name", "disk0-file"},
                                      {"filename", "/s/d0.qcow2"}}));
  EXPECT_EQ(nodes[1], nlohmann::json({{"driver", "luks"},
                                      {"node-name", "disk0-luks"},
                                      {"file", "disk0-file"},
                                      {"key-secret", "vmseal-disk-secret"}}));
  EXPECT_EQ(nodes[2], nlohmann::json({{"driver", "qcow2"},
                                      {"node-name", "disk0"},
                                      {"file", "disk0-luks"},
                                      {"backing", nullptr}}));
  EXPECT_EQ(FlagValue(argv, "-object"),
            "secret,id=vmseal-disk-secret,format=raw,file=/dev/fd/3");
}

// Files of the earlier layout (qcow2 with built-in LUKS) open as they are.
TEST(QemuCommandTest, EncryptedCopyOfTheEarlierLayoutIsLuksQcow2WithoutBacking) {
  VmSpec spec = SampleSpec();
  spec.disk_path.clear();
  spec.disks = {{"/s/d0.qcow2", DiskFormat::kQcow2, true}};
  spec.disks[0].encrypted = true;
  spec.disks[0].encrypted_layout = EncryptedFileLayout::kQcow2Luks;
  auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths);
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 2u);
  EXPECT_EQ(nodes[1],
            nlohmann::json({{"driver", "qcow2"},
                            {"node-name", "disk0"},
                            {"file", "disk0-file"},
                            {"backing", nullptr},
                            {"encrypt", {{"format", "luks"}, {"key-secret", "vmseal-disk-secret"}}}}));
  EXPECT_EQ(FlagValue(argv, "-object"),
            "secret,id=vmseal-disk-secret,format=raw,file=/dev/fd/3");
}

TEST(QemuCommandTest, EachDiskOpensItsOverlayWithTheSecretOfItsSlot) {
  VmSpec spec = StreamedSpec();
  VmDisk d1 = spec.disks[0];
  d1.path = "/s/d1/nbd.sock";
  d1.overlay_path = "/s/d1.qcow2";
  d1.boot = false;
  d1.secret_slot = 1;
  VmDisk d2 = d1;
  d2.path = "/s/d2/nbd.sock";
  d2.overlay_path = "/s/d2.qcow2";
  d2.secret_slot = 2;
  spec.disks.push_back(d1);
  spec.disks.push_back(d2);
  auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths);
  std::vector<std::string> objects;
  for (size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "-object") objects.push_back(argv[i + 1]);
  }
  EXPECT_EQ(objects, (std::vector<std::string>{
                         "secret,id=vmseal-disk-secret,format=raw,file=/dev/fd/3",
                         "secret,id=vmseal-disk-secret-1,format=raw,file=/dev/fd/6",
                         "secret,id=vmseal-disk-secret-2,format=raw,file=/dev/fd/7"}));
  auto nodes = BlockdevNodes(argv);
  ASSERT_EQ(nodes.size(), 15u);
  for (size_t i = 0; i < 3; ++i) {
    const std::string id = i == 0 ? "vmseal-disk-secret" : "vmseal-disk-secret-" + std::to_string(i);
    EXPECT_EQ(nodes[5 * i + 3]["driver"], "luks") << nodes[5 * i + 3].dump();
    EXPECT_EQ(nodes[5 * i + 3]["key-secret"], id) << nodes[5 * i + 3].dump();
    EXPECT_EQ(nodes[5 * i + 4]["file"], nodes[5 * i + 3]["node-name"]) << nodes[5 * i + 4].dump();
  }
  EXPECT_EQ(internal::DiskSecretSlots(spec), (std::vector<uint32_t>{0, 1, 2}));
}

TEST(QemuCommandTest, PlainDisksGetNoSecretObject) {
  auto argv = BuildQemuArgv("qemu", ThreeDiskSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-object"), "");
}

TEST(VmSpecTest, NbdDiskWithoutOverlayIsRejected) {
  VmSpec spec = StreamedSpec();
  spec.disks[0].overlay_path.clear();
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "NBD export without an overlay");
}

TEST(VmSpecTest, EncryptedRawIsRejected) {
  VmSpec spec = ThreeDiskSpec();
  spec.disks[0].encrypted = true;
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "only a local qcow2 without an overlay can be encrypted");
}

TEST(VmSpecTest, OverlayThatIsAnotherDisksFileIsRejected) {
  VmSpec spec = ThreeDiskSpec();
  spec.disks[2].overlay_path = "/d/a.img";
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "disks 0 and 2 are the same file");
}

TEST(VmRecordTest, StreamedDiskRoundTrips) {
  VmRecord in = SampleRecord();
  in.info.disks = StreamedSpec().disks;
  auto out = ParseVmRecord(SerializeVmRecord(in));
  ASSERT_OK(out);
  ASSERT_EQ(out->info.disks.size(), 1u);
  EXPECT_EQ(out->info.disks[0].source, DiskSource::kNbd);
  EXPECT_EQ(out->info.disks[0].overlay_path, "/s/d0.qcow2");
  EXPECT_FALSE(out->info.disks[0].encrypted);
}

TEST(EncryptedDiskTest, PassphraseIsTheSecretInHex) {
  SecretBytes secret(std::span<const uint8_t>(std::vector<uint8_t>(32, 0xa5)));
  SecretBytes text = DiskSecretPassphrase(secret);
  std::string expected;
  for (int i = 0; i < 32; ++i) expected += "a5";
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(text.UnsafeData()), text.size()), expected);
}

TEST(EncryptedDiskTest, WrongSecretSizeIsRefusedBeforeQemuImg) {
  SecretBytes secret(16);
  EXPECT_STATUS(CreateEncryptedOverlay({}, "/nonexistent/x.qcow2", 1 << 20, secret),
                StatusCode::kInvalidArgument, "32 bytes");
}

TEST(VmRecordTest, DiskListRoundTrips) {
  VmRecord in = SampleRecord();
  in.info.disks = ThreeDiskSpec().disks;
  auto out = ParseVmRecord(SerializeVmRecord(in));
  ASSERT_OK(out);
  ASSERT_EQ(out->info.disks.size(), 3u);
  EXPECT_EQ(out->info.disks[1].path, "/d/b.qcow2");
  EXPECT_EQ(out->info.disks[1].format, DiskFormat::kQcow2);
  EXPECT_TRUE(out->info.disks[1].boot);
  EXPECT_FALSE(out->info.disks[2].boot);
}

TEST(VmRecordTest, RecordWithoutDisksHasItsOneBootDisk) {
  nlohmann::json j = nlohmann::json::parse(SerializeVmRecord(SampleRecord()));
  j.erase("disks");
  auto out = ParseVmRecord(j.dump());
  ASSERT_OK(out);
  ASSERT_EQ(out->info.disks.size(), 1u);
  EXPECT_EQ(out->info.disks[0].path, "/s/disks/web-1.img");
  EXPECT_EQ(out->info.disks[0].format, DiskFormat::kQcow2);
  EXPECT_TRUE(out->info.disks[0].boot);
}

TEST(VmRecordTest, EndRoundTrips) {
  VmRecord in = SampleRecord();
  in.stopped = true;
  in.info.ended = true;
  in.info.end.reason = VmEndReason::kKilled;
  in.info.end.code = 9;
  in.info.end.text = "killed by signal 9";
  in.info.end.unix_ms = 1700000000999;
  auto out = ParseVmRecord(SerializeVmRecord(in));
  ASSERT_OK(out);
  EXPECT_TRUE(out->stopped);
  EXPECT_TRUE(out->info.ended);
  EXPECT_EQ(out->info.end.reason, VmEndReason::kKilled);
  EXPECT_EQ(out->info.end.code, 9);
  EXPECT_EQ(out->info.end.text, "killed by signal 9");
  EXPECT_EQ(out->info.end.unix_ms, 1700000000999);
}

TEST(VmRecordTest, NoEndMeansNotEnded) {
  auto out = ParseVmRecord(SerializeVmRecord(SampleRecord()));
  ASSERT_OK(out);
  EXPECT_FALSE(out->info.ended);
  EXPECT_EQ(nlohmann::json::parse(SerializeVmRecord(SampleRecord())).count("end"), 0u);
}

TEST(VmRecordTest, EveryEndReasonRoundTrips) {
  for (VmEndReason reason : {VmEndReason::kStopped, VmEndReason::kGuestPowerOff,
                             VmEndReason::kExited, VmEndReason::kKilled, VmEndReason::kUnknown}) {
    VmRecord in = SampleRecord();
    in.info.ended = true;
    in.info.end.reason = reason;
    auto out = ParseVmRecord(SerializeVmRecord(in));
    ASSERT_OK(out);
    EXPECT_EQ(out->info.end.reason, reason) << VmEndReasonName(reason);
  }
}

TEST(VmRecordTest, UnknownEndReasonIsDataLoss) {
  VmRecord in = SampleRecord();
  in.info.ended = true;
  nlohmann::json j = nlohmann::json::parse(SerializeVmRecord(in));
  j["end"]["reason"] = "abducted";
  EXPECT_STATUS(ParseVmRecord(j.dump()), StatusCode::kDataLoss, "end.reason");
}

TEST(VmRecordTest, EndNotAnObjectIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["end"] = "killed"; }, "\"end\" is not an object");
}

TEST(VmRecordTest, EndWithoutCodeIsDataLoss) {
  VmRecord in = SampleRecord();
  in.info.ended = true;
  nlohmann::json j = nlohmann::json::parse(SerializeVmRecord(in));
  j["end"].erase("code");
  EXPECT_STATUS(ParseVmRecord(j.dump()), StatusCode::kDataLoss, "\"code\"");
}

TEST(VmRecordTest, NotJsonIsDataLoss) {
  EXPECT_STATUS(ParseVmRecord("{\"version\": 1,"), StatusCode::kDataLoss, "not valid JSON");
}

TEST(VmRecordTest, TruncatedFileIsDataLoss) {
  std::string text = SerializeVmRecord(SampleRecord());
  EXPECT_STATUS(ParseVmRecord(text.substr(0, text.size() / 2)), StatusCode::kDataLoss,
                "not valid JSON");
}

TEST(VmRecordTest, WrongVersionIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["version"] = 2; }, "unsupported version 2");
}

TEST(VmRecordTest, MissingPidIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j.erase("pid"); }, "\"pid\"");
}

TEST(VmRecordTest, NonPositivePidIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["pid"] = 0; }, "\"pid\" out of range");
}

TEST(VmRecordTest, PidAsStringIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["pid"] = "4242"; }, "\"pid\"");
}

TEST(VmRecordTest, BadNameIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["name"] = "a/b"; }, "vm name");
}

TEST(VmRecordTest, AutoAccelIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["accel"] = "auto"; }, "\"accel\"");
}

TEST(VmRecordTest, EmptyArgvIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["argv"] = nlohmann::json::array(); }, "\"argv\"");
}

TEST(VmRecordTest, NonStringArgvIsDataLoss) {
  ExpectCorrupt([](nlohmann::json& j) { j["argv"] = {"qemu", 3}; }, "non-string");
}

TEST(VmRecordTest, OversizedFileIsDataLoss) {
  EXPECT_STATUS(ParseVmRecord(std::string(internal::kMaxVmRecordBytes + 1, ' ')),
                StatusCode::kDataLoss, "64 KiB");
}

TEST(VmManagerCreateTest, EmptyStateDirIsRejected) {
  VmManagerOptions options;
  EXPECT_STATUS(VmManager::Create(options), StatusCode::kInvalidArgument, "state dir");
}

TEST(VmManagerCreateTest, StateDirsArePrivate) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.File("state");
  ASSERT_OK(VmManager::Create(options));
  for (const char* sub : {"", "/disks", "/vms", "/run"}) {
    struct stat st;
    ASSERT_EQ(::stat((options.state_dir + sub).c_str(), &st), 0) << sub;
    EXPECT_EQ(st.st_mode & 0777, 0700u) << sub;
  }
}

TEST(VmManagerCreateTest, OverlongStateDirIsRejected) {
  VmManagerOptions options;
  options.state_dir = "/tmp/" + std::string(80, 'x');  // 85 > 82 characters
  EXPECT_STATUS(VmManager::Create(options), StatusCode::kInvalidArgument, "too long");
}

TEST(VmManagerCreateTest, AutoAccelWithoutKvmDeviceIsTcg) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  options.kvm_device = dir.File("no-such-kvm");
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  EXPECT_EQ((*manager)->ResolvedAccel(), Accel::kTcg);
}

TEST(VmManagerCreateTest, UnknownVmIsNotFound) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  EXPECT_STATUS((*manager)->Get("nope"), StatusCode::kNotFound, "no such vm: nope");
  EXPECT_STATUS((*manager)->Stop("nope"), StatusCode::kNotFound, "no such vm: nope");
  EXPECT_STATUS((*manager)->Delete("nope"), StatusCode::kNotFound, "no such vm: nope");
}

TEST(VmManagerCreateTest, MissingDiskIsNotFound) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  VmSpec spec = SampleSpec();
  spec.disk_path = dir.File("missing.img");
  EXPECT_STATUS((*manager)->Launch(spec), StatusCode::kNotFound,
                "vm disk missing: " + spec.disk_path);
  EXPECT_TRUE(vmseal::testing::ListDir(dir.File("vms")).empty());
}

TEST(VmManagerCreateTest, CorruptStateFileIsDataLoss) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  vmseal::testing::WriteFileOrDie(dir.File("vms/web-1.json"), "{\"version\": 1");
  EXPECT_STATUS((*manager)->Get("web-1"), StatusCode::kDataLoss, "web-1.json");
}

TEST(VmManagerCreateTest, StateFileNamingAnotherVmIsDataLoss) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  vmseal::testing::WriteFileOrDie(dir.File("vms/other.json"), SerializeVmRecord(SampleRecord()));
  EXPECT_STATUS((*manager)->Get("other"), StatusCode::kDataLoss, "names vm web-1");
}

TEST(VmManagerCreateTest, RecordOfDeadProcessListsAsStopped) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  VmRecord record = SampleRecord();
  record.info.pid = ::getpid();  // alive, but not running the recorded argv
  vmseal::testing::WriteFileOrDie(dir.File("vms/web-1.json"), SerializeVmRecord(record));
  auto vms = (*manager)->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].state, VmRunState::kStopped);
  EXPECT_OK((*manager)->Stop("web-1"));  // and no signal reaches this process
}

TEST(VmManagerCreateTest, MissingQemuIsNotFound) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  options.qemu_binary = "vmseal-no-such-qemu";
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  VmSpec spec = SampleSpec();
  spec.disk_path = dir.File("disk.img");
  vmseal::testing::WriteFileOrDie(spec.disk_path, std::string(4096, '\0'));
  EXPECT_STATUS((*manager)->Launch(spec), StatusCode::kNotFound,
                "qemu not found: vmseal-no-such-qemu");
  EXPECT_TRUE(vmseal::testing::ListDir(dir.File("vms")).empty());
}

}  // namespace
}  // namespace vmseal::vm

namespace vmseal::vm {
namespace {

// An EFI VM (docs/vm.md "Firmware"): OVMF code read-only on pflash0, the
// VM's own vars on pflash1, a q35 machine.
VmSpec EfiSpec() {
  VmSpec spec = SampleSpec();
  spec.firmware = Firmware::kEfi;
  return spec;
}

internal::QemuPaths EfiPaths() {
  internal::QemuPaths paths = kPaths;
  paths.efi_code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
  paths.efi_vars = "/s/run/web-1.efivars.fd";
  return paths;
}

TEST(QemuFirmwareTest, BiosVmHasNoPflashAndTheDefaultMachine) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-machine"), "");
  for (const auto& node : BlockdevNodes(argv)) {
    EXPECT_NE(node["node-name"], internal::kEfiCodeNodeName);
  }
}

TEST(QemuFirmwareTest, EfiVmBootsOvmfCodeReadOnlyWithItsOwnVars) {
  auto argv = BuildQemuArgv("qemu", EfiSpec(), Accel::kTcg, EfiPaths());
  EXPECT_EQ(FlagValue(argv, "-machine"), "q35,pflash0=efi-code,pflash1=efi-vars");
  auto nodes = BlockdevNodes(argv);
  ASSERT_GE(nodes.size(), 4u);
  EXPECT_EQ(nodes[0]["filename"], "/usr/share/OVMF/OVMF_CODE_4M.fd");
  EXPECT_EQ(nodes[0]["read-only"], true);
  EXPECT_EQ(nodes[1]["node-name"], "efi-code");
  EXPECT_EQ(nodes[1]["read-only"], true);
  EXPECT_EQ(nodes[2]["filename"], "/s/run/web-1.efivars.fd");
  EXPECT_FALSE(nodes[2].contains("read-only"));
  EXPECT_EQ(nodes[3]["node-name"], "efi-vars");
  EXPECT_FALSE(HasArg(argv, "driver=cfi.pflash01,property=secure,value=on"));
}

TEST(QemuFirmwareTest, SecureBootTurnsOnSmmAndSecurePflash) {
  VmSpec spec = EfiSpec();
  spec.secure_boot = true;
  auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, EfiPaths());
  EXPECT_EQ(FlagValue(argv, "-machine"), "q35,pflash0=efi-code,pflash1=efi-vars,smm=on");
  EXPECT_EQ(FlagValue(argv, "-global"), "driver=cfi.pflash01,property=secure,value=on");
}

TEST(QemuFirmwareTest, SecureBootWithoutEfiIsRefused) {
  VmSpec spec = SampleSpec();
  spec.secure_boot = true;
  EXPECT_STATUS(internal::ValidateVmSpec(spec), StatusCode::kInvalidArgument,
                "secure boot needs EFI firmware");
}

TEST(QemuFirmwareTest, FirmwareNamesParse) {
  EXPECT_EQ(*ParseFirmware("efi"), Firmware::kEfi);
  EXPECT_EQ(*ParseFirmware("bios"), Firmware::kBios);
  EXPECT_STATUS(ParseFirmware("uefi"), StatusCode::kInvalidArgument, "want bios or efi");
}

TEST(VmRecordFirmwareTest, EfiFieldsRoundTripAndBiosRecordsStayAsBefore) {
  VmRecord r;
  r.info.name = "web-1";
  r.info.pid = 42;
  r.info.disk_path = "/d";
  r.info.cpus = 1;
  r.info.memory_mib = 256;
  r.info.accel = Accel::kTcg;
  r.argv = {"qemu"};
  const std::string bios = SerializeVmRecord(r);
  EXPECT_EQ(bios.find("firmware"), std::string::npos);
  r.info.firmware = Firmware::kEfi;
  r.info.secure_boot = true;
  r.info.efi_vars_path = "/s/run/web-1.efivars.fd";
  auto back = ParseVmRecord(SerializeVmRecord(r));
  ASSERT_OK(back);
  EXPECT_EQ(back->info.firmware, Firmware::kEfi);
  EXPECT_TRUE(back->info.secure_boot);
  EXPECT_EQ(back->info.efi_vars_path, "/s/run/web-1.efivars.fd");
}

}  // namespace
}  // namespace vmseal::vm

namespace vmseal::vm {
namespace {

TEST(QemuTpmTest, NoTpmDeviceUnlessAsked) {
  auto argv = BuildQemuArgv("qemu", SampleSpec(), Accel::kTcg, kPaths);
  EXPECT_EQ(FlagValue(argv, "-tpmdev"), "");
}

TEST(QemuTpmTest, TpmIsAnEmulatorOnTheInheritedSocketTisForBiosCrbForEfi) {
  VmSpec spec = SampleSpec();
  spec.tpm = true;
  auto argv = BuildQemuArgv("qemu", spec, Accel::kTcg, kPaths);
  EXPECT_TRUE(HasArg(argv, "socket,id=tpm0-ctrl,fd=5"));
  EXPECT_EQ(FlagValue(argv, "-tpmdev"), "emulator,id=tpm0,chardev=tpm0-ctrl");
  EXPECT_TRUE(HasArg(argv, "tpm-tis,tpmdev=tpm0"));
  spec.firmware = Firmware::kEfi;
  argv = BuildQemuArgv("qemu", spec, Accel::kTcg, EfiPaths());
  EXPECT_TRUE(HasArg(argv, "tpm-crb,tpmdev=tpm0"));
}

TEST(QemuTpmTest, SwtpmIsATpm2OnItsStateDirThatEndsWithQemu) {
  EXPECT_EQ(internal::BuildSwtpmArgv("swtpm", "/s/run/web-1.tpm"),
            (std::vector<std::string>{"swtpm", "socket", "--tpm2", "--tpmstate",
                                      "dir=/s/run/web-1.tpm,mode=0600", "--ctrl",
                                      "type=unixio,clientfd=3", "--terminate"}));
}

TEST(VmRecordTpmTest, TpmFieldsRoundTrip) {
  VmRecord r;
  r.info.name = "web-1";
  r.info.pid = 42;
  r.info.disk_path = "/d";
  r.info.cpus = 1;
  r.info.memory_mib = 256;
  r.info.accel = Accel::kTcg;
  r.argv = {"qemu"};
  EXPECT_EQ(SerializeVmRecord(r).find("tpm"), std::string::npos);
  r.info.tpm = true;
  r.info.tpm_pid = 43;
  r.info.tpm_state_dir = "/s/run/web-1.tpm";
  r.tpm_argv = {"swtpm", "socket"};
  auto back = ParseVmRecord(SerializeVmRecord(r));
  ASSERT_OK(back);
  EXPECT_TRUE(back->info.tpm);
  EXPECT_EQ(back->info.tpm_pid, 43);
  EXPECT_EQ(back->info.tpm_state_dir, "/s/run/web-1.tpm");
  EXPECT_EQ(back->tpm_argv, r.tpm_argv);
}

// The host's encrypted disk files are opened by their layout, read from
// their first bytes: a file of neither layout never reaches qemu.
TEST(VmManagerCreateTest, AnEncryptedDiskFileOfNoKnownLayoutIsRefusedBeforeQemu) {
  vmseal::testing::TempDir dir;
  VmManagerOptions options;
  options.state_dir = dir.path();
  options.qemu_binary = "vmseal-no-such-qemu";
  auto manager = VmManager::Create(options);
  ASSERT_OK(manager);
  VmSpec spec = SampleSpec();
  spec.disk_path.clear();
  spec.disks = {{dir.File("d0.qcow2"), DiskFormat::kQcow2, true}};
  spec.disks[0].encrypted = true;
  vmseal::testing::WriteFileOrDie(spec.disks[0].path, std::string(4096, '\0'));
  ASSERT_EQ(::chmod(spec.disks[0].path.c_str(), 0600), 0);
  SecretBytes secret = NewDiskSecret();
  EXPECT_STATUS((*manager)->Launch(spec, &secret), StatusCode::kFailedPrecondition,
                "not an encrypted disk file of this host");
  EXPECT_TRUE(vmseal::testing::ListDir(dir.File("vms")).empty());
  // The same spec over a real one gets past the check (to the missing qemu).
  ASSERT_EQ(::unlink(spec.disks[0].path.c_str()), 0);
  ASSERT_OK(CreateEncryptedOverlay({}, spec.disks[0].path, 1 << 20, secret));
  EXPECT_STATUS((*manager)->Launch(spec, &secret), StatusCode::kNotFound,
                "qemu not found: vmseal-no-such-qemu");
}

}  // namespace
}  // namespace vmseal::vm
