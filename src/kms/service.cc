#include "kms/service.h"

#include <openssl/pem.h>

#include <algorithm>
#include <charconv>
#include <ctime>

#include <sys/time.h>

#include <chrono>

#include "attest/credential.h"
#include "attest/reason.h"
#include "crypto/key_wrap.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"
#include "crypto/x509.h"
#include "json/json.h"
#include "kms/nonce.h"
#include "ovf/package_format.h"
#include "ovf/policy_document.h"
#include "ovf/signature.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

const char* RoleName(Caller::Role role) {
  switch (role) {
    case Caller::Role::kPortal: return "portal";
    case Caller::Role::kHost: return "host";
    case Caller::Role::kOperator: return "operator";
    case Caller::Role::kAnonymous: return "anonymous";
  }
  return "anonymous";
}

struct GeneratedKey {
  SecretBytes private_pkcs8_der;
  std::string public_pem;
};

StatusOr<GeneratedKey> Generate(const std::string& algorithm) {
  EVP_PKEY* raw = algorithm == "RSA-3072"
                      ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(3072))
                      : EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519");
  if (raw == nullptr) return crypto::SslError("key generation");
  crypto::EvpPkeyPtr key(raw);
  unsigned char* der = nullptr;
  int der_len = i2d_PrivateKey(key.get(), &der);
  if (der_len <= 0) return crypto::SslError("i2d_PrivateKey");
  GeneratedKey out;
  out.private_pkcs8_der = SecretBytes(std::span<const uint8_t>(der, static_cast<size_t>(der_len)));
  OPENSSL_clear_free(der, static_cast<size_t>(der_len));
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key.get()) != 1) return crypto::SslError("PEM_write_bio_PUBKEY");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  out.public_pem.assign(data, static_cast<size_t>(len));
  return out;
}

// The package's key-wrap algorithm the KMS unwraps (RSA-OAEP, SHA-256 for
// OAEP and MGF1; docs/format/package.md).
constexpr std::string_view kRsaOaepUri = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
constexpr std::string_view kPackageLabelPrefix = "vmseal-package-key-v1";

// Image ids, tenants: [A-Za-z0-9._:@-]{1,128} as the package allows.
bool ValidIdentity(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '@' && c != '-') {
      return false;
    }
  }
  return true;
}

// "<reason>: <detail>" as PERMISSION_DENIED.
Status Denied(const std::string& reason, const std::string& detail) {
  return PermissionDeniedError(reason + ": " + detail);
}

// The machine reason at the front of a status message ("" if none).
std::string ReasonPrefix(const Status& s) {
  const std::string& m = s.message();
  size_t colon = m.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 40) return "";
  for (size_t i = 0; i < colon; ++i) {
    if (!std::islower(static_cast<unsigned char>(m[i])) && m[i] != '_') return "";
  }
  return m.substr(0, colon);
}

// Whether a release refused with `s` (reason `reason`) counts against the
// host's limit on refused releases (package_precheck.h): a refusal of what
// the host sent (package texts, evidence, nonce, key, label, a request the
// policy refuses, a malformed request), not a store outage (any other
// code), the limit itself, or what the portal or the customer decided
// (grants, fencing, revocation), which an honest host meets as its jobs end.
bool CountsAgainstHost(const Status& s, const std::string& reason) {
  if (s.code() != StatusCode::kPermissionDenied && s.code() != StatusCode::kInvalidArgument) return false;
  for (const char* other : {"internal", "rate_limited", "no_grant", "stale_attempt", "image_revoked",
                            "host_revoked", "customer_disabled", "account_closing", "key_destroyed"}) {
    if (reason == other) return false;
  }
  return true;
}

// Sortable within one second: the verdict list orders by (time, id).
std::string NewVerdictId() {
  struct timeval tv;
  ::gettimeofday(&tv, nullptr);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%06ld", static_cast<long>(tv.tv_usec));
  return "v-" + std::to_string(tv.tv_sec) + buf + "-" + crypto::HexEncode(crypto::RandomBytes(6));
}

VerdictInfo InfoOf(const Verdict& v) { return {v.verdict_id, v.trusted, v.reason, v.time_unix}; }

StatusOr<crypto::PrivateKey> PrivateKeyFromDer(const SecretBytes& der) {
  const unsigned char* p = der.UnsafeData();
  crypto::EvpPkeyPtr pkey(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der.size())));
  if (!pkey) return crypto::SslError("stored customer key does not parse");
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), pkey.get(), nullptr, nullptr, 0, nullptr,
                                       nullptr) != 1) {
    return crypto::SslError("PEM_write_bio_PrivateKey");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  SecretBytes pem(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data),
                                           static_cast<size_t>(len)));
  OPENSSL_cleanse(data, static_cast<size_t>(len));
  return crypto::PrivateKey::FromPem(pem);
}

// Unwrapped customer keys kept in memory (Release parses each once).
constexpr size_t kMaxCachedKeys = 1024;

// Lowercase hex SHA-256 of the certificate's SubjectPublicKeyInfo (DER):
// what pins a TPM's EK to a host id.
StatusOr<std::string> EkSha256(const crypto::Certificate& cert) {
  ASSIGN_OR_RETURN(crypto::PublicKey key, cert.GetPublicKey());
  return crypto::KeyIdOfPem(key.ToPem());
}

bool IsSha256Hex(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

CustomerKeyInfo Info(const CustomerKeyRecord& r) {
  return {r.key_id, r.customer_id, r.algorithm, r.public_key_pem, r.cert_pem, r.created_unix,
          r.version, r.retired_unix};
}

}  // namespace

Caller CallerFromPeer(const net::Peer& peer) {
  Caller c;
  if (!peer.authenticated) return c;
  c.name = peer.common_name;
  c.fingerprint = peer.fingerprint_sha256;
  if (peer.organizational_unit == "portal") c.role = Caller::Role::kPortal;
  if (peer.organizational_unit == "host") c.role = Caller::Role::kHost;
  if (peer.organizational_unit == "operator") c.role = Caller::Role::kOperator;
  return c;
}

namespace {
// Used nonces remembered in memory: a minute of nonces at over 8,000
// releases/s, in about 25 MiB at most (UsedNonceCache).
constexpr size_t kUsedNonceCacheCapacity = size_t{1} << 19;
}  // namespace

KmsService::KmsService(Options options, Store* store, const KeyEncryptionKey* kek,
                       internal::CertAndKey ca)
    : options_(std::move(options)),
      store_(store),
      kek_(kek),
      ca_(std::move(ca)),
      used_nonces_(kUsedNonceCacheCapacity),
      precheck_(options_.package_precheck,
                options_.clock ? rate_limit::Clock([clock = options_.clock] { return static_cast<double>(clock()); })
                               : rate_limit::SteadyClock()) {}

namespace {

constexpr const char* kNonceKeyName = kNonceKeySecretName;
// How far in the future an issue time may lie (clocks of KMS processes
// sharing a store).
constexpr int64_t kNonceClockSkewSeconds = 60;

// The key that authenticates nonces: created once per store, wrapped under
// the KEK, shared by every KMS process on that store. Stored as
// "<KEK id> <base64 of the wrapped key>".
StatusOr<SecretBytes> LoadNonceKey(Store* store, const KeyEncryptionKey* kek) {
  ASSIGN_OR_RETURN(auto fresh, kek->WrapForRecord(SecretBytes::Random(32), kNonceKeyAad));
  ASSIGN_OR_RETURN(std::string stored,
                   store->PutSecretIfAbsent(kNonceKeyName,
                                            fresh.kek_id + " " + crypto::Base64Encode(crypto::AsBytes(fresh.wrapped)),
                                            {"kms.nonce_key.create", "kms", json{{"kek_id", fresh.kek_id}}}));
  fresh.hold.reset();
  const size_t space = stored.find(' ');
  if (space == std::string::npos) return DataLossError("the store's nonce key record is malformed");
  const std::string stored_kek = stored.substr(0, space);
  if (!kek->Holds(stored_kek)) {
    return FailedPreconditionError("kek_mismatch: this store's keys are wrapped under KEK " + stored_kek +
                                   " but this KMS uses KEK " + kek->id());
  }
  ASSIGN_OR_RETURN(crypto::Bytes blob, crypto::Base64Decode(std::string_view(stored).substr(space + 1)));
  // During a KEK rotation the record may name the previous KEK of the ring.
  auto key = kek->UnwrapUnder(stored_kek, crypto::AsStringView(blob), kNonceKeyAad);
  if (!key.ok()) return DataLossError("the store's nonce key does not open under KEK " + kek->id());
  return key;
}

}  // namespace

StatusOr<std::unique_ptr<KmsService>> KmsService::Create(Options options, Store* store,
                                                         const KeyEncryptionKey* kek,
                                                         internal::CertAndKey ca) {
  if (store == nullptr || kek == nullptr) return InvalidArgumentError("store and KEK are required");
  if (options.nonce_lifetime_seconds <= 0 || options.nonce_lifetime_seconds > 3600) {
    return InvalidArgumentError("nonce lifetime must be 1..3600 s");
  }
  if (ca.cert_pem.empty() || ca.key_pem.empty()) return InvalidArgumentError("CA is required");
  std::unique_ptr<attest::EkCertificateVerifier> ek;
  if (!options.ek_ca_bundle_pem.empty()) {
    ASSIGN_OR_RETURN(ek, attest::EkCertificateVerifier::Create(options.ek_ca_bundle_pem));
  }
  ASSIGN_OR_RETURN(SecretBytes nonce_key, LoadNonceKey(store, kek));
  std::unique_ptr<KmsService> service(new KmsService(std::move(options), store, kek, std::move(ca)));
  service->ek_verifier_ = std::move(ek);
  ASSIGN_OR_RETURN(service->ca_roots_, crypto::Certificate::ParsePemBundle(service->ca_.cert_pem));
  service->nonce_key_ = std::move(nonce_key);
  ASSIGN_OR_RETURN(service->audit_log_, AuditLog::Open(store, kek));
  ASSIGN_OR_RETURN(service->log_key_endorsement_,
                   EndorseLogKey(service->ca_.key_pem, service->audit_log_->verifier_key()));
  KmsService* raw = service.get();
  service->lifecycle_ = std::make_unique<Lifecycle>(
      Lifecycle::Options{.clock = service->options_.clock,
                         .default_grace_seconds = service->options_.account_grace_seconds,
                         .forget_keys = [raw](const std::string& c) { raw->ForgetCustomerKeys(c); }},
      store);
  service->key_versions_ = std::make_unique<KeyVersions>(store);
  return service;
}

