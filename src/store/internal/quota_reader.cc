#include "store/internal/quota_reader.h"

namespace vmseal::store::internal {

StatusOr<size_t> QuotaReader::Read(std::span<uint8_t> out) {
  if (!error_.ok()) return error_;
  auto n = source_.Read(out);
  if (!n.ok()) {
    error_ = n.status();
    return error_;
  }
  // Compared without adding to the count first: a source cannot make the
  // sum wrap around and slip under the limit.
  if (max_bytes_ != 0 && (total_bytes_ > max_bytes_ || *n > max_bytes_ - total_bytes_)) {
    error_ = ResourceExhaustedError(what_ + " exceeds the size quota of " + std::to_string(max_bytes_) +
                                    " bytes");
    return error_;
  }
  total_bytes_ += *n;
  return *n;
}

}  // namespace vmseal::store::internal
