// The stateless chunk cipher of the stream format (docs/format/stream.md §4):
// AES-256-GCM of chunk i under the stream key with nonce u88be(i) || last.
// The output for a chunk depends only on (key, index, last, plaintext), so
// chunks can be sealed and opened in any order by any number of threads.
#ifndef VMSEAL_STREAM_INTERNAL_CHUNK_CIPHER_H_
#define VMSEAL_STREAM_INTERNAL_CHUNK_CIPHER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <span>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/ssl_util.h"
#include "stream/stream_format.h"

namespace vmseal::stream::internal {

using Nonce = std::array<uint8_t, kNonceBytes>;

// nonce_i of doc §4.
Nonce ChunkNonce(uint64_t index, bool last);

// One cipher context keyed once with the stream key; per chunk only the nonce
// is set, so small chunks stay cheap. Not thread-safe: use one per thread.
class ChunkCipher {
 public:
  // `stream_key` must be kStreamKeyBytes long. The key schedule is kept inside
  // the OpenSSL context (which wipes it on free); the caller keeps its copy.
  static StatusOr<std::unique_ptr<ChunkCipher>> Create(const SecretBytes& stream_key);

  // Seals `plaintext` as chunk `index`. `out` must be exactly
  // plaintext.size() + kTagBytes; it may start at plaintext.data() (in place).
  Status Seal(uint64_t index, bool last, std::span<const uint8_t> plaintext,
              std::span<uint8_t> out);

  // Opens sealed chunk `index` (ciphertext || tag) into `out`, which must be
  // exactly sealed.size() - kTagBytes and may start at sealed.data(). Returns
  // DATA_LOSS "decryption failed" if the tag does not verify; `out` then
  // holds garbage that the caller must discard.
  Status Open(uint64_t index, bool last, std::span<const uint8_t> sealed,
              std::span<uint8_t> out);

  // The same with the tag apart from the ciphertext: opens `ciphertext`
  // into `out` (same size; it may be the same memory, so a chunk read
  // straight into the caller's buffer is decrypted where it lies). On
  // DATA_LOSS `out` holds unauthenticated bytes: the caller must wipe them.
  Status OpenDetached(uint64_t index, bool last, std::span<const uint8_t> ciphertext,
                      std::span<const uint8_t, kTagBytes> tag, std::span<uint8_t> out);

 private:
  explicit ChunkCipher(crypto::EvpCipherCtxPtr ctx) : ctx_(std::move(ctx)) {}
  crypto::EvpCipherCtxPtr ctx_;
};

}  // namespace vmseal::stream::internal

#endif  // VMSEAL_STREAM_INTERNAL_CHUNK_CIPHER_H_
