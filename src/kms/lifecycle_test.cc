// Unit tests of the signed lifecycle request (docs/protocol.md §7.1) and of
// kms::Lifecycle over a real SQLite store (issue 19). The process-level
// attacks are in tests/lifecycle_test.cc.
#include "kms/lifecycle.h"

#include <gtest/gtest.h>

#include "crypto/signature.h"
#include "kms/service.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;
using testing::TempDir;

constexpr int64_t kNow = 1'800'000'000;

LifecycleRequest Revoke(const std::string& tenant = "acme", const std::string& image = "img-1") {
  return {"revoke_image", tenant, image, kNow, -1};
}

TEST(LifecycleRequestTest, SerializeThenParseRoundTrips) {
  auto doc = SerializeLifecycleRequest(Revoke());
  ASSERT_OK(doc);
  EXPECT_EQ(*doc,
            R"({"action":"revoke_image","format":"vmseal-lifecycle-request-v1","image_id":"img-1",)"
            R"("issued_unix":1800000000,"tenant":"acme"})");
  auto back = ParseLifecycleRequest(*doc);
  ASSERT_OK(back);
  EXPECT_EQ(back->action, "revoke_image");
  EXPECT_EQ(back->tenant, "acme");
  EXPECT_EQ(back->image_id, "img-1");
  EXPECT_EQ(back->issued_unix, kNow);
  EXPECT_EQ(back->grace_seconds, -1);

  auto close = SerializeLifecycleRequest({"close_account", "acme", "", kNow, 0});
  ASSERT_OK(close);
  auto parsed = ParseLifecycleRequest(*close);
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->grace_seconds, 0);
  EXPECT_TRUE(parsed->image_id.empty());
}

TEST(LifecycleRequestTest, SerializeRefusesBadFields) {
  const LifecycleRequest bad[] = {
      {"delete_everything", "acme", "img-1", kNow, -1},
      {"revoke_image", "", "img-1", kNow, -1},
      {"revoke_image", "ac me", "img-1", kNow, -1},
      {"revoke_image", "acme", "", kNow, -1},
      {"revoke_image", "acme", "img/1", kNow, -1},
      {"revoke_image", "acme", "img-1", 0, -1},
      {"revoke_image", "acme", "img-1", kNow, 5},      // grace only for close_account
      {"close_account", "acme", "img-1", kNow, -1},    // close names no image
      {"close_account", "acme", "", kNow, -2},
      {"revoke_image", std::string(129, 'a'), "img-1", kNow, -1},
  };
  for (const auto& r : bad) {
    auto s = SerializeLifecycleRequest(r);
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << r.action << " " << r.tenant;
    EXPECT_EQ(s.status().message().rfind("malformed_request: ", 0), 0u) << s.status().message();
  }
}

TEST(LifecycleRequestTest, RetireKeyVersionNamesOneVersionAndNoImage) {
  // docs/protocol.md §1.2's example.
  auto doc = SerializeLifecycleRequest({"retire_key_version", "acme", "", 1796000000, -1, 1});
  ASSERT_OK(doc);
  EXPECT_EQ(*doc, R"({"action":"retire_key_version","format":"vmseal-lifecycle-request-v1",)"
                  R"("issued_unix":1796000000,"key_version":1,"tenant":"acme"})");
  auto back = ParseLifecycleRequest(*doc);
  ASSERT_OK(back);
  EXPECT_EQ(back->action, "retire_key_version");
  EXPECT_EQ(back->key_version, 1);
  const LifecycleRequest bad[] = {
      {"retire_key_version", "acme", "", kNow, -1, 0},       // no version
      {"retire_key_version", "acme", "img-1", kNow, -1, 2},  // names an image
      {"retire_key_version", "acme", "", kNow, 5, 2},        // grace
      {"revoke_image", "acme", "img-1", kNow, -1, 2},        // a version elsewhere
  };
  for (const auto& r : bad) {
    EXPECT_STATUS(SerializeLifecycleRequest(r).status(), StatusCode::kInvalidArgument, "malformed_request");
  }
  EXPECT_STATUS(ParseLifecycleRequest(R"({"action":"retire_key_version","format":"vmseal-lifecycle-request-v1",)"
                                      R"("issued_unix":1796000000,"key_version":0,"tenant":"acme"})")
                    .status(),
                StatusCode::kInvalidArgument, "key_version");
}

