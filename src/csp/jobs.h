// Provisioning jobs: a launch is a job with a visible state machine
//   queued -> placed -> fetching -> attesting -> decrypting -> running
//   any launch state -> failed(reason)
// and, once the job's VM runs, its lifecycle (docs/protocol.md §6):
//   running -> stopping (customer stop) -> stopped(end_reason)
//   running -> stopped(end_reason)      (the VM ended on the host: guest
//                                        power-off, qemu killed, operator)
//   stopped -> queued (customer start: placed again on the VM's host, with a
//                      fresh KMS grant)
//   any -> deleting (customer delete; the host removes the VM) -> deleted
// The portal places it on a host of the trusted compute pool (scheduler.h);
// the host pulls it and reports progress. When a host refuses (unencrypted
// image, attestation denied, launch failed) or stops heartbeating, the job
// moves to the next eligible host, up to a bound, then fails with every
// host's reason.
#ifndef VMSEAL_CSP_JOBS_H_
#define VMSEAL_CSP_JOBS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "csp/accounts.h"
#include "csp/clock.h"
#include "csp/hosts.h"
#include "csp/images.h"
#include "csp/scheduler.h"
#include "csp/state_store.h"

namespace vmseal::csp {

enum class JobState {
  kQueued, kPlaced, kFetching, kAttesting, kDecrypting, kRunning, kFailed,
  // The customer asked to stop the running VM; its host has not yet
  // reported the end. The slot stays in use until it does.
  kStopping,
  // The VM ended (end_reason says why); the slot is free. Start runs it again.
  kStopped,
  // The customer asked to delete the VM; its host has not yet reported that
  // the VM and its files are gone.
  kDeleting,
  // The VM and its files are gone from the host (or it never ran).
  kDeleted,
};

// What the customer wants of a job's VM.
enum class VmWanted { kRunning, kStopped, kDeleted };
// "running", "stopped", "deleted".
std::string_view VmWantedName(VmWanted wanted);

// "queued", "placed", ..., "failed", "stopping", "stopped", "deleting", "deleted".
std::string_view JobStateName(JobState state);
StatusOr<JobState> JobStateFromName(std::string_view name);

// Why a host gave a job back.
enum class RefusalKind { kUnencryptedImage, kAttestationDenied, kLaunchFailed, kHostLost };
// "unencrypted image", ... (for people).
std::string_view RefusalKindName(RefusalKind kind);
// "unencrypted_image", "attestation_denied", "launch_failed", "host_lost".
std::string_view RefusalKindReason(RefusalKind kind);
// True for a machine reason a host may report: [a-z][a-z0-9_]{0,63}
// (e.g. pcr_policy, kms_unavailable, decrypt_failed).
bool IsMachineReason(std::string_view reason);

struct JobAttempt {
  std::string host_id;
  // Empty while the attempt is in progress; then "<why>: <host's detail>".
  std::string refusal;
  // The refusal's machine reason (e.g. pcr_policy, host_lost); empty while
  // the attempt is in progress.
  std::string reason;
};

struct Job {
  std::string job_id;
  std::string customer_id;
  std::string image_id;
  // Object-store key of the package, for the host to fetch.
  std::string object_key;
  // The package's size and hex SHA-256 (hosts check what they fetch).
  uint64_t package_size_bytes = 0;
  std::string package_sha256_hex;
  // The image id in the package's encryption tag.
  std::string tagged_image_id;
  JobState state = JobState::kQueued;
  // The host of the current attempt (placed .. running); empty otherwise.
  std::string host_id;
  std::vector<JobAttempt> attempts;
  // Set when failed: every host's reason.
  std::string failure_reason;
  // The last placement decision, with the reason for every host.
  Placement last_placement;
  // Every placement decision of this job, oldest first (at most
  // kMaxPlacementLog; older ones are dropped).
  std::vector<Placement> placements;
  // Reported by the host: the VM's name and serial log, once known.
  std::string vm_name;
  std::string serial_log_path;
  // The customer's wanted state of the VM (stop, start and delete set it).
  VmWanted wanted = VmWanted::kRunning;
  // The host that holds the VM (set when it reports running; kept after the
  // VM ends, for start and delete; cleared when deleted).
  std::string vm_host_id;
  // Why the VM ended (stopped and deleted jobs), a machine reason:
  // stopped_by_customer, stopped_by_operator, guest_poweroff, exited, killed,
  // unknown, vm_missing, host_lost; and the host's line for people.
  std::string end_reason;
  std::string end_text;
  int64_t ended_unix = 0;
  // Set by a start: the run may only be placed on this host (the VM's).
  std::string pinned_host_id;
  // Index in `attempts` of the current run's first attempt (a start begins a
  // new run, whose refusals are counted afresh).
  size_t run_first_attempt = 0;
  // Runs of the job: 1 for the launch, +1 for each start. The current run's
  // number goes to its host ("run"), which names it in its ended report.
  int runs = 1;
  // Integrity failures the job's host reported for its disks (a chunk that
  // failed authentication: the guest got an I/O error), one line per
  // event kind, "<event>: <host's text>", at most kMaxDiskEvents.
  std::vector<std::string> disk_events;
  // Loss of trust in the VM's host (csp/lifecycle.h TrustWatch,
  // docs/protocol.md §7.2), one line per event kind, "<event>: <text>":
  // trust_lost (with the KMS's reason and the image's on_trust_loss),
  // stopped, stop_unanswered. At most kMaxDiskEvents.
  std::vector<std::string> trust_events;
  // When the portal learnt that trust in the VM's host was lost; 0 if never.
  int64_t trust_lost_unix = 0;
  // The host told to stop the VM for lost trust (on_trust_loss "stop"),
  // kept so that TrustWatch still follows the stop up ("stopped",
  // "stop_unanswered") after a portal restart; "" if none was ordered.
  std::string trust_stop_host_id;
  int64_t created_unix = 0;
  int64_t updated_unix = 0;
  // The lease of the current attempt's host (placed .. running): the host
  // holds the job until then; every heartbeat, poll or progress report of
  // that host renews it. Once it has passed, the attempt ends (host_lost,
  // "lease expired") and the job is placed on another trusted host. 0 when
  // no host holds the job.
  int64_t lease_expires_unix = 0;
  // Portal replicas sharing one store: the replica asking the KMS for this
  // job's grant, and until when its claim holds (docs/protocol.md §6.3).
  std::string claim_owner;
  int64_t claim_until_unix = 0;
  // The store's version of this job when it was read (not in the record).
  int64_t store_version = 0;
};

// The job's durable record (docs/format/portal-state.md §2) and back.
// JobFromRecord: DATA_LOSS for a record it cannot read.
std::string JobToRecord(const Job& job);
StatusOr<Job> JobFromRecord(const std::string& record_json);

struct LaunchRequest {
  std::string image_id;
};

inline constexpr size_t kMaxPlacementLog = 16;
inline constexpr size_t kMaxDiskEvents = 8;

// A VM of a host as the portal knows it, with what the host must do
// (GET /v1/hosts/jobs "vms").
struct HostVmCommand {
  std::string job_id;
  std::string vm_name;
  // "run": the VM should be running (a host whose VM is not reports its
  // end); "stop": stop it and report the end; "delete": stop it, remove it
  // and its files, and report it deleted.
  std::string action;
};

// POST /v1/hosts/vms/{vm}/ended: a VM of this host ended.
struct VmEndedReport {
  std::string vm_name;
  // The host's machine reason (IsMachineReason): stopped, guest_poweroff,
  // exited, killed, unknown, vm_missing.
  std::string reason;
  // One line for people (e.g. "killed by signal 9").
  std::string text;
  // The run of the job the VM belonged to (the "run" the host was given);
  // 0: not told, which counts as run 1. A report for another run than the
  // job's current one (a late report of an earlier run) changes nothing.
  int64_t run = 0;
};

// POST /v1/hosts/jobs/{id}/events: a disk of the job's VM reported an event.
struct DiskEventReport {
  std::string job_id;
  // Machine name (IsMachineReason), e.g. chunk_auth_failed.
  std::string event;
  // One line for people (which disk, which chunk); at most 256 bytes kept.
  std::string text;
};

struct ProgressReport {
  std::string job_id;
  // fetching, attesting, decrypting or running; must move forward.
  JobState state = JobState::kFetching;
  // Optional; kept when non-empty.
  std::string vm_name;
  std::string serial_log_path;
};

struct RefusalReport {
  std::string job_id;
  RefusalKind kind = RefusalKind::kLaunchFailed;
  // The host's one-line detail (e.g. the KMS denial reason).
  std::string detail;
  // The host's machine reason (IsMachineReason), e.g. pcr_policy. When set
  // it names the refusal instead of `kind`; empty: RefusalKindReason(kind).
  std::string reason;
};

// Thread-safe.
class JobManager {
 public:
  struct Options {
    // Most hosts one job is tried on before it fails. Default 3.
    int max_attempts = 3;
    // A job that finds no eligible host stays queued this long, retried at
    // each Tick, then fails with the placement reasons. Default 300 s.
    int64_t queue_timeout_seconds = 300;
    // Lifetime of the KMS grant registered when a job is placed on a host:
    // the host must have its key released within it. Default 600 s.
    int64_t grant_ttl_seconds = 600;
    // Lease a host gets on a job it is given, renewed by its heartbeats,
    // polls and progress reports. Default 30 s.
    int64_t lease_seconds = 30;
  };
  // All pointers must outlive the object.
  JobManager(const Options& options, ImageService* images, HostRegistry* hosts,
             const Scheduler* scheduler, const Clock* clock)
      : options_(options), images_(images), hosts_(hosts), scheduler_(scheduler), clock_(clock) {}

