#include "kms/key_versions.h"

#include <charconv>

#include "kms/service.h"

namespace vmseal::kms {
namespace {

using json = nlohmann::json;

constexpr std::string_view kVersionOuPrefix = "key-version:";

CustomerKeyInfo InfoOf(const CustomerKeyRecord& r) {
  return {r.key_id, r.customer_id, r.algorithm, r.public_key_pem, r.cert_pem, r.created_unix,
          r.version, r.retired_unix};
}

bool ValidCustomerId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

std::string KeyVersionOu(int64_t version) { return std::string(kVersionOuPrefix) + std::to_string(version); }

StatusOr<uint64_t> KeyVersionOfOu(const std::string& ou) {
  if (!ou.starts_with(kVersionOuPrefix)) return uint64_t{1};
  const std::string_view digits = std::string_view(ou).substr(kVersionOuPrefix.size());
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty() || digits[0] == '0' ||
      v < 2 || v > (uint64_t{1} << 53)) {
    return InvalidArgumentError("certificate OU '" + ou.substr(0, 64) + "' is not a key version >= 2");
  }
  return v;
}

Status KeyVersions::CheckRelease(const std::string& customer_id, const std::string& kms_key_id,
                                 uint64_t tag_version, int64_t config_version) {
  std::optional<Entry> entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_version_ != config_version) {
      entries_.clear();
      cached_version_ = config_version;
    }
    auto it = entries_.find(kms_key_id);
    if (it != entries_.end()) entry = it->second;
  }
  if (!entry) {
    ASSIGN_OR_RETURN(CustomerKeyRecord rec, store_->GetCustomerKey(kms_key_id));
    if (rec.customer_id != customer_id) return PermissionDeniedError("unknown_key: not this customer's key");
    entry = Entry{rec.version, rec.retired_unix};
    std::lock_guard<std::mutex> lock(mu_);
    // Kept only while the cache still holds the version read before loading.
    if (cached_version_ == config_version && entries_.size() < 4096) entries_[kms_key_id] = *entry;
  }
  if (static_cast<uint64_t>(entry->version) != tag_version) {
    return PermissionDeniedError("key_version_mismatch: the package's keyVersion is " +
                                 std::to_string(tag_version) + " but the key it names is version " +
                                 std::to_string(entry->version));
  }
  if (entry->retired_unix != 0) {
    return PermissionDeniedError("key_version_retired: version " + std::to_string(entry->version) +
                                 " of customer " + customer_id + "'s key was retired at " +
                                 std::to_string(entry->retired_unix));
  }
  return OkStatus();
}

StatusOr<CustomerKeyInfo> KmsService::RotateCustomerKey(const Caller& caller,
                                                        const std::string& customer_id) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "rotate customer key"));
  if (!ValidCustomerId(customer_id)) return InvalidArgumentError("customer id must match [A-Za-z0-9._-]{1,64}");
  ASSIGN_OR_RETURN(auto keys, store_->ListCustomerKeys(customer_id));
  if (keys.empty()) {
    RecordDenial("unknown_customer", "customer/" + customer_id, "rotate key");
    return FailedPreconditionError("unknown_customer: customer " + customer_id + " has no KMS key");
  }
  // Same algorithm as the newest version: a package's wrap algorithm is
  // fixed by the certificate it was sealed to.
  return CreateCustomerKey(caller, {customer_id, keys.back().algorithm});
}

StatusOr<CustomerKeyInfo> KmsService::RetireCustomerKey(const Caller& caller,
                                                        const std::string& customer_id,
                                                        int64_t version, const std::string& document,
                                                        std::span<const uint8_t> signature) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "retire customer key"));
  if (!ValidCustomerId(customer_id)) return InvalidArgumentError("customer id must match [A-Za-z0-9._-]{1,64}");
  if (version < 1) return InvalidArgumentError("version must be an integer >= 1");
  const std::string subject = "customer/" + customer_id;
  auto deny = [&](Status s, const std::string& reason) -> Status {
    (void)store_->AppendAudit({"customer_key.deny", subject,
                               json{{"action", "retire"}, {"version", version}, {"reason", reason},
                                    {"message", s.message()}, {"by", caller.name}}});
    metrics_.CountDenial(reason);
    return s;
  };
  // The customer's own signed request for exactly this version, not the
  // portal's word (refusals audited lifecycle.deny by the check).
  if (document.empty() || signature.empty()) {
    return deny(PermissionDeniedError("bad_signature: retiring a key version needs the customer's "
                                      "signed request (vmseal customer retire-key)"),
                "bad_signature");
  }
  ASSIGN_OR_RETURN(LifecycleRequest signed_req,
                   lifecycle_->VerifyCustomerRequest(caller, customer_id, document, signature));
  if (signed_req.action != "retire_key_version" || signed_req.key_version != version) {
    return deny(PermissionDeniedError("request_mismatch: the signed request is " + signed_req.action +
                                      (signed_req.key_version != 0
                                           ? " of version " + std::to_string(signed_req.key_version)
                                           : std::string()) +
                                      ", not retire_key_version of version " + std::to_string(version)),
                "request_mismatch");
  }
  ASSIGN_OR_RETURN(auto keys, store_->ListCustomerKeys(customer_id));
  const CustomerKeyRecord* target = nullptr;
  int64_t newest = 0;
  for (const auto& k : keys) {
    newest = std::max(newest, k.version);
    if (k.version == version) target = &k;
  }
  if (target == nullptr) {
    return deny(NotFoundError("unknown_key_version: customer " + customer_id + " has no key version " +
                              std::to_string(version)),
                "unknown_key_version");
  }
  if (version == newest) {
    return deny(PermissionDeniedError("key_version_current: version " + std::to_string(version) +
                                      " is the newest; rotate the key first"),
                "key_version_current");
  }
  if (target->retired_unix != 0) {
    return deny(PermissionDeniedError("key_version_retired: version " + std::to_string(version) +
                                      " is retired already"),
                "key_version_retired");
  }
  const int64_t now = std::max<int64_t>(Now(), 1);
  Status retired = store_->RetireCustomerKey(
      customer_id, version, now,
      {"customer_key.retire", subject,
       json{{"key_id", target->key_id}, {"version", version}, {"by", caller.name},
            {"by_fingerprint", caller.fingerprint}, {"issued_unix", signed_req.issued_unix},
            {"signed_by_customer", true}}});
  if (!retired.ok()) {
    if (retired.message().starts_with("key_version_retired")) {
      return deny(PermissionDeniedError(retired.message()), "key_version_retired");
    }
    return retired;
  }
  CustomerKeyInfo out = InfoOf(*target);
  out.retired_unix = now;
  return out;
}

StatusOr<std::vector<CustomerKeyInfo>> KmsService::ListCustomerKeys(const Caller& caller,
                                                                    const std::string& customer_id) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kPortal, Caller::Role::kOperator}, "list customer keys"));
  if (!ValidCustomerId(customer_id)) return InvalidArgumentError("customer id must match [A-Za-z0-9._-]{1,64}");
  ASSIGN_OR_RETURN(auto keys, store_->ListCustomerKeys(customer_id));
  std::vector<CustomerKeyInfo> out;
  for (const auto& k : keys) out.push_back(InfoOf(k));
  return out;
}

}  // namespace vmseal::kms