TEST(LifecycleRequestTest, ParseAcceptsOnlyTheCanonicalBytes) {
  auto doc = SerializeLifecycleRequest(Revoke());
  ASSERT_OK(doc);
  const std::string canonical = *doc;
  json j = json::parse(canonical);
  auto with = [&](const std::string& key, const json& v) {
    json k = j;
    k[key] = v;
    return k.dump();
  };
  auto without = [&](const std::string& key) {
    json k = j;
    k.erase(key);
    return k.dump();
  };
  const std::string bad[] = {
      "",
      "null",
      "[]",
      "{",
      canonical + " ",                             // trailing byte
      " " + canonical,                             // leading byte
      j.dump(1),                                   // other spelling (indented)
      with("extra", 1),                            // unknown field
      with("format", "vmseal-lifecycle-request-v2"),
      without("format"),
      without("issued_unix"),
      with("issued_unix", "1800000000"),           // string, not integer
      with("issued_unix", 1.8e9),                  // float
      with("issued_unix", -1),
      with("action", "revoke_everything"),
      without("tenant"),
      with("tenant", 7),
      with("grace_seconds", 10),                   // grace on revoke_image
      with("grace_seconds", -5),
      std::string(kMaxLifecycleDocumentBytes + 1, ' '),
  };
  for (const std::string& d : bad) {
    auto r = ParseLifecycleRequest(d);
    ASSERT_FALSE(r.ok()) << d;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << d;
    EXPECT_EQ(r.status().message().rfind("malformed_request: ", 0), 0u) << r.status().message();
  }
  ASSERT_OK(ParseLifecycleRequest(canonical));
}

TEST(LifecycleRequestTest, SignatureBindsDocumentKeyAndPrefix) {
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(key);
  auto other = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(other);
  auto doc = SerializeLifecycleRequest(Revoke());
  ASSERT_OK(doc);
  auto sig = SignLifecycleRequest(*doc, *key);
  ASSERT_OK(sig);
  ASSERT_OK(VerifyLifecycleRequest(*doc, *sig, key->Public()));

  auto expect_bad = [](const Status& s) {
    EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
    EXPECT_EQ(s.message().rfind("bad_signature: ", 0), 0u) << s.message();
  };
  expect_bad(VerifyLifecycleRequest(*doc, *sig, other->Public()));
  auto doc2 = SerializeLifecycleRequest(Revoke("acme", "img-2"));
  ASSERT_OK(doc2);
  expect_bad(VerifyLifecycleRequest(*doc2, *sig, key->Public()));
  crypto::Bytes flipped = *sig;
  flipped[flipped.size() / 2] ^= 1;
  expect_bad(VerifyLifecycleRequest(*doc, flipped, key->Public()));
  expect_bad(VerifyLifecycleRequest(*doc, crypto::Bytes{}, key->Public()));
  // A plain signature of the document (no prefix), as another signed object
  // of the customer would carry, does not verify.
  crypto::Bytes plain(doc->begin(), doc->end());
  auto unprefixed = crypto::Sign(*key, crypto::SignatureDigest::kSha256, plain);
  ASSERT_OK(unprefixed);
  expect_bad(VerifyLifecycleRequest(*doc, *unprefixed, key->Public()));
  // Only P-256 keys sign.
  auto rsa = crypto::PrivateKey::Generate(crypto::KeyType::kRsa3072);
  ASSERT_OK(rsa);
  EXPECT_EQ(SignLifecycleRequest(*doc, *rsa).status().code(), StatusCode::kInvalidArgument);
}

class KmsLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = Store::Open(dir_.File("kms.db"));
    ASSERT_OK(store);
    store_ = *std::move(store);
    auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    ASSERT_OK(key);
    signer_ = std::make_unique<crypto::PrivateKey>(*std::move(key));
    ASSERT_OK(store_->PutSigningKey({"acme", signer_->KeyId(), signer_->Public().ToPem(), "", 1},
                                    {"signing_key.register", "customer/acme", json::object()}));
    ASSERT_OK(store_->PutCustomerKey({"k1", "acme", "RSA-3072", "pub", "cert", "d3JhcHBlZA==", "file:kek1", 1},
                                     {"customer_key.create", "customer/acme", json::object()}));
    ASSERT_OK(store_->PutImage({"acme", "img-1", "k1", 1}, {"image.register", "customer/acme",
                                                            json{{"image_id", "img-1"}}}));
    ASSERT_OK(store_->PutHost({"h1", "ek", "ak", true, {}, 1}, {"host.enroll", "host/h1", json::object()}));
    Lifecycle::Options options;
    options.clock = [this] { return now_; };
    options.forget_keys = [this](const std::string& c) { forgotten_.push_back(c); };
    lifecycle_ = std::make_unique<Lifecycle>(options, store_.get());
  }

  std::pair<std::string, crypto::Bytes> Signed(const LifecycleRequest& r) {
    auto doc = SerializeLifecycleRequest(r);
    EXPECT_OK(doc);
    auto sig = SignLifecycleRequest(*doc, *signer_);
    EXPECT_OK(sig);
    return {*doc, *sig};
  }
  size_t AuditCount() {
    auto a = store_->ReadAudit(0, 1000);
    EXPECT_OK(a);
    return a.ok() ? a->size() : 0;
  }

  TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<crypto::PrivateKey> signer_;
  std::unique_ptr<Lifecycle> lifecycle_;
  int64_t now_ = kNow;
  std::vector<std::string> forgotten_;
  const Caller portal_{Caller::Role::kPortal, "portal", ""};
  const Caller op_{Caller::Role::kOperator, "operator", ""};
  const Caller host_{Caller::Role::kHost, "h1", ""};
};

