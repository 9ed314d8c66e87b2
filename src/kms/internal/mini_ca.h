// A minimal X.509 CA over OpenSSL: self-signed roots and leaf certificates
// for service identities and customer public keys.
//
// INTERIM: stands in for src/crypto/x509.h (branch `wrap`) until that is
// merged; the KMS switches to it then.
#ifndef VMSEAL_KMS_INTERNAL_MINI_CA_H_
#define VMSEAL_KMS_INTERNAL_MINI_CA_H_

#include <cstdint>
#include <string>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::kms::internal {

// A certificate with its private key, both PEM.
struct CertAndKey {
  std::string cert_pem;
  SecretBytes key_pem;
};

struct LeafOptions {
  // Subject CN and OU (the OU carries the role: portal, host, operator, kms).
  std::string common_name;
  std::string organizational_unit;
  // DNS names and IP addresses for subjectAltName (servers).
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
  // Extended key usage: serverAuth, else clientAuth.
  bool server = false;
  // Validity in days from now. Default 397.
  int64_t validity_days = 397;
};

// A new ECDSA P-256 root CA with subject "CN=<common_name>,O=vmseal".
StatusOr<CertAndKey> CreateRootCa(const std::string& common_name, int64_t validity_days);

// A new ECDSA P-256 key and a certificate for it signed by `ca`.
StatusOr<CertAndKey> IssueLeaf(const CertAndKey& ca, const LeafOptions& options);

// A certificate for an existing public key (PEM SubjectPublicKeyInfo) signed
// by `ca`, for customer keys: keyUsage keyEncipherment (RSA) or keyAgreement
// (X25519), no EKU. `second_ou`, if not empty, is a second OU of the
// subject (a customer key's "key-version:N", kms/key_versions.h).
StatusOr<std::string> CertifyPublicKey(const CertAndKey& ca, const std::string& public_key_pem,
                                       const std::string& common_name,
                                       const std::string& organizational_unit,
                                       int64_t validity_days, const std::string& second_ou = "");

}  // namespace vmseal::kms::internal

#endif  // VMSEAL_KMS_INTERNAL_MINI_CA_H_
