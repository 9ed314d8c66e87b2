#include "csp/customer_audit.h"

#include <charconv>

namespace vmseal::csp {

StatusOr<nlohmann::json> RelayCustomerAudit(ImageService& images, KmsClient& kms, const Principal& who,
                                            const std::string& image, int64_t after_seq,
                                            int64_t old_size) {
  if (after_seq < 0 || old_size < 0) return InvalidArgumentError("after and old must not be negative");
  std::string kms_image_id = image;
  auto own = images.GetImage(who, image);
  if (own.ok()) {
    kms_image_id = own->tagged_image_id.empty() ? own->image_id : own->tagged_image_id;
  } else if (own.status().code() != StatusCode::kNotFound) {
    return own.status();
  }
  auto relayed = kms.CustomerAudit(who.customer_id, kms_image_id, after_seq, old_size);
  if (!relayed.ok()) return relayed.status().WithPrefix("KMS audit");
  return relayed;
}

StatusOr<int64_t> ParseAuditCount(const std::string& text, const std::string& name) {
  if (text.empty()) return int64_t{0};
  int64_t out = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  if (ec != std::errc() || p != text.data() + text.size() || out < 0 || out > (int64_t{1} << 62)) {
    return InvalidArgumentError(name + " must be a non-negative integer");
  }
  return out;
}

}  // namespace vmseal::csp
