// Integration: a real KMS (kms::KmsService + its HTTPS server on loopback,
// SQLite store, credentials from `vmseal kms init`), a real portal over
// HTTPS with the OVF package verifier and the mTLS KMS client, the real
// customer CLI, and hosts speaking the host routes with KMS-issued client
// certificates. Host trust comes from KMS verdicts written to the KMS store
// (what attestation would record): host-a and host-b match the good-boot
// flavor, host-c does not.
#include <httplib.h>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include <gmock/gmock.h>
#include <nlohmann/json.hpp>

#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/kms_client.h"
#include "csp/ovf_package_verifier.h"
#include "csp/internal/process_harness.h"
#include "csp/portal_server.h"
#include "kms/kek.h"
#include "kms/policy.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "kms/store.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "ovf/package.h"
#include "testing/pg_harness.h"
#include "testing/s3_harness.h"
#include "testing/test_util.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::csp {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

SecretBytes SecretFile(const std::string& path) {
  std::string text = ReadFileOrDie(path);
  return SecretBytes(crypto::AsBytes(text));
}

const std::string kGoodPcr0(64, 'a');
const std::string kTamperedPcr0(64, 'b');

class PoolIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kms_dir_ = dir_.File("kms");
    std::string out;
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "init", "--dir", kms_dir_}, &out, 60), 0) << out;
    for (const auto& [role, name] : std::vector<std::pair<std::string, std::string>>{
             {"portal", "portal"}, {"host", "host-a"}, {"host", "host-b"}, {"host", "host-c"}}) {
      ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", kms_dir_, "--role",
                            role, "--name", name, "--out", kms_dir_ + "/" + name},
                           &out, 60),
                0)
          << out;
    }
    StartKms();
    ConfigureKmsPolicy();
    for (const char* h : {"host-a", "host-b"}) KmsHost(h, kGoodPcr0);
    KmsHost("host-c", kTamperedPcr0);
    MakePortalTlsIdentity();
  }
  void TearDown() override {
    if (portal_) portal_->Stop();
    if (kms_server_) kms_server_->Stop();
  }

  void StartKms() {
    auto store = kms::Store::Open(kms_dir_ + "/kms.db");
    ASSERT_OK(store);
    kms_store_ = std::move(store).value();
    auto kek = kms::LoadFileKek(Env::Default(), kms_dir_ + "/kek");
    ASSERT_OK(kek);
    kek_ = std::move(kek).value();
    auto service = kms::KmsService::Create(
        kms_options_, kms_store_.get(), kek_.get(),
        {ReadFileOrDie(kms_dir_ + "/ca.pem"), SecretFile(kms_dir_ + "/ca-key.pem")});
    ASSERT_OK(service);
    kms_service_ = std::move(service).value();
    net::HttpsServer::Options o;
    o.cert_pem = ReadFileOrDie(kms_dir_ + "/server.pem");
    o.key_pem = SecretFile(kms_dir_ + "/server-key.pem");
    o.client_ca_pem = ReadFileOrDie(kms_dir_ + "/ca.pem");
    auto server = net::HttpsServer::Create(std::move(o));
    ASSERT_OK(server);
    kms_server_ = std::move(server).value();
    kms::RegisterKmsRoutes(kms_service_.get(), kms_server_.get());
    ConfigureKmsServer(*kms_server_);
    auto port = kms_server_->Start();
    ASSERT_OK(port);
    kms_port_ = *port;
  }
  // A fixture's own settings of the KMS's HTTPS server (before it starts).
  virtual void ConfigureKmsServer(net::HttpsServer& server) { (void)server; }
  std::unique_ptr<net::HttpsClient> KmsClientAs(const std::string& identity) {
    net::HttpsClient::Options o;
    o.port = kms_port_;
    o.ca_pem = ReadFileOrDie(kms_dir_ + "/ca.pem");
    o.cert_pem = ReadFileOrDie(kms_dir_ + "/" + identity + ".pem");
    o.key_pem = SecretFile(kms_dir_ + "/" + identity + "-key.pem");
    auto c = net::HttpsClient::Create(std::move(o));
    EXPECT_OK(c);
    return c.ok() ? std::move(c).value() : nullptr;
  }
  // The operator defines the good-boot flavor and the default policy.
  void ConfigureKmsPolicy() {
    auto op = KmsClientAs("operator");
    ASSERT_NE(op, nullptr);
    ASSERT_OK(op->Put("/v1/flavors/good-boot", {{"pcrs", {{"sha256", {{"0", kGoodPcr0}}}}}}));
    ASSERT_OK(op->Put("/v1/policies/_default",
                      {{"flavors", {{"anyOf", {"good-boot"}}}},
                       {"max_evidence_age_seconds", 300}}));
  }
  // An enrolled host whose latest (trusted) verdict quoted `pcr0`.
  void KmsHost(const std::string& host_id, const std::string& pcr0) {
    const int64_t now = std::time(nullptr);
    ASSERT_OK(kms_store_->PutHost({host_id, "", "", false, {}, now},
                                  {"host.enroll", "host/" + host_id, json::object()}));
    ASSERT_OK(kms_store_->SetHostEnrolled(host_id, {"host.activate", "host/" + host_id,
                                                    json::object()}));
    kms::Verdict v;
    v.verdict_id = "v-" + host_id;
    v.host_id = host_id;
    v.trusted = true;
    v.reason = "ok";
    v.time_unix = now;
    v.details["pcrs"] = kms::PcrValuesToJson({{0, pcr0}});
    ASSERT_OK(kms_store_->PutVerdict(v, {"attestation", "host/" + host_id, json::object()}));
  }
  void MakePortalTlsIdentity() {
    auto ca = crypto::CreateSelfSignedCa({"portal test CA"});
    ASSERT_OK(ca);
    WriteFileOrDie(dir_.File("portal-ca.pem"), ca->cert.ToPem());
    auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    ASSERT_OK(key);
    crypto::IssueOptions io;
    io.common_name = "portal";
    io.usage = crypto::CertUsage::kServerAuth;
    io.ip_addresses = {"127.0.0.1"};
    auto cert = crypto::IssueCertificate(*ca, key->Public(), io);
    ASSERT_OK(cert);
    WriteFileOrDie(dir_.File("portal-server.pem"), cert->ToPem());
    ASSERT_OK(crypto::WritePrivateKeyFile(Env::Default(), dir_.File("portal-server-key.pem"), *key));
    WriteFileOrDie(dir_.File("op-token"), "op-secret\n");
  }

  // The portal over HTTPS; S3 backend when `s3` is set.
  void StartPortal(const vmseal::testing::S3Server* s3 = nullptr,
                   int64_t heartbeat_timeout_seconds = 30) {
    HttpsKmsClientOptions ko;
    ko.url = "https://127.0.0.1:" + std::to_string(kms_port_);
    ko.ca_cert_file = kms_dir_ + "/ca.pem";
    ko.cert_file = kms_dir_ + "/portal.pem";
    ko.key_file = kms_dir_ + "/portal-key.pem";
    auto kms = NewHttpsKmsClient(ko);
    ASSERT_OK(kms);
    kms_client_ = std::move(kms).value();
    PortalServer::Options o;
    o.data_dir = dir_.File("portal");
    o.argon2_m_cost_kib = 256;
    o.tls_cert_file = dir_.File("portal-server.pem");
    o.tls_key_file = dir_.File("portal-server-key.pem");
    o.client_ca_file = kms_dir_ + "/ca.pem";
    o.operator_token = SecretBytes(crypto::AsBytes(std::string_view("op-secret")));
    o.heartbeat_timeout_seconds = heartbeat_timeout_seconds;
    if (s3 != nullptr) {
      o.s3_endpoint = s3->endpoint();
      o.s3_bucket = "images";
      o.s3_access_key_id = vmseal::testing::kS3AccessKeyId;
      o.s3_secret_access_key =
          SecretBytes(crypto::AsBytes(std::string_view(vmseal::testing::kS3SecretAccessKey)));
    }
    auto portal = PortalServer::Create(std::move(o), &verifier_, kms_client_.get());
    ASSERT_OK(portal);
    portal_ = std::move(portal).value();
    ASSERT_OK(portal_->Start());
  }
  // The in-process portal's port, or the portal process's (PortalCrashTest).
  virtual int PortalPort() const { return portal_->port(); }
  // The portal the hosts talk to (another replica in PortalReplicaTest).
  virtual int HostPort() const { return PortalPort(); }
  std::string PortalUrl() const { return "https://127.0.0.1:" + std::to_string(PortalPort()); }

  // The customer CLI over HTTPS; JSON output of a command that must succeed.
  json Customer(std::vector<std::string> args) {
    std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalUrl(),
                                     "--ca-cert", dir_.File("portal-ca.pem"), "--session",
                                     dir_.File("session"), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    EXPECT_EQ(RunCommand(argv, &out, 120), 0) << out;
    json j = json::parse(out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << out;
    return j;
  }
  // Registers and logs in through the CLI; returns the registration.
  json SignUp() {
    json reg = Customer({"register", "--password-out", dir_.File("pw")});
    Customer({"login", "--login-id", reg.value("login_id", ""), "--password-file",
              dir_.File("pw")});
    return reg;
  }
  // Seals a small raw disk to the customer's verified certificate.
  std::string SealImage(const std::string& cert_file, const std::string& tenant,
                        size_t disk_bytes = 256 << 10) {
    std::string disk(disk_bytes, '\0');
    for (size_t i = 0; i < disk.size(); ++i) disk[i] = static_cast<char>(i * 131 % 251);
    WriteFileOrDie(dir_.File("disk.raw"), disk);
    ovf::SealOptions so;
    so.inputs = {dir_.File("disk.raw")};
    so.recipient_pem = ReadFileOrDie(cert_file);
    so.tenant = tenant;
    so.image_id = tagged_image_id_;
    // Signed with the key register made beside the session and the
    // certificate fetch-cert checked and wrote beside the customer cert.
    auto signing = crypto::LoadPrivateKeyFile(dir_.File("signing-key.pem"));
    EXPECT_OK(signing);
    if (signing.ok()) {
      so.signing_key = &*signing;
      so.signing_chain_pem = ReadFileOrDie(DirName(cert_file) + "/signing-cert.pem");
    }
    const std::string out = dir_.File("image.ova");
    EXPECT_OK(ovf::SealPackage(Env::Default(), so, out));
    return out;
  }
  // A host with its KMS-issued client certificate.
  std::unique_ptr<httplib::SSLClient> Host(const std::string& host_id) {
    auto c = std::make_unique<httplib::SSLClient>("127.0.0.1", HostPort(),
                                                  kms_dir_ + "/" + host_id + ".pem",
                                                  kms_dir_ + "/" + host_id + "-key.pem");
    c->set_ca_cert_path(dir_.File("portal-ca.pem").c_str());
    c->enable_server_certificate_verification(true);
    return c;
  }
  json HostPost(httplib::SSLClient& host, const std::string& path, const json& body,
                int want_status = 200) {
    auto res = host.Post(path, body.dump(), "application/json");
    EXPECT_TRUE(res) << path;
    if (!res) return json();
    EXPECT_EQ(res->status, want_status) << path << ": " << res->body;
    return json::parse(res->body, nullptr, false);
  }
  void RegisterHosts() {
    for (const char* h : {"host-a", "host-b", "host-c"}) {
      auto host = Host(h);
      HostPost(*host, "/v1/hosts/register",
               {{"host_id", h}, {"capacity", {{"vcpus", 2}, {"memory_mib", 4096}}},
                {"tags", {"region=eu-west"}}});
    }
  }
  // Registration, verified certificate, sealed upload; returns the image id.
  std::string CustomerWithSealedImage(const std::string& kms_policy = "") {
    json reg = SignUp();
    customer_id_ = reg.value("customer_id", "");
    // The KMS holds the key the portal asked for.
    auto key = KmsClientAs("operator")->Get("/v1/customers/" + customer_id_ + "/keys/" +
                                            reg["key"]["key_id"].get<std::string>());
    EXPECT_OK(key);
    json cert = Customer({"fetch-cert", "--kms-ca", kms_dir_ + "/ca.pem", "--out",
                          dir_.File("customer.crt")});
    EXPECT_EQ(cert["verified"], true);
    std::string package = SealImage(dir_.File("customer.crt"), customer_id_);
    package_sha256_ = crypto::HexEncode(crypto::Sha256(ReadFileOrDie(package)));
    json image = Customer({"upload", package, "--name", "small"});
    EXPECT_EQ(image["sha256"], package_sha256_);
    if (!kms_policy.empty()) {
      // The customer signs the image's policy; the portal relays it.
      json set = Customer({"set-policy", image.value("image_id", ""), kms_policy});
      EXPECT_EQ(set["version"], 1) << set.dump();
    }
    return image.value("image_id", "");
  }
  static const json& Decision(const json& placement, const std::string& host) {
    for (const json& d : placement["decisions"]) {
      if (d["host_id"] == host) return d;
    }
    static const json none = json::object();
    ADD_FAILURE() << "no decision for " << host << " in " << placement.dump();
    return none;
  }

  TempDir dir_;
  std::string kms_dir_;
  kms::KmsService::Options kms_options_;
  std::unique_ptr<kms::Store> kms_store_;
  std::unique_ptr<kms::KeyEncryptionKey> kek_;
  std::unique_ptr<kms::KmsService> kms_service_;
  std::unique_ptr<net::HttpsServer> kms_server_;
  int kms_port_ = 0;
  std::unique_ptr<KmsClient> kms_client_;
  OvfPackageVerifier verifier_;
  std::unique_ptr<PortalServer> portal_;
  std::string customer_id_;
  std::string package_sha256_;
  std::string tagged_image_id_ = "sealed-small-1";
};

