#include "stream/stream.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include "crypto/primitives.h"
#include "stream/internal/header.h"
#include "stream/internal/seal_internal.h"
#include "testing/fault_env.h"
#include "testing/test_util.h"

namespace vmseal::stream {
namespace {

using internal::MemoryFile;
using internal::VectorWritableFile;
using Bytes = std::vector<uint8_t>;

constexpr uint32_t kTinyChunk = 16;
const StreamContext kContext{"img-1", "tenant-a", 3};

Bytes Pattern(size_t n, uint8_t seed = 1) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 31 + seed + (i >> 8));
  return b;
}

SecretBytes TestKey(uint8_t fill = 0x11) { return SecretBytes(Bytes(kDataKeyBytes, fill)); }

StatusOr<Bytes> SealBytes(const Bytes& pt, uint32_t chunk, const SecretBytes& key,
                          const StreamContext& ctx = kContext, int threads = 2) {
  MemoryFile in(pt);
  Bytes out;
  VectorWritableFile w(&out);
  SealOptions o;
  o.chunk_size_bytes = chunk;
  o.threads = threads;
  RETURN_IF_ERROR(Seal(in, &w, key, ctx, o));
  return out;
}

StatusOr<Bytes> OpenBytes(const Bytes& sealed, const SecretBytes& key,
                          const StreamContext& ctx = kContext, int threads = 2) {
  MemoryFile in(sealed);
  Bytes out;
  VectorWritableFile w(&out);
  OpenOptions o;
  o.threads = threads;
  RETURN_IF_ERROR(Open(in, &w, key, ctx, o));
  return out;
}

// Sealed offset of chunk `i` at chunk size `c`.
size_t ChunkOffset(uint64_t i, uint32_t c = kTinyChunk) {
  return kHeaderBytes + i * (c + kTagBytes);
}

class RoundTripTest : public ::testing::TestWithParam<std::tuple<uint32_t, size_t, int>> {};

TEST_P(RoundTripTest, OpensToThePlaintext) {
  auto [chunk, size, threads] = GetParam();
  Bytes pt = Pattern(size);
  auto sealed = SealBytes(pt, chunk, TestKey(), kContext, threads);
  ASSERT_OK(sealed);
  auto expected = SealedSize(size, chunk);
  ASSERT_OK(expected);
  EXPECT_EQ(sealed->size(), *expected);
  auto opened = OpenBytes(*sealed, TestKey(), kContext, threads);
  ASSERT_OK(opened);
  EXPECT_EQ(*opened, pt);
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, RoundTripTest,
    ::testing::Values(std::make_tuple(16u, 0, 2), std::make_tuple(16u, 1, 2),
                      std::make_tuple(16u, 15, 2), std::make_tuple(16u, 16, 2),
                      std::make_tuple(16u, 17, 2), std::make_tuple(16u, 16 * 1000 + 5, 1),
                      std::make_tuple(16u, 16 * 1000 + 5, 2),
                      std::make_tuple(16u, 16 * 1000, 7), std::make_tuple(4096u, 4095, 3),
                      std::make_tuple(4096u, 4096 * 50 + 1, 4),
                      std::make_tuple(0u, 3 * (1 << 20) + 7, 2)));

// A writer that stalls now and then, so workers run far ahead of it and
// every slot of the pipeline's ring is contended.
class SlowWritableFile final : public WritableFile {
 public:
  explicit SlowWritableFile(Bytes* out) : base_(out) {}
  Status Append(std::span<const uint8_t> data) override {
    if (++calls_ % 7 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    return base_.Append(data);
  }
  Status Skip(uint64_t bytes) override { return base_.Skip(bytes); }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }

 private:
  VectorWritableFile base_;
  int calls_ = 0;
};

TEST(PipelineTest, OutputStaysInOrderWithASlowWriterAndManyWorkers) {
  Bytes pt = Pattern(kTinyChunk * 3000 + 3);
  MemoryFile in(pt);
  Bytes sealed;
  SlowWritableFile w(&sealed);
  SealOptions o;
  o.chunk_size_bytes = kTinyChunk;
  o.threads = 8;
  ASSERT_OK(Seal(in, &w, TestKey(), kContext, o));
  MemoryFile sin(sealed);
  Bytes opened;
  SlowWritableFile ow(&opened);
  OpenOptions oo;
  oo.threads = 8;
  ASSERT_OK(Open(sin, &ow, TestKey(), kContext, oo));
  EXPECT_EQ(opened, pt);
}

