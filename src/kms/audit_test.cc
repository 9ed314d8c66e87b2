#include "kms/audit.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "json/json.h"
#include "testing/test_util.h"
#include "tlog/checkpoint.h"

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


// --- The transparency log over a real SQLite store ------------------------

class AuditTreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kek = KekFromBytes(SecretBytes::Random(32));
    ASSERT_OK(kek);
    kek_ = std::move(*kek);
    Open(tmp_.File("kms.db"));
    for (int i = 1; i <= 6; ++i) Append(Cat("event ", i));
  }

  void Open(const std::string& path) {
    log_.reset();
    store_.reset();
    auto store = Store::Open(path);
    ASSERT_OK(store);
    store_ = std::move(*store);
    auto log = AuditLog::Open(store_.get(), kek_.get());
    ASSERT_OK(log);
    log_ = std::move(*log);
  }
  void Close() {
    log_.reset();
    store_.reset();
  }
  void Append(const std::string& subject) { ASSERT_OK(store_->AppendAudit({"test.event", subject, {}})); }
  int64_t Count() {
    auto head = VerifyStoreAudit(*store_);
    return head.ok() ? head->count : -1;
  }
  StatusOr<AuditHead> VerifyWith(const std::string& checkpoint) {
    AuditVerifyOptions o;
    o.checkpoint = checkpoint;
    return VerifyStoreAudit(*store_, o);
  }
  // What an attacker with write access to the database and this code can
  // do: drop the tree and the issued checkpoint, so that the next open
  // rebuilds a tree over whatever records are left.
  void RebuildTreeAsAttacker() {
    ASSERT_OK(store_->ExecForTesting(
        "DELETE FROM audit_tree; UPDATE audit_frontier SET size = 0, hashes = ''; "
        "DELETE FROM audit_checkpoint"));
    Open(tmp_.File("kms.db"));
  }
  // Rewrites record `seq`'s subject and recomputes the hash chain from it on.
  void RewriteRecordAndChain(int64_t seq, const std::string& subject) {
    auto records = store_->ReadAudit(0, 1000);
    ASSERT_OK(records);
    std::string prev = seq == 1 ? kAuditGenesisHash : (*records)[seq - 2].hash;
    for (int64_t i = seq; i <= static_cast<int64_t>(records->size()); ++i) {
      auto j = ParseJson((*records)[i - 1].record);
      ASSERT_OK(j);
      if (i == seq) (*j)["subject"] = subject;
      (*j)["prev_hash"] = prev;
      const std::string record = DumpJson(*j);
      crypto::Sha256Hasher h;
      auto prev_bytes = crypto::HexDecode(prev);
      ASSERT_OK(prev_bytes);
      h.Update(std::span<const uint8_t>(*prev_bytes));
      h.Update(record);
      prev = crypto::HexEncode(h.Finish());
      ASSERT_OK(store_->ExecForTesting("UPDATE audit_log SET record = '" + record + "', hash = '" + prev +
                                       "' WHERE seq = " + std::to_string(i)));
    }
  }

  testing::TempDir tmp_;
  std::unique_ptr<KeyEncryptionKey> kek_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<AuditLog> log_;
};

TEST_F(AuditTreeTest, UntouchedLogVerifiesAgainstSavedAndNewestCheckpoints) {
  auto saved = log_->Checkpoint();
  ASSERT_OK(saved);
  Append("later");
  ASSERT_OK(log_->Checkpoint());  // the newest issued, size 8
  auto head = VerifyWith(*saved);
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 8);  // key creation + 6 + 1
  EXPECT_EQ(head->saved_checkpoint_size, 7);
  EXPECT_EQ(head->newest_checkpoint_size, 8);
  EXPECT_EQ(head->log_key, log_->verifier_key());
}

TEST_F(AuditTreeTest, CheckpointIsASignedC2spCheckpointOfTheTree) {
  auto note = log_->Checkpoint();
  ASSERT_OK(note);
  auto verifier = tlog::NoteVerifier::Create(log_->verifier_key());
  ASSERT_OK(verifier);
  auto text = (*verifier)->Open(*note);
  ASSERT_OK(text);
  auto cp = tlog::ParseCheckpoint(*text);
  ASSERT_OK(cp);
  EXPECT_EQ(cp->origin, log_->origin());
  EXPECT_EQ(cp->origin.rfind("vmseal-kms/audit/", 0), 0u);
  EXPECT_EQ(cp->size, 7u);
  auto head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(tlog::HashHex(cp->root), head->root_hex);
}

