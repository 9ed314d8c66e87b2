// Re-wrapping a package to the customer's newest key version (issue 19,
// `vmseal customer rewrap IMAGE`; docs/protocol.md §1.3). The customer signs
// the same authorization a migration uses (docs/format/rewrap-authorization.md)
// with their own newest certificate at this KMS as the destination and the
// package label at the newest version as the destination label; the KMS
// unwraps the data key with the older version's private key and wraps it to
// the newest version's public key. The data key never leaves the KMS
// unwrapped; the disk's ciphertext is not touched (the package keeps the
// streams' key version in the tag's streamKeyVersion, package.md §4).
#include <algorithm>

#include "crypto/key_wrap.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "kms/migration.h"
#include "kms/service.h"

namespace vmseal::kms {

StatusOr<RewrapResponse> KmsService::RewrapToNewestKey(const Caller& caller, const std::string& customer_id,
                                                       const RewrapRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "re-wrap to the newest key version"));
  const RewrapAuthorization& a = req.authorization;
  const std::string subject = "customer/" + customer_id;
  nlohmann::json audit = {{"action", "rewrap"},
                          {"image_id", a.image_id},
                          {"from_version", a.key_version},
                          {"destination_cert_sha256", a.destination_cert_sha256},
                          {"nonce", a.nonce},
                          {"expires_unix", a.expires_unix},
                          {"by", caller.name},
                          {"by_fingerprint", caller.fingerprint}};
  // Every refusal is audited with its reason, and nothing else is written.
  auto deny = [&](const Status& s) -> Status {
    nlohmann::json d = audit;
    const std::string& m = s.message();
    const size_t colon = m.find(':');
    const std::string reason = colon == std::string::npos ? std::string("error") : m.substr(0, colon);
    d["reason"] = reason;
    d["message"] = m;
    (void)store_->AppendAudit({"customer_key.deny", subject, d});
    metrics_.CountDenial(reason);
    return s;
  };
  if (a.tenant != customer_id) {
    return deny(PermissionDeniedError("tenant_mismatch: the authorization is signed for tenant '" + a.tenant +
                                      "', not " + customer_id));
  }
  // 1. Signed by the customer's registered signing key, unexpired, for the
  //    certificate sent: before any key is looked up or unwrapped.
  auto registered = store_->GetSigningKey(customer_id);
  if (!registered.ok()) {
    if (registered.status().code() != StatusCode::kNotFound) return registered.status();
    return deny(PermissionDeniedError("bad_authorization: tenant '" + customer_id +
                                      "' has no registered signing key"));
  }
  ASSIGN_OR_RETURN(crypto::PublicKey signer, crypto::PublicKey::FromPem(registered->public_key_pem));
  auto destination = CheckRewrapAuthorization(req, signer, Now());
  if (!destination.ok()) return deny(destination.status());
  // 2. The destination is the customer's newest key version here.
  ASSIGN_OR_RETURN(auto keys, store_->ListCustomerKeys(customer_id));
  if (keys.empty()) {
    return deny(FailedPreconditionError("unknown_customer: customer " + customer_id + " has no KMS key"));
  }
  const CustomerKeyRecord& newest =
      *std::max_element(keys.begin(), keys.end(),
                        [](const CustomerKeyRecord& x, const CustomerKeyRecord& y) { return x.version < y.version; });
  auto newest_cert = crypto::Certificate::FromPem(newest.cert_pem);
  if (!newest_cert.ok()) return newest_cert.status();
  const std::string newest_digest = crypto::HexEncode(crypto::Sha256(newest_cert->ToDer()));
  if (newest_digest != a.destination_cert_sha256) {
    return deny(PermissionDeniedError("destination_not_newest: the authorization names certificate " +
                                      a.destination_cert_sha256 + ", not the certificate of version " +
                                      std::to_string(newest.version) + " (" + newest_digest + ")"));
  }
  audit["to_version"] = newest.version;
  // 3. The labels: the package's names the signed image at the signed
  //    version; the destination's the same image at the newest version.
  auto source_label = ParsePackageLabel(req.oaep_label);
  if (!source_label.ok() || source_label->tenant != customer_id || source_label->image_id != a.image_id ||
      source_label->key_version != a.key_version) {
    return deny(PermissionDeniedError("label_mismatch: the package label is not image '" + a.image_id +
                                      "' of tenant '" + customer_id + "' at key version " +
                                      std::to_string(a.key_version)));
  }
  if (static_cast<int64_t>(a.key_version) >= newest.version) {
    return deny(FailedPreconditionError("key_version_current: the package is at version " +
                                        std::to_string(a.key_version) + ", the newest is " +
                                        std::to_string(newest.version) + "; nothing to re-wrap"));
  }
  auto dest_label = ParsePackageLabel(a.destination_label);
  if (!dest_label.ok() || dest_label->tenant != customer_id || dest_label->image_id != a.image_id ||
      dest_label->key_version != static_cast<uint64_t>(newest.version) ||
      dest_label->data_algorithm != source_label->data_algorithm) {
    return deny(PermissionDeniedError("label_mismatch: the destination label is not image '" + a.image_id +
                                      "' of tenant '" + customer_id + "' at key version " +
                                      std::to_string(newest.version) + " with the package's data algorithm"));
  }
  // 4. An image registered here, neither revoked nor its account closed
  //    or disabled.
  auto image = store_->GetImage(customer_id, a.image_id);
  if (!image.ok()) {
    if (image.status().code() != StatusCode::kNotFound) return image.status();
    return deny(PermissionDeniedError("unknown_image: tenant '" + customer_id + "' has no image '" +
                                      a.image_id + "' at this KMS"));
  }
  if (Status live = lifecycle_->Check(customer_id, a.image_id, ""); !live.ok()) return deny(live);
  // 5. The source key: the customer's key of the signed version, not
  //    retired (a retired version's packages are not moved: the customer
  //    re-wraps before retiring).
  auto key = CustomerPrivateKey(customer_id, req.key_id);
  if (!key.ok()) return deny(key.status());
  const CustomerKeyRecord* source = nullptr;
  for (const CustomerKeyRecord& k : keys) {
    if (k.key_id == key->key_id) source = &k;
  }
  if (source == nullptr || source->version != static_cast<int64_t>(a.key_version)) {
    return deny(PermissionDeniedError("key_version_mismatch: key " + req.key_id + " is not version " +
                                      std::to_string(a.key_version)));
  }
  if (source->retired_unix != 0) {
    return deny(PermissionDeniedError("key_version_retired: version " + std::to_string(a.key_version) +
                                      " was retired at " + std::to_string(source->retired_unix) +
                                      "; its packages are not re-wrapped"));
  }
  if (key->key->type() == crypto::KeyType::kX25519 ? destination->type() != crypto::KeyType::kX25519
                                                   : destination->type() == crypto::KeyType::kX25519) {
    return deny(FailedPreconditionError("key_type_mismatch: the newest version's key is of another type"));
  }
  // 6. Single use across every KMS process on the store, before any unwrap.
  Status used = store_->ConsumeNonce(RewrapNonceKey(a), "rewrap/" + customer_id, a.expires_unix + 60);
  if (!used.ok()) {
    if (used.code() != StatusCode::kFailedPrecondition) return used;
    return deny(PermissionDeniedError("authorization_replayed: nonce " + a.nonce + " was used"));
  }
  // 7. The data key in wiped memory only.
  auto data_key = crypto::UnwrapKey(*key->key, req.wrapped_key, crypto::AsStringView(req.oaep_label));
  if (!data_key.ok()) {
    return deny(PermissionDeniedError("label_mismatch: the wrapped key does not open under this key and label"));
  }
  auto rewrapped = crypto::WrapKey(*destination, *data_key, crypto::AsStringView(a.destination_label));
  if (!rewrapped.ok()) return rewrapped.status();
  const std::string to_key_id = "sha256:" + destination->KeyId();
  audit["kms_key_id"] = key->key_id;
  audit["to_kms_key_id"] = newest.key_id;
  audit["destination_key_id"] = destination->KeyId();
  // 8. The image's registered key moves with the audit record: no answer
  //    without it.
  Status moved = store_->MoveImageKey(customer_id, a.image_id, req.key_id, to_key_id,
                                      {"customer_key.rewrap", subject, audit});
  if (!moved.ok()) {
    if (moved.message().starts_with("image_conflict")) return deny(PermissionDeniedError(moved.message()));
    return moved;
  }
  RewrapResponse out;
  out.rewrapped_key = *std::move(rewrapped);
  out.destination_key_id = destination->KeyId();
  out.key_version = newest.version;
  out.kms_key_id = newest.key_id;
  return out;
}

}  // namespace vmseal::kms
