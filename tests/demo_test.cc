// `vmseal demo` end to end, as README's first command runs it: the whole
// system comes up, the VM boots from the decrypted disk on the trusted host
// only, the audit chain verifies, and nothing the demo started survives it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "testing/test_util.h"

namespace vmseal {
namespace {

std::string Binary() {
  const char* b = std::getenv("VMSEAL_BINARY");
  return b != nullptr ? b : "build/vmseal";
}

// Processes whose command line mentions `needle`.
int CountProcessesMentioning(const std::string& needle) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd.find(needle) != std::string::npos) ++n;
  }
  return n;
}

TEST(DemoTest, WholeSystemRunsAndCleansUp) {
  testing::TempDir dir;
  const std::string work = dir.File("demo");
  std::string out;
  int rc = testing::RunCommand({Binary(), "demo", "--dir", work}, &out, 800);
  ASSERT_EQ(rc, 0) << out;
  // The scheduler skipped the tampered host for its PCRs and took the good one.
  EXPECT_NE(out.find("host-b [skipped]: KMS: not eligible (pcr_policy)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("host-a [taken]"), std::string::npos) << out;
  EXPECT_NE(out.find("job running on host-a"), std::string::npos) << out;
  // The marker only exists inside the sealed image; the VM printed it.
  std::ifstream marker_file(work + "/customer/sample.img.marker");
  std::string marker;
  std::getline(marker_file, marker);
  ASSERT_FALSE(marker.empty());
  EXPECT_NE(out.find("serial console ($D/host-a/images/"), std::string::npos) << out;
  EXPECT_NE(out.find(": " + marker), std::string::npos) << out;
  // The audit trail has the grant to host-a and no grant to host-b.
  EXPECT_NE(out.find("release.grant  host/host-a"), std::string::npos) << out;
  EXPECT_EQ(out.find("release.grant  host/host-b"), std::string::npos) << out;
  // Nothing keeps running: no service, TPM or VM refers to the demo's dir.
  EXPECT_EQ(CountProcessesMentioning(work), 0);
  // The decrypted disk is gone with the VM.
  int disks = 0;
  for (const auto& host : {"host-a", "host-b"}) {
    std::string d = work + "/" + host + "/images/disks";
    if (!std::filesystem::exists(d)) continue;
    for (const auto& e : std::filesystem::directory_iterator(d)) {
      (void)e;
      ++disks;
    }
  }
  EXPECT_EQ(disks, 0);
}

}  // namespace
}  // namespace vmseal
