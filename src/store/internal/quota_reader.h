// The read side of every store upload loop (FsObjectStore and S3ObjectStore,
// Put and StageAppend): a Reader that passes its source through and enforces
// the size quota the portal computed for the upload (the smaller of the
// per-image cap and what is left of the account's storage quota).
#ifndef VMSEAL_STORE_INTERNAL_QUOTA_READER_H_
#define VMSEAL_STORE_INTERNAL_QUOTA_READER_H_

#include <cstdint>
#include <span>
#include <string>
#include <utility>

#include "base/status.h"
#include "store/object_store.h"

namespace vmseal::store::internal {

// Reads `source` and counts the bytes on top of `start_bytes` (the bytes the
// upload already holds: 0 for a Put, the staged size for an append). A Read
// that would bring the count past `max_bytes` fails with RESOURCE_EXHAUSTED
// "<what> exceeds the size quota of <max_bytes> bytes"; the bytes of that
// Read must not be used (they are not counted), and every later Read fails
// the same way. A count exactly at `max_bytes` is within the quota.
// `max_bytes` 0 means no limit. A source error is passed on unchanged and is
// sticky too. Does not own `source`; not thread-safe.
class QuotaReader final : public Reader {
 public:
  QuotaReader(Reader& source, uint64_t start_bytes, uint64_t max_bytes, std::string what)
      : source_(source), total_bytes_(start_bytes), max_bytes_(max_bytes), what_(std::move(what)) {}

  StatusOr<size_t> Read(std::span<uint8_t> out) override;

  // `start_bytes` plus every byte returned so far.
  uint64_t total_bytes() const { return total_bytes_; }

 private:
  Reader& source_;
  uint64_t total_bytes_;
  const uint64_t max_bytes_;
  const std::string what_;
  Status error_;
};

}  // namespace vmseal::store::internal

#endif  // VMSEAL_STORE_INTERNAL_QUOTA_READER_H_
