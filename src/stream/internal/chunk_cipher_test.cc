#include "stream/internal/chunk_cipher.h"

#include <gtest/gtest.h>

#include <vector>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::stream::internal {
namespace {

SecretBytes Key() { return SecretBytes::Random(kStreamKeyBytes); }

TEST(ChunkNonceTest, IsBigEndianIndexThenFlag) {
  EXPECT_EQ(crypto::HexEncode(ChunkNonce(0, false)), "000000000000000000000000");
  EXPECT_EQ(crypto::HexEncode(ChunkNonce(1, true)), "000000000000000000000101");
  EXPECT_EQ(crypto::HexEncode(ChunkNonce(0x0102030405060708, false)),
            "000000010203040506070800");
}

TEST(ChunkCipherTest, RejectsShortKey) {
  EXPECT_STATUS(ChunkCipher::Create(SecretBytes(16)), StatusCode::kInvalidArgument,
                "32 bytes");
}

TEST(ChunkCipherTest, RoundTripsInPlace) {
  auto c = ChunkCipher::Create(Key());
  ASSERT_OK(c);
  std::vector<uint8_t> buf(100 + kTagBytes);
  for (size_t i = 0; i < 100; ++i) buf[i] = static_cast<uint8_t>(i);
  ASSERT_OK((*c)->Seal(7, false, {buf.data(), 100}, buf));
  EXPECT_NE(buf[1], 1);
  ASSERT_OK((*c)->Open(7, false, buf, {buf.data(), 100}));
  for (size_t i = 0; i < 100; ++i) ASSERT_EQ(buf[i], i);
}

TEST(ChunkCipherTest, ChunksAreIndependentOfOrder) {
  auto a = ChunkCipher::Create(SecretBytes(32));
  auto b = ChunkCipher::Create(SecretBytes(32));
  ASSERT_OK(a);
  ASSERT_OK(b);
  std::vector<uint8_t> pt(64, 0x42), x(80), y(80), z(80);
  ASSERT_OK((*a)->Seal(3, false, pt, x));
  ASSERT_OK((*a)->Seal(9, true, pt, z));
  ASSERT_OK((*b)->Seal(3, false, pt, y));  // fresh context, same chunk
  EXPECT_EQ(x, y);
}

TEST(ChunkCipherTest, WrongIndexFails) {
  auto c = ChunkCipher::Create(Key());
  ASSERT_OK(c);
  std::vector<uint8_t> pt(32, 1), sealed(48), out(32);
  ASSERT_OK((*c)->Seal(1, false, pt, sealed));
  EXPECT_STATUS((*c)->Open(2, false, sealed, out), StatusCode::kDataLoss, "decryption failed");
}

TEST(ChunkCipherTest, WrongLastFlagFails) {
  auto c = ChunkCipher::Create(Key());
  ASSERT_OK(c);
  std::vector<uint8_t> pt(32, 1), sealed(48), out(32);
  ASSERT_OK((*c)->Seal(1, false, pt, sealed));
  EXPECT_STATUS((*c)->Open(1, true, sealed, out), StatusCode::kDataLoss, "decryption failed");
}

TEST(ChunkCipherTest, OpenAfterFailureStillWorks) {
  auto c = ChunkCipher::Create(Key());
  ASSERT_OK(c);
  std::vector<uint8_t> pt(32, 1), sealed(48), out(32);
  ASSERT_OK((*c)->Seal(0, true, pt, sealed));
  sealed[0] ^= 1;
  EXPECT_FALSE((*c)->Open(0, true, sealed, out).ok());
  sealed[0] ^= 1;
  EXPECT_OK((*c)->Open(0, true, sealed, out));
  EXPECT_EQ(out, pt);
}

TEST(ChunkCipherTest, EmptyChunkHasATag) {
  auto c = ChunkCipher::Create(Key());
  ASSERT_OK(c);
  std::vector<uint8_t> sealed(kTagBytes);
  ASSERT_OK((*c)->Seal(0, true, {}, sealed));
  EXPECT_OK((*c)->Open(0, true, sealed, {}));
  sealed[3] ^= 0x80;
  EXPECT_STATUS((*c)->Open(0, true, sealed, {}), StatusCode::kDataLoss, "decryption failed");
}

}  // namespace
}  // namespace vmseal::stream::internal
