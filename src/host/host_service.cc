#include "host/host_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
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
  job.run = pj.run;
  job.attempt = pj.attempt;
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

void HostService::ReportDiskEvents() {
  for (const DiskEvent& e : agent_->DiskEvents()) {
    // Integrity failures only: a bit the guest could not read is the
    // customer's to know; progress events stay in the host's log.
    if (e.event != "chunk_auth_failed" || e.job_id.empty()) continue;
    std::lock_guard<std::mutex> lock(mu_);
    if (!told_disk_events_.insert(e.job_id + "\n" + e.event).second) continue;
    spdlog::warn("job {}: disk {} of vm {}: {}", e.job_id, e.disk_id, e.vm_name, e.event);
    owed_disk_events_.push_back({e.job_id, e.event, "disk " + e.disk_id + " of VM " + e.vm_name +
                                                        ": a chunk failed authentication; the "
                                                        "guest got an I/O error"});
  }
  for (;;) {
    std::array<std::string, 3> e;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (owed_disk_events_.empty()) return;
      e = owed_disk_events_.front();
    }
    Status s = portal_->ReportDiskEvent(e[0], e[1], e[2]);
    if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) {
      spdlog::warn("disk event kept for the next poll: {}", s.message());
      return;
    }
    if (!s.ok()) spdlog::warn("job {}: disk event not accepted: {}", e[0], s.message());
    std::lock_guard<std::mutex> lock(mu_);
    owed_disk_events_.erase(owed_disk_events_.begin());
  }
}

void HostService::OnVmEnded(const std::string& vm_name, const vm::VmEnd& end) {
  spdlog::info("vm {} ended: {} ({})", vm_name, vm::VmEndReasonName(end.reason), end.text);
  OweVmEnd(vm_name, vm::VmEndReasonName(end.reason), end.text, end.run);
}

void HostService::OweVmEnd(const std::string& vm_name, const std::string& reason,
                           const std::string& text, int64_t run) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    owed_vm_ends_[vm_name] = {reason, text, ++vm_end_seq_, run};
  }
  cv_.notify_all();
}

Status HostService::FlushVmEnds() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (flushing_vm_ends_) return OkStatus();  // the other thread sends them
    flushing_vm_ends_ = true;
  }
  Status result;
  for (;;) {
    std::string name;
    OwedVmEnd end;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (owed_vm_ends_.empty()) break;
      name = owed_vm_ends_.begin()->first;
      end = owed_vm_ends_.begin()->second;
    }
    Status s = portal_->ReportVmEnded(name, end.reason, end.text, end.run);
    if (s.code() == StatusCode::kUnavailable || s.code() == StatusCode::kDeadlineExceeded) {
      result = s;  // portal unreachable: still owed
      break;
    }
    if (!s.ok()) spdlog::warn("vm {}: end not accepted: {}", name, s.message());
    std::lock_guard<std::mutex> lock(mu_);
    if (s.ok()) ++stats_.vm_ends_reported;
    auto it = owed_vm_ends_.find(name);
    if (it != owed_vm_ends_.end() && it->second.seq == end.seq) owed_vm_ends_.erase(it);
  }
  std::lock_guard<std::mutex> lock(mu_);
  flushing_vm_ends_ = false;
  return result;
}

void HostService::VmEndLoop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !owed_vm_ends_.empty(); });
      if (stopping_) return;
    }
    Status s = FlushVmEnds();
    if (!s.ok()) {
      spdlog::warn("vm end kept for a retry: {}", s.message());
      if (!SleepFor(std::max<int64_t>(options_.retry_delay_ms, 100))) return;
    } else {
      // Another thread may be flushing: do not spin on its entries.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(20), [this] { return stopping_; });
    }
  }
}

