// Prometheus counters and a latency histogram for the KMS (text exposition
// format 0.0.4). Thread-safe.
#ifndef VMSEAL_KMS_METRICS_H_
#define VMSEAL_KMS_METRICS_H_

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace vmseal::kms {

class Metrics {
 public:
  void CountRelease();
  // One release decision: granted (reason "ok") or denied with `reason`,
  // and the time the KMS spent on it.
  void ObserveRelease(const std::string& reason, double seconds);
  void CountDenial(const std::string& reason);
  void CountKeyCreated();
  void CountRequest(const std::string& route, int http_status, double seconds);
  // The exposition text.
  std::string Render() const;

 private:
  static constexpr std::array<double, 10> kBucketsSeconds = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                                             0.05,  0.1,    0.25,  0.5,  1.0};
  mutable std::mutex mu_;
  uint64_t releases_ = 0;
  uint64_t keys_created_ = 0;
  std::map<std::string, uint64_t> denials_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  std::array<uint64_t, kBucketsSeconds.size()> bucket_counts_{};
  uint64_t latency_count_ = 0;
  double latency_sum_ = 0;
  std::map<std::string, uint64_t> release_decisions_;  // reason -> count
  std::array<uint64_t, kBucketsSeconds.size()> release_buckets_{};
  uint64_t release_count_ = 0;
  double release_sum_ = 0;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_METRICS_H_