TEST(SealTest, SameInputSealsDifferentlyEachTime) {
  Bytes pt = Pattern(100);
  auto a = SealBytes(pt, kTinyChunk, TestKey());
  auto b = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_NE(*a, *b);
}

TEST(SealTest, RejectsBadChunkSize) {
  EXPECT_STATUS(SealBytes(Pattern(10), 8, TestKey()), StatusCode::kInvalidArgument,
                "invalid chunk size");
}

TEST(SealTest, RejectsShortDataKey) {
  EXPECT_STATUS(SealBytes(Pattern(10), kTinyChunk, SecretBytes(16)),
                StatusCode::kInvalidArgument, "data key must be 32 bytes");
}

TEST(SealedSizeTest, DefaultChunk) {
  auto s = SealedSize(uint64_t{3} << 20);
  ASSERT_OK(s);
  EXPECT_EQ(*s, kHeaderBytes + (uint64_t{3} << 20) + 3 * kTagBytes);
}

// Tampering: each test changes one thing and expects "decryption failed".
class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pt_ = Pattern(kTinyChunk * 5 + 7);  // 6 chunks, the last one short
    auto s = SealBytes(pt_, kTinyChunk, TestKey());
    ASSERT_OK(s);
    sealed_ = *s;
  }
  void ExpectDecryptionFailed(const Bytes& bytes) {
    EXPECT_STATUS(OpenBytes(bytes, TestKey()), StatusCode::kDataLoss, "decryption failed");
  }
  Bytes pt_;
  Bytes sealed_;
};

TEST_F(TamperTest, TruncatedAtChunkBoundary) {
  Bytes t(sealed_.begin(), sealed_.begin() + ChunkOffset(3));
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, TruncatedMidChunkToValidLength) {
  // Cut 5 bytes into the final chunk's tag region: still a valid length.
  Bytes t(sealed_.begin(), sealed_.end() - 5);
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, TruncatedMidChunkToInvalidLength) {
  Bytes t(sealed_.begin(), sealed_.begin() + ChunkOffset(3) + 10);
  EXPECT_STATUS(OpenBytes(t, TestKey()), StatusCode::kInvalidArgument,
                "invalid stream length");
}

TEST_F(TamperTest, ExtendedWithBytes) {
  Bytes t = sealed_;
  t.insert(t.end(), 30, 0);  // a valid length: 7 chunks, the last of 21 bytes
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, ExtendedWithACopiedChunk) {
  Bytes t = sealed_;
  t.insert(t.end() - (7 + kTagBytes), sealed_.begin() + ChunkOffset(1),
           sealed_.begin() + ChunkOffset(2));
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, ChunksReordered) {
  Bytes t = sealed_;
  std::swap_ranges(t.begin() + ChunkOffset(1), t.begin() + ChunkOffset(2),
                   t.begin() + ChunkOffset(2));
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, ChunkDuplicated) {
  Bytes t = sealed_;
  std::copy(sealed_.begin() + ChunkOffset(1), sealed_.begin() + ChunkOffset(2),
            t.begin() + ChunkOffset(2));
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, ChunkSplicedFromAnotherStreamUnderTheSameKey) {
  auto other = SealBytes(pt_, kTinyChunk, TestKey());
  ASSERT_OK(other);
  Bytes t = sealed_;
  std::copy(other->begin() + ChunkOffset(2), other->begin() + ChunkOffset(3),
            t.begin() + ChunkOffset(2));
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, HeaderFromAnotherStreamUnderTheSameKey) {
  auto other = SealBytes(pt_, kTinyChunk, TestKey());
  ASSERT_OK(other);
  Bytes t = sealed_;
  std::copy(other->begin(), other->begin() + kHeaderBytes, t.begin());
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, EveryBitFlipInSaltAndCommitmentFails) {
  for (size_t byte = kSaltOffset; byte < kHeaderBytes; ++byte) {
    for (int bit = 0; bit < 8; bit += 3) {
      SCOPED_TRACE(::testing::Message() << byte << ":" << bit);
      Bytes t = sealed_;
      t[byte] ^= static_cast<uint8_t>(1 << bit);
      ExpectDecryptionFailed(t);
    }
  }
}

TEST_F(TamperTest, ChunkSizeChangedInHeaderFails) {
  // 16 -> 32 keeps the length valid (6 chunks of 48 sealed bytes = 4 of 32+16
  // ... not necessarily), so only check it never opens.
  Bytes t = sealed_;
  t[kChunkSizeOffset + 3] = 32;
  EXPECT_FALSE(OpenBytes(t, TestKey()).ok());
}

