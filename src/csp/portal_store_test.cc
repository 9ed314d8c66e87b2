// The portal's job state on each store backend (issue 17), with real
// databases: SQLite files and a PostgreSQL server started by the test.
//  - Two replicas on one store cannot both take a host's last slot: the
//    placement's write is a compare-and-set on the host's slots.
//  - A store write that fails for another reason than a conflict (the
//    kernel refusing the SQLite file's writes, PostgreSQL stopped) fails the
//    call and leaves nothing changed in memory.
#include <signal.h>
#include <sys/resource.h>

#include <chrono>
#include <thread>

#include <gmock/gmock.h>

#include "crypto/primitives.h"
#include "csp/internal/test_doubles.h"
#include "csp/jobs.h"
#include "csp/lifecycle.h"
#include "csp/pg_db.h"
#include "csp/sqlite_db.h"
#include "store/fs_store.h"
#include "testing/pg_harness.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::testing::HasSubstr;
using ::vmseal::csp::testing::FakeKmsClient;
using ::vmseal::csp::testing::FakeVerifier;
using ::vmseal::csp::testing::kSealedMagic;
using ::vmseal::testing::TempDir;

// One portal replica: its own store connection, host registry, scheduler
// and job manager, as `vmseal csp serve` builds them.
struct Replica {
  std::unique_ptr<PortalStore> db;
  std::unique_ptr<HostRegistry> hosts;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<JobManager> jobs;
};

class PortalStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "postgres") {
      auto pg = vmseal::testing::PgHarness::Start();
      ASSERT_OK(pg);
      pg_ = std::move(pg).value();
      auto url = pg_->CreateDatabase("portal");
      ASSERT_OK(url);
      url_ = *url;
    }
    auto st = store::FsObjectStore::Create({dir_.File("objects"), nullptr});
    ASSERT_OK(st);
    objects_ = std::move(st).value();
    auto up = store::UploadSessions::Create({dir_.File("staging")}, objects_.get());
    ASSERT_OK(up);
    uploads_ = std::move(up).value();
    auto db = Open();
    ASSERT_OK(db);
    db_ = std::move(db).value();
    auto svc = ImageService::Create({}, db_.get(), objects_.get(), uploads_.get(), &verifier_, &clock_);
    ASSERT_OK(svc);
    images_ = std::move(svc).value();
    Accounts::Options ao;
    ao.argon2_t_cost = 1;
    ao.argon2_m_cost_kib = 64;
    auto acc = Accounts::Create(ao, db_.get(), &clock_, &kms_);
    ASSERT_OK(acc);
    auto r = (*acc)->Register({});
    ASSERT_OK(r);
    auto login = (*acc)->Login({r->login_id, r->password.Clone()});
    ASSERT_OK(login);
    alice_ = *(*acc)->Authenticate(login->token);
    const std::string package = std::string(kSealedMagic) + "disk";
    store::StringReader reader(package);
    CommitUploadRequest req;
    req.name = "web";
    auto img = images_->Upload(alice_, req, reader);
    ASSERT_OK(img);
    image_id_ = img->image_id;
  }

  StatusOr<std::unique_ptr<PortalStore>> Open() {
    return OpenPortalStore(url_, dir_.File("portal.db"));
  }

  void StartReplica(Replica& r) {
    auto db = Open();
    ASSERT_OK(db);
    r.db = std::move(db).value();
    r.hosts = std::make_unique<HostRegistry>(HostRegistry::Options{300}, &clock_);
    ASSERT_OK(r.hosts->AttachStore(r.db.get()));
    r.scheduler = std::make_unique<Scheduler>(r.hosts.get(), &kms_, &clock_);
    JobManager::Options o;
    o.lease_seconds = 10;
    r.jobs = std::make_unique<JobManager>(o, images_.get(), r.hosts.get(), r.scheduler.get(), &clock_);
    ASSERT_OK(r.jobs->AttachStore(r.db.get()));
  }

  static void WaitForGrants(FakeKmsClient& kms, int n) {
    for (int i = 0; i < 1000 && kms.grants_waiting() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  TempDir dir_;
  std::unique_ptr<vmseal::testing::PgHarness> pg_;
  std::string url_;  // "" = SQLite in dir_
  FakeClock clock_;
  FakeVerifier verifier_;
  FakeKmsClient kms_;
  std::unique_ptr<store::FsObjectStore> objects_;
  std::unique_ptr<store::UploadSessions> uploads_;
  std::unique_ptr<PortalStore> db_;
  std::unique_ptr<ImageService> images_;
  Principal alice_;
  std::string image_id_;
};

// Replica A and replica B each place a different queued job on h1, which
// has one slot; both have asked the KMS (each saw the slot free) before
// either commits. One placement commits, the other job stays queued.
TEST_P(PortalStoreTest, TwoReplicasCannotBothTakeAHostsLastSlot) {
  Replica a, b;
  StartReplica(a);
  StartReplica(b);
  auto j1 = a.jobs->Launch(alice_, {image_id_});
  auto j2 = b.jobs->Launch(alice_, {image_id_});
  ASSERT_OK(j1);
  ASSERT_OK(j2);
  ASSERT_EQ(j1->state, JobState::kQueued);
  ASSERT_OK(a.hosts->Register({"h1", 1, {}}));
  kms_.SetEligibility("h1", true, "ok");
  ASSERT_OK(b.hosts->Get("h1"));

  kms_.HoldGrants(true);
  std::thread ta([&] { a.jobs->Tick(); });
  WaitForGrants(kms_, 1);
  ASSERT_EQ(kms_.grants_waiting(), 1);
  std::thread tb([&] { b.jobs->Tick(); });  // A's job is claimed: B asks for the other
  WaitForGrants(kms_, 2);
  ASSERT_EQ(kms_.grants_waiting(), 2) << "both replicas must see the slot free for this race";
  kms_.HoldGrants(false);
  ta.join();
  tb.join();
  a.jobs->Tick();
  b.jobs->Tick();

  for (Replica* r : {&a, &b}) {
    int placed = 0, queued = 0;
    for (const std::string& id : {j1->job_id, j2->job_id}) {
      auto j = r->jobs->GetJob(alice_, id);
      ASSERT_OK(j);
      if (j->state == JobState::kPlaced && j->host_id == "h1") ++placed;
      if (j->state == JobState::kQueued && j->host_id.empty()) ++queued;
    }
    EXPECT_EQ(placed, 1);
    EXPECT_EQ(queued, 1);
  }
  auto rows = db_->LoadJobsSince(0);
  ASSERT_OK(rows);
  int on_h1 = 0;
  for (const StoredJob& row : *rows) on_h1 += row.host_id == "h1" ? 1 : 0;
  EXPECT_EQ(on_h1, 1);
  EXPECT_EQ(a.jobs->PendingJobs("h1").size() + 0u, 1u);
}

// The compare-and-set itself: a placement's write over a full host is
// refused, whatever the writer believed.
TEST_P(PortalStoreTest, APlacementWriteOverAFullHostIsRefused) {
  ASSERT_OK(db_->PutJob({"job-1", "c", "running", "h1", 1, "{}", 0}));
  StoredJob second{"job-2", "c", "placed", "h1", 1, "{}", 0};
  second.slot_capacity = 1;
  auto refused = db_->PutJob(second);
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(refused.status().message(), HasSubstr("no_slot"));
  // Ended jobs and other hosts' jobs hold no slot of h1.
  ASSERT_OK(db_->PutJob({"job-1", "c", "stopped", "", 2, "{}", 1}));
  ASSERT_OK(db_->PutJob({"job-3", "c", "running", "h2", 1, "{}", 0}));
  EXPECT_OK(db_->PutJob(second));
  auto rows = db_->LoadJobsSince(0);
  ASSERT_OK(rows);
  EXPECT_EQ(rows->size(), 3u);
}

// Makes the store's writes fail for real until destroyed: the SQLite
// file's writes are refused by the kernel (a file size limit below every
// write offset: EFBIG, as a full disk refuses them), or the PostgreSQL
// server is stopped.
class StoreFault {
 public:
  explicit StoreFault(vmseal::testing::PgHarness* pg, std::unique_ptr<vmseal::testing::PgHarness>* owner)
      : owner_(owner) {
    if (pg != nullptr) {
      owner_->reset();  // stopped by pid; every connection is gone
      return;
    }
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &saved_);
    rlimit limit = saved_;
    limit.rlim_cur = 1;
    setrlimit(RLIMIT_FSIZE, &limit);
    limited_ = true;
  }
  ~StoreFault() {
    if (limited_) setrlimit(RLIMIT_FSIZE, &saved_);
  }

 private:
  std::unique_ptr<vmseal::testing::PgHarness>* owner_;
  rlimit saved_{};
  bool limited_ = false;
};

