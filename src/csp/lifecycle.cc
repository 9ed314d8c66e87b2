#include "csp/lifecycle.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "crypto/primitives.h"
#include "csp/signed_policy.h"

namespace vmseal::csp {
namespace {

StatusOr<std::pair<std::string, crypto::Bytes>> Decode(const std::string& document_b64,
                                                       const std::string& signature_b64) {
  auto document = crypto::Base64Decode(document_b64);
  if (!document.ok() || document->empty()) {
    return InvalidArgumentError("document must be the request's bytes in base64");
  }
  auto signature = crypto::Base64Decode(signature_b64);
  if (!signature.ok() || signature->empty()) {
    return InvalidArgumentError("signature must be the request's signature in base64");
  }
  return std::pair{std::string(document->begin(), document->end()), *std::move(signature)};
}

bool Live(const Job& j) {
  return j.state != JobState::kFailed && j.state != JobState::kStopped &&
         j.state != JobState::kDeleting && j.state != JobState::kDeleted;
}

// Deletes (stop = true) or lists the customer's live jobs that `match`.
template <typename Match>
Status Act(JobManager* jobs, const Principal& who, bool stop, Match match, LifecycleOutcome* out) {
  ASSIGN_OR_RETURN(std::vector<Job> list, jobs->ListJobs(who));
  for (const Job& j : list) {
    if (!Live(j) || !match(j)) continue;
    if (stop) {
      RETURN_IF_ERROR(jobs->DeleteVm(who, j.job_id).status());
      out->stopped.push_back(j.job_id);
    } else {
      out->reported.push_back(j.job_id);
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<LifecycleOutcome> RevokeImage(KmsClient* kms, JobManager* jobs, const Principal& who,
                                       const ImageInfo& image, const std::string& document_b64,
                                       const std::string& signature_b64) {
  ASSIGN_OR_RETURN(auto request, Decode(document_b64, signature_b64));
  LifecycleOutcome out;
  ASSIGN_OR_RETURN(out.kms, kms->LifecycleRequest(who.customer_id, request.first, request.second));
  const std::string kms_image = KmsImageId(image);
  if (out.kms.value("kind", "") != "image" ||
      out.kms.value("subject", "") != who.customer_id + "/" + kms_image) {
    // A valid request for another image of the customer: the KMS revoked
    // that one; this image's VMs are not touched.
    return FailedPreconditionError("image_mismatch: the signed request names another image than " +
                                   image.image_id);
  }
  const bool stop = out.kms.value("on_trust_loss", "report") == "stop";
  RETURN_IF_ERROR(Act(jobs, who, stop, [&](const Job& j) { return j.tagged_image_id == kms_image; }, &out));
  return out;
}

StatusOr<LifecycleOutcome> CloseAccount(KmsClient* kms, JobManager* jobs, const Principal& who,
                                        const std::string& document_b64,
                                        const std::string& signature_b64) {
  ASSIGN_OR_RETURN(auto request, Decode(document_b64, signature_b64));
  LifecycleOutcome out;
  ASSIGN_OR_RETURN(out.kms, kms->LifecycleRequest(who.customer_id, request.first, request.second));
  if (out.kms.value("kind", "") != "customer") {
    return FailedPreconditionError("bad_request: the signed request is not a close_account request");
  }
  RETURN_IF_ERROR(Act(jobs, who, /*stop=*/true, [](const Job&) { return true; }, &out));
  return out;
}

nlohmann::json LifecycleOutcomeJson(const LifecycleOutcome& o) {
  return {{"kms", o.kms}, {"stopped", o.stopped}, {"reported", o.reported}};
}

void TrustWatch::Report(const Job& job, const std::string& host_id, const std::string& event,
                        const std::string& text) {
  // The KMS's audit first, so that what the job shows is on record.
  Status told = kms_->RecordVmTrustEvent({{"job_id", job.job_id},
                                          {"tenant", job.customer_id},
                                          {"image_id", job.tagged_image_id},
                                          {"host_id", host_id},
                                          {"event", event},
                                          {"text", text}});
  if (!told.ok()) spdlog::warn("trust event of job {} not audited: {}", job.job_id, told.message());
  auto added = jobs_->AddTrustEvent(job.job_id, event + ": " + text);
  if (!added.ok()) {
    spdlog::warn("trust event of job {} not recorded: {}", job.job_id, added.status().message());
  }
}

void TrustWatch::Tick(bool force) {
  const int64_t now = clock_->NowUnixSeconds();
  if (!force && now < next_unix_) return;
  next_unix_ = now + options_.interval_seconds;

  // After a (re)start: the stops ordered before it that were never
  // followed up, from the job records (ended jobs included: the host may
  // have confirmed while the portal was down).
  if (!recovered_) {
    recovered_ = true;
    for (const Job& j : jobs_->ListAllJobs()) {
      if (j.trust_stop_host_id.empty()) continue;
      const bool followed_up = std::any_of(j.trust_events.begin(), j.trust_events.end(),
                                           [](const std::string& e) { return e.starts_with("stopped:"); });
      if (!followed_up) stopping_.emplace(j.job_id, j.trust_stop_host_id);
    }
  }

  // The stopped VMs: confirmed gone, or overdue.
  for (auto it = stopping_.begin(); it != stopping_.end();) {
    auto job = jobs_->GetAnyJob(it->first);
    if (!job.ok()) {
      it = stopping_.erase(it);
      continue;
    }
    if (job->state == JobState::kDeleted || job->state == JobState::kStopped) {
      Report(*job, it->second, "stopped", "host " + it->second + " stopped the VM and removed its files");
      it = stopping_.erase(it);
      continue;
    }
    const bool reported = std::any_of(job->trust_events.begin(), job->trust_events.end(),
                                      [](const std::string& e) { return e.starts_with("stop_unanswered:"); });
    if (!reported && now - job->trust_lost_unix >= options_.stop_timeout_seconds) {
      Report(*job, it->second, "stop_unanswered",
             "host " + it->second + " did not confirm within " +
                 std::to_string(options_.stop_timeout_seconds) +
                 " s that the VM is stopped and removed; it may still run");
    }
    ++it;
  }

  std::vector<Job> running;
  for (Job& j : jobs_->ActiveJobs()) {
    if (j.state == JobState::kRunning && j.trust_lost_unix == 0 && !j.vm_host_id.empty() &&
        !j.tagged_image_id.empty()) {
      running.push_back(std::move(j));
    }
  }
  for (size_t first = 0; first < running.size(); first += 1000) {
    const size_t last = std::min(running.size(), first + 1000);
    nlohmann::json vms = nlohmann::json::array();
    std::map<std::string, const Job*> by_id;
    for (size_t i = first; i < last; ++i) {
      const Job& j = running[i];
      vms.push_back({{"job_id", j.job_id}, {"tenant", j.customer_id},
                     {"image_id", j.tagged_image_id}, {"host_id", j.vm_host_id}});
      by_id[j.job_id] = &j;
    }
    auto answer = kms_->CheckVmTrust({{"vms", vms}});
    if (!answer.ok()) {
      spdlog::warn("trust check of {} running VMs failed (retried): {}", vms.size(),
                   answer.status().message());
      return;
    }
    if (!answer->contains("vms") || !(*answer)["vms"].is_array()) continue;
    for (const nlohmann::json& a : (*answer)["vms"]) {
      if (!a.is_object() || a.value("trusted", true)) continue;
      auto it = by_id.find(a.value("job_id", ""));
      if (it == by_id.end()) continue;
      const Job& j = *it->second;
      const bool stop = a.value("on_trust_loss", "report") == "stop";
      const std::string event = "trust_lost: host " + j.vm_host_id + " is no longer trusted (" +
                                a.value("reason", "unknown") + "); on_trust_loss=" +
                                (stop ? "stop: the VM is stopped and its files removed"
                                      : "report: the VM keeps running");
      auto recorded = jobs_->RecordTrustLoss(j.job_id, j.vm_host_id, event, stop);
      if (!recorded.ok()) {
        spdlog::warn("trust loss of job {} not recorded (retried): {}", j.job_id,
                     recorded.status().message());
        continue;
      }
      if (stop) stopping_[j.job_id] = j.vm_host_id;
    }
  }
}

}  // namespace vmseal::csp
