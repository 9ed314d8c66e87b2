// Provisioning jobs: a launch is a job with a visible state machine
//   queued -> placed -> fetching -> attesting -> decrypting -> running
//   any non-terminal state -> failed(reason)
// The portal places it on a host of the trusted compute pool (scheduler.h);
// the host pulls it and reports progress. When a host refuses (unencrypted
// image, attestation denied, launch failed) or stops heartbeating, the job
// moves to the next eligible host, up to a bound, then fails with every
// host's reason.
#ifndef VMSEAL_CSP_JOBS_H_
#define VMSEAL_CSP_JOBS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "csp/accounts.h"
#include "csp/clock.h"
#include "csp/hosts.h"
#include "csp/images.h"
#include "csp/scheduler.h"

namespace vmseal::csp {

enum class JobState { kQueued, kPlaced, kFetching, kAttesting, kDecrypting, kRunning, kFailed };

// "queued", "placed", ..., "failed".
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
  int64_t created_unix = 0;
  int64_t updated_unix = 0;
};

struct LaunchRequest {
  std::string image_id;
};

inline constexpr size_t kMaxPlacementLog = 16;

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
  };
  // All pointers must outlive the object.
  JobManager(const Options& options, ImageService* images, HostRegistry* hosts,
             const Scheduler* scheduler, const Clock* clock)
      : options_(options), images_(images), hosts_(hosts), scheduler_(scheduler), clock_(clock) {}

  // Customer side. Launch looks the image up as `who` (so another customer's
  // image is NOT_FOUND) and places the job at once if a host is eligible.
  StatusOr<Job> Launch(const Principal& who, const LaunchRequest& request);
  // NOT_FOUND "no such job" if missing or another customer's.
  StatusOr<Job> GetJob(const Principal& who, const std::string& job_id);
  StatusOr<std::vector<Job>> ListJobs(const Principal& who);
  // Why each host would be taken or skipped for this image now.
  StatusOr<Placement> ExplainImagePlacement(const Principal& who, const std::string& image_id);

  // Operator side: every job.
  std::vector<Job> ListAllJobs();
  StatusOr<Job> GetAnyJob(const std::string& job_id);

  // Host side; `host_id` is the caller's mTLS identity. Jobs of another host
  // are NOT_FOUND.
  std::vector<Job> PendingJobs(const std::string& host_id);
  StatusOr<Job> ReportProgress(const std::string& host_id, const ProgressReport& report);
  StatusOr<Job> ReportRefusal(const std::string& host_id, const RefusalReport& report);

  // Periodic work: takes hosts with overdue heartbeats out of the pool and
  // retries their jobs elsewhere; retries or times out queued jobs.
  void Tick();

 private:
  // Places `job` on the next eligible host or leaves it queued / fails it.
  void PlaceLocked(Job& job);
  // Ends the current attempt with machine `reason` and text `why`, moves on.
  void RefuseLocked(Job& job, const std::string& reason, const std::string& why);
  std::map<std::string, uint32_t> LoadLocked() const;
  void FailLocked(Job& job, const std::string& reason);

  const Options options_;
  ImageService* const images_;
  HostRegistry* const hosts_;
  const Scheduler* const scheduler_;
  const Clock* const clock_;
  std::mutex mu_;
  std::map<std::string, Job> jobs_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_JOBS_H_
