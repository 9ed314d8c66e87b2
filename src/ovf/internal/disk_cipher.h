// How one file of a package is encrypted: the stream format (default) or a
// single standard XML Encryption AES-256-GCM message (--xmlenc-compat).
#ifndef VMSEAL_OVF_INTERNAL_DISK_CIPHER_H_
#define VMSEAL_OVF_INTERNAL_DISK_CIPHER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "stream/stream.h"

namespace vmseal::ovf::internal {

// Stateless; thread-safe.
class DiskCipher {
 public:
  virtual ~DiskCipher() = default;
  // The xenc:EncryptionMethod Algorithm of each file.
  virtual std::string_view algorithm_uri() const = 0;
  // Plaintext bytes per chunk as recorded in the tag (0 when not chunked).
  virtual uint32_t chunk_size_bytes() const = 0;
  // Stored size for `plaintext_bytes` of input; OUT_OF_RANGE above the limit.
  virtual StatusOr<uint64_t> SealedSize(uint64_t plaintext_bytes) const = 0;
  // Encrypts all of `in` and appends the result to `out`.
  virtual Status Seal(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
                      const stream::StreamContext& context) const = 0;
  // Decrypts `in` and appends the plaintext to `out`. DATA_LOSS "decryption
  // failed" on any authentication failure, detected at the latest at the end:
  // callers publish `out` atomically.
  virtual Status Open(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
                      const stream::StreamContext& context) const = 0;
};

// The cipher named by `algorithm_uri`; INVALID_ARGUMENT "unknown algorithm"
// otherwise. `chunk_size_bytes` (0 = default) applies to the stream format.
StatusOr<std::unique_ptr<DiskCipher>> NewDiskCipher(std::string_view algorithm_uri,
                                                    uint32_t chunk_size_bytes);

// Whether this build contains the stream format (false until it is linked).
bool StreamFormatAvailable();

}  // namespace vmseal::ovf::internal

#endif  // VMSEAL_OVF_INTERNAL_DISK_CIPHER_H_
