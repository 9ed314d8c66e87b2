// Customer accounts and sessions of the portal: registration with a
// generated login id and password, login to an expiring bearer token, and
// token checks that yield the Principal every other service takes.
#ifndef VMSEAL_CSP_ACCOUNTS_H_
#define VMSEAL_CSP_ACCOUNTS_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "csp/clock.h"
#include "csp/kms_client.h"
#include "csp/portal_db.h"
#include "rate_limit/rate_limit.h"

namespace vmseal::csp {

// Who is calling: established only by Accounts::Authenticate (or, for
// operators, by the adapter that checked the operator credential).
struct Principal {
  std::string customer_id;
};

struct RegisterRequest {
  // The customer key's algorithm: "rsa3072" (also when empty) or "x25519"
  // (the names of crypto::KeyTypeName). Anything else is INVALID_ARGUMENT.
  std::string key_algorithm;
  // Optional: the customer's package-signing key (ECDSA P-256 PEM
  // SubjectPublicKeyInfo, made on the customer's machine) and its proof of
  // possession (ovf::SigningKeyProofMessage signed with it). Forwarded to
  // the KMS, which certifies it; both or neither.
  std::string signing_public_key_pem;
  std::vector<uint8_t> signing_key_proof;
};
struct RegisterResponse {
  std::string customer_id;
  std::string login_id;
  // Generated password, shown to the customer once; only its Argon2id hash
  // is stored.
  SecretBytes password;
  // The customer's KMS key, created during registration.
  CustomerKey key;
  // The certified signing key; empty fields when none was given.
  SigningKey signing_key;
};

struct LoginRequest {
  std::string login_id;
  SecretBytes password;
};
struct LoginResponse {
  // Bearer token ("vst_" + 64 hex); only its SHA-256 is stored.
  SecretBytes token;
  int64_t expires_unix = 0;
  std::string customer_id;
};

// Thread-safe.
class Accounts {
 public:
  struct Options {
    // Argon2id cost: iterations, memory in KiB, lanes. Defaults t=3,
    // m=64 MiB, p=1 (above the RFC 9106 "second recommended" option's
    // memory floor of 64 MiB at t=3).
    uint32_t argon2_t_cost = 3;
    uint32_t argon2_m_cost_kib = 64 * 1024;
    uint32_t argon2_parallelism = 1;
    // Lifetime of a session token. Default 1 hour.
    int64_t session_ttl_seconds = 3600;
    // Back-off per login id after failed logins (password guessing); a
    // blocked login id is refused before Argon2id runs. Not owned; null: none.
    rate_limit::FailureBackoff* login_failures = nullptr;
    // Bound on Argon2id hashes at once (register and login); a caller that
    // finds no place within `password_hash_wait_seconds` gets UNAVAILABLE
    // "overloaded: ...; retry in 1 s" and nothing is stored. Not owned;
    // null: no bound.
    rate_limit::ConcurrencyLimit* password_hashing = nullptr;
    double password_hash_wait_seconds = 2;
  };

  // `db`, `clock` and `kms` must outlive the object.
  static StatusOr<std::unique_ptr<Accounts>> Create(const Options& options, PortalDb* db,
                                                    const Clock* clock, KmsClient* kms);

  // Creates the customer after the KMS has created its key pair of
  // `request.key_algorithm`. If the KMS call fails (e.g. UNAVAILABLE)
  // nothing is stored and the error is returned with the prefix "KMS: ".
  StatusOr<RegisterResponse> Register(const RegisterRequest& request);

  // The caller's KMS key (public half and certificate). NOT_FOUND for a
  // customer registered without one.
  StatusOr<CustomerKey> GetCustomerKey(const Principal& who);

  // Registers a package-signing key for a customer that has none yet (an
  // account made before signing keys, or without one): forwarded to the
  // KMS with its proof (KmsClient::RegisterSigningKey). INVALID_ARGUMENT for
  // a key that is not P-256; the KMS's refusals otherwise, prefixed "KMS: ".
  StatusOr<SigningKey> RegisterSigningKey(const Principal& who, const std::string& public_key_pem,
                                          const std::vector<uint8_t>& proof);
  // The caller's signing key as the KMS has it registered (the portal keeps
  // no copy of its own). NOT_FOUND if none.
  StatusOr<SigningKey> GetSigningKey(const Principal& who);

  // UNAUTHENTICATED "invalid login id or password" for an unknown login id
  // or a wrong password alike (and with the same Argon2id cost); with
  // Options::login_failures, RESOURCE_EXHAUSTED "rate_limited: ...; retry in
  // N s" while the login id is backing off (the right password included).
  StatusOr<LoginResponse> Login(const LoginRequest& request);

  // The principal of a live token; UNAUTHENTICATED otherwise ("session
  // expired" for an expired one, which is then removed).
  StatusOr<Principal> Authenticate(const SecretBytes& token);

  // Ends the session; OK if it did not exist.
  Status Logout(const SecretBytes& token);
  // Grows with every Logout on this replica (one atomic load): a live view
  // that re-checks its session only now and then re-checks at once when it
  // changed.
  uint64_t LogoutCount() const { return logouts_.load(std::memory_order_acquire); }

 private:
  Accounts(const Options& options, PortalDb* db, const Clock* clock, KmsClient* kms,
           std::string dummy_hash)
      : options_(options), db_(db), clock_(clock), kms_(kms), dummy_hash_(std::move(dummy_hash)) {}
  StatusOr<std::string> HashPassword(const SecretBytes& password) const;
  // A place for one Argon2id hash (an empty ticket without a bound), or
  // UNAVAILABLE when none freed in time.
  StatusOr<std::optional<rate_limit::ConcurrencyLimit::Ticket>> PasswordHashPlace() const;

  const Options options_;
  std::atomic<uint64_t> logouts_{0};
  PortalDb* const db_;
  const Clock* const clock_;
  KmsClient* const kms_;
  // Verified against when the login id is unknown, to equalise timing.
  const std::string dummy_hash_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_ACCOUNTS_H_
