// The key-encryption key (KEK) that protects customer private keys at rest.
// Wrapping is AES-256-GCM with associated data that names what is wrapped
// (key id + customer id), so a wrapped blob moved to another row does not
// unwrap. Wire format of a wrapped key (docs/kms-storage.md):
//   version 0x01 || nonce (12) || ciphertext || tag (16)
#ifndef VMSEAL_KMS_KEK_H_
#define VMSEAL_KMS_KEK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::kms {

inline constexpr uint8_t kWrappedKeyVersion = 0x01;
inline constexpr size_t kKekBytes = 32;
inline constexpr size_t kWrapNonceBytes = 12;
inline constexpr size_t kWrapTagBytes = 16;

// Wraps and unwraps key material. Thread-safe.
class KeyEncryptionKey {
 public:
  virtual ~KeyEncryptionKey() = default;
  // A stable, non-secret identifier stored beside each wrapped key, e.g.
  // "file:3fa4…" (derived from the key, so a wrong KEK file is detected).
  virtual const std::string& id() const = 0;
  // Encrypts `plaintext` under a fresh random nonce, bound to `aad`.
  virtual StatusOr<std::string> Wrap(const SecretBytes& plaintext, std::string_view aad) const = 0;
  // Inverse of Wrap; UNAUTHENTICATED "decryption failed" for any mismatch.
  virtual StatusOr<SecretBytes> Unwrap(std::string_view wrapped, std::string_view aad) const = 0;

  // Whether this KEK (or, for a ring of KEKs during a rotation, one of its
  // members: kms/kek_rotation.h) opens records that name `kek_id`.
  virtual bool Holds(std::string_view kek_id) const { return kek_id == id(); }
  // Unwrap with the KEK a record names: FAILED_PRECONDITION "kek_mismatch:
  // ..." unless Holds(kek_id).
  virtual StatusOr<SecretBytes> UnwrapUnder(std::string_view kek_id, std::string_view wrapped,
                                            std::string_view aad) const;

  // A wrap for a record that names its KEK: `wrapped` is under exactly the
  // KEK `kek_id` names, and `hold` keeps that KEK current until released
  // (a ring's reload waits for it: kms/kek_rotation.h), so a record stored
  // while `hold` lives cannot name a KEK that a re-wrap has passed already.
  struct WrappedForRecord {
    std::string kek_id;
    std::string wrapped;
    std::shared_ptr<void> hold;
  };
  virtual StatusOr<WrappedForRecord> WrapForRecord(const SecretBytes& plaintext, std::string_view aad) const;
};

// The associated data of the service secrets stored wrapped under the KEK
// (service_secrets: "<kek id> <base64 of the wrapped value>").
inline constexpr char kNonceKeySecretName[] = "nonce_mac_key";
inline constexpr char kNonceKeyAad[] = "vmseal-nonce-mac-key-v1";
inline constexpr char kLogKeySecretName[] = "audit_log_key";
inline constexpr char kLogKeyAad[] = "vmseal-audit-log-key-v1";

// The associated data for a customer private key: a domain label and the
// length-prefixed key id and customer id.
std::string CustomerKeyAad(std::string_view key_id, std::string_view customer_id);

// Writes a new random 32-byte KEK to `path` with mode 0600 (fails if it exists).
Status CreateFileKek(Env* env, const std::string& path);

// Loads a KEK file. FAILED_PRECONDITION if the file is readable or writable
// by group or others, INVALID_ARGUMENT if it is not exactly 32 bytes.
StatusOr<std::unique_ptr<KeyEncryptionKey>> LoadFileKek(Env* env, const std::string& path);

// A KEK from raw bytes (tests).
StatusOr<std::unique_ptr<KeyEncryptionKey>> KekFromBytes(SecretBytes key);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_KEK_H_
