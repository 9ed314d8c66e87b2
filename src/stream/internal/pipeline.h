// The bounded parallel pipeline behind Seal and Open: N workers (the
// calling thread among them) take chunk indices in order, each reads its
// chunk into a slot of a fixed ring of buffers and seals or opens it in
// place, and whichever worker finishes the next chunk in order writes it out
// with any finished chunks after it. Peak memory is the ring (at most
// kPipelineMemoryBytes), whatever the stream length.
#ifndef VMSEAL_STREAM_INTERNAL_PIPELINE_H_
#define VMSEAL_STREAM_INTERNAL_PIPELINE_H_

#include <cstdint>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "stream/internal/header.h"
#include "stream/stream.h"

namespace vmseal::stream::internal {

// Upper bound on the bytes held in chunk buffers.
inline constexpr uint64_t kPipelineMemoryBytes = uint64_t{48} << 20;

enum class Direction { kSeal, kOpen };

struct PipelineSpec {
  Direction direction = Direction::kSeal;
  Layout layout;          // of the stream being written (seal) or read (open)
  int threads = 0;        // workers; 0 = one per core
  bool sparse = false;    // open: all-zero chunks become Skip (holes)
  ProgressFn progress;    // may be empty
};

// Seal: reads the plaintext chunks of `in` from offset 0 and appends sealed
// chunks to `out` (the header must already be written). Open: reads the
// sealed chunks of `in` (after the header) and appends plaintext. The first
// error stops every thread and is returned.
Status RunPipeline(const RandomAccessFile& in, WritableFile* out,
                   const SecretBytes& stream_key, const PipelineSpec& spec);

}  // namespace vmseal::stream::internal

#endif  // VMSEAL_STREAM_INTERNAL_PIPELINE_H_
