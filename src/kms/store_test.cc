// The same suite runs against SQLite (label unit) and a real PostgreSQL
// (label integration;pg): VMSEAL_STORE_BACKEND selects which at compile time.
#include "kms/store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "kms/audit.h"
#include "kms/internal/sql.h"
#include "testing/pg_harness.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

// GCC 12 warns (-Wrestrict, falsely) on "literal" + std::string temporaries.
std::string Cat(std::string a, int64_t n) {
  a.append(std::to_string(n));
  return a;
}

using nlohmann::json;
using testing::PgHarness;
using testing::TempDir;

PgHarness* SharedPg() {
  static PgHarness* pg = [] {
    auto started = PgHarness::Start();
    if (!started.ok()) {
      ADD_FAILURE() << started.status().ToString();
      return static_cast<PgHarness*>(nullptr);
    }
    return started->release();  // stopped by the environment below
  }();
  return pg;
}

class PgEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (std::string(VMSEAL_STORE_BACKEND) == "postgres") delete SharedPg();
  }
};
const auto* const kPgEnv = ::testing::AddGlobalTestEnvironment(new PgEnvironment);

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgres") {
      ASSERT_NE(SharedPg(), nullptr);
      static std::atomic<int> counter{0};
      auto url = SharedPg()->CreateDatabase(Cat("t", ++counter));
      ASSERT_OK(url);
      location_ = *url;
    } else {
      location_ = dir_.File("kms.db");
    }
    store_ = OpenOrDie();
  }

  std::unique_ptr<Store> OpenOrDie() {
    auto store = Store::Open(location_);
    EXPECT_OK(store);
    return store.ok() ? *std::move(store) : nullptr;
  }

  // Version `version` of the customer's key ((customer, version) is unique).
  static CustomerKeyRecord Key(const std::string& id, const std::string& customer, int64_t version = 1) {
    return {id, customer, "RSA-3072", "pub-" + id, "cert-" + id, "d3JhcHBlZA==", "file:kek1", 100, version};
  }
  static AuditEvent Event(const std::string& what, const std::string& subject) {
    return {what, subject, json{{"n", 1}}};
  }

  TempDir dir_;
  std::string location_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreTest, ReportsBackend) { EXPECT_EQ(store_->backend(), GetParam()); }

// Every release asks for the host's failed verdicts in a window: that
// must read an index of failed verdicts, not every verdict of the host.
TEST_P(StoreTest, FailedVerdictQueryUsesThePartialIndex) {
  for (int i = 0; i < 50; ++i) {
    ASSERT_OK(store_->PutVerdict({Cat("v", i), "h1", i % 10 != 0, i % 10 != 0 ? "ok" : "pcr_policy",
                                  1000 + i, json::object()},
                                 {Event("attestation.verdict", "host/h1")}));
  }
  auto failed = store_->ListFailedVerdicts("h1", 1010);
  ASSERT_OK(failed);
  ASSERT_EQ(failed->size(), 4u);  // v10, v20, v30, v40
  EXPECT_EQ((*failed)[0].verdict_id, "v10");

  const bool pg = GetParam() == "postgres";
  auto conn = pg ? internal::OpenPostgres(location_) : internal::OpenSqlite(location_);
  ASSERT_OK(conn);
  if (pg) {
    ASSERT_OK((*conn)->ExecScript("SET enable_seqscan = off"));
  }
  auto plan = (*conn)->Exec(std::string(pg ? "EXPLAIN " : "EXPLAIN QUERY PLAN ") +
                                "SELECT verdict_id FROM verdicts WHERE host_id = ? AND time_unix >= ? "
                                "AND trusted = 0 ORDER BY time_unix, verdict_id",
                            {std::string("h1"), int64_t{1010}});
  ASSERT_OK(plan);
  std::string text;
  for (const auto& row : plan->rows) {
    for (const auto& cell : row) text += cell.value_or("") + " ";
  }
  EXPECT_NE(text.find("verdicts_failed_by_host"), std::string::npos) << text;
}

TEST_P(StoreTest, CustomerKeyRoundTrip) {
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("customer_key.create", "acme")));
  auto got = store_->GetCustomerKey("k1");
  ASSERT_OK(got);
  EXPECT_EQ(got->customer_id, "acme");
  EXPECT_EQ(got->wrapped_private_key, "d3JhcHBlZA==");
  EXPECT_EQ(got->kek_id, "file:kek1");
  EXPECT_EQ(got->created_unix, 100);
}

TEST_P(StoreTest, DuplicateKeyIdIsAlreadyExistsAndNotAudited) {
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("customer_key.create", "acme")));
  EXPECT_STATUS(store_->PutCustomerKey(Key("k1", "acme"), Event("customer_key.create", "acme")),
                StatusCode::kAlreadyExists, "k1");
  auto records = store_->ReadAudit(0, 100);
  ASSERT_OK(records);
  EXPECT_EQ(records->size(), 1u);
}

TEST_P(StoreTest, UnknownKeyIsNotFound) {
  EXPECT_STATUS(store_->GetCustomerKey("nope"), StatusCode::kNotFound, "unknown key");
}

TEST_P(StoreTest, ListCustomerKeysOnlyThatCustomer) {
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("e", "acme")));
  ASSERT_OK(store_->PutCustomerKey(Key("k2", "other"), Event("e", "other")));
  ASSERT_OK(store_->PutCustomerKey(Key("k3", "acme", 2), Event("e", "acme")));
  auto keys = store_->ListCustomerKeys("acme");
  ASSERT_OK(keys);
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0].key_id, "k1");
  EXPECT_EQ((*keys)[1].key_id, "k3");
  EXPECT_EQ((*keys)[1].version, 2);
}