TEST_F(AuditTreeTest, DeletingNewestRecordsIsDetectedAsTruncation) {
  auto saved = log_->Checkpoint();
  ASSERT_OK(saved);
  ASSERT_OK(store_->ExecForTesting("DELETE FROM audit_log WHERE seq > 5"));
  // Against the tree the store kept.
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss,
                "truncated: the audit tree has 7 leaves but the log has 5 records");
  // The attacker also rebuilds the tree and drops the issued checkpoint:
  // the log looks whole, and only the saved checkpoint tells.
  RebuildTreeAsAttacker();
  EXPECT_OK(VerifyStoreAudit(*store_));
  EXPECT_STATUS(VerifyWith(*saved), StatusCode::kDataLoss,
                "truncated: the saved checkpoint covers 7 records but the log has only 5 (the newest "
                "records were deleted)");
}

TEST_F(AuditTreeTest, TruncationBelowTheNewestIssuedCheckpointIsDetectedWithoutASavedOne) {
  ASSERT_OK(log_->Checkpoint());
  ASSERT_OK(store_->ExecForTesting(
      "DELETE FROM audit_log WHERE seq > 5; DELETE FROM audit_tree; "
      "UPDATE audit_frontier SET size = 0, hashes = ''"));
  Open(tmp_.File("kms.db"));  // rebuilds the tree over 5 records
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss,
                "truncated: the newest issued checkpoint covers 7 records");
}

TEST_F(AuditTreeTest, RewrittenRecordWithRecomputedChainIsDetected) {
  auto saved = log_->Checkpoint();
  ASSERT_OK(saved);
  RewriteRecordAndChain(3, "forged");
  // The old chain alone no longer notices anything...
  auto records = store_->ReadAudit(0, 1000);
  ASSERT_OK(records);
  ASSERT_OK(VerifyAuditChain(*records));
  // ...the stored tree does, and names the record.
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss,
                "rewritten: audit record 3 does not hash to the tree's leaf 2");
  // With the tree rebuilt too, the saved checkpoint still does.
  RebuildTreeAsAttacker();
  EXPECT_OK(VerifyStoreAudit(*store_));
  EXPECT_STATUS(VerifyWith(*saved), StatusCode::kDataLoss,
                "fork or rewrite: the log is not an extension of the saved checkpoint (tree of 7 records)");
}

TEST_F(AuditTreeTest, ForkOfTheSameSizeIsDetected) {
  Close();
  std::filesystem::copy_file(tmp_.File("kms.db"), tmp_.File("fork.db"));
  Open(tmp_.File("kms.db"));
  Append("what happened");
  auto a = log_->Checkpoint();
  ASSERT_OK(a);
  Open(tmp_.File("fork.db"));  // same log key: a copy of the same store
  Append("what the fork says happened");
  auto b = log_->Checkpoint();
  ASSERT_OK(b);
  EXPECT_NE(*a, *b);
  EXPECT_OK(VerifyWith(*b));
  EXPECT_STATUS(VerifyWith(*a), StatusCode::kDataLoss,
                "fork or rewrite: the log is not an extension of the saved checkpoint (tree of 8 records)");
}

TEST_F(AuditTreeTest, CheckpointOfAnotherLogKeyIsRefused) {
  auto other = tlog::NoteSigner::Create(log_->origin(), SecretBytes::Random(32));
  ASSERT_OK(other);
  auto text = tlog::FormatCheckpoint({log_->origin(), 7, tlog::EmptyRoot(), {}});
  ASSERT_OK(text);
  auto forged = (*other)->Sign(*text);
  ASSERT_OK(forged);
  EXPECT_STATUS(VerifyWith(*forged), StatusCode::kUnauthenticated, "the saved checkpoint: note: no signature of");
  EXPECT_STATUS(VerifyWith("not a note"), StatusCode::kInvalidArgument, "the saved checkpoint: note:");
}

