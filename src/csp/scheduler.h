// Trusted-compute-pool placement: which hosts may run an image, and which one
// is chosen. The portal decides liveness (registered, heartbeating) and
// capacity; the KMS decides trust (POST /v1/placement-check applies the
// image's release policy to each host's latest verdict, history and tags).
// Every decision carries the reason each host was taken or skipped.
#ifndef VMSEAL_CSP_SCHEDULER_H_
#define VMSEAL_CSP_SCHEDULER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "csp/clock.h"
#include "csp/hosts.h"
#include "csp/kms_client.h"

namespace vmseal::csp {

struct HostDecision {
  std::string host_id;
  bool eligible = false;
  bool chosen = false;
  // Why the host was skipped (every failed rule), or why it was taken.
  std::vector<std::string> reasons;
  // The KMS's machine reason ("ok", "pcr_policy", ...); empty when the KMS
  // was not asked about this host (it failed a portal-side rule first).
  std::string kms_reason;
  uint32_t load = 0;
  uint32_t capacity_slots = 0;
};

struct Placement {
  // Empty when no host is eligible.
  std::string chosen_host_id;
  // One entry per registered host, by host id.
  std::vector<HostDecision> decisions;
  // When the decision was made (Unix seconds).
  int64_t decided_unix = 0;
  // True when the KMS placement check failed (every candidate skipped).
  bool kms_failed = false;
};

// "host-a: reason; reason | host-b: ..." for logs and job failure reasons.
std::string DescribePlacement(const Placement& placement);

struct PlacementRequest {
  std::string customer_id;
  // The image as the KMS knows it: the tag's imageId (ImageInfo's
  // tagged_image_id), which names its release policy.
  std::string image_id;
};

// Thread-safe (holds no state of its own).
class Scheduler {
 public:
  // All pointers must outlive the object.
  Scheduler(const HostRegistry* hosts, KmsClient* kms, const Clock* clock)
      : hosts_(hosts), kms_(kms), clock_(clock) {}

  // Applies, to every registered host: not in `excluded` (host -> why it
  // refused this job); in the pool (heartbeat fresh); has a free slot (load
  // from `load_by_host`). The hosts that pass are sent to the KMS in one
  // placement check; a host the KMS finds ineligible is skipped with the
  // KMS's reason, and if the KMS cannot be asked every such host is skipped
  // ("KMS placement check failed: ..."): the pool fails closed. Among
  // eligible hosts picks the least loaded (lowest load/capacity, then
  // lowest load, then host id).
  Placement Place(const PlacementRequest& request,
                  const std::map<std::string, uint32_t>& load_by_host,
                  const std::map<std::string, std::string>& excluded) const;

  // Registers at the KMS the grant of a job placed on a host (the release
  // is refused without it). UNAVAILABLE etc. from the KMS.
  Status Grant(const LaunchGrant& grant) const { return kms_->CreateGrant(grant); }

 private:
  const HostRegistry* const hosts_;
  KmsClient* const kms_;
  const Clock* const clock_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_SCHEDULER_H_
