#include "kms/kek_rotation.h"

#include <ctime>
#include <utility>

#include "crypto/primitives.h"

namespace vmseal::kms {

using nlohmann::json;

namespace {
int64_t NowUnix() { return static_cast<int64_t>(std::time(nullptr)); }

// The associated data of a service secret by name; empty for a name this
// binary does not know (it is not re-wrapped: a rotation then fails rather
// than leave a record under a KEK about to be retired).
std::string_view SecretAad(std::string_view name) {
  if (name == kNonceKeySecretName) return kNonceKeyAad;
  if (name == kLogKeySecretName) return kLogKeyAad;
  return {};
}
}  // namespace

// --- KekRing -----------------------------------------------------------------

KekRing::WriteGate::WriteGate() {
  pthread_rwlockattr_t attr;
  pthread_rwlockattr_init(&attr);
  pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&lock_, &attr);
  pthread_rwlockattr_destroy(&attr);
}
KekRing::WriteGate::~WriteGate() { pthread_rwlock_destroy(&lock_); }
void KekRing::WriteGate::lock_shared() { pthread_rwlock_rdlock(&lock_); }
void KekRing::WriteGate::unlock_shared() { pthread_rwlock_unlock(&lock_); }
void KekRing::WriteGate::lock() { pthread_rwlock_wrlock(&lock_); }
void KekRing::WriteGate::unlock() { pthread_rwlock_unlock(&lock_); }

KekRing::KekRing(std::unique_ptr<KeyEncryptionKey> current) {
  current_ = current.get();
  all_.push_back(std::move(current));
}

const KeyEncryptionKey* KekRing::FindLocked(std::string_view kek_id) const {
  if (dropped_.find(kek_id) != dropped_.end()) return nullptr;
  for (const auto& k : all_) {
    if (k->id() == kek_id) return k.get();
  }
  return nullptr;
}

const std::string& KekRing::id() const {
  std::shared_lock lock(mu_);
  return current_->id();
}

StatusOr<std::string> KekRing::Wrap(const SecretBytes& plaintext, std::string_view aad) const {
  const KeyEncryptionKey* current = nullptr;
  {
    std::shared_lock lock(mu_);
    current = current_;
  }
  return current->Wrap(plaintext, aad);
}

StatusOr<KeyEncryptionKey::WrappedForRecord> KekRing::WrapForRecord(const SecretBytes& plaintext,
                                                                   std::string_view aad) const {
  gate_.lock_shared();
  std::shared_ptr<void> hold(&gate_, [](void* gate) { static_cast<WriteGate*>(gate)->unlock_shared(); });
  const KeyEncryptionKey* current = nullptr;
  {
    std::shared_lock lock(mu_);
    current = current_;
  }
  ASSIGN_OR_RETURN(std::string wrapped, current->Wrap(plaintext, aad));
  return WrappedForRecord{current->id(), std::move(wrapped), std::move(hold)};
}

StatusOr<SecretBytes> KekRing::Unwrap(std::string_view wrapped, std::string_view aad) const {
  std::vector<const KeyEncryptionKey*> order;
  {
    std::shared_lock lock(mu_);
    order.push_back(current_);
    for (const auto& k : all_) {
      if (k.get() != current_ && dropped_.find(k->id()) == dropped_.end()) order.push_back(k.get());
    }
  }
  Status last = OkStatus();
  for (const KeyEncryptionKey* k : order) {
    auto out = k->Unwrap(wrapped, aad);
    if (out.ok()) return out;
    last = out.status();
  }
  return last;
}

bool KekRing::Holds(std::string_view kek_id) const {
  std::shared_lock lock(mu_);
  return FindLocked(kek_id) != nullptr;
}

StatusOr<SecretBytes> KekRing::UnwrapUnder(std::string_view kek_id, std::string_view wrapped,
                                           std::string_view aad) const {
  const KeyEncryptionKey* k = nullptr;
  std::string current;
  {
    std::shared_lock lock(mu_);
    k = FindLocked(kek_id);
    current = current_->id();
  }
  if (k == nullptr) {
    return FailedPreconditionError("kek_mismatch: wrapped under KEK " + std::string(kek_id) +
                                   " but this KMS uses KEK " + current);
  }
  return k->Unwrap(wrapped, aad);
}

StatusOr<std::string> KekRing::WrapUnder(std::string_view kek_id, const SecretBytes& plaintext,
                                         std::string_view aad) const {
  const KeyEncryptionKey* k = nullptr;
  {
    std::shared_lock lock(mu_);
    k = FindLocked(kek_id);
  }
  if (k == nullptr) return FailedPreconditionError("kek_mismatch: this KMS holds no KEK " + std::string(kek_id));
  return k->Wrap(plaintext, aad);
}

void KekRing::Install(std::unique_ptr<KeyEncryptionKey> kek) {
  std::unique_lock gate(gate_);
  std::unique_lock lock(mu_);
  dropped_.erase(kek->id());
  for (const auto& k : all_) {
    if (k->id() == kek->id()) {
      current_ = k.get();
      retained_.push_back(std::move(kek));
      return;
    }
  }
  current_ = kek.get();
  all_.push_back(std::move(kek));
}

