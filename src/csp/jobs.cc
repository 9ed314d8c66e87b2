#include "csp/jobs.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include <nlohmann/json.hpp>

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

// An ended job: it holds no slot and nothing will happen to it unless the
// customer starts it again.
bool Ended(const Job& job) {
  return !HoldsSlot(job) && (job.state == JobState::kFailed || job.state == JobState::kStopped ||
                             job.state == JobState::kDeleted);
}

// What a host's "stopped" means: the customer asked, or someone on the host
// (the operator CLI, a host shutdown) did.
std::string EndReasonFor(const Job& job, const std::string& host_reason) {
  if (host_reason != "stopped") return host_reason;
  // Stopped by the portal because trust in its host was lost.
  if (job.trust_lost_unix > 0 && job.wanted == VmWanted::kDeleted) return "trust_lost";
  return job.wanted == VmWanted::kRunning ? "stopped_by_operator" : "stopped_by_customer";
}

// At most 256 bytes, control characters blanked.
std::string CleanLine(const std::string& line) {
  std::string text = line.substr(0, 256);
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  }
  return text;
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


namespace {

using json = nlohmann::json;

json PlacementToJson(const Placement& p) {
  json decisions = json::array();
  for (const HostDecision& d : p.decisions) {
    decisions.push_back({{"host_id", d.host_id}, {"eligible", d.eligible}, {"chosen", d.chosen},
                         {"reasons", d.reasons}, {"kms_reason", d.kms_reason},
                         {"load", d.load}, {"capacity_slots", d.capacity_slots}});
  }
  return {{"chosen_host_id", p.chosen_host_id}, {"decisions", decisions},
          {"decided_unix", p.decided_unix}, {"kms_failed", p.kms_failed}};
}

Placement PlacementFromJson(const json& j) {
  Placement p;
  p.chosen_host_id = j.at("chosen_host_id").get<std::string>();
  for (const json& d : j.at("decisions")) {
    p.decisions.push_back({d.at("host_id").get<std::string>(), d.at("eligible").get<bool>(),
                           d.at("chosen").get<bool>(),
                           d.at("reasons").get<std::vector<std::string>>(),
                           d.at("kms_reason").get<std::string>(), d.at("load").get<uint32_t>(),
                           d.at("capacity_slots").get<uint32_t>()});
  }
  p.decided_unix = j.at("decided_unix").get<int64_t>();
  p.kms_failed = j.at("kms_failed").get<bool>();
  return p;
}

}  // namespace

std::string JobToRecord(const Job& job) {
  json attempts = json::array();
  for (const JobAttempt& a : job.attempts) {
    attempts.push_back({{"host_id", a.host_id}, {"refusal", a.refusal}, {"reason", a.reason}});
  }
  json placements = json::array();
  for (const Placement& p : job.placements) placements.push_back(PlacementToJson(p));
  return json{{"v", 1},
              {"job_id", job.job_id},
              {"customer_id", job.customer_id},
              {"image_id", job.image_id},
              {"object_key", job.object_key},
              {"package_size_bytes", job.package_size_bytes},
              {"package_sha256_hex", job.package_sha256_hex},
              {"tagged_image_id", job.tagged_image_id},
              {"state", JobStateName(job.state)},
              {"host_id", job.host_id},
              {"attempts", attempts},
              {"failure_reason", job.failure_reason},
              {"last_placement", PlacementToJson(job.last_placement)},
              {"placements", placements},
              {"vm_name", job.vm_name},
              {"serial_log_path", job.serial_log_path},
              {"wanted", VmWantedName(job.wanted)},
              {"vm_host_id", job.vm_host_id},
              {"end_reason", job.end_reason},
              {"end_text", job.end_text},
              {"ended_unix", job.ended_unix},
              {"pinned_host_id", job.pinned_host_id},
              {"run_first_attempt", job.run_first_attempt},
              {"runs", job.runs},
              {"disk_events", job.disk_events},
              {"trust_events", job.trust_events},
              {"trust_lost_unix", job.trust_lost_unix},
              {"trust_stop_host_id", job.trust_stop_host_id},
              {"created_unix", job.created_unix},
              {"updated_unix", job.updated_unix},
              {"lease_expires_unix", job.lease_expires_unix},
              {"claim_owner", job.claim_owner},
              {"claim_until_unix", job.claim_until_unix}}
      .dump();
}

