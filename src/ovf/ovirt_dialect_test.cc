#include "ovf/ovirt_dialect.h"

#include <gtest/gtest.h>

#include <cstring>

#include "ovf/descriptor.h"
#include "ovf/ovf_test_helpers.h"
#include "ovf/package_format.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

using ::vmseal::ovf::testing::ValidatesAgainstSchema;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

constexpr char kVolume[] = "3c1e8a2b-4d5f-4a6b-9c7d-8e9f0a1b2c3d/5f2b8e3c-9d41-4c7a-8a0e-2c6d1b7f4e90";

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  for (size_t at = s->find(from); at != std::string::npos; at = s->find(from, at + to.size())) {
    s->replace(at, from.size(), to);
  }
}

// The corpus's export-domain descriptor (virt-v2v -o rhv) with its volume
// and a 1 MiB capacity filled in.
std::string ExportDomainOvf() {
  std::string text = ReadFileOrDie(vmseal::testing::SourceDir() +
                                   "/tests/testdata/ovf/corpus/virt-v2v-rhv.ovf");
  ReplaceAll(&text, "@D1@", kVolume);
  ReplaceAll(&text, "@S1@", "1048576");
  return text;
}

std::string Changed(const std::string& from, const std::string& to) {
  std::string text = ExportDomainOvf();
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

TEST(OvirtDialectTest, OnlyOvirtsEnvelopeNamespaceIsTheDialect) {
  EXPECT_TRUE(IsOvirtDescriptor(ExportDomainOvf()));
  std::string standard = ExportDomainOvf();
  ReplaceAll(&standard, "http://schemas.dmtf.org/ovf/envelope/1/", "http://schemas.dmtf.org/ovf/envelope/1");
  EXPECT_FALSE(IsOvirtDescriptor(standard));
  EXPECT_FALSE(IsOvirtDescriptor("not xml"));
  // The parser rules of Descriptor::Parse hold here too.
  EXPECT_FALSE(IsOvirtDescriptor("<!DOCTYPE x [<!ENTITY e \"e\">]>" + ExportDomainOvf()));
}

TEST(OvirtDialectTest, ExportDomainDescriptorMapsToValidOvf2) {
  std::vector<std::string> notes;
  auto text = ConvertOvirtDescriptor(ExportDomainOvf(), &notes);
  ASSERT_OK(text);
  TempDir dir;
  WriteFileOrDie(dir.File("mapped.ovf"), *text);
  EXPECT_TRUE(ValidatesAgainstSchema(dir.File("mapped.ovf"))) << *text;
  auto d = Descriptor::Parse(*text);
  ASSERT_OK(d);
  EXPECT_EQ(d->major_version(), 2);
  ASSERT_EQ(d->Files().size(), 1u);
  EXPECT_EQ(d->Files()[0].href, kVolume);
  // Two CPUs from one socket of two cores; memory; the disk by its id; the
  // NIC with its model and MAC; UEFI from BiosType 2.
  for (const char* want :
       {"<rasd:ElementName>2 virtual CPUs</rasd:ElementName>",
        "<rasd:VirtualQuantity>2048</rasd:VirtualQuantity>",
        "<rasd:HostResource>ovf:/disk/5f2b8e3c-9d41-4c7a-8a0e-2c6d1b7f4e90</rasd:HostResource>",
        "ovf:capacity=\"1048576\"", "<rasd:Address>52:54:00:3c:9a:1e</rasd:Address>",
        "<rasd:ResourceSubType>virtio-net</rasd:ResourceSubType>",
        "<rasd:Connection>ovirtmgmt</rasd:Connection>",
        R"(firmware="efi" secureBoot="false" tpm="none")", "<Name>v2v</Name>"}) {
    EXPECT_NE(text->find(want), std::string::npos) << want << "\n" << *text;
  }
  EXPECT_NE(text->find(std::string(kRawFormatUri)), std::string::npos);
  auto platform = d->ReadPlatform(nullptr);
  ASSERT_OK(platform);
  EXPECT_TRUE(platform->efi);
  // What has no OVF meaning is dropped, each with a note.
  std::string all;
  for (const std::string& n : notes) all += n + "\n";
  for (const char* want : {"dropped Item \"USB Controller\"", "dropped Item \"Graphical Controller\"",
                           "dropped Item \"RNG Device\"", "TemplateId", "VmType"}) {
    EXPECT_NE(all.find(want), std::string::npos) << want << "\n" << all;
  }
  EXPECT_EQ(text->find("UsbPolicy"), std::string::npos);
  EXPECT_EQ(text->find("StoragePoolId"), std::string::npos);
}

TEST(OvirtDialectTest, CowVolumeIsQcow2) {
  auto text = ConvertOvirtDescriptor(
      Changed("ovf:volume-format=\"RAW\"", "ovf:volume-format=\"COW\""), nullptr);
  ASSERT_OK(text);
  EXPECT_NE(text->find(std::string(kQcow2FormatUri)), std::string::npos);
}

TEST(OvirtDialectTest, BiosTypeThreeIsSecureBoot) {
  auto text = ConvertOvirtDescriptor(Changed("<BiosType>2<", "<BiosType>3<"), nullptr);
  ASSERT_OK(text);
  EXPECT_NE(text->find(R"(firmware="efi" secureBoot="true" tpm="none")"), std::string::npos);
  text = ConvertOvirtDescriptor(Changed("<BiosType>2<", "<BiosType>1<"), nullptr);
  ASSERT_OK(text);
  EXPECT_EQ(text->find("vmseal:Platform"), std::string::npos);
}

TEST(OvirtDialectTest, SnapshotLayerIsRefusedNamingItsParent) {
  EXPECT_STATUS(
      ConvertOvirtDescriptor(Changed("ovf:parentRef=\"\"", "ovf:parentRef=\"a/b\""), nullptr),
      StatusCode::kUnimplemented,
      "oVirt Disk \"5f2b8e3c-9d41-4c7a-8a0e-2c6d1b7f4e90\" has ovf:parentRef=\"a/b\": it is a "
      "snapshot layer");
}

TEST(OvirtDialectTest, UnknownVolumeFormatIsRefused) {
  EXPECT_STATUS(ConvertOvirtDescriptor(
                    Changed("ovf:volume-format=\"RAW\"", "ovf:volume-format=\"VMDK\""), nullptr),
                StatusCode::kUnimplemented, "ovf:volume-format=\"VMDK\" (RAW or COW");
}

TEST(OvirtDialectTest, UnknownBiosTypeIsRefused) {
  EXPECT_STATUS(ConvertOvirtDescriptor(Changed("<BiosType>2<", "<BiosType>7<"), nullptr),
                StatusCode::kInvalidArgument, "oVirt BiosType \"7\" is none of 0, 1");
}

TEST(OvirtDialectTest, MissingCapacityIsRefusedNotGuessedFromGib) {
  EXPECT_STATUS(ConvertOvirtDescriptor(Changed("ovf:capacity=\"1048576\"", ""), nullptr),
                StatusCode::kInvalidArgument, "has no valid ovf:capacity");
}

TEST(OvirtDialectTest, RequiredUnknownSectionIsRefused) {
  EXPECT_STATUS(
      ConvertOvirtDescriptor(Changed("<Section xsi:type=\"ovf:VirtualHardwareSection_Type\">",
                                     "<Section xsi:type=\"ovf:ProductSection_Type\"><Info/>"
                                     "</Section><Section xsi:type="
                                     "\"ovf:VirtualHardwareSection_Type\">"),
                             nullptr),
      StatusCode::kUnimplemented,
      "required section Section xsi:type=\"ovf:ProductSection_Type\"");
}

TEST(OvirtDialectTest, DiskItemNamingNoVolumeIsRefused) {
  EXPECT_STATUS(ConvertOvirtDescriptor(Changed(std::string("<rasd:HostResource>") + kVolume,
                                               "<rasd:HostResource>../../etc/passwd"),
                                       nullptr),
                StatusCode::kInvalidArgument,
                "rasd:HostResource \"../../etc/passwd\", which no File's ovf:href names");
}

TEST(OvirtDialectTest, SecondVirtualSystemIsRefused) {
  std::string text = ExportDomainOvf();
  const size_t a = text.find("<Content");
  const size_t b = text.find("</Content>") + std::strlen("</Content>");
  text.insert(b, text.substr(a, b - a));
  EXPECT_STATUS(ConvertOvirtDescriptor(text, nullptr), StatusCode::kUnimplemented,
                "more than one VirtualSystem");
}

// The mapping goes through Descriptor::Parse afterwards: a File href that
// leaves the package is still refused there.
TEST(OvirtDialectTest, HrefLeavingThePackageIsRefusedAfterMapping) {
  std::string text = ExportDomainOvf();
  ReplaceAll(&text, kVolume, "../outside");
  auto mapped = ConvertOvirtDescriptor(text, nullptr);
  ASSERT_OK(mapped);
  EXPECT_STATUS(Descriptor::Parse(*mapped), StatusCode::kInvalidArgument, "File href");
}

}  // namespace
}  // namespace vmseal::ovf
