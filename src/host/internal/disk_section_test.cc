// DeclaredDiskFormat: the DiskSection's ovf:format for a file, in OVF 2 and
// OVF 1 descriptors, and the descriptors it refuses.
#include "host/internal/disk_section.h"

#include <gtest/gtest.h>

#include "ovf/descriptor.h"
#include "ovf/package_format.h"
#include "testing/test_util.h"

namespace vmseal::host::internal {
namespace {

TEST(DeclaredDiskFormatTest, ReadsTheFormatOfEachGeneratedDisk) {
  ovf::VirtualSystemSpec vm;
  std::vector<ovf::DiskSpec> disks = {
      {"file1", "disk1.raw", 512, 512, std::string(ovf::kRawFormatUri)},
      {"file2", "disk2.qcow2", 1024, 1 << 20, std::string(ovf::kQcow2FormatUri)}};
  const std::string xml = ovf::GenerateDescriptor(vm, disks);
  auto f1 = DeclaredDiskFormat(xml, "file1");
  ASSERT_OK(f1);
  EXPECT_EQ(*f1, ovf::kRawFormatUri);
  auto f2 = DeclaredDiskFormat(xml, "file2");
  ASSERT_OK(f2);
  EXPECT_EQ(*f2, ovf::kQcow2FormatUri);
  auto none = DeclaredDiskFormat(xml, "file3");
  ASSERT_OK(none);
  EXPECT_EQ(*none, "");
}

TEST(DeclaredDiskFormatTest, ReadsAnOvf1VmdkDeclaration) {
  const std::string xml = R"(<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:id="file1" ovf:href="disk.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="1024"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
</Envelope>)";
  auto f = DeclaredDiskFormat(xml, "file1");
  ASSERT_OK(f);
  EXPECT_EQ(*f, "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized");
}

TEST(DeclaredDiskFormatTest, DiskOutsideADiskSectionIsIgnored) {
  const std::string xml = R"(<Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">
  <Other><Disk ovf:fileRef="file1" ovf:format="x"/></Other></Envelope>)";
  auto f = DeclaredDiskFormat(xml, "file1");
  ASSERT_OK(f);
  EXPECT_EQ(*f, "");
}

TEST(DeclaredDiskFormatTest, RefusesBadXmlAndDoctype) {
  EXPECT_STATUS(DeclaredDiskFormat("<Envelope>", "file1"), StatusCode::kInvalidArgument,
                "not well-formed");
  EXPECT_STATUS(DeclaredDiskFormat("<!DOCTYPE x [<!ENTITY e SYSTEM \"/etc/passwd\">]><a>&e;</a>",
                                   "file1"),
                StatusCode::kInvalidArgument, "DOCTYPE");
}

}  // namespace
}  // namespace vmseal::host::internal