TEST_F(TamperTest, TagFlipped) {
  Bytes t = sealed_;
  t[ChunkOffset(2) - 1] ^= 0x01;
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, CiphertextFlipped) {
  Bytes t = sealed_;
  t[ChunkOffset(4) + 3] ^= 0x40;
  ExpectDecryptionFailed(t);
}

TEST_F(TamperTest, WrongKey) {
  EXPECT_STATUS(OpenBytes(sealed_, TestKey(0x12)), StatusCode::kDataLoss,
                "decryption failed");
}

TEST_F(TamperTest, WrongImageId) {
  StreamContext c = kContext;
  c.image_id = "img-2";
  EXPECT_STATUS(OpenBytes(sealed_, TestKey(), c), StatusCode::kDataLoss, "decryption failed");
}

TEST_F(TamperTest, WrongTenant) {
  StreamContext c = kContext;
  c.tenant = "tenant-b";
  EXPECT_STATUS(OpenBytes(sealed_, TestKey(), c), StatusCode::kDataLoss, "decryption failed");
}

TEST_F(TamperTest, WrongKeyVersion) {
  StreamContext c = kContext;
  c.key_version = 4;
  EXPECT_STATUS(OpenBytes(sealed_, TestKey(), c), StatusCode::kDataLoss, "decryption failed");
}

TEST_F(TamperTest, ErrorMessageNamesNoCheck) {
  Status s = OpenBytes(sealed_, TestKey(0x12)).status();
  EXPECT_EQ(s.message(), "decryption failed");
}

// Key commitment: a header whose commitment is replaced by the commitment
// computed under another key is rejected before any chunk is opened, and the
// check is what rejects it (the chunks themselves would open).
TEST(KeyCommitmentTest, CommitmentIsChecked) {
  Bytes pt = Pattern(40);
  internal::Salt salt{};
  MemoryFile in(pt);
  Bytes sealed;
  VectorWritableFile w(&sealed);
  SealOptions o;
  o.chunk_size_bytes = kTinyChunk;
  ASSERT_OK(internal::SealWithSaltForTesting(in, &w, TestKey(), kContext, o, salt));
  auto other = internal::DeriveKeys(TestKey(0x22), kTinyChunk, salt, kContext);
  ASSERT_OK(other);
  std::copy(other->commitment.begin(), other->commitment.end(),
            sealed.begin() + kCommitmentOffset);
  // Under the original key the chunks are intact but the commitment is not.
  EXPECT_STATUS(OpenBytes(sealed, TestKey()), StatusCode::kDataLoss, "decryption failed");
  // Under the other key the commitment matches but the chunks do not.
  EXPECT_STATUS(OpenBytes(sealed, TestKey(0x22)), StatusCode::kDataLoss, "decryption failed");
}

TEST(KeyCommitmentTest, ReaderChecksCommitmentBeforeReadingChunks) {
  auto sealed = SealBytes(Pattern(40), kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  (*sealed)[kCommitmentOffset] ^= 1;
  MemoryFile in(*sealed);
  EXPECT_STATUS(StreamReader::Create(&in, TestKey(), kContext), StatusCode::kDataLoss,
                "decryption failed");
}

TEST(NotAStreamTest, EmptyInput) {
  EXPECT_STATUS(OpenBytes({}, TestKey()), StatusCode::kInvalidArgument,
                "not a vmseal stream: input is empty");
}

TEST(NotAStreamTest, HeaderOnly) {
  auto sealed = SealBytes({}, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  sealed->resize(kHeaderBytes);
  EXPECT_STATUS(OpenBytes(*sealed, TestKey()), StatusCode::kInvalidArgument,
                "truncated stream");
}

TEST(NotAStreamTest, ArbitraryBytes) {
  Bytes junk(1000, 'A');
  EXPECT_STATUS(OpenBytes(junk, TestKey()), StatusCode::kInvalidArgument,
                "not a vmseal stream");
}

TEST(NotAStreamTest, ShorterThanMagic) {
  EXPECT_STATUS(OpenBytes(Bytes{0x89, 'V'}, TestKey()), StatusCode::kInvalidArgument,
                "not a vmseal stream");
}

TEST(SparseTest, ZeroChunksBecomeHoles) {
  Bytes pt(kTinyChunk * 10, 0);
  pt[kTinyChunk * 3 + 1] = 5;
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  MemoryFile in(*sealed);
  Bytes out;
  VectorWritableFile w(&out);
  ASSERT_OK(Open(in, &w, TestKey(), kContext, OpenOptions{}));
  EXPECT_EQ(out, pt);
  EXPECT_EQ(w.skipped_bytes(), kTinyChunk * 9);
}

TEST(SparseTest, DisabledWritesZeros) {
  Bytes pt(kTinyChunk * 4, 0);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  MemoryFile in(*sealed);
  Bytes out;
  VectorWritableFile w(&out);
  OpenOptions o;
  o.sparse_output = false;
  ASSERT_OK(Open(in, &w, TestKey(), kContext, o));
  EXPECT_EQ(out, pt);
  EXPECT_EQ(w.skipped_bytes(), 0u);
}

TEST(ProgressTest, ReportsEveryChunkUpToTheTotal) {
  Bytes pt = Pattern(kTinyChunk * 7 + 3);
  MemoryFile in(pt);
  Bytes out;
  VectorWritableFile w(&out);
  SealOptions o;
  o.chunk_size_bytes = kTinyChunk;
  std::vector<uint64_t> seen;
  o.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_EQ(total, pt.size());
    seen.push_back(done);
  };
  ASSERT_OK(Seal(in, &w, TestKey(), kContext, o));
  ASSERT_EQ(seen.size(), 8u);
  EXPECT_EQ(seen.back(), pt.size());
}

// A RandomAccessFile that records which offsets were read.
class CountingFile final : public RandomAccessFile {
 public:
  explicit CountingFile(const Bytes& data) : base_(data) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    std::lock_guard<std::mutex> lock(mu_);
    offsets_.insert(offset);
    return base_.Read(offset, out);
  }
  StatusOr<uint64_t> Size() const override { return base_.Size(); }
  std::set<uint64_t> TakeOffsets() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(offsets_, {});
  }

 private:
  MemoryFile base_;
  mutable std::mutex mu_;
  mutable std::set<uint64_t> offsets_;
};

