#include "csp/abuse_guard.h"

#include <charconv>
#include <cmath>

namespace vmseal::csp {
namespace {

struct LimitField {
  const char* name;
  double AbuseLimits::*d = nullptr;
  int AbuseLimits::*i = nullptr;
  int64_t AbuseLimits::*l = nullptr;
};

const LimitField kFields[] = {
    {"register_per_address_per_hour", &AbuseLimits::register_per_address_per_hour},
    {"register_per_address_burst", &AbuseLimits::register_per_address_burst},
    {"register_per_second", &AbuseLimits::register_per_second},
    {"register_burst", &AbuseLimits::register_burst},
    {"login_per_address_per_second", &AbuseLimits::login_per_address_per_second},
    {"login_per_address_burst", &AbuseLimits::login_per_address_burst},
    {"login_address_free_failures", nullptr, &AbuseLimits::login_address_free_failures},
    {"login_id_free_failures", nullptr, &AbuseLimits::login_id_free_failures},
    {"login_backoff_base_seconds", &AbuseLimits::login_backoff_base_seconds},
    {"login_backoff_max_seconds", &AbuseLimits::login_backoff_max_seconds},
    {"jobs_per_customer_per_minute", &AbuseLimits::jobs_per_customer_per_minute},
    {"jobs_per_customer_burst", &AbuseLimits::jobs_per_customer_burst},
    {"jobs_in_progress_per_customer", nullptr, nullptr,
     &AbuseLimits::jobs_in_progress_per_customer},
    {"password_hashes_in_flight", nullptr, nullptr, &AbuseLimits::password_hashes_in_flight},
    {"password_hash_wait_seconds", &AbuseLimits::password_hash_wait_seconds},
};

rate_limit::FailureBackoff::Options Backoff(int free, const AbuseLimits& l) {
  rate_limit::FailureBackoff::Options o;
  o.free_failures = free;
  o.base_seconds = l.login_backoff_base_seconds;
  o.max_seconds = l.login_backoff_max_seconds;
  return o;
}

}  // namespace

Status SetAbuseLimit(AbuseLimits* limits, std::string_view name, std::string_view value) {
  for (const LimitField& f : kFields) {
    if (name != f.name) continue;
    double v = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (value.empty() || ec != std::errc() || end != value.data() + value.size() ||
        !std::isfinite(v) || v < 0 || v > 1e9) {
      return InvalidArgumentError("limit " + std::string(name) +
                                  " must be a non-negative number, got '" + std::string(value) +
                                  "'");
    }
    if (f.d != nullptr) {
      limits->*f.d = v;
    } else {
      if (v != std::floor(v)) {
        return InvalidArgumentError("limit " + std::string(name) + " must be a whole number");
      }
      if (f.i != nullptr) limits->*f.i = static_cast<int>(v);
      if (f.l != nullptr) limits->*f.l = static_cast<int64_t>(v);
    }
    return OkStatus();
  }
  std::string known;
  for (const LimitField& f : kFields) known += (known.empty() ? "" : ", ") + std::string(f.name);
  return InvalidArgumentError("unknown limit '" + std::string(name) + "' (known: " + known + ")");
}

std::map<std::string, double> AbuseLimitValues(const AbuseLimits& limits) {
  std::map<std::string, double> out;
  for (const LimitField& f : kFields) {
    out[f.name] = f.d   ? limits.*f.d
                  : f.i ? static_cast<double>(limits.*f.i)
                        : static_cast<double>(limits.*f.l);
  }
  return out;
}

AbuseGuard::AbuseGuard(const AbuseLimits& limits, rate_limit::Clock clock)
    : limits_(limits),
      register_per_address_({limits.register_per_address_per_hour / 3600.0,
                             limits.register_per_address_burst},
                            clock),
      register_global_({limits.register_per_second, limits.register_burst}, clock),
      login_per_address_({limits.login_per_address_per_second, limits.login_per_address_burst},
                         clock),
      login_address_failures_(Backoff(limits.login_address_free_failures, limits), clock),
      login_id_failures_(Backoff(limits.login_id_free_failures, limits), clock),
      jobs_per_customer_({limits.jobs_per_customer_per_minute / 60.0,
                          limits.jobs_per_customer_burst},
                         clock),
      password_hashing_(limits.password_hashes_in_flight) {}

Status AbuseGuard::Refuse(std::atomic<uint64_t>* counter, std::string_view what,
                          int64_t retry_after) {
  counter->fetch_add(1, std::memory_order_relaxed);
  return ResourceExhaustedError(rate_limit::RateLimitedMessage(what, retry_after));
}

Status AbuseGuard::AdmitRegistration(const std::string& address) {
  // Per address first, so one address cannot drain the global bucket.
  rate_limit::Decision d = register_per_address_.Take(address);
  if (!d.allowed) {
    return Refuse(&refused_register_address_, "too many registrations from this address",
                  d.retry_after_seconds);
  }
  d = register_global_.Take("");
  if (!d.allowed) {
    return Refuse(&refused_register_global_, "too many registrations right now",
                  d.retry_after_seconds);
  }
  return OkStatus();
}

Status AbuseGuard::AdmitLogin(const std::string& address) {
  rate_limit::Decision d = login_address_failures_.Check(address);
  if (!d.allowed) {
    return Refuse(&refused_login_failures_, "too many failed logins from this address",
                  d.retry_after_seconds);
  }
  d = login_per_address_.Take(address);
  if (!d.allowed) {
    return Refuse(&refused_login_address_, "too many logins from this address",
                  d.retry_after_seconds);
  }
  return OkStatus();
}

void AbuseGuard::RecordLogin(const std::string& address, bool succeeded) {
  // A success does not clear the address: an attacker with an account of
  // its own could otherwise reset its back-off between guesses.
  if (!succeeded) login_address_failures_.RecordFailure(address);
}

Status AbuseGuard::AdmitJob(const std::string& customer_id, int64_t jobs_in_progress) {
  if (limits_.jobs_in_progress_per_customer > 0 &&
      jobs_in_progress >= limits_.jobs_in_progress_per_customer) {
    refused_job_quota_.fetch_add(1, std::memory_order_relaxed);
    return ResourceExhaustedError(
        "quota_exceeded: " + std::to_string(jobs_in_progress) +
        " jobs in progress, the quota is " +
        std::to_string(limits_.jobs_in_progress_per_customer) + "; retry in 10 s");
  }
  rate_limit::Decision d = jobs_per_customer_.Take(customer_id);
  if (!d.allowed) return Refuse(&refused_job_rate_, "too many jobs created", d.retry_after_seconds);
  return OkStatus();
}

std::string AbuseGuard::RenderMetrics() const {
  std::string out =
      "# HELP vmseal_portal_limit A configured limit (0 disables it).\n"
      "# TYPE vmseal_portal_limit gauge\n";
  for (const auto& [name, value] : AbuseLimitValues(limits_)) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6g", value);
    out += "vmseal_portal_limit{name=\"" + name + "\"} " + buf + "\n";
  }
  out +=
      "# HELP vmseal_portal_rate_limited_total Requests refused with 429, by limit.\n"
      "# TYPE vmseal_portal_rate_limited_total counter\n";
  const std::pair<const char*, const std::atomic<uint64_t>*> counters[] = {
      {"register_address", &refused_register_address_},
      {"register_global", &refused_register_global_},
      {"login_address", &refused_login_address_},
      {"login_address_failures", &refused_login_failures_},
      {"job_rate", &refused_job_rate_},
      {"job_quota", &refused_job_quota_},
  };
  for (const auto& [name, counter] : counters) {
    out += "vmseal_portal_rate_limited_total{limit=\"" + std::string(name) + "\"} " +
           std::to_string(counter->load(std::memory_order_relaxed)) + "\n";
  }
  out +=
      "# HELP vmseal_portal_rate_limit_keys Keys (addresses, customers, login ids) tracked.\n"
      "# TYPE vmseal_portal_rate_limit_keys gauge\n";
  out += "vmseal_portal_rate_limit_keys{limit=\"register_address\"} " +
         std::to_string(register_per_address_.size()) + "\n";
  out += "vmseal_portal_rate_limit_keys{limit=\"login_address\"} " +
         std::to_string(login_per_address_.size()) + "\n";
  out += "vmseal_portal_rate_limit_keys{limit=\"login_id_failures\"} " +
         std::to_string(login_id_failures_.size()) + "\n";
  out += "vmseal_portal_rate_limit_keys{limit=\"job_customer\"} " +
         std::to_string(jobs_per_customer_.size()) + "\n";
  out +=
      "# HELP vmseal_portal_password_hashes Argon2id hashes running now, and the most at once.\n"
      "# TYPE vmseal_portal_password_hashes gauge\n"
      "vmseal_portal_password_hashes{state=\"in_flight\"} " +
      std::to_string(password_hashing_.in_use()) + "\n" +
      "vmseal_portal_password_hashes{state=\"peak\"} " + std::to_string(password_hashing_.peak()) +
      "\n"
      "# HELP vmseal_portal_overloaded_total Requests answered 503 because a bounded resource was busy.\n"
      "# TYPE vmseal_portal_overloaded_total counter\n"
      "vmseal_portal_overloaded_total{limit=\"password_hashing\"} " +
      std::to_string(password_hashing_.refused()) + "\n";
  return out;
}

}  // namespace vmseal::csp
