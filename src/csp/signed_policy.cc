#include "csp/signed_policy.h"

#include "crypto/primitives.h"

namespace vmseal::csp {

std::string KmsImageId(const ImageInfo& i) {
  return i.tagged_image_id.empty() ? i.image_id : i.tagged_image_id;
}

StatusOr<SignedPolicy> RelaySignedPolicy(KmsClient* kms, const Principal& who,
                                         const ImageInfo& image, const std::string& document_b64,
                                         const std::string& signature_b64) {
  auto document = crypto::Base64Decode(document_b64);
  if (!document.ok() || document->empty()) {
    return InvalidArgumentError("document must be the policy document's bytes in base64");
  }
  auto signature = crypto::Base64Decode(signature_b64);
  if (!signature.ok() || signature->empty()) {
    return InvalidArgumentError("signature must be the document's signature in base64");
  }
  return kms->PutSignedPolicy(who.customer_id, KmsImageId(image),
                              std::string(document->begin(), document->end()), *signature);
}

StatusOr<SignedPolicy> NewestSignedPolicy(KmsClient* kms, const Principal& who,
                                          const ImageInfo& image) {
  return kms->GetSignedPolicy(who.customer_id, KmsImageId(image));
}

}  // namespace vmseal::csp