TEST(StreamReaderTest, ReadsArbitraryRanges) {
  Bytes pt = Pattern(kTinyChunk * 20 + 9);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  MemoryFile in(*sealed);
  auto reader = StreamReader::Create(&in, TestKey(), kContext);
  ASSERT_OK(reader);
  EXPECT_EQ((*reader)->plaintext_size(), pt.size());
  for (uint64_t off : {0, 1, 15, 16, 17, 100, 319, 320, 328}) {
    for (size_t len : {1, 2, 16, 17, 40, 1000}) {
      SCOPED_TRACE(::testing::Message() << off << "+" << len);
      Bytes out(len);
      auto n = (*reader)->ReadAt(off, out);
      ASSERT_OK(n);
      size_t want = off >= pt.size() ? 0 : std::min<size_t>(len, pt.size() - off);
      ASSERT_EQ(*n, want);
      EXPECT_TRUE(std::equal(out.begin(), out.begin() + want, pt.begin() + off));
    }
  }
  Bytes out(4);
  auto n = (*reader)->ReadAt(pt.size() + 10, out);
  ASSERT_OK(n);
  EXPECT_EQ(*n, 0u);
}

TEST(StreamReaderTest, ReadsOnlyTheCoveringChunks) {
  Bytes pt = Pattern(kTinyChunk * 20 + 9);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  CountingFile in(*sealed);
  auto reader = StreamReader::Create(&in, TestKey(), kContext);
  ASSERT_OK(reader);
  in.TakeOffsets();
  Bytes out(kTinyChunk + 2);  // bytes 5*16+15 .. 7*16+0: chunks 5, 6, 7
  ASSERT_OK((*reader)->ReadAt(5 * kTinyChunk + 15, out));
  // Chunk 6, covered whole, is read into `out` and its tag apart (it is
  // decrypted where it lies); 5 and 7 are read sealed in one piece.
  EXPECT_EQ(in.TakeOffsets(), (std::set<uint64_t>{ChunkOffset(5), ChunkOffset(6),
                                                  ChunkOffset(6) + kTinyChunk, ChunkOffset(7)}));
}