TEST_F(PoolIntegrationTest, SealedImageRunsOnlyOnEligibleHostsAndRefusalMovesIt) {
  StartPortal();
  std::string image_id = CustomerWithSealedImage();
  ASSERT_FALSE(image_id.empty());
  RegisterHosts();

  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed") << job.dump();
  const std::string job_id = job["job_id"];
  const std::string first = job["host_id"];
  EXPECT_THAT(first, ::testing::AnyOf("host-a", "host-b"));
  const json& tampered = Decision(job["last_placement"], "host-c");
  EXPECT_EQ(tampered["eligible"], false);
  EXPECT_EQ(tampered["kms_reason"], "pcr_policy");

  // The chosen host fetches the package, checks its digest, then is denied.
  auto host1 = Host(first);
  auto pending = host1->Get("/v1/hosts/jobs");
  ASSERT_TRUE(pending);
  json jobs = json::parse(pending->body)["jobs"];
  ASSERT_EQ(jobs.size(), 1u) << pending->body;
  EXPECT_EQ(jobs[0]["package_sha256"], package_sha256_);
  EXPECT_EQ(jobs[0]["tagged_image_id"], tagged_image_id_);
  auto pkg = host1->Get(jobs[0]["package_path"].get<std::string>());
  ASSERT_TRUE(pkg);
  ASSERT_EQ(pkg->status, 200);
  EXPECT_EQ(pkg->get_header_value("X-Content-SHA256"), package_sha256_);
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(pkg->body)), package_sha256_);
  for (const char* phase : {"fetching", "attesting"}) {
    HostPost(*host1, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", phase}});
  }
  EXPECT_EQ(Customer({"status", job_id})["state"], "attesting");
  json moved = HostPost(*host1, "/v1/hosts/jobs/" + job_id + "/refusal",
                        {{"reason", "attestation_denied"}, {"message", "pcr_policy"}});
  const std::string second = first == "host-a" ? "host-b" : "host-a";
  EXPECT_EQ(moved["state"], "placed");
  EXPECT_EQ(moved["host_id"], second);  // host-c stays out: the KMS says pcr_policy

  auto host2 = Host(second);
  for (const char* phase : {"fetching", "attesting", "decrypting", "running"}) {
    HostPost(*host2, "/v1/hosts/jobs/" + job_id + "/progress",
             {{"phase", phase}, {"vm_name", "vm-" + job_id}});
  }
  json status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["host_id"], second);
  EXPECT_THAT(status["attempts"][0]["refusal"].get<std::string>(),
              HasSubstr("attestation denied: pcr_policy"));
  json vms = Customer({"vms"});
  ASSERT_EQ(vms["vms"].size(), 1u);
  EXPECT_EQ(vms["vms"][0]["vm_name"], "vm-" + job_id);

  // The operator sees every decision with per-host reasons.
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "csp", "explain-placement", "--portal", PortalUrl(),
                        "--ca-cert", dir_.File("portal-ca.pem"), "--operator-token-file",
                        dir_.File("op-token"), job_id},
                       &out, 60),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("host-c [skipped]: KMS: not eligible (pcr_policy)"));
  EXPECT_THAT(out, HasSubstr("refused this job before: attestation denied: pcr_policy"));
}