StatusOr<Job> JobFromRecord(const std::string& record_json) {
  json j = json::parse(record_json, nullptr, false);
  if (!j.is_object() || j.value("v", 0) != 1) return DataLossError("unreadable job record");
  try {
    Job job;
    job.job_id = j.at("job_id").get<std::string>();
    job.customer_id = j.at("customer_id").get<std::string>();
    job.image_id = j.at("image_id").get<std::string>();
    job.object_key = j.at("object_key").get<std::string>();
    job.package_size_bytes = j.at("package_size_bytes").get<uint64_t>();
    job.package_sha256_hex = j.at("package_sha256_hex").get<std::string>();
    job.tagged_image_id = j.at("tagged_image_id").get<std::string>();
    auto state = JobStateFromName(j.at("state").get<std::string>());
    if (!state.ok()) return DataLossError("unreadable job record: bad state");
    job.state = *state;
    job.host_id = j.at("host_id").get<std::string>();
    for (const json& a : j.at("attempts")) {
      job.attempts.push_back({a.at("host_id").get<std::string>(),
                              a.at("refusal").get<std::string>(),
                              a.at("reason").get<std::string>()});
    }
    job.failure_reason = j.at("failure_reason").get<std::string>();
    job.last_placement = PlacementFromJson(j.at("last_placement"));
    for (const json& p : j.at("placements")) job.placements.push_back(PlacementFromJson(p));
    job.vm_name = j.at("vm_name").get<std::string>();
    job.serial_log_path = j.at("serial_log_path").get<std::string>();
    const std::string wanted = j.at("wanted").get<std::string>();
    if (wanted == "running") {
      job.wanted = VmWanted::kRunning;
    } else if (wanted == "stopped") {
      job.wanted = VmWanted::kStopped;
    } else if (wanted == "deleted") {
      job.wanted = VmWanted::kDeleted;
    } else {
      return DataLossError("unreadable job record: bad wanted state");
    }
    job.vm_host_id = j.at("vm_host_id").get<std::string>();
    job.end_reason = j.at("end_reason").get<std::string>();
    job.end_text = j.at("end_text").get<std::string>();
    job.ended_unix = j.at("ended_unix").get<int64_t>();
    job.pinned_host_id = j.at("pinned_host_id").get<std::string>();
    job.run_first_attempt = j.at("run_first_attempt").get<size_t>();
    job.runs = j.at("runs").get<int>();
    job.disk_events = j.at("disk_events").get<std::vector<std::string>>();
    // Absent in records written before loss of trust was tracked.
    if (j.contains("trust_events")) {
      job.trust_events = j.at("trust_events").get<std::vector<std::string>>();
    }
    job.trust_lost_unix = j.value("trust_lost_unix", int64_t{0});
    job.trust_stop_host_id = j.value("trust_stop_host_id", std::string());
    job.created_unix = j.at("created_unix").get<int64_t>();
    job.updated_unix = j.at("updated_unix").get<int64_t>();
    job.lease_expires_unix = j.at("lease_expires_unix").get<int64_t>();
    job.claim_owner = j.at("claim_owner").get<std::string>();
    job.claim_until_unix = j.at("claim_until_unix").get<int64_t>();
    if (job.run_first_attempt > job.attempts.size()) {
      return DataLossError("unreadable job record: bad attempt index");
    }
    return job;
  } catch (const json::exception&) {
    return DataLossError("unreadable job record");
  }
}

namespace {
// Set by SaveLocked when a write of the current call lost to another
// replica's (placements excepted: there a lost race is the design).
thread_local bool t_write_conflict = false;
// Set by SaveLocked when a write of the current call failed for another
// reason (the store is down, its disk full or read-only): the call fails.
thread_local Status t_write_error;
// The current call's jobs as the store holds them, taken before the call
// changes them (KeepLocked) and moved on by each of its writes: a write that
// fails puts the job back, so memory never runs ahead of the store.
thread_local std::map<std::string, Job> t_stored;

// Keeps a placement's conflicts and write errors out of the calling
// operation's answer.
class ConflictFlagScope {
 public:
  ConflictFlagScope() : saved_(t_write_conflict), saved_error_(t_write_error) {}
  ~ConflictFlagScope() {
    t_write_conflict = saved_;
    t_write_error = saved_error_;
  }

 private:
  const bool saved_;
  const Status saved_error_;
};

// Every state whose JobStateName is in kSlotHoldingStatesSql holds a slot
// (HoldsSlot), and no other: the store's capacity check counts the same.
bool SlotStatesMatch() {
  for (int i = 0; i < kStateCount; ++i) {
    Job j;
    j.host_id = "h";
    j.state = static_cast<JobState>(i);
    std::string quoted(1, '\'');
    quoted.append(JobStateName(j.state));
    quoted.push_back('\'');
    const bool listed = std::string_view(kSlotHoldingStatesSql).find(quoted) != std::string_view::npos;
    if (listed != HoldsSlot(j)) return false;
  }
  return true;
}
}  // namespace