TEST(StreamReaderTest, CreateAuthenticatesTheFinalChunk) {
  auto sealed = SealBytes(Pattern(kTinyChunk * 5), kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  sealed->resize(ChunkOffset(3));  // truncated at a boundary
  MemoryFile in(*sealed);
  EXPECT_STATUS(StreamReader::Create(&in, TestKey(), kContext), StatusCode::kDataLoss,
                "decryption failed");
}

TEST(StreamReaderTest, TamperedChunkFailsOnlyWhenRead) {
  Bytes pt = Pattern(kTinyChunk * 8);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  (*sealed)[ChunkOffset(2) + 1] ^= 1;
  MemoryFile in(*sealed);
  auto reader = StreamReader::Create(&in, TestKey(), kContext);
  ASSERT_OK(reader);
  Bytes out(kTinyChunk);
  EXPECT_OK((*reader)->ReadAt(0, out));
  EXPECT_STATUS((*reader)->ReadAt(2 * kTinyChunk, out), StatusCode::kDataLoss,
                "decryption failed");
}

TEST(StreamReaderTest, ATamperedChunkReadWholeLeavesNoDecryptedBytesInTheCallersBuffer) {
  Bytes pt = Pattern(kTinyChunk * 8);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  // One flipped tag bit: the ciphertext itself decrypts to the plaintext,
  // so only the wipe keeps it (unauthenticated) out of `out`.
  (*sealed)[ChunkOffset(3) + kTinyChunk + 2] ^= 1;
  MemoryFile in(*sealed);
  auto reader = StreamReader::Create(&in, TestKey(), kContext);
  ASSERT_OK(reader);
  Bytes out(3 * kTinyChunk, 0xAA);  // chunks 2, 3 (tampered), 4, each covered whole
  EXPECT_STATUS((*reader)->ReadAt(2 * kTinyChunk, out), StatusCode::kDataLoss,
                "decryption failed");
  const Bytes chunk3(pt.begin() + 3 * kTinyChunk, pt.begin() + 4 * kTinyChunk);
  const Bytes got3(out.begin() + kTinyChunk, out.begin() + 2 * kTinyChunk);
  EXPECT_NE(got3, chunk3);
  EXPECT_EQ(got3, Bytes(kTinyChunk, 0));
  // Nothing after the failed chunk was touched.
  EXPECT_EQ(Bytes(out.begin() + 2 * kTinyChunk, out.end()), Bytes(kTinyChunk, 0xAA));
}

TEST(StreamReaderTest, AuthenticationFailureIsSticky) {
  Bytes pt = Pattern(kTinyChunk * 8);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  (*sealed)[ChunkOffset(2) + 1] ^= 1;
  MemoryFile in(*sealed);
  auto reader = StreamReader::Create(&in, TestKey(), kContext);
  ASSERT_OK(reader);
  Bytes out(kTinyChunk);
  EXPECT_FALSE((*reader)->ReadAt(2 * kTinyChunk, out).ok());
  EXPECT_STATUS((*reader)->ReadAt(0, out), StatusCode::kDataLoss, "decryption failed");
}

TEST(StreamReaderTest, ConcurrentReads) {
  Bytes pt = Pattern(kTinyChunk * 64);
  auto sealed = SealBytes(pt, kTinyChunk, TestKey());
  ASSERT_OK(sealed);
  MemoryFile in(*sealed);
  auto reader = StreamReader::Create(&in, TestKey(), kContext);
  ASSERT_OK(reader);
  std::atomic<int> bad{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      for (uint64_t off = t; off < pt.size(); off += 37) {
        Bytes out(21);
        auto n = (*reader)->ReadAt(off, out);
        if (!n.ok() || !std::equal(out.begin(), out.begin() + *n, pt.begin() + off)) ++bad;
      }
    });
  }
  for (auto& th : ts) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(StreamWriterTest, MatchesOpenForAnyWriteSizes) {
  Bytes pt = Pattern(kTinyChunk * 9);  // exact multiple: last chunk full
  Bytes sealed;
  VectorWritableFile w(&sealed);
  auto writer = StreamWriter::Create(&w, TestKey(), kContext, kTinyChunk);
  ASSERT_OK(writer);
  size_t pos = 0;
  for (size_t step : {1, 15, 16, 17, 3, 100}) {
    size_t n = std::min(step, pt.size() - pos);
    ASSERT_OK((*writer)->Write({pt.data() + pos, n}));
    pos += n;
  }
  ASSERT_OK((*writer)->Write({pt.data() + pos, pt.size() - pos}));
  ASSERT_OK((*writer)->Finish());
  EXPECT_EQ(sealed.size(), *SealedSize(pt.size(), kTinyChunk));
  auto opened = OpenBytes(sealed, TestKey());
  ASSERT_OK(opened);
  EXPECT_EQ(*opened, pt);
}

TEST(StreamWriterTest, EmptyStream) {
  Bytes sealed;
  VectorWritableFile w(&sealed);
  auto writer = StreamWriter::Create(&w, TestKey(), kContext, kTinyChunk);
  ASSERT_OK(writer);
  ASSERT_OK((*writer)->Finish());
  auto opened = OpenBytes(sealed, TestKey());
  ASSERT_OK(opened);
  EXPECT_TRUE(opened->empty());
}

