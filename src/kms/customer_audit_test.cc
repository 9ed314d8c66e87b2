// The customer audit (kms/customer_audit.h) through the KMS service core and
// the customer's local verification: listing, paging, the tenant check, the
// log key's endorsement, and tampering with the proofs or the store.
#include "kms/customer_audit.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "json/json.h"
#include "kms/service.h"
#include "testing/test_util.h"
#include "tlog/checkpoint.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;
using testing::TempDir;

constexpr char kImage[] = "4f1c2a9e-0000-4000-8000-00000000a11e";

class CustomerAuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = internal::CreateRootCa("audit test kms ca", 30);
    ASSERT_OK(ca);
    ca_pem_ = ca->cert_pem;
    ca_ = *std::move(ca);
    auto kek = KekFromBytes(SecretBytes::Random(kKekBytes));
    ASSERT_OK(kek);
    kek_ = *std::move(kek);
    Open();
    ASSERT_OK(service_->RegisterImage(Portal(), {"acme", kImage, "sha256:ab", 0}));
    Grant("job-1", "host-1");
    Grant("job-2", "host-2");
  }

  // (Re)opens the store and a service over it, as a KMS restart does.
  void Open() {
    service_.reset();
    store_.reset();
    auto store = Store::Open(dir_.File("kms.db"));
    ASSERT_OK(store);
    store_ = *std::move(store);
    KmsService::Options options;
    options.clock = [this] { return now_; };
    auto service = KmsService::Create(options, store_.get(), kek_.get(),
                                      {ca_.cert_pem, ca_.key_pem.Clone()});
    ASSERT_OK(service);
    service_ = *std::move(service);
  }

  static Caller Portal() { return {Caller::Role::kPortal, "portal-1", "fp"}; }

  // A grant record of the image, written as KmsService::CreateGrant writes
  // it (the hosts here are not enrolled, so the service itself would refuse
  // the grant: its policy check is ReleaseTest's and SignedPolicyTest's).
  void Grant(const std::string& job, const std::string& host) {
    GrantRecord g{job, kImage, "acme", host, now_ + 600, now_, 0};
    ASSERT_OK(store_->PutGrant(g, {"grant.create", "host/" + host,
                                   json{{"job_id", job}, {"image_id", kImage}, {"tenant", "acme"},
                                        {"expires_unix", g.expires_unix}, {"policy", "_default"},
                                        {"by", "portal-1"}}}));
  }

  CustomerAuditVerifyOptions Verify(const std::string& saved = "") {
    CustomerAuditVerifyOptions o;
    auto roots = crypto::Certificate::ParsePemBundle(ca_pem_);
    EXPECT_OK(roots);
    if (roots.ok()) o.kms_roots = *roots;
    o.tenant = "acme";
    o.image_id = kImage;
    o.saved_checkpoint = saved;
    return o;
  }

  StatusOr<CustomerAuditPage> Page(int64_t after = 0, int64_t old_size = 0, int64_t limit = 100) {
    ASSIGN_OR_RETURN(CustomerAuditPage page,
                     service_->CustomerAudit(Portal(), {"acme", kImage, after, limit, old_size}));
    // Through its wire form, as the portal relays it.
    return CustomerAuditPageFromJson(json::parse(CustomerAuditPageToJson(page).dump()));
  }

  // Tampers with the SQLite store as someone with write access to it would,
  // then restarts the KMS (which rebuilds a tree it finds empty).
  void TamperAndRestart(const std::string& sql) {
    service_.reset();
    ASSERT_OK(store_->ExecForTesting(sql));
    Open();
  }

  TempDir dir_;
  int64_t now_ = 1000;
  internal::CertAndKey ca_;
  std::string ca_pem_;
  std::unique_ptr<KeyEncryptionKey> kek_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<KmsService> service_;
};

TEST_F(CustomerAuditTest, ImageEventsAreListedWithInclusionProofsThatVerifyLocally) {
  auto page = Page();
  ASSERT_OK(page);
  auto verified = VerifyCustomerAuditPage(*page, Verify());
  ASSERT_OK(verified);
  ASSERT_EQ(verified->events.size(), 3u);
  EXPECT_EQ(verified->events[0].event, "image.register");
  EXPECT_EQ(verified->events[1].event, "grant.create");
  EXPECT_EQ(verified->events[1].job_id, "job-1");
  EXPECT_EQ(verified->events[1].host_id, "host-1");
  EXPECT_EQ(verified->events[2].job_id, "job-2");
  EXPECT_EQ(verified->next_after, 0);
  auto frontier = store_->AuditFrontier();
  ASSERT_OK(frontier);
  EXPECT_EQ(verified->tree_size, frontier->size());
}

