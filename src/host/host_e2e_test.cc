// The host service end to end with real parts: the KMS (service core behind
// its HTTPS server, SQLite), the portal (TLS, host mTLS), and the host daemon
// as `vmseal host serve` assembles it (HTTPS KMS client, portal client, TPM
// security engine on swtpm, qemu with TCG) running the sample image sealed to
// a KMS customer key. The guest prints a marker that exists only inside the
// image: seeing it on the serial console proves the VM booted from the
// decrypted disk.
#include <fcntl.h>
#include <spawn.h>
#include <httplib.h>
#include <sys/file.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <set>
#include <signal.h>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "crypto/keys.h"
#include "csp/kms_client.h"
#include "csp/ovf_package_verifier.h"
#include "csp/portal_server.h"
#include "host/host_daemon.h"
#include "host/internal/launch_record.h"
#include "host/https_kms_client.h"
#include "kms/internal/mini_ca.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "crypto/signature.h"
#include "ovf/package.h"
#include "ovf/package_format.h"
#include "ovf/signature.h"
#include "testing/s3_harness.h"
#include "testing/test_util.h"
#include "tpm/testing/swtpm_harness.h"
#include "vm/internal/process.h"
#include "vm/internal/vm_record.h"

extern char** environ;

namespace vmseal::host {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::vmseal::testing::TempDir;

std::string KeyText(const SecretBytes& s) {
  return std::string(reinterpret_cast<const char*>(s.UnsafeData()), s.size());
}

// The real HTTPS KMS client, with a hook after each granted release.
class HookedKms final : public KmsApi {
 public:
  HookedKms(std::unique_ptr<KmsApi> inner, std::function<void()>* after_release)
      : inner_(std::move(inner)), after_release_(after_release) {}
  StatusOr<attest::CredentialChallenge> BeginEnrollment(
      const attest::EnrollmentRequest& r) override {
    return inner_->BeginEnrollment(r);
  }
  Status CompleteEnrollment(const SecretBytes& s) override { return inner_->CompleteEnrollment(s); }
  StatusOr<crypto::Bytes> Nonce() override { return inner_->Nonce(); }
  Status Attest(const attest::Evidence& e) override { return inner_->Attest(e); }
  StatusOr<ReleasedKey> Release(const ReleaseRequest& r) override {
    auto out = inner_->Release(r);
    if (out.ok() && *after_release_) (*after_release_)();
    return out;
  }