TEST(StreamWriterTest, ErrorsAreSticky) {
  vmseal::testing::TempDir dir;
  vmseal::testing::FaultEnv env;
  auto file = env.NewWritableFile(dir.File("out"), 0600);
  ASSERT_OK(file);
  auto writer = StreamWriter::Create(file->get(), TestKey(), kContext, kTinyChunk);
  ASSERT_OK(writer);
  env.FailWritesAfter(10);
  Bytes pt = Pattern(100);
  EXPECT_STATUS((*writer)->Write(pt), StatusCode::kResourceExhausted, "no space");
  env.FailWritesAfter(1 << 20);
  EXPECT_STATUS((*writer)->Write(pt), StatusCode::kResourceExhausted, "no space");
  EXPECT_STATUS((*writer)->Finish(), StatusCode::kResourceExhausted, "no space");
}

TEST(StreamWriterTest, FinishTwiceFails) {
  Bytes sealed;
  VectorWritableFile w(&sealed);
  auto writer = StreamWriter::Create(&w, TestKey(), kContext, kTinyChunk);
  ASSERT_OK(writer);
  ASSERT_OK((*writer)->Finish());
  EXPECT_STATUS((*writer)->Finish(), StatusCode::kFailedPrecondition, "already finished");
}

// Files.
class FileTest : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const Bytes& data) {
    vmseal::testing::WriteFileOrDie(dir_.File(name), std::string(data.begin(), data.end()));
    return dir_.File(name);
  }
  SealOptions Tiny() {
    SealOptions o;
    o.chunk_size_bytes = 64;
    return o;
  }
  vmseal::testing::TempDir dir_;
};

TEST_F(FileTest, RoundTripAndNoStrayFiles) {
  Bytes pt = Pattern(64 * 30 + 1);
  std::string in = Write("pt", pt);
  ASSERT_OK(SealFile(Env::Default(), in, dir_.File("sealed"), TestKey(), kContext, Tiny()));
  ASSERT_OK(OpenFile(Env::Default(), dir_.File("sealed"), dir_.File("out"), TestKey(),
                     kContext, OpenOptions{}));
  std::string out = vmseal::testing::ReadFileOrDie(dir_.File("out"));
  EXPECT_EQ(Bytes(out.begin(), out.end()), pt);
  EXPECT_EQ(vmseal::testing::ListDir(dir_.path()).size(), 3u);
}

// Chunks that lie in a hole of the input are sealed from zeros without
// being read; the opened stream must still equal the input byte for byte,
// whatever mix of holes, data and partial chunks it has.
TEST_F(FileTest, SparseInputRoundTrips) {
  const size_t kChunk = 64 * 1024;
  const size_t size = 9 * kChunk + 4000;  // the last chunk is short
  Bytes pt(size, 0);
  // Data: all of chunk 0; the middle of chunk 3; chunks 5 and 6 across
  // their boundary; the first bytes of the short last chunk.
  const std::pair<size_t, size_t> extents[] = {
      {0, kChunk}, {3 * kChunk + 8192, 4096}, {5 * kChunk + 60000, 20000}, {9 * kChunk, 100}};
  {
    auto f = Env::Default()->NewWritableFile(dir_.File("sparse"), 0644);
    ASSERT_OK(f);
    size_t pos = 0;
    for (const auto& [at, len] : extents) {
      for (size_t i = 0; i < len; ++i) pt[at + i] = static_cast<uint8_t>((at + i) * 7 + 1);
      ASSERT_OK((*f)->Skip(at - pos));
      ASSERT_OK((*f)->Append({pt.data() + at, len}));
      pos = at + len;
    }
    ASSERT_OK((*f)->Skip(size - pos));
    ASSERT_OK((*f)->Close());
  }
  for (int threads : {1, 3}) {
    SealOptions o;
    o.chunk_size_bytes = kChunk;
    o.threads = threads;
    ASSERT_OK(SealFile(Env::Default(), dir_.File("sparse"), dir_.File("sealed"), TestKey(),
                       kContext, o));
    ASSERT_OK(OpenFile(Env::Default(), dir_.File("sealed"), dir_.File("out"), TestKey(),
                       kContext, OpenOptions{}));
    std::string out = vmseal::testing::ReadFileOrDie(dir_.File("out"));
    EXPECT_EQ(Bytes(out.begin(), out.end()), pt) << threads << " threads";
    ::unlink(dir_.File("sealed").c_str());
    ::unlink(dir_.File("out").c_str());
  }
}

