// Host registry and trust inputs of the trusted-compute-pool scheduler.
#ifndef VMSEAL_CSP_HOSTS_H_
#define VMSEAL_CSP_HOSTS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"
#include "csp/clock.h"
#include "csp/state_store.h"

namespace vmseal::csp {

struct HostRegistration {
  // The host's mTLS identity (client certificate subject CN), set by the
  // adapter from the verified certificate, never from the request body.
  std::string host_id;
  // How many VMs the host may run at once (>= 1).
  uint32_t capacity_slots = 1;
  // Placement tags, e.g. {"region": "eu-west"} (sent as "region=eu-west").
  std::map<std::string, std::string> tags;
  // What the host reported (informational; 0 if not given).
  uint32_t vcpus = 0;
  uint64_t memory_mib = 0;
};

struct HostState {
  HostRegistration registration;
  int64_t registered_unix = 0;
  int64_t last_heartbeat_unix = 0;
  // False once the host missed its heartbeat deadline; a heartbeat restores it.
  bool in_pool = false;
};

// Thread-safe.
class HostRegistry {
 public:
  struct Options {
    // A host with no heartbeat for longer than this leaves the pool.
    // Default 30 s.
    int64_t heartbeat_timeout_seconds = 30;
  };
  HostRegistry(const Options& options, const Clock* clock) : options_(options), clock_(clock) {}

  // Makes the registry durable: loads the hosts stored in `store` (their
  // last heartbeat kept, so a host that died while the portal was down
  // leaves the pool at the first ExpireStale) and writes every later
  // change to it. Call once, before use. `store` must outlive the object.
  // DATA_LOSS for a stored record that cannot be read.
  Status AttachStore(StateStore* store);

  // Registers or re-registers (new capacity/tags) a host; it joins the pool.
  // With a store, UNAVAILABLE (and nothing changed) when it cannot be written.
  Status Register(const HostRegistration& registration);
  // NOT_FOUND for an unregistered host.
  Status Heartbeat(const std::string& host_id);
  // Takes hosts whose heartbeat is overdue out of the pool; returns the ids
  // of hosts that left it in this call.
  std::vector<std::string> ExpireStale();
  // All registered hosts, by id.
  std::vector<HostState> List() const;
  StatusOr<HostState> Get(const std::string& host_id) const;
  int64_t heartbeat_timeout_seconds() const { return options_.heartbeat_timeout_seconds; }

 private:
  // Writes `h` to the store (if any).
  Status SaveLocked(const HostState& h);
  // With a store: reads every host again (replicas sharing the store see
  // each other's registrations and heartbeats; hosts are few).
  void SyncLocked() const;

  const Options options_;
  const Clock* const clock_;
  StateStore* store_ = nullptr;
  mutable std::mutex mu_;
  mutable std::map<std::string, HostState> hosts_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_HOSTS_H_
