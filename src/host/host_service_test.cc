// The service loop's logic with fakes for the agent and the portal.
#include "host/host_service.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "testing/test_util.h"

namespace vmseal::host {
namespace {

using ::vmseal::testing::TempDir;

class FakeAgent final : public JobRunner {
 public:
  Status Enroll() override {
    std::lock_guard<std::mutex> lock(mu);
    ++enrolls;
    kms_knows_host = enroll_result.ok();
    return enroll_result;
  }
  Status Reattest() override {
    std::lock_guard<std::mutex> lock(mu);
    ++attests;
    if (!kms_knows_host) return PermissionDeniedError("not_enrolled: host has no activated AK");
    return attest_result;
  }
  // Goes through fetching -> attesting -> decrypting -> launching -> running,
  // or fails in `fail_in` with `failures[job_id]`.
  StatusOr<vm::VmInfo> RunJob(const Job& job, const JobUpdateFn& on_update) override {
    ran.push_back(job.job_id);
    last_job = job;
    auto it = failures.find(job.job_id);
    for (JobPhase p : {JobPhase::kFetching, JobPhase::kAttesting, JobPhase::kDecrypting,
                       JobPhase::kLaunching}) {
      on_update({.job_id = job.job_id, .phase = p});
      if (it != failures.end() && it->second.first == p) {
        on_update({.job_id = job.job_id, .phase = JobPhase::kFailed,
                   .reason = std::string(it->second.second.message())});
        return it->second.second;
      }
    }
    vm::VmInfo info;
    info.name = "vm-" + job.job_id;
    info.serial_log_path = "/state/run/vm-" + job.job_id + ".serial.log";
    on_update({.job_id = job.job_id, .phase = JobPhase::kRunning, .vm_name = info.name,
               .serial_log_path = info.serial_log_path});
    return info;
  }

  std::mutex mu;
  int enrolls = 0;
  int attests = 0;
  bool kms_knows_host = false;
  Status enroll_result;
  Status attest_result;
  std::vector<std::string> ran;
  Job last_job;
  std::map<std::string, std::pair<JobPhase, Status>> failures;
};

class FakePortal final : public PortalApi {
 public:
  Status Register(const HostRegistrationInfo& info) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    registered = true;
    last_registration = info;
    ++registrations;
    return OkStatus();
  }
  Status Heartbeat() override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    if (!registered) return NotFoundError("unknown host");
    ++heartbeats;
    return OkStatus();
  }
  StatusOr<std::vector<PortalJob>> PollJobs() override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    return pending;
  }
  Status ReportProgress(const JobUpdate& u) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    progress.push_back(u.job_id + ":" + JobPhaseName(u.phase) +
                       (u.vm_name.empty() ? "" : ":" + u.vm_name));
    return OkStatus();
  }
  Status ReportRefusal(const std::string& job_id, const std::string& reason,
                       const std::string& message) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    refusals.push_back(job_id + ":" + reason);
    last_refusal_message = message;
    return OkStatus();
  }

  std::mutex mu;
  bool reachable = true;
  bool registered = false;
  int registrations = 0;
  int heartbeats = 0;
  HostRegistrationInfo last_registration;
  std::vector<PortalJob> pending;
  std::vector<std::string> progress;
  std::vector<std::string> refusals;
  std::string last_refusal_message;
};

class HostServiceTest : public ::testing::Test {
 protected:
  std::unique_ptr<HostService> Make(HostServiceOptions o = {}) {
    o.registration.capacity = {.vcpus = 4, .memory_mib = 4096, .slots = 2};
    o.registration.tags = {"region=eu-west"};
    if (o.enrollment_marker_path.empty()) {
      o.enrollment_marker_path = dir_.File("enrolled");
      o.enrollment_id = "kms-1/ak-1";
    }
    auto s = HostService::Create(o, &agent_, &portal_);
    EXPECT_OK(s);
    return std::move(s).value();
  }

  TempDir dir_;
  FakeAgent agent_;
  FakePortal portal_;
};

TEST_F(HostServiceTest, StartEnrollsRegistersAndAttests) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  EXPECT_EQ(agent_.enrolls, 1);
  EXPECT_EQ(agent_.attests, 1);
  EXPECT_TRUE(portal_.registered);
  EXPECT_EQ(portal_.last_registration.capacity.slots, 2u);
  EXPECT_EQ(portal_.last_registration.tags, std::vector<std::string>{"region=eu-west"});
  EXPECT_EQ(testing::ReadFileOrDie(dir_.File("enrolled")), "kms-1/ak-1");
}