void KmsService::ForgetCustomerKeys(const std::string& customer_id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = keys_.begin(); it != keys_.end();) {
    it = it->second.customer_id == customer_id ? keys_.erase(it) : std::next(it);
  }
}

int64_t KmsService::Now() const {
  return options_.clock ? options_.clock() : static_cast<int64_t>(std::time(nullptr));
}

void KmsService::RecordDenial(const std::string& reason, const std::string& subject,
                              const std::string& message) {
  metrics_.CountDenial(reason);
  if (subject == "anonymous") {
    // Unauthenticated callers must not grow the log without bound: per
    // window, the first refusal is recorded and the rest counted.
    const int64_t now = Now();
    const int64_t window = std::max<int64_t>(1, options_.anonymous_denial_window_seconds);
    int64_t suppressed = 0, from = 0;
    {
      std::lock_guard<std::mutex> lock(anon_mu_);
      if (anon_window_start_ >= 0 && now < anon_window_start_ + window) {
        ++anon_suppressed_;
        return;
      }
      suppressed = anon_suppressed_;
      from = anon_window_start_;
      anon_suppressed_ = 0;
      anon_window_start_ = now;
    }
    if (suppressed > 0) {
      (void)store_->AppendAudit({"request.deny.aggregate", "anonymous",
                                 json{{"reason", "unauthenticated"}, {"count", suppressed},
                                      {"from_unix", from}, {"to_unix", now}}});
    }
  }
  // Best effort: a denial must not fail because the audit write failed, but
  // it is counted either way.
  (void)store_->AppendAudit({"request.deny", subject, json{{"reason", reason}, {"message", message}}});
}

Status KmsService::Require(const Caller& caller, Caller::Role role, const std::string& action) {
  if (caller.role == role) return OkStatus();
  const std::string who = caller.role == Caller::Role::kAnonymous
                              ? std::string("anonymous")
                              : std::string(RoleName(caller.role)) + "/" + caller.name;
  if (caller.role == Caller::Role::kAnonymous) {
    RecordDenial("unauthenticated", who, action);
    return UnauthenticatedError(action + " requires a client certificate");
  }
  RecordDenial("wrong_role", who, action);
  return PermissionDeniedError(action + " requires the " + RoleName(role) + " role");
}

Status KmsService::RequireAny(const Caller& caller, std::initializer_list<Caller::Role> roles,
                              const std::string& action) {
  for (Caller::Role r : roles) {
    if (caller.role == r) return OkStatus();
  }
  return Require(caller, *roles.begin(), action);
}

Status KmsService::RequireHost(const Caller& caller, const std::string& host_id,
                               const std::string& action) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kHost, action));
  if (caller.name != host_id) {
    RecordDenial("wrong_host", "host/" + caller.name, action + " for " + host_id);
    return PermissionDeniedError("wrong_host: a host may only act for itself");
  }
  return OkStatus();
}

StatusOr<CustomerKeyInfo> KmsService::CreateCustomerKey(const Caller& caller,
                                                        const CreateKeyRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "create customer key"));
  if (!ValidId(req.customer_id)) return InvalidArgumentError("customer id must match [A-Za-z0-9._-]{1,64}");
  const std::string algorithm = req.algorithm.empty() ? "RSA-3072" : req.algorithm;
  if (algorithm != "RSA-3072" && algorithm != "X25519") {
    return InvalidArgumentError("algorithm must be RSA-3072 or X25519");
  }
  // The next version of the customer's key (kms/key_versions.h); a race
  // with another creation fails on the (customer, version) index.
  int64_t next_version = 1;
  {
    ASSIGN_OR_RETURN(auto existing, store_->ListCustomerKeys(req.customer_id));
    for (const auto& k : existing) next_version = std::max(next_version, k.version + 1);
  }
  ASSIGN_OR_RETURN(GeneratedKey key, Generate(algorithm));
  CustomerKeyRecord rec;
  rec.version = next_version;
  rec.key_id = "k-" + crypto::HexEncode(crypto::RandomBytes(16));
  rec.customer_id = req.customer_id;
  rec.algorithm = algorithm;
  rec.public_key_pem = key.public_pem;
  rec.created_unix = Now();
  ASSIGN_OR_RETURN(rec.cert_pem,
                   internal::CertifyPublicKey(ca_, key.public_pem, rec.key_id, "customer:" + rec.customer_id,
                                              options_.customer_cert_days,
                                              rec.version > 1 ? KeyVersionOu(rec.version) : ""));
  // `sealed.hold` lives until the record is stored: a KEK reload waits for
  // it, so a rotation's re-wrap, which starts after the reload, sees it.
  ASSIGN_OR_RETURN(auto sealed, kek_->WrapForRecord(key.private_pkcs8_der,
                                                    CustomerKeyAad(rec.key_id, rec.customer_id)));
  rec.wrapped_private_key = crypto::Base64Encode(crypto::AsBytes(sealed.wrapped));
  rec.kek_id = sealed.kek_id;
  RETURN_IF_ERROR(store_->PutCustomerKey(
      rec, {"customer_key.create", "customer/" + rec.customer_id,
            json{{"key_id", rec.key_id}, {"algorithm", algorithm}, {"kek_id", rec.kek_id},
                 {"version", rec.version}, {"by", caller.name}, {"by_fingerprint", caller.fingerprint}}}));
  metrics_.CountKeyCreated();
  return Info(rec);
}

StatusOr<CustomerKeyInfo> KmsService::GetCustomerKey(const Caller& caller,
                                                     const std::string& customer_id,
                                                     const std::string& key_id) {
  if (caller.role != Caller::Role::kOperator) {
    RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "read customer key"));
  }
  auto rec = store_->GetCustomerKey(key_id);
  if (!rec.ok() || rec->customer_id != customer_id) {
    return NotFoundError("unknown key " + key_id + " for customer " + customer_id);
  }
  return Info(*rec);
}

namespace {
SigningKeyInfo InfoOf(const SigningKeyRecord& r) {
  return {r.tenant, r.key_id, r.public_key_pem, r.cert_pem, r.created_unix};
}
}  // namespace

StatusOr<SigningKeyInfo> KmsService::RegisterSigningKey(const Caller& caller,
                                                        const SigningKeyRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "register signing key"));
  if (!ValidId(req.tenant)) return InvalidArgumentError("customer id must match [A-Za-z0-9._-]{1,64}");
  auto key = crypto::PublicKey::FromPem(req.public_key_pem);
  if (!key.ok() || key->type() != crypto::KeyType::kEcP256) {
    return InvalidArgumentError("the signing key must be an ECDSA P-256 public key (PEM)");
  }
  // The portal forwards what the customer sent: only the holder of the
  // private key can have signed the proof, so no key that nobody holds (or
  // that someone else holds) is certified. A key the portal made itself is
  // caught by the customer's fetch-cert.
  if (!crypto::VerifySignature(*key, crypto::SignatureDigest::kSha256,
                               ovf::SigningKeyProofMessage(*key), req.proof)
           .ok()) {
    RecordDenial("bad_proof", "portal/" + caller.name, "signing key for " + req.tenant);
    return Denied("bad_proof", "the proof of possession does not verify with the signing key");
  }
  ASSIGN_OR_RETURN(auto keys, store_->ListCustomerKeys(req.tenant));
  if (keys.empty()) {
    return FailedPreconditionError("unknown_customer: customer " + req.tenant + " has no KMS key");
  }
  SigningKeyRecord rec;
  rec.tenant = req.tenant;
  rec.key_id = key->KeyId();
  rec.public_key_pem = key->ToPem();
  rec.created_unix = Now();
  auto existing = store_->GetSigningKey(req.tenant);
  if (existing.ok() && existing->key_id == rec.key_id) return InfoOf(*existing);
  auto signing_key = crypto::PrivateKey::FromPem(ca_.key_pem);
  if (!signing_key.ok()) return InternalError("the KMS CA key does not parse");
  crypto::CertificateAuthority ca{*std::move(signing_key), ca_roots_.front()};
  crypto::IssueOptions issue;
  issue.common_name = req.tenant;
  issue.usage = crypto::CertUsage::kPackageSigning;
  issue.validity_seconds = options_.signing_cert_days * 24 * 3600;
  ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::IssueCertificate(ca, *key, issue));
  rec.cert_pem = cert.ToPem();
  Status put = store_->PutSigningKey(
      rec, {"signing_key.register", "customer/" + rec.tenant,
            json{{"key_id", rec.key_id}, {"cert_sha256", cert.Fingerprint()},
                 {"by", caller.name}, {"by_fingerprint", caller.fingerprint}}});
  if (!put.ok()) {
    if (ReasonPrefix(put) == "signing_key_exists") {
      RecordDenial("signing_key_exists", "portal/" + caller.name, put.message());
      return PermissionDeniedError(put.message());
    }
    return put;
  }
  // Another registration of the same key may have won the race.
  ASSIGN_OR_RETURN(SigningKeyRecord stored, store_->GetSigningKey(req.tenant));
  return InfoOf(stored);
}

StatusOr<SigningKeyInfo> KmsService::GetSigningKey(const Caller& caller, const std::string& tenant) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kPortal, Caller::Role::kOperator}, "read signing key"));
  ASSIGN_OR_RETURN(SigningKeyRecord rec, store_->GetSigningKey(tenant));
  return InfoOf(rec);
}

StatusOr<NonceResponse> KmsService::IssueNonce(const Caller& caller, const std::string& host_id) {
  RETURN_IF_ERROR(RequireHost(caller, host_id, "issue nonce"));
  // Authenticated, not stored (kms/nonce.h): the MAC vouches for the issue
  // time, which then bounds the evidence's age.
  const int64_t now = Now();
  ASSIGN_OR_RETURN(crypto::Bytes raw, MakeNonce(nonce_key_, host_id, now, crypto::RandomBytes(8)));
  NonceResponse out;
  out.nonce = crypto::HexEncode(raw);
  out.expires_unix = now + options_.nonce_lifetime_seconds;
  MaybePurgeNonces(now);
  return out;
}

void KmsService::MaybePurgeNonces(int64_t now) {
  // At most once a minute per process; the used-nonce records are only
  // needed until their nonces expire.
  int64_t last = last_nonce_purge_.load();
  if (now - last < 60 || !last_nonce_purge_.compare_exchange_strong(last, now)) return;
  (void)store_->PurgeNonces(now - kNonceClockSkewSeconds);
}

StatusOr<std::vector<AuditRecord>> KmsService::ReadAudit(const Caller& caller, int64_t after_seq,
                                                         int64_t limit) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "read audit log"));
  if (limit <= 0 || limit > 1000) return InvalidArgumentError("limit must be 1..1000");
  return store_->ReadAudit(after_seq, limit);
}

