#include "crypto/x509.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>

#include <cctype>
#include <cstring>

namespace vmseal::crypto {
namespace {

constexpr size_t kMaxPemBytes = 1 << 20;
using X509StackPtr = std::unique_ptr<STACK_OF(X509), decltype([](STACK_OF(X509)* s) {
                                       sk_X509_free(s);
                                     })>;

// Adds one extension given in OpenSSL config syntax.
Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509ExtensionPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return SslError("add extension " + std::string(OBJ_nid2sn(nid)));
  }
  return OkStatus();
}

Status SetName(X509* cert, const std::string& cn, bool also_issuer) {
  if (cn.empty()) return InvalidArgumentError("certificate common name must not be empty");
  if (cn.size() > 64) return InvalidArgumentError("certificate common name longer than 64");
  X509_NAME* name = X509_get_subject_name(cert);
  if (X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn.data()),
                                 static_cast<int>(cn.size()), -1, 0) != 1) {
    return InvalidArgumentError("invalid certificate common name");
  }
  if (also_issuer && X509_set_issuer_name(cert, name) != 1) return SslError("set issuer");
  return OkStatus();
}

Status SetSerial(X509* cert, uint64_t serial) {
  BignumPtr bn(BN_new());
  if (!bn) return SslError("BN_new");
  if (serial != 0) {
    if (BN_set_word(bn.get(), serial) != 1) return SslError("BN_set_word");
  } else {
    Bytes rnd = RandomBytes(16);
    rnd[0] = static_cast<uint8_t>((rnd[0] & 0x7f) | 0x40);  // positive, 127 bits
    if (!BN_bin2bn(rnd.data(), static_cast<int>(rnd.size()), bn.get())) return SslError("BN");
  }
  Asn1IntegerPtr asn1(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!asn1 || X509_set_serialNumber(cert, asn1.get()) != 1) return SslError("set serial");
  return OkStatus();
}

Status SetValidity(X509* cert, int64_t not_before, int64_t validity_seconds) {
  if (validity_seconds <= 0) return InvalidArgumentError("validity must be positive");
  time_t start = not_before != 0 ? static_cast<time_t>(not_before) : time(nullptr);
  if (!ASN1_TIME_set(X509_getm_notBefore(cert), start) ||
      !ASN1_TIME_adj(X509_getm_notAfter(cert), start, 0, static_cast<long>(validity_seconds))) {
    return SslError("set validity");
  }
  return OkStatus();
}

// Re-parses a freshly built certificate so that cached extension state
// matches what a peer would see.
StatusOr<Certificate> Reparse(X509* x) {
  unsigned char* der = nullptr;
  int len = i2d_X509(x, &der);
  if (len <= 0) return SslError("i2d_X509");
  StatusOr<Certificate> cert =
      Certificate::FromDer(std::span<const uint8_t>(der, static_cast<size_t>(len)));
  OPENSSL_free(der);
  return cert;
}

bool CanSign(KeyType t) { return t != KeyType::kX25519; }

Status CheckDnsName(const std::string& name) {
  if (name.empty() || name.size() > 253) return InvalidArgumentError("bad DNS name in SAN");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '*';
    if (!ok) return InvalidArgumentError("bad DNS name in SAN: " + name);
  }
  return OkStatus();
}

int64_t Asn1TimeToUnix(const ASN1_TIME* t) {
  struct tm tm;
  std::memset(&tm, 0, sizeof(tm));
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

Status Verify(const Certificate& leaf, const std::vector<Certificate>& roots,
              const std::vector<Certificate>& intermediates, VerifyPurpose purpose,
              int64_t at_time, unsigned long extra_flags) {  // NOLINT(runtime/int)
  if (roots.empty()) return InvalidArgumentError("no trusted CA certificates given");
  X509StorePtr store(X509_STORE_new());
  if (!store) return SslError("X509_STORE_new");
  for (const Certificate& root : roots) {
    if (X509_STORE_add_cert(store.get(), root.x509()) != 1) {
      ERR_clear_error();  // a duplicate is harmless
    }
  }
  X509StackPtr chain(sk_X509_new_null());
  if (!chain) return SslError("sk_X509_new_null");
  for (const Certificate& c : intermediates) {
    if (sk_X509_push(chain.get(), c.x509()) == 0) return SslError("sk_X509_push");
  }
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), leaf.x509(), chain.get()) != 1) {
    return SslError("X509_STORE_CTX_init");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  if (purpose == VerifyPurpose::kServerAuth) {
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_SERVER);
  } else if (purpose == VerifyPurpose::kClientAuth) {
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_CLIENT);
  }
  if (at_time != 0) X509_VERIFY_PARAM_set_time(param, static_cast<time_t>(at_time));
  X509_VERIFY_PARAM_clear_flags(param, X509_V_FLAG_PARTIAL_CHAIN);
  if (extra_flags != 0) X509_VERIFY_PARAM_set_flags(param, extra_flags);
  int rc = X509_verify_cert(ctx.get());
  if (rc == 1) return OkStatus();
  int err = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  return UnauthenticatedError(std::string("certificate verification failed: ") +
                              X509_verify_cert_error_string(err));
}

}  // namespace