TEST_F(PoolIntegrationTest, ImagePolicyAtTheKmsRestrictsThePoolByTags) {
  StartPortal();
  ASSERT_OK(KmsClientAs("operator")->Put("/v1/hosts/host-b/tags", {{"tags", {"region=eu-west"}}}));
  std::string image_id = CustomerWithSealedImage(
      R"({"flavors":{"anyOf":["good-boot"]},"required_tags":["region=eu-west"]})");
  ASSERT_FALSE(image_id.empty());
  // The KMS now holds the image's customer-signed policy, under the
  // identity the key-wrap label binds (the tag's imageId), which a release
  // looks up.
  auto stored = KmsClientAs("operator")->Get("/v1/signed-policies/" + customer_id_ + "/" +
                                             tagged_image_id_);
  ASSERT_OK(stored);
  EXPECT_EQ((*stored)["image_id"], tagged_image_id_);
  EXPECT_EQ((*stored)["version"], 1);
  auto document = crypto::Base64Decode((*stored)["document"].get<std::string>());
  ASSERT_OK(document);
  EXPECT_THAT(std::string(document->begin(), document->end()), HasSubstr("region=eu-west"));
  RegisterHosts();
  json job = Customer({"launch", image_id});
  EXPECT_EQ(job["host_id"], "host-b") << job.dump();
  EXPECT_EQ(Decision(job["last_placement"], "host-a")["kms_reason"], "tags");
  EXPECT_EQ(Decision(job["last_placement"], "host-c")["eligible"], false);
  // A policy the KMS rejects is refused and changes nothing.
  std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalUrl(),
                                   "--ca-cert", dir_.File("portal-ca.pem"), "--session",
                                   dir_.File("session"), "set-policy", image_id,
                                   R"({"required_tags":["x=y"]})"};
  std::string out;
  EXPECT_NE(RunCommand(argv, &out, 60), 0);
  EXPECT_THAT(out, HasSubstr("flavors"));
  stored = KmsClientAs("operator")->Get("/v1/signed-policies/" + customer_id_ + "/" +
                                        tagged_image_id_);
  ASSERT_OK(stored);
  EXPECT_EQ((*stored)["version"], 1);
}

TEST_F(PoolIntegrationTest, JobFailsWithEveryReasonWhenNoEligibleHostIsLeft) {
  StartPortal();
  std::string image_id = CustomerWithSealedImage();
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed");
  const std::string job_id = job["job_id"];
  std::string host = job["host_id"];
  json last;
  for (int i = 0; i < 2; ++i) {
    auto c = Host(host);
    last = HostPost(*c, "/v1/hosts/jobs/" + job_id + "/refusal",
                    {{"reason", "launch_failed"}, {"message", "qemu exited 1"}});
    host = last.value("host_id", "");
  }
  EXPECT_EQ(last["state"], "failed");
  EXPECT_THAT(last["failure_reason"].get<std::string>(), HasSubstr("host-a: launch failed"));
  EXPECT_THAT(last["failure_reason"].get<std::string>(), HasSubstr("host-b: launch failed"));
  EXPECT_THAT(last["failure_reason"].get<std::string>(),
              HasSubstr("host-c: KMS: not eligible (pcr_policy)"));
}

TEST_F(PoolIntegrationTest, HostThatStopsHeartbeatingLosesItsRunningJob) {
  StartPortal(nullptr, /*heartbeat_timeout_seconds=*/2);
  std::string image_id = CustomerWithSealedImage();
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed");
  const std::string job_id = job["job_id"];
  const std::string first = job["host_id"];
  const std::string other = first == "host-a" ? "host-b" : "host-a";
  auto host1 = Host(first);
  HostPost(*host1, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "fetching"}});
  // `other` keeps heartbeating, `first` goes silent; bounded wait.
  auto host2 = Host(other);
  json status;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    HostPost(*host2, "/v1/hosts/heartbeat", json::object());
    status = Customer({"status", job_id});
    if (status["host_id"] == other) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_EQ(status["host_id"], other) << status.dump();
  EXPECT_EQ(status["state"], "placed");
  EXPECT_THAT(status["attempts"][0]["refusal"].get<std::string>(), HasSubstr("host lost"));
}

TEST_F(PoolIntegrationTest, PortalRejectsAPackageThatIsNotSealed) {
  StartPortal();
  SignUp();
  WriteFileOrDie(dir_.File("plain.bin"), std::string(4096, 'x'));
  std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalUrl(),
                                   "--ca-cert", dir_.File("portal-ca.pem"), "--session",
                                   dir_.File("session"), "upload", dir_.File("plain.bin"),
                                   "--name", "plain"};
  std::string out;
  EXPECT_NE(RunCommand(argv, &out, 60), 0);
  EXPECT_THAT(out, HasSubstr("package rejected"));
  EXPECT_TRUE(Customer({"images"})["images"].empty());
}

TEST_F(PoolIntegrationTest, RegistrationFailsCleanlyWhenTheKmsIsDown) {
  StartPortal();
  kms_server_->Stop();
  std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalUrl(),
                                   "--ca-cert", dir_.File("portal-ca.pem"), "--session",
                                   dir_.File("session"), "register"};
  std::string out;
  EXPECT_NE(RunCommand(argv, &out, 60), 0);
  EXPECT_THAT(out, HasSubstr("KMS"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("login_id")));
}

TEST_F(PoolIntegrationTest, SealedImageFlowsThroughTheS3Backend) {
  auto s3 = vmseal::testing::S3Server::Start({"images"});
  ASSERT_OK(s3);
  StartPortal(s3->get());
  std::string image_id = CustomerWithSealedImage();
  ASSERT_FALSE(image_id.empty());
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed");
  auto host = Host(job["host_id"]);
  auto pkg = host->Get("/v1/hosts/jobs/" + job["job_id"].get<std::string>() + "/package");
  ASSERT_TRUE(pkg);
  ASSERT_EQ(pkg->status, 200);
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(pkg->body)), package_sha256_);
  auto ranged = host->Get("/v1/hosts/jobs/" + job["job_id"].get<std::string>() + "/package",
                          {{"Range", "bytes=0-511"}});
  ASSERT_TRUE(ranged);
  EXPECT_EQ(ranged->status, 206);
  EXPECT_EQ(ranged->body, pkg->body.substr(0, 512));
}

