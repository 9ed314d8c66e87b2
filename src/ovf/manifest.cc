#include "ovf/manifest.h"

#include <openssl/evp.h>

#include <cstdlib>
#include <set>

#include "crypto/primitives.h"
#include "ovf/package_format.h"
#include "ovf/tar.h"

namespace vmseal::ovf {
namespace {

const EVP_MD* Md(DigestAlgorithm a) {
  switch (a) {
    case DigestAlgorithm::kSha1:
      return EVP_sha1();
    case DigestAlgorithm::kSha512:
      return EVP_sha512();
    case DigestAlgorithm::kSha256:
      break;
  }
  return EVP_sha256();
}

const char* Name(DigestAlgorithm a) {
  switch (a) {
    case DigestAlgorithm::kSha1:
      return "SHA1";
    case DigestAlgorithm::kSha512:
      return "SHA512";
    case DigestAlgorithm::kSha256:
      break;
  }
  return "SHA256";
}

}  // namespace

StreamingDigest::StreamingDigest(DigestAlgorithm algorithm) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex(ctx, Md(algorithm), nullptr) != 1) std::abort();
  ctx_ = ctx;
}

StreamingDigest::~StreamingDigest() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void StreamingDigest::Update(std::span<const uint8_t> data) {
  if (EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size()) != 1) {
    std::abort();
  }
}

std::vector<uint8_t> StreamingDigest::Finish() {
  std::vector<uint8_t> out(EVP_MAX_MD_SIZE);
  unsigned len = 0;
  if (EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &len) != 1) std::abort();
  out.resize(len);
  return out;
}

Status DigestingFile::Append(std::span<const uint8_t> data) {
  digest_.Update(data);
  bytes_ += data.size();
  return out_->Append(data);
}

Status DigestingFile::Skip(uint64_t bytes) {
  static const uint8_t kZeros[4096] = {};
  while (bytes > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, sizeof(kZeros)));
    RETURN_IF_ERROR(Append(std::span<const uint8_t>(kZeros, n)));
    bytes -= n;
  }
  return OkStatus();
}

StatusOr<std::vector<ManifestEntry>> ParseManifest(std::string_view text) {
  if (text.size() > kMaxManifestBytes) return InvalidArgumentError("manifest too large");
  std::vector<ManifestEntry> entries;
  std::set<std::string> names;
  size_t line_no = 0;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = "manifest line " + std::to_string(line_no);
    // `ALG(name)= hex` as ovftool writes it, and `ALG (name) = hex` as
    // VirtualBox does: spaces are allowed around the parentheses and the
    // '='. The name runs from the first '(' to the last ')' before the '='
    // (hex digits hold no '=' or ')'), so names may hold spaces and ')'.
    const size_t open = line.find('(');
    const size_t eq = line.rfind('=');
    if (open == std::string_view::npos || eq == std::string_view::npos || eq < open) {
      return InvalidArgumentError(where + ": expected ALG(name)= hex");
    }
    size_t close = eq;
    while (close > open && line[close - 1] == ' ') --close;
    if (close == open || line[close - 1] != ')') {
      return InvalidArgumentError(where + ": expected ALG(name)= hex");
    }
    --close;  // at the ')'
    std::string_view alg = line.substr(0, open);
    while (!alg.empty() && alg.back() == ' ') alg.remove_suffix(1);
    ManifestEntry e;
    size_t want = 0;
    if (alg == "SHA256") {
      e.algorithm = DigestAlgorithm::kSha256;
      want = 32;
    } else if (alg == "SHA1") {
      e.algorithm = DigestAlgorithm::kSha1;
      want = 20;
    } else if (alg == "SHA512") {
      e.algorithm = DigestAlgorithm::kSha512;
      want = 64;
    } else {
      return InvalidArgumentError(where + ": unsupported digest algorithm '" +
                                  std::string(alg.substr(0, 16)) + "' (SHA1, SHA256 or SHA512)");
    }
    e.name = std::string(line.substr(open + 1, close - open - 1));
    RETURN_IF_ERROR(ValidateFileName(e.name).WithPrefix(where));
    std::string_view hex_text = line.substr(eq + 1);
    while (!hex_text.empty() && hex_text.front() == ' ') hex_text.remove_prefix(1);
    while (!hex_text.empty() && hex_text.back() == ' ') hex_text.remove_suffix(1);
    std::string hex(hex_text);
    for (char& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    auto digest = crypto::HexDecode(hex);
    if (!digest.ok() || digest->size() != want) {
      return InvalidArgumentError(where + ": bad digest (want " + std::to_string(2 * want) +
                                  " hex digits for " + std::string(alg) + ")");
    }
    e.digest = std::move(*digest);
    if (!names.insert(e.name).second) {
      return InvalidArgumentError("manifest lists " + e.name + " twice");
    }
    entries.push_back(std::move(e));
  }
  return entries;
}

std::string FormatManifest(const std::vector<ManifestEntry>& entries) {
  std::string out;
  for (const ManifestEntry& e : entries) {
    out += Name(e.algorithm);
    out += "(" + e.name + ")= " + crypto::HexEncode(e.digest) + "\n";
  }
  return out;
}

StatusOr<std::vector<uint8_t>> DigestFile(const RandomAccessFile& file,
                                          DigestAlgorithm algorithm) {
  ASSIGN_OR_RETURN(uint64_t size, file.Size());
  StreamingDigest digest(algorithm);
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t offset = 0; offset < size;) {
    ASSIGN_OR_RETURN(size_t n, file.Read(offset, buf));
    if (n == 0) return DataLossError("file shorter than its size");
    digest.Update(std::span<const uint8_t>(buf.data(), n));
    offset += n;
  }
  return digest.Finish();
}

}  // namespace vmseal::ovf