TEST_P(StoreTest, KeyVersionsAreUniquePerCustomerAndRetiredOnce) {
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("e", "acme")));
  ASSERT_OK(store_->PutCustomerKey(Key("k2", "other"), Event("e", "other")));
  // A second version 1 of acme's key (a race of two rotations) is refused.
  EXPECT_STATUS(store_->PutCustomerKey(Key("k3", "acme"), Event("e", "acme")), StatusCode::kAlreadyExists,
                "version 1");
  ASSERT_OK(store_->PutCustomerKey(Key("k3", "acme", 2), Event("e", "acme")));
  auto before = store_->ConfigVersion();
  ASSERT_OK(before);
  auto seq = store_->ReadAudit(0, 1000);
  ASSERT_OK(seq);
  ASSERT_OK(store_->RetireCustomerKey("acme", 1, 500, Event("customer_key.retire", "customer/acme")));
  auto k1 = store_->GetCustomerKey("k1");
  ASSERT_OK(k1);
  EXPECT_EQ(k1->retired_unix, 500);
  // The config version moves, so cached release reads see the retirement.
  auto after = store_->ConfigVersion();
  ASSERT_OK(after);
  EXPECT_GT(*after, *before);
  EXPECT_STATUS(store_->RetireCustomerKey("acme", 1, 600, Event("x", "customer/acme")),
                StatusCode::kFailedPrecondition, "key_version_retired");
  EXPECT_STATUS(store_->RetireCustomerKey("acme", 9, 600, Event("x", "customer/acme")),
                StatusCode::kNotFound, "no key version 9");
  // Only the one retirement was audited; other customers' keys unchanged.
  auto audit = store_->ReadAudit(0, 1000);
  ASSERT_OK(audit);
  EXPECT_EQ(audit->size(), seq->size() + 1);
  EXPECT_EQ(store_->GetCustomerKey("k1")->retired_unix, 500);
  EXPECT_EQ(store_->GetCustomerKey("k2")->retired_unix, 0);
  EXPECT_EQ(store_->GetCustomerKey("k3")->retired_unix, 0);
}

TEST_P(StoreTest, HostEnrollmentAndTags) {
  ASSERT_OK(store_->PutHost({"h1", "ek", "ak", false, {"region=eu"}, 5}, Event("host.enroll", "h1")));
  auto h = store_->GetHost("h1");
  ASSERT_OK(h);
  EXPECT_FALSE(h->enrolled);
  EXPECT_EQ(h->tags, std::vector<std::string>{"region=eu"});
  ASSERT_OK(store_->SetHostEnrolled("h1", Event("host.activate", "h1")));
  ASSERT_OK(store_->SetHostTags("h1", {"region=us", "tier=gold"}, Event("host.tags", "h1")));
  h = store_->GetHost("h1");
  ASSERT_OK(h);
  EXPECT_TRUE(h->enrolled);
  EXPECT_EQ(h->tags.size(), 2u);
}

TEST_P(StoreTest, EnrollingUnknownHostIsNotFound) {
  EXPECT_STATUS(store_->SetHostEnrolled("ghost", Event("e", "ghost")), StatusCode::kNotFound,
                "unknown host");
}

TEST_P(StoreTest, ReEnrollmentResetsEnrolledFlag) {
  ASSERT_OK(store_->PutHost({"h1", "ek", "ak", false, {}, 5}, Event("e", "h1")));
  ASSERT_OK(store_->SetHostEnrolled("h1", Event("e", "h1")));
  ASSERT_OK(store_->PutHost({"h1", "ek", "ak2", false, {}, 6}, Event("e", "h1")));
  auto h = store_->GetHost("h1");
  ASSERT_OK(h);
  EXPECT_FALSE(h->enrolled);
  EXPECT_EQ(h->ak_public, "ak2");
}

TEST_P(StoreTest, NonceConsumedOnce) {
  EXPECT_OK(store_->ConsumeNonce("n1", "h1", 1000));
  EXPECT_STATUS(store_->ConsumeNonce("n1", "h1", 1000), StatusCode::kFailedPrecondition,
                "already used");
  // The record is the nonce's, whichever host presents it again.
  EXPECT_STATUS(store_->ConsumeNonce("n1", "h2", 1000), StatusCode::kFailedPrecondition,
                "already used");
  EXPECT_OK(store_->ConsumeNonce("n2", "h1", 1000));
}

TEST_P(StoreTest, PurgeRemovesOnlyExpiredNonceRecords) {
  ASSERT_OK(store_->ConsumeNonce("old", "h1", 10));
  ASSERT_OK(store_->ConsumeNonce("new", "h1", 1000));
  auto purged = store_->PurgeNonces(500);
  ASSERT_OK(purged);
  EXPECT_EQ(*purged, 1);
  EXPECT_STATUS(store_->ConsumeNonce("new", "h1", 1000), StatusCode::kFailedPrecondition,
                "already used");
}

// Two processes' worth of stores race to create the same secret: both get
// the first one stored.
TEST_P(StoreTest, SecretIsStoredOnceAndSharedByAllConnections) {
  auto other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  auto first = store_->PutSecretIfAbsent("k", "value-a", Event("secret.create", "k"));
  ASSERT_OK(first);
  EXPECT_EQ(*first, "value-a");
  auto second = other->PutSecretIfAbsent("k", "value-b", Event("secret.create", "k"));
  ASSERT_OK(second);
  EXPECT_EQ(*second, "value-a");
  auto other_name = other->PutSecretIfAbsent("k2", "value-c", Event("secret.create", "k2"));
  ASSERT_OK(other_name);
  EXPECT_EQ(*other_name, "value-c");
  // Audited once per secret stored, not per call.
  auto audit = store_->ReadAudit(0, 100);
  ASSERT_OK(audit);
  EXPECT_EQ(audit->size(), 2u);
  EXPECT_OK(VerifyStoreAudit(*store_));
}