// Crash tests (issue 17): the real `vmseal csp serve` process, killed with
// SIGKILL at the worst moments and started again on the same data directory,
// with the real KMS and hosts speaking the host routes with their KMS-issued
// certificates.
class PortalCrashTest : public PoolIntegrationTest {
 protected:
  int PortalPort() const override { return process_->port(); }
  void StartPortalProcess(int64_t lease_seconds = 30) {
    lease_seconds_ = lease_seconds;
    auto p = StartReplica("portal", {});
    ASSERT_OK(p);
    process_ = std::move(p).value();
  }
  // `vmseal csp serve` with data in dir/<name>, its log in dir/<name>.log.
  StatusOr<std::unique_ptr<testing::ServerProcess>> StartReplica(
      const std::string& name, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {
         VmsealBinary(), "csp", "serve", "--data-dir", dir_.File(name), "--port",
         std::to_string(portal_fixed_port_),
         "--port-file", dir_.File(name + ".port"), "--tls-cert", dir_.File("portal-server.pem"),
         "--tls-key", dir_.File("portal-server-key.pem"), "--client-ca", kms_dir_ + "/ca.pem",
         "--kms-url", "https://127.0.0.1:" + std::to_string(kms_port_), "--kms-ca",
         kms_dir_ + "/ca.pem", "--kms-cert", kms_dir_ + "/portal.pem", "--kms-key",
         kms_dir_ + "/portal-key.pem", "--operator-token-file", dir_.File("op-token"),
         "--lease-seconds", std::to_string(lease_seconds_)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return testing::ServerProcess::Start(argv, dir_.File(name + ".log"),
                                         dir_.File(name + ".port"));
  }
  // kill -9, then the same command again on the same data directory.
  void KillAndRestart() {
    process_->Kill();
    StartPortalProcess(lease_seconds_);
  }
  httplib::Headers Bearer() {
    json session = json::parse(ReadFileOrDie(dir_.File("session")), nullptr, false);
    return {{"Authorization", "Bearer " + session.value("token", "")}};
  }
  std::unique_ptr<httplib::SSLClient> CustomerClient() {
    auto c = std::make_unique<httplib::SSLClient>("127.0.0.1", PortalPort());
    c->set_ca_cert_path(dir_.File("portal-ca.pem").c_str());
    c->enable_server_certificate_verification(true);
    return c;
  }
  // Polls the customer's view of the job until `done` holds (bounded).
  json WaitForJob(const std::string& job_id, const std::function<bool(const json&)>& done,
                  const std::function<void()>& each = nullptr) {
    json status;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (each) each();
      status = Customer({"status", job_id});
      if (done(status)) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    return status;
  }
  std::unique_ptr<testing::ServerProcess> process_;
  int64_t lease_seconds_ = 30;
  // The port `csp serve` listens on; 0: any free one. Set to the killed
  // portal's port when processes that keep the URL (hosts) must find it again.
  int portal_fixed_port_ = 0;
};

TEST_F(PortalCrashTest, KilledWithAQueuedJobRunsItAfterTheRestart) {
  StartPortalProcess();
  const std::string image_id = CustomerWithSealedImage();
  // No host yet: the job waits in the queue.
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "queued") << job.dump();
  const std::string job_id = job["job_id"];
  KillAndRestart();
  EXPECT_EQ(Customer({"status", job_id})["state"], "queued");
  RegisterHosts();
  json placed = WaitForJob(job_id, [](const json& j) { return j["state"] == "placed"; });
  ASSERT_EQ(placed["state"], "placed") << placed.dump();
  const std::string host_id = placed["host_id"];
  EXPECT_NE(host_id, "host-c");  // never the host with the tampered boot
  auto host = Host(host_id);
  for (const char* phase : {"fetching", "attesting", "decrypting", "running"}) {
    HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", phase}});
  }
  EXPECT_EQ(Customer({"status", job_id})["state"], "running");
}

TEST_F(PortalCrashTest, KilledMidLaunchTheHostCarriesOnAndTheJobRunsOnce) {
  StartPortalProcess();
  const std::string image_id = CustomerWithSealedImage();
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed");
  const std::string job_id = job["job_id"];
  const std::string first = job["host_id"];
  auto host = Host(first);
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "fetching"}});
  KillAndRestart();
  // The restarted portal knows the job, its host and its phase.
  json status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "fetching");
  EXPECT_EQ(status["host_id"], first);
  host = Host(first);
  for (const char* phase : {"attesting", "decrypting", "running"}) {
    HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", phase}});
  }
  status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["attempts"].size(), 1u) << status.dump();
  // No other host is given the job.
  for (const char* other : {"host-a", "host-b", "host-c"}) {
    auto c = Host(other);
    auto pending = c->Get("/v1/hosts/jobs");
    ASSERT_TRUE(pending);
    ASSERT_EQ(pending->status, 200) << pending->body;
    EXPECT_EQ(pending->body.find(job_id), std::string::npos) << other << ": " << pending->body;
  }
}

TEST_F(PortalCrashTest, HostKilledMidJobLosesItToAnotherTrustedHostOnceItsLeaseExpires) {
  StartPortalProcess(/*lease_seconds=*/2);
  const std::string image_id = CustomerWithSealedImage();
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed");
  const std::string job_id = job["job_id"];
  const std::string first = job["host_id"];
  const std::string other = first == "host-a" ? "host-b" : "host-a";
  auto dead = Host(first);
  HostPost(*dead, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "fetching"}});
  // The portal goes down too, and comes back knowing the hosts.
  KillAndRestart();
  auto live = Host(other);
  json status = WaitForJob(
      job_id, [&](const json& j) { return j["host_id"] == other; },
      [&] { HostPost(*live, "/v1/hosts/heartbeat", json::object()); });
  ASSERT_EQ(status["host_id"], other) << status.dump();
  EXPECT_EQ(status["state"], "placed");
  EXPECT_EQ(status["attempts"][0]["reason"], "host_lost");
  EXPECT_THAT(status["attempts"][0]["refusal"].get<std::string>(), HasSubstr("lease expired"));
  // The dead host comes back: its late report is refused and changes nothing.
  dead = Host(first);
  HostPost(*dead, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "running"}}, 404);
  EXPECT_EQ(Customer({"status", job_id})["host_id"], other);
}

TEST_F(PortalCrashTest, KilledMidUploadTheUploadResumesWhereItWas) {
  StartPortalProcess();
  json reg = SignUp();
  customer_id_ = reg.value("customer_id", "");
  json cert = Customer({"fetch-cert", "--kms-ca", kms_dir_ + "/ca.pem", "--out",
                        dir_.File("customer.crt")});
  ASSERT_EQ(cert["verified"], true);
  const std::string package = ReadFileOrDie(SealImage(dir_.File("customer.crt"), customer_id_));
  const size_t half = package.size() / 2;
  auto c = CustomerClient();
  auto begin = c->Post("/v1/uploads", Bearer(), "", "application/json");
  ASSERT_TRUE(begin);
  ASSERT_EQ(begin->status, 201) << begin->body;
  const std::string upload_id = json::parse(begin->body).value("upload_id", "");
  auto put = c->Put("/v1/uploads/" + upload_id + "?offset=0", Bearer(), package.substr(0, half),
                    "application/octet-stream");
  ASSERT_TRUE(put);
  ASSERT_EQ(put->status, 200) << put->body;
  KillAndRestart();
  c = CustomerClient();
  auto state = c->Get("/v1/uploads/" + upload_id, Bearer());
  ASSERT_TRUE(state);
  ASSERT_EQ(state->status, 200) << state->body;
  EXPECT_EQ(json::parse(state->body)["offset_bytes"], half);
  put = c->Put("/v1/uploads/" + upload_id + "?offset=" + std::to_string(half), Bearer(),
               package.substr(half), "application/octet-stream");
  ASSERT_TRUE(put);
  ASSERT_EQ(put->status, 200) << put->body;
  auto commit = c->Post("/v1/uploads/" + upload_id + "/commit", Bearer(),
                        json{{"name", "resumed"}}.dump(), "application/json");
  ASSERT_TRUE(commit);
  ASSERT_EQ(commit->status / 100, 2) << commit->body;
  EXPECT_EQ(json::parse(commit->body)["sha256"],
            crypto::HexEncode(crypto::Sha256(package)));
}

