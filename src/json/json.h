// The project's one JSON parsing path. Every server, client, CLI and state
// file reads JSON through ParseJson: it never throws, bounds the input size,
// and bounds nesting depth before nlohmann's parser runs, because a deeply
// nested value is later destroyed and serialized recursively (a 200,000-deep
// array once crashed the portal in dump()). DumpJson never throws either:
// invalid UTF-8 in a string is replaced instead of raising type_error 316.
#ifndef VMSEAL_JSON_JSON_H_
#define VMSEAL_JSON_JSON_H_

#include <cstddef>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace vmseal {

struct JsonLimits {
  // Arrays and objects nested deeper than this are refused. Nothing the
  // project exchanges nests beyond 8; 64 leaves room and stays far from the
  // stack (each level costs a few hundred bytes of recursion in dump()).
  int max_depth = 64;
  // Inputs longer than this are refused before they are scanned. Request
  // bodies are already bounded by the servers (1 MiB); this bounds files
  // and replies the same way.
  size_t max_bytes = 4u << 20;
};

inline constexpr int kMaxJsonDepth = JsonLimits{}.max_depth;

// Parses `text` as one JSON value. INVALID_ARGUMENT with "JSON too large
// (N bytes, limit M)", "JSON nested too deeply (limit D)" or
// "malformed JSON" (no input bytes are echoed into the message).
StatusOr<nlohmann::json> ParseJson(std::string_view text, const JsonLimits& limits = {});

// As ParseJson, and the value must be an object ("<what> is not a JSON
// object" otherwise).
StatusOr<nlohmann::json> ParseJsonObject(std::string_view text, std::string_view what,
                                         const JsonLimits& limits = {});

// Serializes without throwing (invalid UTF-8 is replaced with U+FFFD).
// indent < 0: compact.
std::string DumpJson(const nlohmann::json& value, int indent = -1);

}  // namespace vmseal

#endif  // VMSEAL_JSON_JSON_H_
