// Digital signatures through OpenSSL EVP: ECDSA P-256 (customer signing keys;
// DER-encoded ECDSA-Sig-Value, as `openssl dgst -sign` writes) and RSA
// PKCS#1 v1.5 (what ovftool signs OVF packages with). The message is hashed
// with the named digest inside EVP_DigestSign/EVP_DigestVerify.
#ifndef VMSEAL_CRYPTO_SIGNATURE_H_
#define VMSEAL_CRYPTO_SIGNATURE_H_

#include <span>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"

namespace vmseal::crypto {

enum class SignatureDigest { kSha1, kSha256, kSha512 };

// Signs `message` with `key` (P-256 or RSA). INVALID_ARGUMENT for a key that
// cannot sign (X25519). SHA-1 is refused for signing.
StatusOr<Bytes> Sign(const PrivateKey& key, SignatureDigest digest,
                     std::span<const uint8_t> message);

// Verifies `signature` over `message` with `key`. UNAUTHENTICATED
// "signature verification failed" when it does not verify (a malformed
// signature is the same failure); INVALID_ARGUMENT for a key that cannot
// sign.
Status VerifySignature(const PublicKey& key, SignatureDigest digest,
                       std::span<const uint8_t> message, std::span<const uint8_t> signature);

}  // namespace vmseal::crypto

#endif  // VMSEAL_CRYPTO_SIGNATURE_H_