TEST_F(CustomerAuditTest, AnotherTenantIsRefusedTenantMismatchAuditedAndShownNothing) {
  auto before = store_->AuditFrontier();
  ASSERT_OK(before);
  auto page = service_->CustomerAudit(Portal(), {"bob", kImage, 0, 100, 0});
  EXPECT_STATUS(page, StatusCode::kPermissionDenied, "tenant_mismatch: ");
  auto recs = store_->ReadAudit(static_cast<int64_t>(before->size()), 10);
  ASSERT_OK(recs);
  ASSERT_EQ(recs->size(), 1u);
  EXPECT_NE((*recs)[0].record.find("\"reason\":\"tenant_mismatch\""), std::string::npos);
  EXPECT_STATUS(service_->CustomerAudit(Portal(), {"acme", "no-such-image", 0, 100, 0}),
                StatusCode::kNotFound, "unknown_image: ");
}

TEST_F(CustomerAuditTest, OnlyThePortalOrAnOperatorMayAsk) {
  EXPECT_STATUS(service_->CustomerAudit({Caller::Role::kHost, "host-1", "fp"}, {"acme", kImage, 0, 100, 0}),
                StatusCode::kPermissionDenied, "portal role");
  EXPECT_STATUS(service_->CustomerAudit(Caller{}, {"acme", kImage, 0, 100, 0}),
                StatusCode::kUnauthenticated, "client certificate");
}

TEST_F(CustomerAuditTest, PagesAreBoundedAndFollowEachOther) {
  for (int i = 3; i <= 250; ++i) Grant("job-" + std::to_string(i), "host-1");
  EXPECT_STATUS(service_->CustomerAudit(Portal(), {"acme", kImage, 0, 101, 0}),
                StatusCode::kInvalidArgument, "limit must be 1..100");
  int64_t after = 0;
  std::vector<size_t> sizes;
  int64_t last_seq = 0;
  do {
    auto page = Page(after);
    ASSERT_OK(page);
    auto o = Verify();
    o.after_seq = after;
    auto verified = VerifyCustomerAuditPage(*page, o);
    ASSERT_OK(verified);
    sizes.push_back(verified->events.size());
    for (const auto& e : verified->events) {
      EXPECT_GT(e.seq, last_seq);
      last_seq = e.seq;
    }
    after = verified->next_after;
  } while (after != 0);
  EXPECT_EQ(sizes, (std::vector<size_t>{100, 100, 51}));
}

TEST_F(CustomerAuditTest, AFlippedProofHashFailsVerification) {
  auto page = Page();
  ASSERT_OK(page);
  auto proof = tlog::ParseInclusionProof(page->proofs[1]);
  ASSERT_OK(proof);
  ASSERT_FALSE(proof->hashes.empty());
  proof->hashes[0][7] ^= 0x01;
  page->proofs[1] = tlog::FormatInclusionProof(*proof);
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify()), StatusCode::kUnauthenticated,
                "is not in the signed tree");
}

TEST_F(CustomerAuditTest, ARecordRewrittenInTheRelayFailsVerification) {
  auto page = Page();
  ASSERT_OK(page);
  auto proof = tlog::ParseInclusionProof(page->proofs[1]);
  ASSERT_OK(proof);
  const size_t at = proof->extra.find("host-1");
  ASSERT_NE(at, std::string::npos);
  proof->extra.replace(at, 6, "host-9");
  page->proofs[1] = tlog::FormatInclusionProof(*proof);
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify()), StatusCode::kUnauthenticated,
                "is not in the signed tree");
}

TEST_F(CustomerAuditTest, ARecordOfAnotherImageInTheAnswerIsRefused) {
  ASSERT_OK(service_->RegisterImage(Portal(), {"acme", "other-image", "sha256:cd", 0}));
  auto other = service_->CustomerAudit(Portal(), {"acme", "other-image", 0, 100, 0});
  ASSERT_OK(other);
  auto page = Page();
  ASSERT_OK(page);
  // A relay that swaps in a (valid) proof of the other image's record.
  page->checkpoint = other->checkpoint;
  for (auto& p : page->proofs) {
    auto t = tlog::ParseInclusionProof(p);
    ASSERT_OK(t);
    t->checkpoint = other->checkpoint;
    p = tlog::FormatInclusionProof(*t);
  }
  page->proofs.push_back(other->proofs[0]);
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify()), StatusCode::kDataLoss,
                "not about image " + std::string(kImage));
}

TEST_F(CustomerAuditTest, ALogKeyNotEndorsedByThePinnedCaIsRefused) {
  auto page = Page();
  ASSERT_OK(page);
  auto other = internal::CreateRootCa("someone else's ca", 30);
  ASSERT_OK(other);
  auto o = Verify();
  auto roots = crypto::Certificate::ParsePemBundle(other->cert_pem);
  ASSERT_OK(roots);
  o.kms_roots = *roots;
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, o), StatusCode::kUnauthenticated,
                "not endorsed by the pinned KMS CA");
  // And a log key swapped by the relay does not carry the CA's endorsement.
  auto signer = tlog::NoteSigner::Create("vmseal-kms/audit/0000000000000000", SecretBytes::Random(32));
  ASSERT_OK(signer);
  page->log_key = (*signer)->VerifierKey();
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify()), StatusCode::kUnauthenticated,
                "not endorsed by the pinned KMS CA");
}

