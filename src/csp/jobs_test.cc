#include "csp/jobs.h"

#include <chrono>
#include <future>
#include <thread>

#include "csp/internal/test_doubles.h"
#include "csp/lifecycle.h"
#include "csp/sqlite_db.h"
#include "store/fs_store.h"
#include <gmock/gmock.h>

#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::testing::HasSubstr;
using ::vmseal::csp::testing::FakeKmsClient;
using ::vmseal::csp::testing::FakeVerifier;
using ::vmseal::csp::testing::kSealedMagic;
using ::vmseal::testing::TempDir;

class JobsTest : public ::testing::Test {
 protected:
  void SetUp() override { Init({}); }
  void Init(const JobManager::Options& options) {
    auto db = SqlitePortalDb::Open(":memory:");
    ASSERT_OK(db);
    db_ = std::move(db).value();
    auto st = store::FsObjectStore::Create({dir_.File("objects"), nullptr});
    ASSERT_OK(st);
    store_ = std::move(st).value();
    auto up = store::UploadSessions::Create({dir_.File("staging")}, store_.get());
    ASSERT_OK(up);
    uploads_ = std::move(up).value();
    auto svc = ImageService::Create({}, db_.get(), store_.get(), uploads_.get(), &verifier_,
                                    &clock_);
    ASSERT_OK(svc);
    images_ = std::move(svc).value();
    Accounts::Options ao;
    ao.argon2_t_cost = 1;
    ao.argon2_m_cost_kib = 64;
    auto acc = Accounts::Create(ao, db_.get(), &clock_, &kms_);
    ASSERT_OK(acc);
    accounts_ = std::move(acc).value();
    hosts_ = std::make_unique<HostRegistry>(HostRegistry::Options{30}, &clock_);
    scheduler_ = std::make_unique<Scheduler>(hosts_.get(), &kms_, &clock_);
    jobs_ = std::make_unique<JobManager>(options, images_.get(), hosts_.get(), scheduler_.get(),
                                         &clock_);
    alice_ = NewCustomer();
    bob_ = NewCustomer();
    auto img = UploadAs(alice_);
    ASSERT_OK(img);
    image_id_ = img->image_id;
  }
  Principal NewCustomer() {
    auto r = accounts_->Register({});
    EXPECT_OK(r);
    auto login = accounts_->Login({r->login_id, r->password.Clone()});
    EXPECT_OK(login);
    return *accounts_->Authenticate(login->token);
  }
  StatusOr<ImageInfo> UploadAs(const Principal& who) {
    const std::string package = std::string(kSealedMagic) + "disk";
    store::StringReader r(package);
    CommitUploadRequest req;
    req.name = "web";
    return images_->Upload(who, req, r);
  }
  void AddTrustedHost(const std::string& id, uint32_t capacity = 2) {
    ASSERT_OK(hosts_->Register({id, capacity, {}}));
    kms_.SetEligibility(id, true, "ok");
  }
  StatusOr<Job> Launch() { return jobs_->Launch(alice_, {image_id_}); }
  StatusOr<Job> Refuse(const Job& job, RefusalKind kind, const std::string& detail) {
    return jobs_->ReportRefusal(job.host_id, {job.job_id, kind, detail});
  }

  TempDir dir_;
  FakeClock clock_;
  FakeVerifier verifier_;
  FakeKmsClient kms_;
  std::unique_ptr<SqlitePortalDb> db_;
  std::unique_ptr<store::FsObjectStore> store_;
  std::unique_ptr<store::UploadSessions> uploads_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<Accounts> accounts_;
  std::unique_ptr<HostRegistry> hosts_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<JobManager> jobs_;
  Principal alice_, bob_;
  std::string image_id_;
};

TEST_F(JobsTest, LaunchSkipsTamperedHostWithItsReasonAndPlacesOnTrustedOne) {
  AddTrustedHost("tampered");
  AddTrustedHost("trusted");
  kms_.SetEligibility("tampered", false, "pcr_policy");
  auto job = Launch();
  ASSERT_OK(job);
  EXPECT_EQ(job->state, JobState::kPlaced);
  EXPECT_EQ(job->host_id, "trusted");
  EXPECT_THAT(DescribePlacement(job->last_placement),
              HasSubstr("tampered: KMS: not eligible (pcr_policy)"));
}

TEST_F(JobsTest, HostWalksTheJobThroughEveryStateToRunning) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  for (JobState s : {JobState::kFetching, JobState::kAttesting, JobState::kDecrypting,
                     JobState::kRunning}) {
    auto j = jobs_->ReportProgress("h1", {job->job_id, s});
    ASSERT_OK(j);
    EXPECT_EQ(j->state, s);
  }
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->state, JobState::kRunning);
}

TEST_F(JobsTest, ProgressCannotGoBackwards) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  ASSERT_OK(jobs_->ReportProgress("h1", {job->job_id, JobState::kAttesting}));
  EXPECT_STATUS(jobs_->ReportProgress("h1", {job->job_id, JobState::kFetching}),
                StatusCode::kFailedPrecondition, "cannot move from attesting to fetching");
}

