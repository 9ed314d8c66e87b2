// The portal's limits on anonymous and abusive callers (issue 16;
// docs/operations.md "Rate limits"): registrations per client address and
// in all, logins per client address (with back-off after failures) and per
// login id (in Accounts), and job creation per customer (a rate and a
// quota of jobs in progress). Refusals are 429 with Retry-After, decided
// from the request line and headers before the body is read and before any
// Argon2id or KMS work is done. Every limit and refusal count is on the
// portal's /metrics. Argon2id hashes at once are bounded too (503 beyond).
#ifndef VMSEAL_CSP_ABUSE_GUARD_H_
#define VMSEAL_CSP_ABUSE_GUARD_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "base/status.h"
#include "rate_limit/rate_limit.h"

namespace vmseal::csp {

// Defaults are meant for a public deployment as they are. A rate of 0
// disables that limit.
struct AbuseLimits {
  // Registrations (each costs an RSA key generation at the KMS and an
  // Argon2id hash here).
  double register_per_address_per_hour = 20;
  double register_per_address_burst = 5;
  double register_per_second = 2;  // all addresses together
  double register_burst = 20;
  // Login attempts from one address, and failed ones.
  double login_per_address_per_second = 2;
  double login_per_address_burst = 20;
  int login_address_free_failures = 20;
  // Failed logins for one login id (applied by Accounts).
  int login_id_free_failures = 5;
  double login_backoff_base_seconds = 1;
  double login_backoff_max_seconds = 900;
  // Job creation per customer, and jobs that have not yet reached a VM.
  double jobs_per_customer_per_minute = 12;
  double jobs_per_customer_burst = 20;
  int64_t jobs_in_progress_per_customer = 16;
  // Argon2id hashes (registration and login, 64 MiB each) running at once,
  // whatever the number of addresses: a bound on the portal's memory. A
  // caller waits up to password_hash_wait_seconds for a place, then gets
  // 503 with Retry-After.
  int64_t password_hashes_in_flight = 4;
  double password_hash_wait_seconds = 2;
};

// Sets `name` (as listed by AbuseLimitNames) from `value`. INVALID_ARGUMENT
// for an unknown name or a value that is not a non-negative number.
Status SetAbuseLimit(AbuseLimits* limits, std::string_view name, std::string_view value);
// "name=value" for every limit, in a stable order (for --help and /metrics).
std::map<std::string, double> AbuseLimitValues(const AbuseLimits& limits);

class AbuseGuard {
 public:
  explicit AbuseGuard(const AbuseLimits& limits,
                      rate_limit::Clock clock = rate_limit::SteadyClock());

  // Each returns OK or RESOURCE_EXHAUSTED with rate_limit::RateLimitedMessage.
  Status AdmitRegistration(const std::string& address);
  Status AdmitLogin(const std::string& address);
  // `jobs_in_progress`: the customer's jobs not yet running or failed.
  Status AdmitJob(const std::string& customer_id, int64_t jobs_in_progress);
  // The outcome of a login from `address` (failures feed its back-off).
  void RecordLogin(const std::string& address, bool succeeded);

  // Back-off per login id, for Accounts::Login.
  rate_limit::FailureBackoff* login_id_failures() { return &login_id_failures_; }
  // The bound on Argon2id hashes at once, for Accounts.
  rate_limit::ConcurrencyLimit* password_hashing() { return &password_hashing_; }
  const AbuseLimits& limits() const { return limits_; }

  // Prometheus text: every limit, refusals per limit, keys tracked.
  std::string RenderMetrics() const;

 private:
  Status Refuse(std::atomic<uint64_t>* counter, std::string_view what, int64_t retry_after);

  const AbuseLimits limits_;
  rate_limit::KeyedTokenBucket register_per_address_;
  rate_limit::KeyedTokenBucket register_global_;
  rate_limit::KeyedTokenBucket login_per_address_;
  rate_limit::FailureBackoff login_address_failures_;
  rate_limit::FailureBackoff login_id_failures_;
  rate_limit::KeyedTokenBucket jobs_per_customer_;
  rate_limit::ConcurrencyLimit password_hashing_;
  std::atomic<uint64_t> refused_register_address_{0}, refused_register_global_{0},
      refused_login_address_{0}, refused_login_failures_{0}, refused_job_rate_{0},
      refused_job_quota_{0};
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_ABUSE_GUARD_H_
