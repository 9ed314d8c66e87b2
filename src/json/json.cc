#include "json/json.h"

namespace vmseal {
namespace {

// The nesting depth of `text`, counting brackets outside strings, stopping
// as soon as it exceeds `limit`. Linear and iterative, so it cannot itself
// exhaust the stack. Malformed input is left for the parser to refuse.
bool NestsDeeperThan(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

}  // namespace

StatusOr<nlohmann::json> ParseJson(std::string_view text, const JsonLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return InvalidArgumentError("JSON too large (" + std::to_string(text.size()) +
                                " bytes, limit " + std::to_string(limits.max_bytes) + ")");
  }
  if (NestsDeeperThan(text, limits.max_depth)) {
    return InvalidArgumentError("JSON nested too deeply (limit " +
                                std::to_string(limits.max_depth) + ")");
  }
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return InvalidArgumentError("malformed JSON");
  return value;
}

StatusOr<nlohmann::json> ParseJsonObject(std::string_view text, std::string_view what,
                                         const JsonLimits& limits) {
  ASSIGN_OR_RETURN(nlohmann::json value, ParseJson(text, limits));
  if (!value.is_object()) {
    return InvalidArgumentError(std::string(what) + " is not a JSON object");
  }
  return value;
}

std::string DumpJson(const nlohmann::json& value, int indent) {
  return value.dump(indent, ' ', /*ensure_ascii=*/false,
                    nlohmann::json::error_handler_t::replace);
}

}  // namespace vmseal
