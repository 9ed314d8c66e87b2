// The service loop's logic with fakes for the agent and the portal.
#include "host/host_service.h"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
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
    info.state = vm::VmRunState::kRunning;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (vms.contains(info.name)) return AlreadyExistsError("vm exists");
      vms[info.name] = info;
    }
    on_update({.job_id = job.job_id, .phase = JobPhase::kRunning, .vm_name = info.name,
               .serial_log_path = info.serial_log_path});
    return info;
  }
  // Like VmManager: a stop of a running VM reports its end through on_end.
  Status StopVm(const std::string& name) override {
    std::unique_lock<std::mutex> lock(mu);
    auto it = vms.find(name);
    if (it == vms.end()) return NotFoundError("no such vm");
    stopped.push_back(name);
    if (it->second.state != vm::VmRunState::kRunning) return OkStatus();
    it->second.state = vm::VmRunState::kStopped;
    it->second.ended = true;
    it->second.end = {vm::VmEndReason::kStopped, 0, "stopped by VmManager::Stop", 0};
    const vm::VmEnd end = it->second.end;
    lock.unlock();
    if (on_end) on_end(name, end);
    return OkStatus();
  }
  Status DeleteVm(const std::string& name) override {
    RETURN_IF_ERROR(StopVm(name));
    std::lock_guard<std::mutex> lock(mu);
    vms.erase(name);
    deleted.push_back(name);
    return OkStatus();
  }
  StatusOr<std::vector<vm::VmInfo>> ListVms() override {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<vm::VmInfo> out;
    for (const auto& [name, v] : vms) out.push_back(v);
    return out;
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
  std::map<std::string, vm::VmInfo> vms;
  std::vector<std::string> stopped, deleted;
  std::function<void(const std::string&, const vm::VmEnd&)> on_end;
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
  StatusOr<PortalPoll> Poll() override {
    ASSIGN_OR_RETURN(std::vector<PortalJob> jobs, PollJobs());
    std::lock_guard<std::mutex> lock(mu);
    return PortalPoll{std::move(jobs), vm_commands};
  }
  Status ReportVmEnded(const std::string& vm_name, const std::string& reason,
                       const std::string& text, int64_t) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    ended.push_back(vm_name + ":" + reason);
    last_end_text = text;
    return OkStatus();
  }
  Status ReportVmDeleted(const std::string& vm_name) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable) return UnavailableError("portal down");
    deleted.push_back(vm_name);
    return OkStatus();
  }
  Status ReportConsole(const std::string& vm_name, const std::string& text) override {
    std::lock_guard<std::mutex> lock(mu);
    if (!reachable || refuse_console) return UnavailableError("portal down");
    consoles.emplace_back(vm_name, text);
    return OkStatus();
  }
  std::vector<std::string> Ended() {
    std::lock_guard<std::mutex> lock(mu);
    return ended;
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
  std::vector<PortalVmCommand> vm_commands;
  std::vector<std::string> ended, deleted;
  std::string last_end_text;
  std::vector<std::pair<std::string, std::string>> consoles;  // (vm, text) relayed
  bool refuse_console = false;
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

// --- VM ends and the portal's VM commands (docs/protocol.md §6) ---

vm::VmEnd EndOf(vm::VmEndReason reason, const std::string& text) {
  vm::VmEnd end;
  end.reason = reason;
  end.text = text;
  return end;
}

TEST_F(HostServiceTest, VmEndReachesThePortalAtOnceWhileTheServiceRuns) {
  HostServiceOptions o;
  o.poll_interval_ms = 60000;  // no poll helps: the reporter thread sends it
  auto svc = Make(o);
  std::thread runner([&] { EXPECT_OK(svc->Run()); });
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (svc->stats().registrations == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const auto t0 = std::chrono::steady_clock::now();
  svc->OnVmEnded("vm-1", EndOf(vm::VmEndReason::kKilled, "killed by signal 9"));
  while (portal_.Ended().empty() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - t0).count();
  svc->Stop();
  runner.join();
  ASSERT_EQ(portal_.Ended(), std::vector<std::string>{"vm-1:killed"});
  EXPECT_EQ(portal_.last_end_text, "killed by signal 9");
  EXPECT_LT(ms, 1000);
  EXPECT_EQ(svc->stats().vm_ends_reported, 1);
}

TEST_F(HostServiceTest, VmEndOwedWhileThePortalIsDownIsSentOnceItIsBack) {
  auto svc = Make();
  portal_.reachable = false;
  svc->OnVmEnded("vm-1", EndOf(vm::VmEndReason::kGuestPowerOff, "guest powered off"));
  EXPECT_EQ(svc->FlushVmEnds().code(), StatusCode::kUnavailable);
  EXPECT_EQ(svc->FlushVmEnds().code(), StatusCode::kUnavailable);
  portal_.reachable = true;
  EXPECT_OK(svc->FlushVmEnds());
  EXPECT_OK(svc->FlushVmEnds());
  EXPECT_EQ(portal_.Ended(), std::vector<std::string>{"vm-1:guest_poweroff"});
}

TEST_F(HostServiceTest, PollReportsVmsThatEndedOrVanishedWithoutThePortalHearing) {
  auto svc = Make();
  // Ended while no agent ran (its record has the reason), and one an
  // operator deleted; a third still runs.
  vm::VmInfo gone;
  gone.name = "vm-a";
  gone.state = vm::VmRunState::kStopped;
  gone.ended = true;
  gone.end = EndOf(vm::VmEndReason::kUnknown, "qemu ended (not a child of this agent)");
  agent_.vms["vm-a"] = gone;
  vm::VmInfo alive;
  alive.name = "vm-c";
  alive.state = vm::VmRunState::kRunning;
  agent_.vms["vm-c"] = alive;
  portal_.vm_commands = {{"job-a", "vm-a", PortalVmCommand::Action::kRun},
                         {"job-b", "vm-b", PortalVmCommand::Action::kRun},
                         {"job-c", "vm-c", PortalVmCommand::Action::kRun}};
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(portal_.Ended(), std::vector<std::string>{"vm-a:unknown"});
  EXPECT_EQ(portal_.deleted, std::vector<std::string>{"vm-b"});
  EXPECT_TRUE(agent_.stopped.empty());
  EXPECT_TRUE(agent_.deleted.empty());
}

TEST_F(HostServiceTest, StopCommandStopsTheVmAndReportsItsEnd) {
  auto svc = Make();
  agent_.on_end = [&](const std::string& n, const vm::VmEnd& e) { svc->OnVmEnded(n, e); };
  vm::VmInfo v;
  v.name = "vm-1";
  v.state = vm::VmRunState::kRunning;
  agent_.vms["vm-1"] = v;
  portal_.vm_commands = {{"job-1", "vm-1", PortalVmCommand::Action::kStop}};
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(agent_.stopped, std::vector<std::string>{"vm-1"});
  EXPECT_EQ(portal_.Ended(), std::vector<std::string>{"vm-1:stopped"});
  // Until the portal has it, the command repeats; the VM is not stopped twice
  // and its end is reported again from its record (harmless).
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(agent_.stopped, std::vector<std::string>{"vm-1"});
  EXPECT_EQ(portal_.Ended().size(), 2u);
}

TEST_F(HostServiceTest, DeleteCommandRemovesTheVmAndReportsItDeleted) {
  auto svc = Make();
  agent_.on_end = [&](const std::string& n, const vm::VmEnd& e) { svc->OnVmEnded(n, e); };
  vm::VmInfo v;
  v.name = "vm-1";
  v.state = vm::VmRunState::kRunning;
  agent_.vms["vm-1"] = v;
  portal_.vm_commands = {{"job-1", "vm-1", PortalVmCommand::Action::kDelete}};
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(agent_.deleted, std::vector<std::string>{"vm-1"});
  EXPECT_TRUE(agent_.vms.empty());
  EXPECT_EQ(portal_.deleted, std::vector<std::string>{"vm-1"});
  EXPECT_EQ(svc->stats().vm_deletes_reported, 1);
}

TEST_F(HostServiceTest, AStartedJobComesAgainAsANewAttemptAndReplacesTheStoppedVm) {
  auto svc = Make();
  portal_.pending = {{.job_id = "job-1", .image_id = "img", .attempt = 1}};
  ASSERT_OK(svc->PollOnce());
  ASSERT_OK(svc->PollOnce());  // the same attempt is not run twice
  EXPECT_EQ(agent_.ran.size(), 1u);
  ASSERT_OK(agent_.StopVm("vm-job-1"));
  portal_.pending = {{.job_id = "job-1", .image_id = "img", .attempt = 2, .vm_name = "vm-job-1"}};
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(agent_.ran.size(), 2u);
  EXPECT_EQ(agent_.deleted, std::vector<std::string>{"vm-job-1"});
  ASSERT_TRUE(agent_.vms.contains("vm-job-1"));
  EXPECT_EQ(agent_.vms["vm-job-1"].state, vm::VmRunState::kRunning);
}

// --- the serial-console relay (docs/console.md "Serial console") ---

class ConsoleRelayTest : public HostServiceTest {
 protected:
  // A running VM whose serial log is `text` (a file under the test's dir).
  void RunningVm(const std::string& name, const std::string& text,
                 vm::VmRunState state = vm::VmRunState::kRunning) {
    const std::string log = dir_.File(name + ".serial.log");
    WriteLog(log, text);
    vm::VmInfo v;
    v.name = name;
    v.serial_log_path = log;
    v.state = state;
    std::lock_guard<std::mutex> lock(agent_.mu);
    agent_.vms[name] = v;
  }
  void WriteLog(const std::string& path, const std::string& text) {
    vmseal::testing::WriteFileOrDie(path, text);
  }
  std::vector<std::pair<std::string, std::string>> Relayed() {
    std::lock_guard<std::mutex> lock(portal_.mu);
    return portal_.consoles;
  }
};

TEST_F(ConsoleRelayTest, RelaysARunningVmsSerialLogOncePerGrowth) {
  auto svc = Make();
  RunningVm("vm-a", "booting\n");
  ASSERT_OK(svc->PollOnce().status());
  ASSERT_EQ(Relayed().size(), 1u);
  EXPECT_EQ(Relayed()[0].first, "vm-a");
  EXPECT_EQ(Relayed()[0].second, "booting\n");
  // Unchanged log: nothing is sent again.
  ASSERT_OK(svc->PollOnce().status());
  EXPECT_EQ(Relayed().size(), 1u);
  // The log grew: the new text is relayed.
  WriteLog(dir_.File("vm-a.serial.log"), "booting\nMARKER-42\n");
  ASSERT_OK(svc->PollOnce().status());
  ASSERT_EQ(Relayed().size(), 2u);
  EXPECT_EQ(Relayed()[1].second, "booting\nMARKER-42\n");
}

TEST_F(ConsoleRelayTest, RelaysOnlyTheLast16KiBOfALongLog) {
  auto svc = Make();
  const std::string head(40 << 10, 'h');
  const std::string tail = std::string((16 << 10) - 4, 't') + "END\n";
  RunningVm("vm-a", head + tail);
  ASSERT_OK(svc->PollOnce().status());
  ASSERT_EQ(Relayed().size(), 1u);
  EXPECT_EQ(Relayed()[0].second.size(), size_t{16} << 10);
  EXPECT_EQ(Relayed()[0].second, tail);
}

TEST_F(ConsoleRelayTest, StoppedVmsAndMissingLogsAreNotRelayed) {
  auto svc = Make();
  RunningVm("vm-stopped", "old text\n", vm::VmRunState::kStopped);
  {
    vm::VmInfo v;
    v.name = "vm-nolog";
    v.serial_log_path = dir_.File("absent.serial.log");
    v.state = vm::VmRunState::kRunning;
    std::lock_guard<std::mutex> lock(agent_.mu);
    agent_.vms[v.name] = v;
  }
  ASSERT_OK(svc->PollOnce().status());
  EXPECT_TRUE(Relayed().empty());
}

TEST_F(ConsoleRelayTest, AFailedReportIsRetriedAtTheNextPoll) {
  auto svc = Make();
  RunningVm("vm-a", "hello\n");
  {
    // The portal refuses the console report only (polls still answer).
    std::lock_guard<std::mutex> lock(portal_.mu);
    portal_.refuse_console = true;
  }
  ASSERT_OK(svc->PollOnce().status());
  EXPECT_TRUE(Relayed().empty());
  {
    std::lock_guard<std::mutex> lock(portal_.mu);
    portal_.refuse_console = false;
  }
  ASSERT_OK(svc->PollOnce().status());
  ASSERT_EQ(Relayed().size(), 1u);
  EXPECT_EQ(Relayed()[0].second, "hello\n");
}

}  // namespace
}  // namespace vmseal::host
