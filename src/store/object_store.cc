#include "store/object_store.h"

#include <algorithm>
#include <cstring>

namespace vmseal::store {

Status ValidateKey(std::string_view key) {
  if (key.empty()) return InvalidArgumentError("object key is empty");
  if (key.size() > kMaxKeyBytes) {
    return InvalidArgumentError("object key longer than " + std::to_string(kMaxKeyBytes) +
                                " bytes");
  }
  size_t start = 0;
  while (start <= key.size()) {
    size_t end = key.find('/', start);
    if (end == std::string_view::npos) end = key.size();
    std::string_view segment = key.substr(start, end - start);
    if (segment.empty()) return InvalidArgumentError("object key has an empty segment");
    if (segment[0] == '.') {
      return InvalidArgumentError("object key segment starts with '.'");
    }
    for (char c : segment) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '.' || c == '_' || c == '-';
      if (!ok) return InvalidArgumentError("object key has a character outside [A-Za-z0-9._-/]");
    }
    start = end + 1;
  }
  return OkStatus();
}

Status ValidateStageId(std::string_view id) {
  if (id.size() != 32) return NotFoundError("no upload session");
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return NotFoundError("no upload session");
    }
  }
  return OkStatus();
}

StatusOr<size_t> RandomAccessFileReader::Read(std::span<uint8_t> out) {
  ASSIGN_OR_RETURN(size_t n, file_->Read(offset_, out));
  offset_ += n;
  return n;
}

StatusOr<size_t> StringReader::Read(std::span<uint8_t> out) {
  size_t n = std::min(out.size(), data_.size());
  if (n > 0) std::memcpy(out.data(), data_.data(), n);
  data_.remove_prefix(n);
  return n;
}

}  // namespace vmseal::store