TEST_F(JobsTest, AnotherHostCannotReportOnTheJob) {
  AddTrustedHost("h1");
  AddTrustedHost("h2", 1);
  auto job = Launch();
  ASSERT_OK(job);
  std::string other = job->host_id == "h1" ? "h2" : "h1";
  EXPECT_STATUS(jobs_->ReportProgress(other, {job->job_id, JobState::kFetching}),
                StatusCode::kNotFound, "no such job on this host");
  EXPECT_STATUS(jobs_->ReportRefusal(other, {job->job_id, RefusalKind::kLaunchFailed, ""}),
                StatusCode::kNotFound, "no such job on this host");
}

TEST_F(JobsTest, PendingJobsAreOnlyThoseOfTheAskingHost) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  EXPECT_EQ(jobs_->PendingJobs("h1").size(), 1u);
  EXPECT_TRUE(jobs_->PendingJobs("h2").empty());
}

TEST_F(JobsTest, RefusedJobMovesToTheNextEligibleHost) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  auto job = Launch();
  ASSERT_OK(job);
  std::string first = job->host_id;
  auto moved = Refuse(*job, RefusalKind::kAttestationDenied, "pcr 0 mismatch");
  ASSERT_OK(moved);
  EXPECT_EQ(moved->state, JobState::kPlaced);
  EXPECT_NE(moved->host_id, first);
  ASSERT_EQ(moved->attempts.size(), 2u);
  EXPECT_EQ(moved->attempts[0].refusal, "attestation denied: pcr 0 mismatch");
}

TEST_F(JobsTest, RefusalKeepsTheHostsMachineReason) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  auto job = Launch();
  ASSERT_OK(job);
  const std::string first = job->host_id;
  EXPECT_STATUS(jobs_->ReportRefusal(first, {job->job_id, RefusalKind::kLaunchFailed, "x",
                                             "Bad Reason"}),
                StatusCode::kInvalidArgument, "machine reason");
  auto moved = jobs_->ReportRefusal(first, {job->job_id, RefusalKind::kLaunchFailed,
                                            "KMS refused the quote", "kms_unavailable"});
  ASSERT_OK(moved);
  EXPECT_EQ(moved->state, JobState::kPlaced);
  EXPECT_NE(moved->host_id, first);
  ASSERT_EQ(moved->attempts.size(), 2u);
  EXPECT_EQ(moved->attempts[0].reason, "kms_unavailable");
  EXPECT_EQ(moved->attempts[0].refusal, "kms_unavailable: KMS refused the quote");
  EXPECT_EQ(moved->attempts[1].reason, "");
  // The placement that moved it says why the first host was skipped.
  EXPECT_THAT(DescribePlacement(moved->last_placement),
              HasSubstr("refused this job before: kms_unavailable: KMS refused the quote"));
  // Without a machine reason the kind names it.
  auto failed = Refuse(*moved, RefusalKind::kUnencryptedImage, "disk1");
  ASSERT_OK(failed);
  EXPECT_EQ(failed->attempts[1].reason, "unencrypted_image");
}

TEST(MachineReason, AcceptsOnlyLowercaseIdentifiersUpTo64) {
  for (const char* ok : {"a", "pcr_policy", "kms_unavailable", "image_mismatch", "x9_"}) {
    EXPECT_TRUE(IsMachineReason(ok)) << ok;
  }
  EXPECT_TRUE(IsMachineReason(std::string(64, 'a')));
  for (const char* bad : {"", "9x", "_x", "Pcr", "pcr policy", "pcr-policy", "pcr:x"}) {
    EXPECT_FALSE(IsMachineReason(bad)) << bad;
  }
  EXPECT_FALSE(IsMachineReason(std::string(65, 'a')));
}

TEST_F(JobsTest, JobFailsWithEveryReasonAfterTheAttemptBound) {
  JobManager::Options o;
  o.max_attempts = 2;
  Init(o);
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  AddTrustedHost("h3");
  auto job = Launch();
  ASSERT_OK(job);
  auto j2 = Refuse(*job, RefusalKind::kUnencryptedImage, "disk1 has no EncryptedData");
  ASSERT_OK(j2);
  auto j3 = Refuse(*j2, RefusalKind::kLaunchFailed, "qemu exited 1");
  ASSERT_OK(j3);
  EXPECT_EQ(j3->state, JobState::kFailed);
  EXPECT_THAT(j3->failure_reason, HasSubstr("refused by 2 hosts (limit 2)"));
  EXPECT_THAT(j3->failure_reason, HasSubstr("unencrypted image: disk1 has no EncryptedData"));
  EXPECT_THAT(j3->failure_reason, HasSubstr("launch failed: qemu exited 1"));
}

TEST_F(JobsTest, RefusalWithNoOtherEligibleHostFailsWithReasons) {
  AddTrustedHost("h1");
  AddTrustedHost("bad");
  kms_.SetEligibility("bad", false, "history");
  auto job = Launch();
  ASSERT_OK(job);
  auto j = Refuse(*job, RefusalKind::kLaunchFailed, "no kvm");
  ASSERT_OK(j);
  EXPECT_EQ(j->state, JobState::kFailed);
  EXPECT_THAT(j->failure_reason, HasSubstr("h1: launch failed: no kvm"));
  EXPECT_THAT(j->failure_reason, HasSubstr("bad: KMS: not eligible (history)"));
}

