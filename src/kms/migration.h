// Moving an image to another cloud (issue 19): the customer's signed
// authorization of one re-wrap of an image's data key to a certificate of
// the destination cloud (docs/format/rewrap-authorization.md), and the
// checks KMS A makes before it unwraps anything. The data key never leaves
// the KMS unwrapped: it goes out wrapped to the certificate the customer
// signed, under the label the customer signed.
#ifndef VMSEAL_KMS_MIGRATION_H_
#define VMSEAL_KMS_MIGRATION_H_

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"

namespace vmseal::kms {

// rewrap-authorization.md §2: the fields the customer signs.
struct RewrapAuthorization {
  std::string tenant;                    // the source tenant (KMS A's customer id)
  std::string image_id;                  // the tag's imageId
  uint64_t key_version = 0;              // the source key version (>= 1)
  std::string destination_cert_sha256;   // lowercase hex SHA-256 of the destination cert's DER
  crypto::Bytes destination_label;       // the label (AD) to wrap under at the destination
  std::string nonce;                     // 64 lowercase hex digits (32 random bytes)
  int64_t expires_unix = 0;
};

// The longest an authorization may live (now < expires <= now + this).
inline constexpr int64_t kMaxRewrapAuthorizationSeconds = 3600;
// The domain separator at the front of the signed message.
inline constexpr std::string_view kRewrapAuthorizationDomain = "vmseal-rewrap-authorization-v1";

// The exact bytes the customer signs (ECDSA P-256, SHA-256), §2.
crypto::Bytes RewrapAuthorizationMessage(const RewrapAuthorization& a);

// §3: the JSON form (the label base64), and its strict parse
// (INVALID_ARGUMENT "malformed_authorization: ..." naming the field).
nlohmann::json RewrapAuthorizationToJson(const RewrapAuthorization& a);
StatusOr<RewrapAuthorization> RewrapAuthorizationFromJson(const nlohmann::json& j);

// What the portal relays to KMS A (POST /v1/migrations/rewrap).
struct RewrapRequest {
  RewrapAuthorization authorization;
  crypto::Bytes signature;           // DER ECDSA over RewrapAuthorizationMessage
  std::string destination_cert_pem;  // the certificate the customer verified at B
  std::string key_id;                // the package's tag keyId (the source key)
  std::string wrap_algorithm;        // the package's EncryptedKey Algorithm
  crypto::Bytes oaep_label;          // the package's label
  crypto::Bytes wrapped_key;         // the package's wrapped data key
};
StatusOr<RewrapRequest> ParseRewrapRequest(const nlohmann::json& body);
nlohmann::json RewrapRequestToJson(const RewrapRequest& r);

// KMS A's checks before any key is touched, in order (§4):
//   the signature verifies with the tenant's registered signing key
//     (`bad_authorization`);
//   now < expires_unix <= now + kMaxRewrapAuthorizationSeconds
//     (`authorization_expired`);
//   the destination certificate parses and its DER digest is the signed one
//     (`destination_mismatch`);
// every failure as PERMISSION_DENIED "<reason>: <detail>". The destination's
// public key on success.
StatusOr<crypto::PublicKey> CheckRewrapAuthorization(const RewrapRequest& r,
                                                     const crypto::PublicKey& registered_signing_key,
                                                     int64_t now_unix);

// The store key under which the authorization's nonce is consumed (once
// across every KMS process on the store): "rewrap:" + nonce, owner
// "migration/" + tenant.
std::string RewrapNonceKey(const RewrapAuthorization& a);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_MIGRATION_H_