// Two independent connections (two KMS processes' worth) race for each of
// many nonces; every nonce is accepted exactly once.
TEST_P(StoreTest, ConcurrentConsumersAcceptNonceOnce) {
  auto other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  constexpr int kNonces = 50;
  std::atomic<int> accepted{0};
  std::atomic<int> errors{0};
  auto race = [&](Store* s) {
    for (int i = 0; i < kNonces; ++i) {
      Status st = s->ConsumeNonce(Cat("n", i), "h", 1000);
      if (st.ok()) {
        ++accepted;
      } else if (st.message().find("already used") == std::string::npos) {
        ++errors;
      }
    }
  };
  std::thread a(race, store_.get());
  std::thread b(race, other.get());
  a.join();
  b.join();
  EXPECT_EQ(accepted.load(), kNonces);
  EXPECT_EQ(errors.load(), 0);
}

// Many threads on ONE store (writes grouped into shared commits, each in
// its own savepoint): each nonce is consumed exactly once, a writer that
// loses the race leaves neither its verdict nor its audit records, and the
// audit chain stays linear.
TEST_P(StoreTest, ConcurrentWritersOnOneStoreCommitIndependently) {
  constexpr int kNonces = 40;
  constexpr int kThreads = 6;
  auto before = VerifyStoreAudit(*store_);
  ASSERT_OK(before);
  std::atomic<int> accepted{0};
  std::atomic<int> used{0};
  std::atomic<int> errors{0};
  auto writer = [&](int t) {
    for (int i = 0; i < kNonces; ++i) {
      const Store::NonceUse use{Cat("g", i), "h", 1000};
      Verdict v{Cat(Cat("v", t) + "-", i), "h", true, "ok", 100 + i, json{{"t", t}}};
      Status st = store_->PutVerdict(v, {Event("verdict", "h"), Event("grant", "h")}, &use);
      if (st.ok()) {
        ++accepted;
      } else if (st.message().find("already used") != std::string::npos) {
        ++used;
      } else {
        ++errors;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(writer, t);
  for (auto& th : threads) th.join();
  EXPECT_EQ(accepted.load(), kNonces);
  EXPECT_EQ(used.load(), kNonces * (kThreads - 1));
  EXPECT_EQ(errors.load(), 0);
  auto verdicts = store_->ListVerdicts("h", 0);
  ASSERT_OK(verdicts);
  EXPECT_EQ(verdicts->size(), static_cast<size_t>(kNonces));
  auto head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(head->count, before->count + 2 * kNonces);
  // A fresh connection (another process) sees the same committed state.
  auto other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  auto seen = other->ListVerdicts("h", 0);
  ASSERT_OK(seen);
  EXPECT_EQ(seen->size(), static_cast<size_t>(kNonces));
}

TEST_P(StoreTest, VerdictHistorySince) {
  ASSERT_OK(store_->PutVerdict({"v1", "h1", true, "ok", 100, json::object()}, Event("e", "h1")));
  ASSERT_OK(store_->PutVerdict({"v2", "h1", false, "pcr_mismatch", 200, json{{"pcr", 7}}},
                               Event("e", "h1")));
  ASSERT_OK(store_->PutVerdict({"v3", "h2", true, "ok", 300, json::object()}, Event("e", "h2")));
  auto v = store_->ListVerdicts("h1", 150);
  ASSERT_OK(v);
  ASSERT_EQ(v->size(), 1u);
  EXPECT_EQ((*v)[0].reason, "pcr_mismatch");
  EXPECT_FALSE((*v)[0].trusted);
  EXPECT_EQ((*v)[0].details["pcr"], 7);
}

TEST_P(StoreTest, FailedVerdictsLatestVerdictAndHostList) {
  ASSERT_OK(store_->PutVerdict({"v1", "h1", false, "bad_signature", 100, json::object()},
                               std::vector<AuditEvent>{Event("a", "h1"), Event("b", "h1")}));
  ASSERT_OK(store_->PutVerdict({"v2", "h1", true, "ok", 200, json::object()}, Event("e", "h1")));
  ASSERT_OK(store_->PutVerdict({"v3", "h1", false, "pcr_digest_mismatch", 300, json::object()},
                               Event("e", "h1")));
  auto failed = store_->ListFailedVerdicts("h1", 150);
  ASSERT_OK(failed);
  ASSERT_EQ(failed->size(), 1u);
  EXPECT_EQ((*failed)[0].verdict_id, "v3");
  auto latest = store_->LatestVerdict("h1");
  ASSERT_OK(latest);
  EXPECT_EQ(latest->verdict_id, "v3");
  EXPECT_STATUS(store_->LatestVerdict("h9"), StatusCode::kNotFound, "no verdict");
  auto audit = store_->ReadAudit(0, 100);
  ASSERT_OK(audit);
  EXPECT_EQ(audit->size(), 4u);  // two events for v1 in one transaction
  ASSERT_OK(store_->PutHost({"h2", "pem", "ak", true, {"region=eu"}, 5}, Event("e", "h2")));
  ASSERT_OK(store_->PutHost({"h1", "pem", "ak", false, {}, 5}, Event("e", "h1")));
  auto hosts = store_->ListHosts();
  ASSERT_OK(hosts);
  ASSERT_EQ(hosts->size(), 2u);
  EXPECT_EQ((*hosts)[0].host_id, "h1");
  EXPECT_EQ((*hosts)[1].tags, std::vector<std::string>{"region=eu"});
}

// Every change to what a release reads besides keys and history moves the
// config version, in its own transaction; a failed verdict (history) moves
// the history version instead; nothing else moves either. Seen through a
// second connection (another KMS process), also as ReadReleaseVersions
// reads them (one statement).
TEST_P(StoreTest, ConfigVersionMovesWithEveryChangeReleasesRead) {
  auto other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  auto versions = [&] {
    auto v = other->ReadReleaseVersions();
    EXPECT_OK(v);
    auto c = other->ConfigVersion();
    EXPECT_OK(c);
    if (v.ok() && c.ok()) {
      EXPECT_EQ(v->config, *c);
    }
    return v.ok() ? *v : Store::ReleaseVersions{-1, -1};
  };
  auto version = [&] { return versions().config; };
  int64_t last = version();
  int64_t last_history = versions().history;
  ASSERT_GE(last, 0);
  ASSERT_GE(last_history, 0);
  auto moved = [&](const char* what) {
    const int64_t now = version();
    EXPECT_GT(now, last) << what;
    last = now;
  };
  auto still = [&](const char* what) {
    const Store::ReleaseVersions now = versions();
    EXPECT_EQ(now.config, last) << what;
    EXPECT_EQ(now.history, last_history) << what;
  };

  ASSERT_OK(store_->PutHost({"h1", "ek", "ak", false, {}, 5}, Event("host.enroll", "h1")));
  moved("PutHost");
  ASSERT_OK(store_->SetHostEnrolled("h1", Event("host.activate", "h1")));
  moved("SetHostEnrolled");
  ASSERT_OK(store_->SetHostTags("h1", {"region=eu"}, Event("host.tags", "h1")));
  moved("SetHostTags");
  ASSERT_OK(store_->PutFlavor({"good", json{{"sha256", json::object()}}}, Event("flavor.put", "good")));
  moved("PutFlavor");
  ASSERT_OK(store_->PutPolicy({"acme", "", json::object()}, Event("policy.put", "acme")));
  moved("PutPolicy");
  const SigningKeyRecord signing{"acme", "sk-1", "pem", "cert", 5};
  ASSERT_OK(store_->PutSigningKey(signing, Event("signing_key.register", "acme")));
  moved("PutSigningKey");
  ASSERT_OK(store_->PutSigningKey(signing, Event("signing_key.register", "acme")));
  still("the same signing key again (a no-op)");
  ASSERT_OK(store_->PutVerdict({"v1", "h1", false, "bad_signature", 100, json::object()}, Event("v", "h1")));
  {
    const Store::ReleaseVersions now = versions();
    EXPECT_EQ(now.config, last) << "an untrusted verdict";
    EXPECT_EQ(now.history, last_history + 1) << "an untrusted verdict";
    last_history = now.history;
  }
  ASSERT_OK(store_->PutVerdict({"v2", "h1", true, "ok", 101, json::object()}, Event("v", "h1")));
  still("a trusted verdict");
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("key", "acme")));
  still("a customer key");
  ASSERT_OK(store_->AppendAudit(Event("release.deny", "h1")));
  still("an audit record");
  // A failed change moves nothing.
  EXPECT_STATUS(store_->SetHostTags("nope", {"a"}, Event("host.tags", "nope")), StatusCode::kNotFound, "nope");
  still("a failed change");
}

TEST_P(StoreTest, VerdictConsumesItsNonceAtomically) {
  const Store::NonceUse use{"n1", "h1", 1000};
  ASSERT_OK(store_->PutVerdict({"v1", "h1", true, "ok", 500, json::object()},
                               {Event("a", "h1")}, &use));
  EXPECT_STATUS(store_->ConsumeNonce("n1", "h1", 1000), StatusCode::kFailedPrecondition,
                "already used");
  // A second use writes nothing at all.
  EXPECT_STATUS(store_->PutVerdict({"v2", "h1", true, "ok", 501, json::object()},
                                   {Event("b", "h1")}, &use),
                StatusCode::kFailedPrecondition, "already used");
  auto v = store_->ListVerdicts("h1", 0);
  ASSERT_OK(v);
  EXPECT_EQ(v->size(), 1u);
  auto audit = store_->ReadAudit(0, 10);
  ASSERT_OK(audit);
  EXPECT_EQ(audit->size(), 1u);
}

// Grants are bound to the job's attempt (issue 17): a newer attempt's grant
// fences off the older one's host, and a used grant is never armed again.
TEST_P(StoreTest, AGrantForANewerAttemptFencesTheOlderOneOff) {
  ASSERT_OK(store_->PutGrant({"job-1", "img", "acme", "h1", 1000, 500, 0, 1}, Event("g1", "h1")));
  ASSERT_OK(store_->PutGrant({"job-1", "img", "acme", "h2", 1000, 510, 0, 2}, Event("g2", "h2")));
  // h1's release for attempt 1 finds no grant to use, and writes nothing.
  const Store::GrantUse stale{"job-1", "img", "acme", "h1", 600, 1};
  EXPECT_STATUS(store_->PutVerdict({"v1", "h1", true, "ok", 600, json::object()}, {Event("r1", "h1")},
                                   nullptr, &stale),
                StatusCode::kFailedPrecondition, "no_grant");
  // Nor with the new attempt's number from the wrong host.
  const Store::GrantUse wrong_host{"job-1", "img", "acme", "h1", 600, 2};
  EXPECT_STATUS(store_->PutVerdict({"v2", "h1", true, "ok", 600, json::object()}, {Event("r2", "h1")},
                                   nullptr, &wrong_host),
                StatusCode::kFailedPrecondition, "no_grant");
  // An older attempt's grant cannot come back.
  EXPECT_STATUS(store_->PutGrant({"job-1", "img", "acme", "h1", 1000, 520, 0, 1}, Event("g3", "h1")),
                StatusCode::kFailedPrecondition, "stale_attempt");
  auto g = store_->GetGrant("job-1");
  ASSERT_OK(g);
  EXPECT_EQ(g->host_id, "h2");
  EXPECT_EQ(g->attempt, 2);
  EXPECT_EQ(g->used_unix, 0);
  auto audit = store_->ReadAudit(0, 10);
  ASSERT_OK(audit);
  EXPECT_EQ(audit->size(), 2u);  // g1, g2: nothing of the refusals
  // h2's release of attempt 2 uses the grant.
  const Store::GrantUse current{"job-1", "img", "acme", "h2", 600, 2};
  EXPECT_OK(store_->PutVerdict({"v3", "h2", true, "ok", 600, json::object()}, {Event("r3", "h2")},
                               nullptr, &current));
}

TEST_P(StoreTest, AUsedGrantIsNeverArmedAgain) {
  ASSERT_OK(store_->PutGrant({"job-1", "img", "acme", "h1", 1000, 500, 0, 1}, Event("g1", "h1")));
  // The same attempt granted again while unused (a retried placement): kept.
  ASSERT_OK(store_->PutGrant({"job-1", "img", "acme", "h1", 1100, 505, 0, 1}, Event("g1b", "h1")));
  const Store::GrantUse use{"job-1", "img", "acme", "h1", 600, 1};
  ASSERT_OK(store_->PutVerdict({"v1", "h1", true, "ok", 600, json::object()}, {Event("r1", "h1")},
                               nullptr, &use));
  EXPECT_STATUS(store_->PutGrant({"job-1", "img", "acme", "h1", 2000, 700, 0, 1}, Event("g1c", "h1")),
                StatusCode::kFailedPrecondition, "grant_used");
  auto g = store_->GetGrant("job-1");
  ASSERT_OK(g);
  EXPECT_EQ(g->used_unix, 600);
  EXPECT_EQ(g->expires_unix, 1100);
  EXPECT_STATUS(store_->PutVerdict({"v2", "h1", true, "ok", 650, json::object()}, {Event("r2", "h1")},
                                   nullptr, &use),
                StatusCode::kFailedPrecondition, "no_grant");
}

TEST_P(StoreTest, FlavorsUpsertAndList) {
  ASSERT_OK(store_->PutFlavor({"base", json{{"sha256", {{"0", "aa"}}}}}, Event("e", "base")));
  ASSERT_OK(store_->PutFlavor({"base", json{{"sha256", {{"0", "bb"}}}}}, Event("e", "base")));
  auto f = store_->GetFlavor("base");
  ASSERT_OK(f);
  EXPECT_EQ(f->pcrs["sha256"]["0"], "bb");
  auto all = store_->ListFlavors();
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), 1u);
  EXPECT_STATUS(store_->GetFlavor("nope"), StatusCode::kNotFound, "unknown flavor");
}

