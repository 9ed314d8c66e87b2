// The disk-format inspector (src/disk_format) on hostile images held in
// memory. Invariants: every answer is an acceptance or a refusal that starts
// with "unsafe_disk_format: " (memory never fails to read); an accepted
// image is raw or qcow2 within the size limit, and an accepted qcow2 names
// no backing file, no external data file and no encryption.
#include <cstddef>
#include <cstdint>
#include <span>

#include "disk_format/disk_format.h"

namespace {

uint32_t Be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace df = vmseal::disk_format;
  auto info = df::Inspect(std::span<const uint8_t>(data, size));
  if (!info.ok()) {
    if (!info.status().message().starts_with(df::kRefusalPrefix)) __builtin_trap();
    return 0;
  }
  if (info->file_size != size) __builtin_trap();
  if (info->virtual_size > (uint64_t{64} << 40)) __builtin_trap();
  if (info->format == df::Format::kRaw) {
    if (info->virtual_size != size) __builtin_trap();
    return 0;
  }
  if (size < 104) __builtin_trap();
  const uint32_t version = Be32(data + 4);
  if (version != 2 && version != 3) __builtin_trap();
  for (size_t i = 8; i < 20; ++i) {
    if (data[i] != 0) __builtin_trap();  // backing file offset and size
  }
  if (Be32(data + 32) != 0) __builtin_trap();  // crypt_method
  if (version == 3 && (data[79] & 0x06) != 0) __builtin_trap();  // corrupt, data file
  return 0;
}
