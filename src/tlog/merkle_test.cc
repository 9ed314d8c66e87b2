// RFC 6962 vectors: the 8-leaf set used by Certificate Transparency
// implementations, with the intermediate values listed in
// docs/format/audit-log.md §7.
#include "tlog/merkle.h"

#include <chrono>
#include <cstdio>
#include <random>

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::tlog {
namespace {

Hash H(std::string_view hex) {
  auto bytes = crypto::HexDecode(hex);
  EXPECT_TRUE(bytes.ok());
  auto h = HashFromBytes(*bytes);
  EXPECT_TRUE(h.ok());
  return h.ok() ? *h : Hash{};
}

std::vector<Hash> Hs(std::initializer_list<std::string_view> hexes) {
  std::vector<Hash> out;
  for (auto h : hexes) out.push_back(H(h));
  return out;
}

const std::vector<std::string> kLeafHex = {"",         "00",       "10",
                                           "2021",     "3031",     "40414243",
                                           "5051525354555657", "606162636465666768696a6b6c6d6e6f"};

const char* const kLeafHashes[] = {
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
};

const char* const kRoots[] = {
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

MemoryTree VectorTree(size_t n) {
  MemoryTree t;
  for (size_t i = 0; i < n; ++i) t.Append(LeafHash(*crypto::HexDecode(kLeafHex[i])));
  return t;
}

struct InclusionVector {
  uint64_t index, size;
  std::vector<Hash> proof;
};
std::vector<InclusionVector> InclusionVectors() {
  return {
      {0, 1, {}},
      {0, 8, Hs({"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                 "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                 "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"})},
      {5, 8, Hs({"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                 "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                 "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"})},
      {2, 3, Hs({"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"})},
      {1, 5, Hs({"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                 "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                 "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"})},
  };
}

struct ConsistencyVector {
  uint64_t size1, size2;
  std::vector<Hash> proof;
};
std::vector<ConsistencyVector> ConsistencyVectors() {
  return {
      {1, 1, {}},
      {1, 8, Hs({"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                 "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                 "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"})},
      {6, 8, Hs({"0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                 "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                 "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"})},
      {2, 5, Hs({"5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                 "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"})},
      {3, 7, Hs({"0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
                 "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
                 "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                 "837dbb152e9b079010717e84e865da4ebc0fa198a806d59d31bf15accef22d0e"})},
  };
}

TEST(Merkle, LeafHashesMatchVectors) {
  for (size_t i = 0; i < kLeafHex.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(HashHex(LeafHash(*crypto::HexDecode(kLeafHex[i]))), kLeafHashes[i]);
  }
}

TEST(Merkle, NodeHashIsPrefixedSha256) {
  // n(0,1) = SHA-256(0x01 || leaf 0 || leaf 1) = root of size 2.
  EXPECT_EQ(HashHex(NodeHash(H(kLeafHashes[0]), H(kLeafHashes[1]))), kRoots[1]);
  EXPECT_EQ(HashHex(NodeHash(H(kLeafHashes[2]), H(kLeafHashes[3]))),
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e");
}

TEST(Merkle, EmptyTreeRootIsSha256OfNothing) {
  EXPECT_EQ(HashHex(EmptyRoot()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Frontier().Root(), EmptyRoot());
  MemoryTree t;
  ASSERT_OK(TreeRoot(t, 0));
  EXPECT_EQ(*TreeRoot(t, 0), EmptyRoot());
}

TEST(Merkle, RootsOfSizesOneToEightMatchVectors) {
  MemoryTree t;
  std::vector<Hash> leaves;
  for (size_t n = 1; n <= 8; ++n) {
    SCOPED_TRACE(n);
    leaves.push_back(LeafHash(*crypto::HexDecode(kLeafHex[n - 1])));
    t.Append(leaves.back());
    EXPECT_EQ(HashHex(t.Root()), kRoots[n - 1]);
    EXPECT_EQ(HashHex(RootFromLeafHashes(leaves)), kRoots[n - 1]);
    auto from_nodes = TreeRoot(t, n);
    ASSERT_OK(from_nodes);
    EXPECT_EQ(HashHex(*from_nodes), kRoots[n - 1]);
  }
  // Roots of earlier sizes from the nodes of the bigger tree.
  for (size_t n = 1; n <= 8; ++n) EXPECT_EQ(HashHex(*TreeRoot(t, n)), kRoots[n - 1]);
}

TEST(Merkle, InclusionProofsMatchVectorsAndVerify) {
  MemoryTree t = VectorTree(8);
  for (const auto& v : InclusionVectors()) {
    SCOPED_TRACE(::testing::Message() << v.index << " in " << v.size);
    auto proof = InclusionProof(t, v.index, v.size);
    ASSERT_OK(proof);
    EXPECT_EQ(*proof, v.proof);
    EXPECT_OK(VerifyInclusion(v.index, v.size, H(kLeafHashes[v.index]), v.proof, H(kRoots[v.size - 1])));
  }
}

TEST(Merkle, ConsistencyProofsMatchVectorsAndVerify) {
  MemoryTree t = VectorTree(8);
  for (const auto& v : ConsistencyVectors()) {
    SCOPED_TRACE(::testing::Message() << v.size1 << " -> " << v.size2);
    auto proof = ConsistencyProof(t, v.size1, v.size2);
    ASSERT_OK(proof);
    EXPECT_EQ(*proof, v.proof);
    EXPECT_OK(VerifyConsistency(v.size1, v.size2, v.proof, H(kRoots[v.size1 - 1]), H(kRoots[v.size2 - 1])));
  }
}

TEST(Merkle, EveryInclusionAndConsistencyProofUpTo40Verifies) {
  MemoryTree t;
  for (int i = 0; i < 40; ++i) t.AppendData("leaf " + std::to_string(i));
  for (uint64_t n = 1; n <= 40; ++n) {
    const Hash root = *TreeRoot(t, n);
    for (uint64_t m = 0; m < n; ++m) {
      auto p = InclusionProof(t, m, n);
      ASSERT_OK(p);
      ASSERT_OK(VerifyInclusion(m, n, *t.Node(0, m), *p, root)) << m << " in " << n;
      // The same proof fails for another leaf, index or size.
      EXPECT_FALSE(VerifyInclusion(m, n, LeafHash("x"), *p, root).ok());
      if (n > 1) {
        EXPECT_FALSE(VerifyInclusion((m + 1) % n, n, *t.Node(0, m), *p, root).ok());
      }
    }
    for (uint64_t m = 1; m <= n; ++m) {
      auto p = ConsistencyProof(t, m, n);
      ASSERT_OK(p);
      const Hash old_root = *TreeRoot(t, m);
      ASSERT_OK(VerifyConsistency(m, n, *p, old_root, root)) << m << " -> " << n;
      EXPECT_FALSE(VerifyConsistency(m, n, *p, LeafHash("other"), root).ok());
      EXPECT_FALSE(VerifyConsistency(m, n, *p, old_root, LeafHash("other")).ok());
    }
  }
}

TEST(Merkle, InclusionProofFailuresNameTheProblem) {
  const auto v = InclusionVectors()[1];
  const Hash leaf = H(kLeafHashes[0]);
  const Hash root = H(kRoots[7]);
  EXPECT_STATUS(VerifyInclusion(8, 8, leaf, v.proof, root), StatusCode::kUnauthenticated,
                "leaf index 8 is not in a tree of 8 leaves");
  auto shorter = v.proof;
  shorter.pop_back();
  EXPECT_STATUS(VerifyInclusion(0, 8, leaf, shorter, root), StatusCode::kUnauthenticated, "too short");
  auto longer = v.proof;
  longer.push_back(root);
  EXPECT_STATUS(VerifyInclusion(0, 8, leaf, longer, root), StatusCode::kUnauthenticated, "too long");
  auto changed = v.proof;
  changed[1][0] ^= 1;
  EXPECT_STATUS(VerifyInclusion(0, 8, leaf, changed, root), StatusCode::kUnauthenticated,
                "computed root does not match");
}

TEST(Merkle, ConsistencyProofFailuresNameTheProblem) {
  const auto v = ConsistencyVectors()[2];  // 6 -> 8
  const Hash r6 = H(kRoots[5]), r8 = H(kRoots[7]);
  EXPECT_STATUS(VerifyConsistency(6, 8, v.proof, H(kRoots[4]), r8), StatusCode::kUnauthenticated,
                "old root does not match");
  EXPECT_STATUS(VerifyConsistency(6, 8, v.proof, r6, H(kRoots[6])), StatusCode::kUnauthenticated,
                "new root does not match");
  EXPECT_STATUS(VerifyConsistency(8, 6, v.proof, r8, r6), StatusCode::kUnauthenticated,
                "cannot be a prefix");
  EXPECT_STATUS(VerifyConsistency(6, 8, {}, r6, r8), StatusCode::kUnauthenticated, "empty");
  EXPECT_STATUS(VerifyConsistency(8, 8, {}, r6, r8), StatusCode::kUnauthenticated,
                "equal sizes but different roots");
  EXPECT_OK(VerifyConsistency(0, 8, {}, EmptyRoot(), r8));
  EXPECT_STATUS(VerifyConsistency(0, 8, v.proof, EmptyRoot(), r8), StatusCode::kUnauthenticated,
                "must be empty");
}

TEST(Merkle, ProofArgumentsOutOfRangeAreRefused) {
  MemoryTree t = VectorTree(8);
  EXPECT_STATUS(InclusionProof(t, 8, 8), StatusCode::kInvalidArgument, "not in a tree");
  EXPECT_STATUS(ConsistencyProof(t, 0, 8), StatusCode::kInvalidArgument, "no consistency proof");
  EXPECT_STATUS(ConsistencyProof(t, 9, 8), StatusCode::kInvalidArgument, "no consistency proof");
  // A subtree the store does not hold (size 9 of an 8-leaf tree).
  EXPECT_STATUS(InclusionProof(t, 0, 9), StatusCode::kNotFound, "no complete subtree");
}

TEST(Merkle, FrontierRoundTripsThroughItsHashes) {
  Frontier f;
  for (int i = 0; i < 13; ++i) f.Append(LeafHash(std::to_string(i)));
  auto copy = Frontier::FromHashes(f.size(), f.hashes());
  ASSERT_OK(copy);
  EXPECT_EQ(copy->Root(), f.Root());
  EXPECT_EQ(f.hashes().size(), 3u);  // 13 = 8 + 4 + 1
  EXPECT_STATUS(Frontier::FromHashes(13, {f.hashes()[0]}), StatusCode::kInvalidArgument, "frontier");
}

TEST(Merkle, FrontierReportsEachCompletedSubtreeOnce) {
  Frontier f;
  std::vector<std::tuple<int, uint64_t>> seen;
  for (int i = 0; i < 4; ++i) {
    f.Append(LeafHash(std::to_string(i)), [&](int level, uint64_t index, const Hash&) {
      seen.emplace_back(level, index);
    });
  }
  const std::vector<std::tuple<int, uint64_t>> want = {{0, 0}, {0, 1}, {1, 0}, {0, 2}, {0, 3}, {1, 1}, {2, 0}};
  EXPECT_EQ(seen, want);
}

// Figures, not assertions: the cost of an append (frontier and stored
// nodes) and of an inclusion proof at a million leaves.
TEST(Merkle, CostPerAppendAndPerProof) {
  constexpr int kLeaves = 1 << 20;
  MemoryTree t;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kLeaves; ++i) t.Append(LeafHash(std::to_string(i)));
  const double append_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / kLeaves;
  std::mt19937_64 rng(1);
  constexpr int kProofs = 10000;
  const Hash root = t.Root();
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < kProofs; ++i) {
    const uint64_t m = rng() % kLeaves;
    auto p = InclusionProof(t, m, kLeaves);
    ASSERT_OK(p);
    ASSERT_OK(VerifyInclusion(m, kLeaves, *t.Node(0, m), *p, root));
  }
  const double proof_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / kProofs;
  std::printf("tlog: %d leaves, append %.2f us/leaf (leaf hash + frontier), inclusion proof "
              "generate+verify %.2f us\n",
              kLeaves, append_us, proof_us);
}

}  // namespace
}  // namespace vmseal::tlog