TEST_P(StoreTest, ImagePolicyOverridesCustomerPolicy) {
  ASSERT_OK(store_->PutPolicy({"acme", "", json{{"max_age", 60}}}, Event("e", "acme")));
  ASSERT_OK(store_->PutPolicy({"acme", "img1", json{{"max_age", 5}}}, Event("e", "acme")));
  auto p = store_->GetPolicy("acme", "img1");
  ASSERT_OK(p);
  EXPECT_EQ(p->policy["max_age"], 5);
  p = store_->GetPolicy("acme", "img2");
  ASSERT_OK(p);
  EXPECT_EQ(p->policy["max_age"], 60);
}

TEST_P(StoreTest, PolicyDocumentsKeepOnlyNewerVersionsAndReturnTheNewest) {
  EXPECT_STATUS(store_->NewestPolicyDocument("acme", "img1"), StatusCode::kNotFound, "no signed policy");
  auto version = store_->ConfigVersion();
  ASSERT_OK(version);
  ASSERT_OK(store_->PutPolicyDocument({"acme", "img1", 2, "doc-v2", "c2lnMg==", "k", 10},
                                      Event("policy.signed", "acme")));
  auto after = store_->ConfigVersion();
  ASSERT_OK(after);
  EXPECT_GT(*after, *version);  // a release's policy cache sees the change
  // The same version again, and an older one: refused, nothing written.
  EXPECT_STATUS(store_->PutPolicyDocument({"acme", "img1", 2, "other", "eA==", "k", 11},
                                          Event("policy.signed", "acme")),
                StatusCode::kFailedPrecondition, "policy_stale");
  EXPECT_STATUS(store_->PutPolicyDocument({"acme", "img1", 1, "doc-v1", "eA==", "k", 12},
                                          Event("policy.signed", "acme")),
                StatusCode::kFailedPrecondition, "policy_stale");
  ASSERT_OK(store_->PutPolicyDocument({"acme", "img1", 7, "doc-v7", "c2lnNw==", "k", 13},
                                      Event("policy.signed", "acme")));
  // Versions are per (tenant, image).
  ASSERT_OK(store_->PutPolicyDocument({"acme", "img2", 1, "img2-v1", "eA==", "k", 14},
                                      Event("policy.signed", "acme")));
  ASSERT_OK(store_->PutPolicyDocument({"bob", "img1", 1, "bob-v1", "eA==", "k", 15},
                                      Event("policy.signed", "bob")));
  auto newest = store_->NewestPolicyDocument("acme", "img1");
  ASSERT_OK(newest);
  EXPECT_EQ(newest->version, 7);
  EXPECT_EQ(newest->document, "doc-v7");
  EXPECT_EQ(newest->signature, "c2lnNw==");
  EXPECT_EQ(newest->created_unix, 13);
  auto recs = store_->ReadAudit(0, 100);
  ASSERT_OK(recs);
  int signed_records = 0;
  for (const auto& r : *recs) signed_records += r.record.find("policy.signed") != std::string::npos;
  EXPECT_EQ(signed_records, 4);  // the refused writes left no record
}

