#include "host/internal/virtual_hardware.h"

#include <gtest/gtest.h>

#include <string>

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

}  // namespace
}  // namespace vmseal::host::internal
