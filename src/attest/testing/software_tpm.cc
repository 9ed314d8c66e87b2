#include "attest/testing/software_tpm.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <tss2/tss2_mu.h>

#include <cstring>

#include "attest/tpm_format.h"
#include "crypto/key_wrap.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::attest::testing {

TPMS_ATTEST BaseAttest(uint16_t type, std::span<const uint8_t> nonce) {
  TPMS_ATTEST a;
  std::memset(&a, 0, sizeof(a));
  a.magic = kTpmGeneratedMagic;
  a.type = type;
  a.extraData.size = static_cast<UINT16>(nonce.size());
  std::memcpy(a.extraData.buffer, nonce.data(), nonce.size());
  return a;
}

TPMT_PUBLIC PublicFor(EVP_PKEY* key, bool ak) {
  TPMT_PUBLIC pub;
  std::memset(&pub, 0, sizeof(pub));
  pub.type = TPM2_ALG_RSA;
  pub.nameAlg = TPM2_ALG_SHA256;
  pub.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                         TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH;
  pub.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
  pub.parameters.rsaDetail.keyBits = 2048;
  if (ak) {
    pub.objectAttributes |= TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;
    pub.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSASSA;
    pub.parameters.rsaDetail.scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
  } else {
    pub.objectAttributes |= TPMA_OBJECT_DECRYPT;
    pub.parameters.rsaDetail.scheme.scheme = TPM2_ALG_OAEP;
    pub.parameters.rsaDetail.scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
  }
  BIGNUM* n = nullptr;
  EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n);
  pub.unique.rsa.size = static_cast<UINT16>(BN_bn2bin(n, pub.unique.rsa.buffer));
  BN_free(n);
  return pub;
}

Bytes Marshal(const TPMT_PUBLIC& pub) {
  auto out = MarshalPublic(pub);
  if (!out.ok()) {
    ADD_FAILURE() << out.status().ToString();
    return {};
  }
  return *std::move(out);
}

Bytes MarshalAttest(const TPMS_ATTEST& attest) {
  Bytes out(sizeof(TPMS_ATTEST));
  size_t off = 0;
  if (Tss2_MU_TPMS_ATTEST_Marshal(&attest, out.data(), out.size(), &off) != TSS2_RC_SUCCESS) {
    ADD_FAILURE() << "Tss2_MU_TPMS_ATTEST_Marshal failed";
    return {};
  }
  out.resize(off);
  return out;
}

Bytes Sign(EVP_PKEY* key, std::span<const uint8_t> msg) {
  crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, msg.data(), msg.size()) != 1) {
    ADD_FAILURE() << "EVP_DigestSign failed";
    return {};
  }
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, msg.data(), msg.size()) != 1) {
    ADD_FAILURE() << "EVP_DigestSign failed";
    return {};
  }
  TPMT_SIGNATURE s;
  std::memset(&s, 0, sizeof(s));
  s.sigAlg = TPM2_ALG_RSASSA;
  s.signature.rsassa.hash = TPM2_ALG_SHA256;
  s.signature.rsassa.sig.size = static_cast<UINT16>(len);
  std::memcpy(s.signature.rsassa.sig.buffer, sig.data(), len);
  Bytes out(sizeof(s));
  size_t off = 0;
  if (Tss2_MU_TPMT_SIGNATURE_Marshal(&s, out.data(), out.size(), &off) != TSS2_RC_SUCCESS) {
    ADD_FAILURE() << "Tss2_MU_TPMT_SIGNATURE_Marshal failed";
    return {};
  }
  out.resize(off);
  return out;
}

StatusOr<SoftwareTpm> SoftwareTpm::Create() {
  ASSIGN_OR_RETURN(crypto::PrivateKey ak, crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048));
  ASSIGN_OR_RETURN(crypto::PrivateKey binding,
                   crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048));
  return SoftwareTpm(std::move(ak), std::move(binding));
}

Bytes SoftwareTpm::ak_public() const { return Marshal(PublicFor(ak_.pkey(), /*ak=*/true)); }

Evidence SoftwareTpm::Attest(std::span<const uint8_t> nonce,
                             const std::vector<uint32_t>& pcr_selection,
                             const std::vector<Bytes>& pcr_values) const {
  Evidence e;
  e.nonce.assign(nonce.begin(), nonce.end());
  e.pcr_selection = pcr_selection;

  TPMS_ATTEST q = BaseAttest(kAttestTypeQuote, nonce);
  auto selection = MakePcrSelection(pcr_selection);
  if (!selection.ok()) {
    ADD_FAILURE() << selection.status().ToString();
    return e;
  }
  q.attested.quote.pcrSelect = *selection;
  crypto::Sha256Hasher h;
  for (const Bytes& v : pcr_values) h.Update(v);
  const auto digest = h.Finish();
  q.attested.quote.pcrDigest.size = static_cast<UINT16>(digest.size());
  std::memcpy(q.attested.quote.pcrDigest.buffer, digest.data(), digest.size());
  e.quote.attest = MarshalAttest(q);
  e.quote.signature = Sign(ak_.pkey(), e.quote.attest);
  e.quote.pcr_values = pcr_values;

  const Bytes binding_public = Marshal(PublicFor(binding_.pkey(), /*ak=*/false));
  TPMS_ATTEST c = BaseAttest(kAttestTypeCertify, nonce);
  const Bytes name = ComputeName(binding_public);
  c.attested.certify.name.size = static_cast<UINT16>(name.size());
  std::memcpy(c.attested.certify.name.name, name.data(), name.size());
  e.certify.attest = MarshalAttest(c);
  e.certify.signature = Sign(ak_.pkey(), e.certify.attest);
  e.certify.key_public = binding_public;
  return e;
}

StatusOr<SecretBytes> SoftwareTpm::Decrypt(std::span<const uint8_t> wrapped,
                                           std::span<const uint8_t> label) const {
  if (label.empty() || label.back() != 0) {
    return InvalidArgumentError("a TPM label must end in a zero byte");
  }
  return crypto::RsaOaepUnwrap(binding_, wrapped,
                               crypto::AsStringView(label.first(label.size() - 1)),
                               crypto::OaepLabel::kTpm);
}

}  // namespace vmseal::attest::testing