TEST_F(PortalCrashTest, MalformedRequestsChangeNoStateEvenAcrossARestart) {
  StartPortalProcess();
  const std::string image_id = CustomerWithSealedImage();
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed");
  const std::string job_id = job["job_id"];
  const std::string host_id = job["host_id"];
  auto host = Host(host_id);
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "fetching"}});
  // `customer status` without a job id lists the customer's jobs.
  const json before = Customer({"status"});
  ASSERT_TRUE(before["jobs"].is_array()) << before.dump();
  ASSERT_EQ(before["jobs"].size(), 1u) << before.dump();
  EXPECT_EQ(before["jobs"][0]["job_id"], job_id);
  EXPECT_EQ(before["jobs"][0]["state"], "fetching");
  auto c = CustomerClient();
  struct Bad {
    std::string path;
    std::string body;
  };
  // The customer's malformed requests.
  for (const Bad& b : std::vector<Bad>{{"/v1/launch", "{"},
                                       {"/v1/launch", "{\"image_id\": 5}"},
                                       {"/v1/launch", "{\"image_id\": \"img-none\"}"},
                                       {"/v1/launch", "[]"},
                                       {"/v1/vms/" + job_id + "/stop", "{"},
                                       {"/v1/vms/no-such-vm/stop", "{}"}}) {
    SCOPED_TRACE(b.path + " " + b.body);
    auto r = c->Post(b.path, Bearer(), b.body, "application/json");
    ASSERT_TRUE(r);
    EXPECT_GE(r->status, 400);
    json err = json::parse(r->body, nullptr, false);
    EXPECT_TRUE(err["error"]["reason"].is_string()) << r->body;
  }
  // The host's: a bad phase, a step back, a bad machine reason, another
  // host's job, a bad capacity.
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "bogus"}}, 400);
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "placed"}}, 412);
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/refusal", {{"reason", "Not A Reason!"}}, 400);
  auto other = Host(host_id == "host-a" ? "host-b" : "host-a");
  HostPost(*other, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "running"}}, 404);
  HostPost(*host, "/v1/hosts/register",
           {{"host_id", host_id}, {"capacity", {{"vcpus", 2}, {"slots", 0}}}}, 400);
  EXPECT_EQ(Customer({"status"}), before);
  KillAndRestart();
  EXPECT_EQ(Customer({"status"}), before);
}