  // Makes the jobs durable: loads every job stored in `store` (queued jobs
  // are placed at the next Tick; jobs on a host keep their host and lease)
  // and writes each later state change of a job to it, one transaction per
  // change. Call once, before use. `store` must outlive the object.
  // DATA_LOSS for a stored record that cannot be read.
  Status AttachStore(StateStore* store);

  // Customer side. Launch looks the image up as `who` (so another customer's
  // image is NOT_FOUND) and places the job at once if a host is eligible.
  StatusOr<Job> Launch(const Principal& who, const LaunchRequest& request);
  // NOT_FOUND "no such job" if missing or another customer's.
  StatusOr<Job> GetJob(const Principal& who, const std::string& job_id);
  StatusOr<std::vector<Job>> ListJobs(const Principal& who);
  // For live views (csp/job_events.h). ChangeCount() grows whenever a job
  // this replica holds may have changed: a write by this replica, or
  // another replica's write read from the store. Reading it is one atomic
  // load. PeekJob is GetJob from memory only: no read of the store (the
  // caller calls SyncWithStore, once for all its views). SyncWithStore
  // reads the jobs other replicas wrote since the last look (one store
  // query; nothing when no store is attached).
  uint64_t ChangeCount() const { return changes_.load(std::memory_order_acquire); }
  StatusOr<Job> PeekJob(const Principal& who, const std::string& job_id);
  void SyncWithStore();
  // Why each host would be taken or skipped for this image now.
  StatusOr<Placement> ExplainImagePlacement(const Principal& who, const std::string& image_id);

