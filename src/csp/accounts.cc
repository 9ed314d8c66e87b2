#include "csp/accounts.h"

#include <argon2.h>

#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>

#include "crypto/keys.h"
#include "crypto/primitives.h"

namespace vmseal::csp {
namespace {

constexpr size_t kSaltBytes = 16;
constexpr size_t kHashBytes = 32;
constexpr size_t kPasswordChars = 24;  // 24 * 5 bits = 120 bits
constexpr char kPasswordAlphabet[] = "abcdefghijkmnpqrstuvwxyz23456789";  // 32, no l/o/0/1
constexpr char kTokenPrefix[] = "vst_";

std::string TokenHash(const SecretBytes& token) {
  return crypto::HexEncode(crypto::Sha256(token.UnsafeSpan()));
}

// The KMS's name (docs/api/kms.yaml) of a customer key algorithm.
StatusOr<std::string> KmsKeyAlgorithm(const std::string& key_algorithm) {
  if (key_algorithm.empty() || key_algorithm == "rsa3072") return std::string("RSA-3072");
  if (key_algorithm == "x25519") return std::string("X25519");
  return InvalidArgumentError("key_algorithm must be rsa3072 or x25519");
}

// A signing key must be an ECDSA P-256 public key (what `vmseal customer
// register` makes); checked before the KMS is asked.
Status CheckSigningKey(const std::string& pem, const std::vector<uint8_t>& proof) {
  auto key = crypto::PublicKey::FromPem(pem);
  if (!key.ok() || key->type() != crypto::KeyType::kEcP256) {
    return InvalidArgumentError("signing_public_key_pem must be an ECDSA P-256 public key (PEM)");
  }
  if (proof.empty() || proof.size() > 512) {
    return InvalidArgumentError("signing_key_proof must be a signature (base64)");
  }
  return OkStatus();
}

// A store error of an account call: UNAVAILABLE "store_unavailable: ..."
// (503), the same answer as a job write's. The store's own message goes to
// the log only: the answer names what was not done, never a value.
Status StoreUnavailable(const Status& error, std::string_view what) {
  spdlog::error("account store: {}: {}", what, error.ToString());
  return UnavailableError("store_unavailable: " + std::string(what) + "; retry");
}

}  // namespace

StatusOr<std::unique_ptr<Accounts>> Accounts::Create(const Options& options, PortalDb* db,
                                                     const Clock* clock, KmsClient* kms) {
  if (db == nullptr || clock == nullptr || kms == nullptr) {
    return InvalidArgumentError("accounts need a database, a clock and a KMS client");
  }
  if (options.argon2_t_cost < 1 || options.argon2_m_cost_kib < 8 * options.argon2_parallelism ||
      options.argon2_parallelism < 1) {
    return InvalidArgumentError("invalid Argon2id parameters");
  }
  if (options.session_ttl_seconds <= 0) return InvalidArgumentError("session TTL must be positive");
  std::unique_ptr<Accounts> a(new Accounts(options, db, clock, kms, ""));
  ASSIGN_OR_RETURN(std::string dummy, a->HashPassword(SecretBytes::Random(kPasswordChars)));
  return std::unique_ptr<Accounts>(new Accounts(options, db, clock, kms, std::move(dummy)));
}

StatusOr<std::optional<rate_limit::ConcurrencyLimit::Ticket>> Accounts::PasswordHashPlace() const {
  if (options_.password_hashing == nullptr) return std::optional<rate_limit::ConcurrencyLimit::Ticket>();
  auto place = options_.password_hashing->TryAcquireFor(options_.password_hash_wait_seconds);
  if (!place) {
    return UnavailableError("overloaded: " + std::to_string(options_.password_hashing->max()) +
                            " password hashes are running; retry in 1 s");
  }
  return place;
}

StatusOr<std::string> Accounts::HashPassword(const SecretBytes& password) const {
  crypto::Bytes salt = crypto::RandomBytes(kSaltBytes);
  size_t len = argon2_encodedlen(options_.argon2_t_cost, options_.argon2_m_cost_kib,
                                 options_.argon2_parallelism, kSaltBytes, kHashBytes, Argon2_id);
  std::vector<char> encoded(len);
  int rc = argon2id_hash_encoded(options_.argon2_t_cost, options_.argon2_m_cost_kib,
                                 options_.argon2_parallelism, password.UnsafeData(),
                                 password.size(), salt.data(), salt.size(), kHashBytes,
                                 encoded.data(), encoded.size());
  if (rc != ARGON2_OK) return InternalError(std::string("argon2id: ") + argon2_error_message(rc));
  return std::string(encoded.data());
}

StatusOr<RegisterResponse> Accounts::Register(const RegisterRequest& request) {
  ASSIGN_OR_RETURN(const std::string kms_algorithm, KmsKeyAlgorithm(request.key_algorithm));
  const bool with_signing_key = !request.signing_public_key_pem.empty() || !request.signing_key_proof.empty();
  if (with_signing_key) {
    RETURN_IF_ERROR(CheckSigningKey(request.signing_public_key_pem, request.signing_key_proof));
  }
  RegisterResponse out;
  out.customer_id = "cust-" + crypto::HexEncode(crypto::RandomBytes(8));
  out.login_id = "u-" + crypto::HexEncode(crypto::RandomBytes(6));
  SecretBytes random = SecretBytes::Random(kPasswordChars);
  out.password = SecretBytes(kPasswordChars);
  for (size_t i = 0; i < kPasswordChars; ++i) {
    out.password.UnsafeMutableData()[i] =
        static_cast<uint8_t>(kPasswordAlphabet[random.UnsafeData()[i] & 31]);
  }
  CustomerRecord record;
  record.customer_id = out.customer_id;
  record.login_id = out.login_id;
  {
    ASSIGN_OR_RETURN(auto place, PasswordHashPlace());
    ASSIGN_OR_RETURN(record.password_hash, HashPassword(out.password));
  }
  record.created_unix = clock_->NowUnixSeconds();
  // The key first: without it the account would be useless, and a failed
  // KMS call must leave no customer behind.
  auto key = kms_->CreateCustomerKey(out.customer_id, kms_algorithm);
  if (!key.ok()) return Status(key.status().code(), "KMS: " + key.status().message());
  out.key = *std::move(key);
  record.key_id = out.key.key_id;
  record.key_algorithm = out.key.algorithm;
  record.public_key_pem = out.key.public_key_pem;
  record.cert_pem = out.key.cert_pem;
  if (with_signing_key) {
    // The KMS certifies the key under the new customer id; the portal keeps
    // no copy (it asks the KMS whenever it checks a signature).
    auto signing = kms_->RegisterSigningKey(out.customer_id, request.signing_public_key_pem,
                                            request.signing_key_proof);
    if (!signing.ok()) return Status(signing.status().code(), "KMS: " + signing.status().message());
    out.signing_key = *std::move(signing);
  }
  // One row: stored whole or not at all. The KMS key made above stays with
  // the KMS, unused (no account names it; docs/format/portal-state.md §6).
  Status stored = db_->InsertCustomer(record);
  if (!stored.ok()) {
    if (stored.code() == StatusCode::kAlreadyExists) return stored;
    spdlog::warn("registration of customer={} not stored; its KMS key key_id={} is unused",
                 out.customer_id, out.key.key_id);
    return StoreUnavailable(stored, "the account was not stored");
  }
  return out;
}

StatusOr<CustomerKey> Accounts::GetCustomerKey(const Principal& who) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  ASSIGN_OR_RETURN(CustomerRecord c, db_->FindCustomerById(who.customer_id));
  if (c.key_id.empty()) return NotFoundError("customer has no KMS key");
  return CustomerKey{c.key_id, c.customer_id, c.key_algorithm, c.public_key_pem, c.cert_pem,
                     c.created_unix};
}

