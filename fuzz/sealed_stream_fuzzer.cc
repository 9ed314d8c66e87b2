// A whole sealed stream opened with a fixed key and context (those of the
// "three-chunks" vector in tests/testdata/stream/vectors.json, so the seed
// corpus opens). Open and StreamReader must fail cleanly or produce the
// plaintext; any tampering must be DATA_LOSS or INVALID_ARGUMENT.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "fuzz_util.h"
#include "stream/stream.h"

namespace {

using vmseal::SecretBytes;
using vmseal::StatusCode;
namespace stream = vmseal::stream;

const SecretBytes& Key() {
  static const SecretBytes* key = [] {
    std::vector<uint8_t> k(32);
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i);
    return new SecretBytes(std::span<const uint8_t>(k));
  }();
  return *key;
}

void CheckError(const vmseal::Status& s) {
  if (s.ok()) return;
  // A sealed stream fails only as "not a stream" or "does not verify".
  if (s.code() != StatusCode::kInvalidArgument && s.code() != StatusCode::kDataLoss &&
      s.code() != StatusCode::kOutOfRange) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vmseal::fuzz::MemoryFile in(std::span<const uint8_t>(data, size));
  const stream::StreamContext context{"img-0001", "tenant-a", 1};

  stream::OpenOptions options;
  options.threads = 1;
  options.sparse_output = (size & 1) != 0;
  vmseal::fuzz::CountingFile out;
  vmseal::Status opened = stream::Open(in, &out, Key(), context, options);
  CheckError(opened);

  auto reader = stream::StreamReader::Create(&in, Key(), context);
  CheckError(reader.status());
  // Open authenticated everything, so the reader (which checks the header
  // and the final chunk) must accept the same stream and agree on its size.
  if (opened.ok() && !reader.ok()) __builtin_trap();
  if (reader.ok()) {
    std::vector<uint8_t> buf(64);
    const uint64_t total = (*reader)->plaintext_size();
    if (opened.ok() && total != out.bytes()) __builtin_trap();
    for (uint64_t offset : {uint64_t{0}, total / 2, total > 0 ? total - 1 : 0, total}) {
      auto n = (*reader)->ReadAt(offset, buf);
      CheckError(n.status());
    }
  }
  return 0;
}