TEST_P(PortalStoreTest, AStoreWriteErrorFailsTheCallAndChangesNothingInMemory) {
  Replica a;
  StartReplica(a);
  ASSERT_OK(a.hosts->Register({"h1", 2, {}}));
  kms_.SetEligibility("h1", true, "ok");
  auto job = a.jobs->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  ASSERT_OK(a.jobs->ReportProgress("h1", {job->job_id, JobState::kFetching}));
  const size_t jobs_before = a.jobs->ListAllJobs().size();
  {
    StoreFault fault(pg_.get(), &pg_);
    auto progress = a.jobs->ReportProgress("h1", {job->job_id, JobState::kAttesting});
    EXPECT_EQ(progress.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(progress.status().message(), HasSubstr("store_unavailable"));
    auto stop = a.jobs->StopVm(alice_, job->job_id);
    EXPECT_EQ(stop.status().code(), StatusCode::kUnavailable);
    auto launch = a.jobs->Launch(alice_, {image_id_});
    EXPECT_EQ(launch.status().code(), StatusCode::kUnavailable);
    auto refusal = a.jobs->ReportRefusal("h1", {job->job_id, RefusalKind::kLaunchFailed, "x", ""});
    EXPECT_EQ(refusal.status().code(), StatusCode::kUnavailable);
    // Memory is what the store held before the fault.
    auto now = a.jobs->GetAnyJob(job->job_id);
    ASSERT_OK(now);
    EXPECT_EQ(now->state, JobState::kFetching);
    EXPECT_EQ(now->wanted, VmWanted::kRunning);
    EXPECT_EQ(now->host_id, "h1");
    EXPECT_EQ(now->attempts.size(), 1u);
    EXPECT_TRUE(now->attempts[0].refusal.empty());
    EXPECT_EQ(a.jobs->ListAllJobs().size(), jobs_before);
    EXPECT_EQ(a.jobs->PendingJobs("h1").size(), 0u);  // fetching: not pending again
  }
  if (GetParam() == "sqlite") {
    // The fault is gone: the same report goes through.
    auto progress = a.jobs->ReportProgress("h1", {job->job_id, JobState::kAttesting});
    ASSERT_OK(progress);
    EXPECT_EQ(progress->state, JobState::kAttesting);
    Replica again;
    StartReplica(again);
    auto stored = again.jobs->GetAnyJob(job->job_id);
    ASSERT_OK(stored);
    EXPECT_EQ(stored->state, JobState::kAttesting);
    EXPECT_EQ(again.jobs->ListAllJobs().size(), jobs_before);
  }
}

// A lease renewal whose write fails is not dropped: it is tried again (the
// next poll or Tick), logged, counted, and the host's poll answers
// UNAVAILABLE store_unavailable naming the job, instead of a poll that looks
// fine while the store holds the old lease. Nothing in memory runs ahead of
// the store: the lease stays what the store holds.
TEST_P(PortalStoreTest, AFailedLeaseRenewalIsCountedAndTheHostsPollFails) {
  Replica a, b;
  StartReplica(a);
  StartReplica(b);
  ASSERT_OK(a.hosts->Register({"h1", 2, {}}));
  kms_.SetEligibility("h1", true, "ok");
  auto job = a.jobs->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  ASSERT_OK(a.jobs->ReportProgress("h1", {job->job_id, JobState::kFetching}));
  const int64_t lease_before = a.jobs->GetAnyJob(job->job_id)->lease_expires_unix;
  ASSERT_EQ(lease_before, clock_.NowUnixSeconds() + 10);
  auto seen_by_b = b.jobs->GetAnyJob(job->job_id);  // B has read the job
  ASSERT_OK(seen_by_b);
  ASSERT_EQ(seen_by_b->lease_expires_unix, lease_before);
  // Past half the lease: the next poll or heartbeat renews it.
  clock_.AdvanceSeconds(6);
  ASSERT_OK(a.hosts->Heartbeat("h1"));
  EXPECT_EQ(a.jobs->LeaseRenewalFailures(), 0u);
  {
    StoreFault fault(pg_.get(), &pg_);
    a.jobs->Tick();  // the heartbeat's renewal: not written
    EXPECT_EQ(a.jobs->LeaseRenewalFailures(), 1u);
    auto poll = a.jobs->PollJobs("h1");
    EXPECT_EQ(poll.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(poll.status().message(), HasSubstr("store_unavailable"));
    EXPECT_THAT(poll.status().message(), HasSubstr(job->job_id));
    EXPECT_THAT(poll.status().message(), HasSubstr("not renewed"));
    EXPECT_EQ(a.jobs->LeaseRenewalFailures(), 2u);
    // The lease is what the store holds, on this replica and the other.
    auto on_a = a.jobs->GetAnyJob(job->job_id);
    ASSERT_OK(on_a);
    EXPECT_EQ(on_a->lease_expires_unix, lease_before);
    auto on_b = b.jobs->GetAnyJob(job->job_id);
    ASSERT_OK(on_b);
    EXPECT_EQ(on_b->lease_expires_unix, lease_before);
    // The caller's other calls are not poisoned by the renewal's failure.
    EXPECT_OK(a.jobs->GetJob(alice_, job->job_id));
  }
  if (GetParam() == "sqlite") {
    // The store is back: the next poll renews, and the other replica sees it.
    auto poll = a.jobs->PollJobs("h1");
    ASSERT_OK(poll);
    EXPECT_TRUE(poll->empty());  // fetching: not pending again
    EXPECT_EQ(a.jobs->GetAnyJob(job->job_id)->lease_expires_unix, clock_.NowUnixSeconds() + 10);
    EXPECT_EQ(b.jobs->GetAnyJob(job->job_id)->lease_expires_unix, clock_.NowUnixSeconds() + 10);
    EXPECT_EQ(a.jobs->LeaseRenewalFailures(), 2u);
  }
}

// The fake KMS, plus what these tests need of it: the customer id of the
// last key it made, and close_account requests accepted as signed.
class RelayKms final : public KmsClient {
 public:
  explicit RelayKms(FakeKmsClient* inner) : inner_(inner) {}
  StatusOr<CustomerKey> CreateCustomerKey(const std::string& customer_id,
                                          const std::string& algorithm) override {
    last_customer_id_ = customer_id;
    return inner_->CreateCustomerKey(customer_id, algorithm);
  }
  StatusOr<std::vector<HostEligibility>> CheckPlacement(
      const std::string& customer_id, const std::string& image_id,
      const std::vector<std::string>& host_ids) override {
    return inner_->CheckPlacement(customer_id, image_id, host_ids);
  }
  Status RegisterImage(const std::string& tenant, const std::string& image_id,
                       const std::string& key_id,
                       const ovf::SignedPackageTexts& signed_texts) override {
    return inner_->RegisterImage(tenant, image_id, key_id, signed_texts);
  }
  Status CreateGrant(const LaunchGrant& grant) override { return inner_->CreateGrant(grant); }
  StatusOr<nlohmann::json> LifecycleRequest(const std::string& tenant, const std::string&,
                                            const crypto::Bytes&) override {
    ++lifecycle_requests_;
    return nlohmann::json{{"kind", "customer"}, {"subject", tenant}};
  }
  std::string CaCertificatePem() const override { return inner_->CaCertificatePem(); }
  const std::string& last_customer_id() const { return last_customer_id_; }
  int lifecycle_requests() const { return lifecycle_requests_; }

 private:
  FakeKmsClient* const inner_;
  std::string last_customer_id_;
  int lifecycle_requests_ = 0;
};

// Account writes (registration, login sessions, logout) while the store
// refuses writes: each answers UNAVAILABLE "store_unavailable" (503), hands
// out nothing (no login id, password or token in the answer), stores
// nothing, and goes through once the store is back. (The portal has no
// password change; close_account is the next test.)
TEST_P(PortalStoreTest, AccountWritesUnderAStoreFaultAnswerStoreUnavailableAndChangeNothing) {
  RelayKms kms(&kms_);
  Accounts::Options ao;
  ao.argon2_t_cost = 1;
  ao.argon2_m_cost_kib = 64;
  auto acc = Accounts::Create(ao, db_.get(), &clock_, &kms);
  ASSERT_OK(acc);
  Accounts& accounts = **acc;
  auto bob = accounts.Register({});
  ASSERT_OK(bob);
  const std::string password(crypto::AsStringView(bob->password.UnsafeSpan()));
  auto session = accounts.Login({bob->login_id, bob->password.Clone()});
  ASSERT_OK(session);
  const std::string token(crypto::AsStringView(session->token.UnsafeSpan()));
  std::string lost_customer;
  {
    StoreFault fault(pg_.get(), &pg_);
    auto reg = accounts.Register({});
    EXPECT_EQ(reg.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(reg.status().message(), HasSubstr("store_unavailable: the account was not stored"));
    lost_customer = kms.last_customer_id();
    ASSERT_NE(lost_customer, bob->customer_id);
    EXPECT_THAT(reg.status().message(), ::testing::Not(HasSubstr(lost_customer)));
    auto login = accounts.Login({bob->login_id, bob->password.Clone()});
    EXPECT_EQ(login.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(login.status().message(), HasSubstr("store_unavailable"));
    EXPECT_THAT(login.status().message(), ::testing::Not(HasSubstr(password)));
    EXPECT_THAT(login.status().message(), ::testing::Not(HasSubstr(bob->login_id)));
    auto logout = accounts.Logout(session->token);
    EXPECT_EQ(logout.code(), StatusCode::kUnavailable);
    EXPECT_THAT(logout.message(), HasSubstr("store_unavailable: the session was not ended"));
    EXPECT_THAT(logout.message(), ::testing::Not(HasSubstr(token)));
  }
  if (GetParam() != "sqlite") return;  // the PostgreSQL server is gone
  // Nothing of the failed calls was stored: no account for the lost
  // registration, no session of the failed login, the session the failed
  // logout named still live.
  EXPECT_EQ(db_->FindCustomerById(lost_customer).status().code(), StatusCode::kNotFound);
  auto who = accounts.Authenticate(session->token);
  ASSERT_OK(who);
  EXPECT_EQ(who->customer_id, bob->customer_id);
  // Every call goes through once the store is back.
  auto reg = accounts.Register({});
  ASSERT_OK(reg);
  EXPECT_OK(db_->FindCustomerById(reg->customer_id));
  auto again = accounts.Login({bob->login_id, bob->password.Clone()});
  ASSERT_OK(again);
  ASSERT_OK(accounts.Logout(session->token));
  EXPECT_EQ(accounts.Authenticate(session->token).status().code(), StatusCode::kUnauthenticated);
  EXPECT_OK(accounts.Authenticate(again->token));
  // Sessions: alice's (SetUp), bob's second. Bob's first ended; the login
  // under the fault left none.
  auto sessions = db_->DeleteExpiredSessions(clock_.NowUnixSeconds() + 365 * 86400);
  ASSERT_OK(sessions);
  EXPECT_EQ(*sessions, 2);
}

// Closing an account while the store refuses writes: the KMS has the
// account marked closed, but the portal's job writes fail, so the call
// answers UNAVAILABLE store_unavailable with the jobs as they were; the
// same request sent again once the store is back deletes them.
TEST_P(PortalStoreTest, ACloseAccountWhoseJobWritesFailAnswersStoreUnavailableAndCanBeRetried) {
  Replica a;
  StartReplica(a);
  ASSERT_OK(a.hosts->Register({"h1", 2, {}}));
  kms_.SetEligibility("h1", true, "ok");
  auto job = a.jobs->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  RelayKms kms(&kms_);
  const std::string document = crypto::Base64Encode(crypto::AsBytes(std::string_view("{}")));
  const std::string signature = crypto::Base64Encode(crypto::AsBytes(std::string_view("sig")));
  {
    StoreFault fault(pg_.get(), &pg_);
    auto closed = CloseAccount(&kms, a.jobs.get(), alice_, document, signature);
    EXPECT_EQ(closed.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(closed.status().message(), HasSubstr("store_unavailable"));
    EXPECT_EQ(kms.lifecycle_requests(), 1);
    auto now = a.jobs->GetAnyJob(job->job_id);
    ASSERT_OK(now);
    EXPECT_EQ(now->state, JobState::kPlaced);
    EXPECT_EQ(now->wanted, VmWanted::kRunning);
  }
  if (GetParam() != "sqlite") return;
  auto closed = CloseAccount(&kms, a.jobs.get(), alice_, document, signature);
  ASSERT_OK(closed);
  EXPECT_THAT(closed->stopped, ::testing::ElementsAre(job->job_id));
  Replica again;
  StartReplica(again);
  auto stored = again.jobs->GetAnyJob(job->job_id);
  ASSERT_OK(stored);
  EXPECT_EQ(stored->wanted, VmWanted::kDeleted);
}

// The commit of an upload whose writes fail (the object store's meta/ write
// refused by the kernel for SQLite's fault, the database gone for
// PostgreSQL's) fails with the error, publishes no object and lists no
// image; once the fault is gone the same commit goes through, once.
TEST_P(PortalStoreTest, AnUploadCommitWhoseWritesFailPublishesNothingAndCanBeRetried) {
  auto begun = images_->BeginUpload(alice_, {});
  ASSERT_OK(begun);
  const std::string package = std::string(kSealedMagic) + "second disk";
  store::StringReader reader(package);
  ASSERT_OK(images_->AppendUpload(alice_, begun->upload_id, 0, reader));
  auto objects_before = objects_->List("images/");
  ASSERT_OK(objects_before);
  CommitUploadRequest req;
  req.upload_id = begun->upload_id;
  req.name = "second";
  req.sha256_hex = crypto::HexEncode(crypto::Sha256(package));
  {
    StoreFault fault(pg_.get(), &pg_);
    auto committed = images_->CommitUpload(alice_, req);
    EXPECT_FALSE(committed.ok());
    EXPECT_THAT(committed.status().message(), ::testing::Not(HasSubstr(package)));
    auto objects = objects_->List("images/");
    ASSERT_OK(objects);
    EXPECT_EQ(objects->size(), objects_before->size());
  }
  if (GetParam() == "sqlite") {
    auto listed = images_->ListImages(alice_);
    ASSERT_OK(listed);
    EXPECT_EQ(listed->size(), 1u);
    auto committed = images_->CommitUpload(alice_, req);
    ASSERT_OK(committed);
    EXPECT_EQ(committed->sha256_hex, req.sha256_hex);
    listed = images_->ListImages(alice_);
    ASSERT_OK(listed);
    EXPECT_EQ(listed->size(), 2u);
    auto objects = objects_->List("images/");
    ASSERT_OK(objects);
    EXPECT_EQ(objects->size(), objects_before->size() + 1);
  }
}

// The cross-replica lock of an upload session: while one replica holds it
// (a PUT in progress, a commit), the other's append and commit are busy and
// change nothing; it is free again when released, or when the holder's
// connection ends (a replica that died). SQLite: one replica per database.
TEST_P(PortalStoreTest, AnUploadHeldThroughOneReplicaIsBusyThroughAnother) {
  if (GetParam() != "postgres") GTEST_SKIP() << "one replica per SQLite database";
  auto other_db = Open();
  ASSERT_OK(other_db);
  auto other_uploads = store::UploadSessions::Create({dir_.File("staging-b")}, objects_.get());
  ASSERT_OK(other_uploads);
  auto other = ImageService::Create({}, other_db->get(), objects_.get(), other_uploads->get(),
                                    &verifier_, &clock_);
  ASSERT_OK(other);
  auto begun = images_->BeginUpload(alice_, {});
  ASSERT_OK(begun);
  const std::string package = std::string(kSealedMagic) + "held disk";
  {
    auto hold = images_->HoldUpload(alice_, begun->upload_id);
    ASSERT_OK(hold);
    store::StringReader reader(package);
    auto appended = (*other)->AppendUpload(alice_, begun->upload_id, 0, reader);
    EXPECT_EQ(appended.status().code(), StatusCode::kAborted);
    EXPECT_THAT(appended.status().message(), HasSubstr("busy"));
    CommitUploadRequest req;
    req.upload_id = begun->upload_id;
    req.name = "held";
    EXPECT_EQ((*other)->CommitUpload(alice_, req).status().code(), StatusCode::kAborted);
    auto state = (*other)->GetUpload(alice_, begun->upload_id);
    ASSERT_OK(state);
    EXPECT_EQ(state->offset_bytes, 0u);
    // The holder's own appends go on.
    store::StringReader own(package.substr(0, 4));
    auto mine = images_->AppendUpload(alice_, begun->upload_id, 0, own);
    ASSERT_OK(mine);
    EXPECT_EQ(mine->offset_bytes, 4u);
  }
  store::StringReader rest(package.substr(4));
  auto appended = (*other)->AppendUpload(alice_, begun->upload_id, 4, rest);
  ASSERT_OK(appended);
  EXPECT_EQ(appended->offset_bytes, package.size());

  // A holder whose connection ends (its replica died) holds nothing more.
  auto dying = Open();
  ASSERT_OK(dying);
  auto taken = (*dying)->TryLockUpload(begun->upload_id);
  ASSERT_OK(taken);
  ASSERT_TRUE(*taken);
  auto refused = (*other_db)->TryLockUpload(begun->upload_id);
  ASSERT_OK(refused);
  EXPECT_FALSE(*refused);
  dying->reset();
  bool free_again = false;
  for (int i = 0; i < 200 && !free_again; ++i) {
    auto t = (*other_db)->TryLockUpload(begun->upload_id);
    ASSERT_OK(t);
    free_again = *t;
    if (!free_again) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(free_again);
  ASSERT_OK((*other_db)->UnlockUpload(begun->upload_id));
}

INSTANTIATE_TEST_SUITE_P(Backends, PortalStoreTest, ::testing::Values("sqlite", "postgres"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace vmseal::csp
