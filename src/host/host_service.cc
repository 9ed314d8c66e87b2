#include "host/host_service.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>
#include <utility>

namespace vmseal::host {
namespace {

// Reasons a KMS denial or the agent put in front of their messages.
constexpr const char* kKnownReasons[] = {
    "unencrypted_image", "image_mismatch", "not_enrolled", "nonce_unknown", "nonce_used",
    "nonce_expired", "bad_signature", "nonce_mismatch", "pcr_digest_mismatch",
    "pcr_selection_mismatch", "binding_key_not_certified", "binding_key_attributes",
    "pcr_policy", "tags", "evidence_age", "history", "no_policy", "label_mismatch",
    "unknown_key", "malformed_evidence", "unsafe_disk_format", "unsigned_package",
    "signer_mismatch", "key_not_signed", "malformed_package", "tenant_mismatch", "no_grant"};

bool IsKnownReason(std::string_view token) {
  for (const char* r : kKnownReasons) {
    if (token == r) return true;
  }
  return false;
}

// The reason a message names: its first "token:" (possibly after prefixes
// such as "release: "), if the token is a known reason.
std::string NamedReason(const std::string& message) {
  size_t start = 0;
  while (start < message.size()) {
    size_t colon = message.find(':', start);
    if (colon == std::string::npos) break;
    std::string_view token(message.data() + start, colon - start);
    if (IsKnownReason(token)) return std::string(token);
    start = colon + 1;
    while (start < message.size() && message[start] == ' ') ++start;
  }
  return "";
}

}  // namespace

std::string RefusalReasonFor(const Status& status, JobPhase failed_in) {
  std::string named = NamedReason(status.message());
  if (!named.empty()) return named;
  switch (failed_in) {
    case JobPhase::kFetching:
      if (status.code() == StatusCode::kDataLoss ||
          status.message().starts_with("package") ||
          status.code() == StatusCode::kInvalidArgument) {
        return "package_rejected";
      }
      return "fetch_failed";
    case JobPhase::kAttesting:
      if (status.code() == StatusCode::kUnavailable ||
          status.code() == StatusCode::kDeadlineExceeded) {
        return "kms_unavailable";
      }
      if (status.code() == StatusCode::kPermissionDenied) return "release_denied";
      return "attestation_failed";
    case JobPhase::kDecrypting: return "decrypt_failed";
    case JobPhase::kLaunching:
    case JobPhase::kRunning:
    case JobPhase::kFailed: return "launch_failed";
  }
  return "launch_failed";
}

StatusOr<std::unique_ptr<HostService>> HostService::Create(const HostServiceOptions& options,
                                                           JobRunner* agent, PortalApi* portal) {
  if (agent == nullptr || portal == nullptr) {
    return InvalidArgumentError("host service: missing agent or portal");
  }
  if (options.heartbeat_interval_ms <= 0 || options.reattest_interval_ms <= 0 ||
      options.poll_interval_ms <= 0 || options.retry_delay_ms < 0) {
    return InvalidArgumentError("host service: intervals must be positive");
  }
  if (!options.enrollment_marker_path.empty() && options.enrollment_id.empty()) {
    return InvalidArgumentError("host service: an enrollment marker needs an enrollment id");
  }
  return std::unique_ptr<HostService>(new HostService(options, agent, portal));
}

HostService::HostService(HostServiceOptions options, JobRunner* agent, PortalApi* portal)
    : options_(std::move(options)),
      env_(options_.env != nullptr ? options_.env : Env::Default()),
      agent_(agent),
      portal_(portal) {}

HostService::~HostService() = default;

HostServiceStats HostService::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void HostService::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

bool HostService::stopping() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

bool HostService::SleepFor(int64_t ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stopping_; });
  return !stopping_;
}

Status HostService::EnsureEnrolled(bool force) {
  const std::string& marker = options_.enrollment_marker_path;
  if (!force && !marker.empty() && env_->FileExists(marker)) {
    auto recorded = ReadFileToString(env_, marker);
    if (recorded.ok() && *recorded == options_.enrollment_id) return OkStatus();
  }
  RETURN_IF_ERROR(agent_->Enroll().WithPrefix("enroll"));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.enrollments;
  }
  spdlog::info("host enrolled with the KMS");
  if (!marker.empty()) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(env_, marker, options_.enrollment_id, 0600));
  }
  return OkStatus();
}

Status HostService::Start() {
  RETURN_IF_ERROR(EnsureEnrolled(/*force=*/false));
  RETURN_IF_ERROR(portal_->Register(options_.registration));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.registrations;
  }
  spdlog::info("host registered with the portal ({} slots, {} tags)",
               options_.registration.capacity.slots, options_.registration.tags.size());
  return ReattestOnce();
}

