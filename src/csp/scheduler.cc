#include "csp/scheduler.h"

namespace vmseal::csp {

std::string DescribePlacement(const Placement& placement) {
  std::string out;
  for (const HostDecision& d : placement.decisions) {
    if (!out.empty()) out += " | ";
    out += d.host_id + ": ";
    for (size_t i = 0; i < d.reasons.size(); ++i) {
      if (i > 0) out += "; ";
      out += d.reasons[i];
    }
  }
  return out.empty() ? "no hosts registered" : out;
}

Placement Scheduler::Place(const PlacementRequest& request,
                           const std::map<std::string, uint32_t>& load_by_host,
                           const std::map<std::string, std::string>& excluded) const {
  const int64_t now = clock_->NowUnixSeconds();
  Placement placement;
  placement.decided_unix = now;
  std::vector<std::string> ask_kms;
  for (const HostState& h : hosts_->List()) {
    HostDecision d;
    d.host_id = h.registration.host_id;
    d.capacity_slots = h.registration.capacity_slots;
    auto load = load_by_host.find(d.host_id);
    d.load = load == load_by_host.end() ? 0 : load->second;
    std::vector<std::string>& why = d.reasons;
    if (auto ex = excluded.find(d.host_id); ex != excluded.end()) {
      why.push_back("refused this job before: " + ex->second);
    }
    if (!h.in_pool || now - h.last_heartbeat_unix > hosts_->heartbeat_timeout_seconds()) {
      why.push_back("out of the pool: no heartbeat for " +
                    std::to_string(now - h.last_heartbeat_unix) + " s");
    }
    if (d.load >= d.capacity_slots) {
      why.push_back("no free slot (" + std::to_string(d.load) + "/" +
                    std::to_string(d.capacity_slots) + " in use)");
    }
    if (why.empty()) ask_kms.push_back(d.host_id);
    placement.decisions.push_back(std::move(d));
  }

  if (!ask_kms.empty()) {
    auto verdicts = kms_->CheckPlacement(request.customer_id, request.image_id, ask_kms);
    std::map<std::string, HostEligibility> by_host;
    placement.kms_failed = !verdicts.ok();
    if (verdicts.ok()) {
      for (HostEligibility& e : *verdicts) by_host[e.host_id] = std::move(e);
    }
    for (HostDecision& d : placement.decisions) {
      if (!d.reasons.empty()) continue;
      if (!verdicts.ok()) {
        d.reasons.push_back("KMS placement check failed: " + verdicts.status().message());
        continue;
      }
      auto it = by_host.find(d.host_id);
      if (it == by_host.end()) {
        d.kms_reason = "unspecified";
        d.reasons.push_back("KMS gave no verdict for this host");
      } else if (!it->second.eligible) {
        d.kms_reason = it->second.reason;
        d.reasons.push_back("KMS: not eligible (" + it->second.reason + ")");
      } else {
        d.kms_reason = it->second.reason;
        d.eligible = true;
      }
    }
  }

  HostDecision* best = nullptr;
  for (HostDecision& d : placement.decisions) {
    if (!d.eligible) continue;
    if (best == nullptr) {
      best = &d;
      continue;
    }
    // Compare load fractions without division: a/b < c/d  <=>  a*d < c*b.
    uint64_t lhs = uint64_t{d.load} * best->capacity_slots;
    uint64_t rhs = uint64_t{best->load} * d.capacity_slots;
    if (lhs < rhs || (lhs == rhs && d.load < best->load)) best = &d;
  }
  for (HostDecision& d : placement.decisions) {
    if (!d.eligible) continue;
    if (&d == best) {
      d.chosen = true;
      d.reasons.push_back("chosen: KMS eligible (" + d.kms_reason + ") and least loaded (" +
                          std::to_string(d.load) + "/" + std::to_string(d.capacity_slots) + ")");
      placement.chosen_host_id = d.host_id;
    } else {
      d.reasons.push_back("eligible, but more loaded than " + best->host_id + " (" +
                          std::to_string(d.load) + "/" + std::to_string(d.capacity_slots) + ")");
    }
  }
  return placement;
}

}  // namespace vmseal::csp
