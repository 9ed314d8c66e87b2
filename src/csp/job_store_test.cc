// Jobs, leases and hosts in the portal database (issue 17): a JobManager and
// HostRegistry built again on the same SQLite file (what a restart of the
// portal does) see every job and host as they were; leases move a job off a
// host that went silent, and never run it twice.
#include <sqlite3.h>

#include <chrono>
#include <thread>

#include <gmock/gmock.h>

#include "csp/internal/test_doubles.h"
#include "csp/jobs.h"
#include "csp/lifecycle.h"
#include "csp/sqlite_db.h"
#include "store/fs_store.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::testing::HasSubstr;
using ::vmseal::csp::testing::FakeKmsClient;
using ::vmseal::csp::testing::FakeVerifier;
using ::vmseal::csp::testing::kSealedMagic;
using ::vmseal::testing::TempDir;

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto st = store::FsObjectStore::Create({dir_.File("objects"), nullptr});
    ASSERT_OK(st);
    store_ = std::move(st).value();
    auto up = store::UploadSessions::Create({dir_.File("staging")}, store_.get());
    ASSERT_OK(up);
    uploads_ = std::move(up).value();
    Restart();
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
  // What a restart of the portal does: everything built again on the file.
  void Restart() {
    jobs_.reset();
    scheduler_.reset();
    hosts_.reset();
    images_.reset();
    db_.reset();
    auto db = SqlitePortalDb::Open(dir_.File("portal.db"));
    ASSERT_OK(db);
    db_ = std::move(db).value();
    auto svc = ImageService::Create({}, db_.get(), store_.get(), uploads_.get(), &verifier_,
                                    &clock_);
    ASSERT_OK(svc);
    images_ = std::move(svc).value();
    hosts_ = std::make_unique<HostRegistry>(HostRegistry::Options{300}, &clock_);
    ASSERT_OK(hosts_->AttachStore(db_.get()));
    scheduler_ = std::make_unique<Scheduler>(hosts_.get(), &kms_, &clock_);
    JobManager::Options o;
    o.lease_seconds = 10;
    jobs_ = std::make_unique<JobManager>(o, images_.get(), hosts_.get(), scheduler_.get(), &clock_);
    ASSERT_OK(jobs_->AttachStore(db_.get()));
  }
  void AddTrustedHost(const std::string& id) {
    ASSERT_OK(hosts_->Register({id, 2, {{"region", "eu"}}}));
    kms_.SetEligibility(id, true, "ok");
  }

  TempDir dir_;
  FakeClock clock_;
  FakeVerifier verifier_;
  FakeKmsClient kms_;
  std::unique_ptr<store::FsObjectStore> store_;
  std::unique_ptr<store::UploadSessions> uploads_;
  std::unique_ptr<SqlitePortalDb> db_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<HostRegistry> hosts_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<JobManager> jobs_;
  Principal alice_;
  std::string image_id_;
};

TEST_F(JobStoreTest, JobWithAttemptsAndPlacementsSurvivesARestart) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  const std::string first = job->host_id;
  ASSERT_OK(jobs_->ReportRefusal(first, {job->job_id, RefusalKind::kLaunchFailed, "qemu exit 1"}));
  const std::string second = first == "h1" ? "h2" : "h1";
  ASSERT_OK(jobs_->ReportProgress(second, {job->job_id, JobState::kFetching, "vm-1", "/log"}));
  Restart();
  auto again = jobs_->GetJob(alice_, job->job_id);
  ASSERT_OK(again);
  EXPECT_EQ(again->state, JobState::kFetching);
  EXPECT_EQ(again->host_id, second);
  EXPECT_EQ(again->vm_name, "vm-1");
  ASSERT_EQ(again->attempts.size(), 2u);
  EXPECT_EQ(again->attempts[0].host_id, first);
  EXPECT_EQ(again->attempts[0].reason, "launch_failed");
  EXPECT_THAT(again->attempts[0].refusal, HasSubstr("qemu exit 1"));
  EXPECT_EQ(again->placements.size(), 2u);
  EXPECT_EQ(again->last_placement.chosen_host_id, second);
  // The host carries on where it was.
  auto running = jobs_->ReportProgress(second, {job->job_id, JobState::kRunning});
  ASSERT_OK(running);
  EXPECT_EQ(running->state, JobState::kRunning);
}