TEST_F(CustomerAuditTest, TheNewestRecordsDeletedFromTheStoreAreCaughtByTheSavedCheckpoint) {
  auto first = Page();
  ASSERT_OK(first);
  auto saved = VerifyCustomerAuditPage(*first, Verify());
  ASSERT_OK(saved);
  const int64_t keep = saved->events[1].seq;  // drops job-2's grant and what follows
  TamperAndRestart("DELETE FROM audit_log WHERE seq > " + std::to_string(keep) +
                   "; DELETE FROM audit_by_image WHERE seq > " + std::to_string(keep) +
                   "; DELETE FROM audit_tree; UPDATE audit_frontier SET size = 0, hashes = '';"
                   " DELETE FROM audit_checkpoint;");
  auto page = Page(0, static_cast<int64_t>(saved->tree_size));
  ASSERT_OK(page);
  // Without the saved checkpoint the shorter log looks whole...
  EXPECT_OK(VerifyCustomerAuditPage(*page, Verify()));
  // ...with it, the truncation is plain.
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify(saved->checkpoint)), StatusCode::kDataLoss,
                "truncated: the saved checkpoint covers");
}

TEST_F(CustomerAuditTest, ARecordRewrittenWithTheTreeRebuiltIsAForkOfTheSavedCheckpoint) {
  auto first = Page();
  ASSERT_OK(first);
  auto saved = VerifyCustomerAuditPage(*first, Verify());
  ASSERT_OK(saved);
  const int64_t seq = saved->events[1].seq;
  TamperAndRestart("UPDATE audit_log SET record = replace(record, 'host-1', 'host-7') WHERE seq = " +
                   std::to_string(seq) +
                   "; DELETE FROM audit_tree; UPDATE audit_frontier SET size = 0, hashes = '';"
                   " DELETE FROM audit_checkpoint;");
  auto page = Page(0, static_cast<int64_t>(saved->tree_size));
  ASSERT_OK(page);
  auto rewritten = VerifyCustomerAuditPage(*page, Verify());
  ASSERT_OK(rewritten);  // the rebuilt tree holds the rewritten record...
  EXPECT_EQ(rewritten->events[1].host_id, "host-7");
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify(saved->checkpoint)), StatusCode::kDataLoss,
                "fork or rewrite: ");  // ...but it is not the log the customer saw
}

TEST_F(CustomerAuditTest, AnUnchangedLogExtendsTheSavedCheckpoint) {
  auto first = Page();
  ASSERT_OK(first);
  auto saved = VerifyCustomerAuditPage(*first, Verify());
  ASSERT_OK(saved);
  Grant("job-3", "host-3");
  auto page = Page(0, static_cast<int64_t>(saved->tree_size));
  ASSERT_OK(page);
  auto verified = VerifyCustomerAuditPage(*page, Verify(saved->checkpoint));
  ASSERT_OK(verified);
  EXPECT_EQ(verified->extends_saved_size, static_cast<int64_t>(saved->tree_size));
  EXPECT_EQ(verified->events.size(), 4u);
  // A relay that withholds the consistency proof is caught.
  page->consistency.clear();
  EXPECT_STATUS(VerifyCustomerAuditPage(*page, Verify(saved->checkpoint)), StatusCode::kDataLoss,
                "no consistency proof");
}

TEST_F(CustomerAuditTest, RecordsWrittenBeforeTheIndexExistedAreIndexedOnOpen) {
  TamperAndRestart("DELETE FROM audit_by_image; UPDATE audit_index_state SET built = 0;");
  auto page = Page();
  ASSERT_OK(page);
  auto verified = VerifyCustomerAuditPage(*page, Verify());
  ASSERT_OK(verified);
  EXPECT_EQ(verified->events.size(), 3u);
}

TEST_F(CustomerAuditTest, AnonymousDenialsAddAtMostTwoRecordsPerWindow) {
  auto before = store_->AuditFrontier();
  ASSERT_OK(before);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_STATUS(service_->CreateCustomerKey(Caller{}, {"acme", ""}), StatusCode::kUnauthenticated,
                  "client certificate");
  }
  auto mid = store_->AuditFrontier();
  ASSERT_OK(mid);
  EXPECT_EQ(mid->size() - before->size(), 1u);
  now_ += 61;
  EXPECT_STATUS(service_->CreateCustomerKey(Caller{}, {"acme", ""}), StatusCode::kUnauthenticated,
                "client certificate");
  auto recs = store_->ReadAudit(static_cast<int64_t>(mid->size()), 10);
  ASSERT_OK(recs);
  ASSERT_EQ(recs->size(), 2u);
  EXPECT_NE((*recs)[0].record.find("\"event\":\"request.deny.aggregate\""), std::string::npos);
  EXPECT_NE((*recs)[0].record.find("\"count\":999"), std::string::npos);
  EXPECT_NE((*recs)[1].record.find("\"event\":\"request.deny\""), std::string::npos);
  // Every refusal is still counted in the metrics.
  EXPECT_NE(service_->metrics().Render().find("reason=\"unauthenticated\"} 1001"), std::string::npos);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

}  // namespace
}  // namespace vmseal::kms