TEST_F(FileTest, OpenedFileIsSparseAndPrivate) {
  Bytes pt(64 * 1024 * 4, 0);
  pt[10] = 1;
  std::string in = Write("pt", pt);
  SealOptions o;
  o.chunk_size_bytes = 64 * 1024;
  ASSERT_OK(SealFile(Env::Default(), in, dir_.File("sealed"), TestKey(), kContext, o));
  ASSERT_OK(OpenFile(Env::Default(), dir_.File("sealed"), dir_.File("out"), TestKey(),
                     kContext, OpenOptions{}));
  struct stat st;
  ASSERT_EQ(::stat(dir_.File("out").c_str(), &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), pt.size());
  EXPECT_LT(static_cast<size_t>(st.st_blocks) * 512, pt.size());
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(FileTest, FailedOpenLeavesNoOutput) {
  auto sealed = SealBytes(Pattern(64 * 10), 64, TestKey());
  ASSERT_OK(sealed);
  (*sealed)[ChunkOffset(9, 64) + 2] ^= 1;  // the final chunk
  std::string in = Write("sealed", *sealed);
  EXPECT_STATUS(OpenFile(Env::Default(), in, dir_.File("out"), TestKey(), kContext,
                         OpenOptions{}),
                StatusCode::kDataLoss, "decryption failed");
  EXPECT_EQ(vmseal::testing::ListDir(dir_.path()), std::vector<std::string>{"sealed"});
}

TEST_F(FileTest, NotAStreamCreatesNoOutput) {
  std::string in = Write("junk", Bytes(500, 'x'));
  EXPECT_STATUS(OpenFile(Env::Default(), in, dir_.File("out"), TestKey(), kContext,
                         OpenOptions{}),
                StatusCode::kInvalidArgument, "not a vmseal stream");
  EXPECT_EQ(vmseal::testing::ListDir(dir_.path()), std::vector<std::string>{"junk"});
}

TEST_F(FileTest, ZeroLengthFileIsNotAStream) {
  std::string in = Write("empty", {});
  EXPECT_STATUS(OpenFile(Env::Default(), in, dir_.File("out"), TestKey(), kContext,
                         OpenOptions{}),
                StatusCode::kInvalidArgument, "input is empty");
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("out")));
}

TEST_F(FileTest, SealOfZeroLengthFileOpensToZeroLength) {
  std::string in = Write("empty", {});
  ASSERT_OK(SealFile(Env::Default(), in, dir_.File("sealed"), TestKey(), kContext, Tiny()));
  ASSERT_OK(OpenFile(Env::Default(), dir_.File("sealed"), dir_.File("out"), TestKey(),
                     kContext, OpenOptions{}));
  EXPECT_EQ(vmseal::testing::ReadFileOrDie(dir_.File("out")), "");
}

TEST_F(FileTest, MissingInput) {
  EXPECT_STATUS(SealFile(Env::Default(), dir_.File("nope"), dir_.File("out"), TestKey(),
                         kContext, Tiny()),
                StatusCode::kNotFound, "nope");
  EXPECT_TRUE(vmseal::testing::ListDir(dir_.path()).empty());
}

TEST_F(FileTest, UnreadableInput) {
  vmseal::testing::FaultEnv env;
  env.FailOpens(true);
  std::string in = Write("pt", Pattern(10));
  EXPECT_STATUS(SealFile(&env, in, dir_.File("out"), TestKey(), kContext, Tiny()),
                StatusCode::kPermissionDenied, "permission denied");
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("out")));
}

TEST_F(FileTest, FullDiskDuringSealLeavesNoFile) {
  vmseal::testing::FaultEnv env;
  env.FailWritesAfter(64 * 5);
  std::string in = Write("pt", Pattern(64 * 100));
  EXPECT_STATUS(SealFile(&env, in, dir_.File("out"), TestKey(), kContext, Tiny()),
                StatusCode::kResourceExhausted, "no space left");
  EXPECT_EQ(vmseal::testing::ListDir(dir_.path()), std::vector<std::string>{"pt"});
}

TEST_F(FileTest, FullDiskDuringOpenLeavesNoFile) {
  auto sealed = SealBytes(Pattern(64 * 100), 64, TestKey());
  ASSERT_OK(sealed);
  std::string in = Write("sealed", *sealed);
  vmseal::testing::FaultEnv env;
  env.FailWritesAfter(64 * 50);
  EXPECT_STATUS(OpenFile(&env, in, dir_.File("out"), TestKey(), kContext, OpenOptions{}),
                StatusCode::kResourceExhausted, "no space left");
  EXPECT_EQ(vmseal::testing::ListDir(dir_.path()), std::vector<std::string>{"sealed"});
}

