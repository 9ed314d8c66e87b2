// The portal over TLS with host client certificates (mTLS): hosts register,
// pull jobs, fetch packages and report progress or refusal, end to end.
#include <httplib.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "kms/internal/mini_ca.h"
#include "csp/internal/test_doubles.h"
#include "csp/portal_server.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using json = nlohmann::json;
using ::vmseal::csp::testing::FakeKmsClient;
using ::vmseal::csp::testing::FakeVerifier;
using ::vmseal::csp::testing::kSealedMagic;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

class HttpTlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Identities as the KMS CA issues them: the OU names the role.
    auto ca = kms::internal::CreateRootCa("vmseal test CA", 30);
    ASSERT_OK(ca);
    WriteFileOrDie(dir_.File("ca.pem"), ca->cert_pem);
    Issue(*ca, {.common_name = "portal-server", .organizational_unit = "portal",
                .ip_addresses = {"127.0.0.1"}, .server = true},
          "server");
    Issue(*ca, {.common_name = "host-a", .organizational_unit = "host"}, "host-a");
    Issue(*ca, {.common_name = "host-b", .organizational_unit = "host"}, "host-b");
    Issue(*ca, {.common_name = "host-a", .organizational_unit = "operator"}, "not-a-host");
    auto rogue = kms::internal::CreateRootCa("rogue CA", 30);
    ASSERT_OK(rogue);
    Issue(*rogue, {.common_name = "host-a", .organizational_unit = "host"}, "rogue");

    PortalServer::Options o;
    o.data_dir = dir_.File("data");
    o.argon2_m_cost_kib = 64;
    o.tls_cert_file = dir_.File("server.crt");
    o.tls_key_file = dir_.File("server.key");
    o.client_ca_file = dir_.File("ca.pem");
    o.operator_token = SecretBytes(crypto::AsBytes(std::string_view("op")));
    auto s = PortalServer::Create(std::move(o), &verifier_, &kms_);
    ASSERT_OK(s);
    server_ = std::move(s).value();
    ASSERT_OK(server_->Start());
    customer_ = Client("");
  }
  void TearDown() override { server_->Stop(); }

  void Issue(const kms::internal::CertAndKey& ca, const kms::internal::LeafOptions& options,
             const std::string& name) {
    auto leaf = kms::internal::IssueLeaf(ca, options);
    ASSERT_OK(leaf);
    WriteFileOrDie(dir_.File(name + ".crt"), leaf->cert_pem);
    WriteFileOrDie(dir_.File(name + ".key"),
                   std::string(crypto::AsStringView(leaf->key_pem.UnsafeSpan())));
  }
  // A client that trusts the test CA and presents `identity`'s certificate.
  std::unique_ptr<httplib::SSLClient> Client(const std::string& identity) {
    std::unique_ptr<httplib::SSLClient> c;
    if (identity.empty()) {
      c = std::make_unique<httplib::SSLClient>("127.0.0.1", server_->port());
    } else {
      c = std::make_unique<httplib::SSLClient>("127.0.0.1", server_->port(),
                                               dir_.File(identity + ".crt"),
                                               dir_.File(identity + ".key"));
    }
    c->set_ca_cert_path(dir_.File("ca.pem").c_str());
    c->enable_server_certificate_verification(true);
    return c;
  }
  void Trust(const std::string& host, bool trusted, const std::string& reason = "ok") {
    kms_.SetEligibility(host, trusted, reason);
  }
  // A logged-in customer with one uploaded image; returns {auth, image id}.
  std::pair<httplib::Headers, std::string> CustomerWithImage(const std::string& data) {
    auto reg = customer_->Post("/v1/register");
    EXPECT_TRUE(reg) << httplib::to_string(reg.error());
    json r = json::parse(reg->body);
    json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
    auto res = customer_->Post("/v1/login", login.dump(), "application/json");
    httplib::Headers auth = {
        {"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
    auto begin = customer_->Post("/v1/uploads", auth, "", "application/json");
    std::string id = json::parse(begin->body)["upload_id"];
    EXPECT_EQ(customer_->Put("/v1/uploads/" + id + "?offset=0", auth, data,
                             "application/octet-stream")->status, 200);
    auto img = customer_->Post("/v1/uploads/" + id + "/commit", auth, R"({"name":"vm"})",
                               "application/json");
    EXPECT_EQ(img->status, 201) << img->body;
    return {auth, json::parse(img->body)["image_id"].get<std::string>()};
  }
  json Launch(const httplib::Headers& auth, const std::string& image_id) {
    json body = {{"image_id", image_id}};
    auto res = customer_->Post("/v1/launch", auth, body.dump(), "application/json");
    EXPECT_EQ(res->status, 201) << res->body;
    return json::parse(res->body);
  }

  TempDir dir_;
  FakeVerifier verifier_;
  FakeKmsClient kms_;
  std::unique_ptr<PortalServer> server_;
  std::unique_ptr<httplib::SSLClient> customer_;
};

TEST_F(HttpTlsTest, TrustedHostRunsTheJobAndTamperedHostIsSkippedWithItsReason) {
  auto host_a = Client("host-a");
  auto host_b = Client("host-b");
  Trust("host-a", false, "pcr_policy");  // tampered
  Trust("host-b", true);
  ASSERT_EQ(host_a->Post("/v1/hosts/register", R"({"capacity_slots":2})", "application/json")
                ->status, 200);
  auto reg_b = host_b->Post(
      "/v1/hosts/register",
      R"({"host_id":"host-b","capacity":{"vcpus":2,"memory_mib":4096},"tags":["region=eu"]})",
      "application/json");
  ASSERT_EQ(reg_b->status, 200) << reg_b->body;
  EXPECT_EQ(json::parse(reg_b->body)["capacity_slots"], 2);
  const std::string package = std::string(kSealedMagic) + "sealed disk";
  auto [auth, image_id] = CustomerWithImage(package);
  json job = Launch(auth, image_id);
  ASSERT_EQ(job["state"], "placed");
  EXPECT_EQ(job["host_id"], "host-b");
  EXPECT_NE(job["last_placement"].dump().find("KMS: not eligible (pcr_policy)"),
            std::string::npos);
  const std::string job_id = job["job_id"];

  EXPECT_EQ(json::parse(host_a->Get("/v1/hosts/jobs")->body)["jobs"].size(), 0u);
  json pending = json::parse(host_b->Get("/v1/hosts/jobs")->body)["jobs"];
  ASSERT_EQ(pending.size(), 1u);
  auto pkg = host_b->Get("/v1/hosts/jobs/" + job_id + "/package");
  ASSERT_EQ(pkg->status, 200);
  EXPECT_EQ(pkg->body, package);
  EXPECT_EQ(pkg->get_header_value("X-Content-SHA256"),
            crypto::HexEncode(crypto::Sha256(package)));
  EXPECT_EQ(pending[0]["package_sha256"], crypto::HexEncode(crypto::Sha256(package)));
  auto ranged = host_b->Get("/v1/hosts/jobs/" + job_id + "/package", {{"Range", "bytes=2-5"}});
  ASSERT_EQ(ranged->status, 206);
  EXPECT_EQ(ranged->body, package.substr(2, 4));
  EXPECT_EQ(host_a->Get("/v1/hosts/jobs/" + job_id + "/package")->status, 404);
  for (const char* s : {"fetching", "attesting", "decrypting", "running"}) {
    json body = {{"phase", s}, {"vm_name", "vm-1"}};
    auto res = host_b->Post("/v1/hosts/jobs/" + job_id + "/progress", body.dump(),
                            "application/json");
    ASSERT_EQ(res->status, 200) << res->body;
  }
  auto status = customer_->Get("/v1/jobs/" + job_id, auth);
  EXPECT_EQ(json::parse(status->body)["state"], "running");
  EXPECT_EQ(json::parse(status->body)["vm_name"], "vm-1");
}

TEST_F(HttpTlsTest, HostRelaysTheSerialConsoleOnlyForItsOwnVm) {
  auto host_a = Client("host-a");
  auto host_b = Client("host-b");
  Trust("host-a", true);
  Trust("host-b", false, "pcr_policy");
  ASSERT_EQ(host_a->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")->status, 200);
  ASSERT_EQ(host_b->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")->status, 200);
  auto [auth, image_id] = CustomerWithImage(std::string(kSealedMagic) + "sealed disk");
  json job = Launch(auth, image_id);
  ASSERT_EQ(job["host_id"], "host-a");
  const std::string job_id = job["job_id"];
  for (const char* s : {"fetching", "attesting", "decrypting", "running"}) {
    json body = {{"phase", s}, {"vm_name", "vm-cons"}};
    ASSERT_EQ(host_a->Post("/v1/hosts/jobs/" + job_id + "/progress", body.dump(), "application/json")->status, 200);
  }
  // Nothing reported yet.
  EXPECT_EQ(customer_->Get("/v1/vms/" + job_id + "/console", auth)->status, 404);
  // Another host cannot write this VM's console.
  auto forged = host_b->Post("/v1/hosts/vms/vm-cons/console", R"({"text":"forged"})", "application/json");
  EXPECT_EQ(forged->status, 404) << forged->body;
  EXPECT_EQ(customer_->Get("/v1/vms/" + job_id + "/console", auth)->status, 404);
  // Its own host can; the customer reads it by job id or VM name.
  auto ok = host_a->Post("/v1/hosts/vms/vm-cons/console", R"({"text":"boot\nMARKER-42\n"})", "application/json");
  ASSERT_EQ(ok->status, 200) << ok->body;
  for (const std::string& vm : {job_id, std::string("vm-cons")}) {
    auto got = customer_->Get("/v1/vms/" + vm + "/console", auth);
    ASSERT_EQ(got->status, 200) << got->body;
    EXPECT_EQ(json::parse(got->body)["text"], "boot\nMARKER-42\n");
  }
  // Another customer does not see it.
  auto reg = customer_->Post("/v1/register");
  json r = json::parse(reg->body);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto res = customer_->Post("/v1/login", login.dump(), "application/json");
  httplib::Headers other = {{"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
  EXPECT_EQ(customer_->Get("/v1/vms/" + job_id + "/console", other)->status, 404);
  // A customer's client (no host certificate) cannot write it.
  EXPECT_NE(customer_->Post("/v1/hosts/vms/vm-cons/console", auth, R"({"text":"x"})", "application/json")->status, 200);
}

TEST_F(HttpTlsTest, BackwardProgressIsRefusedWithAMachineReason) {
  auto host_a = Client("host-a");
  Trust("host-a", true);
  ASSERT_EQ(host_a->Post("/v1/hosts/register", R"({"capacity":{"vcpus":1}})", "application/json")
                ->status, 200);
  auto [auth, image_id] = CustomerWithImage(std::string(kSealedMagic) + "x");
  json job = Launch(auth, image_id);
  const std::string path = "/v1/hosts/jobs/" + job["job_id"].get<std::string>() + "/progress";
  ASSERT_EQ(host_a->Post(path, R"({"phase":"attesting"})", "application/json")->status, 200);
  auto res = host_a->Post(path, R"({"phase":"fetching"})", "application/json");
  ASSERT_EQ(res->status, 412) << res->body;
  EXPECT_EQ(json::parse(res->body)["error"]["reason"], "bad_transition");
  auto other = Client("host-b")->Post(path, R"({"phase":"running"})", "application/json");
  ASSERT_EQ(other->status, 404) << other->body;
  EXPECT_EQ(json::parse(other->body)["error"]["reason"], "not_assigned");
}

TEST_F(HttpTlsTest, HeartbeatOfAnUnregisteredHostAsksItToRegister) {
  auto res = Client("host-a")->Post("/v1/hosts/heartbeat", "{}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(json::parse(res->body)["error"]["reason"], "not_registered");
}

TEST_F(HttpTlsTest, HostIdInTheBodyMustMatchTheCertificate) {
  auto res = Client("host-a")->Post("/v1/hosts/register",
                                   R"({"host_id":"host-b","capacity":{"vcpus":1}})",
                                   "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 403) << res->body;
}

TEST_F(HttpTlsTest, RefusalMovesTheJobAndOperatorSeesWhy) {
  auto host_a = Client("host-a");
  auto host_b = Client("host-b");
  Trust("host-a", true);
  Trust("host-b", true);
  ASSERT_EQ(host_a->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")
                ->status, 200);
  ASSERT_EQ(host_b->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")
                ->status, 200);
  auto [auth, image_id] = CustomerWithImage(std::string(kSealedMagic) + "x");
  json job = Launch(auth, image_id);
  const std::string first = job["host_id"];
  auto& first_client = first == "host-a" ? host_a : host_b;
  auto res = first_client->Post("/v1/hosts/jobs/" + job["job_id"].get<std::string>() + "/refusal",
                                R"({"reason":"attestation_denied","message":"quote nonce reused"})",
                                "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  json moved = json::parse(res->body);
  EXPECT_EQ(moved["state"], "placed");
  EXPECT_NE(moved["host_id"], first);
  httplib::Headers op = {{"Authorization", "Bearer op"}};
  auto why = customer_->Get(
      "/v1/operator/jobs/" + job["job_id"].get<std::string>() + "/placement", op);
  ASSERT_EQ(why->status, 200);
  EXPECT_NE(why->body.find("refused this job before: attestation denied: quote nonce reused"),
            std::string::npos)
      << why->body;
}

// A host reports its own machine reason (pcr_policy, decrypt_failed, ...) as
// `reason`; the job keeps it in its attempts and the placement log shows it.
TEST_F(HttpTlsTest, RefusalWithAnyMachineReasonIsKeptAndExplained) {
  auto host_a = Client("host-a");
  auto host_b = Client("host-b");
  Trust("host-a", true);
  Trust("host-b", true);
  ASSERT_EQ(host_a->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")
                ->status, 200);
  ASSERT_EQ(host_b->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")
                ->status, 200);
  auto [auth, image_id] = CustomerWithImage(std::string(kSealedMagic) + "x");
  json job = Launch(auth, image_id);
  const std::string job_id = job["job_id"];
  const std::string first = job["host_id"];
  auto& first_client = first == "host-a" ? host_a : host_b;
  const std::string path = "/v1/hosts/jobs/" + job_id + "/refusal";
  // Not a machine reason: refused, and the job stays where it is.
  for (const char* bad : {R"({"reason":"PCR policy","message":"x"})",
                          R"({"reason":"9lives"})", R"({"message":"no reason"})"}) {
    auto res = first_client->Post(path, bad, "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 400) << bad << " " << res->body;
  }
  json long_reason = {{"reason", std::string(65, 'a')}};
  EXPECT_EQ(first_client->Post(path, long_reason.dump(), "application/json")->status, 400);

  auto res = first_client->Post(path, R"({"reason":"pcr_policy","message":"pcr 7 differs"})",
                                "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  json moved = json::parse(res->body);
  EXPECT_EQ(moved["state"], "placed");
  EXPECT_NE(moved["host_id"], first);
  ASSERT_EQ(moved["attempts"].size(), 2u);
  EXPECT_EQ(moved["attempts"][0]["host_id"], first);
  EXPECT_EQ(moved["attempts"][0]["reason"], "pcr_policy");
  EXPECT_EQ(moved["attempts"][0]["refusal"], "pcr_policy: pcr 7 differs");
  EXPECT_EQ(moved["attempts"][1]["reason"], "");

  auto status = customer_->Get("/v1/jobs/" + job_id, auth);
  ASSERT_EQ(status->status, 200) << status->body;
  EXPECT_EQ(json::parse(status->body)["attempts"][0]["reason"], "pcr_policy");

  httplib::Headers op = {{"Authorization", "Bearer op"}};
  auto why = customer_->Get("/v1/operator/jobs/" + job_id + "/placement", op);
  ASSERT_EQ(why->status, 200);
  EXPECT_NE(why->body.find("refused this job before: pcr_policy: pcr 7 differs"),
            std::string::npos)
      << why->body;

  // The second host refuses with another machine reason: no host is left and
  // the job fails with both reasons.
  auto& second_client = first == "host-a" ? host_b : host_a;
  res = second_client->Post(path, R"({"reason":"decrypt_failed","message":"bad tag"})",
                            "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  json failed = json::parse(res->body);
  EXPECT_EQ(failed["state"], "failed");
  EXPECT_EQ(failed["attempts"][1]["reason"], "decrypt_failed");
  EXPECT_NE(failed["failure_reason"].get<std::string>().find("decrypt_failed: bad tag"),
            std::string::npos)
      << failed["failure_reason"];
}

// The three original reasons keep their wording, and carry their machine name.
TEST_F(HttpTlsTest, OriginalRefusalReasonsStillWork) {
  auto host_a = Client("host-a");
  auto host_b = Client("host-b");
  Trust("host-a", true);
  Trust("host-b", true);
  ASSERT_EQ(host_a->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")
                ->status, 200);
  ASSERT_EQ(host_b->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json")
                ->status, 200);
  auto [auth, image_id] = CustomerWithImage(std::string(kSealedMagic) + "x");
  json job = Launch(auth, image_id);
  const std::string first = job["host_id"];
  auto& first_client = first == "host-a" ? host_a : host_b;
  // The older {kind, detail} spelling.
  auto res = first_client->Post("/v1/hosts/jobs/" + job["job_id"].get<std::string>() + "/refusal",
                                R"({"kind":"unencrypted_image","detail":"disk1 in clear"})",
                                "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  json moved = json::parse(res->body);
  EXPECT_EQ(moved["attempts"][0]["reason"], "unencrypted_image");
  EXPECT_EQ(moved["attempts"][0]["refusal"], "unencrypted image: disk1 in clear");
}

// Bodies are limited from their headers before a byte of them is read: a
// JSON route takes at most 1 MiB and no chunked body; an upload's PUT may be
// larger than that.
TEST_F(HttpTlsTest, OversizedOrChunkedBodyIsRefusedUnread) {
  auto big = Client("")->Post("/v1/login", std::string(2 << 20, 'x'), "application/json");
  ASSERT_TRUE(big) << httplib::to_string(big.error());
  EXPECT_EQ(big->status, 413) << big->body;
  EXPECT_NE(big->body.find("too large"), std::string::npos) << big->body;
  auto chunked = Client("")->Post(
      "/v1/login",
      [](size_t, httplib::DataSink& sink) {
        sink.write("{}", 2);
        sink.done();
        return true;
      },
      "application/json");
  ASSERT_TRUE(chunked) << httplib::to_string(chunked.error());
  EXPECT_EQ(chunked->status, 411) << chunked->body;
  EXPECT_NE(chunked->body.find("length_required"), std::string::npos) << chunked->body;
  auto [auth, image_id] = CustomerWithImage(std::string(kSealedMagic) + std::string(3 << 20, 'd'));
  EXPECT_FALSE(image_id.empty());
}

// Hosts reconnect together (a portal restart, a rack booting): a burst of
// connections must queue, not be dropped.
TEST_F(HttpTlsTest, BurstOfConnectingHostsIsQueuedNotDropped) {
  EXPECT_EQ(::vmseal::testing::ListenDropsInConnectBurst(server_->port(), 200), 0);
}

TEST_F(HttpTlsTest, HostWithCertificateFromAnotherCaIsRejected) {
  auto rogue = Client("rogue");
  auto res = rogue->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json");
  EXPECT_TRUE(!res || res->status == 401);
}

TEST_F(HttpTlsTest, ClientCertificateOfAnotherRoleCannotUseHostRoutes) {
  auto res = Client("not-a-host")->Post("/v1/hosts/register", R"({"capacity":{"vcpus":1}})",
                                        "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 403) << res->body;
  EXPECT_NE(res->body.find("not a host identity"), std::string::npos) << res->body;
}

TEST_F(HttpTlsTest, CustomerWithoutCertificateCannotUseHostRoutes) {
  auto res = customer_->Post("/v1/hosts/register", R"({"capacity_slots":1})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
}

}  // namespace
}  // namespace vmseal::csp