// TrustWatch's ordered stops live in the job records: after a portal
// restart the stop of a VM whose host lost trust is still followed up,
// "stop_unanswered" when the host stays silent past the timeout, then
// "stopped" once the host confirms (here while the portal was down), each
// once, in the job and to the KMS's audit.
TEST_F(JobStoreTest, TrustWatchFollowsUpAStopOrderedBeforeAPortalRestart) {
  AddTrustedHost("h1");
  auto launched = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(launched);
  ASSERT_EQ(launched->host_id, "h1");
  ASSERT_OK(jobs_->ReportProgress("h1", {launched->job_id, JobState::kRunning, "vm-1", "/s"}));
  const std::string id = launched->job_id;
  kms_.SetOnTrustLoss(id, "stop");
  kms_.SetEligibility("h1", false, "pcr_policy");
  {
    TrustWatch watch({.interval_seconds = 10, .stop_timeout_seconds = 60}, &kms_, jobs_.get(), &clock_);
    watch.Tick();
    auto job = jobs_->GetJob(alice_, id);
    ASSERT_OK(job);
    EXPECT_EQ(job->state, JobState::kDeleting);
    EXPECT_EQ(job->trust_stop_host_id, "h1");
  }
  // The portal restarts; the host stays silent past the timeout.
  Restart();
  clock_.AdvanceSeconds(70);
  TrustWatch after({.interval_seconds = 10, .stop_timeout_seconds = 60}, &kms_, jobs_.get(), &clock_);
  after.Tick();
  EXPECT_THAT(kms_.trust_events(), ::testing::ElementsAre(id + " stop_unanswered"));
  EXPECT_THAT(jobs_->GetJob(alice_, id)->trust_events.back(), HasSubstr("stop_unanswered: host h1"));
  // The host confirms while the portal is down again; after the next
  // restart the "stopped" follow-up is sent, once.
  Restart();
  ASSERT_OK(jobs_->ReportVmEnded("h1", {"vm-1", "stopped", "stopped by VmManager::Stop"}));
  auto gone = jobs_->ReportVmDeleted("h1", "vm-1");
  ASSERT_OK(gone);
  EXPECT_EQ(gone->state, JobState::kDeleted);
  Restart();
  TrustWatch third({.interval_seconds = 10, .stop_timeout_seconds = 60}, &kms_, jobs_.get(), &clock_);
  third.Tick();
  EXPECT_THAT(kms_.trust_events(), ::testing::ElementsAre(id + " stop_unanswered", id + " stopped"));
  EXPECT_THAT(jobs_->GetJob(alice_, id)->trust_events.back(), HasSubstr("stopped: host h1"));
  // Followed up: a further restart sends nothing more.
  Restart();
  TrustWatch fourth({.interval_seconds = 10, .stop_timeout_seconds = 60}, &kms_, jobs_.get(), &clock_);
  clock_.AdvanceSeconds(100);
  fourth.Tick();
  EXPECT_EQ(kms_.trust_events().size(), 2u);
}

TEST_F(JobStoreTest, HostRegistrySurvivesARestart) {
  AddTrustedHost("h1");
  Restart();
  auto h = hosts_->Get("h1");
  ASSERT_OK(h);
  EXPECT_TRUE(h->in_pool);
  EXPECT_EQ(h->registration.capacity_slots, 2u);
  EXPECT_EQ(h->registration.tags.at("region"), "eu");
}

