#include "store/fs_store.h"

#include <sys/wait.h>
#include <unistd.h>

#include "store/internal/object_store_suite.h"
#include "testing/fault_env.h"
#include "testing/test_util.h"

namespace vmseal::store {
namespace {

using ::vmseal::store::testing::ObjectStoreTest;
using ::vmseal::store::testing::Pattern;
using ::vmseal::store::testing::StoreFactory;
using ::vmseal::testing::ListDir;
using ::vmseal::testing::TempDir;

INSTANTIATE_TEST_SUITE_P(
    Fs, ObjectStoreTest,
    ::testing::Values(StoreFactory{
        "fs",
        [](const std::string& dir) -> StatusOr<std::unique_ptr<ObjectStore>> {
          FsObjectStore::Options o;
          o.root = dir + "/store";
          ASSIGN_OR_RETURN(auto s, FsObjectStore::Create(o));
          return std::unique_ptr<ObjectStore>(std::move(s));
        },
        0}),
    [](const auto& param_info) { return param_info.param.name; });

StatusOr<std::unique_ptr<FsObjectStore>> Open(const std::string& root, Env* env = nullptr) {
  FsObjectStore::Options o;
  o.root = root;
  o.env = env;
  return FsObjectStore::Create(o);
}

// A reader that kills the process after handing out `bytes` (a crash mid-upload).
class CrashingReader final : public Reader {
 public:
  explicit CrashingReader(size_t bytes) : left_(bytes) {}
  StatusOr<size_t> Read(std::span<uint8_t> out) override {
    if (left_ == 0) ::_exit(3);
    size_t n = std::min(out.size(), left_);
    std::fill(out.begin(), out.begin() + n, uint8_t{7});
    left_ -= n;
    return n;
  }

 private:
  size_t left_;
};

TEST(FsObjectStoreTest, CrashMidUploadLeavesNothingVisibleAndIsSweptOnOpen) {
  TempDir dir;
  const std::string root = dir.File("store");
  {
    auto store = Open(root);
    ASSERT_OK(store);
    ASSERT_OK((*store)->Put("keep", *std::make_unique<StringReader>("kept"), {}));
  }
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto store = Open(root);
    if (!store.ok()) ::_exit(1);
    CrashingReader crash(3 << 20);
    (void)(*store)->Put("keep", crash, {});
    ::_exit(2);  // unreachable: the reader exits first
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 3);
  EXPECT_EQ(ListDir(root + "/data").size(), 2u);  // the object and the crashed temp

  auto store = Open(root);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->swept_files_for_testing(), 1);
  EXPECT_EQ(ListDir(root + "/data").size(), 1u);
  auto info = (*store)->Stat("keep");
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 4u);
}

TEST(FsObjectStoreTest, UnreferencedDataFileIsSweptOnOpen) {
  TempDir dir;
  const std::string root = dir.File("store");
  ASSERT_OK(Open(root));
  // A data file renamed into place whose meta/ write never happened.
  ::vmseal::testing::WriteFileOrDie(root + "/data/orphan.0123", "bytes");
  auto store = Open(root);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->swept_files_for_testing(), 1);
  EXPECT_TRUE(ListDir(root + "/data").empty());
}

TEST(FsObjectStoreTest, FullDiskFailsPutAndLeavesNoFile) {
  TempDir dir;
  ::vmseal::testing::FaultEnv env;
  auto store = Open(dir.File("store"), &env);
  ASSERT_OK(store);
  env.FailWritesAfter(1000);
  std::string data = Pattern(5000);
  StringReader r(data);
  EXPECT_STATUS((*store)->Put("big", r, {}), StatusCode::kResourceExhausted, "no space");
  EXPECT_TRUE(ListDir(dir.File("store/data")).empty());
  EXPECT_TRUE(ListDir(dir.File("store/meta")).empty());
}

TEST(FsObjectStoreTest, OpenReaderKeepsOldContentAfterReplace) {
  TempDir dir;
  auto store = Open(dir.File("store"));
  ASSERT_OK(store);
  StringReader v1("version-one");
  ASSERT_OK((*store)->Put("k", v1, {}));
  auto f = (*store)->Get("k");
  ASSERT_OK(f);
  StringReader v2("version-two!");
  ASSERT_OK((*store)->Put("k", v2, {}));
  std::string buf(11, '\0');
  auto n = (*f)->Read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), 11));
  ASSERT_OK(n);
  EXPECT_EQ(buf, "version-one");
  EXPECT_EQ(ListDir(dir.File("store/data")).size(), 1u);  // old bytes unlinked
}

TEST(FsObjectStoreTest, ObjectsSurviveReopen) {
  TempDir dir;
  {
    auto store = Open(dir.File("store"));
    ASSERT_OK(store);
    StringReader r("persist");
    ASSERT_OK((*store)->Put("p/q", r, {}));
  }
  auto store = Open(dir.File("store"));
  ASSERT_OK(store);
  auto list = (*store)->List("p/");
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].sha256_hex.size(), 64u);
}

TEST(FsObjectStoreTest, EmptyRootIsRejected) {
  EXPECT_STATUS(Open(""), StatusCode::kInvalidArgument, "root");
}

}  // namespace
}  // namespace vmseal::store
