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