// -------------------------------------------------------------- Certificate

StatusOr<Certificate> Certificate::FromPem(std::string_view pem) {
  ASSIGN_OR_RETURN(std::vector<Certificate> certs, ParsePemBundle(pem));
  if (certs.size() != 1) return InvalidArgumentError("expected exactly one PEM certificate");
  return certs[0];
}

StatusOr<Certificate> Certificate::FromDer(std::span<const uint8_t> der) {
  const unsigned char* p = der.data();
  X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der.size())));  // NOLINT
  if (!x || p != der.data() + der.size()) {
    ERR_clear_error();
    return InvalidArgumentError("not a DER certificate");
  }
  return Certificate(std::move(x));
}

StatusOr<std::vector<Certificate>> Certificate::ParsePemBundle(std::string_view pem) {
  if (pem.size() > kMaxPemBytes) return InvalidArgumentError("certificate PEM too large");
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return SslError("BIO_new_mem_buf");
  std::vector<Certificate> out;
  while (true) {
    X509Ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!x) break;
    out.push_back(Certificate(std::move(x)));
  }
  unsigned long err = ERR_peek_last_error();  // NOLINT(runtime/int)
  bool clean_end = ERR_GET_REASON(err) == PEM_R_NO_START_LINE;
  ERR_clear_error();
  if (out.empty()) return InvalidArgumentError("no PEM certificate found");
  if (!clean_end && err != 0) return InvalidArgumentError("malformed PEM certificate bundle");
  return out;
}

Certificate::Certificate(const Certificate& other) {
  X509_up_ref(other.x509_.get());
  x509_.reset(other.x509_.get());
}

Certificate& Certificate::operator=(const Certificate& other) {
  if (this != &other) {
    X509_up_ref(other.x509_.get());
    x509_.reset(other.x509_.get());
  }
  return *this;
}

std::string Certificate::ToPem() const {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), x509_.get()) != 1) return "";
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);  // NOLINT(runtime/int)
  return std::string(data, len > 0 ? static_cast<size_t>(len) : 0);
}

Bytes Certificate::ToDer() const {
  unsigned char* der = nullptr;
  int len = i2d_X509(x509_.get(), &der);
  if (len <= 0) return {};
  Bytes out(der, der + len);
  OPENSSL_free(der);
  return out;
}

std::string Certificate::Fingerprint() const { return HexEncode(Sha256(ToDer())); }

std::string Certificate::SubjectCommonName() const {
  X509_NAME* name = X509_get_subject_name(x509_.get());
  int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (idx < 0) return "";
  ASN1_STRING* s = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, s);
  if (len < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  return out;
}

std::string Certificate::SerialHex() const {
  BignumPtr bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(x509_.get()), nullptr));
  if (!bn) return "";
  char* hex = BN_bn2hex(bn.get());
  std::string out(hex);
  OPENSSL_free(hex);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

int64_t Certificate::NotBefore() const { return Asn1TimeToUnix(X509_get0_notBefore(x509_.get())); }
int64_t Certificate::NotAfter() const { return Asn1TimeToUnix(X509_get0_notAfter(x509_.get())); }

StatusOr<PublicKey> Certificate::GetPublicKey() const {
  EVP_PKEY* pkey = X509_get0_pubkey(x509_.get());
  if (pkey == nullptr) {
    ERR_clear_error();
    return InvalidArgumentError("certificate has no usable public key");
  }
  return PublicKey::FromEvpPkey(pkey);
}

// ------------------------------------------------------------------ issuing

