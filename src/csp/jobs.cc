#include "csp/jobs.h"

#include <spdlog/spdlog.h>

#include "crypto/primitives.h"

namespace vmseal::csp {
namespace {

constexpr std::string_view kStateNames[] = {
    "queued", "placed", "fetching", "attesting", "decrypting", "running",
    "failed", "stopping", "stopped", "deleting", "deleted"};
constexpr int kStateCount = sizeof(kStateNames) / sizeof(kStateNames[0]);

// A launch in progress or a running VM: the host reports progress or refuses.
bool OnHost(JobState s) { return s >= JobState::kPlaced && s <= JobState::kRunning; }

// Whether the job holds a slot of job.host_id: until its host reports the
// VM's end, a stopping or deleting VM still runs.
bool HoldsSlot(const Job& job) {
  return !job.host_id.empty() && (OnHost(job.state) || job.state == JobState::kStopping ||
                                  job.state == JobState::kDeleting);
}

// What a host's "stopped" means: the customer asked, or someone on the host
// (the operator CLI, a host shutdown) did.
std::string EndReasonFor(const Job& job, const std::string& host_reason) {
  if (host_reason != "stopped") return host_reason;
  return job.wanted == VmWanted::kRunning ? "stopped_by_operator" : "stopped_by_customer";
}

Status BadState(const Job& job, std::string_view action) {
  return FailedPreconditionError("bad_state: cannot " + std::string(action) + " a " +
                                 std::string(JobStateName(job.state)) + " job");
}

}  // namespace

std::string_view JobStateName(JobState state) { return kStateNames[static_cast<int>(state)]; }

StatusOr<JobState> JobStateFromName(std::string_view name) {
  for (int i = 0; i < kStateCount; ++i) {
    if (kStateNames[i] == name) return static_cast<JobState>(i);
  }
  return InvalidArgumentError("unknown job state");
}

std::string_view VmWantedName(VmWanted wanted) {
  switch (wanted) {
    case VmWanted::kRunning: return "running";
    case VmWanted::kStopped: return "stopped";
    case VmWanted::kDeleted: return "deleted";
  }
  return "running";
}

std::string_view RefusalKindName(RefusalKind kind) {
  switch (kind) {
    case RefusalKind::kUnencryptedImage: return "unencrypted image";
    case RefusalKind::kAttestationDenied: return "attestation denied";
    case RefusalKind::kLaunchFailed: return "launch failed";
    case RefusalKind::kHostLost: return "host lost";
  }
  return "refused";
}

std::string_view RefusalKindReason(RefusalKind kind) {
  switch (kind) {
    case RefusalKind::kUnencryptedImage: return "unencrypted_image";
    case RefusalKind::kAttestationDenied: return "attestation_denied";
    case RefusalKind::kLaunchFailed: return "launch_failed";
    case RefusalKind::kHostLost: return "host_lost";
  }
  return "refused";
}

bool IsMachineReason(std::string_view reason) {
  if (reason.empty() || reason.size() > 64 || reason[0] < 'a' || reason[0] > 'z') return false;
  for (char c : reason) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) return false;
  }
  return true;
}

std::map<std::string, uint32_t> JobManager::LoadLocked() const {
  std::map<std::string, uint32_t> load;
  for (const auto& [id, job] : jobs_) {
    if (HoldsSlot(job)) ++load[job.host_id];
  }
  for (const auto& [host, n] : reserved_) load[host] += n;
  return load;
}

void JobManager::FailLocked(Job& job, const std::string& reason) {
  job.state = JobState::kFailed;
  job.host_id.clear();
  job.failure_reason = reason;
  job.updated_unix = clock_->NowUnixSeconds();
  spdlog::warn("job failed job={} customer={}: {}", job.job_id, job.customer_id, reason);
}

namespace {

// The refusals of the job's current run.
std::string RefusalSummary(const Job& job) {
  std::string out;
  for (size_t i = job.run_first_attempt; i < job.attempts.size(); ++i) {
    const JobAttempt& a = job.attempts[i];
    if (a.refusal.empty()) continue;
    if (!out.empty()) out += "; ";
    out += a.host_id + ": " + a.refusal;
  }
  return out;
}

}  // namespace

namespace {
// The image's identity at the KMS: the tag's imageId, which the key-wrap
// label binds; the portal's own id only when no tag was read.
std::string KmsImageId(const Job& job) {
  return job.tagged_image_id.empty() ? job.image_id : job.tagged_image_id;
}
std::string KmsImageId(const ImageInfo& image) {
  return image.tagged_image_id.empty() ? image.image_id : image.tagged_image_id;
}
}  // namespace