  // Operator side: every job.
  std::vector<Job> ListAllJobs();
  StatusOr<Job> GetAnyJob(const std::string& job_id);
  // The job of `host_id` whose VM is `vm_name` (any state); NOT_FOUND
  // otherwise, also when the VM is another host's.
  StatusOr<Job> GetHostVm(const std::string& host_id, const std::string& vm_name);

  // Host side; `host_id` is the caller's mTLS identity. Jobs of another host
  // are NOT_FOUND.
  //
  // The host's poll: its jobs waiting to be launched (placed). The poll
  // renews the lease of every job on the host (written at most every half
  // lease). A renewal whose write fails is tried once more at once; if that
  // fails too it is logged, counted (LeaseRenewalFailures) and the poll
  // answers UNAVAILABLE "store_unavailable: ..." naming the job: the host
  // learns that the portal holds no renewed lease for it (the lease stays
  // what the store holds, and expires from there unless a later poll,
  // heartbeat or progress report renews it).
  StatusOr<std::vector<Job>> PollJobs(const std::string& host_id);
  // PollJobs for callers that only look at the jobs (tests): empty when the
  // poll failed (the failure is still logged and counted).
  std::vector<Job> PendingJobs(const std::string& host_id);
  // Lease renewals (host polls and heartbeats) whose store write failed,
  // since start: /metrics vmseal_portal_lease_renewal_failures_total.
  uint64_t LeaseRenewalFailures() const {
    return lease_renewal_failures_.load(std::memory_order_relaxed);
  }
  StatusOr<Job> ReportProgress(const std::string& host_id, const ProgressReport& report);
  StatusOr<Job> ReportRefusal(const std::string& host_id, const RefusalReport& report);

