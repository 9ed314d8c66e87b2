// Adapter between the package and crypto/'s keys and RSA-OAEP-SHA256 wrap
// (crypto/keys.h, crypto/key_wrap.h). The only OAEP code of its own is the
// SHA-1 variant that the xmlenc-compat profile needs (rsa-oaep-mgf1p), which
// crypto/ deliberately does not offer.
#ifndef VMSEAL_OVF_INTERNAL_KEY_WRAP_H_
#define VMSEAL_OVF_INTERNAL_KEY_WRAP_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/keys.h"

namespace vmseal::ovf::internal {

// OAEP digest (used for both the label hash and MGF1).
enum class OaepDigest { kSha256, kSha1 };

// An RSA public key (2048 or 3072 bits) from a PEM X.509 certificate or a
// PEM SubjectPublicKeyInfo.
StatusOr<crypto::PublicKey> LoadPublicKeyPem(std::string_view pem);
// An RSA private key (PKCS#8 or traditional PEM, unencrypted).
StatusOr<crypto::PrivateKey> LoadPrivateKeyPem(std::string_view pem);

// "sha256:" + hex SHA-256 of the key's DER SubjectPublicKeyInfo.
std::string KeyId(const crypto::PublicKey& key);

// RSA-OAEP encryption of `key` with `label`.
StatusOr<std::vector<uint8_t>> WrapKey(const crypto::PublicKey& public_key, OaepDigest digest,
                                       const SecretBytes& key,
                                       std::span<const uint8_t> label);
// The inverse; DATA_LOSS "decryption failed" for any failure.
StatusOr<SecretBytes> UnwrapKey(const crypto::PrivateKey& private_key, OaepDigest digest,
                                std::span<const uint8_t> wrapped,
                                std::span<const uint8_t> label);

}  // namespace vmseal::ovf::internal

#endif  // VMSEAL_OVF_INTERNAL_KEY_WRAP_H_
