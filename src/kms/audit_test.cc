#include "kms/audit.h"

#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

// GCC 12 warns (-Wrestrict, falsely) on "literal" + std::string temporaries.
std::string Cat(std::string a, int64_t n) {
  a.append(std::to_string(n));
  return a;
}

std::vector<AuditRecord> Chain(int n) {
  std::vector<AuditRecord> out;
  std::string prev = kAuditGenesisHash;
  for (int i = 1; i <= n; ++i) {
    out.push_back(MakeAuditRecord(i, 1700000000 + i, {"e", Cat("s", i), {}}, prev));
    prev = out.back().hash;
  }
  return out;
}

TEST(AuditChain, RecordIsCanonicalJson) {
  AuditRecord r = MakeAuditRecord(1, 1700000000, {"key.create", "acme", {{"b", 1}, {"a", 2}}},
                                  kAuditGenesisHash);
  EXPECT_EQ(r.record,
            "{\"details\":{\"a\":2,\"b\":1},\"event\":\"key.create\",\"prev_hash\":\"" +
                std::string(kAuditGenesisHash) +
                "\",\"seq\":1,\"subject\":\"acme\",\"time\":1700000000}");
}

TEST(AuditChain, EmptyChainVerifies) {
  auto head = VerifyAuditChain({});
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 0);
  EXPECT_EQ(head->hash, kAuditGenesisHash);
}

TEST(AuditChain, ValidChainVerifies) {
  auto head = VerifyAuditChain(Chain(5));
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 5);
}

TEST(AuditChain, ChangedHashDetected) {
  auto c = Chain(3);
  c[2].hash[0] = c[2].hash[0] == '0' ? '1' : '0';
  EXPECT_STATUS(VerifyAuditChain(c), StatusCode::kDataLoss, "audit record 3: hash mismatch");
}

TEST(AuditChain, SwappedRecordsDetected) {
  auto c = Chain(3);
  std::swap(c[0], c[1]);
  EXPECT_STATUS(VerifyAuditChain(c), StatusCode::kDataLoss, "audit record 1: sequence gap");
}

TEST(AuditChain, RecomputedHashWithoutChainDetected) {
  // A forger rewrites record 2 and recomputes its hash: record 3 breaks.
  auto c = Chain(3);
  c[1] = MakeAuditRecord(2, 1, {"forged", "x", {}}, c[0].hash);
  EXPECT_STATUS(VerifyAuditChain(c), StatusCode::kDataLoss,
                "audit record 3: prev_hash does not match");
}

TEST(AuditChain, NonJsonRecordDetected) {
  auto c = Chain(2);
  c[1].record = "not json";
  EXPECT_STATUS(VerifyAuditChain(c), StatusCode::kDataLoss, "not a JSON object");
}

}  // namespace
}  // namespace vmseal::kms