StatusOr<AuditHead> KmsService::VerifyAudit(const Caller& caller) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "verify audit log"));
  return VerifyStoreAudit(*store_);
}

namespace {
constexpr std::initializer_list<Caller::Role> kAuditReaders = {Caller::Role::kOperator, Caller::Role::kPortal,
                                                                Caller::Role::kHost};
}  // namespace

StatusOr<std::string> KmsService::AuditCheckpoint(const Caller& caller) {
  RETURN_IF_ERROR(RequireAny(caller, kAuditReaders, "read audit checkpoint"));
  return audit_log_->Checkpoint();
}

StatusOr<std::string> KmsService::AuditInclusionProof(const Caller& caller, int64_t seq, int64_t size) {
  RETURN_IF_ERROR(RequireAny(caller, kAuditReaders, "read audit proof"));
  return audit_log_->InclusionProof(seq, size);
}

StatusOr<std::string> KmsService::AuditConsistencyProof(const Caller& caller, int64_t old_size,
                                                        int64_t size) {
  RETURN_IF_ERROR(RequireAny(caller, kAuditReaders, "read audit proof"));
  return audit_log_->ConsistencyProof(old_size, size);
}

// --- Package labels ---------------------------------------------------------

StatusOr<PackageLabel> ParsePackageLabel(std::span<const uint8_t> label) {
  auto bad = [] { return Denied("label_mismatch", "OAEP label is not a vmseal package label"); };
  size_t pos = 0;
  if (label.size() < kPackageLabelPrefix.size() + 1 ||
      crypto::AsStringView(label.subspan(0, kPackageLabelPrefix.size())) != kPackageLabelPrefix ||
      label[kPackageLabelPrefix.size()] != 0) {
    return bad();
  }
  pos = kPackageLabelPrefix.size() + 1;
  auto field = [&](std::string* out) -> bool {
    if (label.size() - pos < 4) return false;
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n = (n << 8) | label[pos + i];
    pos += 4;
    if (label.size() - pos < n) return false;
    out->assign(reinterpret_cast<const char*>(label.data() + pos), n);
    pos += n;
    return true;
  };
  PackageLabel out;
  if (!field(&out.image_id) || !field(&out.tenant)) return bad();
  if (label.size() - pos < 8) return bad();
  for (int i = 0; i < 8; ++i) out.key_version = (out.key_version << 8) | label[pos + i];
  pos += 8;
  if (!field(&out.data_algorithm) || pos != label.size()) return bad();
  return out;
}

std::string ReleaseLabel(const std::string& image_id) { return "vmseal-release:" + image_id; }

// --- Enrollment -------------------------------------------------------------

StatusOr<attest::CredentialChallenge> KmsService::BeginEnrollment(
    const Caller& caller, const std::string& host_id, const attest::EnrollmentRequest& req) {
  RETURN_IF_ERROR(RequireHost(caller, host_id, "enroll"));
  if (Status revoked = lifecycle_->CheckHost(host_id); !revoked.ok()) {
    RecordDenial(ReasonPrefix(revoked), "host/" + host_id, "enrollment: " + revoked.message());
    return revoked;
  }
  if (!ek_verifier_) {
    return FailedPreconditionError("enrollment is disabled: no EK manufacturer CA bundle configured");
  }
  auto ek = ek_verifier_->Verify(req.ek_certificate);
  if (!ek.ok()) {
    std::string reason = std::string(attest::ReasonName(attest::ReasonOf(ek.status())));
    RecordDenial(reason, "host/" + host_id, "enrollment: " + ek.status().message());
    return ek.status();
  }
  auto ak = attest::AkPublic::Parse(req.ak_public);
  if (!ak.ok()) {
    std::string reason = std::string(attest::ReasonName(attest::ReasonOf(ak.status())));
    RecordDenial(reason, "host/" + host_id, "enrollment: " + ak.status().message());
    return ak.status();
  }
  ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::Certificate::FromDer(req.ek_certificate));
  ASSIGN_OR_RETURN(std::string ek_sha256, EkSha256(cert));
  auto pin = store_->GetEkPin(host_id);
  if (!pin.ok() && pin.status().code() != StatusCode::kNotFound) return pin.status();
  if (pin.ok() && *pin != ek_sha256) {
    RecordDenial("ek_mismatch", "host/" + host_id,
                 "enrollment with EK " + ek_sha256 + "; pinned EK is " + *pin);
    return Denied("ek_mismatch", "host " + host_id + " is pinned to another EK (SHA-256 " + *pin +
                                     "); this EK (" + ek_sha256 +
                                     ") needs an operator's approval (vmseal kms host approve-ek)");
  }
  SecretBytes secret = SecretBytes::Random(32);
  ASSIGN_OR_RETURN(attest::CredentialChallenge challenge,
                   attest::MakeCredential(ek->get(), (*ak)->name(), secret));
  const int64_t now = Now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      it = it->second.expires_unix < now ? pending_.erase(it) : std::next(it);
    }
    if (pending_.size() >= 10000) return ResourceExhaustedError("too many pending enrollments");
    pending_[host_id] = {*ak, cert.ToPem(), ek_sha256, std::move(secret),
                         now + options_.enrollment_lifetime_seconds};
  }
  (void)store_->AppendAudit({"host.enroll.begin", "host/" + host_id,
                             json{{"ek_cert_sha256", cert.Fingerprint()},
                                  {"ek_sha256", ek_sha256},
                                  {"ak_name", crypto::HexEncode((*ak)->name())}}});
  return challenge;
}

Status KmsService::CompleteEnrollment(const Caller& caller, const std::string& host_id,
                                      const SecretBytes& secret) {
  RETURN_IF_ERROR(RequireHost(caller, host_id, "activate"));
  PendingEnrollment pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(host_id);
    if (it == pending_.end() || it->second.expires_unix < Now()) {
      if (it != pending_.end()) pending_.erase(it);
      RecordDenial("not_enrolled", "host/" + host_id, "activation without a pending enrollment");
      return Denied("not_enrolled", "no pending enrollment for this host; enroll again");
    }
    pending = std::move(it->second);
    pending_.erase(it);  // one answer per challenge
  }
  Status match = attest::CheckActivation(pending.secret, secret);
  if (!match.ok()) {
    RecordDenial("credential_mismatch", "host/" + host_id, "ActivateCredential answer differs");
    return match;
  }
  HostRecord host;
  auto existing = store_->GetHost(host_id);
  if (existing.ok()) {
    host = *existing;
  } else {
    host.host_id = host_id;
    host.created_unix = Now();
  }
  host.ek_cert_pem = pending.ek_cert_pem;
  host.ak_public = crypto::Base64Encode(pending.ak->marshalled());
  host.enrolled = true;
  Status stored = store_->PutEnrolledHost(
      host, pending.ek_sha256,
      {"host.enroll", "host/" + host_id,
       json{{"ak_name", crypto::HexEncode(pending.ak->name())}, {"ek_sha256", pending.ek_sha256},
            {"by", caller.name}}});
  if (!stored.ok()) {
    // Another EK was pinned between the two steps (a racing enrollment).
    if (ReasonPrefix(stored) == "ek_mismatch") {
      RecordDenial("ek_mismatch", "host/" + host_id, "activation: " + stored.message());
      return PermissionDeniedError(stored.message());
    }
    return stored;
  }
  std::lock_guard<std::mutex> lock(mu_);
  aks_[host_id] = pending.ak;
  return OkStatus();
}

StatusOr<std::shared_ptr<const attest::AkPublic>> KmsService::EnrolledAk(const std::string& host_id,
                                                                         bool reload) {
  if (!reload) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = aks_.find(host_id);
    if (it != aks_.end()) return it->second;
  }
  auto host = store_->GetHost(host_id);
  if (!host.ok() && host.status().code() != StatusCode::kNotFound) return host.status();
  if (!host.ok() || !host->enrolled) return Denied("not_enrolled", "host has no activated AK");
  ASSIGN_OR_RETURN(crypto::Bytes marshalled, crypto::Base64Decode(host->ak_public));
  ASSIGN_OR_RETURN(std::shared_ptr<const attest::AkPublic> ak, attest::AkPublic::Parse(marshalled));
  std::lock_guard<std::mutex> lock(mu_);
  aks_[host_id] = ak;
  return ak;
}

// --- Attestation ------------------------------------------------------------

namespace {
// The nonce reason for the store's answer to a consume; other errors
// unchanged.
Status NonceError(const Status& s) {
  if (s.code() == StatusCode::kFailedPrecondition && s.message().find("used") != std::string::npos) {
    return Denied("nonce_used", "the nonce was already used");
  }
  return s;
}
}  // namespace

StatusOr<int64_t> KmsService::CheckEvidenceNonce(const std::string& host_id,
                                                 const attest::Evidence& ev) {
  // The MAC vouches for the issue time (only this KMS's keyholders made it).
  ASSIGN_OR_RETURN(const int64_t issued, OpenNonce(nonce_key_, host_id, ev.nonce));
  const int64_t now = Now();
  if (issued > now + kNonceClockSkewSeconds) {
    return Denied("nonce_unknown", "the nonce's issue time lies in the future");
  }
  if (issued + options_.nonce_lifetime_seconds < now) return Denied("nonce_expired", "the nonce expired");
  if (used_nonces_.Contains(ev.nonce)) return Denied("nonce_used", "the nonce was already used");
  return issued;
}

Status KmsService::PutVerdictUsingNonce(const Verdict& verdict, const std::vector<AuditEvent>& audits,
                                        const Store::NonceUse& use, std::span<const uint8_t> nonce,
                                        const Store::GrantUse* grant) {
  Status written = NonceError(store_->PutVerdict(verdict, audits, &use, grant));
  if (!written.ok() && ReasonPrefix(written) == "no_grant") written = PermissionDeniedError(written.message());
  if (written.ok() || ReasonPrefix(written) == "nonce_used") used_nonces_.Add(nonce, use.expires_unix, Now());
  return written;
}

