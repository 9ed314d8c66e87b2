// Inclusion (c2sp.org/tlog-proof@v1) and consistency proof texts, and the
// RFC 9162 verifiers over whatever sizes, indices and hashes they carry.
// Formatting a parsed proof must give the input back.
#include <cstdint>
#include <cstdlib>

#include "fuzz_util.h"
#include "tlog/checkpoint.h"
#include "tlog/merkle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace vmseal::tlog;
  const std::string_view text = vmseal::fuzz::AsText(data, size);
  const Hash leaf = LeafHash(text.substr(0, 16));
  auto inclusion = ParseInclusionProof(text);
  if (inclusion.ok()) {
    if (FormatInclusionProof(*inclusion) != text) std::abort();
    auto checkpoint = ParseCheckpoint(inclusion->checkpoint);
    const uint64_t tree_size = checkpoint.ok() ? checkpoint->size : inclusion->index + 1;
    const Hash root = checkpoint.ok() ? checkpoint->root : EmptyRoot();
    (void)VerifyInclusion(inclusion->index, tree_size, leaf, inclusion->hashes, root);
  }
  auto consistency = ParseConsistencyProof(text);
  if (consistency.ok()) {
    if (FormatConsistencyProof(*consistency) != text) std::abort();
    auto checkpoint = ParseCheckpoint(consistency->checkpoint);
    const uint64_t new_size = checkpoint.ok() ? checkpoint->size : consistency->old_size + 1;
    const Hash root = checkpoint.ok() ? checkpoint->root : EmptyRoot();
    const Hash old_root = consistency->hashes.empty() ? leaf : consistency->hashes.front();
    (void)VerifyConsistency(consistency->old_size, new_size, consistency->hashes, old_root, root);
  }
  return 0;
}
