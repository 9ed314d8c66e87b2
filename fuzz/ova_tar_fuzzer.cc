// The OVA (USTAR) reader (src/ovf/tar): TarReader::Open over an archive held
// in memory, then every member's data read through its slice.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_util.h"
#include "ovf/tar.h"

namespace ovf = vmseal::ovf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmseal::fuzz::MemoryFile file(std::span<const uint8_t>(data, size));
  auto reader = ovf::TarReader::Open(&file);
  if (!reader.ok()) return 0;
  std::vector<uint8_t> buf(512);
  for (const ovf::TarMember& m : (*reader)->members()) {
    if (m.data_offset > size || m.size > size - m.data_offset) __builtin_trap();
    if ((*reader)->Find(m.name) != &m) __builtin_trap();
    auto member = (*reader)->NewMemberFile(m);
    auto msize = member->Size();
    if (!msize.ok() || *msize != m.size) __builtin_trap();
    for (uint64_t off = 0; off < m.size; off += buf.size()) {
      auto n = member->Read(off, buf);
      if (!n.ok() || *n == 0) __builtin_trap();
    }
  }
  return 0;
}