std::pair<Verdict, std::optional<attest::VerifiedEvidence>> KmsService::CheckEvidence(
    const std::string& host_id, const attest::AkPublic& ak, const attest::Evidence& ev,
    int64_t nonce_issued_unix) {
  auto verified = attest::VerifyEvidence(ak, ev.nonce, ev.pcr_selection, ev);
  Verdict v;
  v.verdict_id = NewVerdictId();
  v.host_id = host_id;
  v.time_unix = Now();
  v.details = json::object();
  v.details["nonce_issued_unix"] = nonce_issued_unix;
  if (verified.ok()) {
    PcrValues pcrs;
    for (size_t i = 0; i < verified->quote.pcr_indices.size(); ++i) {
      pcrs[verified->quote.pcr_indices[i]] = crypto::HexEncode(verified->quote.pcr_values[i]);
    }
    v.trusted = true;
    v.reason = "ok";
    v.details["pcrs"] = PcrValuesToJson(pcrs);
    v.details["reset_count"] = verified->quote.reset_count;
    v.details["restart_count"] = verified->quote.restart_count;
    v.details["binding_key_name"] = crypto::HexEncode(verified->binding_key.name);
  } else {
    std::string reason(attest::ReasonName(attest::ReasonOf(verified.status())));
    v.trusted = false;
    v.reason = reason == "none" ? "malformed_evidence" : reason;
    v.details["message"] = verified.status().message();
  }
  std::optional<attest::VerifiedEvidence> out;
  if (verified.ok()) out = *std::move(verified);
  return {std::move(v), std::move(out)};
}

std::pair<Verdict, std::optional<attest::VerifiedEvidence>> KmsService::CheckEvidenceWithReload(
    const std::string& host_id, std::shared_ptr<const attest::AkPublic> ak,
    const attest::Evidence& ev, int64_t nonce_issued_unix) {
  auto result = CheckEvidence(host_id, *ak, ev, nonce_issued_unix);
  // The cached AK may be stale when the host re-enrolled through another KMS
  // process sharing the store: on a signature failure, reload it once.
  if (!result.first.trusted && (result.first.reason == "bad_signature" ||
                                result.first.reason == "binding_key_not_certified")) {
    auto fresh = EnrolledAk(host_id, /*reload=*/true);
    if (fresh.ok() && (*fresh)->marshalled() != ak->marshalled()) {
      result = CheckEvidence(host_id, **fresh, ev, nonce_issued_unix);
    }
  }
  return result;
}

namespace {
AuditEvent VerdictAudit(const Verdict& v) {
  return {"attestation.verdict", "host/" + v.host_id,
          json{{"verdict_id", v.verdict_id}, {"trusted", v.trusted}, {"reason", v.reason}}};
}
}  // namespace

StatusOr<VerdictInfo> KmsService::Attest(const Caller& caller, const std::string& host_id,
                                         const attest::Evidence& evidence) {
  RETURN_IF_ERROR(RequireHost(caller, host_id, "attest"));
  auto ak = EnrolledAk(host_id);
  if (!ak.ok()) {
    RecordDenial(ReasonPrefix(ak.status()), "host/" + host_id, "attest: " + ak.status().message());
    return ak.status();
  }
  auto issued = CheckEvidenceNonce(host_id, evidence);
  if (!issued.ok()) {
    RecordDenial(ReasonPrefix(issued.status()), "host/" + host_id, "attest: " + issued.status().message());
    return issued.status();
  }
  auto result = CheckEvidenceWithReload(host_id, *ak, evidence, *issued);
  // The nonce is consumed in the verdict's transaction (exactly once).
  const Store::NonceUse use{crypto::HexEncode(evidence.nonce), host_id,
                            *issued + options_.nonce_lifetime_seconds};
  Status written = PutVerdictUsingNonce(result.first, {VerdictAudit(result.first)}, use, evidence.nonce);
  if (!written.ok()) {
    RecordDenial(ReasonPrefix(written), "host/" + host_id, "attest: " + written.message());
    return written;
  }
  if (!result.first.trusted) metrics_.CountDenial(result.first.reason);
  return InfoOf(result.first);
}

// --- Policy -------------------------------------------------------------------

namespace {
// Bounds the release-read cache; past it the cache starts over.
constexpr size_t kMaxCachedReads = 10000;
}  // namespace

void KmsService::ClearReadsLocked() {
  policies_.clear();
  signed_policies_.clear();
  flavors_.clear();
  hosts_.clear();
  marks_.clear();
  signers_.clear();
  reads_entries_ = 0;
}

template <typename T, typename Key, typename Load>
StatusOr<T> KmsService::Cached(int64_t version, std::map<Key, StatusOr<T>>* map, const Key& key,
                               Load load) {
  if (version == kUncached) return load();
  {
    std::lock_guard<std::mutex> lock(reads_mu_);
    if (reads_version_ != version) {
      // Another version: start over (an older request, still running with
      // an older version, reads the store).
      if (reads_version_ > version) return load();
      reads_version_ = version;
      ClearReadsLocked();
    }
    auto it = map->find(key);
    if (it != map->end()) return it->second;
  }
  StatusOr<T> loaded = load();
  if (!loaded.ok() && loaded.status().code() != StatusCode::kNotFound) return loaded;  // not cached
  std::lock_guard<std::mutex> lock(reads_mu_);
  if (reads_version_ == version) {
    if (reads_entries_ >= kMaxCachedReads) ClearReadsLocked();
    if (map->emplace(key, loaded).second) ++reads_entries_;
  }
  return loaded;
}

StatusOr<AppliedPolicy> KmsService::EffectivePolicy(const std::string& customer_id,
                                                    const std::string& image_id,
                                                    const std::optional<std::string>& descriptor_policy,
                                                    int64_t version) {
  // 1. The newest customer-signed policy document of the image.
  auto signed_policy = Cached(version, &signed_policies_, std::make_pair(customer_id, image_id),
                              [&]() -> StatusOr<AppliedPolicy> {
    ASSIGN_OR_RETURN(PolicyDocumentRecord rec, store_->NewestPolicyDocument(customer_id, image_id));
    // Verified when it was stored; parsed again only for its policy.
    auto doc = ovf::ParsePolicyDocument(rec.document);
    if (!doc.ok()) return DataLossError("stored policy document does not parse: " + doc.status().message());
    return AppliedPolicy{doc->policy, "signed:v" + std::to_string(rec.version)};
  });
  if (signed_policy.ok() || signed_policy.status().code() != StatusCode::kNotFound) return signed_policy;
  // 2. The policy in the signed descriptor (version 0). A malformed one
  // fails closed rather than falling through to a weaker policy.
  if (descriptor_policy) {
    // Parsed and validated once per text (by its SHA-256): the same text
    // always gives the same answer.
    const std::string digest = crypto::HexEncode(crypto::Sha256(*descriptor_policy));
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = descriptor_policies_.find(digest);
      if (it != descriptor_policies_.end()) {
        if (!it->second.ok()) return it->second.status();
        return AppliedPolicy{*it->second, "descriptor"};
      }
    }
    StatusOr<json> checked = [&]() -> StatusOr<json> {
      auto parsed = ParseJsonObject(*descriptor_policy, "the descriptor's release policy");
      if (!parsed.ok()) return Denied("no_policy", parsed.status().message());
      Status valid = ValidatePolicy(*parsed);
      if (!valid.ok()) return Denied("no_policy", "the descriptor's release policy: " + valid.message());
      return parsed;
    }();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (descriptor_policies_.size() >= kMaxCachedKeys) descriptor_policies_.clear();
      descriptor_policies_.emplace(digest, checked);
    }
    if (!checked.ok()) return checked.status();
    return AppliedPolicy{*std::move(checked), "descriptor"};
  }
  // 3. The operator's: this customer's (image or customer-wide), else "_default".
  auto p = Cached(version, &policies_, std::make_pair(customer_id, image_id), [&]() -> StatusOr<PolicyRecord> {
    auto own = store_->GetPolicy(customer_id, image_id);
    if (own.ok() || own.status().code() != StatusCode::kNotFound) return own;
    return store_->GetPolicy("_default", image_id);
  });
  if (p.ok()) {
    return AppliedPolicy{p->policy, p->customer_id == "_default"
                                        ? std::string("_default")
                                        : "operator:" + p->customer_id + "/" + p->image_id};
  }
  if (p.status().code() != StatusCode::kNotFound) return p.status();
  return Denied("no_policy", "no release policy for customer " + customer_id + " and no _default");
}

StatusOr<HostRecord> KmsService::HostOf(const std::string& host_id, int64_t version) {
  return Cached(version, &hosts_, host_id, [&] { return store_->GetHost(host_id); });
}

StatusOr<std::vector<Verdict>> KmsService::FailuresOf(const std::string& host_id, int64_t since,
                                                      int64_t history_version) {
  auto load = [&] { return store_->ListFailedVerdicts(host_id, since); };
  if (history_version == kUncached) return load();
  const auto key = std::make_pair(host_id, since);
  {
    std::lock_guard<std::mutex> lock(reads_mu_);
    if (history_version_ != history_version) {
      if (history_version_ > history_version) return load();  // an older request
      history_version_ = history_version;
      failures_.clear();
    }
    auto it = failures_.find(key);
    if (it != failures_.end()) return it->second;
  }
  StatusOr<std::vector<Verdict>> loaded = load();
  if (!loaded.ok()) return loaded;  // not cached
  std::lock_guard<std::mutex> lock(reads_mu_);
  if (history_version_ == history_version) {
    if (failures_.size() >= kMaxCachedReads) failures_.clear();
    failures_.emplace(key, loaded);
  }
  return loaded;
}

StatusOr<PolicyDecision> KmsService::Decide(const json& policy, PolicyFacts facts,
                                            const std::string& host_id, int64_t version,
                                            int64_t history_version) {
  std::map<std::string, Flavor> flavors;
  if (policy.is_object() && policy.contains("flavors") && policy["flavors"].is_object()) {
    for (const auto& [mode, names] : policy["flavors"].items()) {
      if (!names.is_array()) continue;
      for (const auto& n : names) {
        if (!n.is_string()) continue;
        const std::string name = n.get<std::string>();
        auto f = Cached(version, &flavors_, name, [&] { return store_->GetFlavor(name); });
        if (f.ok()) {
          flavors[f->name] = *f;
        } else if (f.status().code() != StatusCode::kNotFound) {
          return f.status();
        }
      }
    }
  }
  if (policy.is_object() && policy.contains("history") && policy["history"].is_object() &&
      policy["history"].contains("no_failures_within_seconds") &&
      policy["history"]["no_failures_within_seconds"].is_number_integer()) {
    const int64_t window = policy["history"]["no_failures_within_seconds"].get<int64_t>();
    const int64_t since = facts.now_unix - window;
    ASSIGN_OR_RETURN(facts.history, FailuresOf(host_id, since, history_version));
  }
  return EvaluatePolicy(policy, flavors, facts);
}

// --- Release ------------------------------------------------------------------

