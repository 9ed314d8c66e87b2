#include "kms/policy.h"

#include <algorithm>
#include <charconv>
#include <set>

namespace vmseal::kms {
namespace {

using nlohmann::json;

bool IsHex64(const std::string& s) {
  if (s.size() != 64) return false;
  return std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

StatusOr<uint32_t> PcrIndex(const std::string& key) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(key.data(), key.data() + key.size(), v);
  if (key.empty() || ec != std::errc() || p != key.data() + key.size() || v > 23) {
    return InvalidArgumentError("PCR index '" + key + "' is not 0..23");
  }
  return v;
}

Status StringArray(const json& v, const std::string& what) {
  if (!v.is_array()) return InvalidArgumentError(what + " must be an array of strings");
  for (const auto& e : v) {
    if (!e.is_string() || e.get<std::string>().empty()) {
      return InvalidArgumentError(what + " must be an array of non-empty strings");
    }
  }
  return OkStatus();
}

Status NonNegativeInt(const json& v, const std::string& what) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0) {
    return InvalidArgumentError(what + " must be a non-negative integer");
  }
  return OkStatus();
}

PolicyDecision Deny(std::string reason, std::string message) {
  return {false, std::move(reason), std::move(message)};
}

}  // namespace

Status ValidateFlavorPcrs(const json& pcrs) {
  if (!pcrs.is_object() || pcrs.size() != 1 || !pcrs.contains("sha256") ||
      !pcrs["sha256"].is_object() || pcrs["sha256"].empty()) {
    return InvalidArgumentError(
        R"(flavor pcrs must be {"sha256": {"<index>": "<64 hex>", ...}} with at least one PCR)");
  }
  for (const auto& [k, v] : pcrs["sha256"].items()) {
    RETURN_IF_ERROR(PcrIndex(k).status());
    if (!v.is_string() || !IsHex64(v.get<std::string>())) {
      return InvalidArgumentError("PCR " + k + " value must be 64 hex characters");
    }
  }
  return OkStatus();
}

Status ValidatePolicy(const json& policy) {
  if (!policy.is_object()) return InvalidArgumentError("policy must be a JSON object");
  static const std::set<std::string> kKeys = {"flavors", "required_tags", "max_evidence_age_seconds",
                                              "history", "allow_plain_images", "on_trust_loss",
                                              "min_key_version"};
  for (const auto& [k, v] : policy.items()) {
    if (kKeys.count(k) == 0) return InvalidArgumentError("policy: unknown key '" + k + "'");
  }
  // What the portal does with a running VM of the image when its host loses
  // trust or is revoked, or the image is revoked (kms/lifecycle.h).
  if (policy.contains("on_trust_loss") &&
      (!policy["on_trust_loss"].is_string() ||
       (policy["on_trust_loss"] != "stop" && policy["on_trust_loss"] != "report"))) {
    return InvalidArgumentError("policy: 'on_trust_loss' must be \"stop\" or \"report\"");
  }
  if (!policy.contains("flavors")) return InvalidArgumentError("policy: 'flavors' is required");
  const json& f = policy["flavors"];
  if (!f.is_object() || f.size() != 1 || !(f.contains("anyOf") || f.contains("allOf"))) {
    return InvalidArgumentError(R"(policy: 'flavors' must be {"anyOf": [...]} or {"allOf": [...]})");
  }
  const json& names = f.begin().value();
  RETURN_IF_ERROR(StringArray(names, "policy: flavors." + f.begin().key()));
  if (names.empty()) return InvalidArgumentError("policy: flavors list is empty");
  if (policy.contains("required_tags")) {
    RETURN_IF_ERROR(StringArray(policy["required_tags"], "policy: required_tags"));
  }
  if (policy.contains("max_evidence_age_seconds")) {
    RETURN_IF_ERROR(NonNegativeInt(policy["max_evidence_age_seconds"],
                                   "policy: max_evidence_age_seconds"));
  }
  if (policy.contains("history")) {
    const json& h = policy["history"];
    if (!h.is_object()) return InvalidArgumentError("policy: history must be an object");
    for (const auto& [k, v] : h.items()) {
      if (k != "no_failures_within_seconds") {
        return InvalidArgumentError("policy: unknown history key '" + k + "'");
      }
      RETURN_IF_ERROR(NonNegativeInt(v, "policy: history.no_failures_within_seconds"));
    }
  }
  // The oldest customer key version a package of the image may be wrapped
  // under (kms/key_versions.h): an integer >= 1.
  if (policy.contains("min_key_version") &&
      (!policy["min_key_version"].is_number_integer() || policy["min_key_version"].get<int64_t>() < 1)) {
    return InvalidArgumentError("policy: min_key_version must be an integer >= 1");
  }
  if (policy.contains("allow_plain_images") && !policy["allow_plain_images"].is_boolean()) {
    return InvalidArgumentError("policy: allow_plain_images must be a boolean");
  }
  return OkStatus();
}