TEST_F(JobStoreTest, QueuedJobIsPlacedAfterARestart) {
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kQueued);
  Restart();
  AddTrustedHost("h1");
  jobs_->Tick();
  auto placed = jobs_->GetJob(alice_, job->job_id);
  ASSERT_OK(placed);
  EXPECT_EQ(placed->state, JobState::kPlaced);
  EXPECT_EQ(placed->host_id, "h1");
  EXPECT_EQ(jobs_->PendingJobs("h1").size(), 1u);
}

TEST_F(JobStoreTest, ExpiredLeaseMovesTheJobToAnotherTrustedHostAndTheFirstCannotGoOn) {
  AddTrustedHost("h1");
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  const std::string first = job->host_id;
  EXPECT_EQ(job->lease_expires_unix, clock_.NowUnixSeconds() + 10);
  ASSERT_OK(jobs_->ReportProgress(first, {job->job_id, JobState::kFetching}));
  AddTrustedHost("h2");
  // h1 goes silent (still in the pool: its heartbeat timeout is 300 s); h2
  // keeps heartbeating.
  for (int i = 0; i < 4; ++i) {
    clock_.AdvanceSeconds(3);
    ASSERT_OK(hosts_->Heartbeat("h2"));
    jobs_->Tick();
  }
  auto moved = jobs_->GetJob(alice_, job->job_id);
  ASSERT_OK(moved);
  EXPECT_EQ(moved->state, JobState::kPlaced);
  EXPECT_EQ(moved->host_id, "h2");
  ASSERT_EQ(moved->attempts.size(), 2u);
  EXPECT_EQ(moved->attempts[0].reason, "host_lost");
  EXPECT_THAT(moved->attempts[0].refusal, HasSubstr("lease expired"));
  // The first host wakes up: nothing it reports is taken, it is given nothing.
  auto late = jobs_->ReportProgress(first, {job->job_id, JobState::kRunning});
  EXPECT_EQ(late.status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(jobs_->PendingJobs(first).empty());
  // The KMS is told each placement's attempt, which the host is given too:
  // attempt 2's grant fences h1 (attempt 1) off at the KMS.
  ASSERT_EQ(kms_.grants().size(), 2u);
  EXPECT_EQ(kms_.grants()[0].host_id, first);
  EXPECT_EQ(kms_.grants()[0].attempt, 1);
  EXPECT_EQ(kms_.grants().back().host_id, "h2");
  EXPECT_EQ(kms_.grants().back().attempt, 2);
  auto pending = jobs_->PendingJobs("h2");
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].attempts.size(), 2u);  // what the host route shows as "attempt"
}

TEST_F(JobStoreTest, HeartbeatsOfTheHostKeepItsLease) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  const std::string host = job->host_id;
  for (int i = 0; i < 10; ++i) {
    clock_.AdvanceSeconds(3);
    ASSERT_OK(hosts_->Heartbeat("h1"));
    ASSERT_OK(hosts_->Heartbeat("h2"));
    jobs_->Tick();
  }
  auto still = jobs_->GetJob(alice_, job->job_id);
  ASSERT_OK(still);
  EXPECT_EQ(still->host_id, host);
  EXPECT_EQ(still->attempts.size(), 1u);
  EXPECT_GT(still->lease_expires_unix, clock_.NowUnixSeconds());
}

TEST_F(JobStoreTest, ARestartGivesTheHostOneFullLeaseToBeHeardFrom) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  const std::string host = job->host_id;
  const std::string other = host == "h1" ? "h2" : "h1";
  // The portal was down longer than the lease.
  clock_.AdvanceSeconds(100);
  Restart();
  jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->host_id, host);
  // Its host is never heard from again; the other one is.
  for (int i = 0; i < 4; ++i) {
    clock_.AdvanceSeconds(3);
    ASSERT_OK(hosts_->Heartbeat(other));
    jobs_->Tick();
  }
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->host_id, other);
}