// Crash tests with real hosts (issue 17): two `vmseal host serve` processes,
// each with its own TPM (swtpm) that the KMS enrolls and attests, launching
// the job with qemu (tcg; the small raw disk needs no OS: a job is "running"
// once its qemu runs). The KMS holds each host's key release at its door
// (an admission hook) so that the portal can be killed while a host is
// mid-launch, between attestation and release, deterministically.
class PortalCrashWithRealHostsTest : public PortalCrashTest {
 protected:
  void SetUp() override {
    for (int i = 0; i < 2; ++i) {
      auto tpm = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
      ASSERT_OK(tpm);
      kms_options_.ek_ca_bundle_pem += (*tpm)->ca_bundle_pem();
      tpms_.push_back(*std::move(tpm));
    }
    ASSERT_NO_FATAL_FAILURE(PortalCrashTest::SetUp());
    std::string out;
    for (const char* h : {"host-1", "host-2"}) {
      ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", kms_dir_, "--role",
                            "host", "--name", h, "--out", kms_dir_ + "/" + h},
                           &out, 60),
                0)
          << out;
    }
    // The hosts check the portal with the one CA file they have (the KMS's
    // CA): the portal's TLS identity comes from it here.
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", kms_dir_, "--role",
                          "portal", "--name", "127.0.0.1", "--server", "--server-ip", "127.0.0.1",
                          "--out", dir_.File("portal-server")},
                         &out, 60),
              0)
        << out;
    WriteFileOrDie(dir_.File("portal-ca.pem"), ReadFileOrDie(kms_dir_ + "/ca.pem"));
  }
  void TearDown() override {
    OpenReleases(/*drop_held=*/true);
    for (size_t i = 0; i < serve_.size(); ++i) StopHost(static_cast<int>(i));
    // VMs outlive `host serve`: remove them with their disks.
    for (int i = 1; i <= 2; ++i) {
      std::string out;
      (void)RunCommand({VmsealBinary(), "host", "delete", "--all", "--config", HostConfigPath(i)},
                       &out, 120);
    }
    PortalCrashTest::TearDown();
  }

  // Releases (POST /v1/hosts/{id}/releases) wait at the KMS's door while
  // held; once opened, those that waited are answered 503 (`drop_held`) or
  // go on to the KMS.
  void ConfigureKmsServer(net::HttpsServer& server) override {
    server.SetAdmission([this](const net::Request& req) -> Status {
      if (req.method != "POST" || !req.path.ends_with("/releases")) return OkStatus();
      std::unique_lock<std::mutex> lock(gate_mu_);
      const int number = ++releases_seen_;
      gate_cv_.notify_all();
      gate_cv_.wait(lock, [this] { return !hold_releases_; });
      if (number <= drop_up_to_) return UnavailableError("test: the release was dropped");
      return OkStatus();
    });
  }
  void HoldReleases() {
    std::lock_guard<std::mutex> lock(gate_mu_);
    hold_releases_ = true;
  }
  void OpenReleases(bool drop_held) {
    {
      std::lock_guard<std::mutex> lock(gate_mu_);
      if (drop_held) drop_up_to_ = releases_seen_;
      hold_releases_ = false;
    }
    gate_cv_.notify_all();
  }
  // Waits (bounded) until `n` releases have reached the KMS's door.
  bool WaitForReleases(int n) {
    std::unique_lock<std::mutex> lock(gate_mu_);
    return gate_cv_.wait_for(lock, std::chrono::seconds(40),
                             [&] { return releases_seen_ >= n; });
  }

  std::string HostConfigPath(int i) { return dir_.File("host-" + std::to_string(i) + ".json"); }
  // `vmseal host serve` as host-i, talking to the portal process's port.
  void StartHost(int i) {
    const std::string name = "host-" + std::to_string(i);
    json c = {{"portal_url", PortalUrl()},
              {"kms_url", "https://127.0.0.1:" + std::to_string(kms_port_)},
              {"ca_file", kms_dir_ + "/ca.pem"},
              {"cert_file", kms_dir_ + "/" + name + ".pem"},
              {"key_file", kms_dir_ + "/" + name + "-key.pem"},
              {"tpm_tcti", tpms_[i - 1]->tcti()},
              {"state_dir", dir_.File(name + "-state")},
              {"image_store_dir", dir_.File(name + "-images")},
              {"pcr_selection", {0, 7}},
              {"heartbeat_interval_seconds", 0.5},
              {"reattest_interval_seconds", 60},
              {"poll_interval_seconds", 0.2},
              {"accel", "tcg"},
              {"overlay_pool", 1},
              {"capacity", {{"vcpus", 2}, {"memory_mib", 2048}, {"slots", 2}}}};
    WriteFileOrDie(HostConfigPath(i), c.dump());
    const std::string bin = VmsealBinary();
    const std::string config = HostConfigPath(i);
    const std::string log = dir_.File(name + ".log");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> argv = {const_cast<char*>(bin.c_str()), const_cast<char*>("host"),
                               const_cast<char*>("serve"), const_cast<char*>("--config"),
                               const_cast<char*>(config.c_str()), nullptr};
    if (serve_.size() < static_cast<size_t>(i)) serve_.resize(i, -1);
    pid_t pid = -1;
    ASSERT_EQ(posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    serve_[i - 1] = pid;
  }
  void StopHost(int i, int sig = SIGKILL) {
    pid_t& pid = serve_[i - 1];
    if (pid <= 0) return;
    ::kill(pid, sig);
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid = -1;
  }
  // Both hosts enrolled and attested at the KMS (bounded wait); then the
  // operator makes host-1's PCRs a flavor the default policy accepts (both
  // swtpms measure alike: both hosts are trusted).
  void TrustHosts() {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (const char* h : {"host-1", "host-2"}) {
      while (!kms_store_->LatestVerdict(h).ok()) {
        ASSERT_LT(std::chrono::steady_clock::now(), deadline)
            << h << " did not attest: " << ReadFileOrDie(dir_.File(std::string(h) + ".log"));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    auto op = KmsClientAs("operator");
    ASSERT_NE(op, nullptr);
    ASSERT_OK(op->Post("/v1/flavors/real-boot/from-host/host-1", json::object()));
    ASSERT_OK(op->Put("/v1/policies/_default",
                      {{"flavors", {{"anyOf", {"good-boot", "real-boot"}}}},
                       {"max_evidence_age_seconds", 300}}));
  }
  // The KMS audit's release.grant records of `job_id`: (host, attempt).
  std::vector<std::pair<std::string, int64_t>> ReleaseGrants(const std::string& job_id) {
    std::vector<std::pair<std::string, int64_t>> out;
    auto records = kms_store_->ReadAudit(0, 100000);
    EXPECT_OK(records);
    if (!records.ok()) return out;
    for (const kms::AuditRecord& r : *records) {
      json rec = json::parse(r.record, nullptr, false);
      if (!rec.is_object() || rec.value("event", "") != "release.grant") continue;
      const json& d = rec["details"];
      if (!d.is_object()) continue;
      if (d.value("job_id", "") != job_id) continue;
      out.emplace_back(d.value("host_id", ""), d.value("attempt", int64_t{-1}));
    }
    return out;
  }
  // The VMs `vmseal host vms` lists on host-i.
  json HostVms(int i) {
    std::string out;
    EXPECT_EQ(RunCommand({VmsealBinary(), "host", "vms", "--config", HostConfigPath(i), "--json"},
                         &out, 60),
              0)
        << out;
    json j = json::parse(out, nullptr, false);
    return j.is_object() ? j.value("vms", json::array()) : json::array();
  }
  // The customer's job once `done` holds (bounded, 60 s).
  json WaitForJobState(const std::string& job_id, const std::function<bool(const json&)>& done) {
    json status;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      status = Customer({"status", job_id});
      if (done(status) || status.value("state", "") == "failed") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return status;
  }
  // kill -9 of the portal, and the same command on the same port and data.
  void KillAndRestartOnTheSamePort() {
    portal_fixed_port_ = process_->port();
    KillAndRestart();
  }

  std::vector<std::unique_ptr<tpm::testing::Swtpm>> tpms_;
  std::vector<pid_t> serve_;
  std::mutex gate_mu_;
  std::condition_variable gate_cv_;
  bool hold_releases_ = false;
  int releases_seen_ = 0;
  int drop_up_to_ = 0;
};

// The portal is killed while the host it placed the job on is mid-launch
// (attested, its release waiting at the KMS); it restarts on the same data.
// The host carries on: the job runs there, once: one release.grant in the
// KMS audit (attempt 1), one VM on that host, none on the other.
TEST_F(PortalCrashWithRealHostsTest, KilledMidLaunchTheRealHostCompletesTheJobOnce) {
  StartPortalProcess();
  ASSERT_NO_FATAL_FAILURE(StartHost(1));
  ASSERT_NO_FATAL_FAILURE(StartHost(2));
  ASSERT_NO_FATAL_FAILURE(TrustHosts());
  const std::string image_id = CustomerWithSealedImage();
  ASSERT_FALSE(image_id.empty());
  HoldReleases();
  json job = Customer({"launch", image_id});
  const std::string job_id = job.value("job_id", "");
  ASSERT_FALSE(job_id.empty()) << job.dump();
  ASSERT_TRUE(WaitForReleases(1)) << Customer({"status", job_id}).dump();
  json status = Customer({"status", job_id});
  const std::string host = status.value("host_id", "");
  ASSERT_THAT(host, ::testing::AnyOf("host-1", "host-2")) << status.dump();
  EXPECT_EQ(status["state"], "attesting") << status.dump();

  KillAndRestartOnTheSamePort();
  OpenReleases(/*drop_held=*/false);
  status = WaitForJobState(job_id, [](const json& j) { return j["state"] == "running"; });
  ASSERT_EQ(status["state"], "running") << status.dump();
  EXPECT_EQ(status["host_id"], host);
  EXPECT_EQ(status["attempts"].size(), 1u) << status.dump();
  const std::string vm_name = status.value("vm_name", "");
  EXPECT_FALSE(vm_name.empty());
  // A few more polls and heartbeats of both hosts: nothing moves.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["attempts"].size(), 1u);
  EXPECT_THAT(ReleaseGrants(job_id),
              ::testing::ElementsAre(std::pair<std::string, int64_t>(host, 1)));
  const int on = host == "host-1" ? 1 : 2;
  json vms = HostVms(on);
  ASSERT_EQ(vms.size(), 1u) << vms.dump();
  EXPECT_EQ(vms[0]["name"], vm_name);
  EXPECT_EQ(vms[0]["state"], "running");
  EXPECT_TRUE(HostVms(3 - on).empty());
}

// The portal and the host it placed the job on are both killed mid-launch
// (the host's release never reached the KMS). The restarted portal gives
// the silent host one lease, then the job goes to the other trusted host,
// which runs it. The killed host comes back: it runs nothing. One
// release.grant in the KMS audit, for the second attempt on the other host.
TEST_F(PortalCrashWithRealHostsTest, PortalAndHostKilledMidLaunchTheJobRunsOnceOnTheOtherHost) {
  StartPortalProcess(/*lease_seconds=*/3);
  ASSERT_NO_FATAL_FAILURE(StartHost(1));
  ASSERT_NO_FATAL_FAILURE(StartHost(2));
  ASSERT_NO_FATAL_FAILURE(TrustHosts());
  const std::string image_id = CustomerWithSealedImage();
  ASSERT_FALSE(image_id.empty());
  HoldReleases();
  json job = Customer({"launch", image_id});
  const std::string job_id = job.value("job_id", "");
  ASSERT_FALSE(job_id.empty()) << job.dump();
  ASSERT_TRUE(WaitForReleases(1)) << Customer({"status", job_id}).dump();
  const std::string first = Customer({"status", job_id}).value("host_id", "");
  ASSERT_THAT(first, ::testing::AnyOf("host-1", "host-2"));
  const int dead = first == "host-1" ? 1 : 2;
  const int live = 3 - dead;

  StopHost(dead, SIGKILL);
  KillAndRestartOnTheSamePort();
  OpenReleases(/*drop_held=*/true);  // the dead host's release: never answered
  json status = WaitForJobState(job_id, [&](const json& j) {
    return j["state"] == "running" && j["host_id"] != first;
  });
  ASSERT_EQ(status["state"], "running") << status.dump();
  const std::string second = "host-" + std::to_string(live);
  EXPECT_EQ(status["host_id"], second);
  ASSERT_EQ(status["attempts"].size(), 2u) << status.dump();
  EXPECT_EQ(status["attempts"][0]["reason"], "host_lost");
  EXPECT_THAT(status["attempts"][0]["refusal"].get<std::string>(), HasSubstr("lease expired"));

  // The killed host comes back (same TPM, same state): once it has
  // registered again and polled a few times, it has been told nothing to
  // run, and runs nothing.
  const std::string dead_log = dir_.File("host-" + std::to_string(dead) + ".log");
  const size_t log_before = ReadFileOrDie(dead_log).size();
  ASSERT_NO_FATAL_FAILURE(StartHost(dead));
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);;) {
    if (ReadFileOrDie(dead_log).find("host registered with the portal", log_before) !=
        std::string::npos) {
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << ReadFileOrDie(dead_log);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));  // 5 polls
  EXPECT_EQ(ReadFileOrDie(dead_log).find("job " + job_id, log_before), std::string::npos)
      << ReadFileOrDie(dead_log).substr(log_before);
  status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["host_id"], second);
  EXPECT_EQ(status["attempts"].size(), 2u);
  EXPECT_THAT(ReleaseGrants(job_id),
              ::testing::ElementsAre(std::pair<std::string, int64_t>(second, 2)));
  json vms = HostVms(live);
  ASSERT_EQ(vms.size(), 1u) << vms.dump();
  EXPECT_EQ(vms[0]["name"], status["vm_name"]);
  EXPECT_TRUE(HostVms(dead).empty()) << HostVms(dead).dump();
}

