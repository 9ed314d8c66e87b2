#include "tlog/checkpoint.h"

#include "crypto/primitives.h"
#include "tlog/note.h"

namespace vmseal::tlog {
namespace {

constexpr size_t kMaxProofTextBytes = 2 * kMaxNoteBytes;

StatusOr<crypto::Bytes> StrictBase64(std::string_view text) {
  auto bytes = crypto::Base64Decode(text);
  if (!bytes.ok() || crypto::Base64Encode(*bytes) != text) {
    return InvalidArgumentError("not canonical base64");
  }
  return bytes;
}

StatusOr<Hash> StrictHash(std::string_view text) {
  auto bytes = StrictBase64(text);
  if (!bytes.ok()) return bytes.status();
  return HashFromBytes(*bytes);
}

bool HasControl(std::string_view line) {
  for (char c : line) {
    if (static_cast<uint8_t>(c) < 0x20) return true;
  }
  return false;
}

// Splits off the next "\n"-terminated line; false if there is none.
bool NextLine(std::string_view* rest, std::string_view* line) {
  const size_t nl = rest->find('\n');
  if (nl == std::string_view::npos) return false;
  *line = rest->substr(0, nl);
  rest->remove_prefix(nl + 1);
  return true;
}

// "<keyword> <value>" with exactly one space.
bool KeywordValue(std::string_view line, std::string_view keyword, std::string_view* value) {
  if (line.size() <= keyword.size() + 1 || line.substr(0, keyword.size()) != keyword ||
      line[keyword.size()] != ' ') {
    return false;
  }
  *value = line.substr(keyword.size() + 1);
  return true;
}

// Hash lines up to the blank line; then the rest is the checkpoint.
Status ParseHashesAndCheckpoint(std::string_view rest, const char* what, std::vector<Hash>* hashes,
                                std::string* checkpoint) {
  std::string_view line;
  while (true) {
    if (!NextLine(&rest, &line)) {
      return InvalidArgumentError(std::string(what) + ": no blank line before the checkpoint");
    }
    if (line.empty()) break;
    if (hashes->size() == kMaxProofHashes) {
      return InvalidArgumentError(std::string(what) + ": more than 64 hashes");
    }
    auto h = StrictHash(line);
    if (!h.ok()) {
      return InvalidArgumentError(std::string(what) + ": hash line " +
                                  std::to_string(hashes->size() + 1) +
                                  " is not canonical base64 of 32 bytes");
    }
    hashes->push_back(*h);
  }
  if (rest.empty()) return InvalidArgumentError(std::string(what) + ": no checkpoint");
  *checkpoint = std::string(rest);
  return OkStatus();
}

}  // namespace

StatusOr<uint64_t> ParseTreeSize(std::string_view text) {
  if (text.empty() || text.size() > 19) return InvalidArgumentError("size: not a decimal number in range");
  if (text.size() > 1 && text[0] == '0') return InvalidArgumentError("size: leading zero");
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return InvalidArgumentError("size: not a decimal number");
    v = v * 10 + static_cast<uint64_t>(c - '0');  // 19 digits cannot overflow
  }
  if (v > kMaxTreeSize) return InvalidArgumentError("size: exceeds the maximum tree size");
  return v;
}

StatusOr<std::string> FormatCheckpoint(const Checkpoint& c) {
  const auto bad_line = [](const std::string& s) { return s.empty() || HasControl(s); };
  if (bad_line(c.origin)) return InvalidArgumentError("checkpoint: origin must be one non-empty line");
  if (c.size > kMaxTreeSize) return InvalidArgumentError("checkpoint: size exceeds the maximum");
  if (c.extensions.size() > kMaxCheckpointExtensions) {
    return InvalidArgumentError("checkpoint: more than 8 extension lines");
  }
  std::string out = c.origin + "\n" + std::to_string(c.size) + "\n" + crypto::Base64Encode(c.root) + "\n";
  for (const std::string& e : c.extensions) {
    if (bad_line(e)) return InvalidArgumentError("checkpoint: extension lines must be non-empty lines");
    out += e + "\n";
  }
  return out;
}

