#include "host/internal/virtual_hardware.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "testing/test_util.h"

namespace vmseal::host::internal {
namespace {

std::string Envelope(const std::string& items) {
  return R"(<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
 <VirtualSystem><VirtualHardwareSection>)" + items +
         "</VirtualHardwareSection></VirtualSystem></Envelope>";
}

std::string Item(int type, const std::string& qty, const std::string& units = "") {
  std::string s = "<Item><rasd:ResourceType>" + std::to_string(type) + "</rasd:ResourceType>";
  if (!units.empty()) s += "<rasd:AllocationUnits>" + units + "</rasd:AllocationUnits>";
  return s + "<rasd:VirtualQuantity>" + qty + "</rasd:VirtualQuantity></Item>";
}

TEST(VirtualHardwareTest, ReadsCpusAndMemoryInMib) {
  auto hw = ReadVirtualHardware(Envelope(Item(3, "4") + Item(4, "2048", "byte * 2^20")));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->cpus, 4u);
  EXPECT_EQ(hw->memory_mib, 2048u);
}

TEST(VirtualHardwareTest, ConvertsGibAndVmwareUnits) {
  auto hw = ReadVirtualHardware(Envelope(Item(4, "2", "byte * 2^30")));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->memory_mib, 2048u);
  hw = ReadVirtualHardware(Envelope(Item(4, "512", "MegaBytes")));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->memory_mib, 512u);
}

TEST(VirtualHardwareTest, MissingItemsKeepDefaults) {
  auto hw = ReadVirtualHardware(Envelope(""));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->cpus, VirtualHardware().cpus);
  EXPECT_EQ(hw->memory_mib, VirtualHardware().memory_mib);
}

TEST(VirtualHardwareTest, RejectsOutOfRangeAndGarbage) {
  EXPECT_STATUS(ReadVirtualHardware(Envelope(Item(3, "0"))), StatusCode::kInvalidArgument,
                "CPU count");
  EXPECT_STATUS(ReadVirtualHardware(Envelope(Item(3, "1000"))), StatusCode::kInvalidArgument,
                "CPU count");
  EXPECT_STATUS(ReadVirtualHardware(Envelope(Item(4, "-5"))), StatusCode::kInvalidArgument,
                "VirtualQuantity");
  EXPECT_STATUS(ReadVirtualHardware(Envelope(Item(4, "1", "furlongs"))),
                StatusCode::kInvalidArgument, "AllocationUnits");
  EXPECT_STATUS(ReadVirtualHardware(Envelope(Item(4, "99999999", "byte * 2^30"))),
                StatusCode::kInvalidArgument, "memory size");
}

TEST(VirtualHardwareTest, RejectsDoctype) {
  EXPECT_STATUS(ReadVirtualHardware("<!DOCTYPE x [<!ENTITY a 'b'>]><Envelope/>"),
                StatusCode::kInvalidArgument, "DOCTYPE");
}

// A descriptor with References files f1..f3 (disks d1..d3 on them), the
// given hardware Items and, optionally, a section after the hardware.
std::string DiskEnvelope(const std::string& items, const std::string& extra = "") {
  return R"(<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2"
  xmlns:vmw="http://www.vmware.com/schema/ovf"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
 <References><File ovf:id="f1" ovf:href="a"/><File ovf:id="f2" ovf:href="b"/>
  <File ovf:id="f3" ovf:href="c"/></References>
 <DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1"/>
  <Disk ovf:diskId="d2" ovf:fileRef="f2"/><Disk ovf:diskId="d3" ovf:fileRef="f3"/></DiskSection>
 <VirtualSystem><VirtualHardwareSection>)" + items + "</VirtualHardwareSection>" + extra +
         "</VirtualSystem></Envelope>";
}

std::string Controller(const std::string& id) {
  return "<Item><rasd:InstanceID>" + id + "</rasd:InstanceID><rasd:ResourceType>6"
         "</rasd:ResourceType></Item>";
}

std::string Drive(const std::string& id, const std::string& parent, const std::string& address,
                  const std::string& resource) {
  std::string s = "<Item><rasd:InstanceID>" + id + "</rasd:InstanceID>";
  if (!address.empty()) s += "<rasd:AddressOnParent>" + address + "</rasd:AddressOnParent>";
  return s + "<rasd:HostResource>" + resource + "</rasd:HostResource><rasd:Parent>" + parent +
         "</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>";
}

TEST(VirtualHardwareTest, DisksAreOrderedByControllerAndAddressNotReferences) {
  // f3 at address 0 of the first controller boots; f1 on the second
  // controller comes last although References lists it first.
  auto hw = ReadVirtualHardware(DiskEnvelope(
      Controller("10") + Controller("11") + Drive("20", "11", "0", "ovf:/disk/d1") +
      Drive("21", "10", "1", "ovf:/disk/d2") + Drive("22", "10", "0", "ovf:/disk/d3")));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->disk_file_ids, (std::vector<std::string>{"f3", "f2", "f1"}));
  EXPECT_FALSE(hw->boot_named);
}

TEST(VirtualHardwareTest, BootOrderSectionNamesTheBootDisk) {
  auto hw = ReadVirtualHardware(DiskEnvelope(
      Controller("10") + Drive("20", "10", "0", "ovf:/disk/d1") +
          Drive("21", "10", "1", "ovf:/disk/d2") + Drive("22", "10", "2", "ovf:/file/f3"),
      R"(<vmw:BootOrderSection vmw:instanceId="21" vmw:type="disk"><Info>boot</Info>)"
      "</vmw:BootOrderSection>"));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->disk_file_ids, (std::vector<std::string>{"f2", "f1", "f3"}));
  EXPECT_TRUE(hw->boot_named);
}