void JobManager::KeepLocked(const Job& job) { t_stored.insert_or_assign(job.job_id, job); }

StatusOr<Job> JobManager::FailOnConflict(StatusOr<Job> result) {
  const bool conflict = t_write_conflict;
  t_write_conflict = false;
  Status error = std::exchange(t_write_error, OkStatus());
  if (!error.ok()) return error;
  if (conflict) {
    return AbortedError("conflict: the job changed on another portal replica meanwhile; retry");
  }
  return result;
}

StatusOr<Job> JobManager::ReportProgress(const std::string& host_id, const ProgressReport& report) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(ReportProgressLocked(host_id, report));
}

StatusOr<Job> JobManager::ReportRefusal(const std::string& host_id, const RefusalReport& report) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(ReportRefusalLocked(host_id, report));
}

StatusOr<Job> JobManager::ReportDiskEvent(const std::string& host_id, const DiskEventReport& report) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(ReportDiskEventLocked(host_id, report));
}

StatusOr<Job> JobManager::ReportVmEnded(const std::string& host_id, const VmEndedReport& report) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(ReportVmEndedLocked(host_id, report));
}

StatusOr<Job> JobManager::ReportVmDeleted(const std::string& host_id, const std::string& vm_name) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(ReportVmDeletedLocked(host_id, vm_name));
}

StatusOr<Job> JobManager::StopVm(const Principal& who, const std::string& vm) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(StopVmLocked(who, vm));
}

StatusOr<Job> JobManager::StartVm(const Principal& who, const std::string& vm) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(StartVmLocked(who, vm));
}

StatusOr<Job> JobManager::DeleteVm(const Principal& who, const std::string& vm) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  return FailOnConflict(DeleteVmLocked(who, vm));
}

std::string JobManager::NewReplicaId() {
  return "replica-" + crypto::HexEncode(crypto::RandomBytes(6));
}

Status JobManager::AttachStore(StateStore* store) {
  if (!SlotStatesMatch()) return InternalError("the store's slot-holding states differ from HoldsSlot");
  ASSIGN_OR_RETURN(std::vector<StoredJob> rows, store->LoadJobsSince(0));
  std::lock_guard<std::mutex> lock(mu_);
  for (const StoredJob& row : rows) {
    auto job = JobFromRecord(row.record_json);
    if (!job.ok()) return DataLossError("job " + row.job_id + ": " + job.status().message());
    job->store_version = row.version;
    // The portal cannot know what hosts did while it was down: each host
    // gets one full lease from the restart to be heard from again.
    if (OnHost(job->state)) {
      job->lease_expires_unix =
          std::max(job->lease_expires_unix, clock_->NowUnixSeconds() + options_.lease_seconds);
    }
    last_seq_ = std::max(last_seq_, row.seq);
    IndexLocked(*job);
    jobs_[job->job_id] = *std::move(job);
  }
  store_ = store;
  if (!rows.empty()) spdlog::info("job manager loaded {} jobs from the store", rows.size());
  return OkStatus();
}

void JobManager::SyncLocked() {
  // Kept copies are taken after the call's SyncLocked, never across one.
  t_stored.clear();
  if (store_ == nullptr) return;
  auto rows = store_->LoadJobsSince(last_seq_);
  if (!rows.ok()) {
    spdlog::error("cannot read jobs from the store: {}", rows.status().ToString());
    return;
  }
  for (const StoredJob& row : *rows) {
    last_seq_ = std::max(last_seq_, row.seq);
    auto it = jobs_.find(row.job_id);
    if (it != jobs_.end() && it->second.store_version >= row.version) continue;  // ours
    auto job = JobFromRecord(row.record_json);
    if (!job.ok()) {
      spdlog::error("unreadable job record job={}: {}", row.job_id, job.status().ToString());
      continue;
    }
    job->store_version = row.version;
    IndexLocked(*job);
    jobs_[row.job_id] = *std::move(job);
    changes_.fetch_add(1, std::memory_order_acq_rel);
  }
}

void JobManager::IndexLocked(const Job& job) {
  by_customer_[job.customer_id].insert(job.job_id);
  if (!Ended(job)) active_.insert(job.job_id);
}

