// RFC 6962 / RFC 9162 Merkle tree hashing for an append-only log
// (docs/format/audit-log.md §2): leaf and node hashes, tree heads, inclusion
// and consistency proofs (generated from stored subtree hashes, verified
// with the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2).
//
// The functions are pure; Frontier and MemoryTree are not thread-safe.
#ifndef VMSEAL_TLOG_MERKLE_H_
#define VMSEAL_TLOG_MERKLE_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace vmseal::tlog {

inline constexpr size_t kHashBytes = 32;
using Hash = std::array<uint8_t, kHashBytes>;

// Trees, indices and proofs are bounded so that every size fits in 63 bits
// and a proof has at most 64 hashes (docs/format/audit-log.md, limits).
inline constexpr uint64_t kMaxTreeSize = uint64_t{1} << 62;
inline constexpr size_t kMaxProofHashes = 64;

// SHA-256(0x00 || data): the hash of one leaf.
Hash LeafHash(std::span<const uint8_t> data);
Hash LeafHash(std::string_view data);
// SHA-256(0x01 || left || right): an interior node.
Hash NodeHash(const Hash& left, const Hash& right);
// SHA-256 of the empty string: the root of the empty tree.
Hash EmptyRoot();

// Lowercase hex of a hash (for messages and test vectors).
std::string HashHex(const Hash& h);
// A hash from exactly 32 bytes; INVALID_ARGUMENT otherwise.
StatusOr<Hash> HashFromBytes(std::span<const uint8_t> bytes);

// The root of the tree over `leaf_hashes` (MTH of RFC 6962 §2.1), O(n).
Hash RootFromLeafHashes(std::span<const Hash> leaf_hashes);

// Where a proof generator reads the tree: the hash of the perfect subtree
// at `level` (0 = leaves) covering leaves [index << level,
// (index + 1) << level). Only subtrees that are complete in the tree being
// proved are ever asked for.
class NodeSource {
 public:
  virtual ~NodeSource() = default;
  virtual StatusOr<Hash> Node(int level, uint64_t index) = 0;
};

// The hash of leaves [begin, end) as RFC 6962 defines it, from O(log n)
// perfect subtrees of `nodes`. Requires begin < end.
StatusOr<Hash> SubtreeHash(NodeSource& nodes, uint64_t begin, uint64_t end);

// The root of a tree of `size` leaves (EmptyRoot() for 0).
StatusOr<Hash> TreeRoot(NodeSource& nodes, uint64_t size);

// PATH(index, D[size]) of RFC 6962 §2.1.1: the audit path of leaf `index`
// in the tree of `size` leaves, sibling first. INVALID_ARGUMENT unless
// index < size.
StatusOr<std::vector<Hash>> InclusionProof(NodeSource& nodes, uint64_t index, uint64_t size);

// PROOF(size1, D[size2]) of RFC 6962 §2.1.2. INVALID_ARGUMENT unless
// 0 < size1 <= size2 (a proof from the empty tree is empty and needs no
// call).
StatusOr<std::vector<Hash>> ConsistencyProof(NodeSource& nodes, uint64_t size1, uint64_t size2);

// RFC 9162 §2.1.3.2: whether `proof` proves that `leaf_hash` is leaf
// `index` of the tree of `size` leaves with root `root`. OK, or
// UNAUTHENTICATED "inclusion proof ..." naming what failed.
Status VerifyInclusion(uint64_t index, uint64_t size, const Hash& leaf_hash,
                       std::span<const Hash> proof, const Hash& root);

// RFC 9162 §2.1.4.2: whether `proof` proves that the tree of `size1` leaves
// with root `root1` is a prefix of the tree of `size2` leaves with root
// `root2`. size1 == size2 needs an empty proof and equal roots; size1 == 0
// needs an empty proof. OK, or UNAUTHENTICATED "consistency proof ...".
Status VerifyConsistency(uint64_t size1, uint64_t size2, std::span<const Hash> proof,
                         const Hash& root1, const Hash& root2);

// The right edge of a growing tree: one perfect-subtree hash per set bit of
// the size, largest first (a "compact range" from 0). Appending is
// O(log n) amortized O(1) hashes, and the root is O(log n): no append ever
// rereads the log.
class Frontier {
 public:
  Frontier() = default;
  // A frontier for `size` leaves from its subtree hashes, largest first:
  // INVALID_ARGUMENT unless there is one hash per set bit of `size`.
  static StatusOr<Frontier> FromHashes(uint64_t size, std::vector<Hash> hashes);

  uint64_t size() const { return size_; }
  const std::vector<Hash>& hashes() const { return hashes_; }

  // Appends a leaf. For each perfect subtree completed by it, calls
  // `on_node(level, index, hash)` (level 0 is the leaf itself), so that a
  // store can keep every complete subtree for proofs.
  template <typename OnNode>
  void Append(const Hash& leaf_hash, OnNode on_node) {
    Hash h = leaf_hash;
    uint64_t index = size_;
    on_node(0, index, h);
    int level = 0;
    while ((size_ >> level) & 1) {
      h = NodeHash(hashes_.back(), h);
      hashes_.pop_back();
      ++level;
      index >>= 1;
      on_node(level, index, h);
    }
    hashes_.push_back(h);
    ++size_;
  }
  void Append(const Hash& leaf_hash) {
    Append(leaf_hash, [](int, uint64_t, const Hash&) {});
  }

  // The tree head: folds the subtree hashes right to left.
  Hash Root() const;

 private:
  uint64_t size_ = 0;
  std::vector<Hash> hashes_;
};

// A whole tree in memory, every complete subtree kept (about 2n hashes):
// for tests, the fuzzer, and verifying an exported log.
class MemoryTree : public NodeSource {
 public:
  void Append(const Hash& leaf_hash);
  void AppendData(std::string_view data) { Append(LeafHash(data)); }
  uint64_t size() const { return frontier_.size(); }
  Hash Root() const { return frontier_.Root(); }
  // NOT_FOUND for a subtree that is not complete.
  StatusOr<Hash> Node(int level, uint64_t index) override;

 private:
  Frontier frontier_;
  std::vector<std::vector<Hash>> levels_;
};

}  // namespace vmseal::tlog

#endif  // VMSEAL_TLOG_MERKLE_H_
