// The daemon's helpers that need no TPM: the crash sweep and the host id.
#include "host/host_daemon.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "crypto/keys.h"
#include "crypto/x509.h"
#include "testing/test_util.h"

namespace vmseal::host {
namespace {

using ::vmseal::testing::ListDir;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

TEST(RemoveStaleFilesTest, RemovesTempDisksOrphanDisksAndDownloads) {
  TempDir dir;
  auto vms = vm::VmManager::Create({.state_dir = dir.File("im"), .accel = vm::Accel::kTcg});
  ASSERT_OK(vms);
  auto disk = (*vms)->DiskPath("vm-a");
  ASSERT_OK(disk);
  WriteFileOrDie(*disk, "decrypted disk of a VM that never launched");
  WriteFileOrDie(dir.File("im") + "/disks/.vm-b.img.tmp-123", "half-decrypted disk");
  WriteFileOrDie(dir.File("im") + "/disks/notes.txt", "not ours to judge");
  ::mkdir(dir.File("work").c_str(), 0700);
  WriteFileOrDie(dir.File("work") + "/vm-c.pkg", "sealed package");
  auto removed = RemoveStaleFiles(vms->get(), dir.File("im"), dir.File("work"));
  ASSERT_OK(removed);
  EXPECT_EQ(*removed, 3);
  EXPECT_EQ(ListDir(dir.File("im") + "/disks"), std::vector<std::string>{"notes.txt"});
  EXPECT_TRUE(ListDir(dir.File("work")).empty());
}

TEST(RemoveStaleFilesTest, MissingDirectoriesAreNotAnError) {
  TempDir dir;
  auto vms = vm::VmManager::Create({.state_dir = dir.File("im"), .accel = vm::Accel::kTcg});
  ASSERT_OK(vms);
  auto removed = RemoveStaleFiles(vms->get(), dir.File("im"), dir.File("no-work-yet"));
  ASSERT_OK(removed);
  EXPECT_EQ(*removed, 0);
}

TEST(HostIdTest, IsTheCertificateCommonName) {
  TempDir dir;
  auto ca = crypto::CreateSelfSignedCa({"ca"});
  ASSERT_OK(ca);
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(key);
  crypto::IssueOptions io;
  io.common_name = "host-42";
  io.usage = crypto::CertUsage::kClientAuth;
  auto cert = crypto::IssueCertificate(*ca, key->Public(), io);
  ASSERT_OK(cert);
  WriteFileOrDie(dir.File("host.pem"), cert->ToPem());
  auto id = HostIdFromCertificate(Env::Default(), dir.File("host.pem"));
  ASSERT_OK(id);
  EXPECT_EQ(*id, "host-42");
  WriteFileOrDie(dir.File("bad.pem"), "not a certificate");
  EXPECT_FALSE(HostIdFromCertificate(Env::Default(), dir.File("bad.pem")).ok());
}

}  // namespace
}  // namespace vmseal::host