TEST_P(StoreTest, MissingPolicyIsNotFound) {
  EXPECT_STATUS(store_->GetPolicy("acme", "img"), StatusCode::kNotFound, "no release policy");
}

TEST_P(StoreTest, ReopenKeepsDataAndSchema) {
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("e", "acme")));
  store_.reset();
  store_ = OpenOrDie();
  ASSERT_NE(store_, nullptr);
  EXPECT_OK(store_->GetCustomerKey("k1"));
}

// --- Audit chain --------------------------------------------------------

class AuditStoreTest : public StoreTest {
 protected:
  void SetUp() override {
    StoreTest::SetUp();
    for (int i = 1; i <= 4; ++i) {
      ASSERT_OK(store_->AppendAudit(Event("test.event", Cat("acme-", i))));
    }
  }
};

TEST_P(AuditStoreTest, IntactChainVerifies) {
  auto head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 4);
  EXPECT_EQ(head->hash.size(), 64u);
}

TEST_P(AuditStoreTest, ChangedRecordDetected) {
  ASSERT_OK(store_->ExecForTesting(
      "UPDATE audit_log SET record = replace(record, 'acme-2', 'evil-2') WHERE seq = 2"));
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss, "audit record 2: hash mismatch");
}

TEST_P(AuditStoreTest, RemovedRecordDetected) {
  ASSERT_OK(store_->ExecForTesting("DELETE FROM audit_log WHERE seq = 2"));
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss, "audit record 2: sequence gap");
}

