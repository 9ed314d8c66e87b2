// The customer-signed policy document (docs/format/policy-document.md): a
// later change of an image's release policy, signed by the tenant's
// package-signing key (ECDSA P-256, SHA-256) so that only the customer can
// make one. The document is a small JSON object; its bytes are signed and
// kept exactly as signed (no canonicalization): whoever stores or relays it
// stores the bytes, never a re-serialization.
#ifndef VMSEAL_OVF_POLICY_DOCUMENT_H_
#define VMSEAL_OVF_POLICY_DOCUMENT_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"

namespace vmseal::ovf {

// policy-document.md §2, §5.
inline constexpr std::string_view kPolicyDocumentFormat = "vmseal-policy-document-v1";
inline constexpr size_t kMaxPolicyDocumentBytes = 20 * 1024;
inline constexpr size_t kMaxPolicySignatureBytes = 128;
// Versions are JSON integers exactly representable as IEEE doubles.
inline constexpr uint64_t kMaxPolicyDocumentVersion = (uint64_t{1} << 53) - 1;

struct PolicyDocument {
  std::string tenant;    // the tag's tenant (package.md §4)
  std::string image_id;  // the tag's imageId
  // 1..kMaxPolicyDocumentVersion; the signed descriptor's policy is version 0.
  uint64_t version = 0;
  std::string issued_at;  // RFC 3339 UTC, "YYYY-MM-DDTHH:MM:SSZ"
  nlohmann::json policy = nlohmann::json::object();  // the release policy
};

// The document's bytes (§2): compact JSON, keys in byte order. INVALID_ARGUMENT
// for a field out of its bounds.
StatusOr<std::string> SerializePolicyDocument(const PolicyDocument& doc);

// Parses untrusted bytes (§2, §4): at most kMaxPolicyDocumentBytes, one JSON
// object with exactly the six members, no duplicate names, each in its
// bounds. INVALID_ARGUMENT "malformed_policy_document: ..." otherwise. The
// policy member is only checked to be an object (the KMS validates it).
StatusOr<PolicyDocument> ParsePolicyDocument(std::string_view document);

// What is signed (§3): "vmseal-policy-document-v1", a zero byte, then the
// document bytes.
crypto::Bytes PolicyDocumentSignedMessage(std::string_view document);

// Signs the document bytes with the customer's P-256 signing key (DER
// ECDSA-Sig-Value over SHA-256 of the §3 message).
StatusOr<crypto::Bytes> SignPolicyDocument(std::string_view document, const crypto::PrivateKey& key);

// Checks the signature of the document bytes with `key` (the tenant's
// registered signing key). UNAUTHENTICATED "bad_signature: ..." when it does
// not verify or is longer than kMaxPolicySignatureBytes.
Status VerifyPolicyDocumentSignature(std::string_view document,
                                     std::span<const uint8_t> signature,
                                     const crypto::PublicKey& key);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_POLICY_DOCUMENT_H_