TEST_F(HostServiceTest, RestartWithMatchingMarkerSkipsEnrollment) {
  testing::WriteFileOrDie(dir_.File("enrolled"), "kms-1/ak-1");
  agent_.kms_knows_host = true;
  auto svc = Make();
  ASSERT_OK(svc->Start());
  EXPECT_EQ(agent_.enrolls, 0);
  EXPECT_EQ(svc->stats().reattestations, 1);
}

TEST_F(HostServiceTest, MarkerOfAnotherKmsOrAkEnrollsAgain) {
  testing::WriteFileOrDie(dir_.File("enrolled"), "kms-0/ak-old");
  auto svc = Make();
  ASSERT_OK(svc->Start());
  EXPECT_EQ(agent_.enrolls, 1);
  EXPECT_EQ(testing::ReadFileOrDie(dir_.File("enrolled")), "kms-1/ak-1");
}

TEST_F(HostServiceTest, FailedEnrollmentStopsStartAndWritesNoMarker) {
  agent_.enroll_result = PermissionDeniedError("EK certificate does not chain");
  auto svc = Make();
  EXPECT_STATUS(svc->Start(), StatusCode::kPermissionDenied, "enroll");
  EXPECT_FALSE(portal_.registered);
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("enrolled")));
}

TEST_F(HostServiceTest, KmsThatForgotTheHostGetsANewEnrollment) {
  testing::WriteFileOrDie(dir_.File("enrolled"), "kms-1/ak-1");
  agent_.kms_knows_host = false;  // e.g. the KMS database was reset
  auto svc = Make();
  ASSERT_OK(svc->Start());
  EXPECT_EQ(agent_.enrolls, 1);
  EXPECT_EQ(agent_.attests, 2);
  EXPECT_EQ(svc->stats().reattestations, 1);
}

TEST_F(HostServiceTest, HeartbeatRegistersAgainWhenThePortalForgotTheHost) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  portal_.registered = false;  // portal restarted
  ASSERT_OK(svc->HeartbeatOnce());
  EXPECT_EQ(portal_.registrations, 2);
  EXPECT_EQ(portal_.heartbeats, 1);
}

TEST_F(HostServiceTest, JobPhasesGoToThePortalAndRunningNamesTheVm) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  portal_.pending = {{.job_id = "j1", .image_id = "img-1", .customer_id = "c1",
                      .tagged_image_id = "sealed-1"}};
  auto ran = svc->PollOnce();
  ASSERT_OK(ran);
  EXPECT_EQ(*ran, 1);
  EXPECT_EQ(portal_.progress,
            (std::vector<std::string>{"j1:fetching", "j1:attesting", "j1:decrypting",
                                      "j1:launching", "j1:running:vm-j1"}));
  EXPECT_TRUE(portal_.refusals.empty());
  EXPECT_EQ(agent_.last_job.tenant, "c1");
  EXPECT_EQ(agent_.last_job.expected_tag_image_id, "sealed-1");
  EXPECT_EQ(svc->stats().jobs_running, 1);
}

TEST_F(HostServiceTest, AJobIsRunOnceEvenIfStillListed) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  portal_.pending = {{.job_id = "j1", .image_id = "img-1"}};
  ASSERT_OK(svc->PollOnce());
  auto again = svc->PollOnce();
  ASSERT_OK(again);
  EXPECT_EQ(*again, 0);
  EXPECT_EQ(agent_.ran, std::vector<std::string>{"j1"});
}

TEST_F(HostServiceTest, DeniedReleaseIsRefusedWithTheKmsReason) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  agent_.failures["j2"] = {JobPhase::kAttesting,
                           PermissionDeniedError("pcr_policy: PCR 7 matches no flavor")};
  portal_.pending = {{.job_id = "j2", .image_id = "img-2"}};
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(portal_.refusals, std::vector<std::string>{"j2:pcr_policy"});
  EXPECT_NE(portal_.last_refusal_message.find("PCR 7"), std::string::npos);
  // "failed" is not sent as progress: the refusal is what moves the job.
  EXPECT_EQ(portal_.progress.back(), "j2:attesting");
  EXPECT_EQ(svc->stats().jobs_refused, 1);
}

TEST_F(HostServiceTest, FetchAndLaunchFailuresAreRefusedWithThePhaseReason) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  agent_.failures["j3"] = {JobPhase::kLaunching, FailedPreconditionError("qemu exited")};
  agent_.failures["j4"] = {JobPhase::kFetching, UnavailableError("fetch: connection reset")};
  portal_.pending = {{.job_id = "j3", .image_id = "img-3"}, {.job_id = "j4", .image_id = "img-4"}};
  auto ran = svc->PollOnce();
  ASSERT_OK(ran);
  EXPECT_EQ(*ran, 2);
  EXPECT_EQ(portal_.refusals,
            (std::vector<std::string>{"j3:launch_failed", "j4:fetch_failed"}));
}

