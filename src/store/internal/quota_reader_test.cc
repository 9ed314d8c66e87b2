#include "store/internal/quota_reader.h"

#include <cstdint>
#include <deque>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::store::internal {
namespace {

// A source that answers each Read with the next scripted step: a number of
// bytes (at most what fits; a short read when fewer), or an error. Past the
// script: end of stream.
class ScriptedReader final : public Reader {
 public:
  struct Step {
    size_t bytes = 0;
    Status error;
  };
  explicit ScriptedReader(std::deque<Step> steps) : steps_(std::move(steps)) {}
  StatusOr<size_t> Read(std::span<uint8_t> out) override {
    ++reads_;
    if (steps_.empty()) return size_t{0};
    Step s = steps_.front();
    steps_.pop_front();
    if (!s.error.ok()) return s.error;
    const size_t n = std::min(s.bytes, out.size());
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>('a' + i % 26);
    return n;
  }
  int reads() const { return reads_; }

 private:
  std::deque<Step> steps_;
  int reads_ = 0;
};

// Reads `r` to its end or first error; the bytes returned so far.
StatusOr<uint64_t> Drain(Reader& r, size_t buffer_bytes) {
  std::vector<uint8_t> buf(buffer_bytes);
  uint64_t got = 0;
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, r.Read(buf));
    if (n == 0) return got;
    got += n;
  }
}

TEST(QuotaReaderTest, UploadEndingExactlyAtTheQuotaIsAccepted) {
  StringReader source("abcd");
  QuotaReader r(source, 0, 4, "object");
  auto got = Drain(r, 64);
  ASSERT_OK(got);
  EXPECT_EQ(*got, 4u);
  EXPECT_EQ(r.total_bytes(), 4u);
}

TEST(QuotaReaderTest, OneByteOverTheQuotaIsRefusedAndStaysRefused) {
  StringReader source("abcde");
  QuotaReader r(source, 0, 4, "object");
  std::vector<uint8_t> buf(64);
  EXPECT_STATUS(r.Read(buf), StatusCode::kResourceExhausted,
                "object exceeds the size quota of 4 bytes");
  EXPECT_EQ(r.total_bytes(), 0u);  // the refused read is not counted
  EXPECT_STATUS(r.Read(buf), StatusCode::kResourceExhausted, "quota");
}

// The byte over the quota arrives in a read of its own, after reads that
// filled the quota exactly: those are served, that one is refused.
TEST(QuotaReaderTest, ByteOverTheQuotaInALaterReadIsRefused) {
  StringReader source("abcde");
  QuotaReader r(source, 0, 4, "upload");
  std::vector<uint8_t> buf(2);
  EXPECT_EQ(*r.Read(buf), 2u);
  EXPECT_EQ(*r.Read(buf), 2u);
  EXPECT_STATUS(r.Read(buf), StatusCode::kResourceExhausted, "upload exceeds the size quota of 4");
  EXPECT_EQ(r.total_bytes(), 4u);
}

// Short reads (fewer bytes than the buffer holds, as a socket gives them) are
// counted as returned, not as the buffer size.
TEST(QuotaReaderTest, ShortReadsCountWhatTheyReturn) {
  ScriptedReader source({{.bytes = 1}, {.bytes = 2}, {.bytes = 1}, {.bytes = 1}});
  QuotaReader r(source, 0, 4, "upload");
  std::vector<uint8_t> buf(1024);
  EXPECT_EQ(*r.Read(buf), 1u);
  EXPECT_EQ(*r.Read(buf), 2u);
  EXPECT_EQ(*r.Read(buf), 1u);
  EXPECT_EQ(r.total_bytes(), 4u);
  EXPECT_STATUS(r.Read(buf), StatusCode::kResourceExhausted, "quota");
}

// An append starts from the bytes the upload already holds.
TEST(QuotaReaderTest, BytesAlreadyHeldCountTowardsTheQuota) {
  StringReader fits("a");
  QuotaReader ok(fits, 3, 4, "upload");
  auto got = Drain(ok, 16);
  ASSERT_OK(got);
  EXPECT_EQ(ok.total_bytes(), 4u);
  StringReader over("ab");
  QuotaReader refused(over, 3, 4, "upload");
  EXPECT_STATUS(Drain(refused, 16), StatusCode::kResourceExhausted, "quota of 4 bytes");
  EXPECT_EQ(refused.total_bytes(), 3u);
}

TEST(QuotaReaderTest, ZeroMeansNoLimit) {
  std::string big(1 << 20, 'x');
  StringReader source(big);
  QuotaReader r(source, std::numeric_limits<uint64_t>::max() - big.size(), 0, "object");
  auto got = Drain(r, 4096);
  ASSERT_OK(got);
  EXPECT_EQ(*got, big.size());
}

// A count near 2^64 cannot wrap around and pass the check.
TEST(QuotaReaderTest, CountNearTheTopOfTheRangeDoesNotWrapUnderTheLimit) {
  StringReader source("abc");
  QuotaReader r(source, std::numeric_limits<uint64_t>::max() - 1, 10, "upload");
  std::vector<uint8_t> buf(16);
  EXPECT_STATUS(r.Read(buf), StatusCode::kResourceExhausted, "quota");
}

TEST(QuotaReaderTest, SourceErrorPassesThroughUnchangedAndIsSticky) {
  ScriptedReader source({{.bytes = 2}, {.error = DataLossError("connection reset")}, {.bytes = 1}});
  QuotaReader r(source, 0, 100, "object");
  std::vector<uint8_t> buf(16);
  EXPECT_EQ(*r.Read(buf), 2u);
  EXPECT_STATUS(r.Read(buf), StatusCode::kDataLoss, "connection reset");
  EXPECT_STATUS(r.Read(buf), StatusCode::kDataLoss, "connection reset");
  EXPECT_EQ(source.reads(), 2);  // the source is not read after its error
  EXPECT_EQ(r.total_bytes(), 2u);
}

}  // namespace
}  // namespace vmseal::store::internal
