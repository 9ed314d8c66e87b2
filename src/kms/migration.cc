#include "kms/migration.h"

#include <algorithm>

#include "crypto/key_wrap.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "kms/service.h"

namespace vmseal::kms {
namespace {

using json = nlohmann::json;

void AppendU32(crypto::Bytes* out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<uint8_t>(v >> s));
}
void AppendU64(crypto::Bytes* out, uint64_t v) {
  for (int s = 56; s >= 0; s -= 8) out->push_back(static_cast<uint8_t>(v >> s));
}
void AppendStr(crypto::Bytes* out, std::span<const uint8_t> s) {
  AppendU32(out, static_cast<uint32_t>(s.size()));
  out->insert(out->end(), s.begin(), s.end());
}
void AppendStr(crypto::Bytes* out, std::string_view s) {
  AppendStr(out, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

Status Malformed(const std::string& what) {
  return InvalidArgumentError("malformed_authorization: " + what);
}
bool IsLowerHex(const std::string& s, size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}
// The tag identity alphabet (docs/format/package.md §4), 1-128 bytes.
bool IsIdentity(const std::string& s) {
  return !s.empty() && s.size() <= 128 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
  });
}
StatusOr<std::string> Str(const json& j, const char* name) {
  if (!j.contains(name) || !j[name].is_string()) return Malformed(std::string(name) + " is missing");
  return j[name].get<std::string>();
}
StatusOr<crypto::Bytes> B64(const json& j, const char* name, size_t max) {
  ASSIGN_OR_RETURN(std::string s, Str(j, name));
  if (s.size() > max * 4 / 3 + 4) return Malformed(std::string(name) + " is too long");
  auto b = crypto::Base64Decode(s);
  if (!b.ok()) return Malformed(std::string(name) + " is not base64");
  return *std::move(b);
}

}  // namespace

crypto::Bytes RewrapAuthorizationMessage(const RewrapAuthorization& a) {
  crypto::Bytes out(kRewrapAuthorizationDomain.begin(), kRewrapAuthorizationDomain.end());
  out.push_back(0);
  AppendStr(&out, a.tenant);
  AppendStr(&out, a.image_id);
  AppendU64(&out, a.key_version);
  AppendStr(&out, a.destination_cert_sha256);
  AppendStr(&out, a.destination_label);
  AppendStr(&out, a.nonce);
  AppendU64(&out, static_cast<uint64_t>(a.expires_unix));
  return out;
}

json RewrapAuthorizationToJson(const RewrapAuthorization& a) {
  return json{{"tenant", a.tenant},
              {"image_id", a.image_id},
              {"key_version", a.key_version},
              {"destination_cert_sha256", a.destination_cert_sha256},
              {"destination_label", crypto::Base64Encode(a.destination_label)},
              {"nonce", a.nonce},
              {"expires_unix", a.expires_unix}};
}

StatusOr<RewrapAuthorization> RewrapAuthorizationFromJson(const json& j) {
  if (!j.is_object()) return Malformed("authorization is not an object");
  RewrapAuthorization a;
  ASSIGN_OR_RETURN(a.tenant, Str(j, "tenant"));
  ASSIGN_OR_RETURN(a.image_id, Str(j, "image_id"));
  if (!IsIdentity(a.tenant) || !IsIdentity(a.image_id)) {
    return Malformed("tenant and image_id are 1-128 bytes of [A-Za-z0-9._:@-]");
  }
  if (!j.contains("key_version") || !j["key_version"].is_number_unsigned() ||
      j["key_version"].get<uint64_t>() == 0) {
    return Malformed("key_version is an integer >= 1");
  }
  a.key_version = j["key_version"].get<uint64_t>();
  ASSIGN_OR_RETURN(a.destination_cert_sha256, Str(j, "destination_cert_sha256"));
  if (!IsLowerHex(a.destination_cert_sha256, 64)) {
    return Malformed("destination_cert_sha256 is 64 lowercase hex digits");
  }
  ASSIGN_OR_RETURN(a.destination_label, B64(j, "destination_label", 1024));
  if (a.destination_label.empty() || a.destination_label.size() > 1024) {
    return Malformed("destination_label is 1-1024 bytes");
  }
  ASSIGN_OR_RETURN(a.nonce, Str(j, "nonce"));
  if (!IsLowerHex(a.nonce, 64)) return Malformed("nonce is 64 lowercase hex digits");
  if (!j.contains("expires_unix") || !j["expires_unix"].is_number_integer()) {
    return Malformed("expires_unix is an integer");
  }
  a.expires_unix = j["expires_unix"].get<int64_t>();
  return a;
}

