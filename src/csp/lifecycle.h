// The portal's part in taking things back (issue 19): it relays the
// customer's signed lifecycle requests (kms/lifecycle.h: revoke_image,
// close_account) to the KMS, which alone decides, and then acts on the
// customer's running VMs as the image's policy says (`on_trust_loss`:
// "stop" deletes each VM of the image, so its host stops it and shreds its
// overlay and cache; "report" lists them). The portal makes no request of
// its own: a forged, altered or foreign one is refused by the KMS.
#ifndef VMSEAL_CSP_LIFECYCLE_H_
#define VMSEAL_CSP_LIFECYCLE_H_

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "csp/accounts.h"
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

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_LIFECYCLE_H_
