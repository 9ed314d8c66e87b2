// What the host agent asks of the key management server. The production
// implementation talks HTTPS with the host's mTLS identity; tests may use the
// KMS core in process. The shapes follow docs/protocol.md §4-5.
#ifndef VMSEAL_HOST_KMS_API_H_
#define VMSEAL_HOST_KMS_API_H_

#include <string>

#include "attest/evidence.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/primitives.h"

namespace vmseal::host {

// A key release request: the wrapped key and image identity from the
// package metadata, plus fresh evidence over a nonce the KMS issued.
struct ReleaseRequest {
  // The portal's job: the KMS releases only against the grant the portal
  // registered for this job on this host (no_grant otherwise).
  std::string job_id;
  std::string image_id;
  std::string tenant;
  std::string key_id;                // "sha256:<hex>" of the customer key
  uint64_t key_version = 1;
  std::string wrap_algorithm;        // EncryptionMethod Algorithm URI
  crypto::Bytes oaep_label;          // as stored in the package
  crypto::Bytes wrapped_key;         // CipherValue
  attest::Evidence evidence;
  // The package's signed metadata exactly as stored (ovf::Package:
  // descriptor_name(), descriptor_text(), manifest_text(),
  // certificate_text()). The KMS releases only a key that the tenant's
  // registered signing key signed (docs/protocol.md §5); the HTTPS client
  // checks the signature against the KMS CA first.
  std::string descriptor_name;
  std::string descriptor;
  std::string manifest;
  std::string package_cert;          // "" for an unsigned package
  // Which placement of the job this is (PortalJob::attempt): the KMS
  // releases only against the grant of the job's newest attempt
  // (stale_attempt for an older one).
  uint64_t attempt = 0;
};

// A granted release: the data key re-wrapped with RSA-OAEP-SHA256 to the
// TPM binding key that the evidence certified, under `label` (which ends in
// a zero byte, as the TPM requires).
struct ReleasedKey {
  crypto::Bytes rewrapped_key;
  crypto::Bytes label;
  // The registered signing key (hex SHA-256 of its SPKI) the KMS checked
  // the package's signature with; empty for an unsigned release.
  std::string signer_key_id;
};

// Thread-compatible; one call at a time per object.
class KmsApi {
 public:
  virtual ~KmsApi() = default;

  // Enrollment step 1: the KMS checks the EK certificate and answers with a
  // MakeCredential challenge for the AK.
  virtual StatusOr<attest::CredentialChallenge> BeginEnrollment(
      const attest::EnrollmentRequest& request) = 0;
  // Enrollment step 2: the secret ActivateCredential recovered.
  virtual Status CompleteEnrollment(const SecretBytes& secret) = 0;

  // A fresh single-use nonce.
  virtual StatusOr<crypto::Bytes> Nonce() = 0;

  // Records a verdict for `evidence` (periodic re-attestation).
  virtual Status Attest(const attest::Evidence& evidence) = 0;

  // Verifies the evidence, applies the release policy and re-wraps the key.
  // A denial is PERMISSION_DENIED whose message starts with the
  // machine-readable reason (e.g. "pcr_policy: ...").
  virtual StatusOr<ReleasedKey> Release(const ReleaseRequest& request) = 0;
};

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_KMS_API_H_