// Two portal replicas on one PostgreSQL and one S3 store (issue 17): the
// customer talks to replica A, the hosts to replica B.
class PortalReplicaTest : public PortalCrashTest {
 protected:
  int PortalPort() const override { return customer_on_b_ ? b_->port() : process_->port(); }
  int HostPort() const override { return b_->port(); }
  // Objects in one S3 bucket, or (`shared_objects_dir`) in one filesystem
  // store directory both replicas open.
  void StartReplicas(bool shared_objects_dir = false) {
    auto pg = vmseal::testing::PgHarness::Start();
    ASSERT_OK(pg);
    pg_ = std::move(pg).value();
    auto url = pg_->CreateDatabase("portal");
    ASSERT_OK(url);
    std::vector<std::string> shared = {"--store", *url};
    if (shared_objects_dir) {
      shared.insert(shared.end(), {"--objects-dir", dir_.File("shared-objects")});
    } else {
      auto s3 = vmseal::testing::S3Server::Start({"images"});
      ASSERT_OK(s3);
      s3_ = std::move(s3).value();
      ::setenv("VMSEAL_S3_SECRET_ACCESS_KEY", vmseal::testing::kS3SecretAccessKey, 1);
      shared.insert(shared.end(), {"--s3-endpoint", s3_->endpoint(), "--s3-bucket", "images",
                                   "--s3-access-key-id", vmseal::testing::kS3AccessKeyId});
    }
    auto a = StartReplica("replica-a", shared);
    ASSERT_OK(a);
    process_ = std::move(a).value();
    auto b = StartReplica("replica-b", shared);
    ASSERT_OK(b);
    b_ = std::move(b).value();
  }
  std::unique_ptr<vmseal::testing::PgHarness> pg_;
  std::unique_ptr<vmseal::testing::S3Server> s3_;
  std::unique_ptr<testing::ServerProcess> b_;
  bool customer_on_b_ = false;
};

TEST_F(PortalReplicaTest, JobLaunchedOnOneReplicaRunsThroughTheOtherAndSurvivesItsKill) {
  StartReplicas();
  const std::string image_id = CustomerWithSealedImage();
  ASSERT_FALSE(image_id.empty());
  RegisterHosts();  // through replica B
  json job = Customer({"launch", image_id});  // through replica A
  ASSERT_EQ(job["state"], "placed") << job.dump();
  const std::string job_id = job["job_id"];
  const std::string host_id = job["host_id"];
  EXPECT_NE(host_id, "host-c");
  auto host = Host(host_id);
  auto pending = host->Get("/v1/hosts/jobs");
  ASSERT_TRUE(pending);
  EXPECT_NE(pending->body.find(job_id), std::string::npos) << pending->body;
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "fetching"}});
  // Replica A sees what the host told replica B.
  EXPECT_EQ(Customer({"status", job_id})["state"], "fetching");
  process_->Kill();
  // The customer's session and job are served by replica B.
  customer_on_b_ = true;
  const auto start = std::chrono::steady_clock::now();
  json status = Customer({"status", job_id});
  const double served_again_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(status["state"], "fetching");
  EXPECT_EQ(status["host_id"], host_id);
  for (const char* phase : {"attesting", "decrypting", "running"}) {
    HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", phase}});
  }
  status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "running");
  EXPECT_EQ(status["attempts"].size(), 1u);
  RecordProperty("served_again_ms", static_cast<int>(served_again_ms));
}

TEST_F(PortalReplicaTest, AQueuedJobIsPlacedOnceWhileBothReplicasTick) {
  StartReplicas();
  const std::string image_id = CustomerWithSealedImage();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "queued") << job.dump();
  const std::string job_id = job["job_id"];
  RegisterHosts();  // both replicas' Ticks now race to place it
  json status = WaitForJob(job_id, [](const json& j) { return j["state"] == "placed"; });
  ASSERT_EQ(status["state"], "placed") << status.dump();
  // A few more Ticks of both replicas: nothing moves.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  status = Customer({"status", job_id});
  EXPECT_EQ(status["state"], "placed");
  EXPECT_EQ(status["attempts"].size(), 1u) << status.dump();
  int given = 0;
  for (const char* h : {"host-a", "host-b", "host-c"}) {
    auto c = Host(h);
    auto pending = c->Get("/v1/hosts/jobs");
    ASSERT_TRUE(pending);
    if (pending->body.find(job_id) != std::string::npos) ++given;
  }
  EXPECT_EQ(given, 1);
}