StatusOr<KmsService::CachedKey> KmsService::CustomerPrivateKey(const std::string& customer_id,
                                                     const std::string& key_id) {
  const std::string cache_key = customer_id + "/" + key_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = keys_.find(cache_key);
    if (it != keys_.end()) return it->second;
  }
  std::optional<CustomerKeyRecord> rec;
  if (key_id.rfind("sha256:", 0) == 0) {
    ASSIGN_OR_RETURN(auto keys, store_->ListCustomerKeys(customer_id));
    // Hashing the PEM's DER, not parsing each key: an unknown key id costs
    // a few microseconds per key of the customer.
    for (auto& k : keys) {
      auto id = crypto::KeyIdOfPem(k.public_key_pem);
      if (id.ok() && "sha256:" + *id == key_id) {
        rec = std::move(k);
        break;
      }
    }
  } else {
    auto k = store_->GetCustomerKey(key_id);
    if (k.ok() && k->customer_id == customer_id) rec = *std::move(k);
    if (!k.ok() && k.status().code() != StatusCode::kNotFound) return k.status();
  }
  if (!rec) return Denied("unknown_key", "customer " + customer_id + " has no key " + key_id);
  // A key wrapped under another KEK (a KMS started with the wrong kek_file
  // or token) fails here by name rather than as a bare decryption failure.
  // During a KEK rotation (kms/kek_rotation.h) the ring holds the previous
  // KEK too; a record read just before the ring dropped its KEK is read
  // again (it was re-wrapped before the drop).
  if (!kek_->Holds(rec->kek_id)) {
    auto again = store_->GetCustomerKey(rec->key_id);
    if (again.ok() && again->customer_id == rec->customer_id) rec = *std::move(again);
  }
  if (!kek_->Holds(rec->kek_id)) {
    return FailedPreconditionError("kek_mismatch: key " + rec->key_id + " is wrapped under KEK " +
                                   rec->kek_id + " but this KMS uses KEK " + kek_->id());
  }
  ASSIGN_OR_RETURN(crypto::Bytes blob, crypto::Base64Decode(rec->wrapped_private_key));
  ASSIGN_OR_RETURN(SecretBytes der,
                   kek_->UnwrapUnder(rec->kek_id, crypto::AsStringView(blob),
                                     CustomerKeyAad(rec->key_id, rec->customer_id)));
  ASSIGN_OR_RETURN(crypto::PrivateKey key, PrivateKeyFromDer(der));
  CachedKey cached{rec->key_id, rec->customer_id,
                   std::make_shared<const crypto::PrivateKey>(std::move(key))};
  std::lock_guard<std::mutex> lock(mu_);
  // Bounded: key records never change once written, so entries only need
  // evicting for memory (the parsed keys live in OpenSSL memory only).
  if (keys_.size() >= kMaxCachedKeys && keys_.find(cache_key) == keys_.end()) keys_.erase(keys_.begin());
  keys_[cache_key] = cached;
  return cached;
}

// What VerifyTenantSigned proved of one package's texts: signed by the
// registered key `registered_key_id` (whose certificate had digest
// `registered_cert_sha256`), at `verified_unix`.
struct KmsService::VerifiedTexts {
  std::string registered_key_id;
  std::string registered_cert_sha256;
  int64_t verified_unix = 0;
  ovf::SignedDescriptor descriptor;
};

namespace {
// A verified package is verified again after this long, so that a signer
// certificate that expired or a CA that changed is noticed within it.
constexpr int64_t kVerifiedTextsSeconds = 60;
constexpr size_t kMaxVerifiedTexts = 4096;

// SHA-256 of the tenant and the texts, each length-prefixed (64-bit).
std::string TextsDigest(const std::string& tenant, const ovf::SignedPackageTexts& t) {
  // Streamed (the same bytes as hashing their concatenation; no copy).
  crypto::Sha256Hasher h;
  for (const std::string* s : {&tenant, &t.descriptor_name, &t.descriptor, &t.manifest, &t.certificate}) {
    const uint64_t n = s->size();
    h.Update(std::string_view(reinterpret_cast<const char*>(&n), sizeof(n)));
    h.Update(*s);
  }
  return crypto::HexEncode(h.Finish());
}
}  // namespace

StatusOr<ovf::SignedDescriptor> KmsService::VerifyTenantSigned(const std::string& tenant,
                                                               const ovf::SignedPackageTexts& texts,
                                                               std::string* signer_key_id,
                                                               int64_t version) {
  // The registered key is read for every request, through the release-read
  // cache of the request's config version (a registration in any process
  // on the store increments it, so a new key takes effect on the next
  // request); the texts' verification is remembered for that key: the same
  // bytes under the same key verify the same way.
  auto signer_entry = Cached(version, &signers_, tenant, [&]() -> StatusOr<RegisteredSigner> {
    ASSIGN_OR_RETURN(SigningKeyRecord rec, store_->GetSigningKey(tenant));
    std::string cert_sha256 = crypto::HexEncode(crypto::Sha256(rec.cert_pem));
    return RegisteredSigner{std::move(rec), std::move(cert_sha256)};
  });
  if (!signer_entry.ok() && signer_entry.status().code() != StatusCode::kNotFound) {
    return signer_entry.status();
  }
  const SigningKeyRecord* registered = signer_entry.ok() ? &signer_entry->record : nullptr;
  const std::string digest = TextsDigest(tenant, texts);
  const std::string cert_digest = registered != nullptr ? signer_entry->cert_sha256 : std::string();
  const int64_t now = Now();
  if (registered != nullptr && options_.remember_verified_packages) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = verified_texts_.find(digest);
    if (it != verified_texts_.end() && it->second->registered_key_id == registered->key_id &&
        it->second->registered_cert_sha256 == cert_digest &&
        now - it->second->verified_unix < kVerifiedTextsSeconds && now >= it->second->verified_unix) {
      *signer_key_id = registered->key_id;
      return it->second->descriptor;
    }
  }
  // A tenant with no registered signing key has nothing the texts could be
  // signed by: refused before they are parsed (an unsigned package keeps
  // its own reason, below).
  if (registered == nullptr && !texts.certificate.empty()) {
    return Denied("signer_mismatch", "tenant " + tenant + " has no registered signing key");
  }
  // Texts that were never what was signed are refused for a SHA-256, before
  // any X.509, signature or XML work (a host altering a package it holds).
  if (Status cheap = precheck_.Check(texts); !cheap.ok()) return PermissionDeniedError(cheap.message());
  // A package signed by another key than the registered one is refused
  // from its .cert alone, before the signature, manifest and descriptor are
  // checked: foreign-signed bytes cost a certificate parse, not a
  // verification (the full checks below still decide everything else).
  if (registered != nullptr && texts.certificate.size() <= 64 * 1024) {
    auto sig = ovf::ParsePackageCertificate(texts.certificate);
    if (sig.ok()) {
      auto signer = sig->signer.GetPublicKey();
      if (signer.ok() && signer->KeyId() != registered->key_id) {
        return Denied("signer_mismatch", "signed by key " + signer->KeyId() + ", tenant '" + tenant +
                                             "' registered signing key " + registered->key_id);
      }
    }
  }
  auto verified = ovf::VerifySignedDescriptor(texts);
  if (!verified.ok()) {
    const std::string reason = ReasonPrefix(verified.status());
    if (reason == "unsigned_package" || reason == "bad_signature") {
      return PermissionDeniedError(verified.status().message());
    }
    return InvalidArgumentError("malformed_package: " + verified.status().message());
  }
  if (registered == nullptr) {
    return Denied("signer_mismatch", "tenant " + tenant + " has no registered signing key");
  }
  Status signer = ovf::VerifyRegisteredSigner(verified->signature, registered->cert_pem, ca_roots_,
                                              tenant);
  if (!signer.ok()) return PermissionDeniedError(signer.message());
  *signer_key_id = registered->key_id;
  if (auto signer_key = verified->signature.signer.GetPublicKey(); signer_key.ok()) {
    precheck_.RememberVerified(texts, *signer_key);
  }
  auto entry = std::make_shared<const VerifiedTexts>(
      VerifiedTexts{registered->key_id, cert_digest, now, *verified});
  if (!options_.remember_verified_packages) return verified;
  std::lock_guard<std::mutex> lock(mu_);
  if (verified_texts_.size() >= kMaxVerifiedTexts) verified_texts_.clear();
  verified_texts_[digest] = std::move(entry);
  return verified;
}

Status KmsService::CheckSignedPackage(const ReleaseRequest& req, std::string* signer_key_id,
                                      std::optional<std::string>* release_policy, int64_t version) {
  std::string signer;
  auto verified = VerifyTenantSigned(
      req.tenant, {req.descriptor_name, req.descriptor, req.manifest, req.package_cert}, &signer, version);
  if (!verified.ok()) return verified.status();
  // The key the host asks to open, under the identity the label binds,
  // must be the one the customer signed.
  const ovf::EncryptionTag& tag = verified->tag;
  const ovf::WrappedKey& key = verified->wrapped_key;
  std::vector<std::string> differ;
  if (tag.image_id != req.image_id) differ.push_back("image_id");
  if (tag.tenant != req.tenant) differ.push_back("tenant");
  if (tag.key_id != req.key_id) differ.push_back("key_id");
  if (tag.key_version != req.key_version) differ.push_back("key_version");
  if (key.algorithm != req.wrap_algorithm) differ.push_back("wrap_algorithm");
  if (key.oaep_label != req.oaep_label) differ.push_back("label");
  if (key.ciphertext != req.wrapped_key) differ.push_back("wrapped_key");
  if (!differ.empty()) {
    std::string names;
    for (const std::string& d : differ) names += (names.empty() ? "" : ", ") + d;
    return Denied("key_not_signed", "the request's " + names +
                                        " differ from the signed descriptor's");
  }
  *signer_key_id = signer;
  *release_policy = verified->release_policy;
  return OkStatus();
}

StatusOr<KmsService::RegisteredPolicy> KmsService::RegisteredDescriptor(
    const std::string& tenant, const std::string& image_id) {
  const auto key = std::make_pair(tenant, image_id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = descriptors_.find(key);
    if (it != descriptors_.end()) return it->second;
  }
  ASSIGN_OR_RETURN(ImageRecord image, store_->GetImage(tenant, image_id));
  if (image.descriptor_sha256.empty()) return RegisteredPolicy{};
  RegisteredPolicy out{true, image.release_policy};
  std::lock_guard<std::mutex> lock(mu_);
  if (descriptors_.size() >= kMaxCachedKeys) descriptors_.erase(descriptors_.begin());
  descriptors_[key] = out;
  return out;
}

