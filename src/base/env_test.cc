#include "base/env.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

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

// Large reads skip holes (SEEK_DATA); whatever the file system does, every
// read must return exactly the file's bytes, holes as zeros.
TEST(EnvTest, LargeReadsOfASparseFileMatchItsBytes) {
  TempDir dir;
  const std::string path = dir.File("sparse.img");
  const size_t size = (size_t{3} << 20) + 5000;  // ends inside a hole
  std::vector<uint8_t> want(size, 0);
  struct Extent { size_t at, len; };
  const Extent extents[] = {{0, 100 << 10}, {(1 << 20) + 3000, 70000}, {(2 << 20) + 4096, 8192}};
  uint8_t v = 1;
  for (const Extent& e : extents) {
    for (size_t i = 0; i < e.len; ++i) want[e.at + i] = v = static_cast<uint8_t>(v * 33 + 7) | 1;
  }
  {
    auto f = Env::Default()->NewWritableFile(path, 0644);
    ASSERT_OK(f);
    size_t pos = 0;
    for (const Extent& e : extents) {
      ASSERT_OK((*f)->Skip(e.at - pos));
      ASSERT_OK((*f)->Append({want.data() + e.at, e.len}));
      pos = e.at + e.len;
    }
    ASSERT_OK((*f)->Skip(size - pos));
    ASSERT_OK((*f)->Close());
  }
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_EQ(static_cast<size_t>(st.st_size), size);
  std::printf("sparse test file: %lld of %zu bytes allocated\n",
              static_cast<long long>(st.st_blocks) * 512, size);

  auto file = Env::Default()->NewRandomAccessFile(path);
  ASSERT_OK(file);
  const size_t kMiB = size_t{1} << 20;
  const std::pair<size_t, size_t> reads[] = {
      {0, kMiB},                       // data then hole
      {kMiB, kMiB},                    // hole, data, hole
      {50 << 10, 2 * kMiB},            // starts in data, spans two extents
      {(1 << 20) + 3000 + 100, 65536}, // inside data
      {(2 << 20) + 100, kMiB},         // hole, data, trailing hole to EOF
      {size - 70000, kMiB},            // past the end: short read
      {3 * kMiB + 4096, kMiB},         // only trailing hole
      {size, kMiB},                    // at the end: nothing
  };
  for (const auto& [off, len] : reads) {
    std::vector<uint8_t> got(len, 0xee);
    auto n = (*file)->Read(off, {got.data(), got.size()});
    ASSERT_OK(n);
    const size_t expect_n = off >= size ? 0 : std::min(len, size - off);
    ASSERT_EQ(*n, expect_n) << "read at " << off;
    EXPECT_TRUE(std::equal(got.begin(), got.begin() + static_cast<long>(expect_n),
                           want.begin() + static_cast<long>(std::min(off, size))))
        << "read at " << off << " of " << len;
    if (expect_n < len) {
      EXPECT_EQ(got[expect_n], 0xee) << "wrote past the end, read at " << off;
    }
  }
}

TEST(EnvTest, MissingFileIsNotFound) {
  EXPECT_STATUS(ReadFileToString(Env::Default(), "/nonexistent/x"), StatusCode::kNotFound,
                "/nonexistent/x");
}


// Counts the durability calls an AtomicOutputFile makes (file fdatasync,
// directory fsync) and can make the publishing rename fail; everything else
// is the real POSIX Env.
class SyncCountingEnv final : public Env {
 public:
  int file_syncs = 0;
  int dir_syncs = 0;
  bool fail_rename = false;

  StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    return Env::Default()->NewRandomAccessFile(path);
  }
  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                          mode_t mode) override {
    ASSIGN_OR_RETURN(auto f, Env::Default()->NewWritableFile(path, mode));
    return std::unique_ptr<WritableFile>(new Counting(std::move(f), &file_syncs));
  }
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path,
                                                           mode_t mode) override {
    ASSIGN_OR_RETURN(auto f, Env::Default()->NewExclusiveFile(path, mode));
    return std::unique_ptr<WritableFile>(new Counting(std::move(f), &file_syncs));
  }
  Status RenameFile(const std::string& from, const std::string& to) override {
    if (fail_rename) return UnavailableError("rename refused by the test");
    return Env::Default()->RenameFile(from, to);
  }
  Status RemoveFile(const std::string& path) override { return Env::Default()->RemoveFile(path); }
  bool FileExists(const std::string& path) override { return Env::Default()->FileExists(path); }
  Status SyncDir(const std::string& dir) override {
    ++dir_syncs;
    return Env::Default()->SyncDir(dir);
  }

 private:
  class Counting final : public WritableFile {
   public:
    Counting(std::unique_ptr<WritableFile> f, int* syncs) : f_(std::move(f)), syncs_(syncs) {}
    Status Append(std::span<const uint8_t> data) override { return f_->Append(data); }
    Status Skip(uint64_t bytes) override { return f_->Skip(bytes); }
    Status Sync() override {
      ++*syncs_;
      return f_->Sync();
    }
    Status Close() override { return f_->Close(); }

   private:
    std::unique_ptr<WritableFile> f_;
    int* const syncs_;
  };
};

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// CommitWithoutSync (the host's fetched ciphertext package) guarantees what
// Commit does while the machine runs: the path shows the old content or the
// whole new one, with the temp file's mode, and nothing else is left in the
// directory. It does not make anything durable: no fdatasync of the file,
// no fsync of the directory (after a power loss the path may hold the old
// file, nothing, or a short new file; its reader must check the content).
TEST(EnvTest, CommitWithoutSyncPublishesAtomicallyButSyncsNothing) {
  TempDir dir;
  SyncCountingEnv env;
  const std::string path = dir.File("pkg");
  ASSERT_OK(WriteStringToFileAtomic(Env::Default(), path, "old", 0600));
  auto out = AtomicOutputFile::Create(&env, path, 0600);
  ASSERT_OK(out);
  ASSERT_OK((*out)->file()->Append(Bytes("new content, ")));
  ASSERT_OK((*out)->file()->Append(Bytes("whole")));
  // Until the commit the reader sees the old file, and the temp file beside it.
  EXPECT_EQ(testing::ReadFileOrDie(path), "old");
  EXPECT_EQ(ListDir(dir.path()).size(), 2u);
  ASSERT_OK((*out)->CommitWithoutSync());
  EXPECT_EQ(testing::ReadFileOrDie(path), "new content, whole");
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"pkg"});
  EXPECT_EQ(env.file_syncs, 0);
  EXPECT_EQ(env.dir_syncs, 0);
  // Once only, and the object's end removes nothing that was published.
  EXPECT_STATUS((*out)->CommitWithoutSync(), StatusCode::kFailedPrecondition, "already committed");
  EXPECT_STATUS((*out)->Commit(), StatusCode::kFailedPrecondition, "already committed");
  out->reset();
  EXPECT_EQ(testing::ReadFileOrDie(path), "new content, whole");

  // The counting Env sees the syncs of the durable Commit (so the zeros
  // above are not the Env's blindness).
  auto durable = AtomicOutputFile::Create(&env, dir.File("durable"), 0600);
  ASSERT_OK(durable);
  ASSERT_OK((*durable)->file()->Append(Bytes("x")));
  ASSERT_OK((*durable)->Commit());
  EXPECT_EQ(env.file_syncs, 1);
  EXPECT_EQ(env.dir_syncs, 1);
}

TEST(EnvTest, CommitWithoutSyncThatCannotRenameLeavesTheOldFileAndNoTemp) {
  TempDir dir;
  SyncCountingEnv env;
  const std::string path = dir.File("pkg");
  ASSERT_OK(WriteStringToFileAtomic(Env::Default(), path, "old", 0600));
  {
    auto out = AtomicOutputFile::Create(&env, path, 0600);
    ASSERT_OK(out);
    ASSERT_OK((*out)->file()->Append(Bytes("half")));
    env.fail_rename = true;
    EXPECT_STATUS((*out)->CommitWithoutSync(), StatusCode::kUnavailable, "rename refused");
    EXPECT_EQ(testing::ReadFileOrDie(path), "old");
  }
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"pkg"});
  EXPECT_EQ(testing::ReadFileOrDie(path), "old");
  // Without an old file: nothing at the path at all.
  {
    auto out = AtomicOutputFile::Create(&env, dir.File("fresh"), 0600);
    ASSERT_OK(out);
    ASSERT_OK((*out)->file()->Append(Bytes("half")));
    EXPECT_FALSE((*out)->CommitWithoutSync().ok());
  }
  EXPECT_FALSE(Env::Default()->FileExists(dir.File("fresh")));
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"pkg"});
}

}  // namespace
}  // namespace vmseal
