#include "store/internal/object_store_suite.h"

#include <algorithm>
#include <cstring>

#include "crypto/primitives.h"
#include "store/upload_sessions.h"
#include "testing/test_util.h"

namespace vmseal::store::testing {

StatusOr<size_t> BrokenReader::Read(std::span<uint8_t> out) {
  if (left_ == 0) return UnavailableError("connection reset");
  size_t n = std::min({out.size(), left_, data_.size()});
  std::memcpy(out.data(), data_.data(), n);
  data_.remove_prefix(n);
  left_ -= n;
  return n;
}

std::string Pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

namespace {

using ::vmseal::testing::TempDir;

std::string ReadAll(const RandomAccessFile& f) {
  auto size = f.Size();
  EXPECT_OK(size);
  std::string out(size.ok() ? *size : 0, '\0');
  size_t done = 0;
  while (done < out.size()) {
    auto n = f.Read(done, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()) + done,
                                             std::min<size_t>(out.size() - done, 3 << 20)));
    EXPECT_OK(n);
    if (!n.ok() || *n == 0) break;
    done += *n;
  }
  return out;
}

class Fixture {
 public:
  explicit Fixture(const StoreFactory& f) {
    auto s = f.make(dir_.path());
    EXPECT_OK(s);
    if (s.ok()) store_ = std::move(s).value();
  }
  ObjectStore* store() { return store_.get(); }
  const TempDir& dir() const { return dir_; }

 private:
  TempDir dir_;
  std::unique_ptr<ObjectStore> store_;
};

StatusOr<ObjectInfo> PutString(ObjectStore* s, const std::string& key, std::string_view data,
                               uint64_t quota = 0) {
  StringReader r(data);
  PutOptions o;
  o.max_size_bytes = quota;
  return s->Put(key, r, o);
}

TEST_P(ObjectStoreTest, RoundTripsContentOfEverySize) {
  Fixture fx(GetParam());
  ASSERT_NE(fx.store(), nullptr);
  std::vector<size_t> sizes = {0, 1, 4096};
  if (uint64_t p = GetParam().part_size_bytes) {
    sizes.insert(sizes.end(), {p - 1, p, p + 1, 2 * p + 7});
  } else {
    sizes.insert(sizes.end(), {(1u << 20) - 1, (1u << 20) + 1, (3u << 20) + 5});
  }
  for (size_t n : sizes) {
    SCOPED_TRACE(n);
    std::string data = Pattern(n, static_cast<uint8_t>(n));
    auto info = PutString(fx.store(), "obj/" + std::to_string(n), data);
    ASSERT_OK(info);
    EXPECT_EQ(info->size_bytes, n);
    EXPECT_EQ(info->sha256_hex, crypto::HexEncode(crypto::Sha256(data)));
    auto f = fx.store()->Get("obj/" + std::to_string(n));
    ASSERT_OK(f);
    EXPECT_EQ(ReadAll(**f), data);
  }
}

TEST_P(ObjectStoreTest, StatReportsSizeAndSha256) {
  Fixture fx(GetParam());
  ASSERT_OK(PutString(fx.store(), "a/b", "hello"));
  auto info = fx.store()->Stat("a/b");
  ASSERT_OK(info);
  EXPECT_EQ(info->key, "a/b");
  EXPECT_EQ(info->size_bytes, 5u);
  EXPECT_EQ(info->sha256_hex,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
}

TEST_P(ObjectStoreTest, RangedReadReturnsTheSlice) {
  Fixture fx(GetParam());
  std::string data = Pattern(100000);
  ASSERT_OK(PutString(fx.store(), "r", data));
  auto f = fx.store()->Get("r");
  ASSERT_OK(f);
  std::string buf(1000, '\0');
  auto n = (*f)->Read(54321, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), 1000));
  ASSERT_OK(n);
  EXPECT_EQ(*n, 1000u);
  EXPECT_EQ(buf, data.substr(54321, 1000));
}

