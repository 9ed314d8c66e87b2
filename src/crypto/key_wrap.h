// Wrapping a data key to a public key, and a small AEAD for keys at rest.
// The byte formats are specified in docs/format/key-wrap.md; the constants
// below cite its sections.
//
// Every function takes associated data that names what the key is for (an
// image id, tenant and key version; a key id and customer). It must not be
// empty: a wrapped key that could be replayed for another purpose is a bug.
//
// Errors: INVALID_ARGUMENT for malformed input (wrong lengths, a wrong
// version byte, empty associated data, an unsupported key), found before any
// private key is used; DATA_LOSS "decryption failed" for every failure after
// that (wrong key, wrong associated data, tampering), with no detail.
//
// Thread safety: all functions are stateless; Aead is immutable after Create.
#ifndef VMSEAL_CRYPTO_KEY_WRAP_H_
#define VMSEAL_CRYPTO_KEY_WRAP_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"

namespace vmseal::crypto {

// key-wrap.md "Data keys": every wrapped data key is 32 bytes.
inline constexpr size_t kDataKeyBytes = 32;

// How the associated data becomes the RSA-OAEP label (key-wrap.md
// "RSA-OAEP-SHA256").
enum class OaepLabel {
  // label = associated data.
  kPlain,
  // label = associated data || 0x00. A TPM 2.0 decrypts with a label only if
  // its last byte is zero; used when wrapping to a TPM binding key. The
  // associated data must then contain no zero byte.
  kTpm,
};

// RSA-OAEP with SHA-256 as OAEP and MGF1 hash. `public_key` must be RSA-2048
// or RSA-3072; `data_key` must be kDataKeyBytes. Returns the ciphertext
// (modulus length: 256 or 384 bytes).
StatusOr<Bytes> RsaOaepWrap(const PublicKey& public_key, const SecretBytes& data_key,
                            std::string_view associated_data,
                            OaepLabel label = OaepLabel::kPlain);
// The inverse of RsaOaepWrap with the same associated data and label mode.
StatusOr<SecretBytes> RsaOaepUnwrap(const PrivateKey& private_key,
                                    std::span<const uint8_t> wrapped,
                                    std::string_view associated_data,
                                    OaepLabel label = OaepLabel::kPlain);

// key-wrap.md "X25519": the version byte and sizes of an X25519 wrapped key.
inline constexpr uint8_t kX25519WrapVersion = 0x01;
inline constexpr size_t kX25519PublicBytes = 32;
inline constexpr size_t kGcmNonceBytes = 12;
inline constexpr size_t kGcmTagBytes = 16;
inline constexpr size_t kX25519WrappedBytes =
    1 + kX25519PublicBytes + kGcmNonceBytes + kDataKeyBytes + kGcmTagBytes;  // 93
// key-wrap.md "X25519": the HKDF info prefix.
inline constexpr std::string_view kX25519WrapInfoPrefix = "vmseal x25519 key wrap v1";

// HPKE-style wrap to an X25519 public key: a fresh ephemeral key, ECDH,
// HKDF-SHA256, AES-256-GCM with a random nonce. Returns kX25519WrappedBytes.
StatusOr<Bytes> X25519Wrap(const PublicKey& public_key, const SecretBytes& data_key,
                           std::string_view associated_data);
// The inverse of X25519Wrap.
StatusOr<SecretBytes> X25519Unwrap(const PrivateKey& private_key,
                                   std::span<const uint8_t> wrapped,
                                   std::string_view associated_data);
// X25519Wrap with a caller-chosen ephemeral private key (32 bytes) and nonce,
// for known-answer tests only. Never use outside tests: reusing either breaks
// the scheme.
StatusOr<Bytes> X25519WrapForTesting(const PublicKey& public_key, const SecretBytes& data_key,
                                     std::string_view associated_data,
                                     const SecretBytes& ephemeral_private_key,
                                     std::span<const uint8_t> nonce);

// Dispatches on the key type: RSA-OAEP (label kPlain) for RSA keys, X25519
// for X25519 keys; INVALID_ARGUMENT for other keys.
StatusOr<Bytes> WrapKey(const PublicKey& public_key, const SecretBytes& data_key,
                        std::string_view associated_data);
StatusOr<SecretBytes> UnwrapKey(const PrivateKey& private_key, std::span<const uint8_t> wrapped,
                                std::string_view associated_data);

// key-wrap.md "AEAD for keys at rest": AES-256-GCM, one shot, output
// nonce (12) || ciphertext || tag (16), the nonce random per call.
class Aead {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr size_t kOverheadBytes = kGcmNonceBytes + kGcmTagBytes;
  // Maximum plaintext: 64 MiB (this is for keys, not for data).
  static constexpr size_t kMaxPlaintextBytes = size_t{64} << 20;

  // `key` must be kKeyBytes (INVALID_ARGUMENT otherwise).
  static StatusOr<std::unique_ptr<Aead>> Create(SecretBytes key);

  // Encrypts `plaintext` (at most kMaxPlaintextBytes) bound to the non-empty
  // `associated_data`. At most 2^32 calls per key (random nonces).
  StatusOr<Bytes> Encrypt(std::span<const uint8_t> plaintext,
                          std::string_view associated_data) const;
  StatusOr<Bytes> Encrypt(const SecretBytes& plaintext, std::string_view associated_data) const {
    return Encrypt(plaintext.UnsafeSpan(), associated_data);
  }
  // Decrypts; DATA_LOSS "decryption failed" on any authentication failure.
  StatusOr<SecretBytes> Decrypt(std::span<const uint8_t> ciphertext,
                                std::string_view associated_data) const;

 private:
  explicit Aead(SecretBytes key) : key_(std::move(key)) {}
  const SecretBytes key_;
};

}  // namespace vmseal::crypto

#endif  // VMSEAL_CRYPTO_KEY_WRAP_H_
