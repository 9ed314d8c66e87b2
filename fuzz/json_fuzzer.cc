// The project's one JSON parsing path (src/json): ParseJson with the default
// limits and with small ones, and DumpJson. What parses must serialize
// without throwing and parse again to an equal value.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "json/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = vmseal::fuzz::AsText(data, size);
  vmseal::JsonLimits small;
  small.max_depth = 3;
  small.max_bytes = 256;
  auto limited = vmseal::ParseJson(text, small);
  auto parsed = vmseal::ParseJson(text);
  // A value within the small limits is within the default ones.
  if (limited.ok() && !parsed.ok()) __builtin_trap();
  if (!parsed.ok()) return 0;
  const std::string dumped = vmseal::DumpJson(*parsed);
  auto again = vmseal::ParseJson(dumped);
  if (!again.ok()) __builtin_trap();
  // Strings holding invalid UTF-8 are replaced on dump, so compare the dumps.
  if (vmseal::DumpJson(*again) != dumped) __builtin_trap();
  (void)vmseal::DumpJson(*parsed, 2);
  (void)vmseal::ParseJsonObject(text, "body");
  return 0;
}
