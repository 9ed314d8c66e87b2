// The sealed-stream header (docs/format/stream.md §2, §5): ParseHeader on the
// first bytes, then the length arithmetic a reader applies to the stream.
#include <cstddef>
#include <cstdint>
#include <span>

#include "stream/internal/header.h"
#include "stream/stream_format.h"

namespace internal = vmseal::stream::internal;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  auto header = internal::ParseHeader(in);
  if (!header.ok()) return 0;
  // The sealed length as a reader sees it: the input's own size, and one
  // taken from the input's tail (any 64-bit value), through the layout.
  uint64_t claimed = 0;
  if (size >= vmseal::stream::kHeaderBytes + 8) {
    for (size_t i = size - 8; i < size; ++i) claimed = claimed << 8 | data[i];
  }
  for (uint64_t sealed : {static_cast<uint64_t>(size), claimed}) {
    auto layout = internal::LayoutForSealed(sealed, header->chunk_size_bytes);
    if (!layout.ok()) continue;
    // Every chunk's bounds stay inside the stream; check first and last.
    for (uint64_t i : {uint64_t{0}, layout->chunk_count - 1}) {
      const uint64_t end = layout->SealedChunkOffset(i) + layout->PlaintextChunkBytes(i) +
                           vmseal::stream::kTagBytes;
      if (end > layout->sealed_bytes) __builtin_trap();
    }
  }
  return 0;
}
