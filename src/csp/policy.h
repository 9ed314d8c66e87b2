// The release policy of an image as the portal's scheduler applies it: which
// hosts may be asked to run it. The KMS applies its own, authoritative checks
// before releasing a key; this one only avoids sending jobs to hosts that
// would be refused.
#ifndef VMSEAL_CSP_POLICY_H_
#define VMSEAL_CSP_POLICY_H_

#include <cstdint>
#include <map>
#include <string>

#include "base/status.h"

namespace vmseal::csp {

struct ReleasePolicy {
  // Tags a host must carry with exactly these values (e.g. region=eu-west).
  std::map<std::string, std::string> required_tags;
  // The host's latest KMS verdict must be at most this old. Default 300 s.
  int64_t max_verdict_age_seconds = 300;
  // The host must have been continuously trusted for at least this long
  // (its trust history). Default 0: the latest verdict suffices.
  int64_t min_trusted_for_seconds = 0;
};

// JSON form: {"required_tags":{..},"max_verdict_age_seconds":n,
// "min_trusted_for_seconds":n}; missing fields take the defaults.
std::string ReleasePolicyToJson(const ReleasePolicy& policy);
StatusOr<ReleasePolicy> ReleasePolicyFromJson(const std::string& json);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_POLICY_H_
