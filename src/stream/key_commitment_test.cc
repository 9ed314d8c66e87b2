// Key commitment (docs/format/stream.md §7): an AES-GCM chunk crafted to open
// under two stream keys (the "invisible salamanders" construction: solve
// GHASH for one ciphertext block in GF(2^128)) is rejected by the header's
// commitment under every data key but the one it names.
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <array>
#include <cstring>
#include <vector>

#include "crypto/ssl_util.h"
#include "stream/internal/chunk_cipher.h"
#include "stream/internal/header.h"
#include "stream/internal/seal_internal.h"
#include "stream/stream.h"
#include "testing/test_util.h"

namespace vmseal::stream {
namespace {

using Block = std::array<uint8_t, 16>;

// An element of GF(2^128) in GCM's bit order (SP 800-38D §6.3).
struct Gf {
  uint64_t hi = 0, lo = 0;
  static Gf FromBlock(const Block& b) {
    Gf g;
    for (int i = 0; i < 8; ++i) g.hi = (g.hi << 8) | b[i];
    for (int i = 8; i < 16; ++i) g.lo = (g.lo << 8) | b[i];
    return g;
  }
  Block ToBlock() const {
    Block b;
    for (int i = 0; i < 8; ++i) b[i] = static_cast<uint8_t>(hi >> (56 - 8 * i));
    for (int i = 0; i < 8; ++i) b[8 + i] = static_cast<uint8_t>(lo >> (56 - 8 * i));
    return b;
  }
  Gf operator^(const Gf& o) const { return {hi ^ o.hi, lo ^ o.lo}; }
  Gf operator*(const Gf& y) const {
    Gf z, v = y;
    for (int i = 0; i < 128; ++i) {
      uint64_t bit = i < 64 ? (hi >> (63 - i)) & 1 : (lo >> (127 - i)) & 1;
      if (bit) z = z ^ v;
      const bool carry = v.lo & 1;
      v.lo = (v.lo >> 1) | (v.hi << 63);
      v.hi >>= 1;
      if (carry) v.hi ^= 0xe100000000000000ULL;
    }
    return z;
  }
  Gf Inverse() const {  // a^(2^128 - 2)
    Gf r{0x8000000000000000ULL, 0};  // 1
    for (int i = 0; i < 128; ++i) {
      r = r * r;
      if (i < 127) r = r * *this;
    }
    return r;
  }
};

Block AesEncryptBlock(const SecretBytes& key, const Block& in) {
  crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  Block out{};
  int len = 0;
  EXPECT_EQ(EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_ecb(), nullptr, key.UnsafeData(),
                               nullptr), 1);
  EVP_CIPHER_CTX_set_padding(ctx.get(), 0);
  EXPECT_EQ(EVP_EncryptUpdate(ctx.get(), out.data(), &len, in.data(), 16), 1);
  return out;
}

// A two-block ciphertext and tag that authenticate as chunk 0 (final) under
// both stream keys.
std::vector<uint8_t> CraftChunk(const SecretBytes& k1, const SecretBytes& k2) {
  Block zero{};
  Gf h1 = Gf::FromBlock(AesEncryptBlock(k1, zero));
  Gf h2 = Gf::FromBlock(AesEncryptBlock(k2, zero));
  Block j0{};
  auto nonce = internal::ChunkNonce(0, true);
  std::memcpy(j0.data(), nonce.data(), nonce.size());
  j0[15] = 1;
  Gf e1 = Gf::FromBlock(AesEncryptBlock(k1, j0));
  Gf e2 = Gf::FromBlock(AesEncryptBlock(k2, j0));
  Block c1_block;
  c1_block.fill(0x5a);
  Gf c1 = Gf::FromBlock(c1_block);
  Block len_block{};
  len_block[15] = 0;  // len(A) = 0, len(C) = 256 bits
  len_block[14] = 1;
  Gf l = Gf::FromBlock(len_block);
  // GHASH = C1·H^3 + C2·H^2 + L·H; tags equal  =>  solve for C2.
  Gf h1sq = h1 * h1, h2sq = h2 * h2;
  Gf rhs = (c1 * (h1sq * h1 ^ h2sq * h2)) ^ (l * (h1 ^ h2)) ^ e1 ^ e2;
  Gf c2 = rhs * (h1sq ^ h2sq).Inverse();
  Gf tag = (c1 * h1sq * h1) ^ (c2 * h1sq) ^ (l * h1) ^ e1;
  std::vector<uint8_t> out;
  for (const Gf& g : {c1, c2, tag}) {
    Block b = g.ToBlock();
    out.insert(out.end(), b.begin(), b.end());
  }
  return out;
}

TEST(GfTest, InverseTimesValueIsOne) {
  Gf a{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  Gf one = a * a.Inverse();
  EXPECT_EQ(one.hi, 0x8000000000000000ULL);
  EXPECT_EQ(one.lo, 0u);
}

TEST(KeyCommitmentAttackTest, ChunkOpeningUnderTwoKeysIsRejectedByTheCommitment) {
  const StreamContext ctx{"img", "tenant", 1};
  const uint32_t chunk = 32;
  internal::Salt salt{};
  salt.fill(0x33);
  SecretBytes data_key_1(std::vector<uint8_t>(32, 0x01));
  SecretBytes data_key_2(std::vector<uint8_t>(32, 0x02));
  auto keys1 = internal::DeriveKeys(data_key_1, chunk, salt, ctx);
  auto keys2 = internal::DeriveKeys(data_key_2, chunk, salt, ctx);
  ASSERT_OK(keys1);
  ASSERT_OK(keys2);
  std::vector<uint8_t> sealed_chunk = CraftChunk(keys1->stream_key, keys2->stream_key);

  // Without a commitment this chunk would be accepted under both keys.
  for (const SecretBytes* k : {&keys1->stream_key, &keys2->stream_key}) {
    auto cipher = internal::ChunkCipher::Create(*k);
    ASSERT_OK(cipher);
    std::vector<uint8_t> pt(32);
    ASSERT_OK((*cipher)->Open(0, true, sealed_chunk, pt));
  }

  // The stream names data key 1 in its header.
  internal::HeaderBytes header = internal::EncodeHeader(chunk, salt, keys1->commitment);
  std::vector<uint8_t> stream(header.size() + sealed_chunk.size());
  std::memcpy(stream.data(), header.data(), header.size());
  std::memcpy(stream.data() + header.size(), sealed_chunk.data(), sealed_chunk.size());
  internal::MemoryFile in(stream);
  std::vector<uint8_t> out;
  internal::VectorWritableFile w(&out);
  EXPECT_OK(Open(in, &w, data_key_1, ctx, OpenOptions{}));
  out.clear();
  EXPECT_STATUS(Open(in, &w, data_key_2, ctx, OpenOptions{}), StatusCode::kDataLoss,
                "decryption failed");
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace vmseal::stream
