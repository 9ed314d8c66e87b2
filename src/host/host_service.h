// The `vmseal host serve` loop: keeps the host enrolled, registered,
// heartbeating and freshly attested, and runs the jobs the portal places on
// it through the host agent, reporting every phase (or the refusal reason)
// back to the portal.
//
// Three threads: the caller's (Run) polls jobs, re-attests, runs jobs one at
// a time (every TPM use happens there) and carries out the portal's VM
// commands (stop, delete); a second one sends heartbeats, so a long job does
// not make the portal drop the host from the pool; a third reports VM ends
// (OnVmEnded) to the portal as they happen, retrying while it is down.
//
// VM ends reach the portal by two paths (docs/protocol.md §6): at once,
// from the VM manager's on_end (OnVmEnded); and by reconciliation at every
// poll, where the portal lists the VMs it places here and the host reports
// each one that is not running (ended while the agent was down, stopped by
// the operator CLI, a report lost with the portal down).
#ifndef VMSEAL_HOST_HOST_SERVICE_H_
#define VMSEAL_HOST_HOST_SERVICE_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <array>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "host/host_agent.h"
#include "host/portal_client.h"

namespace vmseal::host {

struct HostServiceOptions {
  // What the host registers with (capacity, tags).
  HostRegistrationInfo registration;
  // Period of heartbeats to the portal. Default 10 s (the portal drops a
  // host after 30 s of silence).
  int64_t heartbeat_interval_ms = 10000;
  // Period of re-attestation to the KMS, which keeps the host's trust
  // history (read by the scheduler) fresh. Default 60 s.
  int64_t reattest_interval_ms = 60000;
  // Period of job polls. Default 2 s.
  int64_t poll_interval_ms = 2000;
  // Pause before retrying start-up (enrollment, registration) when the KMS
  // or the portal cannot be reached. Default 2 s.
  int64_t retry_delay_ms = 2000;
  // A file recording that this TPM is enrolled with the KMS: it holds
  // `enrollment_id` (e.g. a digest of the KMS url and the AK). When it
  // matches, start-up skips enrollment. Empty path: enroll on every start.
  std::string enrollment_marker_path;
  std::string enrollment_id;
  Env* env = nullptr;  // default Env::Default()
};

// The machine-readable reason the host gives the portal for a failed job:
// the reason a KMS denial or the agent names in front of its message
// ("pcr_policy: ..." -> "pcr_policy"), else one derived from the phase the
// job failed in: package_rejected / fetch_failed (fetching), kms_unavailable
// / release_denied / attestation_failed (attesting), decrypt_failed,
// launch_failed.
std::string RefusalReasonFor(const Status& status, JobPhase failed_in);

// Counters for tests and logs.
struct HostServiceStats {
  int heartbeats = 0;
  int registrations = 0;
  int enrollments = 0;
  int reattestations = 0;
  int jobs_started = 0;
  int jobs_running = 0;
  int jobs_refused = 0;
  // VM ends and deletions the portal accepted, and VM commands carried out.
  int vm_ends_reported = 0;
  int vm_deletes_reported = 0;
  int vm_commands = 0;
};

// Thread-safe: Stop may be called from any thread; the other methods from
// the thread that runs the loop (tests call the *Once steps directly).
class HostService {
 public:
  // Pointers must outlive the service.
  static StatusOr<std::unique_ptr<HostService>> Create(const HostServiceOptions& options,
                                                       JobRunner* agent, PortalApi* portal);
  ~HostService();

  // Enrolls if needed, registers with the portal and attests once. Errors
  // are returned as they come (Run retries them).
  Status Start();
  // Runs Start (retried until it succeeds or Stop), then the loops, until
  // Stop. A job in progress is finished first; VMs keep running.
  Status Run();
  // Asks Run to return. Idempotent.
  void Stop();
  bool stopping() const;

  // One heartbeat; a portal that forgot the host gets a registration.
  Status HeartbeatOnce();
  // One attestation; a KMS that forgot the host ("not_enrolled") gets a
  // new enrollment first.
  Status ReattestOnce();
  // Sends refusals still owed to the portal, polls, carries out the VM
  // commands, reports VM ends, and runs each new job. Returns how many jobs
  // it ran.
  StatusOr<int> PollOnce();

  // A VM of this host ended (VmManagerOptions::on_end): the end is owed to
  // the portal and sent at once by Run's reporter thread (or FlushVmEnds).
  // Thread-safe; does not block on the network.
  void OnVmEnded(const std::string& vm_name, const vm::VmEnd& end);
  // Sends the owed VM ends; UNAVAILABLE leaves the rest owed.
  Status FlushVmEnds();

  HostServiceStats stats() const;

 private:
  HostService(HostServiceOptions options, JobRunner* agent, PortalApi* portal);
  Status EnsureEnrolled(bool force);
  void RunJob(const PortalJob& job);
  // Sends the refusals owed to the portal; UNAVAILABLE leaves them owed.
  Status FlushRefusals();
  // Waits up to `ms` or until Stop; false when stopping.
  bool SleepFor(int64_t ms);
  void HeartbeatLoop();
  void VmEndLoop();
  // Carries out the portal's commands for the VMs it places here.
  void ApplyVmCommands(const std::vector<PortalVmCommand>& commands);
  // Sends the first chunk_auth_failed event of each job to the portal
  // (integrity failures reach the customer's job status); an event the
  // portal could not be told stays owed until the next poll.
  void ReportDiskEvents();
  // Relays the tail of each running VM's serial console to the portal when
  // it grew (docs/console.md); failures wait for the next poll.
  void RelayConsoles();
  void OweVmEnd(const std::string& vm_name, const std::string& reason, const std::string& text,
                int64_t run);

  struct OwedRefusal {
    std::string job_id, reason, message;
  };
  struct OwedVmEnd {
    std::string reason, text;
    uint64_t seq = 0;  // a newer end of the same VM replaces an unsent one
    int64_t run = 0;   // the job's run the VM was launched for
  };

  const HostServiceOptions options_;
  Env* const env_;
  JobRunner* const agent_;
  // Disk events owed to the portal (job id, event, text) and the (job id,
  // event) pairs already told; guarded by mu_.
  std::vector<std::array<std::string, 3>> owed_disk_events_;
  std::set<std::string> told_disk_events_;
  // Per VM, the serial log size last relayed to the portal; guarded by mu_.
  std::map<std::string, uint64_t> console_relayed_bytes_;
  PortalApi* const portal_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  HostServiceStats stats_;
  // Jobs this process has taken (the portal lists a job until its first
  // progress report; never run one twice).
  std::set<std::string> taken_;
  std::deque<OwedRefusal> owed_refusals_;
  // By VM name.
  std::map<std::string, OwedVmEnd> owed_vm_ends_;
  // VMs seen not running with no recorded end, and since when.
  std::map<std::string, std::chrono::steady_clock::time_point> unrecorded_since_;
  uint64_t vm_end_seq_ = 0;
  bool flushing_vm_ends_ = false;
};

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_HOST_SERVICE_H_
