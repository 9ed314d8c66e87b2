#include "net/internal/tls_util.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <signal.h>

#include <mutex>

#include "crypto/primitives.h"

namespace vmseal::net::internal {

StatusOr<std::vector<crypto::X509Ptr>> ParseCertChainPem(const std::string& pem,
                                                         const char* what) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return crypto::SslError("BIO_new_mem_buf");
  std::vector<crypto::X509Ptr> out;
  while (true) {
    X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (cert == nullptr) break;
    out.emplace_back(cert);
  }
  ERR_clear_error();  // the loop ends on a "no start line" error
  if (out.empty()) {
    return InvalidArgumentError(std::string(what) + ": no PEM certificate found");
  }
  return out;
}

StatusOr<crypto::EvpPkeyPtr> ParsePrivateKeyPem(const SecretBytes& pem) {
  crypto::BioPtr bio(BIO_new_mem_buf(pem.UnsafeData(), static_cast<int>(pem.size())));
  if (!bio) return crypto::SslError("BIO_new_mem_buf");
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    ERR_clear_error();
    return InvalidArgumentError("private key: not a PEM private key");
  }
  return crypto::EvpPkeyPtr(key);
}

StatusOr<crypto::X509StorePtr> StoreFromPem(const std::string& pem, const char* what) {
  ASSIGN_OR_RETURN(auto certs, ParseCertChainPem(pem, what));
  crypto::X509StorePtr store(X509_STORE_new());
  if (!store) return crypto::SslError("X509_STORE_new");
  for (auto& cert : certs) {
    if (X509_STORE_add_cert(store.get(), cert.get()) != 1) {
      return crypto::SslError("X509_STORE_add_cert");
    }
  }
  return store;
}

namespace {
std::string NameEntry(X509_NAME* name, int nid) {
  int idx = X509_NAME_get_index_by_NID(name, nid, -1);
  if (idx < 0) return "";
  ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
  unsigned char* utf8 = nullptr;
  int len = ASN1_STRING_to_UTF8(&utf8, data);
  if (len < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(len));
  OPENSSL_free(utf8);
  return out;
}
}  // namespace

std::string CertFingerprint(X509* cert) {
  unsigned char* der = nullptr;
  int len = i2d_X509(cert, &der);
  if (len <= 0) return "";
  auto digest = crypto::Sha256(std::span<const uint8_t>(der, static_cast<size_t>(len)));
  OPENSSL_free(der);
  return crypto::HexEncode(digest);
}

Peer DescribeCert(X509* cert) {
  Peer peer;
  X509_NAME* name = X509_get_subject_name(cert);
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio && X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) >= 0) {
    char* data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);
    peer.subject.assign(data, static_cast<size_t>(len));
  }
  peer.common_name = NameEntry(name, NID_commonName);
  peer.organizational_unit = NameEntry(name, NID_organizationalUnitName);
  peer.fingerprint_sha256 = CertFingerprint(cert);
  return peer;
}

void IgnoreSigpipe() {
  static std::once_flag once;
  std::call_once(once, [] { ::signal(SIGPIPE, SIG_IGN); });
}

Status ApplyTlsPolicy(SSL_CTX* ctx) {
  IgnoreSigpipe();
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return crypto::SslError("SSL_CTX_set_min_proto_version");
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  return OkStatus();
}

Status VerifyServerInHandshake(SSL_CTX* ctx, const std::string& host) {
  if (host.empty()) return InvalidArgumentError("client: empty server name");
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  X509_VERIFY_PARAM* param = SSL_CTX_get0_param(ctx);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NEVER_CHECK_SUBJECT);
  if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1) return OkStatus();
  ERR_clear_error();
  if (X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0) != 1) {
    return crypto::SslError("client: server name " + host);
  }
  return OkStatus();
}

}  // namespace vmseal::net::internal