Status HostService::HeartbeatOnce() {
  Status s = portal_->Heartbeat();
  if (s.code() == StatusCode::kNotFound) {
    spdlog::warn("portal does not know this host; registering again");
    RETURN_IF_ERROR(portal_->Register(options_.registration));
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.registrations;
    }
    s = portal_->Heartbeat();
  }
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.heartbeats;
  }
  return s;
}

Status HostService::ReattestOnce() {
  Status s = agent_->Reattest();
  if (s.code() == StatusCode::kPermissionDenied &&
      s.message().find("not_enrolled") != std::string::npos) {
    spdlog::warn("the KMS does not know this host's AK; enrolling again");
    RETURN_IF_ERROR(EnsureEnrolled(/*force=*/true));
    s = agent_->Reattest();
  }
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.reattestations;
  }
  return s.WithPrefix("attest");
}

void HostService::RunJob(const PortalJob& pj) {
  Job job;
  job.job_id = pj.job_id;
  job.image_id = pj.image_id;
  job.tenant = pj.customer_id;
  job.expected_tag_image_id = pj.tagged_image_id;
  job.package_sha256_hex = pj.package_sha256_hex;
  JobPhase phase = JobPhase::kFetching;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.jobs_started;
  }
  spdlog::info("job {} (image {}) taken", job.job_id, job.image_id);
  auto on_update = [&](const JobUpdate& u) {
    if (u.phase == JobPhase::kFailed) return;  // reported as a refusal below
    phase = u.phase;
    Status s = portal_->ReportProgress(u);
    if (!s.ok()) spdlog::warn("job {}: progress {} not accepted: {}", u.job_id,
                              JobPhaseName(u.phase), s.message());
  };
  StatusOr<vm::VmInfo> vm = agent_->RunJob(job, on_update);
  if (vm.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.jobs_running;
    spdlog::info("job {} running as VM {} (serial log {})", job.job_id, vm->name,
                 vm->serial_log_path);
    return;
  }
  const std::string reason = RefusalReasonFor(vm.status(), phase);
  spdlog::warn("job {} refused: {} ({})", job.job_id, reason, vm.status().message());
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.jobs_refused;
  owed_refusals_.push_back({job.job_id, reason, vm.status().message()});
}

Status HostService::FlushRefusals() {
  for (;;) {
    OwedRefusal r;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (owed_refusals_.empty()) return OkStatus();
      r = owed_refusals_.front();
    }
    Status s = portal_->ReportRefusal(r.job_id, r.reason, r.message);
    if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) {
      return s;  // portal unreachable: keep it owed for the next poll
    }
    if (!s.ok()) spdlog::warn("job {}: refusal not accepted: {}", r.job_id, s.message());
    std::lock_guard<std::mutex> lock(mu_);
    owed_refusals_.pop_front();
  }
}

StatusOr<int> HostService::PollOnce() {
  // Owed refusals first: until the portal hears one, the job is stuck here.
  RETURN_IF_ERROR(FlushRefusals());
  ASSIGN_OR_RETURN(std::vector<PortalJob> jobs, portal_->PollJobs());
  int ran = 0;
  for (const PortalJob& job : jobs) {
    if (stopping()) break;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!taken_.insert(job.job_id).second) continue;
    }
    RunJob(job);
    ++ran;
    Status s = FlushRefusals();
    if (!s.ok()) spdlog::warn("refusal kept for the next poll: {}", s.message());
  }
  return ran;
}

void HostService::HeartbeatLoop() {
  while (SleepFor(options_.heartbeat_interval_ms)) {
    Status s = HeartbeatOnce();
    if (!s.ok()) spdlog::warn("heartbeat failed: {}", s.message());
  }
}

Status HostService::Run() {
  for (;;) {
    if (stopping()) return OkStatus();
    Status s = Start();
    if (s.ok()) break;
    spdlog::warn("host start-up failed, retrying: {}", s.message());
    if (!SleepFor(options_.retry_delay_ms)) return OkStatus();
  }
  std::thread heartbeats([this] { HeartbeatLoop(); });
  using Clock = std::chrono::steady_clock;
  Clock::time_point next_attest =
      Clock::now() + std::chrono::milliseconds(options_.reattest_interval_ms);
  while (!stopping()) {
    if (Clock::now() >= next_attest) {
      Status s = ReattestOnce();
      if (!s.ok()) spdlog::warn("re-attestation failed: {}", s.message());
      next_attest = Clock::now() + std::chrono::milliseconds(options_.reattest_interval_ms);
    }
    auto ran = PollOnce();
    if (!ran.ok()) spdlog::warn("job poll failed: {}", ran.status().message());
    if (!SleepFor(options_.poll_interval_ms)) break;
  }
  heartbeats.join();
  spdlog::info("host service stopped; VMs keep running");
  return OkStatus();
}

}  // namespace vmseal::host