std::vector<std::string> JobManager::ActiveIdsLocked() const {
  std::vector<std::string> ids;
  for (auto it = active_.begin(); it != active_.end();) {
    auto j = jobs_.find(*it);
    if (j == jobs_.end() || Ended(j->second)) {
      it = active_.erase(it);
      continue;
    }
    ids.push_back(*it);
    ++it;
  }
  return ids;
}

bool JobManager::SaveLocked(Job& job, int64_t slot_capacity) {
  // Live views look again (a write that fails goes back, which they see as
  // no change).
  changes_.fetch_add(1, std::memory_order_acq_rel);
  if (!Ended(job)) active_.insert(job.job_id);
  if (store_ == nullptr) return true;
  StoredJob row{job.job_id, job.customer_id, std::string(JobStateName(job.state)),
                job.host_id, job.updated_unix, JobToRecord(job), job.store_version};
  row.slot_capacity = slot_capacity;
  auto v = store_->PutJob(row);
  if (v.ok()) {
    job.store_version = *v;
    auto kept = t_stored.find(job.job_id);
    if (kept != t_stored.end()) kept->second = job;
    return true;
  }
  if (v.status().code() == StatusCode::kAborted) {
    t_write_conflict = true;
    // Another replica changed the job first: its change stands.
    spdlog::info("job changed by another replica job={}; this change is dropped", job.job_id);
    // The newer write has a seq past last_seq_ (writes commit in seq
    // order): read it into the same map entry (references stay valid).
    job.store_version = -1;
    SyncLocked();
    return false;
  }
  // Not written: the job goes back to what the store holds.
  auto kept = t_stored.find(job.job_id);
  if (kept != t_stored.end()) {
    job = kept->second;
    IndexLocked(job);
  } else if (job.store_version > 0) {
    spdlog::error("job={} changed in memory without a stored copy to go back to", job.job_id);
  }
  if (v.status().code() == StatusCode::kResourceExhausted) {
    // no_slot: another replica took the host's last slot first.
    spdlog::info("placement not committed job={}: {}", job.job_id, v.status().message());
    return false;
  }
  spdlog::error("cannot store job={}: {}", job.job_id, v.status().ToString());
  if (t_write_error.ok()) {
    t_write_error = UnavailableError("store_unavailable: the change was not stored (" +
                                     v.status().message() + "); retry");
  }
  return false;
}

bool JobManager::ClaimLocked(Job& job) {
  const int64_t now = clock_->NowUnixSeconds();
  if (job.claim_until_unix > now && job.claim_owner != replica_id_) return false;
  job.claim_owner = replica_id_;
  job.claim_until_unix = now + options_.lease_seconds;
  return SaveLocked(job);
}

void JobManager::RenewLeaseLocked(Job& job) {
  job.lease_expires_unix = clock_->NowUnixSeconds() + options_.lease_seconds;
}