TEST_P(AuditStoreTest, RenumberedRemovalDetected) {
  // Delete record 2 and renumber 3,4 down to hide the gap.
  ASSERT_OK(store_->ExecForTesting("DELETE FROM audit_log WHERE seq = 2"));
  ASSERT_OK(store_->ExecForTesting("UPDATE audit_log SET seq = 2 WHERE seq = 3"));
  ASSERT_OK(store_->ExecForTesting("UPDATE audit_log SET seq = 3 WHERE seq = 4"));
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss,
                "audit record 2: seq field does not match");
}

TEST_P(AuditStoreTest, ReorderedRecordsDetected) {
  ASSERT_OK(store_->ExecForTesting("UPDATE audit_log SET seq = 100 WHERE seq = 2"));
  ASSERT_OK(store_->ExecForTesting("UPDATE audit_log SET seq = 2 WHERE seq = 3"));
  ASSERT_OK(store_->ExecForTesting("UPDATE audit_log SET seq = 3 WHERE seq = 100"));
  EXPECT_STATUS(VerifyStoreAudit(*store_), StatusCode::kDataLoss, "audit record 2");
}

TEST_P(AuditStoreTest, ConcurrentAppendersKeepChainLinear) {
  auto other = OpenOrDie();
  ASSERT_NE(other, nullptr);
  auto append = [](Store* s, const char* who) {
    for (int i = 0; i < 25; ++i) ASSERT_OK(s->AppendAudit({"race", who, json::object()}));
  };
  std::thread a(append, store_.get(), "a");
  std::thread b(append, other.get(), "b");
  a.join();
  b.join();
  auto head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 54);
}

TEST_P(StoreTest, ImageKeyMovesOnlyFromItsKeyWithItsAuditRecord) {
  // A re-wrap to the newest key version (kms/key_rewrap.cc).
  ASSERT_OK(store_->PutImage({"acme", "img-1", "sha256:v1", 1}, {"image.register", "customer/acme",
                                                                 json{{"image_id", "img-1"}}}));
  const AuditEvent moved{"customer_key.rewrap", "customer/acme", json{{"image_id", "img-1"}}};
  // Another key than the image's, or an unknown image: refused, nothing written.
  EXPECT_STATUS(store_->MoveImageKey("acme", "img-1", "sha256:other", "sha256:v2", moved),
                StatusCode::kFailedPrecondition, "image_conflict");
  EXPECT_STATUS(store_->MoveImageKey("acme", "img-2", "sha256:v1", "sha256:v2", moved),
                StatusCode::kNotFound, "img-2");
  auto records = store_->ReadAudit(0, 100);
  ASSERT_OK(records);
  EXPECT_EQ(records->size(), 1u);
  ASSERT_OK(store_->MoveImageKey("acme", "img-1", "sha256:v1", "sha256:v2", moved));
  auto image = store_->GetImage("acme", "img-1");
  ASSERT_OK(image);
  EXPECT_EQ(image->key_id, "sha256:v2");
  // The old key's registration is now a conflict; the new key's is not; a
  // second re-wrap of an old copy to the same key is accepted.
  EXPECT_STATUS(store_->PutImage({"acme", "img-1", "sha256:v1", 1}, {"image.register", "customer/acme", json{}}),
                StatusCode::kFailedPrecondition, "image_conflict");
  ASSERT_OK(store_->PutImage({"acme", "img-1", "sha256:v2", 1}, {"image.register", "customer/acme", json{}}));
  ASSERT_OK(store_->MoveImageKey("acme", "img-1", "sha256:v1", "sha256:v2", moved));
  records = store_->ReadAudit(0, 100);
  ASSERT_OK(records);
  EXPECT_EQ(records->size(), 3u);
}

