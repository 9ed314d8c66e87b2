#include "csp/hosts.h"

#include <spdlog/spdlog.h>

namespace vmseal::csp {

Status HostRegistry::Register(const HostRegistration& r) {
  if (r.host_id.empty() || r.host_id.size() > 256) {
    return InvalidArgumentError("host id must be 1 to 256 characters");
  }
  if (r.capacity_slots < 1 || r.capacity_slots > 4096) {
    return InvalidArgumentError("host capacity must be 1 to 4096 slots");
  }
  std::lock_guard<std::mutex> lock(mu_);
  int64_t now = clock_->NowUnixSeconds();
  HostState& h = hosts_[r.host_id];
  if (h.registered_unix == 0) h.registered_unix = now;
  h.registration = r;
  h.last_heartbeat_unix = now;
  h.in_pool = true;
  spdlog::info("host registered host={} capacity={}", r.host_id, r.capacity_slots);
  return OkStatus();
}

Status HostRegistry::Heartbeat(const std::string& host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) return NotFoundError("host is not registered");
  it->second.last_heartbeat_unix = clock_->NowUnixSeconds();
  if (!it->second.in_pool) spdlog::info("host rejoined the pool host={}", host_id);
  it->second.in_pool = true;
  return OkStatus();
}

std::vector<std::string> HostRegistry::ExpireStale() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t now = clock_->NowUnixSeconds();
  std::vector<std::string> dropped;
  for (auto& [id, h] : hosts_) {
    if (h.in_pool && now - h.last_heartbeat_unix > options_.heartbeat_timeout_seconds) {
      h.in_pool = false;
      dropped.push_back(id);
      spdlog::warn("host left the pool host={}: no heartbeat for {} s", id,
                   now - h.last_heartbeat_unix);
    }
  }
  return dropped;
}

std::vector<HostState> HostRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<HostState> out;
  for (const auto& [id, h] : hosts_) out.push_back(h);
  return out;
}

StatusOr<HostState> HostRegistry::Get(const std::string& host_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) return NotFoundError("host is not registered");
  return it->second;
}

}  // namespace vmseal::csp