TEST_F(JobsTest, HostThatStopsHeartbeatingLosesItsJobToAnotherHost) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  ASSERT_OK(jobs_->ReportProgress("h1", {job->job_id, JobState::kRunning}));
  clock_.AdvanceSeconds(20);
  AddTrustedHost("h2");
  clock_.AdvanceSeconds(15);  // h1 silent 35 s, h2 15 s
  ASSERT_OK(hosts_->Heartbeat("h2"));
  jobs_->Tick();
  auto j = jobs_->GetJob(alice_, job->job_id);
  ASSERT_OK(j);
  EXPECT_EQ(j->state, JobState::kPlaced);
  EXPECT_EQ(j->host_id, "h2");
  EXPECT_THAT(j->attempts[0].refusal, HasSubstr("host lost: no heartbeat"));
}

TEST_F(JobsTest, QueuedJobIsPlacedWhenAHostJoins) {
  auto job = Launch();
  ASSERT_OK(job);
  EXPECT_EQ(job->state, JobState::kQueued);
  AddTrustedHost("h1");
  jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->host_id, "h1");
}

TEST_F(JobsTest, QueuedJobFailsAfterTheQueueTimeoutWithPlacementReasons) {
  ASSERT_OK(hosts_->Register({"h1", 1, {}}));  // no verdict
  auto job = Launch();
  ASSERT_OK(job);
  clock_.AdvanceSeconds(100);
  ASSERT_OK(hosts_->Heartbeat("h1"));
  jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->state, JobState::kQueued);
  clock_.AdvanceSeconds(200);
  ASSERT_OK(hosts_->Heartbeat("h1"));
  jobs_->Tick();
  auto j = jobs_->GetJob(alice_, job->job_id);
  ASSERT_OK(j);
  EXPECT_EQ(j->state, JobState::kFailed);
  EXPECT_THAT(j->failure_reason, HasSubstr("no eligible host within 300 s: h1: KMS: not eligible (not_enrolled)"));
}

TEST_F(JobsTest, FullHostsLeaveTheJobQueued) {
  AddTrustedHost("h1", 1);
  ASSERT_OK(Launch());
  auto second = Launch();
  ASSERT_OK(second);
  EXPECT_EQ(second->state, JobState::kQueued);
  EXPECT_THAT(DescribePlacement(second->last_placement), HasSubstr("no free slot (1/1 in use)"));
}

TEST_F(JobsTest, ExplainPlacementShowsEveryHost) {
  AddTrustedHost("h1");
  ASSERT_OK(hosts_->Register({"h2", 1, {}}));
  auto p = jobs_->ExplainImagePlacement(alice_, image_id_);
  ASSERT_OK(p);
  EXPECT_EQ(p->chosen_host_id, "h1");
  EXPECT_EQ(p->decisions.size(), 2u);
}

TEST_F(JobsTest, OperatorSeesEveryCustomersJobs) {
  AddTrustedHost("h1");
  auto bob_image = UploadAs(bob_);
  ASSERT_OK(bob_image);
  ASSERT_OK(Launch());
  ASSERT_OK(jobs_->Launch(bob_, {bob_image->image_id}));
  EXPECT_EQ(jobs_->ListAllJobs().size(), 2u);
  EXPECT_EQ(jobs_->ListJobs(alice_)->size(), 1u);
}

// Cross-tenant isolation of launches and jobs.
TEST_F(JobsTest, OtherCustomerCannotLaunchAlicesImage) {
  AddTrustedHost("h1");
  EXPECT_STATUS(jobs_->Launch(bob_, {image_id_}), StatusCode::kNotFound, "no such image");
  EXPECT_TRUE(jobs_->ListAllJobs().empty());
}

TEST_F(JobsTest, OtherCustomerCannotSeeAlicesJob) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  EXPECT_STATUS(jobs_->GetJob(bob_, job->job_id), StatusCode::kNotFound, "no such job");
  EXPECT_TRUE(jobs_->ListJobs(bob_)->empty());
}

TEST_F(JobsTest, KmsIsAskedAboutThisCustomerAndImage) {
  AddTrustedHost("h1");
  ASSERT_OK(Launch());
  // The KMS names the image by its tag's imageId (the key-wrap label's),
  // not by the portal's own id.
  auto image = images_->GetImage(alice_, image_id_);
  ASSERT_OK(image);
  ASSERT_FALSE(image->tagged_image_id.empty());
  EXPECT_NE(image->tagged_image_id, image_id_);
  EXPECT_EQ(kms_.last_query(), std::make_pair(alice_.customer_id, image->tagged_image_id));
}

TEST_F(JobsTest, PlacingAJobRegistersItsGrantAtTheKms) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  auto grants = kms_.grants();
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0].job_id, job->job_id);
  EXPECT_EQ(grants[0].host_id, "h1");
  EXPECT_EQ(grants[0].tenant, alice_.customer_id);
  EXPECT_EQ(grants[0].image_id, job->tagged_image_id);
  EXPECT_GT(grants[0].ttl_seconds, 0);
}

TEST_F(JobsTest, WithoutAGrantTheJobIsNotPlaced) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kPlaced);
  // The KMS refuses the next launch's grant: the job is not handed to the
  // host (it waits, queued), and the placement says why.
  kms_.SetGrantsRefused(true);
  auto second = Launch();
  ASSERT_OK(second);
  EXPECT_EQ(second->state, JobState::kQueued);
  EXPECT_TRUE(second->host_id.empty());
  EXPECT_TRUE(jobs_->PendingJobs("h1").size() == 1);
  EXPECT_NE(DescribePlacement(second->last_placement).find("KMS grant failed"), std::string::npos);
}

