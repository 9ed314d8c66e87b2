// Asymmetric key pairs used by vmseal: RSA (customer keys and TPM binding
// keys), X25519 (customer keys) and ECDSA P-256 (the KMS's CA key).
//
// Encodings: private keys are PKCS#8 PEM ("BEGIN PRIVATE KEY"), public keys
// are SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY").
//
// Key id: the lowercase hex SHA-256 of the public key's DER-encoded
// SubjectPublicKeyInfo (64 characters). It is the same for a private key and
// its public key and is stable across PEM re-encodings
// (docs/format/key-wrap.md, "Key ids").
//
// Thread safety: PrivateKey and PublicKey are immutable after creation and may
// be used from several threads at once.
#ifndef VMSEAL_CRYPTO_KEYS_H_
#define VMSEAL_CRYPTO_KEYS_H_

#include <openssl/evp.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::crypto {

// The key kinds vmseal creates and accepts. RSA keys of any other size and
// other curves are rejected with INVALID_ARGUMENT when parsed.
enum class KeyType {
  kRsa2048,  // TPM binding keys; allowed for customers
  kRsa3072,  // the default customer key
  kX25519,   // customer keys (wrap only, cannot sign)
  kEcP256,   // ECDSA P-256: the KMS's CA and service identities
};

// "rsa2048", "rsa3072", "x25519", "p256".
std::string_view KeyTypeName(KeyType type);
// Inverse of KeyTypeName; INVALID_ARGUMENT for anything else.
StatusOr<KeyType> ParseKeyType(std::string_view name);

// The KeyId of an SPKI PEM without parsing the key: hex SHA-256 of the DER
// inside the PEM. Equal to PublicKey::FromPem(pem)->KeyId() whenever that DER
// is the canonical encoding (as in every PEM that ToPem writes); a cheap
// look-up key, not a validation. INVALID_ARGUMENT if `pem` is not a "PUBLIC
// KEY" PEM.
StatusOr<std::string> KeyIdOfPem(std::string_view pem);

// A public key. Copyable (copies share the immutable OpenSSL key).
class PublicKey {
 public:
  // Parses an SPKI PEM ("BEGIN PUBLIC KEY") of a supported type.
  static StatusOr<PublicKey> FromPem(std::string_view pem);
  // Parses a DER-encoded SubjectPublicKeyInfo of a supported type.
  static StatusOr<PublicKey> FromDer(std::span<const uint8_t> der);
  // Builds an RSA public key from a big-endian modulus and public exponent,
  // e.g. from a TPM2B_PUBLIC of a binding key (an exponent of 0 in a TPM
  // structure means 65537: the caller passes 65537 then). The modulus must be
  // 2048 or 3072 bits.
  static StatusOr<PublicKey> FromRsaModulus(std::span<const uint8_t> modulus,
                                            uint64_t exponent);
  // Takes a reference to `pkey` (which must be of a supported type).
  static StatusOr<PublicKey> FromEvpPkey(EVP_PKEY* pkey);

  PublicKey(const PublicKey& other);
  PublicKey& operator=(const PublicKey& other);
  PublicKey(PublicKey&&) noexcept = default;
  PublicKey& operator=(PublicKey&&) noexcept = default;
  ~PublicKey() = default;

  KeyType type() const { return type_; }
  // SPKI PEM, ending in a newline.
  std::string ToPem() const;
  // SPKI DER.
  Bytes ToDer() const;
  // Hex SHA-256 of ToDer() (see the file comment).
  std::string KeyId() const;
  // The raw 32-byte public value of an X25519 key; empty for other types.
  Bytes RawX25519() const;
  // The underlying key, owned by this object.
  EVP_PKEY* pkey() const { return pkey_.get(); }

 private:
  PublicKey(EvpPkeyPtr pkey, KeyType type) : pkey_(std::move(pkey)), type_(type) {}
  EvpPkeyPtr pkey_;
  KeyType type_;
};

// A private key (with its public half). Move-only; the OpenSSL key is freed
// (and its secret parts cleared by OpenSSL) on destruction.
class PrivateKey {
 public:
  // A fresh key from the OpenSSL CSPRNG.
  static StatusOr<PrivateKey> Generate(KeyType type);
  // Parses a PKCS#8 PEM of a supported type (unencrypted). Traditional
  // "BEGIN RSA PRIVATE KEY" PEM is accepted as well.
  static StatusOr<PrivateKey> FromPem(const SecretBytes& pem);
  // An X25519 key from its 32 raw private bytes.
  static StatusOr<PrivateKey> FromRawX25519(const SecretBytes& raw);

  PrivateKey(PrivateKey&&) noexcept = default;
  PrivateKey& operator=(PrivateKey&&) noexcept = default;
  ~PrivateKey() = default;

  KeyType type() const { return type_; }
  // PKCS#8 PEM, in a SecretBytes since it holds the key.
  StatusOr<SecretBytes> ToPem() const;
  // The public half.
  PublicKey Public() const;
  // The raw 32-byte public value of an X25519 key (same as
  // Public().RawX25519() without re-encoding the key); empty for other types.
  Bytes RawX25519Public() const;
  // Same as Public().KeyId().
  std::string KeyId() const;
  // The underlying key, owned by this object.
  EVP_PKEY* pkey() const { return pkey_.get(); }

 private:
  PrivateKey(EvpPkeyPtr pkey, KeyType type) : pkey_(std::move(pkey)), type_(type) {}
  EvpPkeyPtr pkey_;
  KeyType type_;
};

// Reads a private key PEM file. Refuses (PERMISSION_DENIED, naming the file
// and its mode) a file that is readable or writable by group or others, and
// anything that is not a regular file. NOT_FOUND if it does not exist.
StatusOr<PrivateKey> LoadPrivateKeyFile(const std::string& path);
// Reads a public key PEM file.
StatusOr<PublicKey> LoadPublicKeyFile(Env* env, const std::string& path);
// Writes `key` as PKCS#8 PEM to `path`, mode 0600, atomically (an existing
// file is replaced; callers that must not overwrite check first).
Status WritePrivateKeyFile(Env* env, const std::string& path, const PrivateKey& key);

// Reads a small secret file (a raw key, a key-encryption key) into
// SecretBytes, with the same permission rule as LoadPrivateKeyFile.
StatusOr<SecretBytes> ReadSecretFile(const std::string& path);

}  // namespace vmseal::crypto

#endif  // VMSEAL_CRYPTO_KEYS_H_
