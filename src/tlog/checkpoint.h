// Text formats of the log (docs/format/audit-log.md §3, §5): C2SP
// tlog-checkpoint note text, C2SP tlog-proof@v1 inclusion proofs, and the
// vmseal consistency proof. Parsers are strict (one spelling per value)
// and bounded; none checks a signature (see note.h) or a proof (merkle.h).
#ifndef VMSEAL_TLOG_CHECKPOINT_H_
#define VMSEAL_TLOG_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "tlog/merkle.h"

namespace vmseal::tlog {

inline constexpr size_t kMaxCheckpointExtensions = 8;
inline constexpr std::string_view kInclusionProofHeader = "c2sp.org/tlog-proof@v1";
inline constexpr std::string_view kConsistencyProofHeader = "vmseal.dev/tlog-consistency@v1";

// A tree head as the log states it (c2sp.org/tlog-checkpoint).
struct Checkpoint {
  std::string origin;
  uint64_t size = 0;
  Hash root{};
  std::vector<std::string> extensions;  // opaque, non-empty lines
};

// The note text: origin, size, base64 root, extension lines, each ending
// in "\n". INVALID_ARGUMENT if a field cannot be written (empty or
// multi-line origin or extension, size over the maximum).
StatusOr<std::string> FormatCheckpoint(const Checkpoint& checkpoint);

// Parses checkpoint note text (the text of a signed note, signatures
// removed). INVALID_ARGUMENT "checkpoint: ..." for anything but exactly the
// format above: decimal size without leading zeros, canonical base64 of 32
// bytes, at most 8 non-empty extension lines.
StatusOr<Checkpoint> ParseCheckpoint(std::string_view text);

// An inclusion proof in the c2sp.org/tlog-proof@v1 form.
struct InclusionProofText {
  std::string extra;     // the optional extra data, decoded ("" if absent)
  uint64_t index = 0;    // zero-based leaf index
  std::vector<Hash> hashes;
  std::string checkpoint;  // the signed checkpoint note, verbatim
};
std::string FormatInclusionProof(const InclusionProofText& proof);
StatusOr<InclusionProofText> ParseInclusionProof(std::string_view text);

// A consistency proof from the tree of `old_size` leaves to the tree of the
// enclosed signed checkpoint:
//   vmseal.dev/tlog-consistency@v1
//   old <size>
//   <base64 hash>...
//   <blank line>
//   <signed checkpoint note>
struct ConsistencyProofText {
  uint64_t old_size = 0;
  std::vector<Hash> hashes;
  std::string checkpoint;
};
std::string FormatConsistencyProof(const ConsistencyProofText& proof);
StatusOr<ConsistencyProofText> ParseConsistencyProof(std::string_view text);

// Strict decimal: digits only, no leading zero (but "0"), at most
// kMaxTreeSize.
StatusOr<uint64_t> ParseTreeSize(std::string_view text);

}  // namespace vmseal::tlog

#endif  // VMSEAL_TLOG_CHECKPOINT_H_