TEST_F(JobsTest, UnreachableKmsLeavesTheJobQueuedWithTheReason) {
  AddTrustedHost("h1");
  kms_.SetUnavailable(true);
  auto job = Launch();
  ASSERT_OK(job);
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_THAT(DescribePlacement(job->last_placement), HasSubstr("KMS placement check failed"));
  kms_.SetUnavailable(false);
  jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->host_id, "h1");
}

TEST_F(JobsTest, UnreachableKmsIsAskedOncePerTickNotOncePerQueuedJob) {
  AddTrustedHost("h1");
  kms_.SetUnavailable(true);
  for (int i = 0; i < 3; ++i) ASSERT_OK(Launch());
  const int before = kms_.placement_checks();
  jobs_->Tick();
  EXPECT_EQ(kms_.placement_checks(), before + 1);
}

TEST_F(JobsTest, UnchangedDecisionsOfAQueuedJobAreKeptOnce) {
  AddTrustedHost("h1");
  kms_.SetEligibility("h1", false, "pcr_policy");
  auto job = Launch();
  ASSERT_OK(job);
  for (int i = 0; i < 5; ++i) jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->placements.size(), 1u);
  kms_.SetEligibility("h1", true, "ok");
  jobs_->Tick();
  auto j = jobs_->GetJob(alice_, job->job_id);
  EXPECT_EQ(j->placements.size(), 2u);
  EXPECT_EQ(j->host_id, "h1");
}

TEST_F(JobsTest, EveryPlacementDecisionIsKeptOnTheJob) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  auto job = Launch();
  ASSERT_OK(job);
  auto j = Refuse(*job, RefusalKind::kAttestationDenied, "pcr_policy");
  ASSERT_OK(j);
  ASSERT_EQ(j->placements.size(), 2u);
  EXPECT_EQ(j->placements[0].chosen_host_id, job->host_id);
  EXPECT_EQ(j->placements[1].chosen_host_id, j->host_id);
  EXPECT_NE(j->host_id, job->host_id);
}

TEST_F(JobsTest, ProgressKeepsTheVmNameAndSerialLog) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  auto j = jobs_->ReportProgress("h1", {job->job_id, JobState::kRunning, "vm-1", "/var/log/s"});
  ASSERT_OK(j);
  EXPECT_EQ(j->vm_name, "vm-1");
  EXPECT_EQ(j->serial_log_path, "/var/log/s");
}

TEST_F(JobsTest, OtherCustomerCannotExplainAlicesImage) {
  EXPECT_STATUS(jobs_->ExplainImagePlacement(bob_, image_id_), StatusCode::kNotFound,
                "no such image");
}


// --- VM lifecycle (docs/protocol.md §6) ---

class JobsLifecycleTest : public JobsTest {
 protected:
  // A job of Alice's running on `host` as VM "vm-<n>".
  Job Running(const std::string& host) {
    auto job = Launch();
    EXPECT_OK(job);
    EXPECT_EQ(job->host_id, host);
    auto j = jobs_->ReportProgress(host, {job->job_id, JobState::kRunning,
                                          "vm-" + std::to_string(++vms_), "/s"});
    EXPECT_OK(j);
    return j.ok() ? *j : Job{};
  }
  int vms_ = 0;
};

TEST_F(JobsLifecycleTest, VmEndFreesTheSlotAtOnceAndTheJobSaysWhy) {
  AddTrustedHost("h1", 1);
  Job first = Running("h1");
  auto waiting = Launch();
  ASSERT_OK(waiting);
  EXPECT_EQ(waiting->state, JobState::kQueued);
  EXPECT_THAT(DescribePlacement(waiting->last_placement), HasSubstr("no free slot (1/1 in use)"));

  auto ended = jobs_->ReportVmEnded("h1", {first.vm_name, "killed", "killed by signal 9"});
  ASSERT_OK(ended);
  EXPECT_EQ(ended->state, JobState::kStopped);
  EXPECT_EQ(ended->end_reason, "killed");
  EXPECT_EQ(ended->end_text, "killed by signal 9");
  EXPECT_EQ(ended->host_id, "");
  EXPECT_EQ(ended->vm_host_id, "h1");
  // The next Tick places the queued job on the freed slot.
  jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, waiting->job_id)->state, JobState::kPlaced);
}