void KekRing::AddPrevious(std::unique_ptr<KeyEncryptionKey> kek) {
  std::unique_lock lock(mu_);
  dropped_.erase(kek->id());
  for (const auto& k : all_) {
    if (k->id() == kek->id()) {
      retained_.push_back(std::move(kek));
      return;
    }
  }
  all_.push_back(std::move(kek));
}

Status KekRing::Drop(std::string_view kek_id) {
  std::unique_lock lock(mu_);
  if (FindLocked(kek_id) == nullptr) return NotFoundError("this KMS holds no KEK " + std::string(kek_id));
  if (current_->id() == kek_id) {
    return FailedPreconditionError("kek_current: " + std::string(kek_id) + " is the current KEK");
  }
  dropped_.emplace(kek_id);
  return OkStatus();
}

std::vector<std::string> KekRing::ids() const {
  std::shared_lock lock(mu_);
  std::vector<std::string> out{current_->id()};
  for (const auto& k : all_) {
    if (k.get() != current_ && dropped_.find(k->id()) == dropped_.end()) out.push_back(k->id());
  }
  return out;
}

// --- KekRotation ---------------------------------------------------------------

KekRotation::KekRotation(Store* store, KekRing* ring, Loader loader, Options options)
    : store_(store), ring_(ring), loader_(std::move(loader)), options_(options) {}

KekRotation::~KekRotation() {
  stop_ = true;
  Join();
}

void KekRotation::Join() {
  if (worker_.joinable()) worker_.join();
}

StatusOr<json> KekRotation::Reload(const std::string& expected_kek_id) {
  if (!loader_) return FailedPreconditionError("this KMS cannot reload its KEKs (no kms.json)");
  ASSIGN_OR_RETURN(auto keks, loader_());
  if (keks.empty()) return InternalError("the configured KEK list is empty");
  if (keks[0]->id() != expected_kek_id) {
    return FailedPreconditionError("kek_unexpected: kms.json names KEK " + keks[0]->id() +
                                   " as current, not " + expected_kek_id);
  }
  std::lock_guard<std::mutex> lock(mu_);
  // Previous KEKs first, so that the ring never lacks one a record names.
  for (size_t i = 1; i < keks.size(); ++i) ring_->AddPrevious(std::move(keks[i]));
  ring_->Install(std::move(keks[0]));
  return json{{"current", ring_->id()}, {"ring", ring_->ids()}};
}

StatusOr<json> KekRotation::Start(const std::string& kek_id, const std::string& by) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!running_) {
      if (ring_->id() != kek_id) {
        return FailedPreconditionError("kek_not_current: this KMS wraps under KEK " + ring_->id() + ", not " +
                                       kek_id + " (reload kms.json first)");
      }
      Join();
      RETURN_IF_ERROR(store_->AppendAudit(
          {"kms.kek_rotation.start", "kms", json{{"to_kek_id", kek_id}, {"by", by}, {"ring", ring_->ids()}}}));
      running_ = true;
      stop_ = false;
      state_ = "running";
      target_ = kek_id;
      error_.clear();
      rewrapped_ = 0;
      secrets_rewrapped_ = 0;
      started_unix_ = NowUnix();
      finished_unix_ = 0;
      worker_ = std::thread([this, kek_id, by] {
        Status s = Rewrap(kek_id, by);
        std::lock_guard<std::mutex> done_lock(mu_);
        state_ = s.ok() ? "done" : "failed";
        error_ = s.ok() ? "" : s.ToString();
        finished_unix_ = NowUnix();
        running_ = false;
      });
    }
  }
  return Describe();
}

Status KekRotation::RunNow(const std::string& by) {
  const std::string target = ring_->id();
  RETURN_IF_ERROR(store_->AppendAudit(
      {"kms.kek_rotation.start", "kms", json{{"to_kek_id", target}, {"by", by}, {"ring", ring_->ids()}}}));
  return Rewrap(target, by);
}