StatusOr<SigningKey> Accounts::RegisterSigningKey(const Principal& who,
                                                  const std::string& public_key_pem,
                                                  const std::vector<uint8_t>& proof) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  RETURN_IF_ERROR(CheckSigningKey(public_key_pem, proof));
  auto signing = kms_->RegisterSigningKey(who.customer_id, public_key_pem, proof);
  if (!signing.ok()) return Status(signing.status().code(), "KMS: " + signing.status().message());
  return signing;
}

StatusOr<SigningKey> Accounts::GetSigningKey(const Principal& who) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  return kms_->GetSigningKey(who.customer_id);
}

StatusOr<LoginResponse> Accounts::Login(const LoginRequest& request) {
  const Status denied = UnauthenticatedError("invalid login id or password");
  rate_limit::FailureBackoff* const failures = options_.login_failures;
  if (failures != nullptr) {
    rate_limit::Decision d = failures->Check(request.login_id);
    if (!d.allowed) {
      return ResourceExhaustedError(rate_limit::RateLimitedMessage(
          "too many failed logins for this login id", d.retry_after_seconds));
    }
  }
  auto customer = db_->FindCustomerByLogin(request.login_id);
  if (!customer.ok() && customer.status().code() != StatusCode::kNotFound) {
    return StoreUnavailable(customer.status(), "the login could not be checked");
  }
  const std::string& encoded = customer.ok() ? customer->password_hash : dummy_hash_;
  int rc = ARGON2_VERIFY_MISMATCH;
  {
    ASSIGN_OR_RETURN(auto place, PasswordHashPlace());
    // argon2id_verify recomputes the hash and compares in constant time.
    rc = argon2id_verify(encoded.c_str(), request.password.UnsafeData(), request.password.size());
  }
  if (!customer.ok() || rc != ARGON2_OK) {
    // Unknown login ids back off too: the answer must not tell them apart.
    if (failures != nullptr) failures->RecordFailure(request.login_id);
    return denied;
  }
  if (failures != nullptr) failures->RecordSuccess(request.login_id);

  LoginResponse out;
  std::string token = kTokenPrefix + crypto::HexEncode(SecretBytes::Random(32).UnsafeSpan());
  out.token = SecretBytes(crypto::AsBytes(token));
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(token.data()), token.size()));
  out.expires_unix = clock_->NowUnixSeconds() + options_.session_ttl_seconds;
  out.customer_id = customer->customer_id;
  // A session that is not stored is never handed out: the token dies here.
  Status stored = db_->InsertSession({TokenHash(out.token), out.customer_id, out.expires_unix});
  if (!stored.ok()) return StoreUnavailable(stored, "the session was not stored");
  return out;
}

StatusOr<Principal> Accounts::Authenticate(const SecretBytes& token) {
  auto session = db_->FindSession(TokenHash(token));
  if (!session.ok()) {
    if (session.status().code() == StatusCode::kNotFound) {
      return UnauthenticatedError("invalid session token");
    }
    return StoreUnavailable(session.status(), "the session could not be checked");
  }
  if (session->expires_unix <= clock_->NowUnixSeconds()) {
    (void)db_->DeleteSession(session->token_sha256_hex);
    return UnauthenticatedError("session expired");
  }
  return Principal{session->customer_id};
}

Status Accounts::Logout(const SecretBytes& token) {
  Status removed = db_->DeleteSession(TokenHash(token));
  if (!removed.ok() && removed.code() != StatusCode::kNotFound) {
    // The session still works: the customer must know it is not ended.
    return StoreUnavailable(removed, "the session was not ended");
  }
  // Open event streams re-check their session at once after a logout.
  logouts_.fetch_add(1, std::memory_order_acq_rel);
  return OkStatus();
}

}  // namespace vmseal::csp
