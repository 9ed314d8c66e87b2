#include "host/testing/in_process_kms.h"

#include "attest/ek_certificate.h"
#include "attest/verifier.h"
#include "crypto/key_wrap.h"
#include "ovf/package_format.h"

namespace vmseal::host::testing {

InProcessKms::InProcessKms(std::string ca_bundle, crypto::PrivateKey customer_key,
                           std::vector<uint32_t> pcrs)
    : ca_bundle_(std::move(ca_bundle)),
      customer_key_(std::move(customer_key)),
      pcrs_(std::move(pcrs)) {}

StatusOr<attest::CredentialChallenge> InProcessKms::BeginEnrollment(
    const attest::EnrollmentRequest& request) {
  ASSIGN_OR_RETURN(auto verifier, attest::EkCertificateVerifier::Create(ca_bundle_));
  ASSIGN_OR_RETURN(crypto::EvpPkeyPtr ek, verifier->Verify(request.ek_certificate));
  ASSIGN_OR_RETURN(pending_ak_, attest::AkPublic::Parse(request.ak_public));
  credential_ = SecretBytes::Random(32);
  return attest::MakeCredential(ek.get(), pending_ak_->name(), credential_);
}

Status InProcessKms::CompleteEnrollment(const SecretBytes& secret) {
  RETURN_IF_ERROR(attest::CheckActivation(credential_, secret));
  ak_ = pending_ak_;
  return OkStatus();
}

StatusOr<crypto::Bytes> InProcessKms::Nonce() {
  crypto::Bytes n = crypto::RandomBytes(32);
  nonces_.insert(crypto::HexEncode(n));
  return n;
}

Status InProcessKms::Attest(const attest::Evidence& evidence) {
  return Verify(evidence).status();
}

StatusOr<ReleasedKey> InProcessKms::Release(const ReleaseRequest& request) {
  ++release_calls;
  ASSIGN_OR_RETURN(attest::VerifiedEvidence verified, Verify(request.evidence));
  const crypto::Bytes& pcr7 = verified.quote.pcr_values.back();
  if (allowed_pcr7.count(crypto::HexEncode(pcr7)) == 0) {
    return PermissionDeniedError("pcr_policy: PCR 7 matches no allowed flavor");
  }
  // As the KMS: the package's key wrap must be the customer key's.
  const bool x25519 = customer_key_.type() == crypto::KeyType::kX25519;
  if (request.wrap_algorithm != (x25519 ? ovf::kX25519WrapUri : ovf::kRsaOaepUri)) {
    return PermissionDeniedError("unknown_key: the customer key does not unwrap " +
                                 request.wrap_algorithm);
  }
  ASSIGN_OR_RETURN(SecretBytes data_key,
                   crypto::UnwrapKey(customer_key_, request.wrapped_key,
                                     crypto::AsStringView(request.oaep_label)));
  ASSIGN_OR_RETURN(crypto::PublicKey binding, verified.binding_key.Key());
  std::string ad = "vmseal-release:" + request.image_id;
  ASSIGN_OR_RETURN(crypto::Bytes rewrapped,
                   crypto::RsaOaepWrap(binding, data_key, ad, crypto::OaepLabel::kTpm));
  ReleasedKey out;
  out.rewrapped_key = std::move(rewrapped);
  out.label.assign(ad.begin(), ad.end());
  out.label.push_back(0);
  return out;
}

StatusOr<attest::VerifiedEvidence> InProcessKms::Verify(const attest::Evidence& evidence) {
  if (!ak_) return PermissionDeniedError("not_enrolled: host has no activated AK");
  if (nonces_.erase(crypto::HexEncode(evidence.nonce)) != 1) {
    return PermissionDeniedError("nonce_unknown: nonce was not issued or already used");
  }
  return attest::VerifyEvidence(*ak_, evidence.nonce, pcrs_, evidence);
}

}  // namespace vmseal::host::testing