 private:
  std::unique_ptr<KmsApi> inner_;
  std::function<void()>* after_release_;
};

class HostE2eTest : public ::testing::Test {
 protected:
  // The sample image, built once per binary and cached in the build tree.
  static void SetUpTestSuite() {
    const std::string dir = VMSEAL_HOST_E2E_CACHE_DIR;
    fs::create_directories(dir);
    image_ = dir + "/sample.img";
    const std::string script = vmseal::testing::SourceDir() + "/scripts/build-sample-image.sh";
    int lock_fd = ::open((dir + "/sample.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(lock_fd, 0);
    ASSERT_EQ(::flock(lock_fd, LOCK_EX), 0);
    std::error_code ec;
    if (!fs::exists(image_) || !fs::exists(image_ + ".marker") ||
        fs::last_write_time(image_, ec) < fs::last_write_time(script, ec)) {
      std::string out;
      int rc = vmseal::testing::RunCommand({script, image_}, &out, 600);
      ::close(lock_fd);
      ASSERT_EQ(rc, 0) << out;
    } else {
      ::close(lock_fd);
    }
    marker_ = vmseal::testing::ReadFileOrDie(image_ + ".marker");
    while (!marker_.empty() && (marker_.back() == '\n' || marker_.back() == '\r')) {
      marker_.pop_back();
    }
  }

  void SetUp() override {
    auto ca = kms::internal::CreateRootCa("e2e ca", 30);
    ASSERT_OK(ca);
    ca_ = *std::move(ca);
    Write("ca.pem", ca_.cert_pem);
    Identity("host", "host-1", "host", false);
    Identity("operator", "op", "op", false);
    Identity("portal", "portal-1", "portal", false);
    Identity("kms", "kms", "kms-server", true);
    Identity("portal", "portal", "portal-server", true);

    // KMS.
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
    op_ = JsonClient("op");

    // Portal, with its own KMS client (portal identity): customer keys and
    // placement checks come from the real KMS.
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
    if (UseS3()) {
      auto s3 = vmseal::testing::S3Server::Start({"packages"});
      ASSERT_OK(s3);
      s3_ = *std::move(s3);
      po.s3_endpoint = s3_->endpoint();
      po.s3_bucket = "packages";
      po.s3_access_key_id = vmseal::testing::kS3AccessKeyId;
      po.s3_secret_access_key = SecretBytes(crypto::AsBytes(
          std::string(vmseal::testing::kS3SecretAccessKey)));
    }
    auto portal = csp::PortalServer::Create(std::move(po), &verifier_, portal_kms_.get());
    ASSERT_OK(portal);
    portal_ = *std::move(portal);
    ASSERT_OK(portal_->Start());
    customer_ = std::make_unique<httplib::SSLClient>("127.0.0.1", portal_->port());
    customer_->set_ca_cert_path(dir_.File("ca.pem").c_str());
    customer_->enable_server_certificate_verification(true);
    customer_->set_read_timeout(60, 0);
    // PortalServer::Start returns before cpp-httplib's accept loop runs; a
    // Stop in that window is lost. Wait until the portal answers.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline && !customer_->Get("/v1/kms/ca")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }

    // Host, as `vmseal host serve` builds it.
    HostConfig& c = config_;
    c.portal_url = "https://127.0.0.1:" + std::to_string(portal_->port());
    c.kms_url = "https://127.0.0.1:" + std::to_string(kms_port_);
    c.ca_file = dir_.File("ca.pem");
    c.cert_file = dir_.File("host.pem");
    c.key_file = dir_.File("host-key.pem");
    c.tpm_tcti = swtpm_->tcti();
    c.state_dir = dir_.File("hs");
    c.image_store_dir = dir_.File("img");
    c.pcr_selection = {0, 7};
    c.heartbeat_interval_seconds = 0.5;
    c.reattest_interval_seconds = 2;
    c.poll_interval_seconds = 0.2;
    c.accel = "tcg";
    c.capacity = HostCapacity{.vcpus = 2, .memory_mib = 2048, .slots = 2};
    c.nbd_plugin = VMSEAL_NBD_PLUGIN_PATH;
    ConfigureHost(&c);
    auto daemon = MakeDaemon();
    ASSERT_OK(daemon);
    daemon_ = *std::move(daemon);
    EXPECT_EQ(daemon_->host_id(), "host-1");
  }

  // The host daemon over config_, as `vmseal host serve` builds it (again
  // after a simulated agent crash).
  StatusOr<std::unique_ptr<HostDaemon>> MakeDaemon() {
    return HostDaemon::Create(config_, [this](const KmsClientSettings& s)
                                           -> StatusOr<std::unique_ptr<KmsApi>> {
      ASSIGN_OR_RETURN(auto inner, NewHttpsKmsClient({.url = s.url,
                                                      .ca_cert_file = s.ca_cert_file,
                                                      .cert_file = s.cert_file,
                                                      .key_file = s.key_file,
                                                      .host_id = s.host_id}));
      return std::unique_ptr<KmsApi>(new HookedKms(std::move(inner), &after_release_));
    });
  }

  // Hook for fixtures that change the host's configuration.
  virtual void ConfigureHost(HostConfig*) {}

  // The fixtures drive the service step by step (PollOnce) instead of Run,
  // so they also do what Run's heartbeat thread does: without it, a boot
  // that outlasts the portal's 30 s heartbeat timeout under load makes the
  // portal drop the host and fail its job (host_lost), and a restarted
  // agent then gets 404 for the package. Stop before daemon_ changes.
  void StartHeartbeats() {
    StopHeartbeats();
    HostService* service = daemon_->service();
    {
      std::lock_guard<std::mutex> lock(heartbeat_mu_);
      heartbeats_stopping_ = false;
    }
    heartbeats_ = std::thread([this, service] {
      std::unique_lock<std::mutex> lock(heartbeat_mu_);
      while (!heartbeat_cv_.wait_for(lock, std::chrono::seconds(2),
                                     [this] { return heartbeats_stopping_; })) {
        lock.unlock();
        (void)service->HeartbeatOnce();  // a stopped portal: the next one
        lock.lock();
      }
    });
  }
  void StopHeartbeats() {
    if (!heartbeats_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(heartbeat_mu_);
      heartbeats_stopping_ = true;
    }
    heartbeat_cv_.notify_all();
    heartbeats_.join();
  }

  void TearDown() override {
    StopHeartbeats();
    if (daemon_ != nullptr) {
      // Through the agent: it stops the VMs' exports (nbdkit) too.
      auto vms = daemon_->vms()->List();
      if (vms.ok()) {
        for (const auto& v : *vms) (void)daemon_->agent()->DeleteVm(v.name);
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
    Write(prefix + "-key.pem", KeyText(id->key_pem));
  }
  std::unique_ptr<net::HttpsClient> JsonClient(const std::string& prefix) {
    net::HttpsClient::Options o;
    o.port = kms_port_;
    o.ca_pem = ca_.cert_pem;
    o.cert_pem = vmseal::testing::ReadFileOrDie(dir_.File(prefix + ".pem"));
    o.key_pem = SecretBytes(crypto::AsBytes(vmseal::testing::ReadFileOrDie(
        dir_.File(prefix + "-key.pem"))));
    auto c = net::HttpsClient::Create(std::move(o));
    EXPECT_OK(c);
    return c.ok() ? *std::move(c) : nullptr;
  }

  // A portal customer registers (the portal has the KMS create its key
  // pair) and logs in.
  void RegisterCustomer() {
    // With a package-signing key made here, as `vmseal customer register` does.
    auto signing = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    ASSERT_OK(signing);
    auto proof = crypto::Sign(*signing, crypto::SignatureDigest::kSha256,
                              ovf::SigningKeyProofMessage(signing->Public()));
    ASSERT_OK(proof);
    json body = {{"signing_public_key_pem", signing->Public().ToPem()},
                 {"signing_key_proof", crypto::Base64Encode(*proof)}};
    signing_key_ = std::make_shared<crypto::PrivateKey>(*std::move(signing));
    auto reg = customer_->Post("/v1/register", body.dump(), "application/json");
    ASSERT_TRUE(reg && reg->status == 201) << (reg ? reg->body : "no answer");
    json r = json::parse(reg->body);
    customer_id_ = r["customer_id"];
    customer_pub_pem_ = r["key"]["public_key_pem"];
    signing_chain_ = r["signing_key"]["cert_pem"];
    json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
    auto res = customer_->Post("/v1/login", login.dump(), "application/json");
    ASSERT_TRUE(res && res->status == 200);
    auth_ = {{"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
  }

  // After the host's first attestation: its PCRs become the "good-boot"
  // flavor and the customer's policy requires it.
  void TrustHostState() {
    ASSERT_OK(op_->Post("/v1/flavors/good-boot/from-host/host-1", json::object()));
    ASSERT_OK(op_->Put("/v1/policies/" + customer_id_,
                       {{"flavors", {{"anyOf", {"good-boot"}}}},
                        {"max_evidence_age_seconds", 300}}));
  }

  // Seals the sample image for the customer's KMS key.
  std::string Seal(const std::string& image_id) {
    const std::string out = dir_.File(image_id + ".ova");
    ovf::SealOptions seal;
    seal.inputs = {image_};
    seal.recipient_pem = customer_pub_pem_;
    seal.image_id = image_id;
    seal.tenant = customer_id_;
    seal.vm.cpus = 1;
    seal.vm.memory_mib = 256;
    seal.signing_key = signing_key_.get();
    seal.signing_chain_pem = signing_chain_;
    EXPECT_OK(ovf::SealPackage(Env::Default(), seal, out));
    return out;
  }

  // The customer uploads `package_path` and launches it; returns the job id.
  std::string UploadAndLaunch(const std::string& package_path) {
    auto begin = customer_->Post("/v1/uploads", auth_, "", "application/json");
    std::string id = json::parse(begin->body)["upload_id"];
    std::string data = vmseal::testing::ReadFileOrDie(package_path);
    auto put = customer_->Put("/v1/uploads/" + id + "?offset=0", auth_, data,
                              "application/octet-stream");
    EXPECT_TRUE(put && put->status == 200);
    auto img = customer_->Post("/v1/uploads/" + id + "/commit", auth_, R"({"name":"vm"})",
                               "application/json");
    EXPECT_TRUE(img && img->status == 201) << (img ? img->body : "no answer");
    json body = {{"image_id", json::parse(img->body)["image_id"]}};
    auto launch = customer_->Post("/v1/launch", auth_, body.dump(), "application/json");
    EXPECT_TRUE(launch && launch->status == 201) << (launch ? launch->body : "");
    json job = json::parse(launch->body);
    EXPECT_EQ(job["state"], "placed") << job.dump();
    return job["job_id"];
  }

  json JobJson(const std::string& job_id) {
    auto res = customer_->Get("/v1/jobs/" + job_id, auth_);
    EXPECT_TRUE(res);
    return res ? json::parse(res->body) : json();
  }

  // Polls the job until it is running, failed or back in the queue (at
  // most 240 s) and returns its last state.
  json WaitForJobToSettle(const std::string& job_id) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);
    json job;
    while (std::chrono::steady_clock::now() < deadline) {
      job = JobJson(job_id);
      if (job["state"] == "running" || job["state"] == "failed" || job["state"] == "queued") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return job;
  }

  // Where the host's decrypted disks live: it must hold no disk.
  std::vector<std::string> Disks() {
    return vmseal::testing::ListDir(dir_.File("img") + "/disks");
  }

  // The portal's object store: the filesystem store, or S3 (s3rver).
  virtual bool UseS3() const { return false; }

  static std::string image_;
  static std::string marker_;
  TempDir dir_;
  std::unique_ptr<vmseal::testing::S3Server> s3_;
  kms::internal::CertAndKey ca_;
  std::unique_ptr<kms::Store> store_;
  std::unique_ptr<kms::KeyEncryptionKey> kek_;
  std::unique_ptr<tpm::testing::Swtpm> swtpm_;
  std::unique_ptr<kms::KmsService> kms_;
  std::unique_ptr<net::HttpsServer> kms_server_;
  int kms_port_ = 0;
  std::unique_ptr<net::HttpsClient> op_;
  std::string customer_id_;
  std::string customer_pub_pem_;
  std::shared_ptr<crypto::PrivateKey> signing_key_;
  std::string signing_chain_;
  csp::OvfPackageVerifier verifier_;
  std::unique_ptr<csp::KmsClient> portal_kms_;
  std::unique_ptr<csp::PortalServer> portal_;
  std::unique_ptr<httplib::SSLClient> customer_;
  httplib::Headers auth_;
  std::function<void()> after_release_;
  HostConfig config_;
  std::unique_ptr<HostDaemon> daemon_;

 private:
  std::mutex heartbeat_mu_;
  std::condition_variable heartbeat_cv_;
  bool heartbeats_stopping_ = false;
  std::thread heartbeats_;
};

std::string HostE2eTest::image_;
std::string HostE2eTest::marker_;

TEST_F(HostE2eTest, TrustedHostBootsTheSealedImageAndVmOutlivesTheService) {
  HostService* svc = daemon_->service();
  ASSERT_OK(svc->Start());  // enroll, register, first verdict
  RegisterCustomer();
  TrustHostState();
  const std::string job_id = UploadAndLaunch(Seal("sealed-good"));

  Status run_result = UnknownError("not returned");
  std::thread runner([&] { run_result = svc->Run(); });
  json job = WaitForJobToSettle(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const std::string vm_name = (*vms)[0].name;
  // The marker exists only inside the sealed image.
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker(vm_name, marker_, 240000));
  // Re-attestation and heartbeats ran meanwhile.
  EXPECT_GE(svc->stats().reattestations, 2);
  EXPECT_GE(svc->stats().heartbeats, 1);
  svc->Stop();
  runner.join();
  EXPECT_OK(run_result);
  // The service stopped; the VM did not.
  auto after = daemon_->vms()->Get(vm_name);
  ASSERT_OK(after);
  EXPECT_EQ(after->state, vm::VmRunState::kRunning);
  // Nothing sealed or decrypted lingers: no decrypted disk at all (the VM
  // reads through its export), only its encrypted overlay.
  EXPECT_TRUE(vmseal::testing::ListDir(dir_.File("hs") + "/work").empty());
  EXPECT_TRUE(Disks().empty());
  ASSERT_EQ((*vms)[0].disks.size(), 1u);
  EXPECT_EQ((*vms)[0].disks[0].source, vm::DiskSource::kNbd);
  EXPECT_TRUE(fs::exists((*vms)[0].disks[0].overlay_path));
  // A restarted agent finds the VM again, and its start-up sweep keeps the
  // running VM's disk.
  auto restarted = vm::VmManager::Create({.state_dir = dir_.File("img"),
                                          .accel = vm::Accel::kTcg});
  ASSERT_OK(restarted);
  auto found = (*restarted)->Get(vm_name);
  ASSERT_OK(found);
  EXPECT_EQ(found->state, vm::VmRunState::kRunning);
  auto removed = RemoveStaleFiles(restarted->get(), dir_.File("img"), dir_.File("hs") + "/work");
  ASSERT_OK(removed);
  EXPECT_EQ(*removed, 0);
  EXPECT_TRUE(fs::exists((*vms)[0].disks[0].overlay_path));
}

// The same path with the portal's packages in an S3-compatible store.
class HostE2eS3Test : public HostE2eTest {
 protected:
  bool UseS3() const override { return true; }
};

TEST_F(HostE2eS3Test, TrustedHostBootsTheSealedImageStoredInS3) {
  HostService* svc = daemon_->service();
  ASSERT_OK(svc->Start());
  RegisterCustomer();
  TrustHostState();
  const std::string job_id = UploadAndLaunch(Seal("sealed-s3"));
  Status run_result = UnknownError("not returned");
  std::thread runner([&] { run_result = svc->Run(); });
  json job = WaitForJobToSettle(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker((*vms)[0].name, marker_, 240000));
  svc->Stop();
  runner.join();
  EXPECT_OK(run_result);
  EXPECT_OK(daemon_->vms()->Delete((*vms)[0].name));
  EXPECT_TRUE(Disks().empty());
}

TEST_F(HostE2eTest, TamperedHostGetsNoKeyAndTheJobMovesWithPcrPolicy) {
  HostService* svc = daemon_->service();
  ASSERT_OK(svc->Start());
  RegisterCustomer();
  TrustHostState();
  // Something unexpected is measured after the flavor was taken.
  ASSERT_OK(daemon_->SecurityEngineForTesting()->PcrExtend(7, crypto::Sha256("evil bootloader")));
  const std::string job_id = UploadAndLaunch(Seal("sealed-tampered"));
  auto ran = svc->PollOnce();
  ASSERT_OK(ran);
  EXPECT_EQ(*ran, 1);
  json job = JobJson(job_id);
  EXPECT_NE(job["state"], "running");
  ASSERT_FALSE(job["attempts"].empty()) << job.dump();
  EXPECT_EQ(job["attempts"][0]["host_id"], "host-1");
  EXPECT_NE(job["attempts"][0]["refusal"].get<std::string>().find("pcr_policy"),
            std::string::npos)
      << job.dump();
  EXPECT_EQ(svc->stats().jobs_refused, 1);
  EXPECT_TRUE(Disks().empty());
}

// A host that downloads the whole package before launch
// (fetch_whole_package): the manifest digests are checked before any key is
// asked for. (Streamed, a corrupted chunk is found when it is read:
// HostStreamE2eTest.TamperedChunkReadLazilyIsAGuestIoErrorAndAnEvent.)
class HostFetchE2eTest : public HostE2eTest {
 protected:
  void ConfigureHost(HostConfig* c) override { c->fetch_whole_package = true; }
};

TEST_F(HostFetchE2eTest, PackageTamperedInTransitIsRefusedBeforeAnyRelease) {
  HostService* svc = daemon_->service();
  ASSERT_OK(svc->Start());
  RegisterCustomer();
  TrustHostState();
  const std::string job_id = UploadAndLaunch(Seal("sealed-transit"));
  // Flip one byte of the stored package (inside the sealed disk), as a
  // corrupting store or network path would.
  bool flipped = false;
  for (const auto& e : fs::recursive_directory_iterator(dir_.File("portal") + "/objects")) {
    if (!e.is_regular_file() || e.file_size() < (1 << 20)) continue;
    std::string data = vmseal::testing::ReadFileOrDie(e.path().string());
    data[data.size() / 2] ^= 0x01;
    vmseal::testing::WriteFileOrDie(e.path().string(), data);
    flipped = true;
  }
  ASSERT_TRUE(flipped);
  bool released = false;
  after_release_ = [&] { released = true; };
  ASSERT_OK(svc->PollOnce());
  json job = JobJson(job_id);
  ASSERT_FALSE(job["attempts"].empty()) << job.dump();
  const std::string refusal = job["attempts"][0]["refusal"];
  EXPECT_NE(refusal.find("package_rejected"), std::string::npos) << refusal;
  EXPECT_FALSE(released);
  EXPECT_TRUE(Disks().empty());
}

TEST_F(HostE2eTest, KmsUnreachableFailsTheJobWithAClearReason) {
  HostService* svc = daemon_->service();
  ASSERT_OK(svc->Start());
  RegisterCustomer();
  TrustHostState();
  const std::string job_id = UploadAndLaunch(Seal("sealed-nokms"));
  kms_server_->Stop();
  ASSERT_OK(svc->PollOnce());
  json job = JobJson(job_id);
  ASSERT_FALSE(job["attempts"].empty()) << job.dump();
  const std::string refusal = job["attempts"][0]["refusal"];
  EXPECT_NE(refusal.find("kms_unavailable"), std::string::npos) << refusal;
  EXPECT_TRUE(Disks().empty());
  // Re-attestation says so too.
  EXPECT_EQ(svc->ReattestOnce().code(), StatusCode::kUnavailable);
}

TEST_F(HostE2eTest, TpmRestartBetweenReleaseAndDecryptIsHandled) {
  HostService* svc = daemon_->service();
  ASSERT_OK(svc->Start());
  RegisterCustomer();
  TrustHostState();
  const std::string job_id = UploadAndLaunch(Seal("sealed-restart"));
  int restarts = 0;
  after_release_ = [&] {
    // The TPM loses its loaded objects and sessions between the release and
    // the unwrap; the engine reconnects and reloads the binding key.
    ASSERT_OK(swtpm_->Restart());
    ++restarts;
  };
  ASSERT_OK(svc->PollOnce());
  EXPECT_EQ(restarts, 1);
  json job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker((*vms)[0].name, marker_, 240000));
}

// --- Hostile disk images (docs/format/disk-format.md, CVE-2024-32498) ---

// A host file's content and modification time, to show it was not touched.
struct FileSnapshot {
  std::string content;
  int64_t mtime_ns = 0;
};

FileSnapshot Snapshot(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return {vmseal::testing::ReadFileOrDie(path),
          int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec};
}

// Whether any process runs a qemu for the VM of `job_id` (qemu's -name is
// "vmseal-vm-<job id>").
bool QemuRunsForJob(const std::string& job_id) {
  const std::string needle = "vmseal-vm-" + job_id;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmdline.find(needle) != std::string::npos) return true;
  }
  return false;
}

class HostDiskFormatE2eTest : public HostE2eTest {
 protected:
  void SetUp() override {
    HostE2eTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_OK(daemon_->service()->Start());
    StartHeartbeats();
    RegisterCustomer();
    TrustHostState();
  }

  void QemuImg(std::vector<std::string> args) {
    args.insert(args.begin(), "qemu-img");
    std::string out;
    ASSERT_EQ(vmseal::testing::RunCommand(args, &out, 120), 0) << out;
  }

  // Seals the disk image at `disk` for the customer.
  std::string SealDisk(const std::string& image_id, const std::string& disk) {
    const std::string out = dir_.File(image_id + ".ova");
    ovf::SealOptions seal;
    seal.inputs = {disk};
    seal.recipient_pem = customer_pub_pem_;
    seal.image_id = image_id;
    seal.tenant = customer_id_;
    seal.vm.cpus = 1;
    seal.vm.memory_mib = 256;
    seal.signing_key = signing_key_.get();
    seal.signing_chain_pem = signing_chain_;
    EXPECT_OK(ovf::SealPackage(Env::Default(), seal, out));
    return out;
  }

  // Runs the job of a hostile image through the host and checks that it
  // was refused with `reason` after the key release (the disk was
  // decrypted), that no qemu ran and that no decrypted disk remains.
  void ExpectRefusedBeforeQemu(const std::string& disk, const std::string& reason) {
    const std::string job_id = UploadAndLaunch(SealDisk("hostile", disk));
    bool released = false;
    after_release_ = [&] { released = true; };
    auto ran = daemon_->service()->PollOnce();
    ASSERT_OK(ran);
    EXPECT_EQ(*ran, 1);
    EXPECT_TRUE(released);  // the inspector ran on the decrypted disk
    // The portal records the host's reason; with no other host the job fails.
    json job = JobJson(job_id);
    EXPECT_EQ(job["state"], "failed") << job.dump();
    ASSERT_FALSE(job["attempts"].empty()) << job.dump();
    EXPECT_EQ(job["attempts"][0]["reason"], "unsafe_disk_format") << job.dump();
    const std::string refusal = job["attempts"][0]["refusal"];
    EXPECT_TRUE(refusal.starts_with("unsafe_disk_format: ")) << refusal;
    EXPECT_NE(refusal.find(reason), std::string::npos) << refusal;
    EXPECT_EQ(refusal.find("unsafe_disk_format: unsafe_disk_format"), std::string::npos)
        << refusal;
    EXPECT_NE(job["failure_reason"].get<std::string>().find(reason), std::string::npos)
        << job.dump();
    // No VM, no qemu, no qemu log, no decrypted disk, no package.
    auto vms = daemon_->vms()->List();
    ASSERT_OK(vms);
    EXPECT_TRUE(vms->empty());
    EXPECT_FALSE(QemuRunsForJob(job_id));
    EXPECT_TRUE(vmseal::testing::ListDir(dir_.File("img") + "/run").empty());
    EXPECT_TRUE(Disks().empty());
    EXPECT_TRUE(vmseal::testing::ListDir(dir_.File("hs") + "/work").empty());
    // No export, overlay or cache of the refused job either.
    EXPECT_TRUE(vmseal::testing::ListJobDiskDirs(dir_.File("img") + "/vd").empty());
  }
};

// The backing file names the host's own mTLS private key.
TEST_F(HostDiskFormatE2eTest, QcowBackingFileNamingTheHostKeyIsRefusedBeforeQemu) {
  const std::string host_key = dir_.File("host-key.pem");
  const FileSnapshot before = Snapshot(host_key);
  const std::string evil = dir_.File("backing.qcow2");
  QemuImg({"create", "-q", "-f", "qcow2", "-b", host_key, "-F", "raw", evil});
  ExpectRefusedBeforeQemu(evil, "unsafe_disk_format: qcow2 names a backing file");
  const FileSnapshot after = Snapshot(host_key);
  EXPECT_EQ(after.content, before.content);
  EXPECT_EQ(after.mtime_ns, before.mtime_ns);
}

// The external data file names a host file the guest could overwrite.
TEST_F(HostDiskFormatE2eTest, QcowExternalDataFileNamingAHostFileIsRefusedBeforeQemu) {
  // qemu-img creates (and sizes) the data file; the host file is then given
  // its real content, which must survive the job.
  const std::string host_file = dir_.File("host-config.json");
  const std::string evil = dir_.File("datafile.qcow2");
  QemuImg({"create", "-q", "-f", "qcow2", "-o", "data_file=" + host_file + ",data_file_raw=on",
           evil, "16M"});
  vmseal::testing::WriteFileOrDie(host_file, R"({"portal_url": "https://portal"})");
  const FileSnapshot before = Snapshot(host_file);
  ExpectRefusedBeforeQemu(evil, "external data file");
  const FileSnapshot after = Snapshot(host_file);
  EXPECT_EQ(after.content, before.content);
  EXPECT_EQ(after.mtime_ns, before.mtime_ns);
}

TEST_F(HostDiskFormatE2eTest, QcowWithAnUnknownIncompatibleFeatureIsRefusedBeforeQemu) {
  const std::string evil = dir_.File("unknown-bit.qcow2");
  QemuImg({"create", "-q", "-f", "qcow2", evil, "16M"});
  std::string bytes = vmseal::testing::ReadFileOrDie(evil);
  bytes[79] = static_cast<char>(bytes[79] | 0x20);  // incompatible feature bit 5
  vmseal::testing::WriteFileOrDie(evil, bytes);
  ExpectRefusedBeforeQemu(evil,
                          "unsafe_disk_format: qcow2 has unknown incompatible feature bits 0x20");
}

// The sample image as a clean qcow2 still boots through the -blockdev graph.
TEST_F(HostDiskFormatE2eTest, CleanQcow2BootsAndShowsTheMarker) {
  const std::string qcow = dir_.File("sample.qcow2");
  QemuImg({"convert", "-q", "-f", "raw", "-O", "qcow2", image_, qcow});
  const std::string job_id = UploadAndLaunch(SealDisk("clean-qcow2", qcow));
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].disk_format, vm::DiskFormat::kQcow2);
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker((*vms)[0].name, marker_, 240000));
}

// An export as VirtualBox and VMware write it: an OVA whose disk is a
// streamOptimized VMDK (made here by qemu-img from the sample image). Seal
// converts it to qcow2 on the customer's side (docs/format/package.md §2.3),
// the host's inspector accepts it, and it boots to the marker.
TEST_F(HostDiskFormatE2eTest, VmdkOvaConvertedAtSealBootsAndShowsTheMarker) {
  const std::string vmdk = dir_.File("export-disk001.vmdk");
  QemuImg({"convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", image_,
           vmdk});
  std::string descriptor = vmseal::testing::ReadFileOrDie(vmseal::testing::SourceDir() +
                                                          "/tests/testdata/ovf/vbox-1.0.ovf");
  for (auto [from, to] : {std::pair<std::string, std::string>{"vbox-disk001.vmdk",
                                                              "export-disk001.vmdk"},
                          {"<rasd:VirtualQuantity>1024<", "<rasd:VirtualQuantity>256<"}}) {
    for (size_t at = descriptor.find(from); at != std::string::npos;
         at = descriptor.find(from, at + to.size())) {
      descriptor.replace(at, from.size(), to);
    }
  }
  const std::string export_dir = dir_.File("export");
  std::filesystem::create_directories(export_dir);
  vmseal::testing::WriteFileOrDie(export_dir + "/export.ovf", descriptor);
  std::filesystem::copy_file(vmdk, export_dir + "/export-disk001.vmdk");
  const std::string plain_ova = dir_.File("export.ova");
  std::string log;
  ASSERT_EQ(vmseal::testing::RunCommand({"tar", "-C", export_dir, "--format=ustar", "-cf",
                                         plain_ova, "export.ovf", "export-disk001.vmdk"},
                                        &log),
            0)
      << log;
  const std::string out = dir_.File("vmdk-export-sealed.ova");
  ovf::SealOptions seal;
  seal.inputs = {plain_ova};
  seal.recipient_pem = customer_pub_pem_;
  seal.image_id = "vmdk-export";
  seal.tenant = customer_id_;
  seal.signing_key = signing_key_.get();
  seal.signing_chain_pem = signing_chain_;
  ASSERT_OK(ovf::SealPackage(Env::Default(), seal, out));
  auto sealed = ovf::Package::Open(Env::Default(), out, ovf::PackageOpenOptions());
  ASSERT_OK(sealed);
  ASSERT_EQ((*sealed)->files().size(), 1u);
  EXPECT_EQ((*sealed)->files()[0].href, "export-disk001.qcow2.vmseal");
  EXPECT_EQ((*sealed)->files()[0].disk_format_uri, ovf::kQcow2FormatUri);

  const std::string job_id = UploadAndLaunch(out);
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  EXPECT_EQ((*vms)[0].disk_format, vm::DiskFormat::kQcow2);
  // No firmware setting in the export: the BIOS image boots BIOS.
  EXPECT_EQ((*vms)[0].firmware, vm::Firmware::kBios);
  EXPECT_TRUE((*vms)[0].efi_vars_path.empty());
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker((*vms)[0].name, marker_, 240000));
}

