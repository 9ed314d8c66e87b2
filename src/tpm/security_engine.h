// The host's TPM security engine over tpm2-tss ESAPI: the keys a vmseal host
// needs (SRK, AK, binding key), the evidence the KMS verifies, enrollment
// (EK certificate + ActivateCredential) and decryption of released keys inside
// the TPM. See docs/format/attestation.md for the bytes it produces.
//
// Keys: the SRK (owner hierarchy) and the AK (endorsement hierarchy,
// restricted RSASSA-SHA256) are primaries, re-derived from the TPM's seeds on
// every start; the binding key (RSA-2048 decrypt, OAEP-SHA256 locked) is
// created once under the SRK and its public/private blobs are kept in
// `state_dir` (0600, atomic writes), so the same key reloads after a restart
// of the agent or of the TPM. The binding key's private half never leaves
// the TPM. Three transient objects stay loaded (SRK, AK, binding key); the EK
// is created only for ActivateCredential and flushed right after.
//
// If the TPM connection breaks (e.g. the TPM restarted: objects and sessions
// gone, PCRs reset), read-only operations and Decrypt reconnect once, reload
// the keys and retry; PcrExtend does not (a measurement must not be replayed
// into a fresh PCR history).
//
// Not thread-safe: a TPM executes one command at a time; callers serialize.
#ifndef VMSEAL_TPM_SECURITY_ENGINE_H_
#define VMSEAL_TPM_SECURITY_ENGINE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attest/evidence.h"
#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::tpm {

using crypto::Bytes;

struct SecurityEngineOptions {
  // TCTI configuration passed to Tss2_TctiLdr_Initialize, e.g.
  // "device:/dev/tpmrm0" on a real host or "swtpm:path=/d/tpm.sock". Required:
  // an empty string is refused (tss2 would silently pick a default TPM).
  std::string tcti;
  // Directory for the binding key blobs (created 0700 if missing). Required.
  std::string state_dir;
  // File system seam. Default: Env::Default().
  Env* env = nullptr;
};

class SecurityEngine {
 public:
  // Connects, starts the TPM if needed, derives SRK and AK, and loads the
  // binding key from `state_dir` or creates and persists it on first start.
  // FAILED_PRECONDITION if a stored AK public no longer matches (TPM cleared).
  static StatusOr<std::unique_ptr<SecurityEngine>> Create(const SecurityEngineOptions& options);
  ~SecurityEngine();
  SecurityEngine(const SecurityEngine&) = delete;
  SecurityEngine& operator=(const SecurityEngine&) = delete;

  // The RSA EK certificate (DER, trailing NV padding removed) from NV index
  // 0x01c00002. NOT_FOUND if the TPM has none.
  StatusOr<Bytes> EkCertificate();
  // Marshalled TPMT_PUBLIC of the AK / of the binding key.
  const Bytes& AkPublic() const { return ak_public_; }
  const Bytes& BindingKeyPublic() const { return binding_public_; }
  // EkCertificate() + AkPublic() for the KMS.
  StatusOr<attest::EnrollmentRequest> EnrollmentRequest();

  // Recovers the credential the KMS protected with MakeCredential to this
  // TPM's EK for the AK's name (EK policy session: PolicySecret(endorsement)).
  // Fails (PERMISSION_DENIED "activate credential failed") if the blob was
  // made for another EK or another name.
  StatusOr<SecretBytes> ActivateCredential(const attest::CredentialChallenge& challenge);

  // Quote of `pcrs` (SHA-256 bank) with `nonce` plus the PCR values read
  // right before (re-read and re-quoted if they changed meanwhile).
  StatusOr<attest::QuoteEvidence> Quote(std::span<const uint8_t> nonce,
                                        const std::vector<uint32_t>& pcrs);
  // Certify of the binding key by the AK with `nonce`.
  StatusOr<attest::CertifyEvidence> CertifyBindingKey(std::span<const uint8_t> nonce);
  // Both, as the KMS expects them.
  StatusOr<attest::Evidence> Attest(std::span<const uint8_t> nonce,
                                    const std::vector<uint32_t>& pcrs);

  // PCR_Extend(pcr, SHA-256 bank, digest) for tests and the demo (a "good"
  // or a "tampered" host). `digest` must be 32 bytes.
  Status PcrExtend(uint32_t pcr, std::span<const uint8_t> digest);
  // Current SHA-256 values of `pcrs`, ascending index.
  StatusOr<std::vector<Bytes>> ReadPcrs(const std::vector<uint32_t>& pcrs);

  // RSA-OAEP-SHA256 decryption with the binding key inside the TPM. `label`
  // must end with a zero byte (the TPM requires it). Runs in a session salted
  // to the SRK with response encryption, so the plaintext never crosses the
  // TCTI in clear. PERMISSION_DENIED "decryption failed" on any bad input.
  StatusOr<SecretBytes> Decrypt(std::span<const uint8_t> ciphertext,
                                std::span<const uint8_t> label);

  // Test hook: certifies, with the AK and `nonce`, a freshly created RSA
  // signing key under the SRK (a key a binding key must not be).
  StatusOr<attest::CertifyEvidence> CertifySigningKeyForTesting(std::span<const uint8_t> nonce);

 private:
  struct Impl;
  explicit SecurityEngine(std::unique_ptr<Impl> impl);
  Status Init(const SecurityEngineOptions& options);
  // Drops the connection and all loaded objects and starts over (same TCTI
  // and state dir): the binding key reloads from its blobs.
  Status Reconnect();
  // Runs `op`; if it failed with UNAVAILABLE (the TCTI connection broke,
  // e.g. the TPM restarted), reconnects once and runs it again.
  template <typename F>
  auto WithReconnect(F&& op) -> decltype(op()) {
    auto result = op();
    if (internal::AsStatus(result).code() != StatusCode::kUnavailable) return result;
    Status s = Reconnect();
    if (!s.ok()) return s;
    return op();
  }
  StatusOr<Bytes> EkCertificateOnce();
  StatusOr<SecretBytes> ActivateCredentialOnce(const attest::CredentialChallenge& challenge);
  StatusOr<std::vector<Bytes>> ReadPcrsOnce(const std::vector<uint32_t>& pcrs);
  StatusOr<attest::QuoteEvidence> QuoteOnce(std::span<const uint8_t> nonce,
                                            const std::vector<uint32_t>& pcrs);
  StatusOr<attest::CertifyEvidence> CertifyBindingKeyOnce(std::span<const uint8_t> nonce);
  StatusOr<attest::Evidence> AttestOnce(std::span<const uint8_t> nonce,
                                        const std::vector<uint32_t>& pcrs);
  StatusOr<SecretBytes> DecryptOnce(std::span<const uint8_t> ciphertext,
                                    std::span<const uint8_t> label);

  std::unique_ptr<Impl> impl_;
  Bytes ak_public_;
  Bytes binding_public_;
};

}  // namespace vmseal::tpm

#endif  // VMSEAL_TPM_SECURITY_ENGINE_H_