TEST_F(JobStoreTest, SchemaVersionIsRecordedAndANewerDatabaseIsRefused) {
  auto v = db_->SchemaVersion();
  ASSERT_OK(v);
  EXPECT_EQ(*v, kPortalSchemaVersion);
  db_.reset();
  jobs_.reset();
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.File("portal.db").c_str(), &raw), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(raw, "UPDATE schema_version SET version=99", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(raw);
  auto db = SqlitePortalDb::Open(dir_.File("portal.db"));
  EXPECT_EQ(db.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(db.status().message(), HasSubstr("newer"));
}

TEST_F(JobStoreTest, AnUnreadableJobRecordStopsTheStartWithDataLoss) {
  ASSERT_OK(db_->PutJob({"job-x", "c", "queued", "", 1, "{\"v\":1,\"job_id\":3}", 0}));
  JobManager again({}, images_.get(), hosts_.get(), scheduler_.get(), &clock_);
  Status s = again.AttachStore(db_.get());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("job-x"));
}

// Two portal replicas on one store: each job is placed once. Replica B runs
// its Tick while replica A waits for the KMS grant of the same job.
TEST_F(JobStoreTest, TwoReplicasPlaceAQueuedJobExactlyOnce) {
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kQueued);
  auto db_b = SqlitePortalDb::Open(dir_.File("portal.db"));
  ASSERT_OK(db_b);
  HostRegistry hosts_b(HostRegistry::Options{300}, &clock_);
  ASSERT_OK(hosts_b.AttachStore(db_b->get()));
  Scheduler scheduler_b(&hosts_b, &kms_, &clock_);
  JobManager::Options o;
  o.lease_seconds = 10;
  JobManager jobs_b(o, images_.get(), &hosts_b, &scheduler_b, &clock_);
  ASSERT_OK(jobs_b.AttachStore(db_b->get()));
  // A host registered through replica A is seen by replica B.
  ASSERT_OK(hosts_->Register({"h1", 2, {}}));
  kms_.SetEligibility("h1", true, "ok");
  ASSERT_OK(hosts_b.Get("h1"));
  kms_.HoldGrants(true);
  std::thread a([&] { jobs_->Tick(); });
  for (int i = 0; i < 500 && kms_.grants_waiting() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(kms_.grants_waiting(), 1);
  jobs_b.Tick();  // sees A's claim: asks the KMS nothing
  EXPECT_EQ(kms_.grants_waiting(), 1);
  kms_.HoldGrants(false);
  a.join();
  jobs_b.Tick();
  jobs_->Tick();
  EXPECT_EQ(kms_.grants().size(), 1u);
  for (JobManager* m : {jobs_.get(), &jobs_b}) {
    auto j = m->GetJob(alice_, job->job_id);
    ASSERT_OK(j);
    EXPECT_EQ(j->state, JobState::kPlaced);
    EXPECT_EQ(j->host_id, "h1");
    EXPECT_EQ(j->attempts.size(), 1u);
  }
  // The host, polling replica B, is given it once.
  EXPECT_EQ(jobs_b.PendingJobs("h1").size(), 1u);
}

TEST_F(JobStoreTest, AStaleWriteFromAnotherReplicaIsRefusedAndChangesNothing) {
  ASSERT_OK(db_->PutJob({"job-y", "c", "queued", "", 1, "{}", 0}));
  auto again = db_->PutJob({"job-y", "c", "placed", "h9", 2, "{}", 0});
  EXPECT_EQ(again.status().code(), StatusCode::kAborted);
  auto rows = db_->LoadJobsSince(0);
  ASSERT_OK(rows);
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0].state, "queued");
  EXPECT_EQ((*rows)[0].version, 1);
}

