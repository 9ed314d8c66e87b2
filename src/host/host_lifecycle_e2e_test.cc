// The VM lifecycle end to end with real parts (docs/protocol.md §6): the
// KMS (HTTPS, SQLite), the portal (TLS, host mTLS), the host daemon as
// `vmseal host serve` assembles it (swtpm, qemu with TCG) and the sealed
// sample image. A VM that ends by any path frees its slot at the portal at
// once and its job says why; customers stop, start and delete their VMs, and
// only their own.
#include <fcntl.h>
#include <httplib.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <functional>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "crypto/keys.h"
#include "csp/kms_client.h"
#include "csp/ovf_package_verifier.h"
#include "csp/portal_server.h"
#include "host/host_daemon.h"
#include "host/https_kms_client.h"
#include "host/portal_client.h"
#include "kms/internal/mini_ca.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "ovf/package.h"
#include "ovf/signature.h"
#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "testing/test_util.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::host {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using ::vmseal::testing::TempDir;

int64_t MsSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// Alive and not a zombie.
bool PidAlive(pid_t pid) {
  if (pid <= 0 || ::kill(pid, 0) != 0) return false;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

class HostLifecycleE2eTest : public ::testing::Test {
 protected:
  // The sample images (one idles, one powers itself off after its marker),
  // built once per binary and cached in the build tree.
  static void SetUpTestSuite() {
    const std::string dir = VMSEAL_HOST_E2E_CACHE_DIR;
    fs::create_directories(dir);
    image_ = dir + "/sample.img";
    poweroff_image_ = dir + "/sample-poweroff.img";
    const std::string script = vmseal::testing::SourceDir() + "/scripts/build-sample-image.sh";
    int lock_fd = ::open((dir + "/sample.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(lock_fd, 0);
    ASSERT_EQ(::flock(lock_fd, LOCK_EX), 0);
    std::error_code ec;
    for (const auto& [img, extra] : {std::pair<std::string, std::vector<std::string>>{image_, {}},
                                     {poweroff_image_, {"--poweroff"}}}) {
      if (fs::exists(img) && fs::exists(img + ".marker") &&
          fs::last_write_time(img, ec) >= fs::last_write_time(script, ec)) {
        continue;
      }
      std::vector<std::string> argv = {script, img};
      argv.insert(argv.end(), extra.begin(), extra.end());
      std::string out;
      int rc = vmseal::testing::RunCommand(argv, &out, 600);
      if (rc != 0) ::close(lock_fd);
      ASSERT_EQ(rc, 0) << out;
    }
    ::close(lock_fd);
  }

  void SetUp() override { StartAll(/*slots=*/1); }

  void StartAll(uint32_t slots) {
    auto ca = kms::internal::CreateRootCa("lifecycle ca", 30);
    ASSERT_OK(ca);
    ca_ = *std::move(ca);
    Write("ca.pem", ca_.cert_pem);
    Identity("host", "host-1", "host", false);
    Identity("operator", "op", "op", false);
    Identity("portal", "portal-1", "portal", false);
    Identity("kms", "kms", "kms-server", true);
    Identity("portal", "portal", "portal-server", true);

    auto store = kms::Store::Open(dir_.File("kms.db"));
    ASSERT_OK(store);
    store_ = *std::move(store);
    auto kek = kms::KekFromBytes(SecretBytes::Random(kms::kKekBytes));
    ASSERT_OK(kek);
    kek_ = *std::move(kek);
    auto tpm = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
    ASSERT_OK(tpm);
    swtpm_ = *std::move(tpm);
    kms::KmsService::Options ko;
    ko.ek_ca_bundle_pem = swtpm_->ca_bundle_pem();
    auto service = kms::KmsService::Create(
        ko, store_.get(), kek_.get(), {ca_.cert_pem, SecretBytes(ca_.key_pem.UnsafeSpan())});
    ASSERT_OK(service);
    kms_ = *std::move(service);
    net::HttpsServer::Options so;
    so.cert_pem = vmseal::testing::ReadFileOrDie(dir_.File("kms-server.pem"));
    so.key_pem = SecretBytes(crypto::AsBytes(
        vmseal::testing::ReadFileOrDie(dir_.File("kms-server-key.pem"))));
    so.client_ca_pem = ca_.cert_pem;
    so.threads = 4;
    auto server = net::HttpsServer::Create(std::move(so));
    ASSERT_OK(server);
    kms_server_ = *std::move(server);
    kms::RegisterKmsRoutes(kms_.get(), kms_server_.get());
    auto port = kms_server_->Start();
    ASSERT_OK(port);
    kms_port_ = *port;
    {
      net::HttpsClient::Options o;
      o.port = kms_port_;
      o.ca_pem = ca_.cert_pem;
      o.cert_pem = vmseal::testing::ReadFileOrDie(dir_.File("op.pem"));
      o.key_pem = SecretBytes(
          crypto::AsBytes(vmseal::testing::ReadFileOrDie(dir_.File("op-key.pem"))));
      auto c = net::HttpsClient::Create(std::move(o));
      ASSERT_OK(c);
      op_ = *std::move(c);
    }

    auto portal_kms = csp::NewHttpsKmsClient({.url = "https://127.0.0.1:" +
                                                     std::to_string(kms_port_),
                                              .ca_cert_file = dir_.File("ca.pem"),
                                              .cert_file = dir_.File("portal.pem"),
                                              .key_file = dir_.File("portal-key.pem")});
    ASSERT_OK(portal_kms);
    portal_kms_ = *std::move(portal_kms);
    csp::PortalServer::Options po;
    po.data_dir = dir_.File("portal");
    po.argon2_m_cost_kib = 64;
    po.tls_cert_file = dir_.File("portal-server.pem");
    po.tls_key_file = dir_.File("portal-server-key.pem");
    po.client_ca_file = dir_.File("ca.pem");
    po.trust_check_interval_seconds = 1;
    po.trust_stop_timeout_seconds = trust_stop_timeout_seconds_;
    auto portal = csp::PortalServer::Create(std::move(po), &verifier_, portal_kms_.get());
    ASSERT_OK(portal);
    portal_ = *std::move(portal);
    ASSERT_OK(portal_->Start());
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline && !Client()->Get("/v1/kms/ca")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }

    config_.portal_url = "https://127.0.0.1:" + std::to_string(portal_->port());
    config_.kms_url = "https://127.0.0.1:" + std::to_string(kms_port_);
    config_.ca_file = dir_.File("ca.pem");
    config_.cert_file = dir_.File("host.pem");
    config_.key_file = dir_.File("host-key.pem");
    config_.tpm_tcti = swtpm_->tcti();
    config_.state_dir = dir_.File("hs");
    config_.image_store_dir = dir_.File("img");
    config_.pcr_selection = {0, 7};
    config_.heartbeat_interval_seconds = 0.5;
    config_.reattest_interval_seconds = 5;
    config_.poll_interval_seconds = 0.2;
    config_.accel = "tcg";
    config_.nbd_plugin = VMSEAL_NBD_PLUGIN_PATH;
    config_.capacity = HostCapacity{.vcpus = 2, .memory_mib = 2048, .slots = slots};
    ASSERT_NO_FATAL_FAILURE(StartDaemon());
  }

  void StartDaemon() {
    auto daemon = HostDaemon::Create(config_, [](const KmsClientSettings& s) {
      return NewHttpsKmsClient({.url = s.url,
                                .ca_cert_file = s.ca_cert_file,
                                .cert_file = s.cert_file,
                                .key_file = s.key_file,
                                .host_id = s.host_id});
    });
    ASSERT_OK(daemon);
    daemon_ = *std::move(daemon);
  }

  void RunService() {
    runner_ = std::thread([this] { EXPECT_OK(daemon_->Run()); });
  }
  void StopService() {
    if (daemon_ != nullptr) daemon_->Stop();
    if (runner_.joinable()) runner_.join();
  }

  void TearDown() override {
    StopService();
    if (daemon_ != nullptr) {
      auto vms = daemon_->vms()->List();
      if (vms.ok()) {
        for (const auto& v : *vms) (void)daemon_->vms()->Delete(v.name);
      }
    }
    if (portal_) portal_->Stop();
    if (kms_server_) kms_server_->Stop();
  }

  void Write(const std::string& name, const std::string& data) {
    ASSERT_OK(WriteStringToFileAtomic(Env::Default(), dir_.File(name), data, 0600));
  }
  void Identity(const std::string& role, const std::string& cn, const std::string& prefix,
                bool server) {
    kms::internal::LeafOptions lo{.common_name = cn, .organizational_unit = role};
    if (server) {
      lo.ip_addresses = {"127.0.0.1"};
      lo.server = true;
    }
    auto id = kms::internal::IssueLeaf(ca_, lo);
    ASSERT_OK(id);
    Write(prefix + ".pem", id->cert_pem);
    Write(prefix + "-key.pem",
          std::string(reinterpret_cast<const char*>(id->key_pem.UnsafeData()),
                      id->key_pem.size()));
  }

  std::unique_ptr<httplib::SSLClient> Client() {
    auto c = std::make_unique<httplib::SSLClient>("127.0.0.1", portal_->port());
    c->set_ca_cert_path(dir_.File("ca.pem").c_str());
    c->enable_server_certificate_verification(true);
    c->set_read_timeout(60, 0);
    return c;
  }

  struct Customer {
    std::string customer_id;
    std::string public_key_pem;
    httplib::Headers auth;
    // The package-signing key made on the customer's machine, and the KMS's
    // certificate of it.
    std::shared_ptr<crypto::PrivateKey> signing_key;
    std::string signing_chain_pem;
  };
  Customer RegisterCustomer() {
    Customer out;
    auto c = Client();
    // With a package-signing key made here, as `vmseal customer register` does.
    auto signing = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    EXPECT_OK(signing);
    if (!signing.ok()) return out;
    auto proof = crypto::Sign(*signing, crypto::SignatureDigest::kSha256,
                              ovf::SigningKeyProofMessage(signing->Public()));
    EXPECT_OK(proof);
    if (!proof.ok()) return out;
    json body = {{"signing_public_key_pem", signing->Public().ToPem()},
                 {"signing_key_proof", crypto::Base64Encode(*proof)}};
    out.signing_key = std::make_shared<crypto::PrivateKey>(*std::move(signing));
    auto reg = c->Post("/v1/register", body.dump(), "application/json");
    EXPECT_TRUE(reg && reg->status == 201) << (reg ? reg->body : "no answer");
    if (!reg || reg->status != 201) return out;
    json r = json::parse(reg->body);
    out.customer_id = r["customer_id"];
    out.public_key_pem = r["key"]["public_key_pem"];
    out.signing_chain_pem = r["signing_key"]["cert_pem"];
    json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
    auto res = c->Post("/v1/login", login.dump(), "application/json");
    EXPECT_TRUE(res && res->status == 200);
    if (res && res->status == 200) {
      out.auth = {{"Authorization",
                   "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
    }
    return out;
  }

  // Starts the service (enroll, register, attest), registers customer A and
  // makes the host's state the flavor A's policy requires.
  void StartAndTrust() {
    ASSERT_OK(daemon_->service()->Start());
    a_ = RegisterCustomer();
    ASSERT_OK(op_->Post("/v1/flavors/good-boot/from-host/host-1", json::object()));
    ASSERT_OK(op_->Put("/v1/policies/" + a_.customer_id,
                       {{"flavors", {{"anyOf", {"good-boot"}}}},
                        {"max_evidence_age_seconds", 300}}));
    RunService();
  }

  // Seals `image` for customer A, uploads it and returns the image id.
  std::string Upload(const std::string& image, const std::string& image_id) {
    const std::string out = dir_.File(image_id + ".ova");
    ovf::SealOptions seal;
    seal.inputs = {image};
    seal.recipient_pem = a_.public_key_pem;
    seal.image_id = image_id;
    seal.tenant = a_.customer_id;
    seal.vm.cpus = 1;
    seal.vm.memory_mib = 256;
    seal.signing_key = a_.signing_key.get();
    seal.signing_chain_pem = a_.signing_chain_pem;
    EXPECT_OK(ovf::SealPackage(Env::Default(), seal, out));
    auto c = Client();
    auto begin = c->Post("/v1/uploads", a_.auth, "", "application/json");
    std::string id = json::parse(begin->body)["upload_id"];
    auto put = c->Put("/v1/uploads/" + id + "?offset=0", a_.auth,
                      vmseal::testing::ReadFileOrDie(out), "application/octet-stream");
    EXPECT_TRUE(put && put->status == 200);
    auto img = c->Post("/v1/uploads/" + id + "/commit", a_.auth, R"({"name":"vm"})",
                       "application/json");
    EXPECT_TRUE(img && img->status == 201) << (img ? img->body : "no answer");
    return img ? json::parse(img->body).value("image_id", "") : "";
  }

  json Launch(const std::string& image_id) {
    json body = {{"image_id", image_id}};
    auto launch = Client()->Post("/v1/launch", a_.auth, body.dump(), "application/json");
    EXPECT_TRUE(launch && launch->status == 201) << (launch ? launch->body : "");
    return launch ? json::parse(launch->body) : json();
  }

  json Job(const std::string& job_id) {
    auto res = Client()->Get("/v1/jobs/" + job_id, a_.auth);
    EXPECT_TRUE(res && res->status == 200);
    return res ? json::parse(res->body, nullptr, false) : json();
  }

  // Polls the job until `done` holds (at most `seconds`); returns its last state.
  json WaitForJob(const std::string& job_id, const std::function<bool(const json&)>& done,
                  int seconds = 240) {
    auto deadline = Clock::now() + std::chrono::seconds(seconds);
    json job;
    while (Clock::now() < deadline) {
      job = Job(job_id);
      if (done(job)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return job;
  }
  static std::function<bool(const json&)> InState(const std::string& state) {
    return [state](const json& j) {
      return j.value("state", "") == state || j.value("state", "") == "failed";
    };
  }

  // Launches the sample image for A and waits until its VM runs.
  json Running(const std::string& image_id) {
    json job = Launch(image_id);
    json j = WaitForJob(job.value("job_id", ""), InState("running"));
    EXPECT_EQ(j.value("state", ""), "running") << j.dump();
    return j;
  }

  pid_t QemuPid(const std::string& vm_name) {
    auto vm = daemon_->vms()->Get(vm_name);
    return vm.ok() && vm->state == vm::VmRunState::kRunning ? vm->pid : 0;
  }

  static std::string image_;
  static std::string poweroff_image_;
  TempDir dir_;
  kms::internal::CertAndKey ca_;
  std::unique_ptr<kms::Store> store_;
  std::unique_ptr<kms::KeyEncryptionKey> kek_;
  std::unique_ptr<tpm::testing::Swtpm> swtpm_;
  std::unique_ptr<kms::KmsService> kms_;
  std::unique_ptr<net::HttpsServer> kms_server_;
  int kms_port_ = 0;
  std::unique_ptr<net::HttpsClient> op_;
  csp::OvfPackageVerifier verifier_;
  std::unique_ptr<csp::KmsClient> portal_kms_;
  std::unique_ptr<csp::PortalServer> portal_;
  HostConfig config_;
  std::unique_ptr<HostDaemon> daemon_;
  std::thread runner_;
  Customer a_;
  int64_t trust_stop_timeout_seconds_ = 60;
};

std::string HostLifecycleE2eTest::image_;
std::string HostLifecycleE2eTest::poweroff_image_;

TEST_F(HostLifecycleE2eTest, QemuKilledWithSigkillFreesTheSlotAtOnceAndTheJobSaysKilled) {
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  const std::string image = Upload(image_, "img-kill");
  json first = Running(image);
  const std::string vm_name = first.value("vm_name", "");
  // One slot: a second launch waits for it.
  json second = Launch(image);
  EXPECT_EQ(second.value("state", ""), "queued") << second.dump();
  EXPECT_NE(second.dump().find("no free slot (1/1 in use)"), std::string::npos) << second.dump();

  const pid_t pid = QemuPid(vm_name);
  ASSERT_GT(pid, 0);
  const auto killed_at = Clock::now();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  json ended = WaitForJob(first.value("job_id", ""), InState("stopped"), 30);
  const int64_t ms = MsSince(killed_at);
  ASSERT_EQ(ended.value("state", ""), "stopped") << ended.dump();
  EXPECT_EQ(ended.value("end_reason", ""), "killed") << ended.dump();
  EXPECT_NE(ended.value("end_text", "").find("signal 9"), std::string::npos) << ended.dump();
  EXPECT_EQ(ended.value("host_id", ""), "");
  EXPECT_LT(ms, 3000) << "kill -9 -> job stopped at the portal took " << ms << " ms";
  std::printf("[ figure ] kill -9 of qemu -> job stopped (killed) at the portal: %lld ms\n",
              static_cast<long long>(ms));
  // The freed slot takes the queued job (the portal's scheduler ticks each second).
  json next = WaitForJob(second.value("job_id", ""), InState("running"));
  EXPECT_EQ(next.value("state", ""), "running") << next.dump();
  std::printf("[ figure ] kill -9 of qemu -> the queued job's VM running: %lld ms\n",
              static_cast<long long>(MsSince(killed_at)));
}

TEST_F(HostLifecycleE2eTest, GuestPowerOffIsReportedAndFreesTheSlot) {
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  json job = Launch(Upload(poweroff_image_, "img-poweroff"));
  // The guest prints its marker and powers off; the job ends with the reason.
  json ended = WaitForJob(job.value("job_id", ""), InState("stopped"));
  ASSERT_EQ(ended.value("state", ""), "stopped") << ended.dump();
  EXPECT_EQ(ended.value("end_reason", ""), "guest_poweroff") << ended.dump();
  EXPECT_GE(ended.value("runs", 0), 1);
  // Its slot is free: another launch of A is placed at once.
  json again = Launch(Upload(image_, "img-after-poweroff"));
  EXPECT_EQ(again.value("state", ""), "placed") << again.dump();
}

TEST_F(HostLifecycleE2eTest, CustomerStopFreesTheSlotAndStartRunsTheVmAgainOnItsHost) {
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  const std::string image = Upload(image_, "img-stop");
  json first = Running(image);
  const std::string job_id = first.value("job_id", "");
  const pid_t pid = QemuPid(first.value("vm_name", ""));
  ASSERT_GT(pid, 0);
  json second = Launch(image);
  ASSERT_EQ(second.value("state", ""), "queued") << second.dump();

  auto c = Client();
  auto stop = c->Post("/v1/vms/" + job_id + "/stop", a_.auth, "", "application/json");
  ASSERT_TRUE(stop && stop->status == 202) << (stop ? stop->body : "no answer");
  EXPECT_EQ(json::parse(stop->body).value("state", ""), "stopping");
  json stopped = WaitForJob(job_id, InState("stopped"), 60);
  ASSERT_EQ(stopped.value("state", ""), "stopped") << stopped.dump();
  EXPECT_EQ(stopped.value("end_reason", ""), "stopped_by_customer") << stopped.dump();
  EXPECT_FALSE(PidAlive(pid));
  // The queued job takes the slot.
  json next = WaitForJob(second.value("job_id", ""), InState("running"));
  ASSERT_EQ(next.value("state", ""), "running") << next.dump();

  // Start: no slot now, so the job waits, placed on nothing else.
  auto start = c->Post("/v1/vms/" + job_id + "/start", a_.auth, "", "application/json");
  ASSERT_TRUE(start && start->status == 202) << (start ? start->body : "no answer");
  EXPECT_EQ(json::parse(start->body).value("state", ""), "queued") << start->body;
  // Deleting the other VM frees the slot; the started VM runs again (a new
  // release against a fresh grant) and boots to its marker.
  auto del = c->Delete("/v1/vms/" + second.value("job_id", ""), a_.auth);
  ASSERT_TRUE(del && del->status == 202) << (del ? del->body : "no answer");
  json again = WaitForJob(job_id, InState("running"));
  ASSERT_EQ(again.value("state", ""), "running") << again.dump();
  EXPECT_EQ(again.value("runs", 0), 2);
  EXPECT_EQ(again.value("host_id", ""), "host-1");
  EXPECT_EQ(again.value("end_reason", ""), "");
  const std::string marker = vmseal::testing::ReadFileOrDie(image_ + ".marker");
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker(again.value("vm_name", ""),
                                                marker.substr(0, marker.find('\n')), 240000));
  EXPECT_EQ(Job(second.value("job_id", "")).value("state", ""), "deleted");

  // A late "ended" report of the first run, sent again with the host's own
  // identity, does not end the VM that was started since.
  PortalClientOptions po;
  po.url = config_.portal_url;
  po.ca_cert_file = config_.ca_file;
  po.cert_file = config_.cert_file;
  po.key_file = config_.key_file;
  auto host = PortalClient::Create(po);
  ASSERT_OK(host);
  ASSERT_OK((*host)->ReportVmEnded(again.value("vm_name", ""), "stopped",
                                   "stopped by VmManager::Stop", 1));
  json after = Job(job_id);
  EXPECT_EQ(after.value("state", ""), "running") << after.dump();
  EXPECT_EQ(after.value("end_reason", ""), "") << after.dump();
  EXPECT_EQ(after.value("runs", 0), 2);
}

TEST_F(HostLifecycleE2eTest, AnotherCustomerCannotStopStartOrDeleteTheVm) {
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  json job = Running(Upload(image_, "img-attack"));
  const std::string job_id = job.value("job_id", "");
  const std::string vm_name = job.value("vm_name", "");
  const pid_t pid = QemuPid(vm_name);
  ASSERT_GT(pid, 0);
  Customer b = RegisterCustomer();
  auto c = Client();
  for (const std::string& id : {job_id, vm_name}) {
    std::vector<httplib::Result> answers;
    answers.push_back(c->Post("/v1/vms/" + id + "/stop", b.auth, "", "application/json"));
    answers.push_back(c->Post("/v1/vms/" + id + "/start", b.auth, "", "application/json"));
    answers.push_back(c->Delete("/v1/vms/" + id, b.auth));
    for (const httplib::Result& res : answers) {
      ASSERT_TRUE(res);
      EXPECT_EQ(res->status, 404) << res->body;
      json err = json::parse(res->body, nullptr, false);
      EXPECT_EQ(err["error"].value("reason", ""), "not_found") << res->body;
      EXPECT_EQ(err["error"].value("message", ""), "no such vm") << res->body;
    }
    // No credentials at all: 401.
    auto anon = c->Post("/v1/vms/" + id + "/stop", "", "application/json");
    ASSERT_TRUE(anon);
    EXPECT_EQ(anon->status, 401);
  }
  // Nothing changed: the job runs, nothing is pending, the VM and its disk
  // are there after several host polls.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  json after = Job(job_id);
  EXPECT_EQ(after.value("state", ""), "running") << after.dump();
  EXPECT_EQ(after.value("wanted", ""), "running");
  EXPECT_TRUE(PidAlive(pid));
  EXPECT_EQ(QemuPid(vm_name), pid);
  // Streamed launch: the VM's disk state (overlay, cache, launch record) is
  // its directory under vd/ (no decrypted disk under disks/).
  EXPECT_EQ(vmseal::testing::ListJobDiskDirs(dir_.File("img") + "/vd").size(), 1u);
}

TEST_F(HostLifecycleE2eTest, DeleteRemovesTheVmAndItsFilesFromTheHost) {
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  json job = Running(Upload(image_, "img-delete"));
  const std::string job_id = job.value("job_id", "");
  const std::string vm_name = job.value("vm_name", "");
  const pid_t pid = QemuPid(vm_name);
  ASSERT_GT(pid, 0);
  auto info = daemon_->vms()->Get(vm_name);
  ASSERT_OK(info);
  ASSERT_TRUE(fs::exists(info->disk_path));
  ASSERT_TRUE(fs::exists(info->serial_log_path));

  auto del = Client()->Delete("/v1/vms/" + vm_name, a_.auth);  // by VM name
  ASSERT_TRUE(del && del->status == 202) << (del ? del->body : "no answer");
  EXPECT_EQ(json::parse(del->body).value("state", ""), "deleting");
  json deleted = WaitForJob(job_id, InState("deleted"), 60);
  ASSERT_EQ(deleted.value("state", ""), "deleted") << deleted.dump();
  EXPECT_EQ(deleted.value("end_reason", ""), "stopped_by_customer") << deleted.dump();
  EXPECT_FALSE(PidAlive(pid));
  EXPECT_EQ(daemon_->vms()->Get(vm_name).status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(info->disk_path));
  EXPECT_FALSE(fs::exists(info->serial_log_path));
  EXPECT_FALSE(fs::exists(info->qemu_log_path));
  EXPECT_TRUE(vmseal::testing::ListDir(dir_.File("img") + "/disks").empty());
  EXPECT_TRUE(vmseal::testing::ListJobDiskDirs(dir_.File("img") + "/vd").empty());
  EXPECT_TRUE(vmseal::testing::ListDir(dir_.File("img") + "/vms").empty());
  // A deleted VM cannot be started again.
  auto start = Client()->Post("/v1/vms/" + job_id + "/start", a_.auth, "", "application/json");
  ASSERT_TRUE(start);
  EXPECT_EQ(start->status, 412) << start->body;
  EXPECT_EQ(json::parse(start->body)["error"].value("reason", ""), "bad_state") << start->body;
}

TEST_F(HostLifecycleE2eTest, VmThatEndedWhileTheAgentWasDownIsReportedAfterRestart) {
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  json job = Running(Upload(image_, "img-restart"));
  const std::string job_id = job.value("job_id", "");
  const pid_t pid = QemuPid(job.value("vm_name", ""));
  ASSERT_GT(pid, 0);
  // The agent goes away (the VM keeps running), then qemu is killed.
  StopService();
  daemon_.reset();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(Job(job_id).value("state", ""), "running");  // nobody told the portal yet
  // The restarted agent finds the VM ended and tells the portal.
  const auto restarted_at = Clock::now();
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  RunService();
  json ended = WaitForJob(job_id, InState("stopped"), 60);
  ASSERT_EQ(ended.value("state", ""), "stopped") << ended.dump();
  // Not the restarted agent's child: the exit status is not known to it,
  // unless this process (qemu's parent in this test) reaped it as killed.
  const std::string reason = ended.value("end_reason", "");
  EXPECT_TRUE(reason == "unknown" || reason == "killed") << ended.dump();
  std::printf("[ figure ] agent restart -> VM that ended meanwhile reported: %lld ms\n",
              static_cast<long long>(MsSince(restarted_at)));
}

// Loss of trust (docs/protocol.md §7.2): two slots, so that one VM whose
// image says on_trust_loss "stop" and one that says "report" run side by
// side on the host that loses trust.
class HostTrustLossE2eTest : public HostLifecycleE2eTest {
 protected:
  void SetUp() override {}  // each test starts the parts with its options

  // The image's own operator policy: A's flavor, the evidence window and
  // what to do with its running VMs when trust in their host is lost.
  void ImagePolicy(const std::string& tag_image_id, const std::string& on_trust_loss,
                   int64_t max_evidence_age_seconds = 300) {
    ASSERT_OK(op_->Put("/v1/policies/" + a_.customer_id + "/" + tag_image_id,
                       {{"flavors", {{"anyOf", {"good-boot"}}}},
                        {"max_evidence_age_seconds", max_evidence_age_seconds},
                        {"on_trust_loss", on_trust_loss}}));
  }

  static bool HasTrustEvent(const json& job, const std::string& kind) {
    if (!job.contains("trust_events") || !job["trust_events"].is_array()) return false;
    for (const json& e : job["trust_events"]) {
      if (e.is_string() && e.get<std::string>().rfind(kind + ":", 0) == 0) return true;
    }
    return false;
  }
  static std::string TrustEvents(const json& job) {
    return job.contains("trust_events") ? job["trust_events"].dump() : "[]";
  }

  // The KMS audit records of `event` (operator read of the whole log).
  std::vector<json> KmsAudit(const std::string& event) {
    std::vector<json> out;
    auto log = op_->Get("/v1/audit?after=0&limit=1000");
    EXPECT_OK(log);
    if (!log.ok()) return out;
    for (const json& r : (*log)["records"]) {
      json rec = json::parse(r["record"].get<std::string>(), nullptr, false);
      if (rec.value("event", "") == event) out.push_back(rec["details"]);
    }
    return out;
  }

  // The events of the customer's own audit of a portal image, relayed by
  // the portal: each proof carries its record ("extra <base64>",
  // docs/format/audit-log.md §6), read here as "<event> <details>".
  std::string CustomerAudit(const std::string& portal_image_id) {
    auto res = Client()->Get("/v1/images/" + portal_image_id + "/audit", a_.auth);
    EXPECT_TRUE(res && res->status == 200) << (res ? res->body : "no answer");
    if (!res || res->status != 200) return "";
    json page = json::parse(res->body, nullptr, false);
    std::string events;
    for (const json& proof : page.value("proofs", json::array())) {
      const std::string text = proof.get<std::string>();
      const size_t at = text.find("\nextra ");
      if (at == std::string::npos) continue;
      const size_t end = text.find('\n', at + 7);
      auto record = crypto::Base64Decode(text.substr(at + 7, end - at - 7));
      if (!record.ok()) continue;
      json rec = json::parse(std::string(record->begin(), record->end()), nullptr, false);
      if (!rec.is_object()) continue;
      events += rec.value("event", "") + " " + rec.value("details", json::object()).dump() + "\n";
    }
    return events;
  }

  struct RunningVm {
    std::string image;    // portal image id
    std::string job_id;
    std::string vm_name;
    pid_t pid = 0;
    std::string disk_path;
  };
  RunningVm Run(const std::string& tag_image_id) {
    RunningVm v;
    v.image = Upload(image_, tag_image_id);
    json j = Running(v.image);
    v.job_id = j.value("job_id", "");
    v.vm_name = j.value("vm_name", "");
    v.pid = QemuPid(v.vm_name);
    auto info = daemon_->vms()->Get(v.vm_name);
    if (info.ok()) v.disk_path = info->disk_path;
    return v;
  }

  // The VM of `stopped` is gone with its files, and its job says why; the
  // VM of `reported` still runs, and its job says trust was lost.
  void ExpectStoppedAndReported(const RunningVm& stopped, const RunningVm& reported,
                                const std::string& reason) {
    json gone = WaitForJob(stopped.job_id, InState("deleted"), 60);
    ASSERT_EQ(gone.value("state", ""), "deleted") << gone.dump();
    EXPECT_EQ(gone.value("end_reason", ""), "trust_lost") << gone.dump();
    ASSERT_TRUE(HasTrustEvent(gone, "trust_lost")) << gone.dump();
    EXPECT_NE(TrustEvents(gone).find(reason), std::string::npos) << gone.dump();
    EXPECT_NE(TrustEvents(gone).find("on_trust_loss=stop"), std::string::npos) << gone.dump();
    EXPECT_FALSE(PidAlive(stopped.pid));
    EXPECT_EQ(daemon_->vms()->Get(stopped.vm_name).status().code(), StatusCode::kNotFound);
    EXPECT_FALSE(stopped.disk_path.empty());
    EXPECT_FALSE(fs::exists(stopped.disk_path));
    // Confirmed gone: the customer is told, once.
    json confirmed = WaitForJob(stopped.job_id, [](const json& j) { return HasTrustEvent(j, "stopped"); }, 15);
    EXPECT_TRUE(HasTrustEvent(confirmed, "stopped")) << confirmed.dump();
    EXPECT_FALSE(HasTrustEvent(confirmed, "stop_unanswered")) << confirmed.dump();

    json kept = WaitForJob(reported.job_id, [](const json& j) { return HasTrustEvent(j, "trust_lost"); }, 30);
    EXPECT_EQ(kept.value("state", ""), "running") << kept.dump();
    ASSERT_TRUE(HasTrustEvent(kept, "trust_lost")) << kept.dump();
    EXPECT_NE(TrustEvents(kept).find(reason), std::string::npos) << kept.dump();
    EXPECT_NE(TrustEvents(kept).find("on_trust_loss=report"), std::string::npos) << kept.dump();
    EXPECT_TRUE(PidAlive(reported.pid));
    EXPECT_EQ(QemuPid(reported.vm_name), reported.pid);
    EXPECT_TRUE(fs::exists(reported.disk_path));
    // Reported once: later checks do not ask about it again.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    int reported_records = 0;
    for (const json& d : KmsAudit("vm.trust_loss")) {
      if (d.value("job_id", "") == reported.job_id) ++reported_records;
    }
    EXPECT_EQ(reported_records, 1);
    EXPECT_EQ(Job(reported.job_id).value("state", ""), "running");

    // The KMS audited both losses with the reason and the tenant and image,
    // so each shows in the customer's own audit of the image.
    std::map<std::string, json> losses;
    for (const json& d : KmsAudit("vm.trust_loss")) losses[d.value("job_id", "")] = d;
    ASSERT_TRUE(losses.contains(stopped.job_id));
    ASSERT_TRUE(losses.contains(reported.job_id));
    EXPECT_EQ(losses[stopped.job_id].value("reason", ""), reason);
    EXPECT_EQ(losses[stopped.job_id].value("on_trust_loss", ""), "stop");
    EXPECT_EQ(losses[stopped.job_id].value("tenant", ""), a_.customer_id);
    EXPECT_EQ(losses[reported.job_id].value("on_trust_loss", ""), "report");
    EXPECT_EQ(losses[reported.job_id].value("host_id", ""), "host-1");
    bool stopped_event = false;
    for (const json& d : KmsAudit("vm.trust_event")) {
      if (d.value("job_id", "") == stopped.job_id && d.value("event", "") == "stopped") stopped_event = true;
    }
    EXPECT_TRUE(stopped_event);
    const std::string stop_audit = CustomerAudit(stopped.image);
    EXPECT_NE(stop_audit.find("vm.trust_loss"), std::string::npos) << stop_audit;
    EXPECT_NE(stop_audit.find("vm.trust_event"), std::string::npos) << stop_audit;
    EXPECT_NE(CustomerAudit(reported.image).find("vm.trust_loss"), std::string::npos);

    // No new VM is placed on the host.
    json next = Launch(stopped.image);
    EXPECT_EQ(next.value("state", ""), "queued") << next.dump();
    EXPECT_NE(next.dump().find(reason), std::string::npos) << next.dump();
  }
};

TEST_F(HostTrustLossE2eTest, HostWhosePcrChangesLosesTrustAndItsVmsAreStoppedOrReportedPerPolicy) {
  ASSERT_NO_FATAL_FAILURE(StartAll(/*slots=*/2));
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  ASSERT_NO_FATAL_FAILURE(ImagePolicy("trust-pcr-stop", "stop"));
  ASSERT_NO_FATAL_FAILURE(ImagePolicy("trust-pcr-report", "report"));
  RunningVm stop = Run("trust-pcr-stop");
  RunningVm report = Run("trust-pcr-report");
  ASSERT_GT(stop.pid, 0);
  ASSERT_GT(report.pid, 0);
  // While the host stays trusted (checked every second), nothing happens.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  for (const std::string& id : {stop.job_id, report.job_id}) {
    json j = Job(id);
    EXPECT_EQ(j.value("state", ""), "running") << j.dump();
    EXPECT_EQ(TrustEvents(j), "[]");
  }
  EXPECT_TRUE(KmsAudit("vm.trust_loss").empty());

  // A PCR of the flavor changes (an unsigned bootloader, say): the host's
  // next re-attestation (every 5 s) quotes values outside the policy.
  const auto changed_at = Clock::now();
  ASSERT_OK(daemon_->SecurityEngineForTesting()->PcrExtend(7, crypto::Sha256("evil bootloader")));
  json gone = WaitForJob(stop.job_id, InState("deleted"), 60);
  std::printf("[ figure ] PCR changed -> VM of a 'stop' image gone with its files: %lld ms "
              "(re-attestation every 5 s, trust check every 1 s)\n",
              static_cast<long long>(MsSince(changed_at)));
  ExpectStoppedAndReported(stop, report, "pcr_policy");
}

TEST_F(HostTrustLossE2eTest, RevokedHostsRunningVmsAreStoppedOrReportedPerPolicy) {
  ASSERT_NO_FATAL_FAILURE(StartAll(/*slots=*/2));
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  ASSERT_NO_FATAL_FAILURE(ImagePolicy("trust-rev-stop", "stop"));
  ASSERT_NO_FATAL_FAILURE(ImagePolicy("trust-rev-report", "report"));
  RunningVm stop = Run("trust-rev-stop");
  RunningVm report = Run("trust-rev-report");
  ASSERT_GT(stop.pid, 0);
  ASSERT_GT(report.pid, 0);
  // `vmseal kms host revoke --host host-1`: the operator route it calls.
  ASSERT_OK(op_->Post("/v1/hosts/host-1/revoke", {{"reason", "decommissioned rack"}}));
  ExpectStoppedAndReported(stop, report, "host_revoked");
}

TEST_F(HostTrustLossE2eTest, HostThatMissesReattestationLosesTrustAndIsReportedWhenItDoesNotAnswer) {
  trust_stop_timeout_seconds_ = 3;
  ASSERT_NO_FATAL_FAILURE(StartAll(/*slots=*/1));
  ASSERT_NO_FATAL_FAILURE(StartAndTrust());
  // A 12 s window: re-attestation every 5 s keeps the host trusted.
  ASSERT_NO_FATAL_FAILURE(ImagePolicy("trust-missed", "stop", 12));
  RunningVm vm = Run("trust-missed");
  ASSERT_GT(vm.pid, 0);
  std::this_thread::sleep_for(std::chrono::seconds(7));
  EXPECT_EQ(TrustEvents(Job(vm.job_id)), "[]");
  // The agent goes away (the VM keeps running): no re-attestation, and
  // nobody on the host to carry out a stop.
  StopService();
  daemon_.reset();
  json lost = WaitForJob(vm.job_id, [](const json& j) { return HasTrustEvent(j, "stop_unanswered"); }, 40);
  ASSERT_TRUE(HasTrustEvent(lost, "trust_lost")) << lost.dump();
  EXPECT_NE(TrustEvents(lost).find("evidence_age"), std::string::npos) << lost.dump();
  ASSERT_TRUE(HasTrustEvent(lost, "stop_unanswered")) << lost.dump();
  EXPECT_EQ(lost.value("state", ""), "deleting") << lost.dump();
  EXPECT_TRUE(PidAlive(vm.pid));  // nobody stopped it: that is what is reported
  bool unanswered = false;
  for (const json& d : KmsAudit("vm.trust_event")) {
    if (d.value("job_id", "") == vm.job_id && d.value("event", "") == "stop_unanswered") unanswered = true;
  }
  EXPECT_TRUE(unanswered);
  EXPECT_NE(CustomerAudit(vm.image).find("stop_unanswered"), std::string::npos);
  // The agent comes back: it carries out the stop and the files go.
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  RunService();
  json gone = WaitForJob(vm.job_id, InState("deleted"), 60);
  ASSERT_EQ(gone.value("state", ""), "deleted") << gone.dump();
  EXPECT_EQ(gone.value("end_reason", ""), "trust_lost") << gone.dump();
  EXPECT_FALSE(PidAlive(vm.pid));
  EXPECT_FALSE(fs::exists(vm.disk_path));
  json told = WaitForJob(vm.job_id, [](const json& j) { return HasTrustEvent(j, "stopped"); }, 15);
  EXPECT_TRUE(HasTrustEvent(told, "stopped")) << told.dump();
}

}  // namespace
}  // namespace vmseal::host