// Seal keeps a VMware export's BootOrderSection inside the
// VirtualHardwareSection, non-required (docs/format/package.md §2.2); the
// host still reads it there.
TEST(VirtualHardwareTest, BootOrderSectionThatSealMovedIntoTheHardwareSectionNamesTheBootDisk) {
  auto hw = ReadVirtualHardware(DiskEnvelope(
      Controller("10") + Drive("20", "10", "0", "ovf:/disk/d1") +
      Drive("21", "10", "1", "ovf:/disk/d2") + Drive("22", "10", "2", "ovf:/file/f3") +
      R"(<vmw:BootOrderSection ovf:required="false" vmw:instanceId="22" vmw:type="disk">)"
      "<Info>boot</Info></vmw:BootOrderSection>"));
  ASSERT_OK(hw);
  EXPECT_EQ(hw->disk_file_ids, (std::vector<std::string>{"f3", "f1", "f2"}));
  EXPECT_TRUE(hw->boot_named);
}

TEST(VirtualHardwareTest, NoDiskItemsLeaveTheOrderToTheCaller) {
  auto hw = ReadVirtualHardware(DiskEnvelope(Item(3, "2")));
  ASSERT_OK(hw);
  EXPECT_TRUE(hw->disk_file_ids.empty());
}

TEST(VirtualHardwareTest, DiskItemsNamingNothingOrTwiceAreRefused) {
  EXPECT_STATUS(ReadVirtualHardware(DiskEnvelope(Controller("10") +
                                                 Drive("20", "10", "0", "ovf:/disk/nope"))),
                StatusCode::kInvalidArgument, "names no Disk");
  EXPECT_STATUS(ReadVirtualHardware(DiskEnvelope(Controller("10") +
                                                 Drive("20", "10", "0", "ovf:/file/f9"))),
                StatusCode::kInvalidArgument, "names no file");
  EXPECT_STATUS(ReadVirtualHardware(DiskEnvelope(Controller("10") +
                                                 Drive("20", "10", "0", "ovf:/disk/d1") +
                                                 Drive("21", "10", "1", "ovf:/file/f1"))),
                StatusCode::kInvalidArgument, "two disk Items");
  EXPECT_STATUS(
      ReadVirtualHardware(DiskEnvelope(
          Controller("10") + Drive("20", "10", "0", "ovf:/disk/d1"),
          R"(<vmw:BootOrderSection vmw:instanceId="99" vmw:type="disk"><Info>b</Info>)"
          "</vmw:BootOrderSection>")),
      StatusCode::kInvalidArgument,
      "descriptor: vmw:BootOrderSection names no disk Item (instanceId '99'; expected the "
      "InstanceID of a disk drive Item)");
}

// The platform seal writes (docs/format/package.md §2.4), found by its
// namespace whatever the prefix.
std::string PlatformEnvelope(const std::string& attrs, const std::string& ns =
                                                           "https://vmseal.dev/ns/package/v1") {
  return Envelope("<p:Platform xmlns:p=\"" + ns + "\" " + attrs + "/>");
}

TEST(VirtualHardwarePlatformTest, NoPlatformIsBiosWithoutTpm) {
  auto hw = ReadVirtualHardware(Envelope(Item(3, "1")));
  ASSERT_OK(hw);
  EXPECT_FALSE(hw->efi);
  EXPECT_FALSE(hw->secure_boot);
  EXPECT_FALSE(hw->tpm);
}

TEST(VirtualHardwarePlatformTest, ReadsEfiSecureBootAndTpm) {
  auto hw = ReadVirtualHardware(PlatformEnvelope(R"(firmware="efi" secureBoot="true" tpm="2.0")"));
  ASSERT_OK(hw);
  EXPECT_TRUE(hw->efi);
  EXPECT_TRUE(hw->secure_boot);
  EXPECT_TRUE(hw->tpm);
}

TEST(VirtualHardwarePlatformTest, APlatformElementInAnotherNamespaceIsNotRead) {
  auto hw = ReadVirtualHardware(
      PlatformEnvelope(R"(firmware="efi" secureBoot="false" tpm="none")", "urn:someone-else"));
  ASSERT_OK(hw);
  EXPECT_FALSE(hw->efi);
}

TEST(VirtualHardwarePlatformTest, UnknownValuesAndSecureBootWithoutEfiAreRefused) {
  EXPECT_STATUS(ReadVirtualHardware(PlatformEnvelope(R"(firmware="uefi" secureBoot="false" tpm="none")")),
                StatusCode::kInvalidArgument,
                "vmseal:Platform firmware=\"uefi\" secureBoot=\"false\" tpm=\"none\" (expected");
  EXPECT_STATUS(ReadVirtualHardware(PlatformEnvelope(R"(firmware="bios" secureBoot="true" tpm="none")")),
                StatusCode::kInvalidArgument, "Secure Boot without EFI");
  EXPECT_STATUS(ReadVirtualHardware(PlatformEnvelope(R"(firmware="efi" secureBoot="false" tpm="1.2")")),
                StatusCode::kInvalidArgument, "tpm=\"1.2\"");
}

}  // namespace
}  // namespace vmseal::host::internal