std::optional<JobManager::PlacementTicket> JobManager::BeginPlaceLocked(Job& job) {
  PlacementTicket t;
  for (size_t i = job.run_first_attempt; i < job.attempts.size(); ++i) {
    const JobAttempt& a = job.attempts[i];
    if (!a.refusal.empty()) {
      t.excluded[a.host_id] = a.refusal;
      ++t.refused;
    }
  }
  if (!job.pinned_host_id.empty()) {
    // A started VM runs again where its files are (docs/protocol.md §6).
    for (const HostState& h : hosts_->List()) {
      const std::string& id = h.registration.host_id;
      if (id != job.pinned_host_id && !t.excluded.contains(id)) {
        t.excluded[id] = "the VM's files are on " + job.pinned_host_id;
      }
    }
  }
  if (t.refused >= options_.max_attempts) {
    placing_.erase(job.job_id);
    FailLocked(job, "refused by " + std::to_string(t.refused) + " hosts (limit " +
                        std::to_string(options_.max_attempts) + "): " + RefusalSummary(job));
    return std::nullopt;
  }
  job.state = JobState::kQueued;
  job.host_id.clear();
  t.job_id = job.job_id;
  t.sequence = ++next_sequence_;
  t.request = {job.customer_id, KmsImageId(job)};
  // A newer placement of the same job supersedes one still in flight: only
  // the newest may commit, so the job is placed once.
  placing_[job.job_id] = t.sequence;
  return t;
}

Job* JobManager::StillPlacingLocked(const PlacementTicket& t) {
  auto p = placing_.find(t.job_id);
  if (p == placing_.end() || p->second != t.sequence) return nullptr;
  auto it = jobs_.find(t.job_id);
  if (it == jobs_.end() || it->second.state != JobState::kQueued ||
      it->second.wanted != VmWanted::kRunning) {
    // Stopped or deleted by the customer while the KMS was asked.
    placing_.erase(p);
    return nullptr;
  }
  return &it->second;
}

Placement JobManager::PlaceUnlocked(const PlacementTicket& t, std::unique_lock<std::mutex>& lock) {
  std::map<std::string, uint32_t> load = LoadLocked();
  lock.unlock();
  Placement placement = scheduler_->Place(t.request, load, t.excluded);
  lock.lock();
  Job* job = StillPlacingLocked(t);
  if (job == nullptr) return placement;
  Status granted;
  std::string chosen = placement.chosen_host_id;
  if (!chosen.empty()) {
    // The slot may have gone to another placement meanwhile.
    uint32_t capacity = 0;
    for (const HostState& h : hosts_->List()) {
      if (h.registration.host_id == chosen) capacity = h.registration.capacity_slots;
    }
    if (LoadLocked()[chosen] >= capacity) {
      granted = UnavailableError("the host's last slot was taken meanwhile; retried");
    } else {
      // The KMS releases the key only against this grant (one launch of
      // this image of this customer on this host); without it the job waits.
      ++reserved_[chosen];
      lock.unlock();
      granted = scheduler_->Grant({t.job_id, t.request.image_id, t.request.customer_id, chosen,
                                   options_.grant_ttl_seconds});
      lock.lock();
      if (--reserved_[chosen] == 0) reserved_.erase(chosen);
      job = StillPlacingLocked(t);
      if (job == nullptr) {
        // Its grant expires unused after grant_ttl_seconds.
        spdlog::info("placement dropped job={} host={}: the job changed meanwhile", t.job_id, chosen);
        return placement;
      }
    }
  }
  placing_.erase(t.job_id);
  job->last_placement = placement;
  // A queued job is re-placed every Tick: log and keep a decision only when
  // it differs from the previous one.
  const bool repeat = !job->placements.empty() && job->last_placement.chosen_host_id.empty() &&
                      DescribePlacement(job->placements.back()) ==
                          DescribePlacement(job->last_placement);
  if (!repeat) {
    job->placements.push_back(job->last_placement);
    if (job->placements.size() > kMaxPlacementLog) job->placements.erase(job->placements.begin());
    for (const HostDecision& d : job->last_placement.decisions) {
      std::string why;
      for (const auto& r : d.reasons) why += (why.empty() ? "" : "; ") + r;
      spdlog::info("placement job={} host={} {}: {}", job->job_id, d.host_id,
                   d.chosen ? "taken" : "skipped", why);
    }
  }
  job->updated_unix = clock_->NowUnixSeconds();
  if (!chosen.empty()) {
    if (!granted.ok()) {
      spdlog::warn("grant failed job={} host={}: {}", job->job_id, chosen, granted.ToString());
      job->last_placement.chosen_host_id.clear();
      for (HostDecision& d : job->last_placement.decisions) {
        if (d.chosen) {
          d.chosen = false;
          d.reasons.push_back("KMS grant failed: " + granted.message());
        }
      }
      if (t.refused > 0) {
        FailLocked(*job, RefusalSummary(*job) + "; KMS grant failed: " + granted.message());
        return placement;
      }
      job->state = JobState::kQueued;
      job->host_id.clear();
      if (t.queued_since > 0) job->updated_unix = t.queued_since;
      return placement;
    }
    job->state = JobState::kPlaced;
    job->host_id = chosen;
    job->attempts.push_back({job->host_id, ""});
    return placement;
  }
  if (t.refused > 0) {
    FailLocked(*job, RefusalSummary(*job) + "; no other eligible host: " +
                         DescribePlacement(job->last_placement));
    return placement;
  }
  job->state = JobState::kQueued;
  job->host_id.clear();
  if (t.queued_since > 0) job->updated_unix = t.queued_since;
  return placement;
}