// A UEFI-only guest exported by VMware (vmw:Config firmware="efi", issue 18):
// seal maps the setting into vmseal:Platform, the host boots OVMF with the
// VM's own variable store, and the image's GRUB prints its marker. The
// image (GPT + ESP, no BIOS boot code) is built here by
// scripts/build-uefi-sample-image.sh from this machine's own files.
TEST_F(HostDiskFormatE2eTest, UefiVmwareExportBootsUnderOvmfAndShowsTheMarker) {
  const std::string image = dir_.File("uefi.img");
  std::string log;
  ASSERT_EQ(vmseal::testing::RunCommand(
                {vmseal::testing::SourceDir() + "/scripts/build-uefi-sample-image.sh", image},
                &log, 120),
            0)
      << log;
  std::string marker = vmseal::testing::ReadFileOrDie(image + ".marker");
  while (!marker.empty() && marker.back() == '\n') marker.pop_back();
  const std::string vmdk = dir_.File("uefi-disk001.vmdk");
  QemuImg({"convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", image,
           vmdk});
  std::string descriptor = vmseal::testing::ReadFileOrDie(vmseal::testing::SourceDir() +
                                                          "/tests/testdata/ovf/vbox-1.0.ovf");
  for (auto [from, to] : {std::pair<std::string, std::string>{"vbox-disk001.vmdk",
                                                              "uefi-disk001.vmdk"},
                          {"<rasd:VirtualQuantity>1024<", "<rasd:VirtualQuantity>256<"},
                          {"xmlns:vbox=", "xmlns:vmw=\"http://www.vmware.com/schema/ovf\" "
                                          "xmlns:vbox="},
                          {"</VirtualHardwareSection>",
                           "<vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" "
                           "vmw:value=\"efi\"/></VirtualHardwareSection>"}}) {
    const size_t at = descriptor.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    descriptor.replace(at, from.size(), to);
  }
  const std::string export_dir = dir_.File("uefi-export");
  std::filesystem::create_directories(export_dir);
  vmseal::testing::WriteFileOrDie(export_dir + "/uefi.ovf", descriptor);
  std::filesystem::copy_file(vmdk, export_dir + "/uefi-disk001.vmdk");
  const std::string plain_ova = dir_.File("uefi-export.ova");
  ASSERT_EQ(vmseal::testing::RunCommand({"tar", "-C", export_dir, "--format=ustar", "-cf",
                                         plain_ova, "uefi.ovf", "uefi-disk001.vmdk"},
                                        &log),
            0)
      << log;
  const std::string out = dir_.File("uefi-sealed.ova");
  ovf::SealOptions seal;
  seal.inputs = {plain_ova};
  seal.recipient_pem = customer_pub_pem_;
  seal.image_id = "uefi-export";
  seal.tenant = customer_id_;
  seal.signing_key = signing_key_.get();
  seal.signing_chain_pem = signing_chain_;
  ASSERT_OK(ovf::SealPackage(Env::Default(), seal, out));
  auto sealed = ovf::Package::Open(Env::Default(), out, ovf::PackageOpenOptions());
  ASSERT_OK(sealed);
  EXPECT_NE((*sealed)->descriptor_text().find(R"(firmware="efi" secureBoot="false" tpm="none")"),
            std::string::npos);

  const std::string job_id = UploadAndLaunch(out);
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const vm::VmInfo& vm = (*vms)[0];
  EXPECT_EQ(vm.firmware, vm::Firmware::kEfi);
  EXPECT_FALSE(vm.secure_boot);
  ASSERT_FALSE(vm.efi_vars_path.empty());
  // The variable store is the VM's own: its uid's when qemu runs as one.
  struct stat st;
  ASSERT_EQ(::stat(vm.efi_vars_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(st.st_uid, vm.uid == 0 ? ::geteuid() : vm.uid);
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker(vm.name, marker, 240000));
  EXPECT_NE(vmseal::testing::ReadFileOrDie(vm.serial_log_path)
                .find("VMSEAL-UEFI-SAMPLE-IMAGE booted: efi"),
            std::string::npos);
  const std::string vars = vm.efi_vars_path;
  ASSERT_OK(daemon_->agent()->DeleteVm(vm.name));
  EXPECT_FALSE(std::filesystem::exists(vars));
}

// Builds scripts/build-uefi-sample-image.sh OUT `flags`, cached in the build
// tree as `name`.img (rebuilt when a script is newer); returns its path and
// sets `marker`.
std::string CachedUefiImage(const std::string& name, const std::vector<std::string>& flags,
                            std::string* marker) {
  const std::string dir = VMSEAL_HOST_E2E_CACHE_DIR;
  const std::string image = dir + "/" + name + ".img";
  const std::string script =
      vmseal::testing::SourceDir() + "/scripts/build-uefi-sample-image.sh";
  const std::string lib = vmseal::testing::SourceDir() + "/scripts/lib/sample-linux-payload.sh";
  int lock_fd = ::open((dir + "/" + name + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  EXPECT_GE(lock_fd, 0);
  if (lock_fd < 0) return image;
  EXPECT_EQ(::flock(lock_fd, LOCK_EX), 0);
  std::error_code ec;
  if (!fs::exists(image) || !fs::exists(image + ".marker") ||
      fs::last_write_time(image, ec) < fs::last_write_time(script, ec) ||
      fs::last_write_time(image, ec) < fs::last_write_time(lib, ec)) {
    std::vector<std::string> argv = {script, image};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string out;
    EXPECT_EQ(vmseal::testing::RunCommand(argv, &out, 600), 0) << out;
  }
  ::close(lock_fd);
  *marker = vmseal::testing::ReadFileOrDie(image + ".marker");
  while (!marker->empty() && marker->back() == '\n') marker->pop_back();
  return image;
}

// Builds the UEFI images once per binary, before any host registers: the
// tests poll the host by hand, so a slow build inside a test would outlast
// the portal's 30 s heartbeat limit.
class HostSecureBootE2eTest : public HostDiskFormatE2eTest {
 protected:
  static void SetUpTestSuite() {
    HostDiskFormatE2eTest::SetUpTestSuite();
    std::string marker;
    CachedUefiImage("uefi-signed-linux", {"--signed", "--linux"}, &marker);
    CachedUefiImage("uefi-unsigned", {}, &marker);
  }
};

// Secure Boot end to end (issue 18): a customer seals a UEFI image whose
// ESP holds the chain Debian installs (shim signed by Microsoft's UEFI CA,
// GRUB and the kernel signed by Debian) and asks for Secure Boot and a TPM.
// The host boots OVMF with the Microsoft keys enrolled and Secure Boot
// enforced, gives the VM its own vTPM (tpm-crb), and the guest's Linux
// reports from inside that it sees /dev/tpm0 and the ACPI TPM2 table and
// that its kernel found Secure Boot enabled.
TEST_F(HostSecureBootE2eTest, SignedUefiPackageBootsUnderSecureBootAndSeesItsVtpm) {
  std::string marker;
  const std::string image = CachedUefiImage("uefi-signed-linux", {"--signed", "--linux"}, &marker);
  ASSERT_FALSE(marker.empty());
  const std::string out = dir_.File("secure.ova");
  ovf::SealOptions seal;
  seal.inputs = {image};
  seal.recipient_pem = customer_pub_pem_;
  seal.image_id = "secure-boot";
  seal.tenant = customer_id_;
  seal.vm.cpus = 1;
  seal.vm.memory_mib = 512;  // OVMF and the kernel's EFI stub do not fit 256
  seal.vm.platform = {.efi = true, .secure_boot = true, .tpm = true};
  seal.signing_key = signing_key_.get();
  seal.signing_chain_pem = signing_chain_;
  ASSERT_OK(ovf::SealPackage(Env::Default(), seal, out));
  const std::string job_id = UploadAndLaunch(out);
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const vm::VmInfo vm = (*vms)[0];
  EXPECT_EQ(vm.firmware, vm::Firmware::kEfi);
  EXPECT_TRUE(vm.secure_boot);
  ASSERT_TRUE(vm.tpm);
  ASSERT_OK(daemon_->vms()->WaitForSerialMarker(vm.name, marker, 300000));
  const std::string log = vmseal::testing::ReadFileOrDie(vm.serial_log_path);
  EXPECT_NE(log.find("VMSEAL-UEFI-SAMPLE-IMAGE booted: efi"), std::string::npos) << log;
  EXPECT_NE(log.find("VMSEAL-TPM: device=/dev/tpm0 acpi=TPM2"), std::string::npos) << log;
  EXPECT_NE(log.find("VMSEAL-FIRMWARE: efi secureboot=enabled"), std::string::npos) << log;
  EXPECT_EQ(log.find("Access Denied"), std::string::npos) << log;
  ASSERT_OK(daemon_->agent()->DeleteVm(vm.name));
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(vm.tpm_pid)))
      << "swtpm outlived its VM";
}

// The attack on the guarantee above: the same package shape, but the ESP's
// loader is an unsigned GRUB (say, one patched to skip the kernel check).
// The host's firmware refuses it, so the guest never runs.
TEST_F(HostSecureBootE2eTest, UnsignedLoaderInASecureBootPackageNeverRuns) {
  std::string marker;
  const std::string image = CachedUefiImage("uefi-unsigned", {}, &marker);
  ASSERT_FALSE(marker.empty());
  const std::string out = dir_.File("unsigned.ova");
  ovf::SealOptions seal;
  seal.inputs = {image};
  seal.recipient_pem = customer_pub_pem_;
  seal.image_id = "unsigned-loader";
  seal.tenant = customer_id_;
  seal.vm.cpus = 1;
  seal.vm.memory_mib = 256;
  seal.vm.platform = {.efi = true, .secure_boot = true, .tpm = false};
  seal.signing_key = signing_key_.get();
  seal.signing_chain_pem = signing_chain_;
  ASSERT_OK(ovf::SealPackage(Env::Default(), seal, out));
  const std::string job_id = UploadAndLaunch(out);
  ASSERT_OK(daemon_->service()->PollOnce());
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const vm::VmInfo vm = (*vms)[0];
  EXPECT_TRUE(vm.secure_boot);
  ASSERT_OK(daemon_->vms()->WaitForSerialMarker(vm.name, "Access Denied", 300000));
  ASSERT_OK(daemon_->vms()->WaitForSerialMarker(vm.name, "No bootable option", 300000));
  const std::string log = vmseal::testing::ReadFileOrDie(vm.serial_log_path);
  EXPECT_EQ(log.find(marker), std::string::npos) << log;
  EXPECT_EQ(log.find("VMSEAL-UEFI-SAMPLE-IMAGE booted"), std::string::npos) << log;
}

// A package that asks for a TPM (vmseal:Platform tpm="2.0", issue 18) gets a
// swtpm of its own, run as the VM's uid: the guest sees /dev/tpm0 and the
// firmware's ACPI TPM2 table, and the swtpm and its state end with the VM.
TEST_F(HostDiskFormatE2eTest, PackageAskingForATpmGetsItsOwnVtpmThatEndsWithTheVm) {
  const std::string out = dir_.File("tpm.ova");
  ovf::SealOptions seal;
  seal.inputs = {image_};
  seal.recipient_pem = customer_pub_pem_;
  seal.image_id = "with-tpm";
  seal.tenant = customer_id_;
  seal.vm.cpus = 1;
  seal.vm.memory_mib = 256;
  seal.vm.platform.tpm = true;
  seal.signing_key = signing_key_.get();
  seal.signing_chain_pem = signing_chain_;
  ASSERT_OK(ovf::SealPackage(Env::Default(), seal, out));
  const std::string job_id = UploadAndLaunch(out);
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const vm::VmInfo vm = (*vms)[0];
  ASSERT_TRUE(vm.tpm);
  ASSERT_GT(vm.tpm_pid, 0);
  if (vm.uid != 0) {
    // The swtpm runs as the VM's own uid, like its qemu.
    std::ifstream status("/proc/" + std::to_string(vm.tpm_pid) + "/status");
    std::string uid_line;
    for (std::string line; std::getline(status, line);) {
      if (line.starts_with("Uid:")) uid_line = line;
    }
    const std::string id = std::to_string(vm.uid);
    EXPECT_EQ(uid_line, "Uid:\t" + id + "\t" + id + "\t" + id + "\t" + id);
    struct stat st;
    ASSERT_EQ(::stat(vm.tpm_state_dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, vm.uid);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
  }
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker(vm.name, "VMSEAL-TPM: device=/dev/tpm0 acpi=TPM2",
                                                240000));
  EXPECT_OK(daemon_->vms()->WaitForSerialMarker(vm.name, marker_, 240000));
  ASSERT_OK(daemon_->agent()->DeleteVm(vm.name));
  EXPECT_FALSE(std::filesystem::exists("/proc/" + std::to_string(vm.tpm_pid)))
      << "swtpm outlived its VM";
  EXPECT_FALSE(std::filesystem::exists(vm.tpm_state_dir));
}

// ---------------------------------------------------------------------------
// Streamed launch (issue 15): the disks are NBD exports of the portal's
// package read by HTTPS Range; guest writes land in a LUKS overlay.

// Finds 64-byte windows of a plaintext in files, at any alignment: the
// plaintext's windows at multiples of 64 go into a set (windows of fewer
// than 8 distinct bytes, such as zero pages, are left out: they are not
// the customer's content), and every file is scanned with a rolling hash
// over every offset; hits are confirmed byte for byte.
class PlaintextScanner {
 public:
  static constexpr size_t kWindow = 64;
  explicit PlaintextScanner(const std::string& plaintext) : plain_(plaintext) {
    for (size_t off = 0; off + kWindow <= plain_.size(); off += kWindow) {
      const uint8_t* w = reinterpret_cast<const uint8_t*>(plain_.data()) + off;
      std::set<uint8_t> distinct(w, w + kWindow);
      if (distinct.size() < 8) continue;
      index_.emplace(Hash(w), off);
    }
  }
  size_t windows() const { return index_.size(); }

  // Offsets in `path` where a plaintext window starts.
  std::vector<uint64_t> Scan(const std::string& path) const {
    std::vector<uint64_t> hits;
    std::ifstream in(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (data.size() < kWindow) return hits;
    const uint8_t* d = reinterpret_cast<const uint8_t*>(data.data());
    uint64_t h = Hash(d);
    for (size_t i = 0;; ++i) {
      auto [lo, hi] = index_.equal_range(h);
      for (auto it = lo; it != hi; ++it) {
        if (std::memcmp(d + i, plain_.data() + it->second, kWindow) == 0) {
          hits.push_back(i);
          break;
        }
      }
      if (hits.size() > 16 || i + kWindow >= data.size()) break;
      h = (h - d[i] * pow_) * kBase + d[i + kWindow];
    }
    return hits;
  }

 private:
  static constexpr uint64_t kBase = 1099511628211ull;
  static uint64_t Hash(const uint8_t* w) {
    uint64_t h = 0;
    for (size_t i = 0; i < kWindow; ++i) h = h * kBase + w[i];
    return h;
  }
  static uint64_t Pow() {
    uint64_t p = 1;
    for (size_t i = 0; i + 1 < kWindow; ++i) p *= kBase;
    return p;
  }
  const std::string plain_;
  const uint64_t pow_ = Pow();
  std::unordered_multimap<uint64_t, size_t> index_;
};

class HostStreamE2eTest : public HostE2eTest {
 protected:
  void SetUp() override {
    HostE2eTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_OK(daemon_->service()->Start());
    StartHeartbeats();
    RegisterCustomer();
    TrustHostState();
  }

  void TearDown() override {
    StopHeartbeats();
    HostE2eTest::TearDown();
  }

  // Seals `inputs` (disk images, in order) as one package.
  std::string SealDisks(const std::string& image_id, const std::vector<std::string>& inputs) {
    const std::string out = dir_.File(image_id + ".ova");
    ovf::SealOptions seal;
    seal.inputs = inputs;
    seal.recipient_pem = customer_pub_pem_;
    seal.image_id = image_id;
    seal.tenant = customer_id_;
    seal.vm.cpus = 1;
    seal.vm.memory_mib = 256;
    seal.signing_key = signing_key_.get();
    seal.signing_chain_pem = signing_chain_;
    EXPECT_OK(ovf::SealPackage(Env::Default(), seal, out));
    return out;
  }

  // Launches `package` through the portal and the host; returns the VM.
  vm::VmInfo LaunchAndBoot(const std::string& package) {
    const std::string job_id = UploadAndLaunch(package);
    last_job_id_ = job_id;
    auto ran = daemon_->service()->PollOnce();
    EXPECT_OK(ran);
    json job = JobJson(job_id);
    EXPECT_EQ(job["state"], "running") << job.dump();
    auto vms = daemon_->vms()->List();
    EXPECT_OK(vms);
    if (!vms.ok() || vms->size() != 1) {
      ADD_FAILURE() << "expected one VM";
      return {};
    }
    EXPECT_OK(daemon_->vms()->WaitForSerialMarker((*vms)[0].name, marker_, 240000));
    return (*vms)[0];
  }

  // A qemu-io command on one of the VM's block nodes through QMP's
  // human-monitor-command; qemu-io prints to qemu's stdout (the VM's qemu
  // log), so the answer is what the log gained (bounded wait for the
  // "ops;" summary or an error line).
  StatusOr<std::string> QemuIo(const vm::VmInfo& vm, const std::string& node,
                               const std::string& command) {
    // The device's own block backend (query-block names it): a second
    // writer on the node would conflict with the device's permissions.
    ASSIGN_OR_RETURN(std::string blocks,
                     vm::internal::QmpExecute(vm.qmp_socket_path, "query-block", 5000));
    std::string qdev;
    for (const json& b : json::parse(blocks)) {
      if (b["inserted"].value("node-name", "") == node) qdev = b.value("qdev", "");
    }
    if (qdev.empty()) return NotFoundError("no device on node " + node);
    return Hmp(vm, "qemu-io -d " + qdev + " \"" + command + "\"");
  }

  StatusOr<std::string> Hmp(const vm::VmInfo& vm, const std::string& command) {
    std::error_code ec;
    const uint64_t before = fs::file_size(vm.qemu_log_path, ec);
    json args = {{"command-line", command}};
    auto r = vm::internal::QmpExecuteWithArguments(vm.qmp_socket_path, "human-monitor-command",
                                                   args.dump(), 120000);
    if (!r.ok()) return r.status();
    std::string added;
    for (int i = 0; i < 100; ++i) {
      std::string all = vmseal::testing::ReadFileOrDie(vm.qemu_log_path);
      added = all.size() > before ? all.substr(before) : "";
      if (added.find("ops;") != std::string::npos ||
          added.find("failed") != std::string::npos) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return json::parse(*r).get<std::string>() + added;
  }

  // Waits (bounded) until every export of `vm` reports its prefetch complete.
  void WaitForPrefetch(const std::string& vm_name) {
    const auto dirs = daemon_->agent()->ExportDirsForTesting(vm_name);
    ASSERT_FALSE(dirs.empty());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (const std::string& d : dirs) {
      for (;;) {
        std::ifstream in(d + "/progress.json");
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        json p = json::parse(text, nullptr, false);
        if (p.is_object() && p.value("complete", false)) break;
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << d << ": " << text;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  }

  // Every regular file under the host's state, work and image store dirs.
  std::vector<std::string> HostFiles() {
    std::vector<std::string> out;
    for (const std::string& root : {dir_.File("hs"), dir_.File("img")}) {
      std::error_code ec;
      for (auto it = fs::recursive_directory_iterator(root, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_regular_file()) out.push_back(it->path().string());
      }
    }
    return out;
  }

  // The job of the last LaunchAndBoot.
  std::string last_job_id_;

};

TEST_F(HostStreamE2eTest, NoPlaintextOfTheImageOnHostStorageAfterBootAndGuestWrites) {
  const std::string plain = vmseal::testing::ReadFileOrDie(image_);
  PlaintextScanner scanner(plain);
  ASSERT_GT(scanner.windows(), 1000u);
  // The scanner finds plaintext where there is some, at any alignment.
  {
    const std::string probe = dir_.File("probe.bin");
    vmseal::testing::WriteFileOrDie(probe, "xyz" + plain.substr(1 << 20, 4096) + "abc");
    EXPECT_FALSE(scanner.Scan(probe).empty());
  }
  vm::VmInfo vm = LaunchAndBoot(Seal("no-plain"));
  ASSERT_FALSE(vm.name.empty());
  // The guest's disk gets the image's own bytes written back (the worst
  // case for an overlay: plaintext content), and a pattern.
  auto wrote = QemuIo(vm, "disk0", "write -s " + image_ + " 8M 1M");
  ASSERT_OK(wrote);
  EXPECT_NE(wrote->find("wrote 1048576/1048576"), std::string::npos) << *wrote;
  auto pattern = QemuIo(vm, "disk0", "write -P 0x5a 12M 1M");
  ASSERT_OK(pattern);
  EXPECT_NE(pattern->find("wrote 1048576/1048576"), std::string::npos) << *pattern;
  // Everything of the package has arrived (the ciphertext cache is full).
  WaitForPrefetch(vm.name);
  // The pool's ready overlays are scanned too.
  ASSERT_TRUE(daemon_->agent()->overlay_pool()->WaitUntilFull(240000));
  const std::vector<std::string> files = HostFiles();
  ASSERT_FALSE(files.empty());
  bool saw_overlay = false, saw_cache = false, saw_pool = false;
  for (const std::string& f : files) {
    saw_overlay |= f == vm.disks[0].overlay_path;
    saw_pool |= f.starts_with(daemon_->agent()->overlay_pool()->dir() + "/");
    saw_cache |= f.ends_with("/cache.data");
    std::vector<uint64_t> hits = scanner.Scan(f);
    EXPECT_TRUE(hits.empty()) << f << " holds plaintext of the image at offset " << hits[0];
  }
  EXPECT_TRUE(saw_overlay);
  EXPECT_TRUE(saw_cache);
  EXPECT_TRUE(saw_pool);
  EXPECT_TRUE(Disks().empty());
}

TEST_F(HostStreamE2eTest, StreamedLaunchTakesAReadyOverlayAndNeverRunsTheLuksBenchmark) {
  vm::OverlayPool* pool = daemon_->agent()->overlay_pool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(pool->WaitUntilFull(240000));
  const vm::OverlayPool::Stats before = pool->GetStats();
  EXPECT_EQ(before.made_on_slow_path, 0u);
  // The fixture's service sends heartbeats only when told to (the portal
  // drops a host silent for 30 s from placement): the wait may have been long.
  ASSERT_OK(daemon_->service()->HeartbeatOnce());
  vm::VmInfo vm = LaunchAndBoot(Seal("pooled"));
  ASSERT_FALSE(vm.name.empty());
  const vm::OverlayPool::Stats after = pool->GetStats();
  // The launch took a ready overlay; no qemu-img create (its PBKDF
  // benchmark) ran on the launch path.
  EXPECT_EQ(after.made_on_slow_path, 0u);
  EXPECT_EQ(after.taken_from_pool, before.taken_from_pool + 1);
  // It left the pool: the VM's overlay is in the VM's own directory, grown
  // to the disk's size, and qemu opened it with its secret (the guest writes).
  ASSERT_EQ(vm.disks.size(), 1u);
  EXPECT_FALSE(vm.disks[0].overlay_path.starts_with(pool->dir()));
  auto blocks = vm::internal::QmpExecute(vm.qmp_socket_path, "query-block", 5000);
  ASSERT_OK(blocks);
  EXPECT_EQ(json::parse(*blocks)[0]["inserted"]["image"]["virtual-size"], fs::file_size(image_))
      << *blocks;
  auto wrote = QemuIo(vm, "disk0", "write -P 0x5a 4M 64k");
  ASSERT_OK(wrote);
  EXPECT_NE(wrote->find("wrote 65536/65536"), std::string::npos) << *wrote;
  auto read = QemuIo(vm, "disk0", "read -P 0x5a 4M 64k");
  ASSERT_OK(read);
  EXPECT_EQ(read->find("Pattern verification failed"), std::string::npos) << *read;
  // The launch record keeps that overlay's secret wrapped to the TPM.
  auto record = internal::ParseLaunchRecord(vmseal::testing::ReadFileOrDie(
      (fs::path(vm.disks[0].overlay_path).parent_path() / "launch.json").string()));
  ASSERT_OK(record);
  EXPECT_EQ(record->disk_secrets.size(), 1u);
  // The pool refills in the background.
  ASSERT_TRUE(pool->WaitUntilFull(240000));
  EXPECT_EQ(pool->GetStats().made_in_background, before.made_in_background + 1);
  EXPECT_EQ(pool->GetStats().made_on_slow_path, 0u);
}

TEST_F(HostStreamE2eTest, ThreeDiskPackageAttachesEveryDiskInOrderAndBootsTheFirst) {
  const std::string b = dir_.File("b.raw"), c = dir_.File("c.raw");
  crypto::Bytes rb = crypto::RandomBytes(3 << 20), rc = crypto::RandomBytes(2 << 20);
  vmseal::testing::WriteFileOrDie(b, std::string(rb.begin(), rb.end()));
  vmseal::testing::WriteFileOrDie(c, std::string(rc.begin(), rc.end()));
  vm::VmInfo vm = LaunchAndBoot(SealDisks("three", {image_, b, c}));
  ASSERT_EQ(vm.disks.size(), 3u);
  EXPECT_TRUE(vm.disks[0].boot);
  EXPECT_FALSE(vm.disks[1].boot);
  EXPECT_FALSE(vm.disks[2].boot);
  // The guest itself lists three virtio disks, in order, each with its
  // size and its own first bytes: the boot image, then b, then c.
  const std::string console = vmseal::testing::ReadFileOrDie(vm.serial_log_path);
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"vda", image_}, {"vdb", b}, {"vdc", c}};
  for (const auto& [dev, input] : inputs) {
    const std::string bytes = vmseal::testing::ReadFileOrDie(input);
    std::string head;
    for (size_t k = 0; k < 16; ++k) {
      static const char kHex[] = "0123456789abcdef";
      head += kHex[static_cast<uint8_t>(bytes[k]) >> 4];
      head += kHex[static_cast<uint8_t>(bytes[k]) & 15];
    }
    const std::string line = "VMSEAL-DISK: " + dev + " sectors=" +
                             std::to_string(bytes.size() / 512) + " head=" + head;
    EXPECT_NE(console.find(line), std::string::npos) << line << "\n" << console;
  }
  EXPECT_EQ(console.find("VMSEAL-DISK: vdd"), std::string::npos) << console;
  // Each overlay came with its own secret (one per disk in the record).
  auto record = internal::ParseLaunchRecord(vmseal::testing::ReadFileOrDie(
      (fs::path(vm.disks[0].overlay_path).parent_path() / "launch.json").string()));
  ASSERT_OK(record);
  EXPECT_EQ(record->disk_secrets.size(), 3u);
  auto blocks = vm::internal::QmpExecute(vm.qmp_socket_path, "query-block", 5000);
  ASSERT_OK(blocks);
  json list = json::parse(*blocks);
  ASSERT_EQ(list.size(), 3u) << *blocks;
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(list[i]["inserted"]["node-name"], "disk" + std::to_string(i)) << list[i].dump();
  }
  // Each disk serves its own content: the second's first bytes, read in
  // the guest's view, are the second input's.
  auto read = QemuIo(vm, "disk1", "read -P " + std::to_string(rb[0]) + " 0 1");
  ASSERT_OK(read);
  EXPECT_NE(read->find("read 1/1"), std::string::npos) << *read;
  EXPECT_EQ(read->find("Pattern verification failed"), std::string::npos) << *read;
  auto bad = QemuIo(vm, "disk1", "read -P " + std::to_string(rb[0] ^ 1) + " 0 1");
  ASSERT_OK(bad);
  EXPECT_NE(bad->find("Pattern verification failed"), std::string::npos) << *bad;
}

TEST_F(HostStreamE2eTest, BootDiskIsTheOneTheDescriptorNamesNotTheFirstInReferences) {
  // An OVF whose References list a data disk first, while its hardware puts
  // the image at address 0 of the controller: the image must boot.
  const std::string ovf_dir = dir_.File("boot-order");
  fs::create_directories(ovf_dir);
  crypto::Bytes data = crypto::RandomBytes(2 << 20);
  vmseal::testing::WriteFileOrDie(ovf_dir + "/data.raw", std::string(data.begin(), data.end()));
  fs::copy_file(image_, ovf_dir + "/boot.img");
  const uint64_t boot_size = fs::file_size(image_);
  const std::string raw(ovf::kRawFormatUri);
  const std::string descriptor = R"(<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:id="data" ovf:href="data.raw" ovf:size=")" + std::to_string(data.size()) + R"("/>
    <File ovf:id="boot" ovf:href="boot.img" ovf:size=")" + std::to_string(boot_size) + R"("/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="data" ovf:capacity=")" + std::to_string(data.size()) + R"(" ovf:format=")" + raw + R"("/>
    <Disk ovf:diskId="vmdisk2" ovf:fileRef="boot" ovf:capacity=")" + std::to_string(boot_size) + R"(" ovf:format=")" + raw + R"("/>
  </DiskSection>
  <VirtualSystem ovf:id="boot-order">
    <Info>A VM whose boot disk is second in References</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item><rasd:ElementName>1 CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>256 MiB</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>controller</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:ElementName>data</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>boot</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
)";
  vmseal::testing::WriteFileOrDie(ovf_dir + "/vm.ovf", descriptor);
  // The boot marker shows only if the image, not the data disk, boots.
  vm::VmInfo vm = LaunchAndBoot(SealDisks("boot-order", {ovf_dir + "/vm.ovf"}));
  ASSERT_EQ(vm.disks.size(), 2u);
  EXPECT_TRUE(vm.disks[0].boot);
  EXPECT_FALSE(vm.disks[1].boot);
  auto blocks = vm::internal::QmpExecute(vm.qmp_socket_path, "query-block", 5000);
  ASSERT_OK(blocks);
  json list = json::parse(*blocks);
  ASSERT_EQ(list.size(), 2u) << *blocks;
  EXPECT_EQ(list[0]["inserted"]["node-name"], "disk0");
  EXPECT_EQ(list[0]["inserted"]["image"]["virtual-size"], boot_size) << list[0].dump();
  EXPECT_EQ(list[1]["inserted"]["image"]["virtual-size"], data.size()) << list[1].dump();
  // The second device serves the data disk's own bytes.
  auto read = QemuIo(vm, "disk1", "read -P " + std::to_string(data[0]) + " 0 1");
  ASSERT_OK(read);
  EXPECT_NE(read->find("read 1/1"), std::string::npos) << *read;
  EXPECT_EQ(read->find("Pattern verification failed"), std::string::npos) << *read;
}

TEST_F(HostStreamE2eTest, VmKeepsReadingItsDiskWhenThePortalGoesAwayAfterPrefetch) {
  vm::VmInfo vm = LaunchAndBoot(Seal("portal-away"));
  ASSERT_FALSE(vm.name.empty());
  WaitForPrefetch(vm.name);
  portal_->Stop();
  // The whole disk reads from the cache, decrypted on demand.
  const uint64_t size = fs::file_size(image_);
  auto read = QemuIo(vm, "disk0", "read 0 " + std::to_string(size) + "");
  ASSERT_OK(read);
  EXPECT_NE(read->find("read " + std::to_string(size) + "/" + std::to_string(size)),
            std::string::npos) << *read;
  auto now = daemon_->vms()->Get(vm.name);
  ASSERT_OK(now);
  EXPECT_EQ(now->state, vm::VmRunState::kRunning);
}

TEST_F(HostStreamE2eTest, AgentGoneAndRestartedServesTheExportsAgain) {
  vm::VmInfo vm = LaunchAndBoot(Seal("restart"));
  ASSERT_FALSE(vm.name.empty());
  auto wrote = QemuIo(vm, "disk0", "write -P 0x5a 16M 64k");
  ASSERT_OK(wrote);
  EXPECT_NE(wrote->find("wrote 65536/65536"), std::string::npos) << *wrote;
  const auto dirs = daemon_->agent()->ExportDirsForTesting(vm.name);
  ASSERT_EQ(dirs.size(), 1u);
  const std::string pid_text = vmseal::testing::ReadFileOrDie(dirs[0] + "/nbdkit.pid");
  const pid_t nbdkit = std::stoi(pid_text);
  // The agent goes away without stopping anything (as after kill -9: its
  // nbdkit was started without --exit-with-parent), and nbdkit is killed
  // too, so the restarted agent must start a new one with the key it
  // unwraps from the launch record in the TPM.
  StopHeartbeats();
  daemon_->service()->Stop();
  daemon_.reset();
  ASSERT_EQ(::kill(nbdkit, SIGKILL), 0);
  for (int i = 0; i < 200 && ::kill(nbdkit, 0) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto daemon = MakeDaemon();
  ASSERT_OK(daemon);
  daemon_ = *std::move(daemon);
  StartHeartbeats();
  // The job the restarted agent serves is still the portal's running job.
  EXPECT_EQ(JobJson(last_job_id_)["state"], "running");
  const auto again = daemon_->agent()->ExportDirsForTesting(vm.name);
  ASSERT_EQ(again, dirs);
  const pid_t new_pid = std::stoi(vmseal::testing::ReadFileOrDie(dirs[0] + "/nbdkit.pid"));
  EXPECT_NE(new_pid, nbdkit);
  // qemu reconnects: the guest reads its base disk and its own write.
  auto base = QemuIo(vm, "disk0", "read 0 1M");
  ASSERT_OK(base);
  EXPECT_NE(base->find("read 1048576/1048576"), std::string::npos) << *base;
  auto own = QemuIo(vm, "disk0", "read -P 0x5a 16M 64k");
  ASSERT_OK(own);
  EXPECT_NE(own->find("read 65536/65536"), std::string::npos) << *own;
  EXPECT_EQ(own->find("Pattern verification failed"), std::string::npos) << *own;
  auto now = daemon_->vms()->Get(vm.name);
  ASSERT_OK(now);
  EXPECT_EQ(now->state, vm::VmRunState::kRunning);
}


// The errno of open(path, O_RDONLY) by a child running as uid = gid `id`
// with supplementary groups `groups`, as the VM's qemu runs (0: it opened).
int OpenErrnoAs(uint32_t id, const std::vector<gid_t>& groups, const std::string& path) {
  int fds[2];
  if (::pipe(fds) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    int e = 0;
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setresgid(id, id, id) != 0 ||
        ::setresuid(id, id, id) != 0) {
      e = -2;
    } else {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      e = fd >= 0 ? 0 : errno;
    }
    (void)!::write(fds[1], &e, sizeof e);
    ::_exit(0);
  }
  ::close(fds[1]);
  int e = -1;
  if (::read(fds[0], &e, sizeof e) != sizeof e) e = -1;
  ::close(fds[0]);
  ::waitpid(pid, nullptr, 0);
  return e;
}

// "Uid:" / "Gid:" / "Groups:" line of /proc/<pid>/status, after the tab.
std::string ProcStatusLine(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(key + ":")) return line.substr(key.size() + 2);
  }
  return "";
}