  // The host reports a disk event of a job it holds (host_id or
  // vm_host_id): the first report of each event kind is recorded in
  // disk_events and logged; repeats change nothing. NOT_FOUND "no such job"
  // for another host's or no job; INVALID_ARGUMENT for a bad event name.
  StatusOr<Job> ReportDiskEvent(const std::string& host_id, const DiskEventReport& report);

  // With replicas sharing a store, the calls below that change a job
  // answer ABORTED "conflict: ..." (409) when another replica changed the
  // job at the same moment: nothing of this call was kept; retry.

  // The VMs the portal places on `host_id` (running, stopping, deleting) with
  // the action the host must take for each.
  std::vector<HostVmCommand> VmCommands(const std::string& host_id);
  // The host reports that a VM of its ended: the job is stopped with the
  // reason (a customer stop reads stopped_by_customer, any other host stop
  // stopped_by_operator) and its slot is free at once. A repeated report is
  // OK and changes nothing. NOT_FOUND "no such vm on this host" when no job
  // of this host has that VM; INVALID_ARGUMENT for a bad reason. A report
  // naming another run than the current one is OK and changes nothing.
  StatusOr<Job> ReportVmEnded(const std::string& host_id, const VmEndedReport& report);
  // The host reports that a VM of its and its files are gone: the job is
  // deleted (a VM the customer did not delete also ends, "vm_missing").
  // A repeated report is OK. NOT_FOUND as for ReportVmEnded.
  StatusOr<Job> ReportVmDeleted(const std::string& host_id, const std::string& vm_name);

  // Customer side; `vm` is the job id or its VM name. Another customer's (or
  // no such) VM is NOT_FOUND "no such vm". Each records the wanted state; the
  // VM's host learns it at its next poll.
  // Stop: a running VM becomes stopping (stopped once its host reports the
  // end); a queued job is stopped at once; a job being launched is stopped
  // once it runs. Stopped or stopping: OK, unchanged. FAILED_PRECONDITION
  // "bad_state: ..." for failed, deleting or deleted jobs.
  StatusOr<Job> StopVm(const Principal& who, const std::string& vm);
  // Start: a stopped VM runs again. Its key was gone with it, so the job is
  // placed again (on the VM's host, if it ran on one) with a fresh KMS grant
  // and goes through release and launch as a new run. Running or being
  // launched: OK, unchanged. FAILED_PRECONDITION "bad_state: ..." otherwise.
  StatusOr<Job> StartVm(const Principal& who, const std::string& vm);
  // Delete: the VM is stopped and removed with its files by its host
  // (deleting, then deleted); a job with no VM on a host is deleted at once.
  // Deleting or deleted: OK, unchanged.
  StatusOr<Job> DeleteVm(const Principal& who, const std::string& vm);