json PcrValuesToJson(const PcrValues& values) {
  json bank = json::object();
  for (const auto& [i, v] : values) bank[std::to_string(i)] = v;
  return json{{"sha256", bank}};
}

StatusOr<PcrValues> PcrValuesFromJson(const json& pcrs) {
  RETURN_IF_ERROR(ValidateFlavorPcrs(pcrs));
  PcrValues out;
  for (const auto& [k, v] : pcrs["sha256"].items()) {
    ASSIGN_OR_RETURN(uint32_t index, PcrIndex(k));
    out[index] = Lower(v.get<std::string>());
  }
  return out;
}

bool FlavorMatches(const Flavor& flavor, const PcrValues& quoted) {
  auto want = PcrValuesFromJson(flavor.pcrs);
  if (!want.ok() || want->empty()) return false;
  for (const auto& [index, value] : *want) {
    auto it = quoted.find(index);
    if (it == quoted.end() || Lower(it->second) != value) return false;
  }
  return true;
}

PolicyDecision EvaluatePolicy(const json& policy, const std::map<std::string, Flavor>& flavors,
                              const PolicyFacts& facts) {
  if (!ValidatePolicy(policy).ok()) return Deny("no_policy", "the release policy is malformed");

  // The package's key version, when the caller knows it (a release).
  if (policy.contains("min_key_version") && facts.key_version > 0) {
    const int64_t min_version = policy["min_key_version"].get<int64_t>();
    if (static_cast<int64_t>(facts.key_version) < min_version) {
      return Deny("key_version_too_old", "the package is wrapped under key version " +
                                             std::to_string(facts.key_version) + "; the image's policy "
                                             "requires version " + std::to_string(min_version) + " or newer");
    }
  }

  // Flavors.
  const json& f = policy["flavors"];
  const bool any = f.contains("anyOf");
  std::vector<std::string> matched, missed;
  for (const auto& n : f.begin().value()) {
    const std::string name = n.get<std::string>();
    auto it = flavors.find(name);
    bool ok = it != flavors.end() && FlavorMatches(it->second, facts.pcrs);
    (ok ? matched : missed).push_back(name);
  }
  if (any ? matched.empty() : !missed.empty()) {
    std::string list;
    for (const auto& m : missed) list += (list.empty() ? "" : ", ") + m;
    return Deny("pcr_policy", std::string("PCR values match ") + (any ? "none of" : "not all of") +
                                  " the allowed flavors (unmatched: " + list + ")");
  }

  // Tags.
  if (policy.contains("required_tags")) {
    for (const auto& t : policy["required_tags"]) {
      const std::string tag = t.get<std::string>();
      if (std::find(facts.host_tags.begin(), facts.host_tags.end(), tag) == facts.host_tags.end()) {
        return Deny("tags", "host lacks required tag '" + tag + "'");
      }
    }
  }

  // Evidence age.
  if (policy.contains("max_evidence_age_seconds")) {
    const int64_t max_age = policy["max_evidence_age_seconds"].get<int64_t>();
    if (facts.evidence_age_seconds > max_age || facts.evidence_age_seconds < 0) {
      return Deny("evidence_age", "evidence is " + std::to_string(facts.evidence_age_seconds) +
                                      " s old, policy allows " + std::to_string(max_age) + " s");
    }
  }

  // History.
  if (policy.contains("history") && policy["history"].contains("no_failures_within_seconds")) {
    const int64_t window = policy["history"]["no_failures_within_seconds"].get<int64_t>();
    for (const auto& v : facts.history) {
      if (!v.trusted && v.time_unix >= facts.now_unix - window) {
        return Deny("history", "failed attestation (" + v.reason + ") at " +
                                   std::to_string(v.time_unix) + " is within the last " +
                                   std::to_string(window) + " s");
      }
    }
  }
  return {true, "ok", "policy allows"};
}

}  // namespace vmseal::kms
