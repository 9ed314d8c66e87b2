#include "attest/ek_certificate.h"

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>

#include <cstring>
#include <string>

#include "attest/reason.h"

namespace vmseal::attest {
namespace {

// Critical extensions an EK certificate may carry that OpenSSL does not
// process: subjectDirectoryAttributes (TPM spec version, security
// assertions). subjectAltName (2.5.29.17) is handled by OpenSSL itself.
constexpr const char* kAllowedCriticalOids[] = {"2.5.29.9"};

bool OnlyAllowedUnhandled(X509* cert) {
  int n = X509_get_ext_count(cert);
  for (int i = 0; i < n; ++i) {
    X509_EXTENSION* ext = X509_get_ext(cert, i);
    if (!X509_EXTENSION_get_critical(ext) || X509_supported_extension(ext)) continue;
    char oid[80];
    OBJ_obj2txt(oid, sizeof(oid), X509_EXTENSION_get_object(ext), 1);
    bool allowed = false;
    for (const char* ok : kAllowedCriticalOids) allowed |= std::strcmp(ok, oid) == 0;
    if (!allowed) return false;
  }
  return true;
}

int VerifyCallback(int ok, X509_STORE_CTX* ctx) {
  if (ok) return 1;
  if (X509_STORE_CTX_get_error(ctx) == X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION &&
      X509_STORE_CTX_get_error_depth(ctx) == 0 &&
      OnlyAllowedUnhandled(X509_STORE_CTX_get_current_cert(ctx))) {
    return 1;
  }
  return 0;
}

}  // namespace

StatusOr<std::unique_ptr<EkCertificateVerifier>> EkCertificateVerifier::Create(
    std::string_view ca_bundle_pem) {
  crypto::X509StorePtr store(X509_STORE_new());
  crypto::BioPtr bio(BIO_new_mem_buf(ca_bundle_pem.data(), static_cast<int>(ca_bundle_pem.size())));
  if (!store || !bio) return crypto::SslError("CA store");
  int count = 0;
  while (true) {
    crypto::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    if (X509_STORE_add_cert(store.get(), cert.get()) != 1) return crypto::SslError("CA add");
    ++count;
  }
  ERR_clear_error();
  if (count == 0) return InvalidArgumentError("EK CA bundle holds no PEM certificate");
  X509_STORE_set_verify_cb(store.get(), VerifyCallback);
  return std::unique_ptr<EkCertificateVerifier>(new EkCertificateVerifier(std::move(store)));
}

StatusOr<crypto::EvpPkeyPtr> EkCertificateVerifier::Verify(std::span<const uint8_t> der) const {
  const unsigned char* p = der.data();
  crypto::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert || p != der.data() + der.size()) {
    ERR_clear_error();
    return AttestFailure(Reason::kMalformedEvidence, "EK certificate is not one DER certificate");
  }
  crypto::X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store_.get(), cert.get(), nullptr) != 1) {
    return crypto::SslError("X509 ctx");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    std::string why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()));
    ERR_clear_error();
    return AttestFailure(Reason::kEkChainInvalid, "EK certificate: " + why);
  }
  crypto::EvpPkeyPtr key(X509_get_pubkey(cert.get()));
  if (!key || EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_RSA ||
      EVP_PKEY_get_bits(key.get()) != 2048) {
    ERR_clear_error();
    return AttestFailure(Reason::kEkChainInvalid, "EK certificate key is not RSA-2048");
  }
  return key;
}

}  // namespace vmseal::attest
