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

INSTANTIATE_TEST_SUITE_P(Backends, PortalStoreTest, ::testing::Values("sqlite", "postgres"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace vmseal::csp
