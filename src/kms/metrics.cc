#include "kms/metrics.h"

#include <cstdio>

namespace vmseal::kms {
namespace {
std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.6g", v);
  return buf;
}
// Label values are ours (route patterns, reason codes) but escape anyway.
std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}
}  // namespace

void Metrics::CountRelease() {
  std::lock_guard<std::mutex> lock(mu_);
  ++releases_;
}

void Metrics::ObserveRelease(const std::string& reason, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++release_decisions_[reason];
  for (size_t i = 0; i < kBucketsSeconds.size(); ++i) {
    if (seconds <= kBucketsSeconds[i]) ++release_buckets_[i];
  }
  ++release_count_;
  release_sum_ += seconds;
}

void Metrics::CountDenial(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++denials_[reason];
}

void Metrics::CountKeyCreated() {
  std::lock_guard<std::mutex> lock(mu_);
  ++keys_created_;
}

void Metrics::CountRequest(const std::string& route, int http_status, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{route, http_status}];
  for (size_t i = 0; i < kBucketsSeconds.size(); ++i) {
    if (seconds <= kBucketsSeconds[i]) ++bucket_counts_[i];
  }
  ++latency_count_;
  latency_sum_ += seconds;
}

std::string Metrics::Render() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out;
  out += "# HELP vmseal_kms_releases_total Keys released to attested hosts.\n";
  out += "# TYPE vmseal_kms_releases_total counter\n";
  out += "vmseal_kms_releases_total " + std::to_string(releases_) + "\n";
  out += "# HELP vmseal_kms_denials_total Refused requests by reason.\n";
  out += "# TYPE vmseal_kms_denials_total counter\n";
  for (const auto& [reason, n] : denials_) {
    out += "vmseal_kms_denials_total{reason=\"" + Escape(reason) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP vmseal_kms_customer_keys_created_total Customer key pairs created.\n";
  out += "# TYPE vmseal_kms_customer_keys_created_total counter\n";
  out += "vmseal_kms_customer_keys_created_total " + std::to_string(keys_created_) + "\n";
  out += "# HELP vmseal_kms_requests_total HTTP requests by route and status.\n";
  out += "# TYPE vmseal_kms_requests_total counter\n";
  for (const auto& [key, n] : requests_) {
    out += "vmseal_kms_requests_total{route=\"" + Escape(key.first) + "\",code=\"" +
           std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP vmseal_kms_request_seconds Request latency.\n";
  out += "# TYPE vmseal_kms_request_seconds histogram\n";
  for (size_t i = 0; i < kBucketsSeconds.size(); ++i) {
    out += "vmseal_kms_request_seconds_bucket{le=\"" + Num(kBucketsSeconds[i]) + "\"} " +
           std::to_string(bucket_counts_[i]) + "\n";
  }
  out += "vmseal_kms_request_seconds_bucket{le=\"+Inf\"} " + std::to_string(latency_count_) + "\n";
  out += "vmseal_kms_request_seconds_sum " + Num(latency_sum_) + "\n";
  out += "vmseal_kms_request_seconds_count " + std::to_string(latency_count_) + "\n";
  out += "# HELP vmseal_kms_release_decisions_total Release decisions by result and reason.\n";
  out += "# TYPE vmseal_kms_release_decisions_total counter\n";
  for (const auto& [reason, n] : release_decisions_) {
    out += std::string("vmseal_kms_release_decisions_total{result=\"") +
           (reason == "ok" ? "grant" : "deny") + "\",reason=\"" + Escape(reason) + "\"} " +
           std::to_string(n) + "\n";
  }
  out += "# HELP vmseal_kms_release_seconds Time spent deciding a release (verify, policy, unwrap, re-wrap).\n";
  out += "# TYPE vmseal_kms_release_seconds histogram\n";
  for (size_t i = 0; i < kBucketsSeconds.size(); ++i) {
    out += "vmseal_kms_release_seconds_bucket{le=\"" + Num(kBucketsSeconds[i]) + "\"} " +
           std::to_string(release_buckets_[i]) + "\n";
  }
  out += "vmseal_kms_release_seconds_bucket{le=\"+Inf\"} " + std::to_string(release_count_) + "\n";
  out += "vmseal_kms_release_seconds_sum " + Num(release_sum_) + "\n";
  out += "vmseal_kms_release_seconds_count " + std::to_string(release_count_) + "\n";
  return out;
}

}  // namespace vmseal::kms
