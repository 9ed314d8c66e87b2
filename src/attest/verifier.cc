#include "attest/verifier.h"

#include <openssl/pem.h>

#include <algorithm>

#include "attest/reason.h"
#include "attest/tpm_format.h"
#include "crypto/keys.h"

namespace vmseal::attest {
namespace {

constexpr TPMA_OBJECT kTpmOrigin =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;

bool Has(TPMA_OBJECT attrs, TPMA_OBJECT bits) { return (attrs & bits) == bits; }

bool SameBytes(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

StatusOr<std::string> PemOf(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key) != 1) return crypto::SslError("PEM");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

// Checks the signature, then the nonce: the order matters only for which
// reason a doubly broken evidence reports.
Status CheckSignedAttest(const AkPublic& ak, std::span<const uint8_t> attest_bytes,
                         std::span<const uint8_t> signature_bytes, const TPMS_ATTEST& attest,
                         std::span<const uint8_t> nonce, std::string_view what) {
  if (nonce.size() < kMinNonceBytes || nonce.size() > kMaxNonceBytes) {
    return InvalidArgumentError("issued nonce must be 16..64 bytes");
  }
  ASSIGN_OR_RETURN(TPMT_SIGNATURE sig, ParseSignature(signature_bytes));
  Status s = VerifyRsaSsaSha256(ak.key(), attest_bytes, sig);
  if (ReasonOf(s) == Reason::kBadSignature) {
    return AttestFailure(Reason::kBadSignature,
                         std::string(what) + " signature does not verify under the AK");
  }
  RETURN_IF_ERROR(s);
  if (!SameBytes(std::span(attest.extraData.buffer, attest.extraData.size), nonce)) {
    return AttestFailure(Reason::kNonceMismatch,
                         std::string(what) + " extraData differs from the issued nonce");
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::shared_ptr<const AkPublic>> AkPublic::Parse(std::span<const uint8_t> tpmt_public) {
  ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ParsePublic(tpmt_public));
  if (pub.type != TPM2_ALG_RSA || pub.nameAlg != TPM2_ALG_SHA256) {
    return AttestFailure(Reason::kAkAttributes, "AK is not RSA with nameAlg SHA-256");
  }
  TPMA_OBJECT a = pub.objectAttributes;
  if (!Has(a, kTpmOrigin | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT) ||
      (a & TPMA_OBJECT_DECRYPT)) {
    return AttestFailure(Reason::kAkAttributes, "AK is not a TPM-generated restricted signing key");
  }
  const TPMS_RSA_PARMS& p = pub.parameters.rsaDetail;
  if (p.keyBits != kRsaKeyBits || p.scheme.scheme != TPM2_ALG_RSASSA ||
      p.scheme.details.rsassa.hashAlg != TPM2_ALG_SHA256 ||
      p.symmetric.algorithm != TPM2_ALG_NULL) {
    return AttestFailure(Reason::kAkAttributes, "AK is not RSA-2048 RSASSA-SHA256");
  }
  if (pub.unique.rsa.size != kRsaKeyBits / 8) {
    return AttestFailure(Reason::kAkAttributes, "AK modulus has the wrong size");
  }
  ASSIGN_OR_RETURN(crypto::EvpPkeyPtr key, RsaPublicKey(pub));
  Bytes marshalled(tpmt_public.begin(), tpmt_public.end());
  Bytes name = ComputeName(marshalled);
  return std::shared_ptr<const AkPublic>(
      new AkPublic(std::move(marshalled), std::move(name), std::move(key)));
}

StatusOr<std::string> AkPublic::SpkiPem() const { return PemOf(key_.get()); }

StatusOr<crypto::PublicKey> BindingKeyPublic::Key() const {
  return crypto::PublicKey::FromRsaModulus(modulus, exponent);
}

std::string BindingKeyPublic::SpkiPem() const {
  auto key = Key();
  return key.ok() ? key->ToPem() : std::string();
}

StatusOr<VerifiedQuote> VerifyQuote(const AkPublic& ak, std::span<const uint8_t> nonce,
                                    const std::vector<uint32_t>& pcr_selection,
                                    const QuoteEvidence& quote) {
  ASSIGN_OR_RETURN(TPMS_ATTEST attest, ParseAttest(quote.attest, kAttestTypeQuote));
  RETURN_IF_ERROR(CheckSignedAttest(ak, quote.attest, quote.signature, attest, nonce, "quote"));

  auto indices = PcrIndices(attest.attested.quote.pcrSelect);
  std::vector<uint32_t> wanted = pcr_selection;
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  if (!indices.ok() || *indices != wanted) {
    return AttestFailure(Reason::kPcrSelectionMismatch,
                         "quote covers other PCRs than the requested SHA-256 selection");
  }
  if (quote.pcr_values.size() != wanted.size()) {
    return AttestFailure(Reason::kMalformedEvidence, "PCR value count differs from the selection");
  }
  crypto::Sha256Hasher hasher;
  for (const Bytes& v : quote.pcr_values) {
    if (v.size() != crypto::kSha256Bytes) {
      return AttestFailure(Reason::kMalformedEvidence, "PCR value is not 32 bytes");
    }
    hasher.Update(v);
  }
  crypto::Sha256Digest digest = hasher.Finish();
  const TPM2B_DIGEST& reported = attest.attested.quote.pcrDigest;
  if (!SameBytes(std::span(reported.buffer, reported.size), digest)) {
    return AttestFailure(Reason::kPcrDigestMismatch,
                         "reported PCR values do not hash to the quoted pcrDigest");
  }
  VerifiedQuote out;
  out.pcr_indices = std::move(wanted);
  out.pcr_values = quote.pcr_values;
  out.clock = attest.clockInfo.clock;
  out.reset_count = attest.clockInfo.resetCount;
  out.restart_count = attest.clockInfo.restartCount;
  out.firmware_version = attest.firmwareVersion;
  return out;
}

StatusOr<BindingKeyPublic> VerifyCertify(const AkPublic& ak, std::span<const uint8_t> nonce,
                                         const CertifyEvidence& certify) {
  ASSIGN_OR_RETURN(TPMS_ATTEST attest, ParseAttest(certify.attest, kAttestTypeCertify));
  RETURN_IF_ERROR(
      CheckSignedAttest(ak, certify.attest, certify.signature, attest, nonce, "certify"));
  ASSIGN_OR_RETURN(TPMT_PUBLIC pub, ParsePublic(certify.key_public));
  Bytes name = ComputeName(certify.key_public);
  const TPM2B_NAME& certified = attest.attested.certify.name;
  if (pub.nameAlg != TPM2_ALG_SHA256 ||
      !SameBytes(std::span(certified.name, certified.size), name)) {
    return AttestFailure(Reason::kBindingKeyNotCertified,
                         "certify names a different key than the binding key presented");
  }
  TPMA_OBJECT a = pub.objectAttributes;
  if (pub.type != TPM2_ALG_RSA || !Has(a, kTpmOrigin | TPMA_OBJECT_DECRYPT) ||
      (a & TPMA_OBJECT_RESTRICTED) || (a & TPMA_OBJECT_SIGN_ENCRYPT)) {
    return AttestFailure(Reason::kBindingKeyAttributes,
                         "binding key must be fixedTPM, fixedParent, sensitiveDataOrigin, "
                         "decrypt, not restricted, not sign");
  }
  const TPMS_RSA_PARMS& p = pub.parameters.rsaDetail;
  if (p.keyBits != kRsaKeyBits || pub.unique.rsa.size != kRsaKeyBits / 8 ||
      p.scheme.scheme != TPM2_ALG_OAEP || p.scheme.details.oaep.hashAlg != TPM2_ALG_SHA256 ||
      p.symmetric.algorithm != TPM2_ALG_NULL) {
    return AttestFailure(Reason::kBindingKeyAttributes,
                         "binding key must be RSA-2048 with scheme OAEP-SHA256");
  }
  BindingKeyPublic out;
  out.name = std::move(name);
  out.modulus = B(pub.unique.rsa);
  out.exponent = RsaExponent(pub);
  return out;
}

StatusOr<VerifiedEvidence> VerifyEvidence(const AkPublic& ak, std::span<const uint8_t> nonce,
                                          const std::vector<uint32_t>& pcr_selection,
                                          const Evidence& evidence) {
  if (!SameBytes(evidence.nonce, nonce)) {
    return AttestFailure(Reason::kNonceMismatch, "evidence answers another nonce");
  }
  VerifiedEvidence out;
  ASSIGN_OR_RETURN(out.quote, VerifyQuote(ak, nonce, pcr_selection, evidence.quote));
  ASSIGN_OR_RETURN(out.binding_key, VerifyCertify(ak, nonce, evidence.certify));
  return out;
}

}  // namespace vmseal::attest