TEST_P(ObjectStoreTest, ReadAtTheEndIsShortThenZero) {
  Fixture fx(GetParam());
  ASSERT_OK(PutString(fx.store(), "r", "0123456789"));
  auto f = fx.store()->Get("r");
  ASSERT_OK(f);
  std::string buf(8, '\0');
  std::span<uint8_t> out(reinterpret_cast<uint8_t*>(buf.data()), buf.size());
  auto n = (*f)->Read(6, out);
  ASSERT_OK(n);
  EXPECT_EQ(*n, 4u);
  EXPECT_EQ(buf.substr(0, 4), "6789");
  auto z = (*f)->Read(10, out);
  ASSERT_OK(z);
  EXPECT_EQ(*z, 0u);
}

TEST_P(ObjectStoreTest, GetOfMissingObjectIsNotFound) {
  Fixture fx(GetParam());
  EXPECT_STATUS(fx.store()->Get("nope"), StatusCode::kNotFound, "no object");
  EXPECT_STATUS(fx.store()->Stat("nope"), StatusCode::kNotFound, "no object");
}

TEST_P(ObjectStoreTest, DeleteRemovesTheObject) {
  Fixture fx(GetParam());
  ASSERT_OK(PutString(fx.store(), "d", "x"));
  ASSERT_OK(fx.store()->Delete("d"));
  EXPECT_STATUS(fx.store()->Stat("d"), StatusCode::kNotFound, "no object");
  auto list = fx.store()->List("");
  ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
}

TEST_P(ObjectStoreTest, DeleteOfMissingObjectIsNotFound) {
  Fixture fx(GetParam());
  EXPECT_STATUS(fx.store()->Delete("d"), StatusCode::kNotFound, "no object");
}

TEST_P(ObjectStoreTest, ListFiltersByPrefixAndSorts) {
  Fixture fx(GetParam());
  for (const char* k : {"t1/b", "t2/a", "t1/a", "t10/c"}) ASSERT_OK(PutString(fx.store(), k, k));
  auto list = fx.store()->List("t1/");
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].key, "t1/a");
  EXPECT_EQ((*list)[1].key, "t1/b");
  EXPECT_EQ((*list)[1].size_bytes, 4u);
  auto all = fx.store()->List("");
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), 4u);
}

TEST_P(ObjectStoreTest, PutOverQuotaFailsAndPublishesNothing) {
  Fixture fx(GetParam());
  uint64_t p = GetParam().part_size_bytes;
  size_t n = p != 0 ? 2 * p + 1 : 3000;  // crosses a part for multipart backends
  std::string data = Pattern(n);
  EXPECT_STATUS(PutString(fx.store(), "q", data, n - 1), StatusCode::kResourceExhausted, "quota");
  EXPECT_STATUS(fx.store()->Stat("q"), StatusCode::kNotFound, "no object");
  ASSERT_OK(PutString(fx.store(), "q", data, n));
}

TEST_P(ObjectStoreTest, FailedSourceKeepsThePreviousObject) {
  Fixture fx(GetParam());
  ASSERT_OK(PutString(fx.store(), "k", "old"));
  uint64_t p = GetParam().part_size_bytes;
  std::string data = Pattern(p != 0 ? 2 * p : 5000);
  BrokenReader broken(data, data.size() - 10);
  EXPECT_STATUS(fx.store()->Put("k", broken, {}), StatusCode::kUnavailable, "connection reset");
  auto f = fx.store()->Get("k");
  ASSERT_OK(f);
  EXPECT_EQ(ReadAll(**f), "old");
  auto list = fx.store()->List("");
  ASSERT_OK(list);
  EXPECT_EQ(list->size(), 1u);
}

TEST_P(ObjectStoreTest, PutReplacesAnObject) {
  Fixture fx(GetParam());
  ASSERT_OK(PutString(fx.store(), "k", "first"));
  ASSERT_OK(PutString(fx.store(), "k", "second!"));
  auto info = fx.store()->Stat("k");
  ASSERT_OK(info);
  EXPECT_EQ(info->size_bytes, 7u);
  auto f = fx.store()->Get("k");
  ASSERT_OK(f);
  EXPECT_EQ(ReadAll(**f), "second!");
}

