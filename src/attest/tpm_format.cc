#include "attest/tpm_format.h"

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <tss2/tss2_mu.h>

#include <algorithm>
#include <cstring>

#include "attest/reason.h"

namespace vmseal::attest {
namespace {

using ParamBldPtr = crypto::SslPtr<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>;
using ParamPtr = crypto::SslPtr<OSSL_PARAM, OSSL_PARAM_free>;

Status Malformed(std::string_view what) { return AttestFailure(Reason::kMalformedEvidence, what); }

}  // namespace

StatusOr<TPMS_ATTEST> ParseAttest(std::span<const uint8_t> bytes, uint16_t expected_type) {
  // Check magic and type from the raw bytes first so that the error names
  // them even for types tss2-mu cannot unmarshal.
  if (bytes.size() < 6) return Malformed("attestation truncated");
  uint32_t magic = (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) |
                   (uint32_t{bytes[2]} << 8) | bytes[3];
  if (magic != kTpmGeneratedMagic) return Malformed("attestation magic is not TPM_GENERATED");
  uint16_t type = static_cast<uint16_t>((bytes[4] << 8) | bytes[5]);
  if (type != expected_type) return Malformed("wrong attestation type");
  TPMS_ATTEST attest;
  std::memset(&attest, 0, sizeof(attest));
  size_t offset = 0;
  if (Tss2_MU_TPMS_ATTEST_Unmarshal(bytes.data(), bytes.size(), &offset, &attest) !=
      TSS2_RC_SUCCESS) {
    return Malformed("attestation truncated or invalid");
  }
  if (offset != bytes.size()) return Malformed("trailing bytes after attestation");
  return attest;
}

StatusOr<TPMT_PUBLIC> ParsePublic(std::span<const uint8_t> bytes) {
  TPMT_PUBLIC pub;
  std::memset(&pub, 0, sizeof(pub));
  size_t offset = 0;
  if (Tss2_MU_TPMT_PUBLIC_Unmarshal(bytes.data(), bytes.size(), &offset, &pub) != TSS2_RC_SUCCESS) {
    return Malformed("public area truncated or invalid");
  }
  if (offset != bytes.size()) return Malformed("trailing bytes after public area");
  return pub;
}

StatusOr<Bytes> MarshalPublic(const TPMT_PUBLIC& pub) {
  Bytes out(sizeof(TPMT_PUBLIC));
  size_t offset = 0;
  if (Tss2_MU_TPMT_PUBLIC_Marshal(&pub, out.data(), out.size(), &offset) != TSS2_RC_SUCCESS) {
    return InvalidArgumentError("cannot marshal public area");
  }
  out.resize(offset);
  return out;
}

StatusOr<TPMT_SIGNATURE> ParseSignature(std::span<const uint8_t> bytes) {
  TPMT_SIGNATURE sig;
  std::memset(&sig, 0, sizeof(sig));
  size_t offset = 0;
  if (Tss2_MU_TPMT_SIGNATURE_Unmarshal(bytes.data(), bytes.size(), &offset, &sig) !=
      TSS2_RC_SUCCESS) {
    return Malformed("signature truncated or invalid");
  }
  if (offset != bytes.size()) return Malformed("trailing bytes after signature");
  if (sig.sigAlg != TPM2_ALG_RSASSA || sig.signature.rsassa.hash != TPM2_ALG_SHA256) {
    return Malformed("signature is not RSASSA-SHA256");
  }
  return sig;
}

Bytes ComputeName(std::span<const uint8_t> marshalled_public) {
  crypto::Sha256Digest digest = crypto::Sha256(marshalled_public);
  Bytes name(2 + digest.size());
  name[0] = 0x00;
  name[1] = 0x0B;  // TPM_ALG_SHA256
  std::copy(digest.begin(), digest.end(), name.begin() + 2);
  return name;
}

StatusOr<crypto::EvpPkeyPtr> RsaPublicKey(const TPMT_PUBLIC& pub) {
  if (pub.type != TPM2_ALG_RSA) return Malformed("key is not RSA");
  const TPM2B_PUBLIC_KEY_RSA& n = pub.unique.rsa;
  if (n.size == 0) return Malformed("RSA modulus is empty");
  crypto::BignumPtr bn_n(BN_bin2bn(n.buffer, n.size, nullptr));
  crypto::BignumPtr bn_e(BN_new());
  if (!bn_n || !bn_e || BN_set_word(bn_e.get(), RsaExponent(pub)) != 1) {
    return crypto::SslError("RSA key");
  }
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    return crypto::SslError("RSA key params");
  }
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return crypto::SslError("RSA key from TPM public");
  }
  return crypto::EvpPkeyPtr(pkey);
}

StatusOr<TPML_PCR_SELECTION> MakePcrSelection(const std::vector<uint32_t>& pcrs) {
  if (pcrs.empty()) return InvalidArgumentError("empty PCR selection");
  TPML_PCR_SELECTION sel;
  std::memset(&sel, 0, sizeof(sel));
  sel.count = 1;
  sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
  sel.pcrSelections[0].sizeofSelect = 3;
  for (uint32_t pcr : pcrs) {
    if (pcr > kMaxPcrIndex) return InvalidArgumentError("PCR index out of range");
    sel.pcrSelections[0].pcrSelect[pcr / 8] |= static_cast<uint8_t>(1u << (pcr % 8));
  }
  return sel;
}

StatusOr<std::vector<uint32_t>> PcrIndices(const TPML_PCR_SELECTION& selection) {
  if (selection.count != 1 || selection.pcrSelections[0].hash != TPM2_ALG_SHA256) {
    return InvalidArgumentError("selection is not exactly the SHA-256 bank");
  }
  const TPMS_PCR_SELECTION& s = selection.pcrSelections[0];
  if (s.sizeofSelect > sizeof(s.pcrSelect)) return InvalidArgumentError("bad sizeofSelect");
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < s.sizeofSelect * 8u; ++i) {
    if (s.pcrSelect[i / 8] & (1u << (i % 8))) out.push_back(i);
  }
  return out;
}

Status VerifyRsaSsaSha256(EVP_PKEY* key, std::span<const uint8_t> message,
                          const TPMT_SIGNATURE& signature) {
  if (signature.sigAlg != TPM2_ALG_RSASSA || signature.signature.rsassa.hash != TPM2_ALG_SHA256) {
    return AttestFailure(Reason::kBadSignature, "signature is not RSASSA-SHA256");
  }
  const TPM2B_PUBLIC_KEY_RSA& sig = signature.signature.rsassa.sig;
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1) {
    return crypto::SslError("signature verify init");
  }
  int rc = EVP_DigestVerify(ctx.get(), sig.buffer, sig.size, message.data(), message.size());
  ERR_clear_error();
  if (rc != 1)
    return AttestFailure(Reason::kBadSignature, "signature does not verify under the AK");
  return OkStatus();
}

}  // namespace vmseal::attest
