// Trusted-compute-pool placement: which hosts may run an image under its
// release policy, and which one is chosen. Pure decision logic over the host
// registry, the KMS verdicts and the current load; every decision carries
// the reason each host was taken or skipped.
#ifndef VMSEAL_CSP_SCHEDULER_H_
#define VMSEAL_CSP_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "csp/clock.h"
#include "csp/hosts.h"
#include "csp/policy.h"

namespace vmseal::csp {

struct HostDecision {
  std::string host_id;
  bool eligible = false;
  bool chosen = false;
  // Why the host was skipped (every failed rule), or why it was taken.
  std::vector<std::string> reasons;
  uint32_t load = 0;
  uint32_t capacity_slots = 0;
};

struct Placement {
  // Empty when no host is eligible.
  std::string chosen_host_id;
  // One entry per registered host, by host id.
  std::vector<HostDecision> decisions;
};

// "host-a: reason; reason | host-b: ..." for logs and job failure reasons.
std::string DescribePlacement(const Placement& placement);

// Thread-safe (holds no state of its own).
class Scheduler {
 public:
  // All pointers must outlive the object.
  Scheduler(const HostRegistry* hosts, TrustSource* trust, const Clock* clock)
      : hosts_(hosts), trust_(trust), clock_(clock) {}

  // Applies, to every registered host: in the pool (heartbeat fresh); a KMS
  // verdict exists, is trusted, and is at most policy.max_verdict_age_seconds
  // old; trusted continuously for policy.min_trusted_for_seconds; carries
  // every required tag; has a free slot (load from `load_by_host`); not in
  // `excluded` (host -> why it refused this job). Among eligible hosts picks
  // the least loaded (lowest load/capacity, then lowest load, then host id).
  Placement Place(const ReleasePolicy& policy, const std::map<std::string, uint32_t>& load_by_host,
                  const std::map<std::string, std::string>& excluded) const;

 private:
  const HostRegistry* const hosts_;
  TrustSource* const trust_;
  const Clock* const clock_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_SCHEDULER_H_