// Loss of trust (csp/lifecycle.h): the KMS's answer decides; the portal
// stops ("stop") or reports ("report") each VM once, tells the customer, and
// reports a host that does not confirm the stop.
TEST_F(JobsLifecycleTest, TrustWatchStopsOrReportsEachVmOfAnUntrustedHostOnce) {
  AddTrustedHost("h1");
  Job stop = Running("h1");
  Job report = Running("h1");
  kms_.SetOnTrustLoss(stop.job_id, "stop");
  kms_.SetOnTrustLoss(report.job_id, "report");
  // Only a running VM on the host named can lose trust; nothing changes.
  EXPECT_STATUS(jobs_->RecordTrustLoss(report.job_id, "h2", "trust_lost: x", true),
                StatusCode::kFailedPrecondition, "bad_state");
  Job unchanged = *jobs_->GetJob(alice_, report.job_id);
  EXPECT_EQ(unchanged.state, JobState::kRunning);
  EXPECT_TRUE(unchanged.trust_events.empty());
  EXPECT_EQ(unchanged.trust_lost_unix, 0);
  TrustWatch watch({.interval_seconds = 10, .stop_timeout_seconds = 60}, &kms_, jobs_.get(), &clock_);
  watch.Tick();
  // Trusted: asked about both, nothing changes.
  EXPECT_THAT(kms_.trust_queries(), ::testing::UnorderedElementsAre(stop.job_id, report.job_id));
  EXPECT_EQ(jobs_->GetJob(alice_, stop.job_id)->state, JobState::kRunning);
  EXPECT_TRUE(jobs_->GetJob(alice_, report.job_id)->trust_events.empty());
  // Within the interval: not asked again.
  watch.Tick();
  EXPECT_EQ(kms_.trust_queries().size(), 2u);

  kms_.SetEligibility("h1", false, "pcr_policy");
  // The KMS is down: nothing changes, retried at the next round.
  kms_.SetUnavailable(true);
  clock_.AdvanceSeconds(10);
  watch.Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, stop.job_id)->state, JobState::kRunning);
  kms_.SetUnavailable(false);
  clock_.AdvanceSeconds(10);
  watch.Tick();
  Job stopped = *jobs_->GetJob(alice_, stop.job_id);
  EXPECT_EQ(stopped.state, JobState::kDeleting);
  EXPECT_EQ(stopped.wanted, VmWanted::kDeleted);
  ASSERT_EQ(stopped.trust_events.size(), 1u);
  EXPECT_THAT(stopped.trust_events[0], HasSubstr("trust_lost: host h1 is no longer trusted (pcr_policy)"));
  EXPECT_THAT(stopped.trust_events[0], HasSubstr("on_trust_loss=stop"));
  Job reported = *jobs_->GetJob(alice_, report.job_id);
  EXPECT_EQ(reported.state, JobState::kRunning);
  ASSERT_EQ(reported.trust_events.size(), 1u);
  EXPECT_THAT(reported.trust_events[0], HasSubstr("on_trust_loss=report"));
  // The host is told to delete the stopped VM only.
  for (const HostVmCommand& c : jobs_->VmCommands("h1")) {
    EXPECT_EQ(c.action, c.job_id == stop.job_id ? "delete" : "run") << c.job_id;
  }
  // Each VM is asked about until its trust is lost, then never again.
  const size_t asked = kms_.trust_queries().size();
  clock_.AdvanceSeconds(10);
  watch.Tick();
  EXPECT_EQ(kms_.trust_queries().size(), asked);
  EXPECT_EQ(jobs_->GetJob(alice_, report.job_id)->trust_events.size(), 1u);

  // No confirmation from the host within 60 s: reported, once.
  clock_.AdvanceSeconds(50);
  watch.Tick();
  clock_.AdvanceSeconds(10);
  watch.Tick();
  EXPECT_THAT(kms_.trust_events(), ::testing::ElementsAre(stop.job_id + " stop_unanswered"));
  EXPECT_THAT(jobs_->GetJob(alice_, stop.job_id)->trust_events.back(),
              HasSubstr("stop_unanswered: host h1 did not confirm within 60 s"));
  // The host comes back and removes it: the job ends trust_lost, and the
  // customer is told it stopped.
  auto ended = jobs_->ReportVmEnded("h1", {stop.vm_name, "stopped", "stopped by VmManager::Stop"});
  ASSERT_OK(ended);
  EXPECT_EQ(ended->end_reason, "trust_lost");
  auto gone = jobs_->ReportVmDeleted("h1", stop.vm_name);
  ASSERT_OK(gone);
  EXPECT_EQ(gone->state, JobState::kDeleted);
  EXPECT_EQ(gone->end_reason, "trust_lost");
  clock_.AdvanceSeconds(10);
  watch.Tick();
  EXPECT_THAT(kms_.trust_events(),
              ::testing::ElementsAre(stop.job_id + " stop_unanswered", stop.job_id + " stopped"));
  EXPECT_THAT(jobs_->GetJob(alice_, stop.job_id)->trust_events.back(), HasSubstr("stopped: host h1"));
}

TEST_F(JobsLifecycleTest, TrustEventsSurviveTheJobRecord) {
  Job job;
  job.job_id = "j1";
  job.trust_events = {"trust_lost: host h1 is no longer trusted (pcr_policy)"};
  job.trust_lost_unix = 1234;
  auto back = JobFromRecord(JobToRecord(job));
  ASSERT_OK(back);
  EXPECT_EQ(back->trust_events, job.trust_events);
  EXPECT_EQ(back->trust_lost_unix, 1234);
  job.trust_stop_host_id = "h1";
  EXPECT_EQ(JobFromRecord(JobToRecord(job))->trust_stop_host_id, "h1");
  // A record written before trust was tracked reads as never lost.
  nlohmann::json old = nlohmann::json::parse(JobToRecord(job));
  old.erase("trust_events");
  old.erase("trust_lost_unix");
  auto older = JobFromRecord(old.dump());
  ASSERT_OK(older);
  EXPECT_TRUE(older->trust_events.empty());
  EXPECT_EQ(older->trust_lost_unix, 0);
}

TEST_F(JobsLifecycleTest, RepeatedEndReportChangesNothing) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  ASSERT_OK(jobs_->ReportVmEnded("h1", {job.vm_name, "guest_poweroff", "powered off"}));
  auto again = jobs_->ReportVmEnded("h1", {job.vm_name, "unknown", "x"});
  ASSERT_OK(again);
  EXPECT_EQ(again->end_reason, "guest_poweroff");
  EXPECT_EQ(again->end_text, "powered off");
}

