// The release policy engine: pure functions over a policy document, the
// named PCR flavors and what is known about a host. No I/O, no clock: the
// caller passes "now" and the facts. Fails closed: anything missing,
// malformed or unknown denies.
//
// Policy JSON (docs/api/kms.yaml, CONTRACT.md):
//   {"flavors": {"anyOf": ["good-boot"]} | {"allOf": ["fw", "os"]},
//    "required_tags": ["region=eu-west"],
//    "max_evidence_age_seconds": 300,
//    "history": {"no_failures_within_seconds": 3600},
//    "allow_plain_images": false,
//    "on_trust_loss": "stop" | "report",
//    "min_key_version": 2}
// "flavors" is required; the other keys are optional (absent = no constraint).
//
// Flavor JSON: {"sha256": {"0": "<64 hex>", "7": "<64 hex>"}}. A flavor
// matches a quote when it names at least one PCR and every PCR it names was
// quoted with exactly that value.
#ifndef VMSEAL_KMS_POLICY_H_
#define VMSEAL_KMS_POLICY_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "kms/store.h"

namespace vmseal::kms {

// Checks the shape of a policy document; INVALID_ARGUMENT naming the problem.
Status ValidatePolicy(const nlohmann::json& policy);
// Checks the shape of a flavor's PCR map; INVALID_ARGUMENT naming the problem.
Status ValidateFlavorPcrs(const nlohmann::json& pcrs);

// SHA-256 PCR index -> lowercase hex value, as quoted.
using PcrValues = std::map<uint32_t, std::string>;
// {"sha256": {"<index>": "<hex>"}} for a verdict's details and flavors.
nlohmann::json PcrValuesToJson(const PcrValues& values);
// The inverse (lowercases hex); malformed entries make it fail.
StatusOr<PcrValues> PcrValuesFromJson(const nlohmann::json& pcrs);

// True when `flavor` (its "pcrs" map) matches `quoted`.
bool FlavorMatches(const Flavor& flavor, const PcrValues& quoted);

// Everything the policy looks at.
struct PolicyFacts {
  PcrValues pcrs;
  std::vector<std::string> host_tags;
  // Seconds since the evidence's nonce was issued (or since the verdict, for
  // placement checks).
  int64_t evidence_age_seconds = 0;
  // The host's verdicts (any order); the history rule looks at their times.
  std::vector<Verdict> history;
  int64_t now_unix = 0;
  // The package's customer key version (its tag's keyVersion) for a
  // release; 0 where none is known (placement), which min_key_version skips.
  uint64_t key_version = 0;
};

struct PolicyDecision {
  bool allowed = false;
  // "ok", or a denial reason: no_policy, pcr_policy, tags, evidence_age, history,
  // key_version_too_old.
  std::string reason;
  std::string message;  // one line, no secrets
};

// Evaluates `policy` (already validated, or it denies with no_policy) with
// the flavors it may name (name -> flavor; a missing name never matches).
PolicyDecision EvaluatePolicy(const nlohmann::json& policy,
                              const std::map<std::string, Flavor>& flavors,
                              const PolicyFacts& facts);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_POLICY_H_
