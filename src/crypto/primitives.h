// Small, stateless primitives over OpenSSL 3 EVP: SHA-256, HKDF-SHA256,
// HMAC-SHA256 and hex. Everything else in crypto/ builds on these.
#ifndef VMSEAL_CRYPTO_PRIMITIVES_H_
#define VMSEAL_CRYPTO_PRIMITIVES_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::crypto {

using Bytes = std::vector<uint8_t>;
inline constexpr size_t kSha256Bytes = 32;
using Sha256Digest = std::array<uint8_t, kSha256Bytes>;

// SHA-256 of `data`.
Sha256Digest Sha256(std::span<const uint8_t> data);
Sha256Digest Sha256(std::string_view data);

// Incremental SHA-256 for streams (manifests, object store digests).
class Sha256Hasher {
 public:
  Sha256Hasher();
  ~Sha256Hasher();
  Sha256Hasher(const Sha256Hasher&) = delete;
  Sha256Hasher& operator=(const Sha256Hasher&) = delete;
  void Update(std::span<const uint8_t> data);
  void Update(std::string_view data);
  // Returns the digest; the hasher must not be used afterwards.
  Sha256Digest Finish();

 private:
  void* ctx_;  // EVP_MD_CTX
};

// HKDF-SHA256 (RFC 5869): Extract(salt, ikm) then Expand(info, out_len).
// `out_len` must be at most 255 * 32.
StatusOr<SecretBytes> HkdfSha256(const SecretBytes& ikm, std::span<const uint8_t> salt,
                                 std::span<const uint8_t> info, size_t out_len);

// HMAC-SHA256 (RFC 2104) of `data` under `key` (any length).
StatusOr<Sha256Digest> HmacSha256(const SecretBytes& key, std::span<const uint8_t> data);

// Whether a and b are equal, in time independent of their content (sizes
// may leak). For comparing MACs.
bool ConstantTimeEquals(std::span<const uint8_t> a, std::span<const uint8_t> b);

// Lowercase hex and its inverse (which rejects odd lengths and non-hex).
std::string HexEncode(std::span<const uint8_t> data);
StatusOr<Bytes> HexDecode(std::string_view hex);

// Base64 (RFC 4648, with padding, no line breaks) and its strict inverse.
std::string Base64Encode(std::span<const uint8_t> data);
StatusOr<Bytes> Base64Decode(std::string_view text);

// Bytes from the OpenSSL CSPRNG, for values that are not secret (salts, ids).
Bytes RandomBytes(size_t n);

// Views a string's bytes.
inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
inline std::string_view AsStringView(std::span<const uint8_t> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

}  // namespace vmseal::crypto

#endif  // VMSEAL_CRYPTO_PRIMITIVES_H_