  // Loss of trust in the host of the job's VM (csp/lifecycle.h TrustWatch):
  // records `event` ("trust_lost: ...") in trust_events and, with `stop`,
  // has the host stop the VM and remove its overlay, cache and files, as a
  // delete does (the job ends "trust_lost"). Only for a running VM on
  // `host_id`: FAILED_PRECONDITION "bad_state" otherwise, and nothing
  // changes. Once per job (a repeat answers the job unchanged).
  StatusOr<Job> RecordTrustLoss(const std::string& job_id, const std::string& host_id,
                                const std::string& event, bool stop);
  // Adds `event` ("<kind>: <text>") to the job's trust_events, once per
  // kind. NOT_FOUND "no such job".
  StatusOr<Job> AddTrustEvent(const std::string& job_id, const std::string& event);
  // Copies of the jobs that have not ended.
  std::vector<Job> ActiveJobs();

  // Periodic work: takes hosts with overdue heartbeats out of the pool and
  // retries their jobs elsewhere; retries or times out queued jobs.
  void Tick();

 private:
  // A placement decided outside the lock (issue 16: no KMS call under mu_).
  // Reserved under the lock by BeginPlaceLocked, asked of the KMS by
  // PlaceUnlocked, committed under the lock only if it is still the job's
  // newest placement and the job still waits for one; otherwise dropped.
  struct PlacementTicket {
    std::string job_id;
    uint64_t sequence = 0;
    PlacementRequest request;
    std::map<std::string, std::string> excluded;
    int refused = 0;
    // > 0: the job's updated_unix to keep if it stays queued (Tick's
    // retries do not restart the queue timeout).
    int64_t queued_since = 0;
  };
  // Fails `job` if it has used up its attempts; otherwise marks it as being
  // placed and returns the ticket to hand to PlaceUnlocked.
  std::optional<PlacementTicket> BeginPlaceLocked(Job& job);
  // With `lock` held on entry and exit: asks the scheduler and the KMS with
  // the lock released, then commits under it. Returns the placement (its
  // kms_failed tells Tick to stop asking).
  Placement PlaceUnlocked(const PlacementTicket& ticket, std::unique_lock<std::mutex>& lock);
  // The ticket's job if the ticket is still its newest placement and the job
  // is still queued and wanted running; else null (and the ticket dropped).
  Job* StillPlacingLocked(const PlacementTicket& ticket);
  StatusOr<Job> GetAnyJobLocked(const std::string& job_id) const;
  // Ends the current attempt with machine `reason` and text `why`, moves on;
  // a ticket when the job is to be placed again.
  std::optional<PlacementTicket> RefuseLocked(Job& job, const std::string& reason,
                                             const std::string& why);
  std::map<std::string, uint32_t> LoadLocked() const;
  // The public calls of the same name; the public ones answer ABORTED
  // "conflict" when the job's write lost to another replica's.
  StatusOr<Job> ReportProgressLocked(const std::string& host_id, const ProgressReport& report);
  StatusOr<Job> ReportRefusalLocked(const std::string& host_id, const RefusalReport& report);
  StatusOr<Job> ReportDiskEventLocked(const std::string& host_id, const DiskEventReport& report);
  StatusOr<Job> ReportVmEndedLocked(const std::string& host_id, const VmEndedReport& report);
  StatusOr<Job> ReportVmDeletedLocked(const std::string& host_id, const std::string& vm_name);
  StatusOr<Job> StopVmLocked(const Principal& who, const std::string& vm);
  StatusOr<Job> StartVmLocked(const Principal& who, const std::string& vm);
  StatusOr<Job> DeleteVmLocked(const Principal& who, const std::string& vm);
  // ABORTED "conflict: ..." instead of `result` when a write of this call
  // (outside placement) lost to another replica's, UNAVAILABLE
  // "store_unavailable: ..." when one failed otherwise; resets both.
  static StatusOr<Job> FailOnConflict(StatusOr<Job> result);
  // Writes the job to the store (if any) over the version it was read at;
  // with `slot_capacity` > 0, only while its host has a free slot in the
  // store (StoredJob::slot_capacity). False when it was not written: on a
  // conflict (another replica changed the job) the job is read again from
  // the store, so the caller's change is dropped; on any other error the
  // job goes back to the copy KeepLocked took (as the store holds it) and,
  // unless the host merely had no free slot, the call fails with
  // UNAVAILABLE "store_unavailable".
  bool SaveLocked(Job& job, int64_t slot_capacity = 0);
  // Keeps a copy of `job` (as the store holds it) before the current call
  // changes it, for SaveLocked to go back to. Valid until the next
  // SyncLocked.
  static void KeepLocked(const Job& job);
  // Reads the jobs other replicas (or this one) wrote since the last look.
  void SyncLocked();
  // Adds the job to the customer index and, unless it has ended, to the
  // active set (jobs the per-operation scans look at).
  void IndexLocked(const Job& job);
  // The ids of jobs that have not ended (queued, on a host, stopping,
  // deleting), by id; drops ended ones from the active set on the way.
  std::vector<std::string> ActiveIdsLocked() const;
  // Takes the job's placement claim for this replica (written to the
  // store); false if another replica holds a live claim or won the write.
  bool ClaimLocked(Job& job);
  // Extends the job's lease to now + lease_seconds.
  void RenewLeaseLocked(Job& job);
  // Writes a renewed lease (`expires_unix`) of `job`, trying once more when
  // the first write fails or loses to another replica's (re-read: only if
  // the job is still on the same host and run). OK when written or no
  // longer needed; otherwise the job is as the store holds it, the failure
  // is logged and counted, and the error is returned.
  Status RenewLeaseWriteLocked(Job& job, int64_t expires_unix, std::string_view why);
  void FailLocked(Job& job, const std::string& reason);
  // The VM ended: stopped (or deleted when the customer wants that), slot
  // freed.
  void EndLocked(Job& job, const std::string& reason, const std::string& text);
  // The customer's job by job id or VM name; NOT_FOUND "no such vm".
  StatusOr<Job*> FindVmLocked(const Principal& who, const std::string& vm);
  // The job of `host_id` whose VM is `vm_name`; NOT_FOUND otherwise.
  StatusOr<Job*> FindHostVmLocked(const std::string& host_id, const std::string& vm_name);

