// gzip-compressed package files (ovf:compression="gzip", src/ovf/internal/
// file_coding): Gunzip on untrusted bytes. It must never write more than its
// bound, and must report what it wrote.
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "ovf/internal/file_coding.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmseal::fuzz::MemoryFile in(std::span<const uint8_t>(data, size));
  vmseal::fuzz::CountingFile out;
  constexpr uint64_t kBound = 1 << 20;
  auto n = vmseal::ovf::internal::Gunzip(in, &out, kBound);
  if (out.bytes() > kBound) __builtin_trap();
  if (n.ok() && *n != out.bytes()) __builtin_trap();
  return 0;
}