// The writer keeps the log's tail (last record, tree frontier) in memory
// between transactions. It must never append after a tail that is not the
// stored one: another process appended meanwhile, or its own records were
// rolled back. Each case would break the chain (a gap, a wrong prev_hash)
// or the tree (a frontier of other leaves), which VerifyStoreAudit finds.
TEST_P(AuditStoreTest, CachedTailIsNeverUsedAfterAnotherProcessAppendedOrARollback) {
  auto other = OpenOrDie();  // another KMS process on the same store
  ASSERT_NE(other, nullptr);
  ASSERT_OK(store_->AppendAudit(Event("a", "x")));  // store_ now holds the tail (5)
  ASSERT_OK(other->AppendAudit(Event("b", "x")));   // 6, 7 behind store_'s back
  ASSERT_OK(other->PutVerdict({"v1", "h1", true, "ok", 100, json::object()},
                              {Event("attestation.verdict", "host/h1")}));
  ASSERT_OK(store_->AppendAudit(Event("c", "x")));  // must be 8, after 7
  auto head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 8);

  // A transaction that wrote one record and failed on the next: its first
  // record is rolled back with it. A trigger installed through a connection
  // of its own (not through store_, which would drop its cached tail) makes
  // the insert of record 10 fail.
  const bool pg = GetParam() == "postgres";
  auto conn = pg ? internal::OpenPostgres(location_) : internal::OpenSqlite(location_);
  ASSERT_OK(conn);
  ASSERT_OK((*conn)->ExecScript(
      pg ? "CREATE FUNCTION fail_ten() RETURNS trigger AS $$ BEGIN IF NEW.seq = 10 THEN "
           "RAISE EXCEPTION 'record 10 refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; "
           "CREATE TRIGGER fail_ten BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION fail_ten();"
         : "CREATE TRIGGER fail_ten BEFORE INSERT ON audit_log WHEN NEW.seq = 10 "
           "BEGIN SELECT RAISE(ABORT, 'record 10 refused'); END;"));
  EXPECT_FALSE(store_->PutVerdict({"v2", "h1", true, "ok", 101, json::object()},
                                  {Event("first", "x"), Event("second", "x")})
                   .ok());
  auto seen = store_->ListVerdicts("h1", 0);
  ASSERT_OK(seen);
  EXPECT_EQ(seen->size(), 1u);  // v2 was rolled back
  ASSERT_OK((*conn)->ExecScript(pg ? "DROP TRIGGER fail_ten ON audit_log" : "DROP TRIGGER fail_ten"));
  // The next record is 9 again, after 8 (not 10 after the rolled-back 9).
  ASSERT_OK(store_->AppendAudit(Event("d", "x")));
  ASSERT_OK(other->AppendAudit(Event("e", "x")));
  ASSERT_OK(store_->AppendAudit(Event("f", "x")));
  head = VerifyStoreAudit(*store_);
  ASSERT_OK(head);
  EXPECT_EQ(head->count, 11);
  auto records = store_->ReadAudit(8, 10);
  ASSERT_OK(records);
  ASSERT_EQ(records->size(), 3u);
  EXPECT_NE((*records)[0].record.find("\"d\""), std::string::npos) << (*records)[0].record;
  // Both processes' view of the tree is the one the records make.
  auto mine = store_->AuditFrontier();
  auto theirs = other->AuditFrontier();
  ASSERT_OK(mine);
  ASSERT_OK(theirs);
  EXPECT_EQ(mine->size(), 11u);
  EXPECT_EQ(mine->hashes(), theirs->hashes());
}

TEST_P(StoreTest, AuditRecordsOfAnImageAreIndexedByTenantAndImage) {
  ASSERT_OK(store_->PutImage({"acme", "img-1", "sha256:ab", 1}, {"image.register", "customer/acme",
                                                                 json{{"image_id", "img-1"}}}));
  ASSERT_OK(store_->AppendAudit({"release.deny", "host/h1",
                                 json{{"image_id", "img-1"}, {"tenant", "acme"}, {"job_id", "j1"}}}));
  ASSERT_OK(store_->AppendAudit({"release.deny", "host/h1",
                                 json{{"image_id", "img-1"}, {"tenant", "bob"}}}));
  ASSERT_OK(store_->AppendAudit({"policy.put", "customer/acme",
                                 json{{"image_id", "img-1"}, {"customer_id", "acme"}}}));
  ASSERT_OK(store_->AppendAudit({"unrelated", "kms", json{{"tenant", "acme"}}}));
  auto all = store_->AuditSeqsForImage("acme", "img-1", 0, 10);
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_LT((*all)[0], (*all)[1]);
  EXPECT_LT((*all)[1], (*all)[2]);
  auto page = store_->AuditSeqsForImage("acme", "img-1", (*all)[0], 1);
  ASSERT_OK(page);
  EXPECT_EQ(*page, std::vector<int64_t>{(*all)[1]});
  auto bobs = store_->AuditSeqsForImage("bob", "img-1", 0, 10);
  ASSERT_OK(bobs);
  EXPECT_EQ(bobs->size(), 1u);
  auto owners = store_->ImageTenants("img-1");
  ASSERT_OK(owners);
  EXPECT_EQ(*owners, std::vector<std::string>{"acme"});
  auto none = store_->ImageTenants("img-2");
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
}