StatusOr<ReleaseResponse> KmsService::Release(const Caller& caller, const std::string& host_id,
                                              const ReleaseRequest& req) {
  RETURN_IF_ERROR(RequireHost(caller, host_id, "release"));
  const auto start = std::chrono::steady_clock::now();
  json audit = {{"host_id", host_id}, {"job_id", req.job_id}, {"attempt", req.attempt},
                {"image_id", req.image_id},
                {"tenant", req.tenant},
                {"key_id", req.key_id}, {"key_version", req.key_version}};
  // The verdict is written with the decision's audit record, in one
  // transaction (one commit per release besides the nonce's).
  std::optional<Verdict> verdict_to_record;
  // Expiry set once the nonce is checked (before any verdict to record).
  Store::NonceUse nonce_use{crypto::HexEncode(req.evidence.nonce), host_id, 0};
  auto finish = [&](const Status& s) -> Status {
    std::string reason = ReasonPrefix(s);
    if (reason.empty()) reason = s.code() == StatusCode::kInvalidArgument ? "malformed_request" : "internal";
    json d = audit;
    d["reason"] = reason;
    d["message"] = s.message();
    AuditEvent deny{"release.deny", "host/" + host_id, d};
    Status result = s;
    Status written = verdict_to_record
                         ? PutVerdictUsingNonce(*verdict_to_record, {VerdictAudit(*verdict_to_record), deny},
                                                nonce_use, req.evidence.nonce)
                         : store_->AppendAudit(deny);
    if (!written.ok() && verdict_to_record) {
      // The nonce was consumed meanwhile (a replay racing this request):
      // that is the answer, and its own denial record.
      if (!ReasonPrefix(written).empty()) {
        result = written;
        reason = ReasonPrefix(written);
        d["reason"] = reason;
        d["message"] = written.message();
        (void)store_->AppendAudit({"release.deny", "host/" + host_id, d});
      }
    }
    if (CountsAgainstHost(result, reason)) precheck_.RecordFailure(host_id);
    metrics_.CountDenial(reason);
    metrics_.ObserveRelease(
        reason, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return result;
  };

  if (!ValidIdentity(req.image_id) || !ValidIdentity(req.tenant)) {
    return finish(InvalidArgumentError("image_id and tenant must match [A-Za-z0-9._:@-]{1,128}"));
  }
  if (req.wrap_algorithm != kRsaOaepUri && req.wrap_algorithm != ovf::kX25519WrapUri) {
    return finish(InvalidArgumentError("wrap_algorithm must be " + std::string(kRsaOaepUri) +
                                       " or " + std::string(ovf::kX25519WrapUri)));
  }
  if (req.key_id.empty() || req.key_id.size() > 128) return finish(InvalidArgumentError("bad key_id"));
  if (!ValidId(req.job_id)) return finish(InvalidArgumentError("job_id must match [A-Za-z0-9._-]{1,64}"));
  // A host whose releases were refused too often (for its package texts,
  // evidence, key or policy) is refused before any more are checked
  // (package_precheck.h).
  if (Status host_ok = precheck_.CheckHost(host_id); !host_ok.ok()) return finish(host_ok);
  // One read of the store's config and history versions; lifecycle marks,
  // policy, signing key, host and flavors come from the cache when it holds
  // that config version, failed verdicts when it holds that history version
  // (every change to them increments its version, in any process on the
  // store). Keys whose grace is over are destroyed first: that write
  // increments the config version.
  if (Status destroyed = lifecycle_->DestroyDue(); !destroyed.ok()) return finish(destroyed);
  auto versions = store_->ReadReleaseVersions();
  if (!versions.ok()) return finish(versions.status());
  const std::optional<int64_t> version = versions->config;
  // Revoked, disabled, closed (kms/lifecycle.h): before any signature,
  // evidence or key is looked at. The label is checked below to name this
  // tenant and image.
  if (Status life = lifecycle_->Check(req.tenant, req.image_id, host_id,
                                      [&](const std::string& kind, const std::string& subject) {
                                        return Cached(*version, &marks_, std::make_pair(kind, subject),
                                                      [&] { return store_->GetLifecycle(kind, subject); });
                                      });
      !life.ok()) {
    return finish(life);
  }

  // The customer's signature first: nothing unsigned, foreign-signed or
  // other than what was signed goes further (no evidence check, no key
  // lookup, no unwrap).
  std::string signer_key_id;
  std::optional<std::string> descriptor_policy;
  if (options_.require_package_signature || !req.package_cert.empty()) {
    Status signed_ok = CheckSignedPackage(req, &signer_key_id, &descriptor_policy, *version);
    if (!signed_ok.ok()) return finish(signed_ok);
    audit["signer_key_id"] = signer_key_id;
  }

  auto ak = EnrolledAk(host_id);
  if (!ak.ok()) return finish(ak.status());
  auto issued = CheckEvidenceNonce(host_id, req.evidence);
  if (!issued.ok()) return finish(issued.status());
  nonce_use.expires_unix = *issued + options_.nonce_lifetime_seconds;
  auto verdict = CheckEvidenceWithReload(host_id, *ak, req.evidence, *issued);
  verdict_to_record = verdict.first;
  audit["verdict_id"] = verdict.first.verdict_id;
  if (!verdict.first.trusted) {
    Status s = verdict.first.reason == "malformed_evidence"
                   ? InvalidArgumentError("malformed_evidence: evidence does not parse")
                   : Denied(verdict.first.reason, "evidence failed verification");
    return finish(s);
  }
  const attest::VerifiedEvidence& ev = *verdict.second;

  // The label must name this image, tenant and key version: from here on
  // the image is named only by what the label binds (the grant, the policy,
  // the audit record), so no other identity can select another policy.
  auto label = ParsePackageLabel(req.oaep_label);
  if (!label.ok()) return finish(label.status());
  if (label->image_id != req.image_id || label->tenant != req.tenant ||
      label->key_version != req.key_version) {
    return finish(Denied("label_mismatch", "the OAEP label names another image, tenant or key version"));
  }
  const std::string& image_id = label->image_id;
  const std::string& tenant = label->tenant;
  // The portal's grant for this job: this host, this image of this tenant,
  // unused and unexpired. Checked here, used up with the grant record below.
  const int64_t grant_now = std::max<int64_t>(Now(), 1);
  {
    auto grant = store_->GetGrant(req.job_id);
    if (!grant.ok() && grant.status().code() != StatusCode::kNotFound) return finish(grant.status());
    if (!grant.ok()) return finish(Denied("no_grant", "the portal registered no grant for job " + req.job_id));
    if (grant->attempt > req.attempt) {
      // The job was placed again: this attempt's host is fenced off.
      return finish(Denied("stale_attempt", "job " + req.job_id + " was placed again (attempt " +
                                                std::to_string(grant->attempt) + "); attempt " +
                                                std::to_string(req.attempt) + " is over"));
    }
    if (grant->attempt != req.attempt || grant->host_id != host_id || grant->image_id != image_id ||
        grant->tenant != tenant) {
      return finish(Denied("no_grant", "the grant of job " + req.job_id +
                                           " is for another attempt, host, image or tenant"));
    }
    if (grant->used_unix != 0) return finish(Denied("no_grant", "the grant of job " + req.job_id + " was used"));
    if (grant->expires_unix < grant_now) {
      return finish(Denied("no_grant", "the grant of job " + req.job_id + " expired"));
    }
  }
  const Store::GrantUse grant_use{req.job_id, image_id, tenant, host_id, grant_now, req.attempt};
  // Which key; then the policy for this customer and image.
  auto key = CustomerPrivateKey(tenant, req.key_id);
  if (!key.ok()) return finish(key.status());
  audit["kms_key_id"] = key->key_id;
  // The tag's keyVersion names this key's version, not retired (kms/key_versions.h).
  if (Status kv = key_versions_->CheckRelease(tenant, key->key_id, req.key_version, *version); !kv.ok()) {
    return finish(kv);
  }
  auto policy = EffectivePolicy(tenant, image_id, descriptor_policy, *version);
  if (!policy.ok()) return finish(policy.status());
  audit["policy"] = policy->source;
  PolicyFacts facts;
  for (size_t i = 0; i < ev.quote.pcr_indices.size(); ++i) {
    facts.pcrs[ev.quote.pcr_indices[i]] = crypto::HexEncode(ev.quote.pcr_values[i]);
  }
  auto host = HostOf(host_id, *version);
  if (!host.ok()) return finish(host.status());
  facts.host_tags = host->tags;
  facts.now_unix = Now();
  facts.evidence_age_seconds = facts.now_unix - *issued;
  facts.key_version = req.key_version;
  auto decision = Decide(policy->policy, facts, host_id, *version, versions->history);
  if (!decision.ok()) return finish(decision.status());
  if (!decision->allowed) return finish(Denied(decision->reason, decision->message));

  // The label is the OAEP label of rsa-oaep and the associated data of the
  // X25519 wrap (docs/format/package.md §3.3, §5).
  const bool x25519 = req.wrap_algorithm == ovf::kX25519WrapUri;
  if (x25519 && key->key->type() != crypto::KeyType::kX25519) {
    return finish(Denied("unknown_key", "key " + key->key_id + " is not an X25519 key; the package wraps to X25519"));
  }
  if (!x25519 && key->key->type() != crypto::KeyType::kRsa3072 && key->key->type() != crypto::KeyType::kRsa2048) {
    return finish(Denied("unknown_key", "key " + key->key_id + " is not an RSA key; the package wraps to RSA"));
  }
  auto data_key = x25519 ? crypto::X25519Unwrap(*key->key, req.wrapped_key, crypto::AsStringView(req.oaep_label))
                         : crypto::RsaOaepUnwrap(*key->key, req.wrapped_key, crypto::AsStringView(req.oaep_label));
  if (!data_key.ok()) {
    return finish(Denied("label_mismatch", "the wrapped key does not open under this key and label"));
  }
  // The signed descriptor must carry the release policy of the one the
  // image was registered with, so that the policy placement and the grant
  // were checked against is the policy enforced here (another descriptor the
  // customer once signed for the same image id cannot be swapped in).
  if (!req.package_cert.empty()) {
    auto registered = RegisteredDescriptor(tenant, image_id);
    if (!registered.ok() && registered.status().code() != StatusCode::kNotFound) {
      return finish(registered.status());
    }
    if (!registered.ok() || !registered->has_descriptor) {
      return finish(Denied("descriptor_mismatch", "image " + image_id + " of tenant " + tenant +
                                                      " was not registered with its signed descriptor"));
    }
    if (registered->release_policy != descriptor_policy) {
      return finish(Denied("descriptor_mismatch", "the signed descriptor's release policy is not the "
                                                  "one image " + image_id + " was registered with"));
    }
  }

  auto binding = ev.binding_key.Key();
  if (!binding.ok()) return finish(binding.status());
  const std::string ad = ReleaseLabel(image_id);
  auto rewrapped = crypto::RsaOaepWrap(*binding, *data_key, ad, crypto::OaepLabel::kTpm);
  if (!rewrapped.ok()) return finish(rewrapped.status());

  ReleaseResponse out;
  out.rewrapped_key = *std::move(rewrapped);
  out.label.assign(ad.begin(), ad.end());
  out.label.push_back(0);
  out.signer_key_id = signer_key_id;
  audit["binding_key_name"] = crypto::HexEncode(ev.binding_key.name);
  audit["by_fingerprint"] = caller.fingerprint;
  // One transaction: the nonce consumed exactly once, the verdict, the grant
  // record. No grant without all three.
  Status logged = PutVerdictUsingNonce(
      *verdict_to_record, {VerdictAudit(*verdict_to_record), {"release.grant", "host/" + host_id, audit}},
      nonce_use, req.evidence.nonce, &grant_use);
  if (!logged.ok()) {
    verdict_to_record.reset();
    return finish(logged);
  }
  // The next nonce rides on the answer (a MAC, nothing stored): the host
  // needs no request of its own for its next attestation or release.
  if (auto next = IssueNonce(caller, host_id); next.ok()) out.next_nonce = *std::move(next);
  metrics_.CountRelease();
  metrics_.ObserveRelease(
      "ok", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return out;
}

// --- Hosts, verdicts, placement ---------------------------------------------

StatusOr<std::vector<HostSummary>> KmsService::ListHosts(const Caller& caller) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kOperator, Caller::Role::kPortal}, "list hosts"));
  ASSIGN_OR_RETURN(auto hosts, store_->ListHosts());
  std::vector<HostSummary> out;
  for (const auto& h : hosts) {
    HostSummary s{h.host_id, h.enrolled, h.tags, std::nullopt};
    auto latest = store_->LatestVerdict(h.host_id);
    if (latest.ok()) {
      s.latest = InfoOf(*latest);
    } else if (latest.status().code() != StatusCode::kNotFound) {
      return latest.status();
    }
    out.push_back(std::move(s));
  }
  return out;
}