Status KekRotation::Rewrap(const std::string& target, const std::string& by) {
  std::string cursor;
  int64_t total = 0;
  for (;;) {
    if (stop_) return CancelledError("the KEK rotation was stopped; start it again to resume");
    ASSIGN_OR_RETURN(auto keys, store_->ListKeysNotUnderKek(target, cursor, options_.batch));
    if (keys.empty()) break;
    std::vector<Store::KeyRewrap> batch;
    batch.reserve(keys.size());
    for (const auto& k : keys) {
      ASSIGN_OR_RETURN(crypto::Bytes blob, crypto::Base64Decode(k.wrapped_private_key));
      const std::string aad = CustomerKeyAad(k.key_id, k.customer_id);
      auto der = ring_->UnwrapUnder(k.kek_id, crypto::AsStringView(blob), aad);
      if (!der.ok()) {
        return Status(der.status().code(),
                      "key " + k.key_id + " (KEK " + k.kek_id + ") does not open: " + der.status().message());
      }
      ASSIGN_OR_RETURN(std::string fresh, ring_->WrapUnder(target, *der, aad));
      batch.push_back({k.key_id, k.wrapped_private_key, crypto::Base64Encode(crypto::AsBytes(fresh)), target});
    }
    ASSIGN_OR_RETURN(int64_t n, store_->RewrapCustomerKeys(
                                    batch, {"kms.kek_rotation.batch", "kms", json{{"to_kek_id", target}}}));
    total += n;
    rewrapped_ += n;
    cursor = keys.back().key_id;
  }
  ASSIGN_OR_RETURN(int64_t secrets, RewrapSecrets(target, by));
  return store_->AppendAudit({"kms.kek_rotation.done", "kms",
                              json{{"to_kek_id", target}, {"by", by}, {"keys_rewrapped", total},
                                   {"secrets_rewrapped", secrets}}});
}

StatusOr<int64_t> KekRotation::RewrapSecrets(const std::string& target, const std::string& by) {
  ASSIGN_OR_RETURN(auto secrets, store_->ListSecrets());
  int64_t n = 0;
  for (const auto& [name, value] : secrets) {
    const size_t space = value.find(' ');
    if (space == std::string::npos) return DataLossError("service secret " + name + " is malformed");
    const std::string kek_id = value.substr(0, space);
    if (kek_id == target) continue;
    const std::string_view aad = SecretAad(name);
    if (aad.empty()) return FailedPreconditionError("service secret " + name + " is unknown to this KMS");
    ASSIGN_OR_RETURN(crypto::Bytes blob, crypto::Base64Decode(std::string_view(value).substr(space + 1)));
    auto plain = ring_->UnwrapUnder(kek_id, crypto::AsStringView(blob), aad);
    if (!plain.ok()) return Status(plain.status().code(), "service secret " + name + ": " + plain.status().message());
    ASSIGN_OR_RETURN(std::string fresh, ring_->WrapUnder(target, *plain, aad));
    ASSIGN_OR_RETURN(bool replaced,
                     store_->ReplaceSecret(name, value, target + " " + crypto::Base64Encode(crypto::AsBytes(fresh)),
                                           {"kms.kek_rotation.secret", "kms",
                                            json{{"name", name}, {"from_kek_id", kek_id}, {"to_kek_id", target},
                                                 {"by", by}}}));
    if (replaced) {
      ++n;
      ++secrets_rewrapped_;
    }
  }
  return n;
}

StatusOr<json> KekRotation::Describe() {
  ASSIGN_OR_RETURN(auto counts, store_->CountKeysByKek());
  ASSIGN_OR_RETURN(auto secrets, store_->ListSecrets());
  json keys = json::object();
  for (const auto& [id, n] : counts) keys[id] = n;
  json secret_keks = json::object();
  for (const auto& [name, value] : secrets) secret_keks[name] = value.substr(0, value.find(' '));
  std::lock_guard<std::mutex> lock(mu_);
  return json{{"current", ring_->id()},
              {"ring", ring_->ids()},
              {"keys_by_kek", keys},
              {"secrets_by_name", secret_keks},
              {"rotation",
               {{"state", state_}, {"to_kek_id", target_}, {"keys_rewrapped", rewrapped_.load()},
                {"secrets_rewrapped", secrets_rewrapped_.load()}, {"started_unix", started_unix_},
                {"finished_unix", finished_unix_}, {"error", error_}}}};
}

StatusOr<json> KekRotation::Retire(const std::string& kek_id, const std::string& by) {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_) return FailedPreconditionError("kek_rotation_running: wait for the re-wrap to finish");
  if (ring_->id() == kek_id) return FailedPreconditionError("kek_current: " + kek_id + " is the current KEK");
  ASSIGN_OR_RETURN(auto counts, store_->CountKeysByKek());
  int64_t keys = 0;
  for (const auto& [id, n] : counts) {
    if (id == kek_id) keys = n;
  }
  ASSIGN_OR_RETURN(auto secrets, store_->ListSecrets());
  int64_t named = 0;
  for (const auto& [name, value] : secrets) {
    if (value.substr(0, value.find(' ')) == kek_id) ++named;
  }
  if (keys > 0 || named > 0) {
    return FailedPreconditionError("kek_in_use: " + std::to_string(keys) + " customer keys and " +
                                   std::to_string(named) + " service secrets are still wrapped under KEK " +
                                   kek_id);
  }
  Status dropped = ring_->Drop(kek_id);
  if (!dropped.ok() && dropped.code() != StatusCode::kNotFound) return dropped;
  RETURN_IF_ERROR(store_->AppendAudit(
      {"kms.kek_rotation.retire", "kms", json{{"kek_id", kek_id}, {"by", by}, {"current", ring_->id()}}}));
  return json{{"retired", kek_id}, {"current", ring_->id()}, {"ring", ring_->ids()}};
}

}  // namespace vmseal::kms
