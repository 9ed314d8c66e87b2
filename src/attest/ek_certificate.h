// Verification of TPM endorsement key certificates against a manufacturer CA
// bundle (PEM). EK certificates (TCG EK Credential Profile) often carry a
// critical subjectAltName made only of a directoryName with TCG attributes and
// sometimes critical extensions OpenSSL does not implement (e.g.
// subjectDirectoryAttributes, 2.5.29.9). OpenSSL refuses any unhandled
// critical extension; we accept exactly the TCG ones listed in
// docs/format/attestation.md ("EK certificate") on the leaf only, and keep
// refusing anything else. Immutable after Create(); Verify() is thread-safe.
#ifndef VMSEAL_ATTEST_EK_CERTIFICATE_H_
#define VMSEAL_ATTEST_EK_CERTIFICATE_H_

#include <memory>
#include <span>
#include <string_view>

#include "base/status.h"
#include "crypto/ssl_util.h"

namespace vmseal::attest {

class EkCertificateVerifier {
 public:
  // `ca_bundle_pem`: one or more PEM certificates, all trusted as anchors
  // (root and intermediate manufacturer CAs). INVALID_ARGUMENT if none parse.
  static StatusOr<std::unique_ptr<EkCertificateVerifier>> Create(std::string_view ca_bundle_pem);

  // Verifies a DER EK certificate (exactly one certificate, no trailing
  // bytes) chains to the bundle and holds an RSA-2048 key; returns that key.
  // Fails with ek_chain_invalid (malformed_evidence if not DER).
  StatusOr<crypto::EvpPkeyPtr> Verify(std::span<const uint8_t> der) const;

 private:
  explicit EkCertificateVerifier(crypto::X509StorePtr store) : store_(std::move(store)) {}
  const crypto::X509StorePtr store_;
};

}  // namespace vmseal::attest

#endif  // VMSEAL_ATTEST_EK_CERTIFICATE_H_
