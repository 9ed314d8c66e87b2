#include "csp/policy.h"
#include "json/json.h"

#include <nlohmann/json.hpp>

namespace vmseal::csp {

std::string ReleasePolicyToJson(const ReleasePolicy& policy) {
  nlohmann::json j;
  j["required_tags"] = policy.required_tags;
  j["max_verdict_age_seconds"] = policy.max_verdict_age_seconds;
  j["min_trusted_for_seconds"] = policy.min_trusted_for_seconds;
  return DumpJson(j);
}

StatusOr<ReleasePolicy> ReleasePolicyFromJson(const std::string& json) {
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJsonObject(json, "release policy"));
  ReleasePolicy p;
  if (j.contains("required_tags")) {
    if (!j["required_tags"].is_object()) {
      return InvalidArgumentError("release policy required_tags is not an object");
    }
    for (auto& [k, v] : j["required_tags"].items()) {
      if (!v.is_string()) return InvalidArgumentError("release policy tag value is not a string");
      p.required_tags[k] = v.get<std::string>();
    }
  }
  for (auto [name, field] : {std::pair{"max_verdict_age_seconds", &p.max_verdict_age_seconds},
                             std::pair{"min_trusted_for_seconds", &p.min_trusted_for_seconds}}) {
    if (!j.contains(name)) continue;
    if (!j[name].is_number_integer() || j[name].get<int64_t>() < 0) {
      return InvalidArgumentError(std::string("release policy ") + name +
                                  " is not a non-negative integer");
    }
    *field = j[name].get<int64_t>();
  }
  return p;
}

}  // namespace vmseal::csp