// Lifecycle marks (kms/lifecycle.h, issue 19).
TEST_P(StoreTest, LifecycleMarkIsReplacedPerKindAndSubjectWithItsAudit) {
  auto none = store_->GetLifecycle("host", "h1");
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  auto before = store_->ReadAudit(0, 100);
  ASSERT_OK(before);
  ASSERT_OK(store_->PutLifecycle({"customer", "acme", "disabled", "unpaid", "operator", 10, 0},
                                 Event("customer.disable", "customer/acme")));
  ASSERT_OK(store_->PutLifecycle({"customer", "acme", "enabled", "paid", "operator", 20, 0},
                                 Event("customer.enable", "customer/acme")));
  // Same subject under another kind is another mark.
  ASSERT_OK(store_->PutLifecycle({"host", "acme", "revoked", "stolen", "operator", 30, 0},
                                 Event("host.revoke", "host/acme")));
  auto mark = store_->GetLifecycle("customer", "acme");
  ASSERT_OK(mark);
  EXPECT_EQ(mark->state, "enabled");
  EXPECT_EQ(mark->reason, "paid");
  EXPECT_EQ(mark->since_unix, 20);
  auto host = store_->GetLifecycle("host", "acme");
  ASSERT_OK(host);
  EXPECT_EQ(host->state, "revoked");
  EXPECT_EQ(host->by, "operator");
  auto after = store_->ReadAudit(0, 100);
  ASSERT_OK(after);
  ASSERT_EQ(after->size(), before->size() + 3);
  EXPECT_NE(after->back().record.find("host.revoke"), std::string::npos);
  ASSERT_OK(VerifyStoreAudit(*store_));
}

TEST_P(StoreTest, ListLifecycleFiltersByKindAndStateInSubjectOrder) {
  ASSERT_OK(store_->PutLifecycle({"image", "acme/img-2", "revoked", "", "customer/acme", 1, 0},
                                 Event("image.revoke", "customer/acme")));
  ASSERT_OK(store_->PutLifecycle({"image", "acme/img-1", "revoked", "", "customer/acme", 2, 0},
                                 Event("image.revoke", "customer/acme")));
  ASSERT_OK(store_->PutLifecycle({"customer", "bob", "closing", "", "customer/bob", 3, 99},
                                 Event("customer.close", "customer/bob")));
  ASSERT_OK(store_->PutLifecycle({"customer", "acme", "disabled", "", "operator", 4, 0},
                                 Event("customer.disable", "customer/acme")));
  auto images = store_->ListLifecycle("image", "");
  ASSERT_OK(images);
  ASSERT_EQ(images->size(), 2u);
  EXPECT_EQ((*images)[0].subject, "acme/img-1");
  EXPECT_EQ((*images)[1].subject, "acme/img-2");
  auto closing = store_->ListLifecycle("customer", "closing");
  ASSERT_OK(closing);
  ASSERT_EQ(closing->size(), 1u);
  EXPECT_EQ((*closing)[0].subject, "bob");
  EXPECT_EQ((*closing)[0].due_unix, 99);
  auto hosts = store_->ListLifecycle("host", "");
  ASSERT_OK(hosts);
  EXPECT_TRUE(hosts->empty());
}

TEST_P(StoreTest, DestroyCustomerKeysDeletesOnlyThatCustomersKeysWithMarkAndAudit) {
  ASSERT_OK(store_->PutCustomerKey(Key("k1", "acme"), Event("customer_key.create", "customer/acme")));
  ASSERT_OK(store_->PutCustomerKey(Key("k2", "acme", 2), Event("customer_key.create", "customer/acme")));
  ASSERT_OK(store_->PutCustomerKey(Key("k3", "bob"), Event("customer_key.create", "customer/bob")));
  auto n = store_->DestroyCustomerKeys("acme", {"customer", "acme", "destroyed", "", "kms", 50, 0},
                                       Event("customer.keys_destroy", "customer/acme"));
  ASSERT_OK(n);
  EXPECT_EQ(*n, 2);
  EXPECT_EQ(store_->GetCustomerKey("k1").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store_->GetCustomerKey("k2").status().code(), StatusCode::kNotFound);
  ASSERT_OK(store_->GetCustomerKey("k3"));
  auto acme = store_->ListCustomerKeys("acme");
  ASSERT_OK(acme);
  EXPECT_TRUE(acme->empty());
  auto mark = store_->GetLifecycle("customer", "acme");
  ASSERT_OK(mark);
  EXPECT_EQ(mark->state, "destroyed");
  auto audit = store_->ReadAudit(0, 100);
  ASSERT_OK(audit);
  EXPECT_NE(audit->back().record.find("customer.keys_destroy"), std::string::npos);
  // Again: nothing left to delete, still one transaction that succeeds.
  auto again = store_->DestroyCustomerKeys("acme", {"customer", "acme", "destroyed", "", "kms", 60, 0},
                                           Event("customer.keys_destroy", "customer/acme"));
  ASSERT_OK(again);
  EXPECT_EQ(*again, 0);
  // Survives a reopen.
  store_.reset();
  store_ = OpenOrDie();
  ASSERT_NE(store_, nullptr);
  auto reopened = store_->GetLifecycle("customer", "acme");
  ASSERT_OK(reopened);
  EXPECT_EQ(reopened->since_unix, 60);
}

INSTANTIATE_TEST_SUITE_P(Backend, StoreTest, ::testing::Values(std::string(VMSEAL_STORE_BACKEND)));
INSTANTIATE_TEST_SUITE_P(Backend, AuditStoreTest,
                         ::testing::Values(std::string(VMSEAL_STORE_BACKEND)));

}  // namespace
}  // namespace vmseal::kms