TEST_F(AuditTreeTest, InclusionAndConsistencyProofsVerifyLocally) {
  auto old_note = log_->Checkpoint();
  ASSERT_OK(old_note);
  for (int i = 0; i < 10; ++i) Append(Cat("more ", i));
  auto verifier = tlog::NoteVerifier::Create(log_->verifier_key());
  ASSERT_OK(verifier);
  for (int64_t seq = 1; seq <= 17; ++seq) {
    SCOPED_TRACE(seq);
    auto text = log_->InclusionProof(seq, 0);
    ASSERT_OK(text);
    auto proof = tlog::ParseInclusionProof(*text);
    ASSERT_OK(proof);
    auto cp = tlog::ParseCheckpoint(*(*verifier)->Open(proof->checkpoint));
    ASSERT_OK(cp);
    EXPECT_EQ(cp->size, 17u);
    EXPECT_NE(proof->extra.find("\"seq\":" + std::to_string(seq)), std::string::npos);
    EXPECT_OK(tlog::VerifyInclusion(proof->index, cp->size, tlog::LeafHash(proof->extra), proof->hashes,
                                    cp->root));
  }
  // Against the older tree of 7 records too.
  auto text = log_->InclusionProof(2, 7);
  ASSERT_OK(text);
  auto proof = tlog::ParseInclusionProof(*text);
  ASSERT_OK(proof);
  auto old_cp = tlog::ParseCheckpoint(*(*verifier)->Open(*old_note));
  ASSERT_OK(old_cp);
  EXPECT_OK(tlog::VerifyInclusion(1, 7, tlog::LeafHash(proof->extra), proof->hashes, old_cp->root));

  auto ctext = log_->ConsistencyProof(7, 0);
  ASSERT_OK(ctext);
  auto cproof = tlog::ParseConsistencyProof(*ctext);
  ASSERT_OK(cproof);
  auto new_cp = tlog::ParseCheckpoint(*(*verifier)->Open(cproof->checkpoint));
  ASSERT_OK(new_cp);
  EXPECT_OK(tlog::VerifyConsistency(7, new_cp->size, cproof->hashes, old_cp->root, new_cp->root));

  EXPECT_STATUS(log_->InclusionProof(18, 0), StatusCode::kInvalidArgument, "not in a tree of 17");
  EXPECT_STATUS(log_->InclusionProof(0, 0), StatusCode::kInvalidArgument, "not in a tree");
  EXPECT_STATUS(log_->ConsistencyProof(8, 7), StatusCode::kInvalidArgument, "old size 8");
  EXPECT_STATUS(log_->ConsistencyProof(1, 18), StatusCode::kInvalidArgument, "size 18");
}

TEST_F(AuditTreeTest, LogKeyIsCreatedOnceAndAuditedWithItsVerifierKey) {
  const std::string key = log_->verifier_key();
  Open(tmp_.File("kms.db"));
  EXPECT_EQ(log_->verifier_key(), key);
  auto records = store_->ReadAudit(0, 1);
  ASSERT_OK(records);
  EXPECT_NE((*records)[0].record.find("kms.audit_log_key.create"), std::string::npos);
  EXPECT_NE((*records)[0].record.find(key), std::string::npos);
  // Another KEK cannot open it.
  auto other = KekFromBytes(SecretBytes::Random(32));
  ASSERT_OK(other);
  EXPECT_STATUS(AuditLog::Open(store_.get(), other->get()), StatusCode::kFailedPrecondition, "kek_mismatch");
}

TEST_F(AuditTreeTest, StoreWithoutATreeIsCaughtUpOnOpen) {
  const std::string root = VerifyStoreAudit(*store_)->root_hex;
  ASSERT_OK(store_->ExecForTesting("DELETE FROM audit_tree; UPDATE audit_frontier SET size = 0, hashes = ''"));
  Open(tmp_.File("kms.db"));
  auto head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(head->root_hex, root);
}

// Figures, not assertions: a store append (record, chain, leaf, frontier
// and subtree rows, one commit each) and a proof served from the store.
TEST_F(AuditTreeTest, CostPerAppendAndPerProofThroughTheStore) {
  constexpr int kAppends = 500;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kAppends; ++i) Append(Cat("bench ", i));
  const double append_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / kAppends;
  // The same appends inside one transaction: the CPU and SQL cost of a
  // record with its chain, leaf, frontier and subtree rows, without a commit.
  std::vector<AuditEvent> batch;
  for (int i = 0; i < kAppends; ++i) batch.push_back({"test.event", Cat("batched ", i), {}});
  Verdict verdict;
  verdict.verdict_id = "v-bench";
  verdict.host_id = "h";
  verdict.trusted = true;
  verdict.reason = "ok";
  start = std::chrono::steady_clock::now();
  ASSERT_OK(store_->PutVerdict(verdict, batch));
  const double in_tx_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / kAppends;
  constexpr int kProofs = 200;
  start = std::chrono::steady_clock::now();
  for (int i = 1; i <= kProofs; ++i) ASSERT_OK(log_->InclusionProof(i * 2, 0));
  const double proof_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / kProofs;
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < kProofs; ++i) ASSERT_OK(log_->Checkpoint());
  const double checkpoint_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / kProofs;
  std::printf("audit (SQLite, %d records): append %.3f ms (own commit), %.1f us (inside a transaction), "
              "signed inclusion proof %.3f ms, signed checkpoint %.3f ms\n",
              2 * kAppends + 7, append_ms, in_tx_us, proof_ms, checkpoint_ms);
}

}  // namespace
}  // namespace vmseal::kms