StatusOr<RewrapRequest> ParseRewrapRequest(const json& body) {
  if (!body.is_object()) return Malformed("the body is not a JSON object");
  RewrapRequest r;
  if (!body.contains("authorization")) return Malformed("authorization is missing");
  ASSIGN_OR_RETURN(r.authorization, RewrapAuthorizationFromJson(body["authorization"]));
  ASSIGN_OR_RETURN(r.signature, B64(body, "signature", 256));
  ASSIGN_OR_RETURN(r.destination_cert_pem, Str(body, "destination_cert_pem"));
  if (r.destination_cert_pem.size() > 16 * 1024) return Malformed("destination_cert_pem is too long");
  ASSIGN_OR_RETURN(r.key_id, Str(body, "key_id"));
  ASSIGN_OR_RETURN(r.wrap_algorithm, Str(body, "wrap_algorithm"));
  ASSIGN_OR_RETURN(r.oaep_label, B64(body, "oaep_label", 1024));
  ASSIGN_OR_RETURN(r.wrapped_key, B64(body, "wrapped_key", 1024));
  return r;
}

json RewrapRequestToJson(const RewrapRequest& r) {
  return json{{"authorization", RewrapAuthorizationToJson(r.authorization)},
              {"signature", crypto::Base64Encode(r.signature)},
              {"destination_cert_pem", r.destination_cert_pem},
              {"key_id", r.key_id},
              {"wrap_algorithm", r.wrap_algorithm},
              {"oaep_label", crypto::Base64Encode(r.oaep_label)},
              {"wrapped_key", crypto::Base64Encode(r.wrapped_key)}};
}

StatusOr<crypto::PublicKey> CheckRewrapAuthorization(const RewrapRequest& r,
                                                     const crypto::PublicKey& registered_signing_key,
                                                     int64_t now_unix) {
  const crypto::Bytes message = RewrapAuthorizationMessage(r.authorization);
  if (!crypto::VerifySignature(registered_signing_key, crypto::SignatureDigest::kSha256, message,
                               r.signature)
           .ok()) {
    return PermissionDeniedError(
        "bad_authorization: the authorization is not signed by tenant '" + r.authorization.tenant +
        "''s registered signing key " + registered_signing_key.KeyId());
  }
  if (r.authorization.expires_unix <= now_unix) {
    return PermissionDeniedError("authorization_expired: it expired at " +
                                 std::to_string(r.authorization.expires_unix) + ", now is " +
                                 std::to_string(now_unix));
  }
  if (r.authorization.expires_unix > now_unix + kMaxRewrapAuthorizationSeconds) {
    return PermissionDeniedError("authorization_expired: it expires more than " +
                                 std::to_string(kMaxRewrapAuthorizationSeconds) +
                                 " s from now (at most one hour)");
  }
  auto cert = crypto::Certificate::FromPem(r.destination_cert_pem);
  if (!cert.ok()) {
    return PermissionDeniedError("destination_mismatch: the destination certificate does not parse");
  }
  const std::string digest = crypto::HexEncode(crypto::Sha256(cert->ToDer()));
  if (digest != r.authorization.destination_cert_sha256) {
    return PermissionDeniedError("destination_mismatch: the destination certificate's SHA-256 is " +
                                 digest + ", the customer signed " +
                                 r.authorization.destination_cert_sha256);
  }
  auto key = cert->GetPublicKey();
  if (!key.ok()) {
    return PermissionDeniedError("destination_mismatch: the destination certificate's key: " +
                                 key.status().message());
  }
  return *std::move(key);
}

std::string RewrapNonceKey(const RewrapAuthorization& a) { return "rewrap:" + a.nonce; }

}  // namespace vmseal::kms

// --- KmsService::MigrationRewrap (service.h) --------------------------------