std::map<std::string, uint32_t> JobManager::LoadLocked() const {
  std::map<std::string, uint32_t> load;
  for (const std::string& id : ActiveIdsLocked()) {
    const Job& job = jobs_.at(id);
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
  job.lease_expires_unix = 0;
  SaveLocked(job);
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
  const ConflictFlagScope conflicts_here_are_expected;
  std::map<std::string, uint32_t> load = LoadLocked();
  lock.unlock();
  Placement placement = scheduler_->Place(t.request, load, t.excluded);
  lock.lock();
  SyncLocked();
  Job* job = StillPlacingLocked(t);
  if (job == nullptr) return placement;
  Status granted;
  std::string chosen = placement.chosen_host_id;
  uint32_t capacity = 0;
  if (!chosen.empty()) {
    // The slot may have gone to another placement meanwhile.
    for (const HostState& h : hosts_->List()) {
      if (h.registration.host_id == chosen) capacity = h.registration.capacity_slots;
    }
    if (LoadLocked()[chosen] >= capacity) {
      granted = UnavailableError("the host's last slot was taken meanwhile; retried");
    } else {
      // One replica at a time asks the KMS for the job's grant.
      KeepLocked(*job);
      if (!ClaimLocked(*job)) {
        placing_.erase(t.job_id);
        spdlog::info("placement dropped job={}: another replica is placing it", t.job_id);
        return placement;
      }
      // The KMS releases the key only against this grant (one launch of
      // this image of this customer on this host); without it the job waits.
      ++reserved_[chosen];
      // The attempt this placement becomes (what the host is told): the KMS
      // fences off every older attempt's host.
      const auto attempt = static_cast<int64_t>(job->attempts.size() + 1);
      lock.unlock();
      granted = scheduler_->Grant({t.job_id, t.request.image_id, t.request.customer_id, chosen,
                                   options_.grant_ttl_seconds, attempt});
      lock.lock();
      if (--reserved_[chosen] == 0) reserved_.erase(chosen);
      SyncLocked();
      job = StillPlacingLocked(t);
      if (job == nullptr) {
        // Its grant expires unused after grant_ttl_seconds.
        spdlog::info("placement dropped job={} host={}: the job changed meanwhile", t.job_id, chosen);
        return placement;
      }
      KeepLocked(*job);
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
      SaveLocked(*job);
      return placement;
    }
    job->state = JobState::kPlaced;
    job->host_id = chosen;
    job->attempts.push_back({job->host_id, ""});
    job->claim_owner.clear();
    job->claim_until_unix = 0;
    RenewLeaseLocked(*job);
    // Placed exactly once: only over the version this replica claimed, and
    // only while the host has a free slot in the store (another replica may
    // have placed a job there meanwhile).
    if (!SaveLocked(*job, capacity)) placement.chosen_host_id.clear();
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
  // A queued job re-placed at every Tick is written only when the decision
  // changed.
  if (!repeat) SaveLocked(*job);
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
  job.lease_expires_unix = 0;
  if (job.wanted != VmWanted::kRunning) {
    // Stopped or deleted by the customer while it was being launched.
    EndLocked(job, "stopped_by_customer", "stopped before it ran (" + reason + ")");
    return std::nullopt;
  }
  job.state = JobState::kQueued;
  job.updated_unix = clock_->NowUnixSeconds();
  if (!SaveLocked(job)) return std::nullopt;  // another replica moved it first
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
  job.lease_expires_unix = 0;
  SaveLocked(job);
  spdlog::info("vm ended job={} customer={} vm={} state={} reason={}: {}", job.job_id,
               job.customer_id, job.vm_name, JobStateName(job.state), reason, job.end_text);
}

StatusOr<Job*> JobManager::FindVmLocked(const Principal& who, const std::string& vm) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  auto it = jobs_.find(vm);
  if (it != jobs_.end() && it->second.customer_id == who.customer_id) {
    KeepLocked(it->second);
    return &it->second;
  }
  for (const std::string& id : by_customer_[who.customer_id]) {
    Job& job = jobs_.at(id);
    if (!vm.empty() && job.vm_name == vm && job.customer_id == who.customer_id) {
      KeepLocked(job);
      return &job;
    }
  }
  return NotFoundError("no such vm");
}

StatusOr<Job*> JobManager::FindHostVmLocked(const std::string& host_id,
                                            const std::string& vm_name) {
  for (auto& [id, job] : jobs_) {
    if (!vm_name.empty() && job.vm_name == vm_name && job.vm_host_id == host_id) {
      KeepLocked(job);
      return &job;
    }
  }
  return NotFoundError("no such vm on this host");
}

std::vector<HostVmCommand> JobManager::VmCommands(const std::string& host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  std::vector<HostVmCommand> out;
  for (const std::string& id : ActiveIdsLocked()) {
    const Job& job = jobs_.at(id);
    if (job.vm_host_id != host_id || job.vm_name.empty()) continue;
    const char* action = job.state == JobState::kRunning    ? "run"
                         : job.state == JobState::kStopping ? "stop"
                         : job.state == JobState::kDeleting ? "delete"
                                                            : nullptr;
    if (action != nullptr) out.push_back({job.job_id, job.vm_name, action});
  }
  return out;
}

StatusOr<Job> JobManager::ReportVmEndedLocked(const std::string& host_id, const VmEndedReport& report) {
  if (!IsMachineReason(report.reason)) {
    return InvalidArgumentError("reason must be a machine reason matching [a-z][a-z0-9_]{0,63}");
  }
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
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

StatusOr<Job> JobManager::ReportDiskEventLocked(const std::string& host_id,
                                          const DiskEventReport& report) {
  if (!IsMachineReason(report.event)) {
    return InvalidArgumentError("event must be a machine name matching [a-z][a-z0-9_]{0,63}");
  }
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  auto it = jobs_.find(report.job_id);
  if (it == jobs_.end() || host_id.empty() ||
      (it->second.host_id != host_id && it->second.vm_host_id != host_id)) {
    return NotFoundError("no such job");
  }
  Job& job = it->second;
  KeepLocked(job);
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
  if (!SaveLocked(job)) return job;
  spdlog::warn("disk event job={} host={} event={} {}", job.job_id, host_id, report.event, text);
  return job;
}

StatusOr<Job> JobManager::ReportVmDeletedLocked(const std::string& host_id,
                                          const std::string& vm_name) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  ASSIGN_OR_RETURN(Job * job, FindHostVmLocked(host_id, vm_name));
  if (job->state == JobState::kRunning || job->state == JobState::kStopping) {
    // Gone without the customer asking (an operator removed it).
    EndLocked(*job, "vm_missing", "the host no longer has the VM");
    if (!t_write_error.ok()) return *job;
  }
  if (job->state == JobState::kStopped || job->state == JobState::kDeleting) {
    if (job->end_reason.empty()) {
      job->end_reason = job->trust_lost_unix > 0 ? "trust_lost" : "stopped_by_customer";
    }
    job->host_id.clear();
    job->vm_host_id.clear();
    job->state = JobState::kDeleted;
    job->updated_unix = clock_->NowUnixSeconds();
    SaveLocked(*job);
    spdlog::info("vm deleted job={} host={} vm={}", job->job_id, host_id, vm_name);
  }
  return *job;
}

StatusOr<Job> JobManager::StopVmLocked(const Principal& who, const std::string& vm) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
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
  SaveLocked(*job);
  spdlog::info("vm stop requested job={} customer={} vm={}", job->job_id, job->customer_id,
               job->vm_name);
  return *job;
}