TEST_P(ObjectStoreTest, InvalidKeysAreRejected) {
  Fixture fx(GetParam());
  for (const char* k : {"", "/a", "a/", "a//b", "../x", "a/.hidden", "sp ace", "a?b", "a%2F"}) {
    SCOPED_TRACE(k);
    EXPECT_STATUS(PutString(fx.store(), k, "x"), StatusCode::kInvalidArgument, "object key");
  }
}

TEST_P(ObjectStoreTest, ResumedUploadAfterBrokenConnectionPublishesWholeObject) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("staging")}, fx.store());
  ASSERT_OK(sessions);
  std::string data = Pattern(300000);
  auto s = (*sessions)->Begin("img/1", {});
  ASSERT_OK(s);
  BrokenReader broken(data, 123457);
  EXPECT_STATUS((*sessions)->Append(s->id, 0, broken), StatusCode::kUnavailable,
                "connection reset");
  auto state = (*sessions)->Get(s->id);
  ASSERT_OK(state);
  EXPECT_EQ(state->offset_bytes, 123457u);
  EXPECT_STATUS(fx.store()->Stat("img/1"), StatusCode::kNotFound, "no object");
  StringReader rest(std::string_view(data).substr(state->offset_bytes));
  ASSERT_OK((*sessions)->Append(s->id, state->offset_bytes, rest));
  auto info = (*sessions)->Commit(s->id, crypto::HexEncode(crypto::Sha256(data)));
  ASSERT_OK(info);
  auto f = fx.store()->Get("img/1");
  ASSERT_OK(f);
  EXPECT_EQ(ReadAll(**f), data);
  EXPECT_STATUS((*sessions)->Get(s->id), StatusCode::kNotFound, "no upload session");
}

TEST_P(ObjectStoreTest, AppendAtStaleOffsetIsRejected) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("staging")}, fx.store());
  ASSERT_OK(sessions);
  auto s = (*sessions)->Begin("img/2", {});
  ASSERT_OK(s);
  StringReader a("abc");
  ASSERT_OK((*sessions)->Append(s->id, 0, a));
  StringReader b("xyz");
  EXPECT_STATUS((*sessions)->Append(s->id, 1, b), StatusCode::kFailedPrecondition, "offset");
}

TEST_P(ObjectStoreTest, UploadCommitWithWrongDigestPublishesNothing) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("staging")}, fx.store());
  ASSERT_OK(sessions);
  auto s = (*sessions)->Begin("img/3", {});
  ASSERT_OK(s);
  StringReader a("abc");
  ASSERT_OK((*sessions)->Append(s->id, 0, a));
  EXPECT_STATUS((*sessions)->Commit(s->id, std::string(64, '0')), StatusCode::kDataLoss,
                "digest");
  EXPECT_STATUS(fx.store()->Stat("img/3"), StatusCode::kNotFound, "no object");
}

TEST_P(ObjectStoreTest, UploadOverQuotaIsRejected) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("staging")}, fx.store());
  ASSERT_OK(sessions);
  PutOptions quota;
  quota.max_size_bytes = 4;
  auto s = (*sessions)->Begin("img/4", quota);
  ASSERT_OK(s);
  StringReader a("abcde");
  EXPECT_STATUS((*sessions)->Append(s->id, 0, a), StatusCode::kResourceExhausted, "quota");
}

