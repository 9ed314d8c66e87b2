// Adapter between the package and crypto/'s keys and key wraps
// (crypto/keys.h, crypto/key_wrap.h): RSA-OAEP-SHA256 and X25519 come from
// crypto/. The only OAEP code of its own is the SHA-1 variant that the
// xmlenc-compat profile needs (rsa-oaep-mgf1p), which crypto/ deliberately
// does not offer.
#ifndef VMSEAL_OVF_INTERNAL_KEY_WRAP_H_
#define VMSEAL_OVF_INTERNAL_KEY_WRAP_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/keys.h"

namespace vmseal::ovf::internal {

// An RSA (2048 or 3072 bits) or X25519 public key from a PEM X.509
// certificate or a PEM SubjectPublicKeyInfo.
StatusOr<crypto::PublicKey> LoadPublicKeyPem(std::string_view pem);
// An RSA or X25519 private key (PKCS#8 or traditional PEM, unencrypted).
StatusOr<crypto::PrivateKey> LoadPrivateKeyPem(std::string_view pem);

// "sha256:" + hex SHA-256 of the key's DER SubjectPublicKeyInfo.
std::string KeyId(const crypto::PublicKey& key);

// The key-wrap algorithm URI (package_format.h, §3) for a recipient key of
// `type` in the given profile. INVALID_ARGUMENT for an X25519 key in the
// xmlenc-compat profile (whose rsa-oaep-mgf1p needs RSA) and for keys that
// cannot wrap.
StatusOr<std::string_view> WrapAlgorithmFor(crypto::KeyType type, bool xmlenc_compat);

// Wraps `key` with `algorithm` (kRsaOaepUri, kRsaOaepMgf1pUri: `label` is the
// OAEP label; kX25519WrapUri: `label` is the associated data).
// INVALID_ARGUMENT for another algorithm or a key of the wrong type.
StatusOr<std::vector<uint8_t>> WrapKey(const crypto::PublicKey& public_key,
                                       std::string_view algorithm, const SecretBytes& key,
                                       std::span<const uint8_t> label);
// The inverse. INVALID_ARGUMENT for another algorithm, FAILED_PRECONDITION
// for a key whose type does not fit it; DATA_LOSS "decryption failed" for
// any failure after that.
StatusOr<SecretBytes> UnwrapKey(const crypto::PrivateKey& private_key,
                                std::string_view algorithm, std::span<const uint8_t> wrapped,
                                std::span<const uint8_t> label);

}  // namespace vmseal::ovf::internal

#endif  // VMSEAL_OVF_INTERNAL_KEY_WRAP_H_
