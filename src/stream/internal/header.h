// Header encoding, length arithmetic and key derivation of the stream format
// (docs/format/stream.md §2, §3, §5). Pure functions; no I/O.
#ifndef VMSEAL_STREAM_INTERNAL_HEADER_H_
#define VMSEAL_STREAM_INTERNAL_HEADER_H_

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "stream/stream.h"
#include "stream/stream_format.h"

namespace vmseal::stream::internal {

using Salt = std::array<uint8_t, kSaltBytes>;
using HeaderBytes = std::array<uint8_t, kHeaderBytes>;

// The public fields of a parsed header.
struct Header {
  uint32_t chunk_size_bytes = 0;
  Salt salt{};
  std::array<uint8_t, kCommitmentBytes> commitment{};
};

// How a sealed stream of a given length splits into chunks (doc §5).
struct Layout {
  uint32_t chunk_size_bytes = 0;
  uint64_t chunk_count = 0;        // n >= 1
  uint64_t plaintext_bytes = 0;
  uint64_t sealed_bytes = 0;       // header included
  // Plaintext bytes of chunk `index` (< chunk_count).
  uint64_t PlaintextChunkBytes(uint64_t index) const;
  // Offset of sealed chunk `index` in the stream.
  uint64_t SealedChunkOffset(uint64_t index) const {
    return kHeaderBytes + index * (uint64_t{chunk_size_bytes} + kTagBytes);
  }
};

// INVALID_ARGUMENT unless kMinChunkSizeBytes <= c <= kMaxChunkSizeBytes.
Status ValidateChunkSize(uint32_t chunk_size_bytes);
// INVALID_ARGUMENT if a context field exceeds kMaxContextFieldBytes.
Status ValidateContext(const StreamContext& context);

// The layout for `plaintext_bytes` of input; OUT_OF_RANGE beyond the limits.
StatusOr<Layout> LayoutForPlaintext(uint64_t plaintext_bytes, uint32_t chunk_size_bytes);
// The layout for a sealed stream of `sealed_bytes`; INVALID_ARGUMENT for the
// invalid lengths of doc §5.
StatusOr<Layout> LayoutForSealed(uint64_t sealed_bytes, uint32_t chunk_size_bytes);

// context_bytes of doc §3.
std::vector<uint8_t> EncodeContext(const StreamContext& context);

// Parses the first bytes of a stream (at least kMagicBytes of them when
// available): INVALID_ARGUMENT "not a vmseal stream", "unsupported stream
// version", "invalid chunk size", "truncated stream".
StatusOr<Header> ParseHeader(std::span<const uint8_t> bytes);

// The header's first kHeaderPrefixBytes (magic, version, chunk size, salt).
std::array<uint8_t, kHeaderPrefixBytes> EncodeHeaderPrefix(uint32_t chunk_size_bytes,
                                                           const Salt& salt);

// stream_key and commitment of doc §3.
struct DerivedKeys {
  SecretBytes stream_key;
  std::array<uint8_t, kCommitmentBytes> commitment{};
};
StatusOr<DerivedKeys> DeriveKeys(const SecretBytes& data_key, uint32_t chunk_size_bytes,
                                 const Salt& salt, const StreamContext& context);

// The full header for a new stream.
HeaderBytes EncodeHeader(uint32_t chunk_size_bytes, const Salt& salt,
                         std::span<const uint8_t, kCommitmentBytes> commitment);

// Derives the keys for a parsed header and checks its commitment in constant
// time: DATA_LOSS "decryption failed" on mismatch.
StatusOr<SecretBytes> DeriveAndCheck(const SecretBytes& data_key, const Header& header,
                                     const StreamContext& context);

}  // namespace vmseal::stream::internal

#endif  // VMSEAL_STREAM_INTERNAL_HEADER_H_