std::optional<JobManager::PlacementTicket> JobManager::RefuseLocked(Job& job, const std::string& reason,
                                                                    const std::string& why) {
  if (!job.attempts.empty()) {
    job.attempts.back().refusal = why;
    job.attempts.back().reason = reason;
  }
  spdlog::warn("job refused job={} host={} reason={}: {}", job.job_id, job.host_id, reason, why);
  job.host_id.clear();
  if (job.wanted != VmWanted::kRunning) {
    // Stopped or deleted by the customer while it was being launched.
    EndLocked(job, "stopped_by_customer", "stopped before it ran (" + reason + ")");
    return std::nullopt;
  }
  job.state = JobState::kQueued;
  return BeginPlaceLocked(job);
}

void JobManager::EndLocked(Job& job, const std::string& reason, const std::string& text) {
  job.host_id.clear();
  job.end_reason = reason;
  job.end_text = text.substr(0, 512);
  job.ended_unix = job.updated_unix = clock_->NowUnixSeconds();
  if (job.wanted == VmWanted::kDeleted && job.vm_host_id.empty()) {
    job.state = JobState::kDeleted;
  } else if (job.wanted == VmWanted::kDeleted) {
    job.state = JobState::kDeleting;  // its host still removes the VM's files
  } else {
    job.state = JobState::kStopped;
    job.wanted = VmWanted::kStopped;
  }
  spdlog::info("vm ended job={} customer={} vm={} state={} reason={}: {}", job.job_id,
               job.customer_id, job.vm_name, JobStateName(job.state), reason, job.end_text);
}

StatusOr<Job*> JobManager::FindVmLocked(const Principal& who, const std::string& vm) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  auto it = jobs_.find(vm);
  if (it != jobs_.end() && it->second.customer_id == who.customer_id) return &it->second;
  for (auto& [id, job] : jobs_) {
    if (!vm.empty() && job.vm_name == vm && job.customer_id == who.customer_id) return &job;
  }
  return NotFoundError("no such vm");
}

StatusOr<Job*> JobManager::FindHostVmLocked(const std::string& host_id,
                                            const std::string& vm_name) {
  for (auto& [id, job] : jobs_) {
    if (!vm_name.empty() && job.vm_name == vm_name && job.vm_host_id == host_id) return &job;
  }
  return NotFoundError("no such vm on this host");
}

std::vector<HostVmCommand> JobManager::VmCommands(const std::string& host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<HostVmCommand> out;
  for (const auto& [id, job] : jobs_) {
    if (job.vm_host_id != host_id || job.vm_name.empty()) continue;
    const char* action = job.state == JobState::kRunning    ? "run"
                         : job.state == JobState::kStopping ? "stop"
                         : job.state == JobState::kDeleting ? "delete"
                                                            : nullptr;
    if (action != nullptr) out.push_back({job.job_id, job.vm_name, action});
  }
  return out;
}

