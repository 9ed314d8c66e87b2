// Loss of trust at the KMS (issue 19, docs/protocol.md §7.2): the portal's
// periodic question "does the host of each running VM still meet the
// image's policy?" and its report of what it did about the ones that do not.
#include <algorithm>

#include "kms/lifecycle.h"
#include "kms/service.h"

namespace vmseal::kms {
namespace {

using json = nlohmann::json;

Status Malformed(const std::string& what) { return InvalidArgumentError("malformed_request: " + what); }

bool OfAlphabet(const std::string& s, size_t max_len, std::string_view extra) {
  return !s.empty() && s.size() <= max_len && std::all_of(s.begin(), s.end(), [&](char c) {
           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  extra.find(c) != std::string_view::npos;
         });
}

StatusOr<std::string> Field(const json& j, const char* name, size_t max_len, std::string_view extra) {
  if (!j.contains(name) || !j[name].is_string()) return Malformed(std::string(name) + " is missing");
  std::string s = j[name].get<std::string>();
  if (!OfAlphabet(s, max_len, extra)) return Malformed(std::string(name) + " has a bad value");
  return s;
}

StatusOr<VmTrustQuery> Query(const json& j) {
  if (!j.is_object()) return Malformed("each vm is an object");
  VmTrustQuery q;
  ASSIGN_OR_RETURN(q.job_id, Field(j, "job_id", 128, "._-"));
  ASSIGN_OR_RETURN(q.tenant, Field(j, "tenant", 128, "._:@-"));
  ASSIGN_OR_RETURN(q.image_id, Field(j, "image_id", 128, "._:@-"));
  ASSIGN_OR_RETURN(q.host_id, Field(j, "host_id", 64, "._-"));
  return q;
}

std::string ReasonOf(const Status& s) {
  const std::string& m = s.message();
  const size_t colon = m.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 40) return "";
  return m.substr(0, colon);
}

}  // namespace

StatusOr<std::vector<VmTrustQuery>> ParseVmTrustQueries(const json& body) {
  if (!body.is_object() || !body.contains("vms") || !body["vms"].is_array()) {
    return Malformed("the body is {\"vms\": [...]}");
  }
  if (body["vms"].size() > kMaxVmTrustQueries) {
    return Malformed("at most " + std::to_string(kMaxVmTrustQueries) + " vms per check");
  }
  std::vector<VmTrustQuery> out;
  for (const json& v : body["vms"]) {
    ASSIGN_OR_RETURN(VmTrustQuery q, Query(v));
    out.push_back(std::move(q));
  }
  return out;
}

json VmTrustAnswersJson(const std::vector<VmTrustAnswer>& answers) {
  json vms = json::array();
  for (const VmTrustAnswer& a : answers) {
    vms.push_back({{"job_id", a.job_id}, {"trusted", a.trusted}, {"reason", a.reason},
                   {"on_trust_loss", a.on_trust_loss}});
  }
  return json{{"vms", vms}};
}

StatusOr<VmTrustEvent> ParseVmTrustEvent(const json& body) {
  VmTrustEvent e;
  ASSIGN_OR_RETURN(e.vm, Query(body));
  ASSIGN_OR_RETURN(e.event, Field(body, "event", 64, "_"));
  if (e.event != "stopped" && e.event != "stop_unanswered") {
    return Malformed("event must be stopped or stop_unanswered");
  }
  if (body.contains("text")) {
    if (!body["text"].is_string()) return Malformed("text must be a string");
    e.text = body["text"].get<std::string>().substr(0, 256);
    for (char& c : e.text) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
    }
  }
  return e;
}

StatusOr<std::vector<VmTrustAnswer>> KmsService::CheckVmTrust(const Caller& caller,
                                                              const std::vector<VmTrustQuery>& vms) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "vm trust check"));
  if (vms.size() > kMaxVmTrustQueries) return Malformed("too many vms");
  const int64_t now = Now();
  std::vector<VmTrustAnswer> out;
  out.reserve(vms.size());
  for (const VmTrustQuery& q : vms) {
    VmTrustAnswer a;
    a.job_id = q.job_id;
    bool registered = false;
    auto policy = PlacementPolicy(q.tenant, q.image_id, &registered);
    if (!policy.ok() && ReasonOf(policy.status()) != "no_policy") return policy.status();
    if (!registered) {
      a.trusted = false;
      a.reason = "unknown_image";
    } else {
      // The placement rule on the host's latest verdict: revoked, unenrolled,
      // a failed verdict, PCRs outside the flavors, evidence too old.
      ASSIGN_OR_RETURN(PlacementResult r, EvaluateHost(policy, q.host_id, now));
      a.trusted = r.eligible;
      a.reason = r.eligible ? "ok" : r.reason;
      if (policy.ok()) {
        const json& p = policy->policy;
        if (p.contains("on_trust_loss") && p["on_trust_loss"].is_string()) {
          a.on_trust_loss = p["on_trust_loss"].get<std::string>();
        }
      }
    }
    if (!a.trusted) {
      RETURN_IF_ERROR(store_->AppendAudit(
          {"vm.trust_loss", "host/" + q.host_id,
           json{{"tenant", q.tenant}, {"image_id", q.image_id}, {"host_id", q.host_id},
                {"job_id", q.job_id}, {"reason", a.reason}, {"on_trust_loss", a.on_trust_loss},
                {"by", caller.name}}}));
    }
    out.push_back(std::move(a));
  }
  return out;
}

Status KmsService::RecordVmTrustEvent(const Caller& caller, const VmTrustEvent& e) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "vm trust event"));
  auto image = store_->GetImage(e.vm.tenant, e.vm.image_id);
  if (!image.ok()) {
    if (image.status().code() != StatusCode::kNotFound) return image.status();
    return NotFoundError("unknown_image: image " + e.vm.image_id + " is not registered for tenant " +
                         e.vm.tenant);
  }
  return store_->AppendAudit(
      {"vm.trust_event", "host/" + e.vm.host_id,
       json{{"tenant", e.vm.tenant}, {"image_id", e.vm.image_id}, {"host_id", e.vm.host_id},
            {"job_id", e.vm.job_id}, {"event", e.event}, {"text", e.text}, {"by", caller.name}}});
}

}  // namespace vmseal::kms
