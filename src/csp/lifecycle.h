// The portal's part in taking things back (issue 19): it relays the
// customer's signed lifecycle requests (kms/lifecycle.h: revoke_image,
// close_account) to the KMS, which alone decides, and then acts on the
// customer's running VMs as the image's policy says (`on_trust_loss`:
// "stop" deletes each VM of the image, so its host stops it and shreds its
// overlay and cache; "report" lists them). The portal makes no request of
// its own: a forged, altered or foreign one is refused by the KMS.
#ifndef VMSEAL_CSP_LIFECYCLE_H_
#define VMSEAL_CSP_LIFECYCLE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "csp/accounts.h"
#include "csp/clock.h"
#include "csp/images.h"
#include "csp/jobs.h"
#include "csp/kms_client.h"

namespace vmseal::csp {

struct LifecycleOutcome {
  nlohmann::json kms;                // the KMS's answer (the mark)
  std::vector<std::string> stopped;  // VMs (job ids) told to stop and shred
  std::vector<std::string> reported; // VMs left running, reported
};

// Relays `who`'s signed revoke_image request for `image` (base64 texts);
// once the KMS accepts it, stops or reports the VMs of the image.
// INVALID_ARGUMENT for text that is not base64; the KMS's refusals as given.
StatusOr<LifecycleOutcome> RevokeImage(KmsClient* kms, JobManager* jobs, const Principal& who,
                                       const ImageInfo& image, const std::string& document_b64,
                                       const std::string& signature_b64);

// Relays `who`'s signed close_account request; then stops every VM of the
// customer (none may be released again once the keys are destroyed).
StatusOr<LifecycleOutcome> CloseAccount(KmsClient* kms, JobManager* jobs, const Principal& who,
                                        const std::string& document_b64,
                                        const std::string& signature_b64);

nlohmann::json LifecycleOutcomeJson(const LifecycleOutcome& outcome);

// Loss of trust (docs/protocol.md §7.2). Every `interval_seconds` the
// portal asks the KMS whether the host of each running VM still meets the
// image's release policy on its latest verdict (a failed re-attestation,
// PCRs outside the flavors, evidence older than the policy's window, a
// revoked or unenrolled host). For each VM the KMS finds untrusted (and
// audits as vm.trust_loss), the job gets a "trust_lost: ..." event and, if
// the image's policy says `on_trust_loss: "stop"`, its host is told to stop
// the VM and shred its overlay and cache (a delete); "report" leaves it
// running. A stopped VM whose host has not confirmed it gone within
// `stop_timeout_seconds` gets "stop_unanswered: ..."; once the host confirms,
// "stopped: ...". Both are also sent to the KMS (vm.trust_event) for the
// customer's audit. The KMS decides; the portal cannot make a VM trusted.
//
// Thread-compatible: one caller (the portal's tick thread).
class TrustWatch {
 public:
  struct Options {
    // How often running VMs are checked. Default 10 s.
    int64_t interval_seconds = 10;
    // How long a host has to confirm that a VM stopped for lost trust is
    // gone before the portal reports it unanswered. Default 60 s.
    int64_t stop_timeout_seconds = 60;
  };
  // All pointers must outlive the object.
  TrustWatch(const Options& options, KmsClient* kms, JobManager* jobs, const Clock* clock)
      : options_(options), kms_(kms), jobs_(jobs), clock_(clock) {}

  // One round if `interval_seconds` passed since the last (or `force`).
  // KMS and store failures are logged and retried at the next round.
  void Tick(bool force = false);

 private:
  // Adds the event to the job and sends it to the KMS's audit.
  void Report(const Job& job, const std::string& host_id, const std::string& event,
              const std::string& text);

  const Options options_;
  KmsClient* const kms_;
  JobManager* const jobs_;
  const Clock* const clock_;
  int64_t next_unix_ = 0;
  // Jobs stopped for lost trust whose host has not yet confirmed them gone
  // (job id -> host id). The job records keep the order (Job::
  // trust_stop_host_id, with no "stopped" event yet), so the first Tick
  // after a portal restart takes them up again.
  std::map<std::string, std::string> stopping_;
  bool recovered_ = false;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_LIFECYCLE_H_
