#include "kms/internal/mini_ca.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "crypto/ssl_util.h"
#include "net/internal/tls_util.h"

namespace vmseal::kms::internal {
namespace {

using crypto::EvpPkeyPtr;
using crypto::X509Ptr;

StatusOr<EvpPkeyPtr> NewP256() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (key == nullptr) return crypto::SslError("EC key generation");
  return EvpPkeyPtr(key);
}

StatusOr<SecretBytes> KeyToPem(EVP_PKEY* key) {
  crypto::BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return crypto::SslError("PEM_write_bio_PrivateKey");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return SecretBytes(std::span<const uint8_t>(reinterpret_cast<uint8_t*>(data),
                                              static_cast<size_t>(len)));
}

StatusOr<std::string> CertToPem(X509* cert) {
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return crypto::SslError("PEM_write_bio_X509");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Status AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  crypto::X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) return crypto::SslError("X509 extension");
  return OkStatus();
}

Status SetName(X509_NAME* name, const std::string& cn, const std::string& ou) {
  auto add = [&](const char* field, const std::string& v) {
    return X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(v.data()),
                                      static_cast<int>(v.size()), -1, 0) == 1;
  };
  if (cn.empty()) return InvalidArgumentError("certificate: empty common name");
  if (!add("O", "vmseal")) return crypto::SslError("X509_NAME");
  if (!ou.empty() && !add("OU", ou)) return crypto::SslError("X509_NAME");
  if (!add("CN", cn)) return crypto::SslError("X509_NAME");
  return OkStatus();
}

// A certificate skeleton: random serial, validity, subject, public key.
StatusOr<X509Ptr> NewCert(EVP_PKEY* pubkey, const std::string& cn, const std::string& ou,
                          int64_t validity_days) {
  if (validity_days <= 0 || validity_days > 3650 * 3) {
    return InvalidArgumentError("certificate: validity out of range");
  }
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) return crypto::SslError("X509_new");
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return crypto::SslError("RAND_bytes");
  serial[0] &= 0x7f;
  crypto::BignumPtr bn(BN_bin2bn(serial, sizeof(serial), nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return crypto::SslError("serial");
  }
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300);
  X509_time_adj_ex(X509_getm_notAfter(cert.get()), static_cast<int>(validity_days), 0, nullptr);
  RETURN_IF_ERROR(SetName(X509_get_subject_name(cert.get()), cn, ou));
  if (X509_set_pubkey(cert.get(), pubkey) != 1) return crypto::SslError("X509_set_pubkey");
  return cert;
}

struct LoadedCa {
  X509Ptr cert;
  EvpPkeyPtr key;
};

StatusOr<LoadedCa> LoadCa(const CertAndKey& ca) {
  ASSIGN_OR_RETURN(auto chain, net::internal::ParseCertChainPem(ca.cert_pem, "CA certificate"));
  ASSIGN_OR_RETURN(auto key, net::internal::ParsePrivateKeyPem(ca.key_pem));
  return LoadedCa{std::move(chain[0]), std::move(key)};
}

Status SignWith(X509* cert, const LoadedCa& ca) {
  if (X509_set_issuer_name(cert, X509_get_subject_name(ca.cert.get())) != 1) {
    return crypto::SslError("X509_set_issuer_name");
  }
  RETURN_IF_ERROR(AddExt(cert, ca.cert.get(), NID_authority_key_identifier, "keyid:always"));
  if (X509_sign(cert, ca.key.get(), EVP_sha256()) <= 0) return crypto::SslError("X509_sign");
  return OkStatus();
}

}  // namespace

StatusOr<CertAndKey> CreateRootCa(const std::string& common_name, int64_t validity_days) {
  ASSIGN_OR_RETURN(auto key, NewP256());
  ASSIGN_OR_RETURN(auto cert, NewCert(key.get(), common_name, "ca", validity_days));
  if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) {
    return crypto::SslError("X509_set_issuer_name");
  }
  RETURN_IF_ERROR(AddExt(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE"));
  RETURN_IF_ERROR(AddExt(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  RETURN_IF_ERROR(AddExt(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) return crypto::SslError("X509_sign");
  ASSIGN_OR_RETURN(auto cert_pem, CertToPem(cert.get()));
  ASSIGN_OR_RETURN(auto key_pem, KeyToPem(key.get()));
  return CertAndKey{std::move(cert_pem), std::move(key_pem)};
}

StatusOr<CertAndKey> IssueLeaf(const CertAndKey& ca, const LeafOptions& options) {
  ASSIGN_OR_RETURN(auto loaded, LoadCa(ca));
  ASSIGN_OR_RETURN(auto key, NewP256());
  ASSIGN_OR_RETURN(auto cert, NewCert(key.get(), options.common_name, options.organizational_unit,
                                      options.validity_days));
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_basic_constraints, "critical,CA:FALSE"));
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_key_usage, "critical,digitalSignature"));
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_ext_key_usage,
                         options.server ? "serverAuth" : "clientAuth"));
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_subject_key_identifier, "hash"));
  std::string san;
  auto append = [&san](const char* kind, const std::string& value) {
    if (!san.empty()) san.push_back(',');
    san.append(kind);
    san.append(value);
  };
  for (const auto& d : options.dns_names) append("DNS:", d);
  for (const auto& ip : options.ip_addresses) append("IP:", ip);
  if (!san.empty()) RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_subject_alt_name, san));
  RETURN_IF_ERROR(SignWith(cert.get(), loaded));
  ASSIGN_OR_RETURN(auto cert_pem, CertToPem(cert.get()));
  ASSIGN_OR_RETURN(auto key_pem, KeyToPem(key.get()));
  return CertAndKey{std::move(cert_pem), std::move(key_pem)};
}

StatusOr<std::string> CertifyPublicKey(const CertAndKey& ca, const std::string& public_key_pem,
                                       const std::string& common_name,
                                       const std::string& organizational_unit,
                                       int64_t validity_days, const std::string& second_ou) {
  ASSIGN_OR_RETURN(auto loaded, LoadCa(ca));
  crypto::BioPtr bio(BIO_new_mem_buf(public_key_pem.data(), static_cast<int>(public_key_pem.size())));
  EvpPkeyPtr pub(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (!pub) {
    ERR_clear_error();
    return InvalidArgumentError("public key: not a PEM SubjectPublicKeyInfo");
  }
  ASSIGN_OR_RETURN(auto cert, NewCert(pub.get(), common_name, organizational_unit, validity_days));
  if (!second_ou.empty() &&
      X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "OU", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(second_ou.data()),
                                 static_cast<int>(second_ou.size()), -1, 0) != 1) {
    return crypto::SslError("X509_NAME");
  }
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_basic_constraints, "critical,CA:FALSE"));
  const bool is_rsa = EVP_PKEY_is_a(pub.get(), "RSA");
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_key_usage,
                         is_rsa ? "critical,keyEncipherment" : "critical,keyAgreement"));
  RETURN_IF_ERROR(AddExt(cert.get(), loaded.cert.get(), NID_subject_key_identifier, "hash"));
  RETURN_IF_ERROR(SignWith(cert.get(), loaded));
  return CertToPem(cert.get());
}

}  // namespace vmseal::kms::internal
