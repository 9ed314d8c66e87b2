#include "kms/nonce.h"

#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

SecretBytes VectorKey() {
  crypto::Bytes k(32);
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i);
  return SecretBytes(k);
}

// The vector of docs/protocol.md §5.1 (computed independently with
// Python's hmac module).
TEST(NonceTest, MatchesTheDocumentedVector) {
  const crypto::Bytes random = *crypto::HexDecode("0001020304050607");
  auto nonce = MakeNonce(VectorKey(), "host-1", 1764201600, random);
  ASSERT_OK(nonce);
  EXPECT_EQ(crypto::HexEncode(*nonce),
            "00000000692794800001020304050607cb6535615f4e5322833120562f883ca2");
  auto issued = OpenNonce(VectorKey(), "host-1", *nonce);
  ASSERT_OK(issued);
  EXPECT_EQ(*issued, 1764201600);
}

TEST(NonceTest, OtherHostKeyOrAnyChangedByteIsUnknown) {
  const SecretBytes key = SecretBytes::Random(32);
  auto nonce = MakeNonce(key, "h1", 1000, crypto::RandomBytes(8));
  ASSERT_OK(nonce);
  EXPECT_STATUS(OpenNonce(key, "h2", *nonce), StatusCode::kPermissionDenied, "nonce_unknown");
  EXPECT_STATUS(OpenNonce(SecretBytes::Random(32), "h1", *nonce), StatusCode::kPermissionDenied,
                "nonce_unknown");
  for (size_t i = 0; i < nonce->size(); ++i) {
    crypto::Bytes changed = *nonce;
    changed[i] ^= 0x01;
    SCOPED_TRACE(i);
    EXPECT_STATUS(OpenNonce(key, "h1", changed), StatusCode::kPermissionDenied, "nonce_unknown");
  }
  crypto::Bytes shorter(nonce->begin(), nonce->end() - 1);
  EXPECT_STATUS(OpenNonce(key, "h1", shorter), StatusCode::kPermissionDenied, "nonce_unknown");
  EXPECT_OK(OpenNonce(key, "h1", *nonce));
}

TEST(NonceTest, BadArgumentsAreRefused) {
  const SecretBytes key = SecretBytes::Random(32);
  EXPECT_STATUS(MakeNonce(key, "h1", 1, crypto::RandomBytes(7)), StatusCode::kInvalidArgument, "8 bytes");
  EXPECT_STATUS(MakeNonce(key, std::string(256, 'h'), 1, crypto::RandomBytes(8)),
                StatusCode::kInvalidArgument, "255");
}

}  // namespace
}  // namespace vmseal::kms
