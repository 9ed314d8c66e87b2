#include "csp/hosts.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include <nlohmann/json.hpp>

namespace vmseal::csp {
namespace {

// The host record of docs/format/portal-state.md §3.
std::string HostToRecord(const HostState& h) {
  nlohmann::json tags = nlohmann::json::object();
  for (const auto& [k, v] : h.registration.tags) tags[k] = v;
  return nlohmann::json{{"v", 1},
                        {"host_id", h.registration.host_id},
                        {"capacity_slots", h.registration.capacity_slots},
                        {"tags", tags},
                        {"vcpus", h.registration.vcpus},
                        {"memory_mib", h.registration.memory_mib},
                        {"registered_unix", h.registered_unix},
                        {"last_heartbeat_unix", h.last_heartbeat_unix},
                        {"in_pool", h.in_pool}}
      .dump();
}

StatusOr<HostState> HostFromRecord(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != 1) return DataLossError("unreadable host record");
  try {
    HostState h;
    h.registration.host_id = j.at("host_id").get<std::string>();
    h.registration.capacity_slots = j.at("capacity_slots").get<uint32_t>();
    for (const auto& [k, v] : j.at("tags").items()) h.registration.tags[k] = v.get<std::string>();
    h.registration.vcpus = j.value("vcpus", 0u);
    h.registration.memory_mib = j.value("memory_mib", uint64_t{0});
    h.registered_unix = j.at("registered_unix").get<int64_t>();
    h.last_heartbeat_unix = j.at("last_heartbeat_unix").get<int64_t>();
    h.in_pool = j.at("in_pool").get<bool>();
    return h;
  } catch (const nlohmann::json::exception&) {
    return DataLossError("unreadable host record");
  }
}

}  // namespace

Status HostRegistry::AttachStore(StateStore* store) {
  ASSIGN_OR_RETURN(std::vector<StoredHost> rows, store->LoadHosts());
  std::lock_guard<std::mutex> lock(mu_);
  for (const StoredHost& row : rows) {
    auto h = HostFromRecord(row.record_json);
    if (!h.ok()) return DataLossError("host " + row.host_id + ": " + h.status().message());
    // Hosts heartbeating while the portal was down had no one to tell: each
    // host in the pool gets one full timeout from the restart.
    if (h->in_pool && h->last_heartbeat_unix < clock_->NowUnixSeconds()) {
      h->last_heartbeat_unix = clock_->NowUnixSeconds();
      store_ = store;
      (void)SaveLocked(*h);  // written, so that other replicas see it too
    }
    hosts_[h->registration.host_id] = *std::move(h);
  }
  store_ = store;
  if (!rows.empty()) spdlog::info("host registry loaded {} hosts from the store", rows.size());
  return OkStatus();
}

void HostRegistry::SyncLocked() const {
  if (store_ == nullptr) return;
  auto rows = store_->LoadHosts();
  if (!rows.ok()) {
    spdlog::error("host registry: cannot read hosts: {}", rows.status().ToString());
    return;
  }
  for (const StoredHost& row : *rows) {
    auto h = HostFromRecord(row.record_json);
    if (h.ok()) hosts_[row.host_id] = *std::move(h);
  }
}

Status HostRegistry::SaveLocked(const HostState& h) {
  if (store_ == nullptr) return OkStatus();
  Status s = store_->PutHost({h.registration.host_id, h.last_heartbeat_unix, HostToRecord(h)});
  if (!s.ok()) {
    spdlog::error("host registry: cannot store host={}: {}", h.registration.host_id, s.ToString());
    return UnavailableError("the portal cannot record the host now; retry");
  }
  return OkStatus();
}

Status HostRegistry::Register(const HostRegistration& r) {
  if (r.host_id.empty() || r.host_id.size() > 256) {
    return InvalidArgumentError("host id must be 1 to 256 characters");
  }
  if (r.capacity_slots < 1 || r.capacity_slots > 4096) {
    return InvalidArgumentError("host capacity must be 1 to 4096 slots");
  }
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  int64_t now = clock_->NowUnixSeconds();
  auto existing = hosts_.find(r.host_id);
  HostState h = existing != hosts_.end() ? existing->second : HostState{};
  if (h.registered_unix == 0) h.registered_unix = now;
  h.registration = r;
  h.last_heartbeat_unix = now;
  h.in_pool = true;
  // Stored first: on a store error nothing changes.
  RETURN_IF_ERROR(SaveLocked(h));
  hosts_[r.host_id] = h;
  spdlog::info("host registered host={} capacity={}", r.host_id, r.capacity_slots);
  return OkStatus();
}

Status HostRegistry::Heartbeat(const std::string& host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) return NotFoundError("host is not registered");
  HostState h = it->second;
  h.last_heartbeat_unix = clock_->NowUnixSeconds();
  h.in_pool = true;
  RETURN_IF_ERROR(SaveLocked(h));
  if (!it->second.in_pool) spdlog::info("host rejoined the pool host={}", host_id);
  it->second = h;
  return OkStatus();
}

std::vector<std::string> HostRegistry::ExpireStale() {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  int64_t now = clock_->NowUnixSeconds();
  std::vector<std::string> dropped;
  for (auto& [id, h] : hosts_) {
    if (h.in_pool && now - h.last_heartbeat_unix > options_.heartbeat_timeout_seconds) {
      h.in_pool = false;
      // Left the pool in memory even if the store fails: a stale host is
      // never placed on; a restart re-derives this from the heartbeat.
      (void)SaveLocked(h);
      dropped.push_back(id);
      spdlog::warn("host left the pool host={}: no heartbeat for {} s", id,
                   now - h.last_heartbeat_unix);
    }
  }
  return dropped;
}

std::vector<HostState> HostRegistry::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  std::vector<HostState> out;
  for (const auto& [id, h] : hosts_) out.push_back(h);
  return out;
}

StatusOr<HostState> HostRegistry::Get(const std::string& host_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  auto it = hosts_.find(host_id);
  if (it == hosts_.end()) return NotFoundError("host is not registered");
  return it->second;
}

}  // namespace vmseal::csp