StatusOr<Job> JobManager::ReportVmEnded(const std::string& host_id, const VmEndedReport& report) {
  if (!IsMachineReason(report.reason)) {
    return InvalidArgumentError("reason must be a machine reason matching [a-z][a-z0-9_]{0,63}");
  }
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindHostVmLocked(host_id, report.vm_name));
  const int64_t run = report.run == 0 ? 1 : report.run;
  if (run != job->runs) {
    // A late report of an earlier run must not end the VM started since.
    spdlog::info("stale vm end ignored job={} host={} vm={} run={} current run={}", job->job_id,
                 host_id, report.vm_name, run, job->runs);
    return *job;
  }
  const bool runs = job->state == JobState::kRunning || job->state == JobState::kStopping ||
                    (job->state == JobState::kDeleting && !job->host_id.empty());
  if (!runs) return *job;  // already ended (a repeated report), or a new run being launched
  EndLocked(*job, EndReasonFor(*job, report.reason), report.text);
  return *job;
}

StatusOr<Job> JobManager::ReportDiskEvent(const std::string& host_id,
                                          const DiskEventReport& report) {
  if (!IsMachineReason(report.event)) {
    return InvalidArgumentError("event must be a machine name matching [a-z][a-z0-9_]{0,63}");
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(report.job_id);
  if (it == jobs_.end() || host_id.empty() ||
      (it->second.host_id != host_id && it->second.vm_host_id != host_id)) {
    return NotFoundError("no such job");
  }
  Job& job = it->second;
  for (const std::string& e : job.disk_events) {
    if (e.starts_with(report.event + ":")) return job;  // once per job and kind
  }
  if (job.disk_events.size() >= kMaxDiskEvents) return job;
  std::string text = report.text.substr(0, 256);
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  job.disk_events.push_back(report.event + ": " + text);
  job.updated_unix = clock_->NowUnixSeconds();
  spdlog::warn("disk event job={} host={} event={} {}", job.job_id, host_id, report.event, text);
  return job;
}

StatusOr<Job> JobManager::ReportVmDeleted(const std::string& host_id,
                                          const std::string& vm_name) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindHostVmLocked(host_id, vm_name));
  if (job->state == JobState::kRunning || job->state == JobState::kStopping) {
    // Gone without the customer asking (an operator removed it).
    EndLocked(*job, "vm_missing", "the host no longer has the VM");
  }
  if (job->state == JobState::kStopped || job->state == JobState::kDeleting) {
    if (job->end_reason.empty()) job->end_reason = "stopped_by_customer";
    job->host_id.clear();
    job->vm_host_id.clear();
    job->state = JobState::kDeleted;
    job->updated_unix = clock_->NowUnixSeconds();
    spdlog::info("vm deleted job={} host={} vm={}", job->job_id, host_id, vm_name);
  }
  return *job;
}

StatusOr<Job> JobManager::StopVm(const Principal& who, const std::string& vm) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindVmLocked(who, vm));
  switch (job->state) {
    case JobState::kStopping:
    case JobState::kStopped: return *job;
    case JobState::kFailed:
    case JobState::kDeleting:
    case JobState::kDeleted: return BadState(*job, "stop");
    case JobState::kQueued:
      job->wanted = VmWanted::kStopped;
      EndLocked(*job, "stopped_by_customer", "stopped before it was placed");
      return *job;
    case JobState::kRunning:
      job->state = JobState::kStopping;
      break;
    default: break;  // being launched: stopped once it runs
  }
  job->wanted = VmWanted::kStopped;
  job->updated_unix = clock_->NowUnixSeconds();
  spdlog::info("vm stop requested job={} customer={} vm={}", job->job_id, job->customer_id,
               job->vm_name);
  return *job;
}

StatusOr<Job> JobManager::StartVm(const Principal& who, const std::string& vm) {
  std::unique_lock<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindVmLocked(who, vm));
  if ((OnHost(job->state) || job->state == JobState::kQueued) &&
      job->wanted != VmWanted::kDeleted) {
    job->wanted = VmWanted::kRunning;  // a stop asked during the launch is withdrawn
    return *job;
  }
  if (job->state != JobState::kStopped) return BadState(*job, "start");
  job->wanted = VmWanted::kRunning;
  job->end_reason.clear();
  job->end_text.clear();
  job->ended_unix = 0;
  job->run_first_attempt = job->attempts.size();
  job->pinned_host_id = job->vm_host_id;
  ++job->runs;
  job->state = JobState::kQueued;
  job->updated_unix = clock_->NowUnixSeconds();
  spdlog::info("vm start requested job={} customer={} vm={} run={}", job->job_id,
               job->customer_id, job->vm_name, job->runs);
  auto ticket = BeginPlaceLocked(*job);
  if (!ticket) return *job;
  PlaceUnlocked(*ticket, lock);
  return GetAnyJobLocked(ticket->job_id);
}