// The database goes away under two replicas while a host holds a job: once
// the lease needs renewing, the host's poll answers 503 store_unavailable
// naming the job (the host learns the portal holds no renewed lease for it,
// instead of a poll that looks fine), and /metrics counts the failures.
TEST_F(PortalReplicaTest, AHostWhoseLeaseCannotBeRenewedIsToldSoAndItIsCounted) {
  lease_seconds_ = 4;
  StartReplicas();
  const std::string image_id = CustomerWithSealedImage();
  RegisterHosts();
  json job = Customer({"launch", image_id});
  ASSERT_EQ(job["state"], "placed") << job.dump();
  const std::string job_id = job["job_id"];
  auto host = Host(job["host_id"].get<std::string>());
  HostPost(*host, "/v1/hosts/jobs/" + job_id + "/progress", {{"phase", "fetching"}});
  pg_.reset();  // PostgreSQL stopped by pid: both replicas lose it
  int poll_status = 0;
  std::string poll_body;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
       std::chrono::steady_clock::now() < deadline;) {
    auto poll = host->Get("/v1/hosts/jobs");
    ASSERT_TRUE(poll);
    poll_status = poll->status;
    poll_body = poll->body;
    if (poll_status != 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(poll_status, 503) << poll_body;
  json err = json::parse(poll_body, nullptr, false);
  EXPECT_EQ(err["error"]["reason"], "store_unavailable") << poll_body;
  EXPECT_THAT(poll_body, HasSubstr(job_id));
  EXPECT_THAT(poll_body, HasSubstr("not renewed"));
  auto metrics = host->Get("/metrics");
  ASSERT_TRUE(metrics);
  ASSERT_EQ(metrics->status, 200);
  const std::string name = "\nvmseal_portal_lease_renewal_failures_total ";
  const size_t at = metrics->body.find(name);
  ASSERT_NE(at, std::string::npos) << metrics->body;
  EXPECT_GE(std::stoll(metrics->body.substr(at + name.size())), 1) << metrics->body;
}

// An upload begun on replica A (then killed) resumes and commits on replica
// B: the staging lives in the shared store, not in A's data directory.
class PortalReplicaUploadTest : public PortalReplicaTest,
                                public ::testing::WithParamInterface<bool> {};

TEST_P(PortalReplicaUploadTest, AnUploadBegunOnOneReplicaResumesAndCommitsOnTheOther) {
  StartReplicas(/*shared_objects_dir=*/GetParam());
  json reg = SignUp();
  customer_id_ = reg.value("customer_id", "");
  json cert = Customer({"fetch-cert", "--kms-ca", kms_dir_ + "/ca.pem", "--out",
                        dir_.File("customer.crt")});
  ASSERT_EQ(cert["verified"], true);
  const std::string package = ReadFileOrDie(SealImage(dir_.File("customer.crt"), customer_id_));
  const std::string sha256 = crypto::HexEncode(crypto::Sha256(package));
  const size_t half = package.size() / 2;
  auto a = CustomerClient();
  auto begin = a->Post("/v1/uploads", Bearer(), "", "application/json");
  ASSERT_TRUE(begin);
  ASSERT_EQ(begin->status, 201) << begin->body;
  const std::string upload_id = json::parse(begin->body).value("upload_id", "");
  auto put = a->Put("/v1/uploads/" + upload_id + "?offset=0", Bearer(), package.substr(0, half),
                    "application/octet-stream");
  ASSERT_TRUE(put);
  ASSERT_EQ(put->status, 200) << put->body;
  process_->Kill();
  customer_on_b_ = true;
  auto b = CustomerClient();
  auto state = b->Get("/v1/uploads/" + upload_id, Bearer());
  ASSERT_TRUE(state);
  ASSERT_EQ(state->status, 200) << state->body;
  EXPECT_EQ(json::parse(state->body)["offset_bytes"], half);
  // A stale offset (what A had before the first PUT) is refused by B.
  auto stale = b->Put("/v1/uploads/" + upload_id + "?offset=0", Bearer(), package.substr(0, 64),
                      "application/octet-stream");
  ASSERT_TRUE(stale);
  EXPECT_EQ(stale->status, 412) << stale->body;
  put = b->Put("/v1/uploads/" + upload_id + "?offset=" + std::to_string(half), Bearer(),
               package.substr(half), "application/octet-stream");
  ASSERT_TRUE(put);
  ASSERT_EQ(put->status, 200) << put->body;
  auto commit = b->Post("/v1/uploads/" + upload_id + "/commit", Bearer(),
                        json{{"name", "resumed-on-b"}, {"sha256", sha256}}.dump(),
                        "application/json");
  ASSERT_TRUE(commit);
  ASSERT_EQ(commit->status / 100, 2) << commit->body;
  EXPECT_EQ(json::parse(commit->body)["sha256"], sha256);
  const std::string image_id = json::parse(commit->body).value("image_id", "");
  json images = Customer({"images"})["images"];
  ASSERT_TRUE(images.is_array()) << images.dump();
  ASSERT_EQ(images.size(), 1u) << images.dump();
  EXPECT_EQ(images[0]["image_id"], image_id);
  EXPECT_EQ(images[0]["sha256"], sha256);
  // The session is over on every replica.
  auto after = b->Get("/v1/uploads/" + upload_id, Bearer());
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 404);
  // What a host will fetch is the package, byte for byte: download it.
  auto got = b->Get("/v1/images/" + image_id + "/package", Bearer());
  ASSERT_TRUE(got);
  ASSERT_EQ(got->status, 200);
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(got->body)), sha256);
}

// Two appends to one upload at the same instant through two replicas (S3
// staging, one PostgreSQL): replica A is receiving a PUT's body (half sent,
// the rest held back by the client) when another PUT at the upload's next
// offset reaches replica B. B answers 409 busy and keeps nothing; A's PUT
// completes, and the committed package is A's bytes exactly.
TEST_F(PortalReplicaTest, TwoAppendsAtTheSameInstantThroughTwoReplicasDoNotInterleave) {
  StartReplicas();
  json reg = SignUp();
  customer_id_ = reg.value("customer_id", "");
  json cert = Customer({"fetch-cert", "--kms-ca", kms_dir_ + "/ca.pem", "--out",
                        dir_.File("customer.crt")});
  ASSERT_EQ(cert["verified"], true);
  // Over the server's 4 MiB body piece: the first piece is appended while
  // the client holds the rest back.
  const std::string package =
      ReadFileOrDie(SealImage(dir_.File("customer.crt"), customer_id_, 6 << 20));
  const std::string sha256 = crypto::HexEncode(crypto::Sha256(package));
  const size_t half = (9 << 20) / 2;
  ASSERT_GT(package.size(), half);
  auto a = CustomerClient();
  auto begin = a->Post("/v1/uploads", Bearer(), "", "application/json");
  ASSERT_TRUE(begin);
  ASSERT_EQ(begin->status, 201) << begin->body;
  const std::string upload_id = json::parse(begin->body).value("upload_id", "");
  const std::string path = "/v1/uploads/" + upload_id;

  // A's PUT: 4.5 MiB, then nothing until B has had its answer.
  std::mutex mu;
  std::condition_variable cv;
  bool b_answered = false;
  auto a_client = CustomerClient();
  a_client->set_read_timeout(60, 0);
  a_client->set_write_timeout(60, 0);
  auto a_put = std::async(std::launch::async, [&] {
    return a_client->Put(
        path + "?offset=0", Bearer(), package.size(),
        [&](size_t offset, size_t, httplib::DataSink& sink) {
          if (offset == 0) return sink.write(package.data(), half);
          std::unique_lock<std::mutex> lock(mu);
          if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return b_answered; })) return false;
          return sink.write(package.data() + offset, package.size() - offset);
        },
        "application/octet-stream");
  });
  // Replica A has appended the first piece (bounded wait).
  uint64_t seen = 0;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
       seen == 0 && std::chrono::steady_clock::now() < deadline;) {
    auto state = a->Get(path, Bearer());
    if (state && state->status == 200) seen = json::parse(state->body).value("offset_bytes", 0ull);
    if (seen == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GT(seen, 0u);
  // B's PUT, at the offset the upload now expects, with other bytes.
  customer_on_b_ = true;
  auto b = CustomerClient();
  const std::string intruder(4096, 'x');
  auto b_put = b->Put(path + "?offset=" + std::to_string(seen), Bearer(), intruder,
                      "application/octet-stream");
  {
    std::lock_guard<std::mutex> lock(mu);
    b_answered = true;
  }
  cv.notify_all();
  ASSERT_TRUE(b_put);
  EXPECT_EQ(b_put->status, 409) << b_put->body;
  EXPECT_THAT(b_put->body, HasSubstr("busy"));
  auto a_result = a_put.get();
  ASSERT_TRUE(a_result);
  ASSERT_EQ(a_result->status, 200) << a_result->body;
  EXPECT_EQ(json::parse(a_result->body)["offset_bytes"], package.size());

  auto commit = b->Post(path + "/commit", Bearer(),
                        json{{"name", "not-interleaved"}, {"sha256", sha256}}.dump(),
                        "application/json");
  ASSERT_TRUE(commit);
  ASSERT_EQ(commit->status / 100, 2) << commit->body;
  const std::string image_id = json::parse(commit->body).value("image_id", "");
  auto got = b->Get("/v1/images/" + image_id + "/package", Bearer());
  ASSERT_TRUE(got);
  ASSERT_EQ(got->status, 200);
  EXPECT_EQ(got->body.size(), package.size());
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(got->body)), sha256);
}

INSTANTIATE_TEST_SUITE_P(SharedStore, PortalReplicaUploadTest, ::testing::Values(false, true),
                         [](const auto& param_info) { return param_info.param ? "fs_dir" : "s3"; });

}  // namespace
}  // namespace vmseal::csp
