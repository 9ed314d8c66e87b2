// `vmseal host ...` as a process: config skeleton, config errors, the local
// VM list, and `serve` stopping cleanly on SIGTERM (on swtpm, with the KMS
// and the portal unreachable so that it sits in its start-up retry loop).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/env.h"
#include "kms/internal/mini_ca.h"
#include "testing/test_util.h"
#include "tpm/testing/swtpm_harness.h"

extern char** environ;

namespace vmseal::host {
namespace {

using json = nlohmann::json;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

json Config(const TempDir& dir) {
  return {{"portal_url", "https://127.0.0.1:1"},
          {"kms_url", "https://127.0.0.1:1"},
          {"ca_file", dir.File("ca.pem")},
          {"cert_file", dir.File("host.pem")},
          {"key_file", dir.File("host-key.pem")},
          {"tpm_tcti", "swtpm:path=/nonexistent"},
          {"state_dir", dir.File("st")},
          {"image_store_dir", dir.File("im")},
          {"accel", "tcg"}};
}

TEST(HostCliTest, InitWritesASkeletonOnceAndServeNamesABadKey) {
  TempDir dir;
  const std::string config = dir.File("host.json");
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "host", "init", "--config", config, "--root", "/srv/h"},
                       &out),
            0)
      << out;
  json skeleton = json::parse(ReadFileOrDie(config));
  EXPECT_EQ(skeleton["state_dir"], "/srv/h/state");
  EXPECT_EQ(RunCommand({VmsealBinary(), "host", "init", "--config", config}, &out), 5);
  EXPECT_NE(out.find("not overwritten"), std::string::npos) << out;

  json bad = Config(dir);
  bad.erase("tpm_tcti");
  WriteFileOrDie(config, bad.dump());
  EXPECT_EQ(RunCommand({VmsealBinary(), "host", "serve", "--config", config}, &out), 3);
  EXPECT_NE(out.find("'tpm_tcti' is required"), std::string::npos) << out;
}

TEST(HostCliTest, VmsListsAnEmptyImageStore) {
  TempDir dir;
  const std::string config = dir.File("host.json");
  WriteFileOrDie(config, Config(dir).dump());
  ::mkdir(dir.File("im").c_str(), 0700);
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "host", "vms", "--config", config}, &out), 0) << out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "host", "delete", "--config", config, "vm-x"}, &out), 5);
  EXPECT_NE(out.find("vm-x"), std::string::npos) << out;
}

// Issue 17: every command takes --json; the host group's local commands
// print one JSON object.
TEST(HostCliTest, LocalCommandsPrintJsonWithJson) {
  TempDir dir;
  const std::string skeleton = dir.File("skeleton.json");
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "host", "init", "--config", skeleton, "--root", "/srv/h",
                        "--json"},
                       &out),
            0)
      << out;
  json init = json::parse(out, nullptr, false);
  ASSERT_TRUE(init.is_object()) << out;
  EXPECT_EQ(init["config"], skeleton);
  EXPECT_EQ(init["written"], true);

  const std::string config = dir.File("host.json");
  WriteFileOrDie(config, Config(dir).dump());
  ::mkdir(dir.File("im").c_str(), 0700);
  ASSERT_EQ(RunCommand({VmsealBinary(), "host", "vms", "--config", config, "--json"}, &out), 0) << out;
  json vms = json::parse(out, nullptr, false);
  ASSERT_TRUE(vms.is_object()) << out;
  EXPECT_TRUE(vms["vms"].is_array());
  EXPECT_TRUE(vms["vms"].empty());
  ASSERT_EQ(RunCommand({VmsealBinary(), "host", "delete", "--config", config, "--all", "--json"}, &out),
            0)
      << out;
  json deleted = json::parse(out, nullptr, false);
  ASSERT_TRUE(deleted.is_object()) << out;
  EXPECT_TRUE(deleted["deleted"].is_array());
  // A failure is the usual one-line error and exit code, no JSON.
  EXPECT_EQ(RunCommand({VmsealBinary(), "host", "stop", "--config", config, "vm-x", "--json"}, &out), 5);
  EXPECT_NE(out.find("vm-x"), std::string::npos) << out;
}

TEST(HostCliTest, ServeStopsCleanlyOnSigterm) {
  TempDir dir;
  auto swtpm = tpm::testing::Swtpm::Start({.parent_dir = dir.path()});
  ASSERT_OK(swtpm);
  auto ca = kms::internal::CreateRootCa("cli ca", 1);
  ASSERT_OK(ca);
  auto id = kms::internal::IssueLeaf(*ca, {.common_name = "host-9", .organizational_unit = "host"});
  ASSERT_OK(id);
  WriteFileOrDie(dir.File("ca.pem"), ca->cert_pem);
  WriteFileOrDie(dir.File("host.pem"), id->cert_pem);
  ASSERT_OK(WriteStringToFileAtomic(
      Env::Default(), dir.File("host-key.pem"),
      std::string(reinterpret_cast<const char*>(id->key_pem.UnsafeData()), id->key_pem.size()),
      0600));
  json c = Config(dir);
  c["tpm_tcti"] = (*swtpm)->tcti();
  WriteFileOrDie(dir.File("host.json"), c.dump());

  const std::string bin = VmsealBinary();
  const std::string cfg = dir.File("host.json");
  const std::string log = dir.File("serve.log");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> argv = {const_cast<char*>(bin.c_str()), const_cast<char*>("host"),
                             const_cast<char*>("serve"), const_cast<char*>("--config"),
                             const_cast<char*>(cfg.c_str()), const_cast<char*>("--json"), nullptr};
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&fa);

  // Wait until it is up and retrying start-up (KMS unreachable).
  int status = 0;
  pid_t done = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline &&
         ReadFileOrDie(log).find("start-up failed") == std::string::npos &&
         (done = ::waitpid(pid, &status, WNOHANG)) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(done, 0) << "serve exited early: " << ReadFileOrDie(log);
  EXPECT_NE(ReadFileOrDie(log).find("start-up failed"), std::string::npos) << ReadFileOrDie(log);
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline &&
         (done = ::waitpid(pid, &status, WNOHANG)) == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (done == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL() << "serve did not stop on SIGTERM";
  }
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << ReadFileOrDie(log);
  EXPECT_NE(ReadFileOrDie(log).find("host agent stopping"), std::string::npos);
  EXPECT_NE(ReadFileOrDie(log).find("\"stopped\": true"), std::string::npos) << ReadFileOrDie(log);
  // The TPM keys were created and persisted under the state dir.
  EXPECT_FALSE(vmseal::testing::ListDir(dir.File("st") + "/tpm").empty());
}

}  // namespace
}  // namespace vmseal::host
