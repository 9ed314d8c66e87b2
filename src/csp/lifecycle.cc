#include "csp/lifecycle.h"

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

}  // namespace vmseal::csp
