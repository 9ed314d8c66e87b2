// A KMS double for tests and benchmarks (never linked into vmseal): the real
// checks of enrollment (EK certificate chain, MakeCredential/activation),
// evidence (attest::VerifyEvidence) and the real key wrapping (RSA-OAEP or
// X25519, as the customer key and the package's key wrap say), with an
// allow-list of PCR-7 values as its whole release policy. Not thread-safe.
#ifndef VMSEAL_HOST_TESTING_IN_PROCESS_KMS_H_
#define VMSEAL_HOST_TESTING_IN_PROCESS_KMS_H_

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "attest/credential.h"
#include "attest/verifier.h"
#include "crypto/keys.h"
#include "host/kms_api.h"

namespace vmseal::host::testing {

class InProcessKms final : public KmsApi {
 public:
  // `ca_bundle` is the TPM manufacturer CA (PEM); `customer_key` unwraps
  // the packages' data keys; `pcrs` is the PCR selection quotes must cover
  // (its last PCR is the one the allow-list applies to).
  InProcessKms(std::string ca_bundle, crypto::PrivateKey customer_key,
               std::vector<uint32_t> pcrs);

  StatusOr<attest::CredentialChallenge> BeginEnrollment(
      const attest::EnrollmentRequest& request) override;
  Status CompleteEnrollment(const SecretBytes& secret) override;
  StatusOr<crypto::Bytes> Nonce() override;
  Status Attest(const attest::Evidence& evidence) override;
  StatusOr<ReleasedKey> Release(const ReleaseRequest& request) override;

  // Hex values of the last selected PCR a host may have to get a key.
  std::set<std::string> allowed_pcr7;
  int release_calls = 0;

 private:
  StatusOr<attest::VerifiedEvidence> Verify(const attest::Evidence& evidence);

  const std::string ca_bundle_;
  const crypto::PrivateKey customer_key_;
  const std::vector<uint32_t> pcrs_;
  std::shared_ptr<const attest::AkPublic> pending_ak_;
  std::shared_ptr<const attest::AkPublic> ak_;
  SecretBytes credential_;
  std::set<std::string> nonces_;
};

}  // namespace vmseal::host::testing

#endif  // VMSEAL_HOST_TESTING_IN_PROCESS_KMS_H_
