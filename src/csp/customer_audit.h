// The portal's part of `vmseal customer audit` (docs/format/audit-log.md
// §6.1): it names the image by its KMS identity and the tenant by the
// session, and relays the KMS's answer unchanged. It cannot forge the
// proofs in it (the customer checks them against the log key the KMS CA
// endorsed), only withhold them.
#ifndef VMSEAL_CSP_CUSTOMER_AUDIT_H_
#define VMSEAL_CSP_CUSTOMER_AUDIT_H_

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "csp/accounts.h"
#include "csp/images.h"
#include "csp/kms_client.h"

namespace vmseal::csp {

// One page of the audit of `image` for the customer `who`. `image` is the
// portal's image id or the tag's imageId of one of the customer's images;
// anything else is passed to the KMS as a tag imageId of the customer's
// tenant, where an image of another tenant is refused tenant_mismatch.
// `after_seq` and `old_size` as the KMS route takes them (>= 0).
StatusOr<nlohmann::json> RelayCustomerAudit(ImageService& images, KmsClient& kms, const Principal& who,
                                            const std::string& image, int64_t after_seq,
                                            int64_t old_size);

// A query parameter `name` of the route: "" is 0, else a decimal in
// 0..2^62 (INVALID_ARGUMENT naming the parameter otherwise).
StatusOr<int64_t> ParseAuditCount(const std::string& text, const std::string& name);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_CUSTOMER_AUDIT_H_