void HostService::ApplyVmCommands(const std::vector<PortalVmCommand>& commands) {
  if (commands.empty()) return;
  auto listed = agent_->ListVms();
  if (!listed.ok()) {
    spdlog::warn("vm commands skipped: cannot list the VMs: {}", listed.status().message());
    return;
  }
  std::map<std::string, vm::VmInfo> vms;
  for (vm::VmInfo& v : *listed) vms[v.name] = std::move(v);
  for (const PortalVmCommand& c : commands) {
    if (stopping()) return;
    auto it = vms.find(c.vm_name);
    const bool known = it != vms.end();
    const bool running = known && it->second.state == vm::VmRunState::kRunning;
    using Action = PortalVmCommand::Action;
    if (c.action == Action::kDelete || !known) {
      // Gone already (an operator deleted it), or to be deleted.
      if (known) {
        spdlog::info("vm {}: deleting (portal command for job {})", c.vm_name, c.job_id);
        Status d = agent_->DeleteVm(c.vm_name);
        if (!d.ok() && d.code() != StatusCode::kNotFound) {
          spdlog::warn("vm {}: delete failed: {}", c.vm_name, d.message());
          continue;  // asked again at the next poll
        }
      }
      Status s = portal_->ReportVmDeleted(c.vm_name);
      if (!s.ok()) spdlog::warn("vm {}: deletion not reported: {}", c.vm_name, s.message());
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.vm_commands;
      if (s.ok()) ++stats_.vm_deletes_reported;
      continue;
    }
    if (c.action == Action::kStop && running) {
      spdlog::info("vm {}: stopping (portal command for job {})", c.vm_name, c.job_id);
      Status st = agent_->StopVm(c.vm_name);  // on_end reports the end
      if (!st.ok()) {
        spdlog::warn("vm {}: stop failed: {}", c.vm_name, st.message());
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.vm_commands;
      continue;
    }
    if (!running) {
      // Ended without the portal hearing of it (or the report is in flight:
      // a repeat is harmless).
      const vm::VmInfo& v = it->second;
      if (!v.ended) {
        // The VM manager's watcher records why a VM ended within its watch
        // interval and reports it through on_end; only a VM whose end stays
        // unrecorded (it ended while no agent watched) is reported as
        // "unknown", after a grace of 2 s.
        const auto now = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lock(mu_);
        auto [first, inserted] = unrecorded_since_.try_emplace(c.vm_name, now);
        if (now - first->second < std::chrono::seconds(2)) continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        unrecorded_since_.erase(c.vm_name);
      }
      const std::string reason = v.ended ? vm::VmEndReasonName(v.end.reason) : "unknown";
      const std::string text = v.ended ? v.end.text : "the VM is not running";
      bool owed;
      {
        std::lock_guard<std::mutex> lock(mu_);
        owed = owed_vm_ends_.contains(c.vm_name);
      }
      if (!owed) OweVmEnd(c.vm_name, reason, text, v.run);
    }
  }
}

void HostService::RelayConsoles() {
  constexpr uint64_t kTailBytes = 16 << 10;
  auto vms = agent_->ListVms();
  if (!vms.ok()) return;  // a runner without VMs of its own
  for (const vm::VmInfo& v : *vms) {
    if (v.state != vm::VmRunState::kRunning || v.serial_log_path.empty()) continue;
    auto file = env_->NewRandomAccessFile(v.serial_log_path);
    if (!file.ok()) continue;
    auto size = (*file)->Size();
    if (!size.ok()) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = console_relayed_bytes_.find(v.name);
      if (it != console_relayed_bytes_.end() && it->second == *size) continue;
    }
    const uint64_t from = *size > kTailBytes ? *size - kTailBytes : 0;
    std::string text(static_cast<size_t>(*size - from), '\0');
    auto n = (*file)->Read(from, std::span<uint8_t>(reinterpret_cast<uint8_t*>(text.data()), text.size()));
    if (!n.ok()) continue;
    text.resize(*n);
    Status s = portal_->ReportConsole(v.name, text);
    if (!s.ok()) {
      if (s.code() != StatusCode::kUnimplemented) spdlog::debug("vm {}: console not relayed: {}", v.name, s.message());
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    console_relayed_bytes_[v.name] = *size;
  }
}

StatusOr<int> HostService::PollOnce() {
  // Owed refusals first: until the portal hears one, the job is stuck here.
  RETURN_IF_ERROR(FlushRefusals());
  ASSIGN_OR_RETURN(PortalPoll poll, portal_->Poll());
  ApplyVmCommands(poll.vms);
  Status ends = FlushVmEnds();
  if (!ends.ok()) spdlog::warn("vm ends kept for the next poll: {}", ends.message());
  ReportDiskEvents();
  RelayConsoles();
  int ran = 0;
  for (const PortalJob& job : poll.jobs) {
    if (stopping()) break;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!taken_.insert(job.job_id + "#" + std::to_string(job.attempt)).second) continue;
    }
    if (!job.vm_name.empty()) {
      // A VM the customer started again: the stopped VM of the earlier run
      // gives way (its key is gone; the new run gets a fresh release).
      auto old = agent_->ListVms();
      bool exists = false;
      if (old.ok()) {
        for (const vm::VmInfo& v : *old) exists = exists || v.name == job.vm_name;
      }
      if (exists) {
        spdlog::info("job {}: removing VM {} of the earlier run", job.job_id, job.vm_name);
        Status d = agent_->DeleteVm(job.vm_name);
        if (!d.ok()) spdlog::warn("vm {}: delete failed: {}", job.vm_name, d.message());
      }
      std::lock_guard<std::mutex> lock(mu_);
      owed_vm_ends_.erase(job.vm_name);
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
  std::thread vm_ends([this] { VmEndLoop(); });
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
  vm_ends.join();
  spdlog::info("host service stopped; VMs keep running");
  return OkStatus();
}

}  // namespace vmseal::host