StatusOr<Checkpoint> ParseCheckpoint(std::string_view text) {
  if (text.size() > kMaxNoteBytes) return InvalidArgumentError("checkpoint: larger than 64 KiB");
  if (text.empty() || text.back() != '\n') return InvalidArgumentError("checkpoint: must end in a newline");
  std::vector<std::string_view> lines;
  std::string_view rest = text, line;
  while (NextLine(&rest, &line)) {
    if (line.empty()) return InvalidArgumentError("checkpoint: empty line");
    if (HasControl(line)) return InvalidArgumentError("checkpoint: control character");
    if (lines.size() == 3 + kMaxCheckpointExtensions) {
      return InvalidArgumentError("checkpoint: more than 8 extension lines");
    }
    lines.push_back(line);
  }
  if (lines.size() < 3) return InvalidArgumentError("checkpoint: needs origin, size and root hash lines");
  Checkpoint c;
  c.origin = std::string(lines[0]);
  auto size = ParseTreeSize(lines[1]);
  if (!size.ok()) return size.status().WithPrefix("checkpoint");
  c.size = *size;
  auto root = StrictHash(lines[2]);
  if (!root.ok()) return InvalidArgumentError("checkpoint: root hash is not canonical base64 of 32 bytes");
  c.root = *root;
  for (size_t i = 3; i < lines.size(); ++i) c.extensions.emplace_back(lines[i]);
  return c;
}

std::string FormatInclusionProof(const InclusionProofText& p) {
  std::string out = std::string(kInclusionProofHeader) + "\n";
  if (!p.extra.empty()) out += "extra " + crypto::Base64Encode(crypto::AsBytes(p.extra)) + "\n";
  out += "index " + std::to_string(p.index) + "\n";
  for (const Hash& h : p.hashes) out += crypto::Base64Encode(h) + "\n";
  return out + "\n" + p.checkpoint;
}

StatusOr<InclusionProofText> ParseInclusionProof(std::string_view text) {
  if (text.size() > kMaxProofTextBytes) return InvalidArgumentError("inclusion proof: too large");
  InclusionProofText p;
  std::string_view rest = text, line, value;
  if (!NextLine(&rest, &line) || line != kInclusionProofHeader) {
    return InvalidArgumentError("inclusion proof: first line must be c2sp.org/tlog-proof@v1");
  }
  if (!NextLine(&rest, &line)) return InvalidArgumentError("inclusion proof: no index line");
  if (KeywordValue(line, "extra", &value)) {
    auto extra = StrictBase64(value);
    if (!extra.ok()) return InvalidArgumentError("inclusion proof: extra is not canonical base64");
    p.extra = std::string(crypto::AsStringView(*extra));
    if (!NextLine(&rest, &line)) return InvalidArgumentError("inclusion proof: no index line");
  }
  if (!KeywordValue(line, "index", &value)) return InvalidArgumentError("inclusion proof: no index line");
  auto index = ParseTreeSize(value);
  if (!index.ok()) return index.status().WithPrefix("inclusion proof: index");
  p.index = *index;
  RETURN_IF_ERROR(ParseHashesAndCheckpoint(rest, "inclusion proof", &p.hashes, &p.checkpoint));
  return p;
}

std::string FormatConsistencyProof(const ConsistencyProofText& p) {
  std::string out = std::string(kConsistencyProofHeader) + "\n";
  out += "old " + std::to_string(p.old_size) + "\n";
  for (const Hash& h : p.hashes) out += crypto::Base64Encode(h) + "\n";
  return out + "\n" + p.checkpoint;
}

StatusOr<ConsistencyProofText> ParseConsistencyProof(std::string_view text) {
  if (text.size() > kMaxProofTextBytes) return InvalidArgumentError("consistency proof: too large");
  ConsistencyProofText p;
  std::string_view rest = text, line, value;
  if (!NextLine(&rest, &line) || line != kConsistencyProofHeader) {
    return InvalidArgumentError("consistency proof: first line must be vmseal.dev/tlog-consistency@v1");
  }
  if (!NextLine(&rest, &line) || !KeywordValue(line, "old", &value)) {
    return InvalidArgumentError("consistency proof: no old size line");
  }
  auto old_size = ParseTreeSize(value);
  if (!old_size.ok()) return old_size.status().WithPrefix("consistency proof: old size");
  p.old_size = *old_size;
  RETURN_IF_ERROR(ParseHashesAndCheckpoint(rest, "consistency proof", &p.hashes, &p.checkpoint));
  return p;
}

}  // namespace vmseal::tlog