TEST_F(KmsLifecycleTest, RevokedImageIsRefusedOnlyForThatImage) {
  ASSERT_OK(lifecycle_->Check("acme", "img-1", "h1"));
  auto [doc, sig] = Signed(Revoke());
  auto mark = lifecycle_->CustomerRequest(portal_, "acme", doc, sig);
  ASSERT_OK(mark);
  EXPECT_EQ(mark->state, "revoked");
  Status s = lifecycle_->Check("acme", "img-1", "h1");
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message().rfind("image_revoked: ", 0), 0u) << s.message();
  ASSERT_OK(lifecycle_->Check("acme", "img-2", "h1"));
  ASSERT_OK(lifecycle_->Check("bob", "img-1", "h1"));
  // Repeating it is idempotent and audits nothing more.
  const size_t n = AuditCount();
  ASSERT_OK(lifecycle_->CustomerRequest(portal_, "acme", doc, sig));
  EXPECT_EQ(AuditCount(), n);
}

TEST_F(KmsLifecycleTest, RefusedRequestsChangeNothingAndAreAudited) {
  auto [doc, sig] = Signed(Revoke());
  struct Case {
    Caller caller;
    std::string tenant;
    std::string doc;
    crypto::Bytes sig;
    std::string reason;
  };
  auto [stale_doc, stale_sig] = Signed({"revoke_image", "acme", "img-1", kNow - 601, -1});
  auto [future_doc, future_sig] = Signed({"revoke_image", "acme", "img-1", kNow + 601, -1});
  auto [unknown_doc, unknown_sig] = Signed(Revoke("acme", "img-9"));
  crypto::Bytes bad_sig = sig;
  bad_sig[4] ^= 1;
  const Case cases[] = {
      {host_, "acme", doc, sig, "forbidden"},
      {portal_, "bob", doc, sig, "tenant_mismatch"},
      {portal_, "acme", stale_doc, stale_sig, "stale_request"},
      {portal_, "acme", future_doc, future_sig, "stale_request"},
      {portal_, "acme", doc, bad_sig, "bad_signature"},
      {portal_, "acme", doc + " ", sig, "malformed_request"},
      {portal_, "acme", unknown_doc, unknown_sig, "unknown_image"},
  };
  for (const Case& c : cases) {
    const size_t n = AuditCount();
    auto r = lifecycle_->CustomerRequest(c.caller, c.tenant, c.doc, c.sig);
    ASSERT_FALSE(r.ok()) << c.reason;
    EXPECT_EQ(r.status().message().rfind(c.reason + ": ", 0), 0u) << r.status().message();
    auto audit = store_->ReadAudit(0, 1000);
    ASSERT_OK(audit);
    ASSERT_EQ(audit->size(), n + 1) << c.reason;
    EXPECT_NE(audit->back().record.find("lifecycle.deny"), std::string::npos);
    EXPECT_NE(audit->back().record.find("\"reason\":\"" + c.reason + "\""), std::string::npos)
        << audit->back().record;
    auto marks = store_->ListLifecycle("image", "");
    ASSERT_OK(marks);
    EXPECT_TRUE(marks->empty()) << c.reason;
  }
  // A tenant with no registered signing key.
  auto r = lifecycle_->CustomerRequest(portal_, "bob", Signed(Revoke("bob")).first, sig);
  EXPECT_EQ(r.status().message().rfind("signer_mismatch: ", 0), 0u) << r.status().message();
  ASSERT_OK(lifecycle_->Check("acme", "img-1", "h1"));
}