// A store through which another replica writes each job once, just before
// this replica's next write of it (the race a compare-and-set must catch).
class RacingStore final : public StateStore {
 public:
  explicit RacingStore(StateStore* inner) : inner_(inner) {}
  void RaceOn(const std::string& job_id) { race_on_ = job_id; }
  StatusOr<int64_t> PutJob(const StoredJob& job) override {
    if (job.job_id == race_on_) {
      race_on_.clear();
      StoredJob theirs = job;
      auto rows = inner_->LoadJobsSince(0);
      if (!rows.ok()) return rows.status();
      for (const StoredJob& r : *rows) {
        if (r.job_id == job.job_id) theirs = r;
      }
      RETURN_IF_ERROR(inner_->PutJob(theirs).status());  // the other replica's write
    }
    return inner_->PutJob(job);
  }
  StatusOr<std::vector<StoredJob>> LoadJobsSince(int64_t seq) override {
    return inner_->LoadJobsSince(seq);
  }
  Status PutHost(const StoredHost& host) override { return inner_->PutHost(host); }
  StatusOr<std::vector<StoredHost>> LoadHosts() override { return inner_->LoadHosts(); }

 private:
  StateStore* const inner_;
  std::string race_on_;
};

TEST_F(JobStoreTest, ACallWhoseWriteLosesToAnotherReplicaIsAbortedAndKeepsNothing) {
  AddTrustedHost("h1");
  RacingStore racing(db_.get());
  JobManager::Options o;
  o.lease_seconds = 10;
  jobs_ = std::make_unique<JobManager>(o, images_.get(), hosts_.get(), scheduler_.get(), &clock_);
  ASSERT_OK(jobs_->AttachStore(&racing));
  auto job = jobs_->Launch(alice_, {image_id_});
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  racing.RaceOn(job->job_id);
  auto progress = jobs_->ReportProgress(job->host_id, {job->job_id, JobState::kFetching});
  EXPECT_EQ(progress.status().code(), StatusCode::kAborted);
  EXPECT_THAT(progress.status().message(), HasSubstr("conflict"));
  // Nothing of it was kept, in memory or in the store; a retry goes through.
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->state, JobState::kPlaced);
  Restart();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->state, JobState::kPlaced);
  auto retried = jobs_->ReportProgress(job->host_id, {job->job_id, JobState::kFetching});
  ASSERT_OK(retried);
  EXPECT_EQ(retried->state, JobState::kFetching);
}

TEST(JobRecord, EveryFieldRoundTrips) {
  Job job;
  job.job_id = "job-1";
  job.customer_id = "cust";
  job.image_id = "img";
  job.object_key = "k";
  job.package_size_bytes = 1ull << 40;
  job.package_sha256_hex = std::string(64, 'a');
  job.tagged_image_id = "tag";
  job.state = JobState::kStopping;
  job.host_id = "h";
  job.attempts = {{"h0", "launch failed: x", "launch_failed"}, {"h", "", ""}};
  job.failure_reason = "f";
  Placement p;
  p.chosen_host_id = "h";
  p.decisions = {{"h", true, true, {"least loaded"}, "ok", 1, 2}};
  p.decided_unix = 5;
  job.last_placement = p;
  job.placements = {p, p};
  job.vm_name = "vm";
  job.serial_log_path = "/s";
  job.wanted = VmWanted::kStopped;
  job.vm_host_id = "h";
  job.end_reason = "killed";
  job.end_text = "signal 9";
  job.ended_unix = 7;
  job.pinned_host_id = "h";
  job.run_first_attempt = 1;
  job.runs = 2;
  job.disk_events = {"chunk_auth_failed: disk 0"};
  job.created_unix = 1;
  job.updated_unix = 2;
  job.lease_expires_unix = 3;
  auto back = JobFromRecord(JobToRecord(job));
  ASSERT_OK(back);
  EXPECT_EQ(JobToRecord(*back), JobToRecord(job));
  EXPECT_EQ(back->state, JobState::kStopping);
  EXPECT_EQ(back->wanted, VmWanted::kStopped);
  EXPECT_EQ(back->package_size_bytes, 1ull << 40);
  EXPECT_EQ(back->last_placement.decisions[0].reasons[0], "least loaded");
}

TEST(JobRecord, ABadRecordIsDataLoss) {
  for (const char* bad : {"", "[]", "{\"v\":2}", "{\"v\":1}"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(JobFromRecord(bad).status().code(), StatusCode::kDataLoss);
  }
}

}  // namespace
}  // namespace vmseal::csp