StatusOr<Job> JobManager::StartVmLocked(const Principal& who, const std::string& vm) {
  std::unique_lock<std::mutex> lock(mu_);
  SyncLocked();
  ASSIGN_OR_RETURN(Job * job, FindVmLocked(who, vm));
  if ((OnHost(job->state) || job->state == JobState::kQueued) &&
      job->wanted != VmWanted::kDeleted) {
    if (job->wanted != VmWanted::kRunning) {
      job->wanted = VmWanted::kRunning;  // a stop asked during the launch is withdrawn
      SaveLocked(*job);
    }
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
  if (!SaveLocked(*job)) return *job;
  spdlog::info("vm start requested job={} customer={} vm={} run={}", job->job_id,
               job->customer_id, job->vm_name, job->runs);
  auto ticket = BeginPlaceLocked(*job);
  if (!ticket) return *job;
  PlaceUnlocked(*ticket, lock);
  return GetAnyJobLocked(ticket->job_id);
}

StatusOr<Job> JobManager::DeleteVmLocked(const Principal& who, const std::string& vm) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  ASSIGN_OR_RETURN(Job * job, FindVmLocked(who, vm));
  if (job->state == JobState::kDeleting || job->state == JobState::kDeleted) return *job;
  const bool launching = OnHost(job->state) && job->state != JobState::kRunning;
  job->wanted = VmWanted::kDeleted;
  job->updated_unix = clock_->NowUnixSeconds();
  spdlog::info("vm delete requested job={} customer={} vm={}", job->job_id, job->customer_id,
               job->vm_name);
  if (launching) {
    SaveLocked(*job);
    return *job;  // deleted once it runs (or is refused)
  }
  if (job->state == JobState::kRunning || job->state == JobState::kStopping) {
    job->state = JobState::kDeleting;
    SaveLocked(*job);
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
    SaveLocked(*job);
    return *job;
  }
  job->state = JobState::kDeleting;  // stopped or failed: its host removes the files
  SaveLocked(*job);
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
  SyncLocked();
  spdlog::info("job queued job={} customer={} image={}", job.job_id, job.customer_id,
               job.image_id);
  IndexLocked(job);
  Job& stored = jobs_[job.job_id] = std::move(job);
  // Durable before the customer hears of it: a queued job survives a crash.
  t_write_error = OkStatus();
  if (!SaveLocked(stored)) {
    // Not stored: no job at all.
    const std::string id = stored.job_id;
    by_customer_[who.customer_id].erase(id);
    active_.erase(id);
    jobs_.erase(id);
    Status error = std::exchange(t_write_error, OkStatus());
    return error.ok() ? AbortedError("conflict: the job could not be stored; retry") : error;
  }
  auto ticket = BeginPlaceLocked(stored);
  if (!ticket) return stored;
  PlaceUnlocked(*ticket, lock);
  return GetAnyJobLocked(ticket->job_id);
}

StatusOr<Job> JobManager::GetJob(const Principal& who, const std::string& job_id) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.customer_id != who.customer_id) {
    return NotFoundError("no such job");
  }
  return it->second;
}

StatusOr<Job> JobManager::PeekJob(const Principal& who, const std::string& job_id) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  std::lock_guard<std::mutex> lock(mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.customer_id != who.customer_id) {
    return NotFoundError("no such job");
  }
  return it->second;
}

