// X.509 for a KMS that acts as a CA: a self-signed CA, certificates for
// customer public keys and service identities, chain verification, and TPM
// EK certificate verification.
//
// Thread safety: Certificate is immutable after creation; the free functions
// are stateless.
#ifndef VMSEAL_CRYPTO_X509_H_
#define VMSEAL_CRYPTO_X509_H_

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::crypto {

// An X.509 certificate. Copyable (copies share the immutable OpenSSL object).
class Certificate {
 public:
  // Parses exactly one PEM certificate.
  static StatusOr<Certificate> FromPem(std::string_view pem);
  // Parses a DER certificate.
  static StatusOr<Certificate> FromDer(std::span<const uint8_t> der);
  // Parses a bundle of one or more PEM certificates (INVALID_ARGUMENT if none).
  static StatusOr<std::vector<Certificate>> ParsePemBundle(std::string_view pem);

  Certificate(const Certificate& other);
  Certificate& operator=(const Certificate& other);
  Certificate(Certificate&&) noexcept = default;
  Certificate& operator=(Certificate&&) noexcept = default;
  ~Certificate() = default;

  std::string ToPem() const;
  Bytes ToDer() const;
  // Lowercase hex SHA-256 of the DER encoding.
  std::string Fingerprint() const;
  // The subject's commonName ("" if none).
  std::string SubjectCommonName() const;
  // The serial number in lowercase hex.
  std::string SerialHex() const;
  // Validity bounds as Unix seconds.
  int64_t NotBefore() const;
  int64_t NotAfter() const;
  // The subject public key, if of a type vmseal supports.
  StatusOr<PublicKey> GetPublicKey() const;
  // The underlying certificate, owned by this object.
  X509* x509() const { return x509_.get(); }

 private:
  explicit Certificate(X509Ptr x509) : x509_(std::move(x509)) {}
  X509Ptr x509_;
};

// What a certificate is for.
enum class CertUsage {
  kCustomerKey,      // a customer key: keyEncipherment/keyAgreement, no EKU
  kServerAuth,       // a TLS server: digitalSignature, EKU serverAuth
  kClientAuth,       // a TLS client (mTLS): digitalSignature, EKU clientAuth
  kServerAndClient,  // both EKUs
  kPackageSigning,   // a customer's package signing key: digitalSignature, EKU codeSigning
};

struct CaOptions {
  // The CA's subject commonName. Required.
  std::string common_name;
  // Validity from now, in seconds. Default 10 years.
  int64_t validity_seconds = int64_t{10} * 365 * 24 * 3600;
  // The CA key type. Default ECDSA P-256; RSA-3072 is also allowed.
  KeyType key_type = KeyType::kEcP256;
};

// A CA: its private key and self-signed certificate.
struct CertificateAuthority {
  PrivateKey key;
  Certificate cert;
};

// Creates a CA with a fresh key (basicConstraints CA:TRUE critical,
// keyUsage keyCertSign|cRLSign critical, subject key identifier).
StatusOr<CertificateAuthority> CreateSelfSignedCa(const CaOptions& options);

struct IssueOptions {
  // Subject commonName. Required.
  std::string common_name;
  // Serial number; 0 (the default) picks a random positive 128-bit serial.
  uint64_t serial = 0;
  // Validity, from `not_before` (Unix seconds; 0 = now) for this many
  // seconds. Default 1 year.
  int64_t not_before = 0;
  int64_t validity_seconds = int64_t{365} * 24 * 3600;
  CertUsage usage = CertUsage::kCustomerKey;
  // subjectAltName entries (service identities).
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;  // dotted IPv4 or IPv6 text
};

// Issues a certificate for `subject_key` signed by `ca` (SHA-256). Works for
// keys that cannot sign themselves (X25519). INVALID_ARGUMENT for a missing
// common name, a bad IP address, or a usage that does not fit the key (TLS
// usages need a signing key: RSA or P-256).
StatusOr<Certificate> IssueCertificate(const CertificateAuthority& ca,
                                       const PublicKey& subject_key,
                                       const IssueOptions& options);

// The purpose a chain is verified for.
enum class VerifyPurpose { kAny, kServerAuth, kClientAuth };

struct VerifyOptions {
  // Untrusted intermediates that may complete the chain.
  std::vector<Certificate> intermediates;
  VerifyPurpose purpose = VerifyPurpose::kAny;
  // The time to verify at, Unix seconds; 0 = now.
  int64_t at_time = 0;
};

// Verifies that `leaf` chains to one of `roots` (full chain to a self-signed
// root; partial chains are not accepted). UNAUTHENTICATED "certificate
// verification failed: <reason>" if not.
Status VerifyCertificateChain(const Certificate& leaf, const std::vector<Certificate>& roots,
                              const VerifyOptions& options = {});

// Verifies a TPM EK certificate against a manufacturer CA bundle. Like
// VerifyCertificateChain with purpose kAny, except that critical extensions
// OpenSSL does not handle (TPM-specific ones) do not fail verification.
Status VerifyEkCertificate(const Certificate& ek_cert, const std::vector<Certificate>& roots,
                           const std::vector<Certificate>& intermediates = {});

}  // namespace vmseal::crypto

#endif  // VMSEAL_CRYPTO_X509_H_
