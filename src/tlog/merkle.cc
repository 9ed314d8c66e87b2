#include "tlog/merkle.h"

#include <bit>

#include "crypto/primitives.h"

namespace vmseal::tlog {
namespace {

constexpr uint8_t kLeafPrefix = 0x00;
constexpr uint8_t kNodePrefix = 0x01;

// The largest power of two smaller than n (n >= 2): the split point k of
// RFC 6962 §2.1.
uint64_t SplitPoint(uint64_t n) { return std::bit_floor(n - 1); }

bool IsPerfect(uint64_t begin, uint64_t end) {
  const uint64_t n = end - begin;
  return std::has_single_bit(n) && begin % n == 0;
}

Status CheckSize(uint64_t size, const char* what) {
  if (size > kMaxTreeSize) {
    return InvalidArgumentError(std::string(what) + " exceeds the maximum tree size");
  }
  return OkStatus();
}

// PATH(m, D[begin:end]) appended to `out`, deepest first.
Status Path(NodeSource& nodes, uint64_t m, uint64_t begin, uint64_t end, std::vector<Hash>* out) {
  const uint64_t n = end - begin;
  if (n == 1) return OkStatus();
  const uint64_t k = SplitPoint(n);
  if (m < k) {
    RETURN_IF_ERROR(Path(nodes, m, begin, begin + k, out));
    ASSIGN_OR_RETURN(Hash right, SubtreeHash(nodes, begin + k, end));
    out->push_back(right);
  } else {
    RETURN_IF_ERROR(Path(nodes, m - k, begin + k, end, out));
    ASSIGN_OR_RETURN(Hash left, SubtreeHash(nodes, begin, begin + k));
    out->push_back(left);
  }
  return OkStatus();
}

// SUBPROOF(m, D[begin:end], complete) appended to `out`.
Status SubProof(NodeSource& nodes, uint64_t m, uint64_t begin, uint64_t end, bool complete,
                std::vector<Hash>* out) {
  const uint64_t n = end - begin;
  if (m == n) {
    if (complete) return OkStatus();
    ASSIGN_OR_RETURN(Hash h, SubtreeHash(nodes, begin, end));
    out->push_back(h);
    return OkStatus();
  }
  const uint64_t k = SplitPoint(n);
  if (m <= k) {
    RETURN_IF_ERROR(SubProof(nodes, m, begin, begin + k, complete, out));
    ASSIGN_OR_RETURN(Hash right, SubtreeHash(nodes, begin + k, end));
    out->push_back(right);
  } else {
    RETURN_IF_ERROR(SubProof(nodes, m - k, begin + k, end, false, out));
    ASSIGN_OR_RETURN(Hash left, SubtreeHash(nodes, begin, begin + k));
    out->push_back(left);
  }
  return OkStatus();
}

}  // namespace

Hash LeafHash(std::span<const uint8_t> data) {
  crypto::Sha256Hasher hasher;
  hasher.Update(std::span<const uint8_t>(&kLeafPrefix, 1));
  hasher.Update(data);
  return hasher.Finish();
}

Hash LeafHash(std::string_view data) { return LeafHash(crypto::AsBytes(data)); }

Hash NodeHash(const Hash& left, const Hash& right) {
  crypto::Sha256Hasher hasher;
  hasher.Update(std::span<const uint8_t>(&kNodePrefix, 1));
  hasher.Update(std::span<const uint8_t>(left));
  hasher.Update(std::span<const uint8_t>(right));
  return hasher.Finish();
}

Hash EmptyRoot() { return crypto::Sha256(std::string_view()); }

std::string HashHex(const Hash& h) { return crypto::HexEncode(h); }

StatusOr<Hash> HashFromBytes(std::span<const uint8_t> bytes) {
  if (bytes.size() != kHashBytes) {
    return InvalidArgumentError("a hash must be 32 bytes, not " + std::to_string(bytes.size()));
  }
  Hash h;
  std::copy(bytes.begin(), bytes.end(), h.begin());
  return h;
}

Hash RootFromLeafHashes(std::span<const Hash> leaf_hashes) {
  Frontier f;
  for (const Hash& h : leaf_hashes) f.Append(h);
  return f.Root();
}

StatusOr<Hash> SubtreeHash(NodeSource& nodes, uint64_t begin, uint64_t end) {
  if (begin >= end) return InvalidArgumentError("empty subtree");
  if (IsPerfect(begin, end)) {
    const uint64_t n = end - begin;
    return nodes.Node(std::countr_zero(n), begin / n);
  }
  const uint64_t k = SplitPoint(end - begin);
  ASSIGN_OR_RETURN(Hash left, SubtreeHash(nodes, begin, begin + k));
  ASSIGN_OR_RETURN(Hash right, SubtreeHash(nodes, begin + k, end));
  return NodeHash(left, right);
}

StatusOr<Hash> TreeRoot(NodeSource& nodes, uint64_t size) {
  RETURN_IF_ERROR(CheckSize(size, "tree size"));
  if (size == 0) return EmptyRoot();
  return SubtreeHash(nodes, 0, size);
}

StatusOr<std::vector<Hash>> InclusionProof(NodeSource& nodes, uint64_t index, uint64_t size) {
  RETURN_IF_ERROR(CheckSize(size, "tree size"));
  if (index >= size) {
    return InvalidArgumentError("leaf index " + std::to_string(index) + " is not in a tree of " +
                                std::to_string(size) + " leaves");
  }
  std::vector<Hash> proof;
  RETURN_IF_ERROR(Path(nodes, index, 0, size, &proof));
  return proof;
}

StatusOr<std::vector<Hash>> ConsistencyProof(NodeSource& nodes, uint64_t size1, uint64_t size2) {
  RETURN_IF_ERROR(CheckSize(size2, "tree size"));
  if (size1 == 0 || size1 > size2) {
    return InvalidArgumentError("no consistency proof from " + std::to_string(size1) + " to " +
                                std::to_string(size2) + " leaves");
  }
  std::vector<Hash> proof;
  RETURN_IF_ERROR(SubProof(nodes, size1, 0, size2, true, &proof));
  return proof;
}

Status VerifyInclusion(uint64_t index, uint64_t size, const Hash& leaf_hash,
                       std::span<const Hash> proof, const Hash& root) {
  if (size > kMaxTreeSize || index >= size) {
    return UnauthenticatedError("inclusion proof: leaf index " + std::to_string(index) +
                                " is not in a tree of " + std::to_string(size) + " leaves");
  }
  if (proof.size() > kMaxProofHashes) return UnauthenticatedError("inclusion proof: too long");
  uint64_t fn = index;
  uint64_t sn = size - 1;
  Hash r = leaf_hash;
  for (const Hash& p : proof) {
    if (sn == 0) return UnauthenticatedError("inclusion proof: too long for the tree size");
    if ((fn & 1) || fn == sn) {
      r = NodeHash(p, r);
      if (!(fn & 1)) {
        while (!(fn & 1) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      r = NodeHash(r, p);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0) return UnauthenticatedError("inclusion proof: too short for the tree size");
  if (r != root) return UnauthenticatedError("inclusion proof: computed root does not match");
  return OkStatus();
}

Status VerifyConsistency(uint64_t size1, uint64_t size2, std::span<const Hash> proof,
                         const Hash& root1, const Hash& root2) {
  if (size2 > kMaxTreeSize || size1 > size2) {
    return UnauthenticatedError("consistency proof: a tree of " + std::to_string(size1) +
                                " leaves cannot be a prefix of one of " + std::to_string(size2));
  }
  if (proof.size() > kMaxProofHashes) return UnauthenticatedError("consistency proof: too long");
  if (size1 == size2) {
    if (!proof.empty()) return UnauthenticatedError("consistency proof: must be empty for equal sizes");
    if (root1 != root2) return UnauthenticatedError("consistency proof: equal sizes but different roots");
    return OkStatus();
  }
  if (size1 == 0) {
    if (!proof.empty()) return UnauthenticatedError("consistency proof: must be empty from the empty tree");
    if (root1 != EmptyRoot()) return UnauthenticatedError("consistency proof: wrong root for the empty tree");
    return OkStatus();
  }
  if (proof.empty()) return UnauthenticatedError("consistency proof: empty");
  // RFC 9162 §2.1.4.2, steps 2-7.
  std::vector<Hash> path;
  if (std::has_single_bit(size1)) path.push_back(root1);
  path.insert(path.end(), proof.begin(), proof.end());
  uint64_t fn = size1 - 1;
  uint64_t sn = size2 - 1;
  while (fn & 1) {
    fn >>= 1;
    sn >>= 1;
  }
  Hash fr = path[0];
  Hash sr = path[0];
  for (size_t i = 1; i < path.size(); ++i) {
    const Hash& c = path[i];
    if (sn == 0) return UnauthenticatedError("consistency proof: too long for the tree sizes");
    if ((fn & 1) || fn == sn) {
      fr = NodeHash(c, fr);
      sr = NodeHash(c, sr);
      if (!(fn & 1)) {
        while (!(fn & 1) && fn != 0) {
          fn >>= 1;
          sn >>= 1;
        }
      }
    } else {
      sr = NodeHash(sr, c);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0) return UnauthenticatedError("consistency proof: too short for the tree sizes");
  if (fr != root1) return UnauthenticatedError("consistency proof: old root does not match");
  if (sr != root2) return UnauthenticatedError("consistency proof: new root does not match");
  return OkStatus();
}

StatusOr<Frontier> Frontier::FromHashes(uint64_t size, std::vector<Hash> hashes) {
  if (size > kMaxTreeSize || hashes.size() != static_cast<size_t>(std::popcount(size))) {
    return InvalidArgumentError("frontier: " + std::to_string(hashes.size()) +
                                " hashes for a tree of " + std::to_string(size) + " leaves");
  }
  Frontier f;
  f.size_ = size;
  f.hashes_ = std::move(hashes);
  return f;
}

Hash Frontier::Root() const {
  if (hashes_.empty()) return EmptyRoot();
  Hash r = hashes_.back();
  for (size_t i = hashes_.size() - 1; i-- > 0;) r = NodeHash(hashes_[i], r);
  return r;
}

void MemoryTree::Append(const Hash& leaf_hash) {
  frontier_.Append(leaf_hash, [this](int level, uint64_t, const Hash& h) {
    if (levels_.size() <= static_cast<size_t>(level)) levels_.resize(level + 1);
    levels_[level].push_back(h);
  });
}

StatusOr<Hash> MemoryTree::Node(int level, uint64_t index) {
  if (level < 0 || static_cast<size_t>(level) >= levels_.size() || index >= levels_[level].size()) {
    return NotFoundError("no complete subtree at level " + std::to_string(level) + " index " +
                         std::to_string(index));
  }
  return levels_[level][index];
}

}  // namespace vmseal::tlog