  const Options options_;
  ImageService* const images_;
  HostRegistry* const hosts_;
  const Scheduler* const scheduler_;
  const Clock* const clock_;
  StateStore* store_ = nullptr;
  // The store's seq of the newest job write this replica has read.
  int64_t last_seq_ = 0;
  // This replica's name in placement claims (random per process).
  const std::string replica_id_ = NewReplicaId();
  static std::string NewReplicaId();
  std::mutex mu_;
  // See ChangeCount().
  std::atomic<uint64_t> changes_{0};
  std::map<std::string, Job> jobs_;
  // Customer -> job ids (a job's customer never changes).
  std::map<std::string, std::set<std::string>> by_customer_;
  // A superset of the jobs that have not ended: with 100,000 jobs in the
  // store, placements, polls and Tick scan these only.
  mutable std::set<std::string> active_;
  // Jobs being placed outside the lock: job id -> newest ticket's sequence.
  std::map<std::string, uint64_t> placing_;
  uint64_t next_sequence_ = 0;
  // Slots held by placements waiting for their KMS grant (host -> count),
  // counted in LoadLocked so that two placements cannot take one last slot.
  std::map<std::string, uint32_t> reserved_;
  std::atomic<uint64_t> lease_renewal_failures_{0};
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_JOBS_H_
