#include "csp/jobs.h"

#include <spdlog/spdlog.h>

#include "crypto/primitives.h"

namespace vmseal::csp {
namespace {

constexpr std::string_view kStateNames[] = {"queued",     "placed",  "fetching", "attesting",
                                            "decrypting", "running", "failed"};

bool OnHost(JobState s) { return s >= JobState::kPlaced && s <= JobState::kRunning; }

}  // namespace

std::string_view JobStateName(JobState state) { return kStateNames[static_cast<int>(state)]; }

StatusOr<JobState> JobStateFromName(std::string_view name) {
  for (int i = 0; i < 7; ++i) {
    if (kStateNames[i] == name) return static_cast<JobState>(i);
  }
  return InvalidArgumentError("unknown job state");
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
    if (OnHost(job.state) && !job.host_id.empty()) ++load[job.host_id];
  }
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

std::string RefusalSummary(const Job& job) {
  std::string out;
  for (const JobAttempt& a : job.attempts) {
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

void JobManager::PlaceLocked(Job& job) {
  std::map<std::string, std::string> excluded;
  int refused = 0;
  for (const JobAttempt& a : job.attempts) {
    if (!a.refusal.empty()) {
      excluded[a.host_id] = a.refusal;
      ++refused;
    }
  }
  if (refused >= options_.max_attempts) {
    FailLocked(job, "refused by " + std::to_string(refused) + " hosts (limit " +
                        std::to_string(options_.max_attempts) + "): " + RefusalSummary(job));
    return;
  }
  job.last_placement = scheduler_->Place({job.customer_id, KmsImageId(job)}, LoadLocked(), excluded);
  // A queued job is re-placed every Tick: log and keep a decision only when
  // it differs from the previous one.
  const bool repeat = !job.placements.empty() && job.last_placement.chosen_host_id.empty() &&
                      DescribePlacement(job.placements.back()) ==
                          DescribePlacement(job.last_placement);
  if (!repeat) {
    job.placements.push_back(job.last_placement);
    if (job.placements.size() > kMaxPlacementLog) job.placements.erase(job.placements.begin());
    for (const HostDecision& d : job.last_placement.decisions) {
      std::string why;
      for (const auto& r : d.reasons) why += (why.empty() ? "" : "; ") + r;
      spdlog::info("placement job={} host={} {}: {}", job.job_id, d.host_id,
                   d.chosen ? "taken" : "skipped", why);
    }
  }
  job.updated_unix = clock_->NowUnixSeconds();
  if (!job.last_placement.chosen_host_id.empty()) {
    // The KMS releases the key only against this grant (one launch of this
    // image of this customer on this host); without it the job waits.
    Status granted = scheduler_->Grant({job.job_id, KmsImageId(job), job.customer_id,
                                        job.last_placement.chosen_host_id,
                                        options_.grant_ttl_seconds});
    if (!granted.ok()) {
      spdlog::warn("grant failed job={} host={}: {}", job.job_id,
                   job.last_placement.chosen_host_id, granted.ToString());
      job.last_placement.chosen_host_id.clear();
      for (HostDecision& d : job.last_placement.decisions) {
        if (d.chosen) {
          d.chosen = false;
          d.reasons.push_back("KMS grant failed: " + granted.message());
        }
      }
      if (refused > 0) {
        FailLocked(job, RefusalSummary(job) + "; KMS grant failed: " + granted.message());
        return;
      }
      job.state = JobState::kQueued;
      job.host_id.clear();
      return;
    }
    job.state = JobState::kPlaced;
    job.host_id = job.last_placement.chosen_host_id;
    job.attempts.push_back({job.host_id, ""});
    return;
  }
  if (refused > 0) {
    FailLocked(job, RefusalSummary(job) + "; no other eligible host: " +
                        DescribePlacement(job.last_placement));
    return;
  }
  job.state = JobState::kQueued;
  job.host_id.clear();
}

void JobManager::RefuseLocked(Job& job, const std::string& reason, const std::string& why) {
  if (!job.attempts.empty()) {
    job.attempts.back().refusal = why;
    job.attempts.back().reason = reason;
  }
  spdlog::warn("job refused job={} host={} reason={}: {}", job.job_id, job.host_id, reason, why);
  job.host_id.clear();
  job.state = JobState::kQueued;
  PlaceLocked(job);
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
  std::lock_guard<std::mutex> lock(mu_);
  spdlog::info("job queued job={} customer={} image={}", job.job_id, job.customer_id,
               job.image_id);
  PlaceLocked(job);
  jobs_[job.job_id] = job;
  return job;
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
  std::lock_guard<std::mutex> lock(mu_);
  Placement p = scheduler_->Place({who.customer_id, KmsImageId(image)}, LoadLocked(), {});
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
  if (!report.vm_name.empty()) job.vm_name = report.vm_name.substr(0, 256);
  if (!report.serial_log_path.empty()) job.serial_log_path = report.serial_log_path.substr(0, 4096);
  job.updated_unix = clock_->NowUnixSeconds();
  spdlog::info("job progress job={} host={} state={}", job.job_id, host_id,
               JobStateName(job.state));
  return job;
}

StatusOr<Job> JobManager::ReportRefusal(const std::string& host_id, const RefusalReport& report) {
  std::lock_guard<std::mutex> lock(mu_);
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
  RefuseLocked(it->second, reason, why);
  return it->second;
}

void JobManager::Tick() {
  std::vector<std::string> dropped = hosts_->ExpireStale();
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowUnixSeconds();
  // After one failed KMS check, no more checks this Tick: a hung KMS costs
  // one client timeout per Tick, not one per queued job.
  bool kms_failed = false;
  for (auto& [id, job] : jobs_) {
    if (OnHost(job.state)) {
      for (const std::string& h : dropped) {
        if (job.host_id == h) {
          RefuseLocked(job, std::string(RefusalKindReason(RefusalKind::kHostLost)),
                       std::string(RefusalKindName(RefusalKind::kHostLost)) +
                                ": no heartbeat for over " +
                                std::to_string(hosts_->heartbeat_timeout_seconds()) + " s");
          break;
        }
      }
    } else if (job.state == JobState::kQueued) {
      if (now - job.updated_unix >= options_.queue_timeout_seconds) {
        Placement p = kms_failed ? job.last_placement
                                 : scheduler_->Place({job.customer_id, job.image_id},
                                                     LoadLocked(), {});
        FailLocked(job, "no eligible host within " +
                            std::to_string(options_.queue_timeout_seconds) +
                            " s: " + DescribePlacement(p));
      } else if (!kms_failed) {
        int64_t queued_since = job.updated_unix;
        PlaceLocked(job);
        kms_failed = job.last_placement.kms_failed;
        if (job.state == JobState::kQueued) job.updated_unix = queued_since;
      }
    }
  }
}

}  // namespace vmseal::csp