StatusOr<Job> JobManager::DeleteVm(const Principal& who, const std::string& vm) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(Job * job, FindVmLocked(who, vm));
  if (job->state == JobState::kDeleting || job->state == JobState::kDeleted) return *job;
  const bool launching = OnHost(job->state) && job->state != JobState::kRunning;
  job->wanted = VmWanted::kDeleted;
  job->updated_unix = clock_->NowUnixSeconds();
  spdlog::info("vm delete requested job={} customer={} vm={}", job->job_id, job->customer_id,
               job->vm_name);
  if (launching) return *job;  // deleted once it runs (or is refused)
  if (job->state == JobState::kRunning || job->state == JobState::kStopping) {
    job->state = JobState::kDeleting;
    return *job;
  }
  if (job->vm_host_id.empty()) {
    // Queued, failed, or stopped before it ever ran: nothing on any host.
    if (job->end_reason.empty() && job->state == JobState::kQueued) {
      job->end_reason = "stopped_by_customer";
      job->end_text = "deleted before it was placed";
      job->ended_unix = job->updated_unix;
    }
    job->host_id.clear();
    job->state = JobState::kDeleted;
    return *job;
  }
  job->state = JobState::kDeleting;  // stopped or failed: its host removes the files
  return *job;
}

StatusOr<Job> JobManager::Launch(const Principal& who, const LaunchRequest& request) {
  ASSIGN_OR_RETURN(ImageInfo image, images_->GetImage(who, request.image_id));
  Job job;
  job.job_id = "job-" + crypto::HexEncode(crypto::RandomBytes(8));
  job.customer_id = who.customer_id;
  job.image_id = image.image_id;
  job.object_key = image.object_key;
  job.package_size_bytes = image.size_bytes;
  job.package_sha256_hex = image.sha256_hex;
  job.tagged_image_id = image.tagged_image_id;
  job.created_unix = job.updated_unix = clock_->NowUnixSeconds();
  job.state = JobState::kQueued;
  std::unique_lock<std::mutex> lock(mu_);
  spdlog::info("job queued job={} customer={} image={}", job.job_id, job.customer_id,
               job.image_id);
  Job& stored = jobs_[job.job_id] = std::move(job);
  auto ticket = BeginPlaceLocked(stored);
  if (!ticket) return stored;
  PlaceUnlocked(*ticket, lock);
  return GetAnyJobLocked(ticket->job_id);
}

StatusOr<Job> JobManager::GetJob(const Principal& who, const std::string& job_id) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.customer_id != who.customer_id) {
    return NotFoundError("no such job");
  }
  return it->second;
}

StatusOr<std::vector<Job>> JobManager::ListJobs(const Principal& who) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Job> out;
  for (const auto& [id, job] : jobs_) {
    if (job.customer_id == who.customer_id) out.push_back(job);
  }
  return out;
}

StatusOr<Placement> JobManager::ExplainImagePlacement(const Principal& who,
                                                      const std::string& image_id) {
  ASSIGN_OR_RETURN(ImageInfo image, images_->GetImage(who, image_id));
  std::map<std::string, uint32_t> load;
  {
    std::lock_guard<std::mutex> lock(mu_);
    load = LoadLocked();
  }
  Placement p = scheduler_->Place({who.customer_id, KmsImageId(image)}, load, {});
  spdlog::info("placement explained customer={} image={}: {}", who.customer_id, image.image_id,
               DescribePlacement(p));
  return p;
}

std::vector<Job> JobManager::ListAllJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Job> out;
  for (const auto& [id, job] : jobs_) out.push_back(job);
  return out;
}

StatusOr<Job> JobManager::GetAnyJob(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return GetAnyJobLocked(job_id);
}

StatusOr<Job> JobManager::GetAnyJobLocked(const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("no such job");
  return it->second;
}

std::vector<Job> JobManager::PendingJobs(const std::string& host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Job> out;
  for (const auto& [id, job] : jobs_) {
    if (job.state == JobState::kPlaced && job.host_id == host_id) out.push_back(job);
  }
  return out;
}