TEST_F(FileTest, OpenToDevNull) {
  auto sealed = SealBytes(Pattern(64 * 10), 64, TestKey());
  ASSERT_OK(sealed);
  std::string in = Write("sealed", *sealed);
  EXPECT_OK(OpenFile(Env::Default(), in, "/dev/null", TestKey(), kContext, OpenOptions{}));
  EXPECT_EQ(vmseal::testing::ListDir(dir_.path()), std::vector<std::string>{"sealed"});
}

TEST_F(FileTest, SealToDevNull) {
  std::string in = Write("pt", Pattern(64 * 10));
  EXPECT_OK(SealFile(Env::Default(), in, "/dev/null", TestKey(), kContext, Tiny()));
}

TEST_F(FileTest, NonRegularInputIsRejected) {
  EXPECT_STATUS(SealFile(Env::Default(), "/dev/zero", dir_.File("out"), TestKey(), kContext,
                         Tiny()),
                StatusCode::kInvalidArgument, "not a regular file");
  EXPECT_TRUE(vmseal::testing::ListDir(dir_.path()).empty());
}

TEST_F(FileTest, OutputDirectoryIsRejected) {
  std::string in = Write("pt", Pattern(10));
  EXPECT_STATUS(SealFile(Env::Default(), in, dir_.path(), TestKey(), kContext, Tiny()),
                StatusCode::kInvalidArgument, "is a directory");
}

// Accumulated randomized test (doc §8, after C2SP XAES-256-GCM): parameters
// come from a SHA-256 counter-mode stream; every sealed stream feeds one
// running SHA-256 whose final value is pinned. Any change to the derivation,
// the nonces or the layout changes the digest.
class Drbg {
 public:
  explicit Drbg(std::string_view seed) : seed_(crypto::Sha256(seed)) {}
  Bytes Next(size_t n) {
    Bytes out;
    while (out.size() < n) {
      Bytes block(seed_.begin(), seed_.end());
      for (int i = 7; i >= 0; --i) block.push_back(static_cast<uint8_t>(counter_ >> (8 * i)));
      ++counter_;
      auto d = crypto::Sha256(block);
      out.insert(out.end(), d.begin(), d.end());
    }
    out.resize(n);
    return out;
  }
  uint64_t Uniform(uint64_t bound) {
    Bytes b = Next(8);
    uint64_t v = 0;
    for (uint8_t x : b) v = (v << 8) | x;
    return v % bound;
  }

 private:
  crypto::Sha256Digest seed_;
  uint64_t counter_ = 0;
};

TEST(AccumulatedTest, AccumulatedRandomized) {
  Drbg rng("vmseal stream accumulated");
  crypto::Sha256Hasher acc;
  for (int i = 0; i < 256; ++i) {
    SecretBytes key(rng.Next(32));
    Bytes salt_bytes = rng.Next(kSaltBytes);
    internal::Salt salt;
    std::copy(salt_bytes.begin(), salt_bytes.end(), salt.begin());
    StreamContext ctx{crypto::HexEncode(rng.Next(rng.Uniform(8))),
                      crypto::HexEncode(rng.Next(rng.Uniform(8))), rng.Uniform(1000)};
    uint32_t chunk = static_cast<uint32_t>(16 + rng.Uniform(4096 - 16 + 1));
    const uint64_t full_chunks = rng.Uniform(3);  // drawn before the remainder
    const uint64_t remainder = rng.Uniform(chunk + 1);
    size_t size = static_cast<size_t>(full_chunks * chunk + remainder);
    Bytes pt = rng.Next(size);
    MemoryFile in(pt);
    Bytes sealed;
    VectorWritableFile w(&sealed);
    SealOptions o;
    o.chunk_size_bytes = chunk;
    o.threads = 1 + static_cast<int>(rng.Uniform(3));
    ASSERT_OK(internal::SealWithSaltForTesting(in, &w, key, ctx, o, salt));
    acc.Update(sealed);
    MemoryFile sin(sealed);
    Bytes opened;
    VectorWritableFile ow(&opened);
    OpenOptions oo;
    oo.sparse_output = false;
    ASSERT_OK(Open(sin, &ow, key, ctx, oo));
    ASSERT_EQ(opened, pt) << "iteration " << i;
  }
  EXPECT_EQ(crypto::HexEncode(acc.Finish()), "a48b854955d7a464faa9593255ec028d2855d85818f8369002e1c83bf7472b12");
}

}  // namespace
}  // namespace vmseal::stream
