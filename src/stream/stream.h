// The sealed-image stream: a VM disk image as a sequence of independently
// authenticated AES-256-GCM chunks (format: docs/format/stream.md).
//
// This header is the whole public API of the component. Callers never supply
// nonces; the per-stream key is derived from the data key, a random salt, the
// header and the caller's StreamContext.
#ifndef VMSEAL_STREAM_STREAM_H_
#define VMSEAL_STREAM_STREAM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "stream/stream_format.h"

namespace vmseal::stream {

// The data key is 32 bytes (AES-256).
inline constexpr size_t kDataKeyBytes = 32;

// What the stream is for. Bound into the key derivation: opening with a
// different context fails exactly like opening with a wrong key.
struct StreamContext {
  std::string image_id;   // e.g. a UUID; may be empty only in tests
  std::string tenant;     // customer id
  uint64_t key_version = 1;
};

// Called from the I/O thread with (bytes done, total bytes) of plaintext.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

struct SealOptions {
  // Plaintext bytes per chunk. Must be in [kMinChunkSizeBytes,
  // kMaxChunkSizeBytes] (stream_format.h); 0 = kDefaultChunkSizeBytes (1 MiB).
  uint32_t chunk_size_bytes = 0;  // 0 = the format's default
  // Worker threads for the cipher; 0 = one per core.
  int threads = 0;
  ProgressFn progress;
};

struct OpenOptions {
  int threads = 0;  // 0 = one per core
  ProgressFn progress;
  // When true, all-zero plaintext chunks are written as holes (Skip), so a
  // sparse disk image stays sparse.
  bool sparse_output = true;
};

// Size in bytes of the sealed stream for `plaintext_bytes` of input at
// `chunk_size_bytes` (0 = default). OUT_OF_RANGE beyond the format's limits.
StatusOr<uint64_t> SealedSize(uint64_t plaintext_bytes, uint32_t chunk_size_bytes = 0);

// Seals all of `in` into `out` (appending). `out` is not closed or synced.
Status Seal(const RandomAccessFile& in, WritableFile* out, const SecretBytes& data_key,
            const StreamContext& context, const SealOptions& options);

// Opens the sealed stream `in` and appends the plaintext to `out`. Returns
// DATA_LOSS "decryption failed" on any authentication failure (wrong key,
// wrong context, any tampering); INVALID_ARGUMENT for input that is not a
// stream at all. On error, `out` holds garbage: callers publish through
// AtomicOutputFile (as OpenFile does) so that nothing partial remains.
Status Open(const RandomAccessFile& in, WritableFile* out, const SecretBytes& data_key,
            const StreamContext& context, const OpenOptions& options);

// File-to-file helpers. The output appears at `out_path` only after the
// whole stream has been processed (and, for Open, authenticated); after any
// failure no file is left at `out_path` or beside it. `out_path` may be
// "/dev/null" (or another non-regular file), which is written directly
// (and without holes). `in_path` must be a regular file (INVALID_ARGUMENT
// otherwise). Regular outputs are created with mode 0644 (sealed) or 0600
// (opened plaintext) and replace any existing file.
Status SealFile(Env* env, const std::string& in_path, const std::string& out_path,
                const SecretBytes& data_key, const StreamContext& context,
                const SealOptions& options);
Status OpenFile(Env* env, const std::string& in_path, const std::string& out_path,
                const SecretBytes& data_key, const StreamContext& context,
                const OpenOptions& options);

// A streaming writer for callers that produce plaintext incrementally (one
// thread, no pipeline). Writes the header on Create, then one sealed chunk
// each time a full chunk is followed by more data; Finish seals the final
// chunk. Errors are sticky: after any failure every call returns it. Not
// thread-safe. Destroying a writer without Finish leaves an invalid stream.
class StreamWriter {
 public:
  // `out` must outlive the writer. `chunk_size_bytes` 0 = the default.
  static StatusOr<std::unique_ptr<StreamWriter>> Create(WritableFile* out,
                                                        const SecretBytes& data_key,
                                                        const StreamContext& context,
                                                        uint32_t chunk_size_bytes = 0);
  virtual ~StreamWriter() = default;
  // Appends plaintext.
  virtual Status Write(std::span<const uint8_t> data) = 0;
  // Seals the final chunk. Later calls to Write or Finish fail.
  virtual Status Finish() = 0;
};

// Random access to a sealed stream: ReadAt reads and authenticates only the
// chunks that cover the requested range. Thread-safe.
class StreamReader {
 public:
  // Parses the header, checks the key commitment and authenticates the final
  // chunk (so plaintext_size() is authenticated and truncation is caught
  // here). `in` must outlive the reader. Errors as for Open.
  static StatusOr<std::unique_ptr<StreamReader>> Create(const RandomAccessFile* in,
                                                        const SecretBytes& data_key,
                                                        const StreamContext& context);
  virtual ~StreamReader() = default;
  // Plaintext length in bytes (from the sealed length).
  virtual uint64_t plaintext_size() const = 0;
  // Reads up to out.size() plaintext bytes at `offset`; fewer only at the end
  // (0 at or past plaintext_size()). Reads and opens only the chunks that
  // cover the range; DATA_LOSS "decryption failed" if one does not verify.
  // That error is sticky: every later ReadAt fails the same way.
  virtual StatusOr<size_t> ReadAt(uint64_t offset, std::span<uint8_t> out) const = 0;
};

}  // namespace vmseal::stream

#endif  // VMSEAL_STREAM_STREAM_H_
