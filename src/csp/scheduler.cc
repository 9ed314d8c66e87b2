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

Placement Scheduler::Place(const ReleasePolicy& policy,
                           const std::map<std::string, uint32_t>& load_by_host,
                           const std::map<std::string, std::string>& excluded) const {
  const int64_t now = clock_->NowUnixSeconds();
  Placement placement;
  HostDecision* best = nullptr;
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
    auto verdict = trust_->LatestVerdict(d.host_id);
    if (!verdict.ok()) {
      why.push_back("no KMS verdict (" + verdict.status().message() + ")");
    } else if (!verdict->trusted) {
      why.push_back("KMS verdict untrusted: " + verdict->reason);
    } else {
      int64_t age = now - verdict->issued_unix;
      if (age > policy.max_verdict_age_seconds) {
        why.push_back("KMS verdict is " + std::to_string(age) + " s old, policy allows " +
                      std::to_string(policy.max_verdict_age_seconds) + " s");
      }
      int64_t trusted_for = now - verdict->trusted_since_unix;
      if (trusted_for < policy.min_trusted_for_seconds) {
        why.push_back("trusted for " + std::to_string(trusted_for) + " s, policy requires " +
                      std::to_string(policy.min_trusted_for_seconds) + " s");
      }
    }
    for (const auto& [tag, want] : policy.required_tags) {
      auto have = h.registration.tags.find(tag);
      if (have == h.registration.tags.end()) {
        why.push_back("missing tag " + tag + " (policy requires " + want + ")");
      } else if (have->second != want) {
        why.push_back("tag " + tag + "=" + have->second + ", policy requires " + want);
      }
    }
    if (d.load >= d.capacity_slots) {
      why.push_back("no free slot (" + std::to_string(d.load) + "/" +
                    std::to_string(d.capacity_slots) + " in use)");
    }
    d.eligible = why.empty();
    placement.decisions.push_back(std::move(d));
  }
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
      d.reasons.push_back("chosen: eligible and least loaded (" + std::to_string(d.load) + "/" +
                          std::to_string(d.capacity_slots) + ")");
      placement.chosen_host_id = d.host_id;
    } else {
      d.reasons.push_back("eligible, but more loaded than " + best->host_id + " (" +
                          std::to_string(d.load) + "/" + std::to_string(d.capacity_slots) + ")");
    }
  }
  return placement;
}

}  // namespace vmseal::csp
