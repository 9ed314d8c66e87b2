#include "demo/internal/subprocess.h"

#include <gtest/gtest.h>

#include <fstream>

#include "testing/test_util.h"

namespace vmseal::demo::internal {
namespace {

TEST(RunCommandTest, CapturesStdoutAndExitCode) {
  auto r = RunCommand({"sh", "-c", "echo hello; echo oops >&2; exit 3"}, 5000, {},
                      "/dev/null");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->out, "hello\n");
  EXPECT_EQ(r->exit_code, 3);
}

TEST(RunCommandTest, PassesExtraEnvironment) {
  auto r = RunCommand({"sh", "-c", "printf %s \"$DEMO_X\""}, 5000, {{"DEMO_X", "42"}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->out, "42");
}

TEST(RunCommandTest, KillsOnTimeout) {
  auto r = RunCommand({"sleep", "30"}, 300);
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded);
}

TEST(RunCommandTest, UnknownProgramIsAnError) {
  EXPECT_FALSE(RunCommand({"/nonexistent/vmseal-nope"}, 1000).ok());
}

TEST(ServiceTest, WaitsForFileAndStopsByPid) {
  vmseal::testing::TempDir dir;
  auto s = Service::Start("writer", {"sh", "-c", "sleep 0.2; echo 1234 > " + dir.File("port") +
                                                     "; exec sleep 60"},
                          dir.File("log"));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto port = (*s)->WaitForFile(dir.File("port"), 5000);
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  EXPECT_EQ(*port, "1234");
  EXPECT_TRUE((*s)->Alive());
  pid_t pid = (*s)->pid();
  (*s)->Stop(2000);
  EXPECT_FALSE((*s)->Alive());
  EXPECT_NE(::kill(pid, 0), 0);
}

TEST(ServiceTest, ReportsEarlyDeathWithLogTail) {
  vmseal::testing::TempDir dir;
  auto s = Service::Start("crasher", {"sh", "-c", "echo broken config; exit 7"}, dir.File("log"));
  ASSERT_TRUE(s.ok());
  auto port = (*s)->WaitForFile(dir.File("never"), 5000);
  ASSERT_EQ(port.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(port.status().message().find("exit status 7"), std::string::npos);
  EXPECT_NE(port.status().message().find("broken config"), std::string::npos);
}

}  // namespace
}  // namespace vmseal::demo::internal
