#include "ovf/policy_document.h"

#include <set>
#include <vector>

#include "crypto/signature.h"
#include "json/json.h"
#include "ovf/descriptor.h"

namespace vmseal::ovf {
namespace {

using nlohmann::json;

Status Malformed(const std::string& why) {
  return InvalidArgumentError("malformed_policy_document: " + why);
}

// "YYYY-MM-DDTHH:MM:SSZ" with fields in range (§2).
bool ValidIssuedAt(std::string_view s) {
  if (s.size() != 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
      s[16] != ':' || s[19] != 'Z') {
    return false;
  }
  auto num = [&](size_t at, size_t n, int lo, int hi) {
    int v = 0;
    for (size_t i = at; i < at + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return false;
      v = v * 10 + (s[i] - '0');
    }
    return v >= lo && v <= hi;
  };
  return num(0, 4, 0, 9999) && num(5, 2, 1, 12) && num(8, 2, 1, 31) && num(11, 2, 0, 23) &&
         num(14, 2, 0, 59) && num(17, 2, 0, 60);
}

Status CheckFields(const PolicyDocument& d) {
  RETURN_IF_ERROR(ValidateIdentity("tenant", d.tenant));
  RETURN_IF_ERROR(ValidateIdentity("image_id", d.image_id));
  if (d.version < 1 || d.version > kMaxPolicyDocumentVersion) {
    return InvalidArgumentError("version must be 1.." + std::to_string(kMaxPolicyDocumentVersion));
  }
  if (!ValidIssuedAt(d.issued_at)) {
    return InvalidArgumentError("issued_at must be an RFC 3339 UTC time YYYY-MM-DDTHH:MM:SSZ");
  }
  if (!d.policy.is_object()) return InvalidArgumentError("policy must be a JSON object");
  return OkStatus();
}

// True when some object of `text` (already parsed once) names a member twice.
bool HasDuplicateNames(std::string_view text) {
  std::vector<std::set<std::string>> open;
  bool duplicate = false;
  json::parser_callback_t cb = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second) duplicate = true;
        break;
      default:
        break;
    }
    return true;
  };
  const json ignored = json::parse(text.begin(), text.end(), cb, /*allow_exceptions=*/false);
  (void)ignored;
  return duplicate;
}

}  // namespace

StatusOr<std::string> SerializePolicyDocument(const PolicyDocument& doc) {
  RETURN_IF_ERROR(CheckFields(doc));
  std::string out = DumpJson(json{{"format", kPolicyDocumentFormat},
                                  {"tenant", doc.tenant},
                                  {"image_id", doc.image_id},
                                  {"version", doc.version},
                                  {"issued_at", doc.issued_at},
                                  {"policy", doc.policy}});
  if (out.size() > kMaxPolicyDocumentBytes) {
    return InvalidArgumentError("policy document exceeds " + std::to_string(kMaxPolicyDocumentBytes) +
                                " bytes");
  }
  return out;
}

StatusOr<PolicyDocument> ParsePolicyDocument(std::string_view document) {
  if (document.empty() || document.size() > kMaxPolicyDocumentBytes) {
    return Malformed("must be 1-" + std::to_string(kMaxPolicyDocumentBytes) + " bytes");
  }
  auto parsed = ParseJsonObject(document, "policy document",
                                JsonLimits{.max_depth = 16, .max_bytes = kMaxPolicyDocumentBytes});
  if (!parsed.ok()) return Malformed(parsed.status().message());
  if (HasDuplicateNames(document)) return Malformed("a member name appears twice");
  const json& j = *parsed;
  static const std::set<std::string> kMembers = {"format", "tenant",    "image_id",
                                                 "version", "issued_at", "policy"};
  for (const auto& [name, value] : j.items()) {
    if (!kMembers.count(name)) return Malformed("unknown member \"" + name.substr(0, 32) + "\"");
  }
  for (const std::string& name : kMembers) {
    if (!j.contains(name)) return Malformed("missing member \"" + name + "\"");
  }
  if (!j["format"].is_string() || j["format"].get<std::string>() != kPolicyDocumentFormat) {
    return Malformed("format must be \"" + std::string(kPolicyDocumentFormat) + "\"");
  }
  for (const char* name : {"tenant", "image_id", "issued_at"}) {
    if (!j[name].is_string()) return Malformed(std::string(name) + " must be a string");
  }
  // An unsigned JSON integer: not negative, not a fraction, not an exponent
  // form (nlohmann parses those as floats), within 2^53 - 1.
  if (!j["version"].is_number_unsigned()) {
    return Malformed("version must be an integer 1.." + std::to_string(kMaxPolicyDocumentVersion));
  }
  PolicyDocument d;
  d.tenant = j["tenant"].get<std::string>();
  d.image_id = j["image_id"].get<std::string>();
  d.version = j["version"].get<uint64_t>();
  d.issued_at = j["issued_at"].get<std::string>();
  d.policy = j["policy"];
  Status fields = CheckFields(d);
  if (!fields.ok()) return Malformed(fields.message());
  return d;
}

crypto::Bytes PolicyDocumentSignedMessage(std::string_view document) {
  crypto::Bytes m(kPolicyDocumentFormat.begin(), kPolicyDocumentFormat.end());
  m.push_back(0);
  m.insert(m.end(), document.begin(), document.end());
  return m;
}

StatusOr<crypto::Bytes> SignPolicyDocument(std::string_view document, const crypto::PrivateKey& key) {
  if (key.type() != crypto::KeyType::kEcP256) {
    return InvalidArgumentError("policy documents are signed with an ECDSA P-256 key");
  }
  return crypto::Sign(key, crypto::SignatureDigest::kSha256, PolicyDocumentSignedMessage(document));
}

Status VerifyPolicyDocumentSignature(std::string_view document, std::span<const uint8_t> signature,
                                     const crypto::PublicKey& key) {
  if (signature.empty() || signature.size() > kMaxPolicySignatureBytes) {
    return UnauthenticatedError("bad_signature: the policy document's signature must be 1-" +
                                std::to_string(kMaxPolicySignatureBytes) + " bytes");
  }
  if (key.type() != crypto::KeyType::kEcP256) {
    return UnauthenticatedError("bad_signature: the signing key is not an ECDSA P-256 key");
  }
  Status s = crypto::VerifySignature(key, crypto::SignatureDigest::kSha256,
                                     PolicyDocumentSignedMessage(document), signature);
  if (!s.ok()) {
    return UnauthenticatedError(
        "bad_signature: the policy document is not signed by the tenant's registered signing key");
  }
  return OkStatus();
}

}  // namespace vmseal::ovf
