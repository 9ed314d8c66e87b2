// JSON parsing that never throws and bounds nesting depth (nlohmann's parser
// recurses, so a deeply nested body could exhaust the stack).
#ifndef VMSEAL_NET_INTERNAL_JSON_UTIL_H_
#define VMSEAL_NET_INTERNAL_JSON_UTIL_H_

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace vmseal::net::internal {

inline constexpr int kMaxJsonDepth = 64;

// Parses `text`; INVALID_ARGUMENT "malformed JSON" or "JSON nested too deeply".
StatusOr<nlohmann::json> ParseJson(std::string_view text);
// Serializes without throwing (invalid UTF-8 is replaced).
std::string DumpJson(const nlohmann::json& value);

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_JSON_UTIL_H_