TEST_F(HostServiceTest, RefusalIsRetriedAtTheNextPollWhenThePortalWasDown) {
  auto svc = Make();
  ASSERT_OK(svc->Start());
  // A job whose run makes the portal unreachable (the network drops while
  // the host works); its refusal must not be lost.
  class Agent final : public JobRunner {
   public:
    explicit Agent(FakePortal* p) : portal(p) {}
    Status Enroll() override { return OkStatus(); }
    Status Reattest() override { return OkStatus(); }
    StatusOr<vm::VmInfo> RunJob(const Job&, const JobUpdateFn&) override {
      portal->reachable = false;
      return PermissionDeniedError("tags: host lacks region=eu-west");
    }
    FakePortal* portal;
  } agent(&portal_);
  HostServiceOptions o;
  auto s = HostService::Create(o, &agent, &portal_);
  ASSERT_OK(s);
  portal_.pending = {{.job_id = "j5", .image_id = "img-5"}};
  ASSERT_OK((*s)->PollOnce());
  EXPECT_TRUE(portal_.refusals.empty());
  portal_.reachable = true;
  portal_.pending.clear();
  ASSERT_OK((*s)->PollOnce());
  EXPECT_EQ(portal_.refusals, std::vector<std::string>{"j5:tags"});
}

TEST(RefusalReasonTest, NamedReasonsWinOverPhase) {
  EXPECT_EQ(RefusalReasonFor(PermissionDeniedError("pcr_policy: x"), JobPhase::kAttesting),
            "pcr_policy");
  EXPECT_EQ(RefusalReasonFor(PermissionDeniedError("release: nonce_used: x"),
                             JobPhase::kAttesting),
            "nonce_used");
  EXPECT_EQ(RefusalReasonFor(FailedPreconditionError("unencrypted_image: policy"),
                             JobPhase::kFetching),
            "unencrypted_image");
  EXPECT_EQ(RefusalReasonFor(FailedPreconditionError("image_mismatch: a vs b"),
                             JobPhase::kFetching),
            "image_mismatch");
}

TEST(RefusalReasonTest, PhaseGivesTheReasonOtherwise) {
  EXPECT_EQ(RefusalReasonFor(UnavailableError("fetch: reset"), JobPhase::kFetching),
            "fetch_failed");
  EXPECT_EQ(RefusalReasonFor(DataLossError("package: manifest digest mismatch"),
                             JobPhase::kFetching),
            "package_rejected");
  EXPECT_EQ(RefusalReasonFor(UnavailableError("connect refused"), JobPhase::kAttesting),
            "kms_unavailable");
  EXPECT_EQ(RefusalReasonFor(PermissionDeniedError("denied"), JobPhase::kAttesting),
            "release_denied");
  EXPECT_EQ(RefusalReasonFor(PermissionDeniedError("decryption failed"),
                             JobPhase::kDecrypting),
            "decrypt_failed");
  EXPECT_EQ(RefusalReasonFor(FailedPreconditionError("qemu exited"), JobPhase::kLaunching),
            "launch_failed");
}

TEST_F(HostServiceTest, RunHeartbeatsReattestsAndStopsOnRequest) {
  HostServiceOptions o;
  o.heartbeat_interval_ms = 20;
  o.reattest_interval_ms = 30;
  o.poll_interval_ms = 10;
  auto svc = Make(o);
  Status result = UnknownError("not returned");
  std::thread runner([&] { result = svc->Run(); });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline &&
         (svc->stats().heartbeats < 3 || svc->stats().reattestations < 3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  svc->Stop();
  runner.join();
  EXPECT_OK(result);
  EXPECT_GE(svc->stats().heartbeats, 3);
  EXPECT_GE(svc->stats().reattestations, 3);
}

TEST_F(HostServiceTest, RunRetriesStartUntilThePortalIsReachable) {
  portal_.reachable = false;
  HostServiceOptions o;
  o.retry_delay_ms = 10;
  o.poll_interval_ms = 10;
  auto svc = Make(o);
  std::thread runner([&] { (void)svc->Run(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(svc->stats().registrations, 0);
  {
    std::lock_guard<std::mutex> lock(portal_.mu);
    portal_.reachable = true;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline && svc->stats().registrations == 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  svc->Stop();
  runner.join();
  EXPECT_EQ(svc->stats().registrations, 1);
  EXPECT_EQ(agent_.enrolls, 1);  // enrolled once, not once per retry
}

TEST_F(HostServiceTest, StopBeforeRunReturnsAtOnce) {
  auto svc = Make();
  svc->Stop();
  EXPECT_OK(svc->Run());
  EXPECT_FALSE(portal_.registered);
}

}  // namespace
}  // namespace vmseal::host