namespace vmseal::kms {

StatusOr<RewrapResponse> KmsService::MigrationRewrap(const Caller& caller, const RewrapRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "re-wrap for a migration"));
  const RewrapAuthorization& a = req.authorization;
  nlohmann::json audit = {{"tenant", a.tenant},
                          {"image_id", a.image_id},
                          {"key_version", a.key_version},
                          {"destination_cert_sha256", a.destination_cert_sha256},
                          {"nonce", a.nonce},
                          {"expires_unix", a.expires_unix},
                          {"by_fingerprint", caller.fingerprint}};
  // Every refusal is audited with its reason, and nothing else is written.
  auto deny = [&](const Status& s) -> Status {
    nlohmann::json d = audit;
    const std::string& m = s.message();
    const size_t colon = m.find(':');
    d["reason"] = colon == std::string::npos ? std::string("error") : m.substr(0, colon);
    d["message"] = m;
    (void)store_->AppendAudit({"migration.deny", "customer/" + a.tenant, d});
    return s;
  };
  // 1. Signed by the tenant's registered signing key, unexpired, for this
  //    destination certificate: before any key lookup or unwrap.
  auto registered = store_->GetSigningKey(a.tenant);
  if (!registered.ok()) {
    if (registered.status().code() != StatusCode::kNotFound) return registered.status();
    return deny(PermissionDeniedError("bad_authorization: tenant '" + a.tenant +
                                      "' has no registered signing key"));
  }
  ASSIGN_OR_RETURN(crypto::PublicKey signer, crypto::PublicKey::FromPem(registered->public_key_pem));
  auto destination = CheckRewrapAuthorization(req, signer, Now());
  if (!destination.ok()) return deny(destination.status());
  // 2. The package's label names exactly the signed image, tenant and version.
  auto label = ParsePackageLabel(req.oaep_label);
  if (!label.ok() || label->tenant != a.tenant || label->image_id != a.image_id ||
      label->key_version != a.key_version) {
    return deny(PermissionDeniedError("label_mismatch: the package label is not image '" + a.image_id +
                                      "' of tenant '" + a.tenant + "' at key version " +
                                      std::to_string(a.key_version)));
  }
  // 3. An image this KMS knows for the tenant.
  auto image = RegisteredDescriptor(a.tenant, a.image_id);
  if (!image.ok()) {
    if (image.status().code() != StatusCode::kNotFound) return image.status();
    return deny(PermissionDeniedError("unknown_image: tenant '" + a.tenant + "' has no image '" +
                                      a.image_id + "' at this KMS"));
  }
  // 4. Single use, across every KMS process on the store (the record
  //    outlives the authorization), before any key is unwrapped: a replay
  //    costs a signature check, not an unwrap.
  Status used = store_->ConsumeNonce(RewrapNonceKey(a), "migration/" + a.tenant, a.expires_unix + 60);
  if (!used.ok()) {
    if (used.code() != StatusCode::kFailedPrecondition) return used;
    return deny(PermissionDeniedError("authorization_replayed: nonce " + a.nonce + " was used"));
  }
  // 5. The customer's private key; the data key in wiped memory only.
  auto key = CustomerPrivateKey(a.tenant, req.key_id);
  if (!key.ok()) return deny(key.status());
  auto data_key = crypto::UnwrapKey(*key->key, req.wrapped_key, crypto::AsStringView(req.oaep_label));
  if (!data_key.ok()) {
    return deny(PermissionDeniedError("label_mismatch: the wrapped key does not open under this key and label"));
  }
  auto rewrapped = crypto::WrapKey(*destination, *data_key, crypto::AsStringView(a.destination_label));
  if (!rewrapped.ok()) {
    return deny(PermissionDeniedError("destination_mismatch: cannot wrap to the destination key: " +
                                      rewrapped.status().message()));
  }
  audit["kms_key_id"] = key->key_id;
  audit["destination_key_id"] = destination->KeyId();
  // No answer without its audit record.
  RETURN_IF_ERROR(store_->AppendAudit({"migration.rewrap", "customer/" + a.tenant, audit}));
  RewrapResponse out;
  out.rewrapped_key = *std::move(rewrapped);
  out.destination_key_id = destination->KeyId();
  return out;
}

}  // namespace vmseal::kms