void JobManager::SyncWithStore() {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
}

StatusOr<std::vector<Job>> JobManager::ListJobs(const Principal& who) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  std::vector<Job> out;
  for (const std::string& id : by_customer_[who.customer_id]) out.push_back(jobs_.at(id));
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

std::vector<Job> JobManager::ActiveJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  std::vector<Job> out;
  for (const std::string& id : ActiveIdsLocked()) out.push_back(jobs_.at(id));
  return out;
}

StatusOr<Job> JobManager::RecordTrustLoss(const std::string& job_id, const std::string& host_id,
                                          const std::string& event, bool stop) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  std::unique_lock<std::mutex> lock(mu_);
  SyncLocked();
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("no such job");
  Job& job = it->second;
  if (job.trust_lost_unix > 0) return job;
  if (job.state != JobState::kRunning || job.vm_host_id != host_id) return BadState(job, "stop (trust lost)");
  KeepLocked(job);
  const int64_t now = clock_->NowUnixSeconds();
  job.trust_lost_unix = now;
  job.trust_events.push_back(CleanLine(event));
  job.updated_unix = now;
  if (stop) {
    job.wanted = VmWanted::kDeleted;
    job.state = JobState::kDeleting;
    job.trust_stop_host_id = host_id;
  }
  SaveLocked(job);
  spdlog::warn("trust lost job={} customer={} host={} vm={} action={}: {}", job.job_id,
               job.customer_id, host_id, job.vm_name, stop ? "stop" : "report", event);
  Job out = job;
  lock.unlock();
  return FailOnConflict(out);
}

StatusOr<Job> JobManager::AddTrustEvent(const std::string& job_id, const std::string& event) {
  t_write_conflict = false;
  t_write_error = OkStatus();
  std::unique_lock<std::mutex> lock(mu_);
  SyncLocked();
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("no such job");
  Job& job = it->second;
  const std::string kind = event.substr(0, event.find(':') + 1);
  for (const std::string& e : job.trust_events) {
    if (e.starts_with(kind)) return job;  // once per kind
  }
  if (job.trust_events.size() >= kMaxDiskEvents) return job;
  KeepLocked(job);
  job.trust_events.push_back(CleanLine(event));
  job.updated_unix = clock_->NowUnixSeconds();
  SaveLocked(job);
  Job out = job;
  lock.unlock();
  return FailOnConflict(out);
}

std::vector<Job> JobManager::ListAllJobs() {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  std::vector<Job> out;
  for (const auto& [id, job] : jobs_) out.push_back(job);
  return out;
}

StatusOr<Job> JobManager::GetAnyJob(const std::string& job_id) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  return GetAnyJobLocked(job_id);
}

StatusOr<Job> JobManager::GetHostVm(const std::string& host_id, const std::string& vm_name) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  ASSIGN_OR_RETURN(Job * job, FindHostVmLocked(host_id, vm_name));
  return *job;
}

StatusOr<Job> JobManager::GetAnyJobLocked(const std::string& job_id) const {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NotFoundError("no such job");
  return it->second;
}

std::vector<Job> JobManager::PendingJobs(const std::string& host_id) {
  auto jobs = PollJobs(host_id);
  return jobs.ok() ? *std::move(jobs) : std::vector<Job>{};
}

StatusOr<std::vector<Job>> JobManager::PollJobs(const std::string& host_id) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  std::vector<Job> out;
  Status failed;
  const int64_t now = clock_->NowUnixSeconds();
  for (const std::string& id : ActiveIdsLocked()) {
    Job& job = jobs_.at(id);
    if (job.host_id != host_id || host_id.empty() || !OnHost(job.state)) continue;
    // The host's poll renews its leases (written at most every half lease).
    if (job.lease_expires_unix - now < options_.lease_seconds / 2) {
      Status renewed = RenewLeaseWriteLocked(job, now + options_.lease_seconds, "poll");
      if (!renewed.ok() && failed.ok()) {
        // The detail (the store's error) is in the log, not in the answer.
        failed = renewed.code() == StatusCode::kAborted
                     ? AbortedError("conflict: the lease of job " + id +
                                    " changed on another portal replica meanwhile; retry")
                     : UnavailableError("store_unavailable: the lease of job " + id +
                                        " on this host was not renewed; retry");
      }
    }
    if (job.host_id == host_id && job.state == JobState::kPlaced) out.push_back(job);
  }
  if (!failed.ok()) return failed;
  return out;
}

