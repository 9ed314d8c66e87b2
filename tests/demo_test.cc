// `vmseal demo` end to end, as README's first command runs it: the whole
// system comes up, the VM boots from the decrypted disk on the trusted host
// only, the audit chain verifies, and nothing the demo started survives it.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

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

// qemu processes whose command line mentions `needle`.
int CountQemuMentioning(const std::string& needle) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string argv0 = cmd.substr(0, cmd.find('\0'));
    if (argv0.find("qemu-system") != std::string::npos && cmd.find(needle) != std::string::npos) {
      ++n;
    }
  }
  return n;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The decrypted disks left under the demo's hosts.
int CountHostDisks(const std::string& work) {
  int disks = 0;
  for (const auto& host : {"host-a", "host-b"}) {
    std::string d = work + "/" + host + "/images/disks";
    if (!std::filesystem::exists(d)) continue;
    for (const auto& e : std::filesystem::directory_iterator(d)) {
      (void)e;
      ++disks;
    }
  }
  return disks;
}

// One run of `vmseal demo --keep` in the background (one demo instead of two
// keeps the suite's time down; --keep runs every step of the plain demo
// first). The demo's own story: the tampered host is skipped, the VM prints
// the marker sealed into its image, the audit has the grant to host-a only.
// Then, while the system keeps running, the customer launches a second VM,
// stops it and starts it again through the CLI, and lists its jobs; when the
// demo is told to stop, no process of its own, no qemu of its hosts (the
// second VM was never known to the demo's own steps) and no decrypted disk
// remains.
TEST(DemoTest, WholeSystemRunsKeepsRunningForTheCustomerAndCleansUp) {
  testing::TempDir dir;
  const std::string work = dir.File("demo");
  const std::string log = dir.File("demo.out");
  std::vector<std::string> argv = {Binary(), "demo", "--dir", work, "--keep"};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  pid_t pid = -1;
  ASSERT_EQ(posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  struct Reaper {
    pid_t pid;
    ~Reaper() {
      if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
        ::kill(pid, SIGTERM);
        ::waitpid(pid, nullptr, 0);
      }
    }
  } reaper{pid};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(600);
  while (Slurp(log).find("Press Ctrl-C") == std::string::npos) {
    ASSERT_EQ(::waitpid(pid, nullptr, WNOHANG), 0) << "the demo ended early:\n" << Slurp(log);
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << Slurp(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  const std::string out = Slurp(log);
  // The scheduler skipped the tampered host for its PCRs and took the good one.
  EXPECT_NE(out.find("host-b [skipped]: KMS: not eligible (pcr_policy)"), std::string::npos)
      << out;
  EXPECT_NE(out.find("host-a [taken]"), std::string::npos) << out;
  EXPECT_NE(out.find("job running on host-a"), std::string::npos) << out;
  // The marker only exists inside the sealed image; the VM printed it.
  {
    std::ifstream marker_file(work + "/customer/sample.img.marker");
    std::string marker;
    std::getline(marker_file, marker);
    ASSERT_FALSE(marker.empty());
    EXPECT_NE(out.find("serial console ($D/host-a/images/"), std::string::npos) << out;
    EXPECT_NE(out.find(": " + marker), std::string::npos) << out;
  }
  // The audit trail has the grant to host-a and no grant to host-b.
  EXPECT_NE(out.find("release.grant  host/host-a"), std::string::npos) << out;
  EXPECT_EQ(out.find("release.grant  host/host-b"), std::string::npos) << out;
  // The migration act: cloud B (its own KMS, portal and host-c) runs the
  // migrated image and shows the same marker; KMS A audited the re-wrap;
  // the VM at B is deleted again, its qemu gone.
  {
    std::ifstream marker_file(work + "/customer/sample.img.marker");
    std::string marker;
    std::getline(marker_file, marker);
    EXPECT_NE(out.find("host-c enrolled and attested at KMS B"), std::string::npos) << out;
    EXPECT_NE(out.find("package uploaded to portal B"), std::string::npos) << out;
    EXPECT_NE(out.find("job running on host-c"), std::string::npos) << out;
    EXPECT_NE(out.find("serial console at B ($D/host-c/images/"), std::string::npos) << out;
    const size_t at_b = out.find("serial console at B (");
    ASSERT_NE(at_b, std::string::npos) << out;
    EXPECT_NE(out.find(": " + marker, at_b), std::string::npos) << out;
    EXPECT_NE(out.find("migration.rewrap"), std::string::npos) << out;
    EXPECT_NE(out.find("the VM at B is deleted"), std::string::npos) << out;
    const size_t took = out.find("the migration act took ");
    ASSERT_NE(took, std::string::npos) << out;
    std::printf("[ figure ] %s\n", out.substr(took, out.find('\n', took) - took).c_str());
  }

  const size_t at = out.find("customer --portal ");
  ASSERT_NE(at, std::string::npos) << out;
  const size_t from = at + std::string("customer --portal ").size();
  const std::string portal = out.substr(from, out.find(' ', from) - from);
  auto customer = [&](std::vector<std::string> a) {
    std::vector<std::string> cmd = {Binary(), "customer", "--portal", portal, "--ca-cert",
                                    work + "/kms/ca.pem", "--session",
                                    work + "/customer/session.json", "--json"};
    cmd.insert(cmd.end(), a.begin(), a.end());
    std::string text;
    int rc = testing::RunCommand(cmd, &text, 120);
    EXPECT_EQ(rc, 0) << text;
    auto j = nlohmann::json::parse(text, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << text;
    return j;
  };
  auto wait_for_state = [&](const std::string& job, const std::string& state) {
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(300);
    nlohmann::json j;
    do {
      j = customer({"status", job});
      if (j.value("state", "") == state) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    } while (std::chrono::steady_clock::now() < until);
    return j;
  };
  EXPECT_EQ(CountQemuMentioning(work), 1);  // the demo's own VM

  nlohmann::json images = customer({"images"});
  ASSERT_FALSE(images["images"].empty()) << images.dump();
  const std::string image = images["images"][0].value("image_id", "");
  const std::string job = customer({"launch", image}).value("job_id", "");
  ASSERT_FALSE(job.empty());
  nlohmann::json j = wait_for_state(job, "running");
  ASSERT_EQ(j.value("state", ""), "running") << j.dump();
  EXPECT_EQ(CountQemuMentioning(work), 2);

  // Stop and start through the CLI: the slot is freed, the VM runs again
  // after a fresh release on the same host.
  EXPECT_EQ(customer({"vm", "stop", job}).value("state", ""), "stopping");
  j = wait_for_state(job, "stopped");
  EXPECT_EQ(j.value("state", ""), "stopped") << j.dump();
  EXPECT_EQ(j.value("end_reason", ""), "stopped_by_customer") << j.dump();
  EXPECT_EQ(CountQemuMentioning(work), 1);
  customer({"vm", "start", job});
  j = wait_for_state(job, "running");
  EXPECT_EQ(j.value("state", ""), "running") << j.dump();
  EXPECT_EQ(j.value("runs", 0), 2) << j.dump();
  EXPECT_EQ(j.value("host_id", ""), "host-a") << j.dump();
  EXPECT_EQ(CountQemuMentioning(work), 2);

  // status without a job id lists both jobs with their states.
  nlohmann::json list = customer({"status"});
  ASSERT_EQ(list["jobs"].size(), 2u) << list.dump();
  for (const auto& entry : list["jobs"]) EXPECT_EQ(entry.value("state", ""), "running");

  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  int status = 0;
  auto stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < stop_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ASSERT_EQ(done, pid) << "the demo did not stop within 180 s";
  reaper.pid = 0;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << Slurp(log);
  EXPECT_EQ(CountQemuMentioning(work), 0);
  // Nothing keeps running: no service, TPM or VM refers to the demo's dir.
  EXPECT_EQ(CountProcessesMentioning(work), 0);
  // The decrypted disks are gone with the VMs.
  EXPECT_EQ(CountHostDisks(work), 0);
}

}  // namespace
}  // namespace vmseal
