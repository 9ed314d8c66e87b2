#include "stream/internal/header.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::stream::internal {
namespace {

TEST(LayoutTest, EmptyPlaintextIsOneEmptyChunk) {
  auto l = LayoutForPlaintext(0, 16);
  ASSERT_OK(l);
  EXPECT_EQ(l->chunk_count, 1u);
  EXPECT_EQ(l->sealed_bytes, kMinSealedBytes);
}

TEST(LayoutTest, SealedAndPlaintextLayoutsAgree) {
  for (uint64_t p : {0, 1, 15, 16, 17, 31, 32, 33, 1000}) {
    SCOPED_TRACE(p);
    auto a = LayoutForPlaintext(p, 16);
    ASSERT_OK(a);
    auto b = LayoutForSealed(a->sealed_bytes, 16);
    ASSERT_OK(b);
    EXPECT_EQ(b->chunk_count, a->chunk_count);
    EXPECT_EQ(b->plaintext_bytes, p);
  }
}

TEST(LayoutTest, HeaderOnlyIsInvalid) {
  EXPECT_STATUS(LayoutForSealed(kHeaderBytes, 16), StatusCode::kInvalidArgument,
                "truncated stream");
}

TEST(LayoutTest, FinalChunkShorterThanATagIsInvalid) {
  // One full chunk (32) plus 15 bytes.
  EXPECT_STATUS(LayoutForSealed(kHeaderBytes + 32 + 15, 16), StatusCode::kInvalidArgument,
                "invalid stream length");
}

TEST(LayoutTest, EmptyFinalChunkAfterFullChunksIsInvalid) {
  EXPECT_STATUS(LayoutForSealed(kHeaderBytes + 32 + 16, 16), StatusCode::kInvalidArgument,
                "invalid stream length");
}

TEST(LayoutTest, TooManyChunksIsOutOfRange) {
  EXPECT_STATUS(LayoutForPlaintext(kMaxChunks * 16 + 1, 16), StatusCode::kOutOfRange,
                "2^32 chunks");
  EXPECT_OK(LayoutForPlaintext(kMaxChunks * 16, 16));
}

TEST(LayoutTest, ChunkSizeLimits) {
  EXPECT_STATUS(LayoutForPlaintext(1, kMinChunkSizeBytes - 1), StatusCode::kInvalidArgument,
                "invalid chunk size");
  EXPECT_STATUS(LayoutForPlaintext(1, kMaxChunkSizeBytes + 1), StatusCode::kInvalidArgument,
                "invalid chunk size");
  EXPECT_OK(LayoutForPlaintext(1, kMaxChunkSizeBytes));
}

TEST(ContextTest, EncodingIsLengthPrefixed) {
  EXPECT_NE(EncodeContext({"ab", "c", 1}), EncodeContext({"a", "bc", 1}));
  EXPECT_EQ(crypto::HexEncode(EncodeContext({"a", "", 258})),
            "0000000161000000000000000000000102");
}

TEST(ContextTest, OverlongFieldIsRejected) {
  EXPECT_STATUS(DeriveKeys(SecretBytes(32), 16, Salt{},
                           {std::string(kMaxContextFieldBytes + 1, 'x'), "", 1}),
                StatusCode::kInvalidArgument, "4096");
}

TEST(HeaderTest, ParsesWhatItEncodes) {
  Salt salt{};
  salt[0] = 9;
  std::array<uint8_t, kCommitmentBytes> commit{};
  commit[31] = 7;
  HeaderBytes h = EncodeHeader(4096, salt, commit);
  auto p = ParseHeader(h);
  ASSERT_OK(p);
  EXPECT_EQ(p->chunk_size_bytes, 4096u);
  EXPECT_EQ(p->salt, salt);
  EXPECT_EQ(p->commitment, commit);
}

TEST(HeaderTest, WrongMagicIsNotAStream) {
  HeaderBytes h = EncodeHeader(4096, Salt{}, std::array<uint8_t, 32>{});
  h[1] = 'X';
  EXPECT_STATUS(ParseHeader(h), StatusCode::kInvalidArgument, "not a vmseal stream");
}

TEST(HeaderTest, OtherVersionIsUnsupported) {
  HeaderBytes h = EncodeHeader(4096, Salt{}, std::array<uint8_t, 32>{});
  h[kVersionOffset + 3] = 2;
  EXPECT_STATUS(ParseHeader(h), StatusCode::kInvalidArgument, "unsupported stream version 2");
}

TEST(HeaderTest, BadChunkSizeIsRejected) {
  HeaderBytes h = EncodeHeader(4096, Salt{}, std::array<uint8_t, 32>{});
  h[kChunkSizeOffset] = 0xff;
  EXPECT_STATUS(ParseHeader(h), StatusCode::kInvalidArgument, "invalid chunk size");
}

TEST(HeaderTest, ShortHeaderIsTruncated) {
  HeaderBytes h = EncodeHeader(4096, Salt{}, std::array<uint8_t, 32>{});
  EXPECT_STATUS(ParseHeader(std::span(h).first(40)), StatusCode::kInvalidArgument,
                "truncated stream header");
}

TEST(CommitmentTest, MismatchIsDecryptionFailed) {
  SecretBytes key(32);
  auto keys = DeriveKeys(key, 16, Salt{}, {"i", "t", 1});
  ASSERT_OK(keys);
  Header h;
  h.chunk_size_bytes = 16;
  h.commitment = keys->commitment;
  EXPECT_OK(DeriveAndCheck(key, h, {"i", "t", 1}));
  h.commitment[5] ^= 1;
  EXPECT_STATUS(DeriveAndCheck(key, h, {"i", "t", 1}), StatusCode::kDataLoss,
                "decryption failed");
}

TEST(CommitmentTest, DiffersFromStreamKey) {
  auto keys = DeriveKeys(SecretBytes(32), 16, Salt{}, {"i", "t", 1});
  ASSERT_OK(keys);
  EXPECT_NE(crypto::HexEncode(keys->commitment),
            crypto::HexEncode(keys->stream_key.UnsafeSpan()));
}

}  // namespace
}  // namespace vmseal::stream::internal
