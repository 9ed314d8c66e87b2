#include "stream/internal/chunk_cipher.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <climits>
#include <cstring>

namespace vmseal::stream::internal {
namespace {

// Fetched once: an implicit fetch per EVP_*Init would cost a lock per chunk.
const EVP_CIPHER* Aes256Gcm() {
  static EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}

// EVP lengths are int; chunks are at most kMaxChunkSizeBytes (2^24).
constexpr size_t kMaxEvpBytes = INT_MAX;

}  // namespace

Nonce ChunkNonce(uint64_t index, bool last) {
  Nonce nonce{};
  for (int i = 0; i < 8; ++i) {
    nonce[kNonceCounterBytes - 1 - i] = static_cast<uint8_t>(index >> (8 * i));
  }
  nonce[kNonceCounterBytes] = last ? kLastChunkFlag : kNotLastChunkFlag;
  return nonce;
}

StatusOr<std::unique_ptr<ChunkCipher>> ChunkCipher::Create(const SecretBytes& stream_key) {
  if (stream_key.size() != kStreamKeyBytes) {
    return InvalidArgumentError("stream key must be 32 bytes");
  }
  if (Aes256Gcm() == nullptr) return crypto::SslError("fetch AES-256-GCM");
  crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) return crypto::SslError("EVP_CIPHER_CTX_new");
  // Keyed for encryption; EVP_CipherInit_ex with enc switches direction per
  // chunk without redoing the key schedule (GCM uses the forward cipher only).
  if (EVP_CipherInit_ex(ctx.get(), Aes256Gcm(), nullptr, stream_key.UnsafeData(), nullptr,
                        1) != 1) {
    return crypto::SslError("AES-256-GCM key setup");
  }
  return std::unique_ptr<ChunkCipher>(new ChunkCipher(std::move(ctx)));
}

Status ChunkCipher::Seal(uint64_t index, bool last, std::span<const uint8_t> plaintext,
                         std::span<uint8_t> out) {
  if (out.size() != plaintext.size() + kTagBytes || plaintext.size() > kMaxEvpBytes) {
    return InternalError("seal chunk: bad buffer size");
  }
  Nonce nonce = ChunkNonce(index, last);
  int len = 0;
  if (EVP_CipherInit_ex(ctx_.get(), nullptr, nullptr, nullptr, nonce.data(), 1) != 1 ||
      (!plaintext.empty() &&
       EVP_CipherUpdate(ctx_.get(), out.data(), &len, plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1) ||
      EVP_CipherFinal_ex(ctx_.get(), out.data() + plaintext.size(), &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes),
                          out.data() + plaintext.size()) != 1) {
    return crypto::SslError("seal chunk");
  }
  return OkStatus();
}

Status ChunkCipher::Open(uint64_t index, bool last, std::span<const uint8_t> sealed,
                         std::span<uint8_t> out) {
  if (sealed.size() < kTagBytes || out.size() != sealed.size() - kTagBytes) {
    return InternalError("open chunk: bad buffer size");
  }
  // Copy the tag first: with in-place opening the output overwrites nothing
  // past out.size(), but keeping the tag separate makes that obvious.
  uint8_t tag[kTagBytes];
  std::memcpy(tag, sealed.data() + out.size(), kTagBytes);
  return OpenDetached(index, last, sealed.first(out.size()),
                      std::span<const uint8_t, kTagBytes>(tag), out);
}

Status ChunkCipher::OpenDetached(uint64_t index, bool last, std::span<const uint8_t> ciphertext,
                                 std::span<const uint8_t, kTagBytes> tag, std::span<uint8_t> out) {
  if (out.size() != ciphertext.size() || out.size() > kMaxEvpBytes) {
    return InternalError("open chunk: bad buffer size");
  }
  Nonce nonce = ChunkNonce(index, last);
  uint8_t tag_copy[kTagBytes];
  std::memcpy(tag_copy, tag.data(), kTagBytes);
  int len = 0;
  if (EVP_CipherInit_ex(ctx_.get(), nullptr, nullptr, nullptr, nonce.data(), 0) != 1 ||
      (!out.empty() && EVP_CipherUpdate(ctx_.get(), out.data(), &len, ciphertext.data(),
                                        static_cast<int>(out.size())) != 1) ||
      EVP_CIPHER_CTX_ctrl(ctx_.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes),
                          tag_copy) != 1) {
    return crypto::SslError("open chunk");
  }
  uint8_t final_block[16];
  if (EVP_CipherFinal_ex(ctx_.get(), final_block, &len) != 1) {
    ERR_clear_error();  // nothing for a later SslError to misreport
    return DataLossError("decryption failed");
  }
  return OkStatus();
}

}  // namespace vmseal::stream::internal