TEST_F(HostStreamE2eTest, VmQemuRunsAsItsOwnUserThatCannotReadHostSecretsOrAnotherVm) {
  if (::geteuid() != 0) GTEST_SKIP() << "VM users need the agent to run as root";
  vm::VmInfo a = LaunchAndBoot(Seal("user-a"));
  ASSERT_FALSE(a.name.empty());
  // A second VM, whose overlay the first must not read (this fixture sends
  // heartbeats by hand: A's boot may outlast the portal's 30 s).
  ASSERT_OK(daemon_->service()->HeartbeatOnce());
  const std::string job_b = UploadAndLaunch(Seal("user-b"));
  ASSERT_OK(daemon_->service()->PollOnce());
  ASSERT_EQ(JobJson(job_b)["state"], "running");
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 2u);
  vm::VmInfo b = (*vms)[0].name == a.name ? (*vms)[1] : (*vms)[0];

  // Each qemu runs as its own uid from the configured range, not root.
  const uint32_t first = config_.vm_user_first_id;
  for (const vm::VmInfo* v : {&a, &b}) {
    ASSERT_GT(v->uid, first);
    ASSERT_LT(v->uid, first + config_.vm_user_count);
    const std::string id = std::to_string(v->uid);
    EXPECT_EQ(ProcStatusLine(v->pid, "Uid"), id + "\t" + id + "\t" + id + "\t" + id);
    EXPECT_EQ(ProcStatusLine(v->pid, "Gid"), id + "\t" + id + "\t" + id + "\t" + id);
    EXPECT_EQ(ProcStatusLine(v->pid, "Groups"), std::to_string(first) + " ");
    EXPECT_EQ(ProcStatusLine(v->pid, "NoNewPrivs"), "1");
  }
  EXPECT_NE(a.uid, b.uid);

  // As A's qemu: its own overlay opens (the check can succeed), while the
  // host's identity key, its TPM key blobs, A's own launch record (which
  // holds A's wrapped keys) and B's overlay do not.
  const std::vector<gid_t> groups = {static_cast<gid_t>(first)};
  ASSERT_EQ(OpenErrnoAs(a.uid, groups, a.disks[0].overlay_path), 0);
  EXPECT_EQ(OpenErrnoAs(a.uid, groups, config_.key_file), EACCES);
  const std::string record = fs::path(a.disks[0].overlay_path).parent_path() / "launch.json";
  ASSERT_TRUE(fs::exists(record));
  EXPECT_EQ(OpenErrnoAs(a.uid, groups, record), EACCES);
  EXPECT_EQ(OpenErrnoAs(a.uid, groups, b.disks[0].overlay_path), EACCES);
  EXPECT_EQ(OpenErrnoAs(a.uid, groups, b.serial_log_path), EACCES);
  int tpm_files = 0;
  for (const auto& e : fs::recursive_directory_iterator(config_.state_dir)) {
    if (!e.is_regular_file()) continue;
    ++tpm_files;
    EXPECT_NE(OpenErrnoAs(a.uid, groups, e.path().string()), 0) << e.path();
  }
  EXPECT_GT(tpm_files, 0);
  // The VM's state file and B's launch record neither.
  EXPECT_NE(OpenErrnoAs(a.uid, groups, dir_.File("img") + "/vms/" + b.name + ".json"), 0);
  EXPECT_EQ(OpenErrnoAs(
                a.uid, groups,
                (fs::path(b.disks[0].overlay_path).parent_path() / "launch.json").string()),
            EACCES);

  // The VM still reads its disk through the export and writes its overlay.
  auto read = QemuIo(a, "disk0", "read 0 1M");
  ASSERT_OK(read);
  EXPECT_NE(read->find("read 1048576/1048576"), std::string::npos) << *read;
  auto wrote = QemuIo(a, "disk0", "write -P 0x33 4M 64k");
  ASSERT_OK(wrote);
  EXPECT_NE(wrote->find("wrote 65536/65536"), std::string::npos) << *wrote;
}


