#include "kms/lifecycle.h"

#include <cctype>
#include <cstdio>
#include <ctime>
#include <cstring>

#include "crypto/signature.h"
#include "json/json.h"
#include "kms/service.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;

// Identities and host ids are checked by character class and length; no
// std::regex (slow, and GCC 12 warns inside <regex> under -fsanitize).
bool AllOf(const std::string& s, size_t max_len, const char* extra) {
  if (s.empty() || s.size() > max_len) return false;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u == 0 || u >= 0x80) return false;
    if (!std::isalnum(u) && std::strchr(extra, c) == nullptr) return false;
  }
  return true;
}
bool ValidIdentity(const std::string& s) { return AllOf(s, 128, "._:@-"); }
bool ValidHostId(const std::string& s) { return AllOf(s, 64, "._-"); }

Status Denied(const std::string& reason, const std::string& detail) {
  return PermissionDeniedError(reason + ": " + detail);
}
Status Malformed(const std::string& detail) {
  return InvalidArgumentError("malformed_request: " + detail);
}

std::string ReasonOf(const Status& s) {
  const std::string& m = s.message();
  const size_t colon = m.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 40) return "";
  for (size_t i = 0; i < colon; ++i) {
    if (!std::islower(static_cast<unsigned char>(m[i])) && m[i] != '_') return "";
  }
  return m.substr(0, colon);
}

crypto::Bytes SignedMessage(std::string_view document) {
  std::string m(kLifecycleSignaturePrefix);
  m.append(document);
  return crypto::Bytes(m.begin(), m.end());
}

}  // namespace

StatusOr<std::string> SerializeLifecycleRequest(const LifecycleRequest& r) {
  if (r.action != "revoke_image" && r.action != "close_account" && r.action != "retire_key_version") {
    return Malformed("action must be revoke_image, close_account or retire_key_version");
  }
  if (r.action == "retire_key_version" ? r.key_version < 1 : r.key_version != 0) {
    return Malformed("key_version (>= 1) is for retire_key_version only");
  }
  if (r.action == "retire_key_version" && !r.image_id.empty()) {
    return Malformed("retire_key_version names no image");
  }
  if (!ValidIdentity(r.tenant)) return Malformed("tenant must match [A-Za-z0-9._:@-]{1,128}");
  if (r.action == "revoke_image" && !ValidIdentity(r.image_id)) {
    return Malformed("image_id must match [A-Za-z0-9._:@-]{1,128}");
  }
  if (r.action == "close_account" && !r.image_id.empty()) return Malformed("close_account names no image");
  if (r.issued_unix <= 0) return Malformed("issued_unix must be positive");
  if (r.grace_seconds < -1 || (r.action != "close_account" && r.grace_seconds != -1)) {
    return Malformed("grace_seconds is for close_account only, and not negative");
  }
  // Keys in a fixed order: nlohmann::json sorts object keys.
  json j = {{"format", std::string(kLifecycleRequestFormat)}, {"action", r.action}, {"tenant", r.tenant},
            {"issued_unix", r.issued_unix}};
  if (!r.image_id.empty()) j["image_id"] = r.image_id;
  if (r.grace_seconds >= 0) j["grace_seconds"] = r.grace_seconds;
  if (r.key_version != 0) j["key_version"] = r.key_version;
  return DumpJson(j);
}