StatusOr<std::vector<VerdictInfo>> KmsService::ListVerdicts(const Caller& caller,
                                                            const std::string& host_id,
                                                            int64_t since_unix) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kOperator, Caller::Role::kPortal}, "list verdicts"));
  ASSIGN_OR_RETURN(auto verdicts, store_->ListVerdicts(host_id, since_unix));
  std::vector<VerdictInfo> out;
  for (const auto& v : verdicts) out.push_back(InfoOf(v));
  return out;
}

Status KmsService::SetHostTags(const Caller& caller, const std::string& host_id,
                               const std::vector<std::string>& tags) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "set host tags"));
  if (tags.size() > 64) return InvalidArgumentError("at most 64 tags");
  for (const auto& t : tags) {
    if (t.empty() || t.size() > 128) return InvalidArgumentError("tags must be 1..128 characters");
  }
  return store_->SetHostTags(host_id, tags,
                             {"host.tags", "host/" + host_id, json{{"tags", tags}, {"by", caller.name}}});
}

StatusOr<AppliedPolicy> KmsService::PlacementPolicy(const std::string& tenant,
                                                    const std::string& image_id, bool* registered) {
  auto image = store_->GetImage(tenant, image_id);
  if (!image.ok() && image.status().code() != StatusCode::kNotFound) return image.status();
  *registered = image.ok();
  // The descriptor's policy only from a descriptor the KMS verified as the
  // customer's at registration, never from the portal's word.
  std::optional<std::string> descriptor_policy;
  if (image.ok() && !image->descriptor_sha256.empty()) descriptor_policy = image->release_policy;
  return EffectivePolicy(tenant, image_id, descriptor_policy);
}

StatusOr<std::string> KmsService::OnTrustLoss(const std::string& tenant, const std::string& image_id) {
  bool registered = false;
  auto policy = PlacementPolicy(tenant, image_id, &registered);
  if (!registered) return NotFoundError("unknown_image: image " + image_id + " of tenant " + tenant);
  if (!policy.ok()) return std::string("report");
  return policy->policy.value("on_trust_loss", std::string("report"));
}

StatusOr<PlacementResult> KmsService::EvaluateHost(const StatusOr<AppliedPolicy>& policy,
                                                   const std::string& host_id, int64_t now) {
  PlacementResult r{host_id, false, ""};
  auto host = store_->GetHost(host_id);
  if (!host.ok() && host.status().code() != StatusCode::kNotFound) return host.status();
  if (!policy.ok()) {
    r.reason = "no_policy";
    return r;
  }
  if (Status revoked = lifecycle_->CheckHost(host_id); !revoked.ok()) {
    if (ReasonPrefix(revoked).empty()) return revoked;
    r.reason = ReasonPrefix(revoked);
    return r;
  }
  if (!host.ok() || !host->enrolled) {
    r.reason = "not_enrolled";
    return r;
  }
  auto latest = store_->LatestVerdict(host_id);
  if (!latest.ok() && latest.status().code() != StatusCode::kNotFound) return latest.status();
  if (!latest.ok()) {
    r.reason = "no_verdict";
  } else if (!latest->trusted) {
    r.reason = latest->reason;
  } else {
    PolicyFacts facts;
    auto pcrs = PcrValuesFromJson(latest->details.value("pcrs", json()));
    if (pcrs.ok()) facts.pcrs = *pcrs;
    facts.host_tags = host->tags;
    facts.now_unix = now;
    facts.evidence_age_seconds = now - latest->time_unix;
    ASSIGN_OR_RETURN(PolicyDecision d, Decide(policy->policy, facts, host_id));
    r.eligible = d.allowed;
    r.reason = d.reason;
  }
  return r;
}

StatusOr<std::vector<PlacementResult>> KmsService::PlacementCheck(const Caller& caller,
                                                                  const PlacementRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "placement check"));
  if (!ValidIdentity(req.customer_id) || !ValidIdentity(req.image_id)) {
    return InvalidArgumentError("customer_id and image_id must match [A-Za-z0-9._:@-]{1,128}");
  }
  if (req.host_ids.size() > 1000) return InvalidArgumentError("at most 1000 hosts per check");
  bool registered = false;
  auto policy = PlacementPolicy(req.customer_id, req.image_id, &registered);
  if (!policy.ok() && ReasonPrefix(policy.status()) != "no_policy") return policy.status();
  const int64_t now = Now();
  std::vector<PlacementResult> out;
  // A revoked image or a disabled or closed customer is placed nowhere.
  Status life = lifecycle_->Check(req.customer_id, req.image_id, "");
  if (!life.ok() && ReasonPrefix(life).empty()) return life;
  for (const auto& id : req.host_ids) {
    if (!life.ok()) {
      out.push_back({id, false, ReasonPrefix(life)});
      continue;
    }
    ASSIGN_OR_RETURN(PlacementResult r, EvaluateHost(policy, id, now));
    out.push_back(std::move(r));
  }
  return out;
}

// --- Flavors and policies -------------------------------------------------------

Status KmsService::PutFlavor(const Caller& caller, const Flavor& flavor) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "put flavor"));
  if (!ValidId(flavor.name)) return InvalidArgumentError("flavor name must match [A-Za-z0-9._-]{1,64}");
  RETURN_IF_ERROR(ValidateFlavorPcrs(flavor.pcrs));
  ASSIGN_OR_RETURN(PcrValues normalized, PcrValuesFromJson(flavor.pcrs));
  return store_->PutFlavor({flavor.name, PcrValuesToJson(normalized)},
                           {"flavor.put", "flavor/" + flavor.name,
                            json{{"pcrs", PcrValuesToJson(normalized)}, {"by", caller.name}}});
}

StatusOr<std::vector<Flavor>> KmsService::ListFlavors(const Caller& caller) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kOperator, Caller::Role::kPortal}, "list flavors"));
  return store_->ListFlavors();
}

StatusOr<Flavor> KmsService::FlavorFromHost(const Caller& caller, const std::string& name,
                                            const std::string& host_id) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "flavor from host"));
  ASSIGN_OR_RETURN(auto verdicts, store_->ListVerdicts(host_id, 0));
  for (auto it = verdicts.rbegin(); it != verdicts.rend(); ++it) {
    if (!it->trusted) continue;
    Flavor f{name, it->details.value("pcrs", json())};
    RETURN_IF_ERROR(PutFlavor(caller, f));
    return store_->GetFlavor(name);
  }
  return FailedPreconditionError("host " + host_id + " has no trusted verdict to take PCR values from");
}

Status KmsService::PutPolicy(const Caller& caller, const PolicyRecord& policy) {
  if (caller.role == Caller::Role::kPortal) {
    // A customer's policy is the customer's (in its signed descriptor or a
    // signed policy document, PutSignedPolicy); "_default" and customer-wide
    // policies are the operator's. The portal writes none of them.
    RecordDenial("policy_forbidden", "portal/" + caller.name,
                 "put policy " + policy.customer_id + "/" + policy.image_id);
    return Denied("policy_forbidden",
                  "the portal cannot write release policies: the customer signs an image's "
                  "policy, the operator writes _default and customer-wide ones");
  }
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "put policy"));
  if (policy.customer_id != "_default" && !ValidIdentity(policy.customer_id)) {
    return InvalidArgumentError("bad customer id");
  }
  if (!policy.image_id.empty() && !ValidIdentity(policy.image_id)) return InvalidArgumentError("bad image id");
  RETURN_IF_ERROR(ValidatePolicy(policy.policy));
  return store_->PutPolicy(policy, {"policy.put", "customer/" + policy.customer_id,
                                    json{{"image_id", policy.image_id},
                                         {"policy", policy.policy},
                                         {"by", caller.name}}});
}