Status JobManager::RenewLeaseWriteLocked(Job& job, int64_t expires_unix, std::string_view why) {
  const std::string host_id = job.host_id;
  const size_t attempts = job.attempts.size();
  Status last;
  for (int i = 0; i < 2; ++i) {
    // Re-read after a lost write: another replica may have moved the job
    // on, or renewed the lease itself.
    if (job.host_id != host_id || job.attempts.size() != attempts || !OnHost(job.state) ||
        job.lease_expires_unix >= expires_unix) {
      return OkStatus();
    }
    // The renewal's own outcome, kept out of the calling operation's flags.
    ConflictFlagScope scope;
    t_write_conflict = false;
    t_write_error = OkStatus();
    KeepLocked(job);
    job.lease_expires_unix = expires_unix;
    if (SaveLocked(job)) return OkStatus();
    last = t_write_conflict ? AbortedError("conflict: another replica wrote the job first")
           : !t_write_error.ok() ? t_write_error
                                 : InternalError("the lease write was not stored");
  }
  lease_renewal_failures_.fetch_add(1, std::memory_order_relaxed);
  spdlog::error("lease not renewed job={} host={} ({}): {}; the lease stays what the store holds "
                "(expires_unix={})",
                job.job_id, host_id, why, last.ToString(), job.lease_expires_unix);
  return last;
}

StatusOr<Job> JobManager::ReportProgressLocked(const std::string& host_id,
                                         const ProgressReport& report) {
  std::lock_guard<std::mutex> lock(mu_);
  SyncLocked();
  auto it = jobs_.find(report.job_id);
  if (it == jobs_.end() || it->second.host_id != host_id || !OnHost(it->second.state)) {
    return NotFoundError("no such job on this host");
  }
  Job& job = it->second;
  KeepLocked(job);
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
  if (OnHost(job.state)) RenewLeaseLocked(job);
  if (!SaveLocked(job)) return job;
  spdlog::info("job progress job={} host={} state={}", job.job_id, host_id,
               JobStateName(job.state));
  return job;
}

StatusOr<Job> JobManager::ReportRefusalLocked(const std::string& host_id, const RefusalReport& report) {
  std::unique_lock<std::mutex> lock(mu_);
  SyncLocked();
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
  KeepLocked(it->second);
  auto ticket = RefuseLocked(it->second, reason, why);
  if (!ticket) return it->second;
  PlaceUnlocked(*ticket, lock);
  return GetAnyJobLocked(ticket->job_id);
}

void JobManager::Tick() {
  std::vector<std::string> dropped = hosts_->ExpireStale();
  std::unique_lock<std::mutex> lock(mu_);
  SyncLocked();
  const int64_t now = clock_->NowUnixSeconds();
  // Placed after the scan, one at a time, with the lock released around
  // each KMS call.
  std::vector<PlacementTicket> tickets;
  for (const std::string& id : ActiveIdsLocked()) {
    Job& job = jobs_.at(id);
    const bool host_dropped =
        std::find(dropped.begin(), dropped.end(), job.host_id) != dropped.end();
    // A host that just left the pool loses its job below, with that reason.
    if (OnHost(job.state) && job.lease_expires_unix > 0 && !host_dropped) {
      // A heartbeat of the job's host renews its lease.
      auto host = hosts_->Get(job.host_id);
      if (host.ok() && host->in_pool &&
          host->last_heartbeat_unix + options_.lease_seconds > job.lease_expires_unix &&
          job.lease_expires_unix - now < options_.lease_seconds / 2) {
        // A failed write is logged and counted, and tried again at the
        // next Tick; the lease stays what the store holds meanwhile.
        (void)RenewLeaseWriteLocked(job, host->last_heartbeat_unix + options_.lease_seconds,
                                    "heartbeat");
      }
      if (job.lease_expires_unix < now) {
        KeepLocked(job);
        auto t = RefuseLocked(job, std::string(RefusalKindReason(RefusalKind::kHostLost)),
                              std::string(RefusalKindName(RefusalKind::kHostLost)) +
                                  ": lease expired (no word from the host for over " +
                                  std::to_string(options_.lease_seconds) + " s)");
        if (t) tickets.push_back(*std::move(t));
        continue;
      }
    }
    if (OnHost(job.state)) {
      for (const std::string& h : dropped) {
        if (job.host_id == h) {
          KeepLocked(job);
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
          KeepLocked(job);
          EndLocked(job, "host_lost", "the host left the pool before it reported the end");
          break;
        }
      }
    } else if (job.state == JobState::kQueued && !placing_.contains(id)) {
      KeepLocked(job);
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
