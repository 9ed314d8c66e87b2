// The portal's part in an image's release policy: it relays the customer's
// signed policy document (docs/format/policy-document.md) to the KMS and
// cannot make or change one. Whether a document is genuine, for this image,
// and newer than the last is the KMS's check (kms::KmsService::PutSignedPolicy).
#ifndef VMSEAL_CSP_SIGNED_POLICY_H_
#define VMSEAL_CSP_SIGNED_POLICY_H_

#include <string>

#include "base/status.h"
#include "csp/accounts.h"
#include "csp/images.h"
#include "csp/kms_client.h"

namespace vmseal::csp {

// The image's identity at the KMS: the tag's imageId (what the key-wrap
// label binds and release looks the policy up by).
std::string KmsImageId(const ImageInfo& image);

// Relays `document` (the signed bytes) and `signature` (base64 DER) for
// `image`, which `who` owns, to the KMS under (who, KmsImageId(image)).
// INVALID_ARGUMENT for text that is not base64; the KMS's refusals as it
// gives them (policy_stale, bad_signature, tenant_mismatch, ...).
StatusOr<SignedPolicy> RelaySignedPolicy(KmsClient* kms, const Principal& who,
                                         const ImageInfo& image, const std::string& document_b64,
                                         const std::string& signature_b64);

// The newest signed policy of `who`'s `image` at the KMS; NOT_FOUND if none.
StatusOr<SignedPolicy> NewestSignedPolicy(KmsClient* kms, const Principal& who,
                                          const ImageInfo& image);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_SIGNED_POLICY_H_