StatusOr<Job> JobManager::ReportProgress(const std::string& host_id,
                                         const ProgressReport& report) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(report.job_id);
  if (it == jobs_.end() || it->second.host_id != host_id || !OnHost(it->second.state)) {
    return NotFoundError("no such job on this host");
  }
  Job& job = it->second;
  if (report.state <= job.state || report.state > JobState::kRunning) {
    return FailedPreconditionError("job cannot move from " + std::string(JobStateName(job.state)) +
                                   " to " + std::string(JobStateName(report.state)));
  }
  job.state = report.state;
  if (report.state == JobState::kRunning) {
    job.vm_host_id = host_id;
    // A stop or delete that came during the launch applies now.
    if (job.wanted == VmWanted::kStopped) job.state = JobState::kStopping;
    if (job.wanted == VmWanted::kDeleted) job.state = JobState::kDeleting;
  }
  if (!report.vm_name.empty()) job.vm_name = report.vm_name.substr(0, 256);
  if (!report.serial_log_path.empty()) job.serial_log_path = report.serial_log_path.substr(0, 4096);
  job.updated_unix = clock_->NowUnixSeconds();
  spdlog::info("job progress job={} host={} state={}", job.job_id, host_id,
               JobStateName(job.state));
  return job;
}

StatusOr<Job> JobManager::ReportRefusal(const std::string& host_id, const RefusalReport& report) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = jobs_.find(report.job_id);
  if (it == jobs_.end() || it->second.host_id != host_id || !OnHost(it->second.state)) {
    return NotFoundError("no such job on this host");
  }
  if (!report.reason.empty() && !IsMachineReason(report.reason)) {
    return InvalidArgumentError("reason must be a machine reason matching [a-z][a-z0-9_]{0,63}");
  }
  // The three original kinds keep their wording; any other machine reason
  // (pcr_policy, kms_unavailable, ...) names the refusal itself.
  const std::string reason =
      report.reason.empty() ? std::string(RefusalKindReason(report.kind)) : report.reason;
  std::string why = report.reason.empty() ? std::string(RefusalKindName(report.kind))
                                          : report.reason;
  if (!report.detail.empty()) why += ": " + report.detail.substr(0, 512);
  auto ticket = RefuseLocked(it->second, reason, why);
  if (!ticket) return it->second;
  PlaceUnlocked(*ticket, lock);
  return GetAnyJobLocked(ticket->job_id);
}

void JobManager::Tick() {
  std::vector<std::string> dropped = hosts_->ExpireStale();
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixSeconds();
  // Placed after the scan, one at a time, with the lock released around
  // each KMS call.
  std::vector<PlacementTicket> tickets;
  for (auto& [id, job] : jobs_) {
    if (OnHost(job.state)) {
      for (const std::string& h : dropped) {
        if (job.host_id == h) {
          auto t = RefuseLocked(job, std::string(RefusalKindReason(RefusalKind::kHostLost)),
                                std::string(RefusalKindName(RefusalKind::kHostLost)) +
                                    ": no heartbeat for over " +
                                    std::to_string(hosts_->heartbeat_timeout_seconds()) + " s");
          if (t) tickets.push_back(*std::move(t));
          break;
        }
      }
    } else if (job.state == JobState::kStopping) {
      for (const std::string& h : dropped) {
        if (job.host_id == h) {
          EndLocked(job, "host_lost", "the host left the pool before it reported the end");
          break;
        }
      }
    } else if (job.state == JobState::kQueued && !placing_.contains(id)) {
      if (now - job.updated_unix >= options_.queue_timeout_seconds) {
        // The reasons of its last placement: no KMS call under the lock.
        FailLocked(job, "no eligible host within " +
                            std::to_string(options_.queue_timeout_seconds) +
                            " s: " + DescribePlacement(job.last_placement));
      } else {
        const int64_t queued_since = job.updated_unix;
        auto t = BeginPlaceLocked(job);
        if (t) {
          t->queued_since = queued_since;
          tickets.push_back(*std::move(t));
        }
      }
    }
  }
  // After one failed KMS check, no more checks this Tick: a hung KMS costs
  // one client timeout per Tick, not one per queued job.
  bool kms_failed = false;
  for (const PlacementTicket& t : tickets) {
    if (kms_failed) {
      auto p = placing_.find(t.job_id);
      if (p != placing_.end() && p->second == t.sequence) placing_.erase(p);
      continue;
    }
    kms_failed = PlaceUnlocked(t, lock).kms_failed;
  }
}

}  // namespace vmseal::csp
