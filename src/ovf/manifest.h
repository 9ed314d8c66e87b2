// OVF manifests (.mf): one line per file, `SHA256(name)= hex`, over the
// files as stored (docs/format/package.md §8).
#ifndef VMSEAL_OVF_MANIFEST_H_
#define VMSEAL_OVF_MANIFEST_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::ovf {

enum class DigestAlgorithm { kSha1, kSha256, kSha512 };

struct ManifestEntry {
  DigestAlgorithm algorithm = DigestAlgorithm::kSha256;
  std::string name;
  std::vector<uint8_t> digest;
};

// Parses a manifest. Accepts SHA1, SHA256 and SHA512 lines, LF or CRLF line
// ends and a final line without LF. INVALID_ARGUMENT for any other line, a
// digest of the wrong length, a duplicate name, or text over
// kMaxManifestBytes.
StatusOr<std::vector<ManifestEntry>> ParseManifest(std::string_view text);

// The manifest text for `entries`, one LF-terminated line each.
std::string FormatManifest(const std::vector<ManifestEntry>& entries);

// The digest of all of `file`.
StatusOr<std::vector<uint8_t>> DigestFile(const RandomAccessFile& file, DigestAlgorithm algorithm);

// Incremental digest for data written in a stream. Not thread-safe.
class StreamingDigest {
 public:
  explicit StreamingDigest(DigestAlgorithm algorithm);
  ~StreamingDigest();
  StreamingDigest(const StreamingDigest&) = delete;
  StreamingDigest& operator=(const StreamingDigest&) = delete;
  void Update(std::span<const uint8_t> data);
  std::vector<uint8_t> Finish();

 private:
  void* ctx_;  // EVP_MD_CTX
};

// A WritableFile that forwards to `out` and digests what passes through.
class DigestingFile : public WritableFile {
 public:
  DigestingFile(WritableFile* out, DigestAlgorithm algorithm) : out_(out), digest_(algorithm) {}
  Status Append(std::span<const uint8_t> data) override;
  Status Skip(uint64_t bytes) override;  // digests zeros
  Status Sync() override { return out_->Sync(); }
  Status Close() override { return out_->Close(); }
  uint64_t bytes_written() const { return bytes_; }
  std::vector<uint8_t> Finish() { return digest_.Finish(); }

 private:
  WritableFile* const out_;
  StreamingDigest digest_;
  uint64_t bytes_ = 0;
};

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_MANIFEST_H_
