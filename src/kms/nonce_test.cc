#include "kms/nonce.h"

#include <algorithm>

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

crypto::Bytes NonceWithMac(uint8_t mac_byte) {
  crypto::Bytes n(kNonceBytes, 0x00);
  std::fill(n.begin() + 16, n.end(), mac_byte);
  return n;
}

TEST(UsedNonceCacheTest, RemembersWhatWasAdded) {
  UsedNonceCache cache(10);
  const crypto::Bytes a = NonceWithMac(1), b = NonceWithMac(2);
  cache.Add(a, 2000, 1000);
  EXPECT_TRUE(cache.Contains(a));
  EXPECT_FALSE(cache.Contains(b));
  cache.Add(a, 2000, 1000);  // again: still one entry
  EXPECT_EQ(cache.size(), 1u);
}

TEST(UsedNonceCacheTest, KeysOnTheMacAndIgnoresOtherSizes) {
  UsedNonceCache cache(10);
  crypto::Bytes a = NonceWithMac(1);
  cache.Add(a, 2000, 1000);
  crypto::Bytes other_mac = a;
  other_mac.back() ^= 0x80;
  EXPECT_FALSE(cache.Contains(other_mac));
  const crypto::Bytes shorter(a.begin(), a.end() - 1);
  EXPECT_FALSE(cache.Contains(shorter));
  cache.Add(shorter, 2000, 1000);
  EXPECT_EQ(cache.size(), 1u);
}

TEST(UsedNonceCacheTest, ExpiredEntriesAreForgotten) {
  UsedNonceCache cache(10);
  const crypto::Bytes a = NonceWithMac(1), b = NonceWithMac(2);
  cache.Add(a, 1060, 1000);
  cache.Add(b, 1100, 1061);  // a expired at 1060
  EXPECT_FALSE(cache.Contains(a));
  EXPECT_TRUE(cache.Contains(b));
}

TEST(UsedNonceCacheTest, PastCapacityTheOldestAreForgotten) {
  UsedNonceCache cache(3);
  for (uint8_t i = 1; i <= 5; ++i) cache.Add(NonceWithMac(i), 5000, 1000);
  EXPECT_EQ(cache.size(), 3u);
  EXPECT_FALSE(cache.Contains(NonceWithMac(1)));
  EXPECT_FALSE(cache.Contains(NonceWithMac(2)));
  for (uint8_t i = 3; i <= 5; ++i) EXPECT_TRUE(cache.Contains(NonceWithMac(i)));
}

}  // namespace
}  // namespace vmseal::kms
