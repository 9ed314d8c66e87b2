// Constants of the sealed-image stream format. Each one is specified in
// docs/format/stream.md; the section is cited beside it. Change the document
// first, then this file.
#ifndef VMSEAL_STREAM_STREAM_FORMAT_H_
#define VMSEAL_STREAM_STREAM_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace vmseal::stream {

// Names this format in the OVF package's EncryptionMethod (doc: preamble).
inline constexpr std::string_view kAlgorithmUri = "urn:vmseal:stream:v1";

// Header layout (doc §2).
inline constexpr uint8_t kMagic[8] = {0x89, 'V', 'M', 'S', 'E', 'A', 'L', '\n'};
inline constexpr size_t kMagicBytes = 8;
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kVersionOffset = 8;
inline constexpr size_t kChunkSizeOffset = 12;
inline constexpr size_t kSaltOffset = 16;
inline constexpr size_t kSaltBytes = 32;
inline constexpr size_t kCommitmentOffset = 48;
inline constexpr size_t kCommitmentBytes = 32;
inline constexpr size_t kHeaderPrefixBytes = 48;  // magic..salt, bound by §3
inline constexpr size_t kHeaderBytes = 80;

// Derivation labels (doc §3); each is followed by a 0x00 byte in the info.
inline constexpr std::string_view kKeyLabel = "vmseal/stream/v1/key";
inline constexpr std::string_view kCommitmentLabel = "vmseal/stream/v1/commitment";
inline constexpr size_t kStreamKeyBytes = 32;

// Chunks (doc §4).
inline constexpr size_t kNonceBytes = 12;
inline constexpr size_t kNonceCounterBytes = 11;
inline constexpr uint8_t kLastChunkFlag = 0x01;
inline constexpr uint8_t kNotLastChunkFlag = 0x00;
inline constexpr size_t kTagBytes = 16;

// Limits (doc §5).
inline constexpr uint32_t kMinChunkSizeBytes = 16;
inline constexpr uint32_t kMaxChunkSizeBytes = uint32_t{1} << 24;
inline constexpr uint32_t kDefaultChunkSizeBytes = uint32_t{1} << 20;
inline constexpr uint64_t kMaxChunks = uint64_t{1} << 32;
inline constexpr uint64_t kMinSealedBytes = kHeaderBytes + kTagBytes;
inline constexpr size_t kMaxContextFieldBytes = 4096;

}  // namespace vmseal::stream

#endif  // VMSEAL_STREAM_STREAM_FORMAT_H_