StatusOr<PolicyDocumentRecord> KmsService::PutSignedPolicy(const Caller& caller,
                                                           const SignedPolicyRequest& req) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kPortal, Caller::Role::kOperator},
                             "put signed policy"));
  // Every refusal is audited (policy.deny) with its reason, never the
  // document's policy text.
  auto refuse = [&](const Status& s) -> Status {
    std::string reason = ReasonPrefix(s);
    if (reason.empty()) reason = "malformed_request";
    metrics_.CountDenial(reason);
    (void)store_->AppendAudit({"policy.deny", "customer/" + req.tenant,
                               json{{"reason", reason},
                                    {"image_id", req.image_id},
                                    {"by", caller.name},
                                    {"message", s.message()}}});
    return s;
  };
  if (!ValidIdentity(req.tenant) || !ValidIdentity(req.image_id)) {
    return refuse(InvalidArgumentError("tenant and image_id must match [A-Za-z0-9._:@-]{1,128}"));
  }
  auto doc = ovf::ParsePolicyDocument(req.document);
  if (!doc.ok()) return refuse(doc.status());
  if (doc->tenant != req.tenant || doc->image_id != req.image_id) {
    return refuse(Denied("tenant_mismatch", "the document is for image " + doc->image_id +
                                                " of tenant " + doc->tenant + ", not image " +
                                                req.image_id + " of tenant " + req.tenant));
  }
  auto image = store_->GetImage(req.tenant, req.image_id);
  if (!image.ok() && image.status().code() != StatusCode::kNotFound) return image.status();
  if (!image.ok()) {
    return refuse(Denied("tenant_mismatch", "image " + req.image_id +
                                                " is not registered for tenant " + req.tenant));
  }
  auto registered = store_->GetSigningKey(req.tenant);
  if (!registered.ok() && registered.status().code() != StatusCode::kNotFound) {
    return registered.status();
  }
  if (!registered.ok()) {
    return refuse(Denied("signer_mismatch", "tenant " + req.tenant + " has no registered signing key"));
  }
  auto key = crypto::PublicKey::FromPem(registered->public_key_pem);
  if (!key.ok()) return key.status();
  Status verified = ovf::VerifyPolicyDocumentSignature(req.document, req.signature, *key);
  if (!verified.ok()) return refuse(PermissionDeniedError(verified.message()));
  Status valid = ValidatePolicy(doc->policy);
  if (!valid.ok()) return refuse(InvalidArgumentError("bad_policy: " + std::string(valid.message())));
  PolicyDocumentRecord rec{req.tenant,
                           req.image_id,
                           static_cast<int64_t>(doc->version),
                           req.document,
                           crypto::Base64Encode(req.signature),
                           registered->key_id,
                           Now()};
  const crypto::Sha256Digest digest = crypto::Sha256(req.document);
  Status put = store_->PutPolicyDocument(
      rec, {"policy.signed", "customer/" + req.tenant,
            json{{"image_id", req.image_id}, {"version", rec.version},
                 {"issued_at", doc->issued_at}, {"signer_key_id", rec.signer_key_id},
                 {"document_sha256", crypto::HexEncode(digest)}, {"by", caller.name}}});
  if (!put.ok()) {
    if (ReasonPrefix(put) == "policy_stale") return refuse(PermissionDeniedError(put.message()));
    return put;
  }
  return rec;
}

StatusOr<PolicyDocumentRecord> KmsService::GetSignedPolicy(const Caller& caller,
                                                           const std::string& tenant,
                                                           const std::string& image_id) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kPortal, Caller::Role::kOperator},
                             "get signed policy"));
  return store_->NewestPolicyDocument(tenant, image_id);
}

StatusOr<PolicyRecord> KmsService::GetPolicy(const Caller& caller, const std::string& customer_id,
                                             const std::string& image_id) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kOperator, Caller::Role::kPortal}, "get policy"));
  return store_->GetPolicy(customer_id, image_id);
}

// --- Images, grants, EK approval ---------------------------------------------

Status KmsService::RegisterImage(const Caller& caller, const ImageRecord& image) {
  return RegisterImage(caller, image, ovf::SignedPackageTexts{});
}

Status KmsService::RegisterImage(const Caller& caller, const ImageRecord& image,
                                 const ovf::SignedPackageTexts& signed_texts) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "register image"));
  if (!ValidIdentity(image.tenant) || !ValidIdentity(image.image_id)) {
    return InvalidArgumentError("tenant and image_id must match [A-Za-z0-9._:@-]{1,128}");
  }
  if (image.key_id.empty() || image.key_id.size() > 128) return InvalidArgumentError("bad key_id");
  ImageRecord rec{image.tenant, image.image_id, image.key_id, Now(), "", std::nullopt};
  json details = {{"image_id", rec.image_id}, {"key_id", rec.key_id}, {"by", caller.name}};
  const bool has_texts = !signed_texts.descriptor.empty() || !signed_texts.certificate.empty() ||
                         !signed_texts.manifest.empty();
  if (has_texts) {
    auto refuse = [&](const Status& s) {
      const std::string reason = ReasonPrefix(s);
      RecordDenial(reason.empty() ? "malformed_request" : reason, "portal/" + caller.name,
                   "register image " + rec.image_id + " of tenant " + rec.tenant + ": " + s.message());
      return s;
    };
    std::string signer;
    auto verified = VerifyTenantSigned(rec.tenant, signed_texts, &signer);
    if (!verified.ok()) return refuse(verified.status());
    std::vector<std::string> differ;
    if (verified->tag.image_id != rec.image_id) differ.push_back("image_id");
    if (verified->tag.tenant != rec.tenant) differ.push_back("tenant");
    if (verified->tag.key_id != rec.key_id) differ.push_back("key_id");
    if (!differ.empty()) {
      std::string names;
      for (const std::string& d : differ) names += (names.empty() ? "" : ", ") + d;
      return refuse(Denied("key_not_signed", "the registration's " + names +
                                                 " differ from the signed descriptor's"));
    }
    rec.descriptor_sha256 = crypto::HexEncode(crypto::Sha256(signed_texts.descriptor));
    rec.release_policy = verified->release_policy;
    details["descriptor_sha256"] = rec.descriptor_sha256;
    details["signer_key_id"] = signer;
    details["release_policy"] = rec.release_policy.has_value();
  }
  Status put = store_->PutImage(rec, {"image.register", "customer/" + rec.tenant, details});
  if (!put.ok() && ReasonPrefix(put) == "image_conflict") return PermissionDeniedError(put.message());
  return put;
}

StatusOr<GrantRecord> KmsService::CreateGrant(const Caller& caller, const GrantRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "create grant"));
  if (!ValidId(req.job_id) || !ValidId(req.host_id)) {
    return InvalidArgumentError("job_id and host_id must match [A-Za-z0-9._-]{1,64}");
  }
  if (!ValidIdentity(req.tenant) || !ValidIdentity(req.image_id)) {
    return InvalidArgumentError("tenant and image_id must match [A-Za-z0-9._:@-]{1,128}");
  }
  if (req.ttl_seconds < 1 || req.ttl_seconds > options_.max_grant_ttl_seconds) {
    return InvalidArgumentError("ttl_seconds must be 1.." + std::to_string(options_.max_grant_ttl_seconds));
  }
  if (req.attempt < 0) return InvalidArgumentError("attempt must be >= 0");
  bool registered = false;
  auto policy = PlacementPolicy(req.tenant, req.image_id, &registered);
  if (!policy.ok() && ReasonPrefix(policy.status()) != "no_policy") return policy.status();
  if (!registered) {
    RecordDenial("unknown_image", "portal/" + caller.name,
                 "grant for image " + req.image_id + " of tenant " + req.tenant);
    return FailedPreconditionError("unknown_image: image " + req.image_id +
                                   " is not registered for tenant " + req.tenant);
  }
  if (Status life = lifecycle_->Check(req.tenant, req.image_id, req.host_id); !life.ok()) {
    if (ReasonPrefix(life).empty()) return life;
    RETURN_IF_ERROR(store_->AppendAudit(
        {"grant.deny", "host/" + req.host_id,
         json{{"job_id", req.job_id}, {"image_id", req.image_id}, {"tenant", req.tenant},
              {"reason", ReasonPrefix(life)}, {"by", caller.name}}}));
    metrics_.CountDenial(ReasonPrefix(life));
    return life;
  }
  // The host must meet the image's policy now, as the release will check
  // again on fresh evidence: a portal cannot place a job where the
  // customer's policy excludes it.
  ASSIGN_OR_RETURN(PlacementResult eligible, EvaluateHost(policy, req.host_id, Now()));
  if (!eligible.eligible) {
    const std::string source = policy.ok() ? policy->source : "none";
    RETURN_IF_ERROR(store_->AppendAudit(
        {"grant.deny", "host/" + req.host_id,
         json{{"job_id", req.job_id}, {"image_id", req.image_id}, {"tenant", req.tenant},
              {"reason", eligible.reason}, {"policy", source}, {"by", caller.name},
              {"by_fingerprint", caller.fingerprint}}}));
    metrics_.CountDenial(eligible.reason);
    if (!policy.ok()) return policy.status();
    return Denied(eligible.reason, "host " + req.host_id + " is not eligible under the release policy (" +
                                       source + ") of image " + req.image_id + " on its latest verdict");
  }
  GrantRecord g{req.job_id, req.image_id, req.tenant, req.host_id, 0, Now(), 0, req.attempt};
  g.expires_unix = g.created_unix + req.ttl_seconds;
  Status put = store_->PutGrant(g, {"grant.create", "host/" + g.host_id,
                                    json{{"job_id", g.job_id}, {"attempt", g.attempt},
                                         {"image_id", g.image_id}, {"tenant", g.tenant},
                                         {"expires_unix", g.expires_unix}, {"policy", policy->source},
                                         {"by", caller.name}}});
  if (!put.ok() && (ReasonPrefix(put) == "stale_attempt" || ReasonPrefix(put) == "grant_used")) {
    // A portal (or a replica of it) granting an attempt that is over, or
    // re-arming a used grant: refused and audited.
    RETURN_IF_ERROR(store_->AppendAudit(
        {"grant.deny", "host/" + req.host_id,
         json{{"job_id", req.job_id}, {"attempt", req.attempt}, {"image_id", req.image_id},
              {"tenant", req.tenant}, {"reason", ReasonPrefix(put)}, {"by", caller.name},
              {"by_fingerprint", caller.fingerprint}}}));
    metrics_.CountDenial(ReasonPrefix(put));
    return PermissionDeniedError(put.message());
  }
  RETURN_IF_ERROR(put);
  return g;
}

Status KmsService::ApproveEk(const Caller& caller, const std::string& host_id,
                             const std::string& ek_sha256_hex) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "approve EK"));
  if (!ValidId(host_id)) return InvalidArgumentError("host id must match [A-Za-z0-9._-]{1,64}");
  if (!IsSha256Hex(ek_sha256_hex)) {
    return InvalidArgumentError("ek_sha256 must be 64 lowercase hex digits (SHA-256 of the EK's public key)");
  }
  auto previous = store_->GetEkPin(host_id);
  if (!previous.ok() && previous.status().code() != StatusCode::kNotFound) return previous.status();
  return store_->PinEk(host_id, ek_sha256_hex,
                       {"host.ek.approve", "host/" + host_id,
                        json{{"ek_sha256", ek_sha256_hex},
                             {"previous_ek_sha256", previous.ok() ? *previous : std::string()},
                             {"by", caller.name}, {"by_fingerprint", caller.fingerprint}}});
}

}  // namespace vmseal::kms
