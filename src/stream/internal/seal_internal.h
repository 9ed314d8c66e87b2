// Test hooks below the public API: sealing with a chosen salt, so that known
// answers can be reproduced. Production code never chooses a salt.
#ifndef VMSEAL_STREAM_INTERNAL_SEAL_INTERNAL_H_
#define VMSEAL_STREAM_INTERNAL_SEAL_INTERNAL_H_

#include "stream/internal/header.h"
#include "stream/stream.h"

namespace vmseal::stream::internal {

// Seal with `salt` instead of a fresh random one. Tests only.
Status SealWithSaltForTesting(const RandomAccessFile& in, WritableFile* out,
                              const SecretBytes& data_key, const StreamContext& context,
                              const SealOptions& options, const Salt& salt);

// A RandomAccessFile over bytes in memory (the bytes must outlive it).
class MemoryFile final : public RandomAccessFile {
 public:
  explicit MemoryFile(std::span<const uint8_t> data) : data_(data) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override;
  StatusOr<uint64_t> Size() const override { return data_.size(); }

 private:
  std::span<const uint8_t> data_;
};

// A WritableFile appending to a vector (holes become zeros).
class VectorWritableFile final : public WritableFile {
 public:
  explicit VectorWritableFile(std::vector<uint8_t>* out) : out_(out) {}
  Status Append(std::span<const uint8_t> data) override;
  Status Skip(uint64_t bytes) override;
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  uint64_t skipped_bytes() const { return skipped_bytes_; }

 private:
  std::vector<uint8_t>* out_;
  uint64_t skipped_bytes_ = 0;
};

}  // namespace vmseal::stream::internal

#endif  // VMSEAL_STREAM_INTERNAL_SEAL_INTERNAL_H_