TEST_F(KmsLifecycleTest, HostRevocationIsOperatorOnlyIdempotentAndUnenrolls) {
  EXPECT_EQ(lifecycle_->RevokeHost(portal_, "h1", "x").status().message().rfind("forbidden: ", 0), 0u);
  EXPECT_EQ(lifecycle_->RevokeHost(op_, "h9", "x").status().message().rfind("unknown_host: ", 0), 0u);
  EXPECT_EQ(lifecycle_->RevokeHost(op_, "h 1", "x").status().code(), StatusCode::kInvalidArgument);
  ASSERT_OK(lifecycle_->CheckHost("h1"));
  auto mark = lifecycle_->RevokeHost(op_, "h1", "stolen");
  ASSERT_OK(mark);
  EXPECT_EQ(mark->reason, "stolen");
  auto host = store_->GetHost("h1");
  ASSERT_OK(host);
  EXPECT_FALSE(host->enrolled);
  EXPECT_EQ(lifecycle_->CheckHost("h1").message().rfind("host_revoked: ", 0), 0u);
  EXPECT_EQ(lifecycle_->Check("acme", "img-1", "h1").message().rfind("host_revoked: ", 0), 0u);
  ASSERT_OK(lifecycle_->Check("acme", "img-1", ""));
  now_ += 100;
  auto again = lifecycle_->RevokeHost(op_, "h1", "other");
  ASSERT_OK(again);
  EXPECT_EQ(again->reason, "stolen");  // the first revocation stands
  EXPECT_EQ(again->since_unix, kNow);
}

TEST_F(KmsLifecycleTest, DisableIsReversibleButAClosedAccountCannotBeEnabled) {
  EXPECT_FALSE(lifecycle_->SetCustomerEnabled(portal_, "acme", false, "").ok());
  EXPECT_EQ(lifecycle_->SetCustomerEnabled(op_, "bob", false, "").status().message().rfind(
                "unknown_customer: ", 0),
            0u);
  ASSERT_OK(lifecycle_->SetCustomerEnabled(op_, "acme", false, "unpaid"));
  EXPECT_EQ(lifecycle_->Check("acme", "img-1", "h1").message().rfind("customer_disabled: ", 0), 0u);
  ASSERT_OK(lifecycle_->SetCustomerEnabled(op_, "acme", true, "paid"));
  ASSERT_OK(lifecycle_->Check("acme", "img-1", "h1"));

  auto [doc, sig] = Signed({"close_account", "acme", "", kNow, 60});
  auto closing = lifecycle_->CustomerRequest(portal_, "acme", doc, sig);
  ASSERT_OK(closing);
  EXPECT_EQ(closing->state, "closing");
  EXPECT_EQ(closing->due_unix, kNow + 60);
  EXPECT_EQ(lifecycle_->Check("acme", "img-1", "h1").message().rfind("account_closing: ", 0), 0u);
  auto enable = lifecycle_->SetCustomerEnabled(op_, "acme", true, "");
  EXPECT_EQ(enable.status().message().rfind("account_closing: ", 0), 0u) << enable.status().message();
}

TEST_F(KmsLifecycleTest, KeysAreDestroyedOnlyAfterTheGraceAndTheFirstDueTimeStands) {
  auto [doc, sig] = Signed({"close_account", "acme", "", kNow, 60});
  ASSERT_OK(lifecycle_->CustomerRequest(portal_, "acme", doc, sig));
  // A second request with a longer grace does not postpone it.
  now_ += 10;
  auto [doc2, sig2] = Signed({"close_account", "acme", "", now_, 3600});
  auto again = lifecycle_->CustomerRequest(portal_, "acme", doc2, sig2);
  ASSERT_OK(again);
  EXPECT_EQ(again->due_unix, kNow + 60);
  now_ = kNow + 59;
  ASSERT_OK(lifecycle_->DestroyDue(true));
  ASSERT_OK(store_->GetCustomerKey("k1"));
  EXPECT_TRUE(forgotten_.empty());
  now_ = kNow + 60;
  Status s = lifecycle_->Check("acme", "img-1", "h1");  // the sweep runs here
  EXPECT_EQ(s.message().rfind("key_destroyed: ", 0), 0u) << s.message();
  EXPECT_EQ(store_->GetCustomerKey("k1").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(forgotten_, std::vector<std::string>{"acme"});
  auto mark = store_->GetLifecycle("customer", "acme");
  ASSERT_OK(mark);
  EXPECT_EQ(mark->state, "destroyed");
  EXPECT_EQ(lifecycle_->SetCustomerEnabled(op_, "acme", true, "").status().message().rfind(
                "key_destroyed: ", 0),
            0u);
}

TEST_F(KmsLifecycleTest, ListIsOperatorOnlyAndChecksTheKind) {
  EXPECT_EQ(lifecycle_->List(portal_, "host").status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(lifecycle_->List(op_, "hosts").status().code(), StatusCode::kInvalidArgument);
  ASSERT_OK(lifecycle_->RevokeHost(op_, "h1", ""));
  auto hosts = lifecycle_->List(op_, "host");
  ASSERT_OK(hosts);
  ASSERT_EQ(hosts->size(), 1u);
  EXPECT_EQ((*hosts)[0].subject, "h1");
}

}  // namespace
}  // namespace vmseal::kms
