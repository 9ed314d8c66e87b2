// The customer's key certificate as the portal relays it (GET
// /v1/customer/key), checked against a KMS CA the customer pinned out of band
// before anything is written, signed for it or asked of a KMS: `customer
// fetch-cert` and `rotate-key` (the certificate the customer seals to),
// `customer migrate` (the destination certificate at portal B) and `customer
// rewrap` (the newest version's certificate) share this one check.
#ifndef VMSEAL_CLI_CUSTOMER_CERT_H_
#define VMSEAL_CLI_CUSTOMER_CERT_H_

#include <httplib.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/x509.h"

namespace vmseal::cli {

// A customer certificate that passed VerifyCustomerKeyReply.
struct VerifiedCustomerCert {
  // The KMS's certificate of the customer's key; chains to the pinned CA.
  crypto::Certificate cert;
  // The key it certifies, which is exactly the key the portal names.
  crypto::PublicKey public_key;
  // The portal's customer id (never empty).
  std::string customer_id;
  // The KMS's id of the key: the certificate's CN (never empty).
  std::string key_id;
  // The key version the certificate names (its "key-version:N" OU, else 1),
  // equal to the version the portal lists; no newer version is listed.
  uint64_t version = 1;
};

// How a refusal names the parties, so that the customer can tell which
// certificate and which CA it is about.
struct CustomerCertNames {
  // The certificate, e.g. "the destination certificate". Default
  // "the certificate".
  std::string certificate = "the certificate";
  // The CA it must chain to, e.g. "the KMS CA you pinned (--to-kms-ca)".
  // Default "the KMS CA you pinned (--kms-ca)".
  std::string ca = "the KMS CA you pinned (--kms-ca)";
  // The portal that relayed it, e.g. "portal B". Default "the portal".
  std::string portal = "the portal";
  // The reason every refusal starts with ("<reason>: ..."). Default
  // "destination_untrusted" (migrate, rewrap: the certificate a key is
  // re-wrapped to); fetch-cert says "certificate_untrusted".
  std::string reason = "destination_untrusted";
};

// Checks `reply`, the JSON of GET /v1/customer/key, against `roots` (the
// pinned KMS CA bundle): its cert_pem chains to `roots`, certifies exactly the
// key of its public_key_pem, has the CN key_id; customer_id is set; the
// certificate's key version is the listed "version" (1 when absent) and no
// entry of "versions" is newer. Every refusal is DATA_LOSS
// "<names.reason>: ..." naming the check, except a cert_pem that does not
// parse (its parse error). Reads nothing else and writes nothing.
StatusOr<VerifiedCustomerCert> VerifyCustomerKeyReply(const nlohmann::json& reply,
                                                      const std::vector<crypto::Certificate>& roots,
                                                      const CustomerCertNames& names = {});

// GET /v1/customer/key from `portal` with the session header `auth`, then
// VerifyCustomerKeyReply. A portal error reply or a failed request is
// "<what>: <message>" (CheckReply).
StatusOr<VerifiedCustomerCert> FetchVerifiedCustomerCert(httplib::Client& portal,
                                                         const httplib::Headers& auth,
                                                         const std::vector<crypto::Certificate>& roots,
                                                         const std::string& what,
                                                         const CustomerCertNames& names = {});

// The PEM bundle in `path` (a KMS CA pinned out of band): INVALID_ARGUMENT if
// it holds no certificate, the read error if it cannot be read.
StatusOr<std::vector<crypto::Certificate>> LoadPinnedCa(const std::string& path);

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_CUSTOMER_CERT_H_