TEST_F(JobsLifecycleTest, AnotherHostCannotEndOrDeleteTheVm) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  Job job = Running("h1");  // the least loaded, then the lowest id
  const std::string other = "h2";
  EXPECT_STATUS(jobs_->ReportVmEnded(other, {job.vm_name, "killed", ""}), StatusCode::kNotFound,
                "no such vm on this host");
  EXPECT_STATUS(jobs_->ReportVmDeleted(other, job.vm_name), StatusCode::kNotFound,
                "no such vm on this host");
  EXPECT_EQ(jobs_->GetJob(alice_, job.job_id)->state, JobState::kRunning);
}

TEST_F(JobsLifecycleTest, EndReportWithABadReasonIsRefused) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  EXPECT_STATUS(jobs_->ReportVmEnded("h1", {job.vm_name, "Killed by me", ""}),
                StatusCode::kInvalidArgument, "machine reason");
  EXPECT_EQ(jobs_->GetJob(alice_, job.job_id)->state, JobState::kRunning);
}

TEST_F(JobsLifecycleTest, CustomerStopIsAHostCommandUntilTheHostReportsTheEnd) {
  AddTrustedHost("h1", 1);
  Job job = Running("h1");
  EXPECT_EQ(jobs_->VmCommands("h1").at(0).action, "run");
  auto stopping = jobs_->StopVm(alice_, job.vm_name);  // by VM name
  ASSERT_OK(stopping);
  EXPECT_EQ(stopping->state, JobState::kStopping);
  EXPECT_EQ(stopping->wanted, VmWanted::kStopped);
  auto commands = jobs_->VmCommands("h1");
  ASSERT_EQ(commands.size(), 1u);
  EXPECT_EQ(commands[0].action, "stop");
  EXPECT_EQ(commands[0].vm_name, job.vm_name);
  EXPECT_TRUE(jobs_->VmCommands("h2").empty());
  // The VM still runs until the host says so: its slot is in use.
  EXPECT_EQ(Launch()->state, JobState::kQueued);
  auto stopped = jobs_->ReportVmEnded("h1", {job.vm_name, "stopped", "stopped by VmManager::Stop"});
  ASSERT_OK(stopped);
  EXPECT_EQ(stopped->state, JobState::kStopped);
  EXPECT_EQ(stopped->end_reason, "stopped_by_customer");
  EXPECT_TRUE(jobs_->VmCommands("h1").empty());
  EXPECT_OK(jobs_->StopVm(alice_, job.job_id));  // again: unchanged
  EXPECT_EQ(jobs_->GetJob(alice_, job.job_id)->state, JobState::kStopped);
}

TEST_F(JobsLifecycleTest, AHostStopTheCustomerDidNotAskForIsTheOperators) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  auto j = jobs_->ReportVmEnded("h1", {job.vm_name, "stopped", "stopped by VmManager::Stop"});
  ASSERT_OK(j);
  EXPECT_EQ(j->end_reason, "stopped_by_operator");
}

TEST_F(JobsLifecycleTest, AnotherCustomerCannotStopStartOrDeleteAlicesVm) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  for (const std::string& id : {job.job_id, job.vm_name}) {
    EXPECT_STATUS(jobs_->StopVm(bob_, id), StatusCode::kNotFound, "no such vm");
    EXPECT_STATUS(jobs_->StartVm(bob_, id), StatusCode::kNotFound, "no such vm");
    EXPECT_STATUS(jobs_->DeleteVm(bob_, id), StatusCode::kNotFound, "no such vm");
  }
  auto after = jobs_->GetJob(alice_, job.job_id);
  EXPECT_EQ(after->state, JobState::kRunning);
  EXPECT_EQ(after->wanted, VmWanted::kRunning);
  EXPECT_EQ(jobs_->VmCommands("h1").at(0).action, "run");
}

TEST_F(JobsLifecycleTest, StartPlacesTheJobAgainOnTheVmsHostWithAFreshGrant) {
  AddTrustedHost("h1");
  AddTrustedHost("h2");
  Job job = Running("h1");
  const std::string host = job.host_id;
  ASSERT_OK(jobs_->StopVm(alice_, job.job_id));
  ASSERT_OK(jobs_->ReportVmEnded(host, {job.vm_name, "stopped", ""}));
  Running("h1");  // h1 is now busier than h2
  const size_t grants = kms_.grants().size();
  auto started = jobs_->StartVm(alice_, job.job_id);
  ASSERT_OK(started);
  EXPECT_EQ(started->state, JobState::kPlaced);
  EXPECT_EQ(started->host_id, host);  // where the VM's files are, although the other is idle
  EXPECT_EQ(started->runs, 2);
  EXPECT_EQ(started->end_reason, "");
  ASSERT_EQ(kms_.grants().size(), grants + 1);
  EXPECT_EQ(kms_.grants().back().host_id, host);
  EXPECT_EQ(kms_.grants().back().job_id, job.job_id);
  EXPECT_EQ(jobs_->PendingJobs(host).size(), 1u);
  EXPECT_OK(jobs_->StartVm(alice_, job.job_id));  // again: unchanged
  EXPECT_EQ(kms_.grants().size(), grants + 1);
  // The new run goes through the launch states again.
  auto running = jobs_->ReportProgress(host, {job.job_id, JobState::kRunning, job.vm_name, "/s"});
  ASSERT_OK(running);
  EXPECT_EQ(running->state, JobState::kRunning);
}

