// Portal request bodies (src/csp). The portal's route handlers
// (RegisterPortalRoutes in src/csp/http_api.cc) read fields out of the body
// inline; the callable decoders they share are the body parse
// (ParseJsonObject, as ParseBody calls it) and the release policy decoder
// (ReleasePolicyFromJson, which the upload commit runs on the body's
// "policy"). This target runs those on the body, the policy decoder on the
// whole body too, and checks that an accepted policy round-trips.
#include <cstddef>
#include <cstdint>
#include <string>

#include "csp/policy.h"
#include "fuzz_util.h"
#include "json/json.h"

namespace csp = vmseal::csp;

namespace {

void Policy(const std::string& text) {
  auto policy = csp::ReleasePolicyFromJson(text);
  if (!policy.ok()) return;
  auto again = csp::ReleasePolicyFromJson(csp::ReleasePolicyToJson(*policy));
  if (!again.ok() || again->required_tags != policy->required_tags ||
      again->max_verdict_age_seconds != policy->max_verdict_age_seconds ||
      again->min_trusted_for_seconds != policy->min_trusted_for_seconds) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(vmseal::fuzz::AsText(data, size));
  Policy(text);
  auto body = vmseal::ParseJsonObject(text, "request body");
  if (!body.ok()) return 0;
  auto it = body->find("policy");
  if (it != body->end()) Policy(vmseal::DumpJson(*it));
  return 0;
}
