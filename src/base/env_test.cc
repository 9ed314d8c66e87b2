#include "base/env.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "testing/fault_env.h"
#include "testing/test_util.h"

namespace vmseal {
namespace {

using ::vmseal::testing::ListDir;
using ::vmseal::testing::TempDir;

TEST(EnvTest, AtomicWritePublishesContentWithMode) {
  TempDir dir;
  std::string path = dir.File("key.pem");
  ASSERT_OK(WriteStringToFileAtomic(Env::Default(), path, "secret", 0600));
  auto content = ReadFileToString(Env::Default(), path);
  ASSERT_OK(content);
  EXPECT_EQ(*content, "secret");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ListDir(dir.path()).size(), 1u);
}

TEST(EnvTest, UncommittedOutputLeavesNothing) {
  TempDir dir;
  {
    auto out = AtomicOutputFile::Create(Env::Default(), dir.File("out"), 0644);
    ASSERT_OK(out);
    ASSERT_OK((*out)->file()->Append({reinterpret_cast<const uint8_t*>("abc"), 3}));
  }
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(EnvTest, FullDiskFailsAndLeavesNothing) {
  TempDir dir;
  testing::FaultEnv env;
  env.FailWritesAfter(2);
  Status s = WriteStringToFileAtomic(&env, dir.File("out"), "abcdef", 0644);
  EXPECT_STATUS(s, StatusCode::kResourceExhausted, "no space left");
  EXPECT_TRUE(ListDir(dir.path()).empty());
}

TEST(EnvTest, TrailingSkipExtendsFileWithZeros) {
  TempDir dir;
  auto f = Env::Default()->NewWritableFile(dir.File("sparse"), 0644);
  ASSERT_OK(f);
  ASSERT_OK((*f)->Append({reinterpret_cast<const uint8_t*>("x"), 1}));
  ASSERT_OK((*f)->Skip(4095));
  ASSERT_OK((*f)->Close());
  auto content = ReadFileToString(Env::Default(), dir.File("sparse"));
  ASSERT_OK(content);
  EXPECT_EQ(content->size(), 4096u);
  EXPECT_EQ((*content)[4095], '\0');
}

TEST(EnvTest, MissingFileIsNotFound) {
  EXPECT_STATUS(ReadFileToString(Env::Default(), "/nonexistent/x"), StatusCode::kNotFound,
                "/nonexistent/x");
}

}  // namespace
}  // namespace vmseal