TEST_F(JobsLifecycleTest, LateEndedReportOfAnEarlierRunDoesNotEndTheVmStartedAgain) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  ASSERT_OK(jobs_->StopVm(alice_, job.job_id));
  VmEndedReport first_run{job.vm_name, "stopped", "stopped by VmManager::Stop", 1};
  ASSERT_OK(jobs_->ReportVmEnded("h1", first_run));
  ASSERT_OK(jobs_->StartVm(alice_, job.job_id));
  auto running = jobs_->ReportProgress("h1", {job.job_id, JobState::kRunning, job.vm_name, "/s"});
  ASSERT_OK(running);
  ASSERT_EQ(running->runs, 2);
  // The first run's report again (late, or replayed), with its run and
  // without one (which counts as run 1): ignored.
  for (int64_t run : {int64_t{1}, int64_t{0}}) {
    VmEndedReport late = first_run;
    late.run = run;
    auto j = jobs_->ReportVmEnded("h1", late);
    ASSERT_OK(j);
    EXPECT_EQ(j->state, JobState::kRunning) << run;
    EXPECT_EQ(j->end_reason, "") << run;
  }
  EXPECT_EQ(jobs_->GetJob(alice_, job.job_id)->state, JobState::kRunning);
  // The current run's end is taken.
  auto ended = jobs_->ReportVmEnded("h1", {job.vm_name, "killed", "killed by signal 9", 2});
  ASSERT_OK(ended);
  EXPECT_EQ(ended->state, JobState::kStopped);
  EXPECT_EQ(ended->end_reason, "killed");
}

TEST_F(JobsLifecycleTest, DiskEventIsRecordedOncePerJobForItsHostOnly) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  const std::string host = "h1", other = "h2";
  EXPECT_STATUS(jobs_->ReportDiskEvent(other, {job.job_id, "chunk_auth_failed", "x"}),
                StatusCode::kNotFound, "no such job");
  EXPECT_STATUS(jobs_->ReportDiskEvent(host, {job.job_id, "Chunk failed!", "x"}),
                StatusCode::kInvalidArgument, "machine name");
  auto j = jobs_->ReportDiskEvent(host, {job.job_id, "chunk_auth_failed", "disk d1 chunk 3"});
  ASSERT_OK(j);
  ASSERT_EQ(j->disk_events.size(), 1u);
  EXPECT_EQ(j->disk_events[0], "chunk_auth_failed: disk d1 chunk 3");
  auto again = jobs_->ReportDiskEvent(host, {job.job_id, "chunk_auth_failed", "chunk 4"});
  ASSERT_OK(again);
  EXPECT_EQ(again->disk_events.size(), 1u);
  EXPECT_EQ(jobs_->GetJob(alice_, job.job_id)->disk_events.size(), 1u);
  EXPECT_EQ(jobs_->GetJob(alice_, job.job_id)->state, JobState::kRunning);
}

TEST_F(JobsLifecycleTest, StartOnlyStartsAStoppedVm) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  EXPECT_OK(jobs_->StartVm(alice_, job.job_id));  // running: unchanged
  ASSERT_OK(jobs_->DeleteVm(alice_, job.job_id));
  EXPECT_STATUS(jobs_->StartVm(alice_, job.job_id), StatusCode::kFailedPrecondition,
                "bad_state: cannot start a deleting job");
}

TEST_F(JobsLifecycleTest, DeleteOfARunningVmStopsItThenRemovesIt) {
  AddTrustedHost("h1", 1);
  Job job = Running("h1");
  auto deleting = jobs_->DeleteVm(alice_, job.job_id);
  ASSERT_OK(deleting);
  EXPECT_EQ(deleting->state, JobState::kDeleting);
  EXPECT_EQ(jobs_->VmCommands("h1").at(0).action, "delete");
  auto waiting = Launch();
  ASSERT_OK(waiting);
  EXPECT_EQ(waiting->state, JobState::kQueued);  // still running: slot in use
  auto ended = jobs_->ReportVmEnded("h1", {job.vm_name, "stopped", ""});
  ASSERT_OK(ended);
  EXPECT_EQ(ended->state, JobState::kDeleting);
  EXPECT_EQ(ended->end_reason, "stopped_by_customer");
  jobs_->Tick();  // the slot is free now
  EXPECT_EQ(jobs_->GetJob(alice_, waiting->job_id)->state, JobState::kPlaced);
  auto deleted = jobs_->ReportVmDeleted("h1", job.vm_name);
  ASSERT_OK(deleted);
  EXPECT_EQ(deleted->state, JobState::kDeleted);
  EXPECT_EQ(deleted->vm_host_id, "");
  EXPECT_OK(jobs_->DeleteVm(alice_, job.job_id));  // again: unchanged
}

TEST_F(JobsLifecycleTest, DeleteOfAQueuedJobIsImmediate) {
  auto job = Launch();  // no host: queued
  ASSERT_OK(job);
  ASSERT_EQ(job->state, JobState::kQueued);
  auto deleted = jobs_->DeleteVm(alice_, job->job_id);
  ASSERT_OK(deleted);
  EXPECT_EQ(deleted->state, JobState::kDeleted);
  AddTrustedHost("h1");
  jobs_->Tick();
  EXPECT_EQ(jobs_->GetJob(alice_, job->job_id)->state, JobState::kDeleted);
  EXPECT_TRUE(jobs_->PendingJobs("h1").empty());
}