// The regular files directly in `dir`.
std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file()) out.push_back(e.path().string());
  }
  return out;
}

TEST_F(HostStreamE2eTest, VmExportRunsAsItsVmUserThatCannotReadHostSecretsOrAnotherVmsCache) {
  if (::geteuid() != 0) GTEST_SKIP() << "VM users need the agent to run as root";
  vm::VmInfo a = LaunchAndBoot(Seal("export-user-a"));
  ASSERT_FALSE(a.name.empty());
  ASSERT_OK(daemon_->service()->HeartbeatOnce());
  const std::string job_b = UploadAndLaunch(Seal("export-user-b"));
  ASSERT_OK(daemon_->service()->PollOnce());
  ASSERT_EQ(JobJson(job_b)["state"], "running");
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 2u);
  vm::VmInfo b = (*vms)[0].name == a.name ? (*vms)[1] : (*vms)[0];
  const auto dirs_a = daemon_->agent()->ExportDirsForTesting(a.name);
  const auto dirs_b = daemon_->agent()->ExportDirsForTesting(b.name);
  ASSERT_EQ(dirs_a.size(), 1u);
  ASSERT_EQ(dirs_b.size(), 1u);
  // B's cache is filled (it holds ciphertext worth stealing or corrupting).
  WaitForPrefetch(b.name);

  // Each nbdkit runs as its VM's uid (the one its qemu has), never the
  // agent's, with no way back up.
  const uint32_t first = config_.vm_user_first_id;
  for (const auto& [v, dir] : {std::pair{&a, dirs_a[0]}, std::pair{&b, dirs_b[0]}}) {
    const pid_t nbdkit = std::stoi(vmseal::testing::ReadFileOrDie(dir + "/nbdkit.pid"));
    const std::string id = std::to_string(v->uid);
    EXPECT_EQ(ProcStatusLine(nbdkit, "Uid"), id + "\t" + id + "\t" + id + "\t" + id);
    EXPECT_EQ(ProcStatusLine(nbdkit, "Gid"), id + "\t" + id + "\t" + id + "\t" + id);
    EXPECT_EQ(ProcStatusLine(nbdkit, "Groups"), std::to_string(first) + " ");
    EXPECT_EQ(ProcStatusLine(nbdkit, "NoNewPrivs"), "1");
    // The export's dir is the VM user's own and nobody else's.
    struct stat st;
    ASSERT_EQ(::stat(dir.c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, v->uid);
    EXPECT_EQ(st.st_mode & 07777, 0700u);
    // Its command line names none of the agent's credential files: the TLS
    // material came over inherited pipes.
    std::ifstream in("/proc/" + std::to_string(nbdkit) + "/cmdline", std::ios::binary);
    const std::string cmdline((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    EXPECT_NE(cmdline.find("certfd="), std::string::npos);
    EXPECT_EQ(cmdline.find(config_.key_file), std::string::npos);
    EXPECT_EQ(cmdline.find(config_.cert_file), std::string::npos);
  }
  ASSERT_NE(a.uid, b.uid);

  // As A's nbdkit (A's uid and groups): its own cache opens (the check can
  // succeed), while the agent's mTLS key, every file of its state dir, A's
  // launch record and every file of B's export (cache, log, socket) do not.
  const std::vector<gid_t> groups = {static_cast<gid_t>(first)};
  const auto own = FilesIn(dirs_a[0]);
  ASSERT_FALSE(own.empty());
  for (const std::string& f : own) EXPECT_EQ(OpenErrnoAs(a.uid, groups, f), 0) << f;
  EXPECT_EQ(OpenErrnoAs(a.uid, groups, config_.key_file), EACCES);
  int state_files = 0;
  for (const auto& e : fs::recursive_directory_iterator(config_.state_dir)) {
    if (!e.is_regular_file()) continue;
    ++state_files;
    EXPECT_NE(OpenErrnoAs(a.uid, groups, e.path().string()), 0) << e.path();
  }
  EXPECT_GT(state_files, 0);
  EXPECT_EQ(OpenErrnoAs(a.uid, groups,
                        (fs::path(dirs_a[0]).parent_path() / "launch.json").string()),
            EACCES);
  const auto theirs = FilesIn(dirs_b[0]);
  int cache_files = 0;
  for (const std::string& f : theirs) {
    if (fs::path(f).filename().string().starts_with("cache")) ++cache_files;
    EXPECT_EQ(OpenErrnoAs(a.uid, groups, f), EACCES) << f;
  }
  EXPECT_GT(cache_files, 0);

  // Both VMs still read their disks through their exports.
  for (const vm::VmInfo* v : {&a, &b}) {
    auto read = QemuIo(*v, "disk0", "read 0 1M");
    ASSERT_OK(read);
    EXPECT_NE(read->find("read 1048576/1048576"), std::string::npos) << *read;
  }
}

// `vmseal host serve` as its own process over the fixture's configuration,
// killed with SIGKILL and started again, as an operator's host would be.
class HostServeProcessE2eTest : public HostStreamE2eTest {
 protected:
  void TearDown() override {
    StopServe(SIGKILL);
    // An in-process agent over the same state removes the VMs (TearDown).
    if (daemon_ == nullptr) {
      auto daemon = MakeDaemon();
      if (daemon.ok()) daemon_ = *std::move(daemon);
    }
    HostStreamE2eTest::TearDown();
  }

  // config_ as the JSON file `vmseal host serve --config` reads.
  std::string WriteConfig() {
    json c = {{"portal_url", config_.portal_url},
              {"kms_url", config_.kms_url},
              {"ca_file", config_.ca_file},
              {"cert_file", config_.cert_file},
              {"key_file", config_.key_file},
              {"tpm_tcti", config_.tpm_tcti},
              {"state_dir", config_.state_dir},
              {"image_store_dir", config_.image_store_dir},
              {"pcr_selection", config_.pcr_selection},
              {"heartbeat_interval_seconds", config_.heartbeat_interval_seconds},
              {"reattest_interval_seconds", config_.reattest_interval_seconds},
              {"poll_interval_seconds", config_.poll_interval_seconds},
              {"accel", config_.accel},
              {"capacity",
               {{"vcpus", config_.capacity->vcpus},
                {"memory_mib", config_.capacity->memory_mib},
                {"slots", config_.capacity->slots}}},
              {"nbd_plugin", config_.nbd_plugin},
              {"vm_user_ids",
               {{"first", config_.vm_user_first_id}, {"count", config_.vm_user_count}}}};
    const std::string path = dir_.File("host.json");
    vmseal::testing::WriteFileOrDie(path, c.dump());
    return path;
  }

  // Starts `vmseal host serve` logging to `log`; waits (bounded) for the
  // line that says it is ready.
  void StartServe(const std::string& config, const std::string& log) {
    const std::string bin = vmseal::testing::VmsealBinary();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> argv = {const_cast<char*>(bin.c_str()), const_cast<char*>("host"),
                               const_cast<char*>("serve"), const_cast<char*>("--config"),
                               const_cast<char*>(config.c_str()), nullptr};
    ASSERT_EQ(posix_spawn(&serve_, bin.c_str(), &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (vmseal::testing::ReadFileOrDie(log).find(" ready: portal ") == std::string::npos) {
      int status = 0;
      ASSERT_EQ(::waitpid(serve_, &status, WNOHANG), 0)
          << "serve exited: " << vmseal::testing::ReadFileOrDie(log);
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << vmseal::testing::ReadFileOrDie(log);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  void StopServe(int sig) {
    if (serve_ <= 0) return;
    ::kill(serve_, sig);
    int status = 0;
    ::waitpid(serve_, &status, 0);
    serve_ = -1;
  }

  // The VM's record as the agent wrote it.
  vm::VmInfo VmRecord(const std::string& name) {
    auto record = vm::internal::ParseVmRecord(
        vmseal::testing::ReadFileOrDie(config_.image_store_dir + "/vms/" + name + ".json"));
    EXPECT_OK(record);
    return record.ok() ? record->info : vm::VmInfo{};
  }

  // Pids of every process whose command line holds `needle`.
  static std::vector<pid_t> ProcessesWith(const std::string& needle) {
    std::vector<pid_t> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream in(e.path() / "cmdline", std::ios::binary);
      std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (cmd.find(needle) != std::string::npos) out.push_back(std::stoi(name));
    }
    return out;
  }

  pid_t serve_ = -1;
};

TEST_F(HostServeProcessE2eTest, AgentProcessKilledWithSigkillAndRestartedKeepsTheVmAndItsDisk) {
  // The in-process agent of the fixture steps aside; the real binary runs.
  StopHeartbeats();
  daemon_->service()->Stop();
  daemon_.reset();
  const std::string config = WriteConfig();
  ASSERT_NO_FATAL_FAILURE(StartServe(config, dir_.File("serve1.log")));

  const std::string job_id = UploadAndLaunch(Seal("kill9"));
  json job;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);;) {
    job = JobJson(job_id);
    if (job["state"] == "running" && !job["vm_name"].get<std::string>().empty()) break;
    ASSERT_NE(job["state"], "failed") << job.dump();
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << job.dump();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const std::string name = job["vm_name"];
  vm::VmInfo vm = VmRecord(name);
  ASSERT_GT(vm.pid, 0);
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);;) {
    if (vmseal::testing::ReadFileOrDie(vm.serial_log_path).find(marker_) != std::string::npos) {
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no marker";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  auto wrote = QemuIo(vm, "disk0", "write -P 0x5a 16M 64k");
  ASSERT_OK(wrote);
  ASSERT_NE(wrote->find("wrote 65536/65536"), std::string::npos) << *wrote;
  const std::string export_dir = fs::path(vm.disks[0].path).parent_path().string();
  const pid_t nbdkit = std::stoi(vmseal::testing::ReadFileOrDie(export_dir + "/nbdkit.pid"));
  ASSERT_EQ(ProcessesWith(vm.serial_log_path), std::vector<pid_t>{vm.pid});

  // The agent's pool holds ready overlays whose secrets only it knows.
  const std::string pool_dir = config_.image_store_dir + "/vd/pool";
  std::vector<std::string> pooled;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);;) {
    pooled = vmseal::testing::ListDir(pool_dir);
    if (!pooled.empty()) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no pooled overlay";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }

  // Round 1: kill -9 of the agent alone. qemu and nbdkit live on; the new
  // agent adopts the export and the VM keeps its disk.
  StopServe(SIGKILL);
  EXPECT_EQ(::kill(vm.pid, 0), 0);
  EXPECT_EQ(::kill(nbdkit, 0), 0);
  ASSERT_NO_FATAL_FAILURE(StartServe(config, dir_.File("serve2.log")));
  // The killed agent's pool files, whose secrets died with it, are shredded.
  for (const std::string& f : pooled) {
    const std::vector<std::string> now = vmseal::testing::ListDir(pool_dir);
    EXPECT_EQ(std::count(now.begin(), now.end(), f), 0) << f;
  }
  EXPECT_EQ(std::stoi(vmseal::testing::ReadFileOrDie(export_dir + "/nbdkit.pid")), nbdkit);
  auto own = QemuIo(vm, "disk0", "read -P 0x5a 16M 64k");
  ASSERT_OK(own);
  EXPECT_NE(own->find("read 65536/65536"), std::string::npos) << *own;
  EXPECT_EQ(own->find("Pattern verification failed"), std::string::npos) << *own;

  // Round 2: kill -9 of the agent, and its export dies too: the new agent
  // unwraps the data key from the launch record in the TPM and starts a new
  // nbdkit (as the VM's user) that qemu reconnects to.
  StopServe(SIGKILL);
  ASSERT_EQ(::kill(nbdkit, SIGKILL), 0);
  for (int i = 0; i < 300 && ::kill(nbdkit, 0) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string log3 = dir_.File("serve3.log");
  ASSERT_NO_FATAL_FAILURE(StartServe(config, log3));
  EXPECT_NE(vmseal::testing::ReadFileOrDie(log3).find("re-attached the disks of 1 running VM"),
            std::string::npos)
      << vmseal::testing::ReadFileOrDie(log3);
  const pid_t new_nbdkit = std::stoi(vmseal::testing::ReadFileOrDie(export_dir + "/nbdkit.pid"));
  EXPECT_NE(new_nbdkit, nbdkit);
  EXPECT_EQ(ProcStatusLine(new_nbdkit, "Uid").substr(0, ProcStatusLine(new_nbdkit, "Uid").find('\t')),
            std::to_string(vm.uid));
  auto base = QemuIo(vm, "disk0", "read 0 1M");
  ASSERT_OK(base);
  EXPECT_NE(base->find("read 1048576/1048576"), std::string::npos) << *base;
  own = QemuIo(vm, "disk0", "read -P 0x5a 16M 64k");
  ASSERT_OK(own);
  EXPECT_NE(own->find("read 65536/65536"), std::string::npos) << *own;
  EXPECT_EQ(own->find("Pattern verification failed"), std::string::npos) << *own;
  // A write after the restart lands too.
  auto again = QemuIo(vm, "disk0", "write -P 0x6b 20M 64k");
  ASSERT_OK(again);
  EXPECT_NE(again->find("wrote 65536/65536"), std::string::npos) << *again;

  // The same qemu, no second one; the marker is still on its console; the
  // portal still has the job running on this host (after the new agent's
  // heartbeats and polls).
  EXPECT_EQ(ProcessesWith(vm.serial_log_path), std::vector<pid_t>{vm.pid});
  EXPECT_NE(vmseal::testing::ReadFileOrDie(vm.serial_log_path).find(marker_), std::string::npos);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  job = JobJson(job_id);
  EXPECT_EQ(job["state"], "running") << job.dump();
  EXPECT_EQ(job["host_id"], "host-1") << job.dump();
  EXPECT_EQ(job["vm_name"], name) << job.dump();
  EXPECT_EQ(job["runs"], 1) << job.dump();
}

// Starts a daemonized nbdkit (memory plugin) serving `socket` with its pid
// in `pid_file`; returns its pid.
pid_t StartNbdkit(const std::string& socket, const std::string& pid_file) {
  const std::string cmd = "nbdkit --unix '" + socket + "' --pidfile '" + pid_file +
                          "' memory 1M >/dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return -1;
  for (int i = 0; i < 200; ++i) {
    std::ifstream in(pid_file);
    pid_t pid = 0;
    if (in >> pid && pid > 1) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

bool Gone(pid_t pid) {
  for (int i = 0; i < 300; ++i) {
    if (::kill(pid, 0) != 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST_F(HostStreamE2eTest, AgentCrashSweepsOrphanExportsAndOverlaysAndKeepsTheRunningVm) {
  vm::VmInfo vm = LaunchAndBoot(Seal("sweep"));
  ASSERT_FALSE(vm.name.empty());
  const auto dirs = daemon_->agent()->ExportDirsForTesting(vm.name);
  ASSERT_EQ(dirs.size(), 1u);
  const pid_t vm_nbdkit = std::stoi(vmseal::testing::ReadFileOrDie(dirs[0] + "/nbdkit.pid"));
  // What a crash of an earlier agent left of a VM that is gone: a disk dir
  // with no launch record, an nbdkit still serving from it (its pid file
  // beside its socket, as the agent starts them) and a stale overlay.
  const std::string orphan = dir_.File("img") + "/vd/0123456789abcdef";
  fs::create_directories(orphan + "/d0");
  vmseal::testing::WriteFileOrDie(orphan + "/d0.qcow2", std::string(65536, 'o'));
  const pid_t orphan_nbdkit = StartNbdkit(orphan + "/d0/nbd.sock", orphan + "/d0/nbdkit.pid");
  ASSERT_GT(orphan_nbdkit, 1);
  // Not ours: an nbdkit outside the agent's dirs, and an orphan pid file
  // naming a process that is not the nbdkit of that socket. Neither may go.
  const pid_t bystander = StartNbdkit(dir_.File("other.sock"), dir_.File("other.pid"));
  ASSERT_GT(bystander, 1);
  const std::string decoy = dir_.File("img") + "/vd/fedcba9876543210";
  fs::create_directories(decoy + "/d0");
  vmseal::testing::WriteFileOrDie(decoy + "/d0/nbdkit.pid", std::to_string(bystander) + "\n");

  // The agent dies without cleaning up (its exports run on, as after
  // kill -9), and a new one starts on the same state.
  StopHeartbeats();
  daemon_->service()->Stop();
  daemon_.reset();
  auto daemon = MakeDaemon();
  ASSERT_OK(daemon);
  daemon_ = *std::move(daemon);
  StartHeartbeats();

  EXPECT_TRUE(Gone(orphan_nbdkit));
  EXPECT_FALSE(fs::exists(orphan));
  EXPECT_FALSE(fs::exists(decoy));  // no record: swept, but its pid file's process lives
  EXPECT_EQ(::kill(bystander, 0), 0);
  // The running VM keeps its export (the same nbdkit) and its disk.
  EXPECT_EQ(::kill(vm_nbdkit, 0), 0);
  EXPECT_EQ(std::stoi(vmseal::testing::ReadFileOrDie(dirs[0] + "/nbdkit.pid")), vm_nbdkit);
  EXPECT_TRUE(fs::exists(vm.disks[0].overlay_path));
  auto now = daemon_->vms()->Get(vm.name);
  ASSERT_OK(now);
  EXPECT_EQ(now->state, vm::VmRunState::kRunning);
  auto read = QemuIo(vm, "disk0", "read 0 1M");
  ASSERT_OK(read);
  EXPECT_NE(read->find("read 1048576/1048576"), std::string::npos) << *read;
  // The slot stays counted: after the new agent registers, the portal
  // still has the job running on host-1.
  ASSERT_OK(daemon_->service()->Start());
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(vm.name.substr(3));  // vm-<job id>
  EXPECT_EQ(job["state"], "running") << job.dump();
  EXPECT_EQ(job["host_id"], "host-1") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  EXPECT_EQ(vms->size(), 1u);
  ::kill(bystander, SIGTERM);
}

TEST_F(HostStreamE2eTest, TamperedChunkReachesTheCustomersJobOnce) {
  const std::string job_id = UploadAndLaunch(Seal("tampered-status"));
  bool flipped = false;
  for (const auto& e : fs::recursive_directory_iterator(dir_.File("portal") + "/objects")) {
    if (!e.is_regular_file() || e.file_size() < (1 << 20)) continue;
    std::string data = vmseal::testing::ReadFileOrDie(e.path().string());
    data[data.size() / 2] ^= 0x01;
    vmseal::testing::WriteFileOrDie(e.path().string(), data);
    flipped = true;
  }
  ASSERT_TRUE(flipped);
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  ASSERT_EQ(job["state"], "running") << job.dump();
  EXPECT_TRUE(job["disk_events"].empty()) << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const uint64_t size = fs::file_size(image_);
  // Read twice: the chunk fails each time, the job hears of it once.
  for (int i = 0; i < 2; ++i) {
    auto whole = QemuIo((*vms)[0], "disk0", "read 0 " + std::to_string(size));
    ASSERT_OK(whole);
    EXPECT_NE(whole->find("Input/output error"), std::string::npos) << *whole;
    ASSERT_OK(daemon_->service()->PollOnce());
  }
  job = JobJson(job_id);
  ASSERT_EQ(job["disk_events"].size(), 1u) << job.dump();
  const std::string event = job["disk_events"][0];
  EXPECT_TRUE(event.starts_with("chunk_auth_failed: ")) << event;
  EXPECT_NE(event.find((*vms)[0].name), std::string::npos) << event;
  EXPECT_EQ(job["state"], "running");
}

TEST_F(HostStreamE2eTest, TamperedChunkReadLazilyIsAGuestIoErrorAndAnEvent) {
  const std::string job_id = UploadAndLaunch(Seal("tampered-chunk"));
  // One bit of the stored package flips in the middle of the sealed disk,
  // as a corrupting store or network path would; streamed, nothing reads
  // it before the VM starts.
  bool flipped = false;
  for (const auto& e : fs::recursive_directory_iterator(dir_.File("portal") + "/objects")) {
    if (!e.is_regular_file() || e.file_size() < (1 << 20)) continue;
    std::string data = vmseal::testing::ReadFileOrDie(e.path().string());
    data[data.size() / 2] ^= 0x01;
    vmseal::testing::WriteFileOrDie(e.path().string(), data);
    flipped = true;
  }
  ASSERT_TRUE(flipped);
  ASSERT_OK(daemon_->service()->PollOnce());
  json job = JobJson(job_id);
  ASSERT_EQ(job["state"], "running") << job.dump();
  auto vms = daemon_->vms()->List();
  ASSERT_OK(vms);
  ASSERT_EQ(vms->size(), 1u);
  const vm::VmInfo vm = (*vms)[0];
  // The guest reads the whole disk: the tampered chunk is an I/O error,
  // never other bytes; the chunks before it read fine.
  const uint64_t size = fs::file_size(image_);
  auto whole = QemuIo(vm, "disk0", "read 0 " + std::to_string(size));
  ASSERT_OK(whole);
  EXPECT_NE(whole->find("Input/output error"), std::string::npos) << *whole;
  auto head = QemuIo(vm, "disk0", "read 0 1M");
  ASSERT_OK(head);
  EXPECT_NE(head->find("read 1048576/1048576"), std::string::npos) << *head;
  // And the agent has the event, with the job it belongs to.
  std::vector<DiskEvent> events = daemon_->agent()->DiskEvents();
  bool found = false;
  for (const DiskEvent& e : events) {
    if (e.event == "chunk_auth_failed") {
      found = true;
      EXPECT_EQ(e.job_id, job_id);
      EXPECT_EQ(e.vm_name, vm.name);
    }
  }
  EXPECT_TRUE(found);
  // Each event is returned once.
  for (const DiskEvent& e : daemon_->agent()->DiskEvents()) {
    EXPECT_NE(e.event, "chunk_auth_failed") << e.detail;
  }
}

// A checkout under a private directory (/root/vmseal, mktemp -d): the
// plugin the exports load, as their VM users, lies below directories only
// root may enter. The daemon lets the VM users' group through (0710) at
// start; before that, every streamed launch failed inside nbdkit with
// "cannot open plugin ... Permission denied".
class HostPluginInPrivateDirE2eTest : public HostStreamE2eTest {
 protected:
  void ConfigureHost(HostConfig* c) override {
    const std::string lib = dir_.File("private/lib");
    ASSERT_EQ(::mkdir(dir_.File("private").c_str(), 0700), 0);
    ASSERT_EQ(::mkdir(lib.c_str(), 0700), 0);
    std::filesystem::copy_file(VMSEAL_NBD_PLUGIN_PATH, lib + "/nbdkit-vmseal-plugin.so");
    ASSERT_EQ(::chmod((lib + "/nbdkit-vmseal-plugin.so").c_str(), 0755), 0);
    c->nbd_plugin = lib + "/nbdkit-vmseal-plugin.so";
  }
};

TEST_F(HostPluginInPrivateDirE2eTest, StreamedLaunchLoadsAPluginBelowPrivateDirectories) {
  if (daemon_->vms()->UserGroups().empty()) GTEST_SKIP() << "vm users need the agent to run as root";
  struct stat st;
  ASSERT_EQ(::stat(dir_.File("private/lib").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0710u);  // search for the group only: no listing
  EXPECT_EQ(st.st_gid, daemon_->vms()->UserGroups()[0]);
  vm::VmInfo vm = LaunchAndBoot(Seal("private-plugin"));
  ASSERT_EQ(vm.disks.size(), 1u);
  EXPECT_EQ(vm.disks[0].source, vm::DiskSource::kNbd);
}

class HostCopyModeE2eTest : public HostStreamE2eTest {
 protected:
  void ConfigureHost(HostConfig* c) override { c->launch_mode = "copy"; }
};

TEST_F(HostCopyModeE2eTest, CopyModeBootsFromAnEncryptedLocalDiskWithNoPlaintext) {
  PlaintextScanner scanner(vmseal::testing::ReadFileOrDie(image_));
  // Copy mode converts into a ready overlay of the pool (qemu-img convert
  // -n): no qemu-img create, whose LUKS benchmark is the slow path.
  vm::OverlayPool* pool = daemon_->agent()->overlay_pool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(pool->WaitUntilFull(240000));
  const vm::OverlayPool::Stats before = pool->GetStats();
  vm::VmInfo vm = LaunchAndBoot(Seal("copy"));
  ASSERT_EQ(vm.disks.size(), 1u);
  EXPECT_EQ(vm.disks[0].source, vm::DiskSource::kFile);
  EXPECT_TRUE(vm.disks[0].encrypted);
  const vm::OverlayPool::Stats after = pool->GetStats();
  EXPECT_EQ(after.made_on_slow_path, 0u);
  EXPECT_EQ(after.taken_from_pool, before.taken_from_pool + 1);
  // The copy is that overlay, out of the pool, at the disk's size; the guest
  // booted from it (the marker), so it holds the whole disk under its secret.
  EXPECT_FALSE(vm.disks[0].path.starts_with(pool->dir()));
  auto blocks = vm::internal::QmpExecute(vm.qmp_socket_path, "query-block", 5000);
  ASSERT_OK(blocks);
  EXPECT_EQ(json::parse(*blocks)[0]["inserted"]["image"]["virtual-size"], fs::file_size(image_))
      << *blocks;
  auto record = internal::ParseLaunchRecord(vmseal::testing::ReadFileOrDie(
      (fs::path(vm.disks[0].path).parent_path() / "launch.json").string()));
  ASSERT_OK(record);
  EXPECT_EQ(record->disk_secrets.size(), 1u);
  // No export runs after the copy; no cache stays.
  EXPECT_TRUE(daemon_->agent()->ExportDirsForTesting(vm.name).empty());
  for (const std::string& f : HostFiles()) {
    EXPECT_FALSE(f.ends_with("cache.data")) << f;
    std::vector<uint64_t> hits = scanner.Scan(f);
    EXPECT_TRUE(hits.empty()) << f << " holds plaintext of the image at offset " << hits[0];
  }
  ASSERT_OK(daemon_->agent()->DeleteVm(vm.name));
  EXPECT_FALSE(fs::exists(vm.disks[0].path));
  EXPECT_TRUE(vmseal::testing::ListJobDiskDirs(dir_.File("img") + "/vd").empty());
}

}  // namespace
}  // namespace vmseal::host