TEST_P(ObjectStoreTest, UploadRejectedByVerifierPublishesNothingAndEndsSession) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("staging")}, fx.store());
  ASSERT_OK(sessions);
  auto s = (*sessions)->Begin("img/5", {});
  ASSERT_OK(s);
  StringReader a("plaintext");
  ASSERT_OK((*sessions)->Append(s->id, 0, a));
  auto reject = [](const RandomAccessFile& f, const std::string&) -> Status {
    auto size = f.Size();
    if (!size.ok()) return size.status();
    return *size == 9 ? FailedPreconditionError("package is not encrypted") : OkStatus();
  };
  EXPECT_STATUS((*sessions)->Commit(s->id, "", reject), StatusCode::kFailedPrecondition,
                "not encrypted");
  EXPECT_STATUS(fx.store()->Stat("img/5"), StatusCode::kNotFound, "no object");
  EXPECT_STATUS((*sessions)->Get(s->id), StatusCode::kNotFound, "no upload session");
}

TEST_P(ObjectStoreTest, UnknownUploadSessionIsNotFound) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("staging")}, fx.store());
  ASSERT_OK(sessions);
  EXPECT_STATUS((*sessions)->Get("../../etc/passwd"), StatusCode::kNotFound, "no upload session");
  EXPECT_STATUS((*sessions)->Get(std::string(32, 'a')), StatusCode::kNotFound,
                "no upload session");
}

// Two handles on one store stand for two portal replicas: the upload begun
// through one resumes and commits through the other; the second cannot have
// hashed the first bytes and reads them back once, at commit.
TEST_P(ObjectStoreTest, AnUploadBegunThroughOneReplicaResumesAndCommitsThroughAnother) {
  Fixture fx(GetParam());
  ASSERT_TRUE(GetParam().reopen);
  auto other = GetParam().reopen(fx.dir().path());
  ASSERT_OK(other);
  auto a = UploadSessions::Create({fx.dir().File("scratch-a")}, fx.store());
  auto b = UploadSessions::Create({fx.dir().File("scratch-b")}, other->get());
  ASSERT_OK(a);
  ASSERT_OK(b);
  // Over two parts of a multipart backend, broken inside the second.
  const uint64_t part = std::max<uint64_t>(GetParam().part_size_bytes, 1 << 20);
  const std::string data = Pattern(2 * part + 4321, 7);
  auto s = (*a)->Begin("img/replicated", {});
  ASSERT_OK(s);
  BrokenReader broken(data, part + 777);
  EXPECT_STATUS((*a)->Append(s->id, 0, broken), StatusCode::kUnavailable, "connection reset");
  auto state = (*b)->Get(s->id);
  ASSERT_OK(state);
  EXPECT_EQ(state->offset_bytes, part + 777);
  EXPECT_EQ(state->key, "img/replicated");
  StringReader rest(std::string_view(data).substr(state->offset_bytes));
  auto appended = (*b)->Append(s->id, state->offset_bytes, rest);
  ASSERT_OK(appended);
  EXPECT_EQ(appended->offset_bytes, data.size());
  EXPECT_STATUS(fx.store()->Stat("img/replicated"), StatusCode::kNotFound, "no object");
  auto info = (*b)->Commit(s->id, crypto::HexEncode(crypto::Sha256(data)));
  ASSERT_OK(info);
  EXPECT_EQ(info->sha256_hex, crypto::HexEncode(crypto::Sha256(data)));
  EXPECT_EQ((*b)->rehashed_commits_for_testing(), 1u);
  auto f = fx.store()->Get("img/replicated");
  ASSERT_OK(f);
  EXPECT_EQ(ReadAll(**f), data);
  auto stat = fx.store()->Stat("img/replicated");
  ASSERT_OK(stat);
  EXPECT_EQ(stat->sha256_hex, info->sha256_hex);
  EXPECT_STATUS((*a)->Get(s->id), StatusCode::kNotFound, "no upload session");
}