TEST_F(JobsLifecycleTest, StopDuringLaunchAppliesOnceTheVmRuns) {
  AddTrustedHost("h1");
  auto job = Launch();
  ASSERT_OK(job);
  ASSERT_OK(jobs_->ReportProgress("h1", {job->job_id, JobState::kFetching}));
  auto asked = jobs_->StopVm(alice_, job->job_id);
  ASSERT_OK(asked);
  EXPECT_EQ(asked->state, JobState::kFetching);
  auto running = jobs_->ReportProgress("h1", {job->job_id, JobState::kRunning, "vm-x", "/s"});
  ASSERT_OK(running);
  EXPECT_EQ(running->state, JobState::kStopping);
  EXPECT_EQ(jobs_->VmCommands("h1").at(0).action, "stop");
}

TEST_F(JobsLifecycleTest, StoppingVmOfALostHostEndsAsHostLost) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  ASSERT_OK(jobs_->StopVm(alice_, job.job_id));
  clock_.AdvanceSeconds(31);
  jobs_->Tick();
  auto j = jobs_->GetJob(alice_, job.job_id);
  EXPECT_EQ(j->state, JobState::kStopped);
  EXPECT_EQ(j->end_reason, "host_lost");
}

TEST_F(JobsLifecycleTest, DeletedReportOfAVmTheCustomerStillWantedEndsItAsMissing) {
  AddTrustedHost("h1");
  Job job = Running("h1");
  auto j = jobs_->ReportVmDeleted("h1", job.vm_name);
  ASSERT_OK(j);
  EXPECT_EQ(j->state, JobState::kDeleted);
  EXPECT_EQ(j->end_reason, "vm_missing");
}

}  // namespace

// Issue 16: a KMS call that hangs (here: a grant held) does not hold the job
// manager's lock, so other hosts' polls and customers' status calls go on.
TEST_F(JobsTest, HungKmsGrantDoesNotStallPollsOrStatusCalls) {
  AddTrustedHost("h1");
  auto other = Launch();  // a job to ask about while the next one hangs
  ASSERT_OK(other);
  kms_.HoldGrants(true);
  auto launching = std::async(std::launch::async, [this] { return Launch(); });
  for (int i = 0; i < 2000 && kms_.grants_waiting() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(kms_.grants_waiting(), 1);
  auto poll = std::async(std::launch::async, [this] { return jobs_->PendingJobs("h1").size(); });
  ASSERT_EQ(poll.wait_for(std::chrono::seconds(2)), std::future_status::ready) << "host poll stalled";
  EXPECT_EQ(poll.get(), 1u);  // only the first job is placed yet
  auto status = std::async(std::launch::async, [&] { return jobs_->GetJob(alice_, other->job_id); });
  ASSERT_EQ(status.wait_for(std::chrono::seconds(2)), std::future_status::ready) << "status stalled";
  EXPECT_OK(status.get());
  auto tick = std::async(std::launch::async, [this] { jobs_->Tick(); });
  ASSERT_EQ(tick.wait_for(std::chrono::seconds(2)), std::future_status::ready) << "Tick stalled";
  kms_.HoldGrants(false);
  auto job = launching.get();
  ASSERT_OK(job);
  EXPECT_EQ(job->state, JobState::kPlaced);
  EXPECT_EQ(job->attempts.size(), 1u);
  EXPECT_EQ(kms_.grants().size(), 2u);  // one grant per job: the Tick did not place it again
}

TEST_F(JobsTest, JobStoppedWhileItsGrantIsPendingIsNotPlaced) {
  AddTrustedHost("h1");
  kms_.HoldGrants(true);
  auto launching = std::async(std::launch::async, [this] { return Launch(); });
  for (int i = 0; i < 2000 && kms_.grants_waiting() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(kms_.grants_waiting(), 1);
  auto all = jobs_->ListJobs(alice_);
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].state, JobState::kQueued);
  ASSERT_OK(jobs_->StopVm(alice_, (*all)[0].job_id));
  kms_.HoldGrants(false);
  auto job = launching.get();
  ASSERT_OK(job);
  EXPECT_EQ(job->state, JobState::kStopped);
  EXPECT_TRUE(jobs_->PendingJobs("h1").empty());
}

TEST_F(JobsTest, TwoPlacementsCannotTakeOneLastSlot) {
  AddTrustedHost("h1", /*capacity=*/1);
  kms_.HoldGrants(true);
  auto first = std::async(std::launch::async, [this] { return Launch(); });
  for (int i = 0; i < 2000 && kms_.grants_waiting() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(kms_.grants_waiting(), 1);
  auto second = std::async(std::launch::async, [this] { return Launch(); });
  ASSERT_EQ(second.wait_for(std::chrono::seconds(2)), std::future_status::ready);
  auto queued = second.get();
  ASSERT_OK(queued);
  EXPECT_EQ(queued->state, JobState::kQueued);  // the slot is reserved for the first
  kms_.HoldGrants(false);
  auto placed = first.get();
  ASSERT_OK(placed);
  EXPECT_EQ(placed->state, JobState::kPlaced);
  EXPECT_EQ(jobs_->PendingJobs("h1").size(), 1u);
}

}  // namespace vmseal::csp