StatusOr<CertificateAuthority> CreateSelfSignedCa(const CaOptions& options) {
  if (!CanSign(options.key_type)) return InvalidArgumentError("a CA key must be able to sign");
  ASSIGN_OR_RETURN(PrivateKey key, PrivateKey::Generate(options.key_type));
  X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), X509_VERSION_3) != 1 ||
      X509_set_pubkey(x.get(), key.pkey()) != 1) {
    return SslError("X509_new");
  }
  RETURN_IF_ERROR(SetName(x.get(), options.common_name, /*also_issuer=*/true));
  RETURN_IF_ERROR(SetSerial(x.get(), 0));
  RETURN_IF_ERROR(SetValidity(x.get(), 0, options.validity_seconds));
  RETURN_IF_ERROR(AddExtension(x.get(), x.get(), NID_basic_constraints, "critical,CA:TRUE"));
  RETURN_IF_ERROR(AddExtension(x.get(), x.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  RETURN_IF_ERROR(AddExtension(x.get(), x.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(x.get(), key.pkey(), EVP_sha256()) <= 0) return SslError("X509_sign");
  ASSIGN_OR_RETURN(Certificate cert, Reparse(x.get()));
  return CertificateAuthority{std::move(key), std::move(cert)};
}

StatusOr<Certificate> IssueCertificate(const CertificateAuthority& ca,
                                       const PublicKey& subject_key,
                                       const IssueOptions& options) {
  bool tls = options.usage != CertUsage::kCustomerKey;
  if (tls && !CanSign(subject_key.type())) {
    return InvalidArgumentError("a TLS or signing certificate needs a signing key (RSA or P-256)");
  }
  std::string san;
  for (const std::string& dns : options.dns_names) {
    RETURN_IF_ERROR(CheckDnsName(dns));
    san += (san.empty() ? "DNS:" : ",DNS:") + dns;
  }
  for (const std::string& ip : options.ip_addresses) {
    ASN1_OCTET_STRING* parsed = a2i_IPADDRESS(ip.c_str());
    if (parsed == nullptr) {
      ERR_clear_error();
      return InvalidArgumentError("bad IP address in SAN: " + ip);
    }
    ASN1_OCTET_STRING_free(parsed);
    san += (san.empty() ? "IP:" : ",IP:") + ip;
  }
  X509Ptr x(X509_new());
  if (!x || X509_set_version(x.get(), X509_VERSION_3) != 1 ||
      X509_set_pubkey(x.get(), subject_key.pkey()) != 1 ||
      X509_set_issuer_name(x.get(), X509_get_subject_name(ca.cert.x509())) != 1) {
    return SslError("X509_new");
  }
  RETURN_IF_ERROR(SetName(x.get(), options.common_name, /*also_issuer=*/false));
  RETURN_IF_ERROR(SetSerial(x.get(), options.serial));
  RETURN_IF_ERROR(SetValidity(x.get(), options.not_before, options.validity_seconds));
  X509* issuer = ca.cert.x509();
  RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_basic_constraints, "critical,CA:FALSE"));
  std::string key_usage;
  bool rsa = subject_key.type() == KeyType::kRsa2048 || subject_key.type() == KeyType::kRsa3072;
  if (!tls) {
    key_usage = subject_key.type() == KeyType::kX25519 ? "critical,keyAgreement"
                                                       : "critical,keyEncipherment";
  } else {
    key_usage = rsa ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature";
  }
  if (options.usage == CertUsage::kPackageSigning) {
    key_usage = "critical,digitalSignature";
  }
  RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_key_usage, key_usage));
  if (options.usage == CertUsage::kPackageSigning) {
    RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_ext_key_usage, "codeSigning"));
  } else if (options.usage == CertUsage::kServerAuth) {
    RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_ext_key_usage, "serverAuth"));
  } else if (options.usage == CertUsage::kClientAuth) {
    RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_ext_key_usage, "clientAuth"));
  } else if (options.usage == CertUsage::kServerAndClient) {
    RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_ext_key_usage, "serverAuth,clientAuth"));
  }
  if (!san.empty()) {
    RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_subject_alt_name, san));
  }
  RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_subject_key_identifier, "hash"));
  RETURN_IF_ERROR(AddExtension(x.get(), issuer, NID_authority_key_identifier, "keyid:always"));
  if (X509_sign(x.get(), ca.key.pkey(), EVP_sha256()) <= 0) return SslError("X509_sign");
  return Reparse(x.get());
}

// ------------------------------------------------------------- verification

Status VerifyCertificateChain(const Certificate& leaf, const std::vector<Certificate>& roots,
                              const VerifyOptions& options) {
  return Verify(leaf, roots, options.intermediates, options.purpose, options.at_time, 0);
}

Status VerifyEkCertificate(const Certificate& ek_cert, const std::vector<Certificate>& roots,
                           const std::vector<Certificate>& intermediates) {
  // EK certificates carry TPM-specific critical extensions (e.g. a
  // subjectAltName holding only a directoryName of TPM attributes, or
  // vendor extensions) that OpenSSL does not process.
  return Verify(ek_cert, roots, intermediates, VerifyPurpose::kAny, 0, X509_V_FLAG_IGNORE_CRITICAL);
}

}  // namespace vmseal::crypto