// Appends in several pieces through one process: the digest is the one taken
// as the bytes arrived (nothing is read back), and it is the content's.
TEST_P(ObjectStoreTest, ACommitThatSawEveryByteReadsNothingBack) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("scratch")}, fx.store());
  ASSERT_OK(sessions);
  const uint64_t part = std::max<uint64_t>(GetParam().part_size_bytes, 1 << 20);
  const std::string data = Pattern(part + part / 2 + 1, 9);
  auto s = (*sessions)->Begin("img/hashed", {});
  ASSERT_OK(s);
  uint64_t offset = 0;
  for (uint64_t piece : {uint64_t{1}, part / 3, part, uint64_t{0}}) {
    piece = piece == 0 ? data.size() - offset : piece;
    StringReader r(std::string_view(data).substr(offset, piece));
    auto appended = (*sessions)->Append(s->id, offset, r);
    ASSERT_OK(appended);
    offset = appended->offset_bytes;
  }
  ASSERT_EQ(offset, data.size());
  auto info = (*sessions)->Commit(s->id, crypto::HexEncode(crypto::Sha256(data)));
  ASSERT_OK(info);
  EXPECT_EQ((*sessions)->rehashed_commits_for_testing(), 0u);
  auto stat = fx.store()->Stat("img/hashed");
  ASSERT_OK(stat);
  EXPECT_EQ(stat->sha256_hex, crypto::HexEncode(crypto::Sha256(data)));
  EXPECT_EQ(stat->size_bytes, data.size());
  auto f = fx.store()->Get("img/hashed");
  ASSERT_OK(f);
  EXPECT_EQ(ReadAll(**f), data);
}

// While the package is checked, its bytes are complete in the store but no
// reader (another customer, a host, a replica listing) can see them; a
// refused package leaves nothing behind.
TEST_P(ObjectStoreTest, StagedBytesAreInvisibleWhileCheckedAndGoneWhenRefused) {
  Fixture fx(GetParam());
  auto sessions = UploadSessions::Create({fx.dir().File("scratch")}, fx.store());
  ASSERT_OK(sessions);
  const std::string data = Pattern(GetParam().part_size_bytes + 99, 3);
  auto s = (*sessions)->Begin("img/checked", {});
  ASSERT_OK(s);
  StringReader r(data);
  ASSERT_OK((*sessions)->Append(s->id, 0, r));
  bool checked = false;
  auto refuse = [&](const RandomAccessFile& f, const std::string& local_path) -> Status {
    checked = true;
    EXPECT_EQ(ReadAll(f), data);
    EXPECT_FALSE(local_path.empty());
    EXPECT_STATUS(fx.store()->Stat("img/checked"), StatusCode::kNotFound, "no object");
    EXPECT_STATUS(fx.store()->Get("img/checked"), StatusCode::kNotFound, "no object");
    auto listed = fx.store()->List("");
    EXPECT_OK(listed);
    if (listed.ok()) {
      EXPECT_TRUE(listed->empty());
    }
    return PermissionDeniedError("tenant_mismatch: refused");
  };
  EXPECT_STATUS((*sessions)->Commit(s->id, "", refuse), StatusCode::kPermissionDenied,
                "tenant_mismatch");
  EXPECT_TRUE(checked);
  EXPECT_STATUS(fx.store()->Stat("img/checked"), StatusCode::kNotFound, "no object");
  EXPECT_STATUS((*sessions)->Get(s->id), StatusCode::kNotFound, "no upload session");
  auto listed = fx.store()->List("");
  ASSERT_OK(listed);
  EXPECT_TRUE(listed->empty());
  // A new session under the same key starts from nothing.
  auto again = (*sessions)->Begin("img/checked", {});
  ASSERT_OK(again);
  EXPECT_EQ(again->offset_bytes, 0u);
}

TEST_P(ObjectStoreTest, AStagingCannotTakeAKeyThatHoldsAnObject) {
  Fixture fx(GetParam());
  ASSERT_OK(PutString(fx.store(), "img/taken", "old"));
  auto sessions = UploadSessions::Create({fx.dir().File("scratch")}, fx.store());
  ASSERT_OK(sessions);
  EXPECT_STATUS((*sessions)->Begin("img/taken", {}), StatusCode::kAlreadyExists, "exists");
  auto f = fx.store()->Get("img/taken");
  ASSERT_OK(f);
  EXPECT_EQ(ReadAll(**f), "old");
}

}  // namespace
}  // namespace vmseal::store::testing
