#include "store/fs_store.h"

#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctime>
#include <map>

#include "crypto/primitives.h"
#include "store/internal/object_store_suite.h"
#include "store/upload_sessions.h"
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
        0,
        [](const std::string& dir) -> StatusOr<std::unique_ptr<ObjectStore>> {
          FsObjectStore::Options o;
          o.root = dir + "/store";
          ASSIGN_OR_RETURN(auto s, FsObjectStore::Create(o));
          return std::unique_ptr<ObjectStore>(std::move(s));
        }}),
    [](const auto& param_info) { return param_info.param.name; });

// Sweeps leftovers at once unless `sweep_min_age_seconds` says otherwise.
StatusOr<std::unique_ptr<FsObjectStore>> Open(const std::string& root, Env* env = nullptr,
                                              int64_t sweep_min_age_seconds = 0) {
  FsObjectStore::Options o;
  o.root = root;
  o.env = env;
  o.sweep_min_age_seconds = sweep_min_age_seconds;
  return FsObjectStore::Create(o);
}

// The files directly under `dir` with their inode numbers.
std::map<std::string, ino_t> Inodes(const std::string& dir) {
  std::map<std::string, ino_t> out;
  for (const std::string& name : ListDir(dir)) {
    struct stat st;
    if (::stat((dir + "/" + name).c_str(), &st) == 0) out[name] = st.st_ino;
  }
  return out;
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

// The commit of an upload moves the staged file into the store: the
// published object is the same inode the appends wrote (no byte copied).
TEST(FsObjectStoreTest, PublishingAStagedUploadRenamesItWithoutACopy) {
  TempDir dir;
  const std::string root = dir.File("store");
  auto store = Open(root);
  ASSERT_OK(store);
  auto sessions = UploadSessions::Create({dir.File("scratch")}, store->get());
  ASSERT_OK(sessions);
  const std::string data = Pattern(3 << 20);
  auto s = (*sessions)->Begin("img/renamed", {});
  ASSERT_OK(s);
  StringReader r(data);
  ASSERT_OK((*sessions)->Append(s->id, 0, r));
  const auto staged = Inodes(root + "/staging");
  ASSERT_EQ(staged.count(s->id + ".part"), 1u);
  const ino_t inode = staged.at(s->id + ".part");
  ASSERT_OK((*sessions)->Commit(s->id, crypto::HexEncode(crypto::Sha256(data))));
  const auto published = Inodes(root + "/data");
  ASSERT_EQ(published.size(), 1u);
  EXPECT_EQ(published.begin()->second, inode);
  EXPECT_TRUE(ListDir(root + "/staging").empty());
  EXPECT_EQ((*sessions)->rehashed_commits_for_testing(), 0u);
}

// Two replicas on one directory: while one appends to a staging, the other
// cannot append to it, seal it or publish it (flock on the staged file).
TEST(FsObjectStoreTest, AStagingBeingAppendedByAnotherReplicaIsBusy) {
  TempDir dir;
  auto a = Open(dir.File("store"));
  auto b = Open(dir.File("store"));
  ASSERT_OK(a);
  ASSERT_OK(b);
  const std::string id(32, 'c');
  ASSERT_OK((*a)->StageCreate(id, "img/busy", "{}"));
  // A source that, half way, has replica B try the same staging.
  class Interleaving final : public Reader {
   public:
    Interleaving(ObjectStore* other, std::string id) : other_(other), id_(std::move(id)) {}
    StatusOr<size_t> Read(std::span<uint8_t> out) override {
      if (calls_++ == 1) {
        StringReader r("intruder");
        EXPECT_STATUS(other_->StageAppend(id_, 5, r, 0, nullptr), StatusCode::kAborted, "busy");
        EXPECT_STATUS(other_->StageSeal(id_), StatusCode::kAborted, "busy");
        EXPECT_STATUS(other_->StagePublish(id_, std::string(64, '0')), StatusCode::kAborted,
                      "busy");
      }
      if (calls_ > 3) return size_t{0};
      const size_t n = std::min<size_t>(out.size(), 5);
      std::fill_n(out.begin(), n, uint8_t{'x'});
      return n;
    }

   private:
    ObjectStore* const other_;
    const std::string id_;
    int calls_ = 0;
  } source(b->get(), id);
  auto size = (*a)->StageAppend(id, 0, source, 0, nullptr);
  ASSERT_OK(size);
  EXPECT_EQ(*size, 15u);
  auto info = (*b)->StageStat(id);
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 15u);
}

// A data file another replica has just renamed into data/ (its meta/ not
// yet written) is left by a replica that opens the store; an old one is a
// crash's leftover and is swept.
TEST(FsObjectStoreTest, TheSweepLeavesAFreshUnreferencedDataFileToItsWriter) {
  TempDir dir;
  const std::string root = dir.File("store");
  ASSERT_OK(Open(root));
  ::vmseal::testing::WriteFileOrDie(root + "/data/fresh.0123", "bytes");
  auto store = Open(root, nullptr, /*sweep_min_age_seconds=*/900);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->swept_files_for_testing(), 0);
  EXPECT_EQ(ListDir(root + "/data").size(), 1u);
  struct timeval old[2] = {{::time(nullptr) - 3600, 0}, {::time(nullptr) - 3600, 0}};
  ASSERT_EQ(::utimes((root + "/data/fresh.0123").c_str(), old), 0);
  store = Open(root, nullptr, /*sweep_min_age_seconds=*/900);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->swept_files_for_testing(), 1);
  EXPECT_TRUE(ListDir(root + "/data").empty());
}

TEST(FsObjectStoreTest, EmptyRootIsRejected) {
  EXPECT_STATUS(Open(""), StatusCode::kInvalidArgument, "root");
}

}  // namespace
}  // namespace vmseal::store
