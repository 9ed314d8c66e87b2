#include "crypto/primitives.h"

#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

TEST(PrimitivesTest, Sha256OfAbcMatchesFips180Vector) {
  EXPECT_EQ(HexEncode(Sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(PrimitivesTest, IncrementalHasherMatchesOneShot) {
  Sha256Hasher h;
  h.Update("a");
  h.Update("bc");
  EXPECT_EQ(h.Finish(), Sha256("abc"));
}

// RFC 5869 appendix A.1.
TEST(PrimitivesTest, HkdfMatchesRfc5869TestCase1) {
  auto ikm = HexDecode("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  auto salt = HexDecode("000102030405060708090a0b0c");
  auto info = HexDecode("f0f1f2f3f4f5f6f7f8f9");
  ASSERT_OK(ikm);
  SecretBytes key(*ikm);
  auto okm = HkdfSha256(key, *salt, *info, 42);
  ASSERT_OK(okm);
  EXPECT_EQ(HexEncode(okm->UnsafeSpan()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
            "34007208d5b887185865");
}

// RFC 4231 test cases 2 (short key) and 6 (key longer than the block).
TEST(PrimitivesTest, HmacMatchesRfc4231) {
  auto mac = HmacSha256(SecretBytes(Bytes{'J', 'e', 'f', 'e'}), AsBytes("what do ya want for nothing?"));
  ASSERT_OK(mac);
  EXPECT_EQ(HexEncode(*mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  auto long_mac = HmacSha256(SecretBytes(Bytes(131, 0xaa)),
                             AsBytes("Test Using Larger Than Block-Size Key - Hash Key First"));
  ASSERT_OK(long_mac);
  EXPECT_EQ(HexEncode(*long_mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(PrimitivesTest, ConstantTimeEqualsComparesContentAndSize) {
  const Bytes a = {1, 2, 3}, b = {1, 2, 3}, c = {1, 2, 4}, d = {1, 2};
  EXPECT_TRUE(ConstantTimeEquals(a, b));
  EXPECT_FALSE(ConstantTimeEquals(a, c));
  EXPECT_FALSE(ConstantTimeEquals(a, d));
}

TEST(PrimitivesTest, HkdfRejectsZeroLength) {
  EXPECT_STATUS(HkdfSha256(SecretBytes(32), {}, {}, 0), StatusCode::kInvalidArgument,
                "length");
}

TEST(PrimitivesTest, HexRoundTripsAndRejectsGarbage) {
  Bytes b = {0x00, 0xff, 0x10};
  EXPECT_EQ(HexEncode(b), "00ff10");
  EXPECT_EQ(*HexDecode("00FF10"), b);
  EXPECT_STATUS(HexDecode("abc"), StatusCode::kInvalidArgument, "odd");
  EXPECT_STATUS(HexDecode("zz"), StatusCode::kInvalidArgument, "invalid hex");
}

TEST(PrimitivesTest, Base64RoundTrips) {
  for (std::string s : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    std::string enc = Base64Encode(AsBytes(s));
    auto dec = Base64Decode(enc);
    ASSERT_OK(dec);
    EXPECT_EQ(std::string(dec->begin(), dec->end()), s);
  }
  EXPECT_EQ(Base64Encode(AsBytes("foobar")), "Zm9vYmFy");
  EXPECT_STATUS(Base64Decode("abc"), StatusCode::kInvalidArgument, "base64");
}

}  // namespace
}  // namespace vmseal::crypto
