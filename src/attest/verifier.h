// Server-side verification of TPM evidence (quote + certify of the binding
// key). Pure OpenSSL + tss2-mu: no TPM. All functions are stateless and
// thread-safe; failures carry a Reason (attest/reason.h). Nonce freshness and
// single use are the caller's job (the KMS issues and consumes nonces).
#ifndef VMSEAL_ATTEST_VERIFIER_H_
#define VMSEAL_ATTEST_VERIFIER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attest/evidence.h"
#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/ssl_util.h"

namespace vmseal::attest {

// An attestation key's public half, checked to be what vmseal hosts create:
// RSA-2048, restricted signing, RSASSA-SHA256, fixedTPM, fixedParent,
// sensitiveDataOrigin, nameAlg SHA-256. Immutable; thread-safe.
class AkPublic {
 public:
  // Parses a marshalled TPMT_PUBLIC. malformed_evidence or ak_attributes.
  static StatusOr<std::shared_ptr<const AkPublic>> Parse(std::span<const uint8_t> tpmt_public);

  // 0x000B || SHA-256(TPMT_PUBLIC): what MakeCredential binds to.
  const Bytes& name() const { return name_; }
  const Bytes& marshalled() const { return marshalled_; }
  EVP_PKEY* key() const { return key_.get(); }
  // SubjectPublicKeyInfo PEM (for tpm2_checkquote and logs).
  StatusOr<std::string> SpkiPem() const;

 private:
  AkPublic(Bytes marshalled, Bytes name, crypto::EvpPkeyPtr key)
      : marshalled_(std::move(marshalled)), name_(std::move(name)), key_(std::move(key)) {}
  const Bytes marshalled_;
  const Bytes name_;
  const crypto::EvpPkeyPtr key_;
};

// What a verified quote says.
struct VerifiedQuote {
  std::vector<uint32_t> pcr_indices;  // Ascending.
  std::vector<Bytes> pcr_values;      // Same order, 32 bytes each.
  uint64_t clock = 0;                 // TPM clock (ms).
  uint32_t reset_count = 0;
  uint32_t restart_count = 0;
  uint64_t firmware_version = 0;
};

// The binding key's public half after certification, exported for re-wrap.
struct BindingKeyPublic {
  Bytes name;            // 0x000B || SHA-256(TPMT_PUBLIC).
  Bytes modulus;         // Big-endian, 256 bytes.
  uint32_t exponent;     // 65537 where the TPM template says 0 (its default).

  // The key, to re-wrap to (built from modulus and exponent: cheaper than
  // decoding an encoded form).
  StatusOr<crypto::PublicKey> Key() const;
  // SubjectPublicKeyInfo PEM of the same key, built on demand (encoding
  // through OpenSSL 3's encoders costs more than the whole rest of the
  // verification, and the release path needs only Key()). Empty if the
  // modulus is not a valid RSA key.
  std::string SpkiPem() const;
};

// Verifies a quote: signature by `ak` over the raw attest bytes, extraData ==
// `nonce`, pcrSelect == `pcr_selection` (SHA-256 bank), pcrDigest ==
// SHA-256(concatenated pcr_values). Reasons: malformed_evidence,
// bad_signature, nonce_mismatch, pcr_selection_mismatch, pcr_digest_mismatch.
StatusOr<VerifiedQuote> VerifyQuote(const AkPublic& ak, std::span<const uint8_t> nonce,
                                    const std::vector<uint32_t>& pcr_selection,
                                    const QuoteEvidence& quote);

// Verifies that `ak` certified `certify.key_public` with `nonce` and that the
// key is a binding key (RSA-2048, fixedTPM, fixedParent, sensitiveDataOrigin,
// decrypt, not restricted, not sign, scheme OAEP-SHA256, nameAlg SHA-256).
// Reasons: malformed_evidence, bad_signature, nonce_mismatch,
// binding_key_not_certified, binding_key_attributes.
StatusOr<BindingKeyPublic> VerifyCertify(const AkPublic& ak, std::span<const uint8_t> nonce,
                                         const CertifyEvidence& certify);

// Both of the above for a full Evidence (its nonce must equal `nonce` too).
struct VerifiedEvidence {
  VerifiedQuote quote;
  BindingKeyPublic binding_key;
};
StatusOr<VerifiedEvidence> VerifyEvidence(const AkPublic& ak, std::span<const uint8_t> nonce,
                                          const std::vector<uint32_t>& pcr_selection,
                                          const Evidence& evidence);

}  // namespace vmseal::attest

#endif  // VMSEAL_ATTEST_VERIFIER_H_
