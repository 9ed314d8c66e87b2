// OVF manifests (src/ovf/manifest): ParseManifest on untrusted text; what it
// accepts must survive FormatManifest -> ParseManifest unchanged.
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "ovf/manifest.h"

namespace ovf = vmseal::ovf;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto entries = ovf::ParseManifest(vmseal::fuzz::AsText(data, size));
  if (!entries.ok()) return 0;
  auto again = ovf::ParseManifest(ovf::FormatManifest(*entries));
  if (!again.ok() || again->size() != entries->size()) __builtin_trap();
  for (size_t i = 0; i < entries->size(); ++i) {
    const ovf::ManifestEntry& a = (*entries)[i];
    const ovf::ManifestEntry& b = (*again)[i];
    if (a.algorithm != b.algorithm || a.name != b.name || a.digest != b.digest) __builtin_trap();
  }
  return 0;
}
