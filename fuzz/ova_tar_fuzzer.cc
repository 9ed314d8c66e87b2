// The OVA (USTAR) reader (src/ovf/tar): TarReader::Open over an archive held
// in memory, as sealed packages are read (flat) and as seal reads plain ones
// (subfolders), then every member's data read through its slice.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "fuzz_util.h"
#include "ovf/tar.h"

namespace ovf = vmseal::ovf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmseal::fuzz::MemoryFile file(std::span<const uint8_t>(data, size));
  for (bool subfolders : {false, true}) {
  auto reader = ovf::TarReader::Open(&file, subfolders);
  if (!reader.ok()) continue;
  std::vector<uint8_t> buf(512);
  for (const ovf::TarMember& m : (*reader)->members()) {
    // Flat archives have flat names; no name ever leaves the package.
    if (!subfolders && !ovf::ValidateFileName(m.name).ok()) __builtin_trap();
    if (!ovf::ValidatePackagePath(m.name).ok()) __builtin_trap();
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
  }
  return 0;
}