StatusOr<LifecycleRequest> ParseLifecycleRequest(std::string_view document) {
  if (document.size() > kMaxLifecycleDocumentBytes) return Malformed("the document is too large");
  auto j = ParseJsonObject(document, "the lifecycle request");
  if (!j.ok()) return Malformed(j.status().message());
  if (j->value("format", "") != kLifecycleRequestFormat) {
    return Malformed("format must be " + std::string(kLifecycleRequestFormat));
  }
  LifecycleRequest r;
  auto str = [&](const char* name) {
    auto it = j->find(name);
    return it != j->end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  r.action = str("action");
  r.tenant = str("tenant");
  r.image_id = str("image_id");
  auto issued = j->find("issued_unix");
  if (issued == j->end() || !issued->is_number_integer()) return Malformed("issued_unix must be an integer");
  r.issued_unix = issued->get<int64_t>();
  auto grace = j->find("grace_seconds");
  if (grace != j->end()) {
    if (!grace->is_number_integer() || grace->get<int64_t>() < 0) {
      return Malformed("grace_seconds must be a non-negative integer");
    }
    r.grace_seconds = grace->get<int64_t>();
  }
  auto version = j->find("key_version");
  if (version != j->end()) {
    if (!version->is_number_integer() || version->get<int64_t>() < 1) {
      return Malformed("key_version must be an integer >= 1");
    }
    r.key_version = version->get<int64_t>();
  }
  // Exactly the canonical bytes: no unknown fields, no other spelling.
  ASSIGN_OR_RETURN(std::string canonical, SerializeLifecycleRequest(r));
  if (canonical != document) return Malformed("the document is not in canonical form");
  return r;
}

StatusOr<crypto::Bytes> SignLifecycleRequest(std::string_view document, const crypto::PrivateKey& key) {
  if (key.type() != crypto::KeyType::kEcP256) {
    return InvalidArgumentError("lifecycle requests are signed with an ECDSA P-256 key");
  }
  return crypto::Sign(key, crypto::SignatureDigest::kSha256, SignedMessage(document));
}

Status VerifyLifecycleRequest(std::string_view document, std::span<const uint8_t> signature,
                              const crypto::PublicKey& key) {
  if (signature.empty() || signature.size() > 128 || key.type() != crypto::KeyType::kEcP256 ||
      !crypto::VerifySignature(key, crypto::SignatureDigest::kSha256, SignedMessage(document),
                               signature)
           .ok()) {
    return Denied("bad_signature", "the request is not signed by the tenant's registered signing key");
  }
  return OkStatus();
}

Lifecycle::Lifecycle(Options options, Store* store) : options_(std::move(options)), store_(store) {}

int64_t Lifecycle::Now() const {
  return options_.clock ? options_.clock() : static_cast<int64_t>(std::time(nullptr));
}

Status Lifecycle::Refuse(const Caller& caller, const std::string& subject, const Status& s) {
  std::string reason = ReasonOf(s);
  if (reason.empty()) reason = "malformed_request";
  (void)store_->AppendAudit({"lifecycle.deny", subject,
                             json{{"reason", reason}, {"by", caller.name}, {"message", s.message()}}});
  return s;
}

StatusOr<LifecycleRecord> Lifecycle::RevokeHost(const Caller& caller, const std::string& host_id,
                                                const std::string& reason) {
  if (caller.role != Caller::Role::kOperator) {
    return Refuse(caller, "host/" + host_id, Denied("forbidden", "only an operator revokes a host"));
  }
  if (!ValidHostId(host_id)) return InvalidArgumentError("host id must match [A-Za-z0-9._-]{1,64}");
  if (reason.size() > 256) return InvalidArgumentError("reason: at most 256 characters");
  auto existing = store_->GetLifecycle("host", host_id);
  if (existing.ok()) return existing;  // idempotent: the first revocation stands
  if (existing.status().code() != StatusCode::kNotFound) return existing.status();
  auto host = store_->GetHost(host_id);
  if (!host.ok()) {
    if (host.status().code() != StatusCode::kNotFound) return host.status();
    return Refuse(caller, "host/" + host_id, NotFoundError("unknown_host: no host " + host_id));
  }
  LifecycleRecord mark{"host", host_id, "revoked", reason, caller.name, Now(), 0};
  RETURN_IF_ERROR(store_->PutLifecycle(
      mark, {"host.revoke", "host/" + host_id, json{{"reason", reason}, {"by", caller.name}}}));
  // Unenrolled as well: a later enrollment of the id is refused (CheckHost).
  host->enrolled = false;
  RETURN_IF_ERROR(store_->PutHost(*host, {"host.unenroll", "host/" + host_id,
                                          json{{"reason", "host_revoked"}, {"by", caller.name}}}));
  return mark;
}

StatusOr<LifecycleRecord> Lifecycle::SetCustomerEnabled(const Caller& caller,
                                                        const std::string& customer_id, bool enabled,
                                                        const std::string& reason) {
  const std::string subject = "customer/" + customer_id;
  if (caller.role != Caller::Role::kOperator) {
    return Refuse(caller, subject, Denied("forbidden", "only an operator disables or enables a customer"));
  }
  if (!ValidIdentity(customer_id)) return InvalidArgumentError("customer id must match [A-Za-z0-9._:@-]{1,128}");
  if (reason.size() > 256) return InvalidArgumentError("reason: at most 256 characters");
  auto existing = store_->GetLifecycle("customer", customer_id);
  if (!existing.ok() && existing.status().code() != StatusCode::kNotFound) return existing.status();
  if (existing.ok() && (existing->state == "closing" || existing->state == "destroyed")) {
    return Refuse(caller, subject,
                  FailedPreconditionError(std::string(existing->state == "closing" ? "account_closing"
                                                                                   : "key_destroyed") +
                                          ": customer " + customer_id + " closed the account"));
  }
  auto keys = store_->ListCustomerKeys(customer_id);
  if (!keys.ok()) return keys.status();
  if (keys->empty()) return Refuse(caller, subject, NotFoundError("unknown_customer: no customer " + customer_id));
  LifecycleRecord mark{"customer", customer_id, enabled ? "enabled" : "disabled", reason, caller.name,
                       Now(), 0};
  RETURN_IF_ERROR(store_->PutLifecycle(
      mark, {enabled ? "customer.enable" : "customer.disable", subject,
             json{{"customer_id", customer_id}, {"reason", reason}, {"by", caller.name}}}));
  return mark;
}

StatusOr<LifecycleRequest> Lifecycle::VerifyCustomerRequest(const Caller& caller, const std::string& tenant,
                                                            const std::string& document,
                                                            std::span<const uint8_t> signature) {
  const std::string subject = "customer/" + tenant;
  if (caller.role != Caller::Role::kPortal && caller.role != Caller::Role::kOperator) {
    return Refuse(caller, subject, Denied("forbidden", "lifecycle requests come through the portal"));
  }
  if (!ValidIdentity(tenant)) return InvalidArgumentError("tenant must match [A-Za-z0-9._:@-]{1,128}");
  auto req = ParseLifecycleRequest(document);
  if (!req.ok()) return Refuse(caller, subject, req.status());
  if (req->tenant != tenant) {
    return Refuse(caller, subject, Denied("tenant_mismatch", "the request is signed for tenant " +
                                                                 req->tenant + ", not " + tenant));
  }
  const int64_t now = Now();
  if (req->issued_unix < now - options_.max_request_skew_seconds ||
      req->issued_unix > now + options_.max_request_skew_seconds) {
    return Refuse(caller, subject, Denied("stale_request", "the request was issued at " +
                                                               std::to_string(req->issued_unix) +
                                                               ", too far from now"));
  }
  auto registered = store_->GetSigningKey(tenant);
  if (!registered.ok()) {
    if (registered.status().code() != StatusCode::kNotFound) return registered.status();
    return Refuse(caller, subject, Denied("signer_mismatch", "tenant " + tenant + " has no registered signing key"));
  }
  ASSIGN_OR_RETURN(crypto::PublicKey key, crypto::PublicKey::FromPem(registered->public_key_pem));
  Status verified = VerifyLifecycleRequest(document, signature, key);
  if (!verified.ok()) return Refuse(caller, subject, verified);
  return *std::move(req);
}

StatusOr<LifecycleRecord> Lifecycle::CustomerRequest(const Caller& caller, const std::string& tenant,
                                                     const std::string& document,
                                                     std::span<const uint8_t> signature) {
  const std::string subject = "customer/" + tenant;
  ASSIGN_OR_RETURN(LifecycleRequest signed_req, VerifyCustomerRequest(caller, tenant, document, signature));
  const LifecycleRequest* req = &signed_req;
  if (req->action == "retire_key_version") {
    return Refuse(caller, subject, Malformed("a key version is retired at its own route "
                                             "(/v1/customers/{id}/key-versions/{n}/retire)"));
  }
  const int64_t now = Now();
  ASSIGN_OR_RETURN(SigningKeyRecord registered, store_->GetSigningKey(tenant));
  const json signed_by = {{"signer_key_id", registered.key_id}, {"by", caller.name},
                          {"issued_unix", req->issued_unix}};

  if (req->action == "revoke_image") {
    auto image = store_->GetImage(tenant, req->image_id);
    if (!image.ok()) {
      if (image.status().code() != StatusCode::kNotFound) return image.status();
      return Refuse(caller, subject, NotFoundError("unknown_image: image " + req->image_id +
                                                   " is not registered for tenant " + tenant));
    }
    const std::string key_subject = tenant + "/" + req->image_id;
    auto existing = store_->GetLifecycle("image", key_subject);
    if (existing.ok()) return existing;  // final; repeating it changes nothing
    if (existing.status().code() != StatusCode::kNotFound) return existing.status();
    LifecycleRecord mark{"image", key_subject, "revoked", "customer request", "customer/" + tenant, now, 0};
    json details = signed_by;
    details["tenant"] = tenant;
    details["image_id"] = req->image_id;
    RETURN_IF_ERROR(store_->PutLifecycle(mark, {"image.revoke", subject, details}));
    return mark;
  }
  // close_account
  auto existing = store_->GetLifecycle("customer", tenant);
  if (!existing.ok() && existing.status().code() != StatusCode::kNotFound) return existing.status();
  if (existing.ok() && (existing->state == "closing" || existing->state == "destroyed")) return existing;
  const int64_t grace = req->grace_seconds >= 0 ? req->grace_seconds : options_.default_grace_seconds;
  LifecycleRecord mark{"customer", tenant, "closing", "customer request", "customer/" + tenant, now,
                       now + grace};
  json details = signed_by;
  details["customer_id"] = tenant;
  details["grace_seconds"] = grace;
  details["due_unix"] = mark.due_unix;
  RETURN_IF_ERROR(store_->PutLifecycle(mark, {"customer.close", subject, details}));
  if (grace == 0) RETURN_IF_ERROR(DestroyKeys(tenant, mark));
  return store_->GetLifecycle("customer", tenant);
}

StatusOr<std::vector<LifecycleRecord>> Lifecycle::List(const Caller& caller, const std::string& kind) {
  if (caller.role != Caller::Role::kOperator) return Denied("forbidden", "only an operator lists marks");
  if (kind != "image" && kind != "host" && kind != "customer") {
    return InvalidArgumentError("kind must be image, host or customer");
  }
  RETURN_IF_ERROR(DestroyDue(/*force=*/true));
  return store_->ListLifecycle(kind, "");
}

Status Lifecycle::DestroyKeys(const std::string& customer_id, const LifecycleRecord& closing) {
  LifecycleRecord mark = closing;
  mark.state = "destroyed";
  mark.since_unix = Now();
  auto deleted = store_->DestroyCustomerKeys(
      customer_id, mark,
      {"customer.keys_destroy", "customer/" + customer_id,
       json{{"customer_id", customer_id}, {"closed_unix", closing.since_unix},
            {"due_unix", closing.due_unix}}});
  if (!deleted.ok()) return deleted.status();
  if (options_.forget_keys) options_.forget_keys(customer_id);
  return OkStatus();
}

Status Lifecycle::DestroyDue(bool force) {
  const int64_t now = Now();
  int64_t last = last_sweep_.load();
  if (!force && (last == now || !last_sweep_.compare_exchange_strong(last, now))) return OkStatus();
  ASSIGN_OR_RETURN(auto closing, store_->ListLifecycle("customer", "closing"));
  for (const LifecycleRecord& c : closing) {
    if (c.due_unix <= now) RETURN_IF_ERROR(DestroyKeys(c.subject, c));
  }
  return OkStatus();
}

Status Lifecycle::CheckHost(const std::string& host_id) {
  auto host = store_->GetLifecycle("host", host_id);
  if (host.ok()) return Denied("host_revoked", "host " + host_id + " was revoked by " + host->by);
  if (host.status().code() != StatusCode::kNotFound) return host.status();
  return OkStatus();
}

Status Lifecycle::Check(const std::string& tenant, const std::string& image_id,
                        const std::string& host_id) {
  RETURN_IF_ERROR(DestroyDue());
  return Check(tenant, image_id, host_id,
               [this](const std::string& kind, const std::string& subject) { return store_->GetLifecycle(kind, subject); });
}

Status Lifecycle::Check(const std::string& tenant, const std::string& image_id, const std::string& host_id,
                        const MarkReader& read) {
  auto customer = read("customer", tenant);
  if (!customer.ok() && customer.status().code() != StatusCode::kNotFound) return customer.status();
  if (customer.ok()) {
    if (customer->state == "destroyed") {
      return Denied("key_destroyed", "customer " + tenant + " closed the account; its keys are destroyed");
    }
    if (customer->state == "closing") {
      return Denied("account_closing", "customer " + tenant + " closed the account; keys are destroyed at " +
                                           std::to_string(customer->due_unix));
    }
    if (customer->state == "disabled") {
      return Denied("customer_disabled", "customer " + tenant + " is disabled by the operator");
    }
  }
  auto image = read("image", tenant + "/" + image_id);
  if (image.ok()) return Denied("image_revoked", "image " + image_id + " was revoked by its customer");
  if (image.status().code() != StatusCode::kNotFound) return image.status();
  if (host_id.empty()) return OkStatus();
  auto host = read("host", host_id);
  if (host.ok()) return Denied("host_revoked", "host " + host_id + " was revoked by " + host->by);
  if (host.status().code() != StatusCode::kNotFound) return host.status();
  return OkStatus();
}

KeyDestructionTimer::KeyDestructionTimer(Lifecycle* lifecycle, std::chrono::milliseconds interval)
    : lifecycle_(lifecycle), interval_(interval) {
  thread_ = std::thread([this] {
    std::unique_lock<std::mutex> lock(mu_);
    do {
      lock.unlock();
      Status s = lifecycle_->DestroyDue(/*force=*/true);
      if (!s.ok()) std::fprintf(stderr, "kms: key destruction sweep failed (retried): %s\n", s.message().c_str());
      sweeps_.fetch_add(1);
      lock.lock();
    } while (!cv_.wait_for(lock, interval_, [this] { return stopping_; }));
  });
}

KeyDestructionTimer::~KeyDestructionTimer() { Stop(); }

void KeyDestructionTimer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace vmseal::kms
