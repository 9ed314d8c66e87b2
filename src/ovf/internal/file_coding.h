// How a package stores a file other than as one plain file (DSP0243 §5.2,
// docs/format/package.md §2.3): split into chunks (ovf:chunkSize, named
// <href>.000000000, <href>.000000001, ...) and/or gzip-compressed
// (ovf:compression="gzip"). Seal reads such files back into the plain bytes
// it seals; a sealed package never stores a file this way.
#ifndef VMSEAL_OVF_INTERNAL_FILE_CODING_H_
#define VMSEAL_OVF_INTERNAL_FILE_CODING_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::ovf::internal {

// The name of chunk `index` of the file `href`: href + "." + nine digits.
std::string ChunkName(const std::string& href, uint64_t index);

// The chunks of a file read as one. Takes ownership of the parts.
class ConcatenatedFile final : public RandomAccessFile {
 public:
  static StatusOr<std::unique_ptr<ConcatenatedFile>> Create(
      std::vector<std::unique_ptr<RandomAccessFile>> parts);
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override;
  StatusOr<uint64_t> Size() const override { return size_; }

 private:
  ConcatenatedFile() = default;
  std::vector<std::unique_ptr<RandomAccessFile>> parts_;
  std::vector<uint64_t> starts_;  // offset of each part
  uint64_t size_ = 0;
};

// Decompresses the gzip data in `in` (RFC 1952; one or more members, as
// `cat a.gz b.gz` makes) into `out`. DATA_LOSS "gzip: ..." for corrupt or
// truncated data or trailing garbage; RESOURCE_EXHAUSTED when the output
// would exceed `max_out` bytes. Returns the number of bytes written.
StatusOr<uint64_t> Gunzip(const RandomAccessFile& in, WritableFile* out, uint64_t max_out);

}  // namespace vmseal::ovf::internal

#endif  // VMSEAL_OVF_INTERNAL_FILE_CODING_H_
