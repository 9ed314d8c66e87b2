#include "crypto/signature.h"

#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

class SignatureTest : public ::testing::TestWithParam<KeyType> {};

TEST_P(SignatureTest, SignsAndVerifies) {
  auto key = PrivateKey::Generate(GetParam());
  ASSERT_OK(key);
  const std::string message = "SHA256(package.ovf)= 00ff\n";
  auto sig = Sign(*key, SignatureDigest::kSha256, AsBytes(message));
  ASSERT_OK(sig);
  EXPECT_OK(VerifySignature(key->Public(), SignatureDigest::kSha256, AsBytes(message), *sig));
  // SHA-512 as well.
  auto sig512 = Sign(*key, SignatureDigest::kSha512, AsBytes(message));
  ASSERT_OK(sig512);
  EXPECT_OK(VerifySignature(key->Public(), SignatureDigest::kSha512, AsBytes(message), *sig512));
  // The digest is part of what is verified.
  EXPECT_STATUS(VerifySignature(key->Public(), SignatureDigest::kSha512, AsBytes(message), *sig),
                StatusCode::kUnauthenticated, "signature verification failed");
}

TEST_P(SignatureTest, AnyChangeFailsVerification) {
  auto key = PrivateKey::Generate(GetParam());
  ASSERT_OK(key);
  std::string message = "SHA256(disk.img.vmseal)= abcdef\n";
  auto sig = Sign(*key, SignatureDigest::kSha256, AsBytes(message));
  ASSERT_OK(sig);
  std::string changed = message;
  changed[8] ^= 1;
  EXPECT_STATUS(VerifySignature(key->Public(), SignatureDigest::kSha256, AsBytes(changed), *sig),
                StatusCode::kUnauthenticated, "signature verification failed");
  Bytes bad = *sig;
  bad[bad.size() / 2] ^= 0x40;
  EXPECT_STATUS(VerifySignature(key->Public(), SignatureDigest::kSha256, AsBytes(message), bad),
                StatusCode::kUnauthenticated, "signature verification failed");
  EXPECT_STATUS(VerifySignature(key->Public(), SignatureDigest::kSha256, AsBytes(message), {}),
                StatusCode::kUnauthenticated, "signature verification failed");
  auto other = PrivateKey::Generate(GetParam());
  ASSERT_OK(other);
  EXPECT_STATUS(VerifySignature(other->Public(), SignatureDigest::kSha256, AsBytes(message), *sig),
                StatusCode::kUnauthenticated, "signature verification failed");
}

INSTANTIATE_TEST_SUITE_P(SigningKeys, SignatureTest,
                         ::testing::Values(KeyType::kEcP256, KeyType::kRsa2048));

TEST(Signature, X25519CannotSign) {
  auto key = PrivateKey::Generate(KeyType::kX25519);
  ASSERT_OK(key);
  EXPECT_STATUS(Sign(*key, SignatureDigest::kSha256, AsBytes("m")),
                StatusCode::kInvalidArgument, "cannot sign");
  EXPECT_STATUS(VerifySignature(key->Public(), SignatureDigest::kSha256, AsBytes("m"), Bytes(64)),
                StatusCode::kInvalidArgument, "cannot sign");
}

TEST(Signature, Sha1IsNotMade) {
  auto key = PrivateKey::Generate(KeyType::kEcP256);
  ASSERT_OK(key);
  EXPECT_STATUS(Sign(*key, SignatureDigest::kSha1, AsBytes("m")), StatusCode::kInvalidArgument,
                "SHA-1");
}

}  // namespace
}  // namespace vmseal::crypto
