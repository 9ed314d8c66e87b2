// The portal's HTTP routes end to end over loopback (in-process server).
#include <httplib.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <future>
#include <thread>

#include "crypto/primitives.h"
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

class HttpApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    PortalServer::Options o;
    o.data_dir = dir_.path();
    o.argon2_m_cost_kib = 64;
    o.operator_token = SecretBytes(crypto::AsBytes(std::string_view("op-secret")));
    auto s = PortalServer::Create(std::move(o), &verifier_, &kms_);
    ASSERT_OK(s);
    server_ = std::move(s).value();
    ASSERT_OK(server_->Start());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
  }
  void TearDown() override { server_->Stop(); }

  // Registers and logs in; returns the bearer header.
  httplib::Headers NewCustomer() {
    auto reg = client_->Post("/v1/register");
    EXPECT_TRUE(reg);
    EXPECT_EQ(reg->status, 201);
    json r = json::parse(reg->body);
    json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
    auto res = client_->Post("/v1/login", login.dump(), "application/json");
    EXPECT_TRUE(res);
    EXPECT_EQ(res->status, 200) << res->body;
    return {{"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
  }
  // Uploads `data` in one PUT and commits it; returns the commit answer.
  httplib::Result Upload(const httplib::Headers& auth, const std::string& data) {
    auto begin = client_->Post("/v1/uploads", auth, "", "application/json");
    EXPECT_EQ(begin->status, 201);
    std::string id = json::parse(begin->body)["upload_id"];
    auto put = client_->Put("/v1/uploads/" + id + "?offset=0", auth, data,
                            "application/octet-stream");
    EXPECT_EQ(put->status, 200) << put->body;
    json commit = {{"name", "web"}, {"sha256", crypto::HexEncode(crypto::Sha256(data))}};
    return client_->Post("/v1/uploads/" + id + "/commit", auth, commit.dump(),
                         "application/json");
  }

  TempDir dir_;
  FakeVerifier verifier_;
  FakeKmsClient kms_;
  std::unique_ptr<PortalServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpApiTest, CustomerUploadsListsAndLaunches) {
  auto auth = NewCustomer();
  auto img = Upload(auth, std::string(kSealedMagic) + "disk bytes");
  ASSERT_EQ(img->status, 201) << img->body;
  std::string image_id = json::parse(img->body)["image_id"];
  auto list = client_->Get("/v1/images", auth);
  ASSERT_EQ(list->status, 200);
  EXPECT_EQ(json::parse(list->body)["images"].size(), 1u);
  json launch = {{"image_id", image_id}};
  auto job = client_->Post("/v1/launch", auth, launch.dump(), "application/json");
  ASSERT_EQ(job->status, 201) << job->body;
  json j = json::parse(job->body);
  EXPECT_EQ(j["state"], "queued");  // no hosts registered
  auto status = client_->Get("/v1/jobs/" + j["job_id"].get<std::string>(), auth);
  ASSERT_EQ(status->status, 200);
  EXPECT_EQ(json::parse(status->body)["image_id"], image_id);
}

TEST_F(HttpApiTest, UnencryptedPackageIsRefusedWith412) {
  auto auth = NewCustomer();
  auto img = Upload(auth, "plain disk");
  ASSERT_EQ(img->status, 412);
  EXPECT_EQ(json::parse(img->body)["error"]["code"], "FAILED_PRECONDITION");
}

TEST_F(HttpApiTest, UploadResumesAtTheReportedOffset) {
  auto auth = NewCustomer();
  std::string data = std::string(kSealedMagic) + std::string(100000, 'z');
  auto begin = client_->Post("/v1/uploads", auth, "", "application/json");
  std::string id = json::parse(begin->body)["upload_id"];
  auto first = client_->Put("/v1/uploads/" + id + "?offset=0", auth, data.substr(0, 40000),
                            "application/octet-stream");
  ASSERT_EQ(first->status, 200);
  auto state = client_->Get("/v1/uploads/" + id, auth);
  ASSERT_EQ(json::parse(state->body)["offset_bytes"], 40000);
  auto stale = client_->Put("/v1/uploads/" + id + "?offset=0", auth, "x",
                            "application/octet-stream");
  EXPECT_EQ(stale->status, 412);
  auto rest = client_->Put("/v1/uploads/" + id + "?offset=40000", auth, data.substr(40000),
                           "application/octet-stream");
  ASSERT_EQ(rest->status, 200);
  json commit = {{"name", "resumed"}, {"sha256", crypto::HexEncode(crypto::Sha256(data))}};
  auto done = client_->Post("/v1/uploads/" + id + "/commit", auth, commit.dump(),
                            "application/json");
  EXPECT_EQ(done->status, 201) << done->body;
}

TEST_F(HttpApiTest, RangedDownloadReturnsTheSlice) {
  auto auth = NewCustomer();
  std::string data = std::string(kSealedMagic) + "0123456789";
  auto img = Upload(auth, data);
  std::string image_id = json::parse(img->body)["image_id"];
  auth.emplace("Range", "bytes=14-17");
  auto part = client_->Get("/v1/images/" + image_id + "/package", auth);
  ASSERT_TRUE(part);
  EXPECT_EQ(part->status, 206);
  EXPECT_EQ(part->body, "0123");
}

TEST_F(HttpApiTest, AnotherCustomersTokenNeverReachesTheImage) {
  auto alice = NewCustomer();
  auto bob = NewCustomer();
  auto img = Upload(alice, std::string(kSealedMagic) + "a");
  std::string image_id = json::parse(img->body)["image_id"];
  EXPECT_EQ(client_->Get("/v1/images/" + image_id, bob)->status, 404);
  EXPECT_EQ(client_->Get("/v1/images/" + image_id + "/package", bob)->status, 404);
  EXPECT_EQ(client_->Delete("/v1/images/" + image_id, bob)->status, 404);
  json launch = {{"image_id", image_id}};
  EXPECT_EQ(client_->Post("/v1/launch", bob, launch.dump(), "application/json")->status, 404);
  EXPECT_EQ(json::parse(client_->Get("/v1/images", bob)->body)["images"].size(), 0u);
  EXPECT_EQ(client_->Get("/v1/images/" + image_id, alice)->status, 200);
}

TEST_F(HttpApiTest, MissingOrForgedTokenIs401) {
  EXPECT_EQ(client_->Get("/v1/images")->status, 401);
  httplib::Headers forged = {{"Authorization", "Bearer vst_00"}};
  EXPECT_EQ(client_->Get("/v1/images", forged)->status, 401);
}

TEST_F(HttpApiTest, WrongPasswordIs401) {
  auto reg = client_->Post("/v1/register");
  json login = {{"login_id", json::parse(reg->body)["login_id"]}, {"password", "guess"}};
  auto res = client_->Post("/v1/login", login.dump(), "application/json");
  EXPECT_EQ(res->status, 401);
  EXPECT_NE(res->body.find("invalid login id or password"), std::string::npos);
}

TEST_F(HttpApiTest, HostRoutesNeedATlsClientCertificate) {
  auto res = client_->Post("/v1/hosts/register", R"({"capacity_slots":2})", "application/json");
  EXPECT_EQ(res->status, 401);
}

TEST_F(HttpApiTest, OperatorRoutesNeedTheOperatorToken) {
  auto auth = NewCustomer();
  EXPECT_EQ(client_->Get("/v1/operator/jobs", auth)->status, 403);
  httplib::Headers op = {{"Authorization", "Bearer op-secret"}};
  EXPECT_EQ(client_->Get("/v1/operator/jobs", op)->status, 200);
}

TEST_F(HttpApiTest, RegisterReturnsTheKmsKeyAndTheCustomerCanFetchIt) {
  auto reg = client_->Post("/v1/register");
  ASSERT_EQ(reg->status, 201) << reg->body;
  json r = json::parse(reg->body);
  EXPECT_NE(r["key"]["cert_pem"].get<std::string>().find("BEGIN CERTIFICATE"), std::string::npos);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto res = client_->Post("/v1/login", login.dump(), "application/json");
  httplib::Headers auth = {
      {"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
  auto key = client_->Get("/v1/customer/key", auth);
  ASSERT_EQ(key->status, 200) << key->body;
  json k = json::parse(key->body);
  EXPECT_EQ(k["customer_id"], r["customer_id"]);
  EXPECT_EQ(k["cert_pem"], r["key"]["cert_pem"]);
  EXPECT_EQ(k["kms_ca_cert_pem"], kms_.CaCertificatePem());
  EXPECT_EQ(client_->Get("/v1/customer/key")->status, 401);
}

TEST_F(HttpApiTest, RegisterPassesTheKeyAlgorithmToTheKms) {
  auto reg = client_->Post("/v1/register", R"({"key_algorithm":"x25519"})", "application/json");
  ASSERT_EQ(reg->status, 201) << reg->body;
  EXPECT_EQ(kms_.last_key_algorithm(), "X25519");
  json r = json::parse(reg->body);
  EXPECT_EQ(r["key"]["algorithm"], "X25519");
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto res = client_->Post("/v1/login", login.dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  httplib::Headers auth = {
      {"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
  auto key = client_->Get("/v1/customer/key", auth);
  ASSERT_EQ(key->status, 200) << key->body;
  EXPECT_EQ(json::parse(key->body)["algorithm"], "X25519");
  // Without a body the default stands.
  ASSERT_EQ(client_->Post("/v1/register")->status, 201);
  EXPECT_EQ(kms_.last_key_algorithm(), "RSA-3072");
}

TEST_F(HttpApiTest, RegisterWithAnUnknownKeyAlgorithmIs400) {
  auto reg = client_->Post("/v1/register", R"({"key_algorithm":"rsa1024"})", "application/json");
  ASSERT_EQ(reg->status, 400) << reg->body;
  EXPECT_NE(json::parse(reg->body)["error"]["message"].get<std::string>().find("key_algorithm"),
            std::string::npos);
  reg = client_->Post("/v1/register", R"({"key_algorithm":7})", "application/json");
  ASSERT_EQ(reg->status, 400) << reg->body;
  EXPECT_EQ(kms_.last_key_algorithm(), "");
}

TEST_F(HttpApiTest, RegisterWithKmsDownIsUnavailableAndCreatesNoLogin) {
  kms_.SetUnavailable(true);
  auto reg = client_->Post("/v1/register");
  ASSERT_EQ(reg->status, 503) << reg->body;
  json r = json::parse(reg->body);
  EXPECT_FALSE(r.contains("login_id"));
  EXPECT_NE(r["error"]["message"].get<std::string>().find("KMS"), std::string::npos);
  EXPECT_EQ(r["error"]["reason"], "kms_unavailable");
}

TEST_F(HttpApiTest, AgentIsTheRunningBinaryWithItsDigest) {
  auto digest = client_->Get("/v1/agent/sha256");
  ASSERT_EQ(digest->status, 200);
  const std::string want = json::parse(digest->body)["sha256"];
  auto agent = client_->Get("/v1/agent");
  ASSERT_EQ(agent->status, 200);
  EXPECT_EQ(agent->get_header_value("X-Content-SHA256"), want);
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(agent->body)), want);
  EXPECT_EQ(agent->body, vmseal::testing::ReadFileOrDie("/proc/self/exe"));
}

TEST_F(HttpApiTest, CommitWithAKmsPolicyIsRefusedAndKeepsNoImage) {
  // The portal writes no release policy: a policy given at upload is refused.
  auto auth = NewCustomer();
  auto begin = client_->Post("/v1/uploads", auth, "", "application/json");
  std::string id = json::parse(begin->body)["upload_id"];
  ASSERT_EQ(client_->Put("/v1/uploads/" + id + "?offset=0", auth, std::string(kSealedMagic) + "d",
                         "application/octet-stream")->status, 200);
  json commit = {{"name", "web"}, {"kms_policy", {{"flavors", {{"anyOf", {"good"}}}}}}};
  auto img = client_->Post("/v1/uploads/" + id + "/commit", auth, commit.dump(),
                           "application/json");
  EXPECT_EQ(img->status, 400) << img->body;
  EXPECT_NE(img->body.find("seal --policy"), std::string::npos) << img->body;
  EXPECT_TRUE(json::parse(client_->Get("/v1/images", auth)->body)["images"].empty());
}

TEST_F(HttpApiTest, SignedPolicyIsRelayedUnderTheTagsImageIdOnlyForTheOwner) {
  auto alice = NewCustomer();
  auto bob = NewCustomer();
  auto img = Upload(alice, std::string(kSealedMagic) + "x");
  ASSERT_EQ(img->status, 201);
  json i = json::parse(img->body);
  std::string image_id = i["image_id"];
  const std::string doc = R"({"version":1})";
  json body = {{"document", crypto::Base64Encode(crypto::AsBytes(doc))},
               {"signature", crypto::Base64Encode(crypto::Bytes{1, 2})}};
  auto res = client_->Put("/v1/images/" + image_id + "/kms-policy", bob, body.dump(),
                          "application/json");
  EXPECT_EQ(res->status, 404) << res->body;
  // Not base64: refused by the portal before the KMS.
  res = client_->Put("/v1/images/" + image_id + "/kms-policy", alice,
                     R"({"document":"%%%","signature":"AQI="})", "application/json");
  EXPECT_EQ(res->status, 400) << res->body;
  res = client_->Put("/v1/images/" + image_id + "/kms-policy", alice, body.dump(),
                     "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["version"], 1);
  auto key = client_->Get("/v1/customer/key", alice);
  std::string customer = json::parse(key->body)["customer_id"];
  // Under the image's identity at the KMS: its tag's imageId when it has one.
  const std::string tagged = i["tagged_image_id"];
  EXPECT_EQ(kms_.policy(customer, tagged.empty() ? image_id : tagged), doc);
  auto got = client_->Get("/v1/images/" + image_id + "/kms-policy", alice);
  ASSERT_EQ(got->status, 200) << got->body;
  EXPECT_EQ(json::parse(got->body)["version"], 1);
}

TEST(PortalServerTest, PlainHttpOffLoopbackIsRefused) {
  TempDir dir;
  FakeVerifier verifier;
  FakeKmsClient kms;
  PortalServer::Options o;
  o.data_dir = dir.path();
  o.bind_address = "0.0.0.0";
  EXPECT_STATUS(PortalServer::Create(std::move(o), &verifier, &kms),
                StatusCode::kInvalidArgument, "loopback");
}

// Start returns only once the server accepts connections, so a Stop right
// after it is never lost (it used to hang forever); Stop is also safe before
// Start and twice.
TEST(PortalServerTest, StopRightAfterStartAlwaysReturns) {
  TempDir dir;
  FakeVerifier verifier;
  FakeKmsClient kms;
  auto create = [&](int n) {
    PortalServer::Options o;
    o.data_dir = dir.path() + "/p" + std::to_string(n);
    o.argon2_m_cost_kib = 64;
    o.agent_binary_path = "";
    return PortalServer::Create(std::move(o), &verifier, &kms);
  };
  std::promise<int> done;
  std::future<int> finished = done.get_future();
  std::thread runner([&] {
    int stopped = 0;
    auto never_started = create(-1);
    EXPECT_OK(never_started);
    if (never_started.ok()) (*never_started)->Stop();  // before Start: returns at once
    for (int n = 0; n < 20; ++n) {
      auto s = create(n);
      EXPECT_OK(s);
      if (!s.ok()) break;
      Status started = (*s)->Start();
      EXPECT_OK(started);
      if (!started.ok()) break;
      (*s)->Stop();
      (*s)->Stop();
      ++stopped;
    }
    done.set_value(stopped);
  });
  if (finished.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
    // A lost Stop never returns; the thread cannot be joined.
    ADD_FAILURE() << "start + stop did not finish 20 rounds within 60 s";
    std::_Exit(1);
  }
  runner.join();
  EXPECT_EQ(finished.get(), 20);
}

TEST(PortalServerTest, StartedServerAnswersAtOnceAndCannotRestart) {
  TempDir dir;
  FakeVerifier verifier;
  FakeKmsClient kms;
  PortalServer::Options o;
  o.data_dir = dir.path();
  o.argon2_m_cost_kib = 64;
  o.agent_binary_path = "";
  auto s = PortalServer::Create(std::move(o), &verifier, &kms);
  ASSERT_OK(s);
  ASSERT_OK((*s)->Start());
  EXPECT_STATUS((*s)->Start(), StatusCode::kFailedPrecondition, "already started");
  httplib::Client client("127.0.0.1", (*s)->port());
  auto res = client.Post("/v1/register");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 201);
  (*s)->Stop();
  EXPECT_STATUS((*s)->Start(), StatusCode::kFailedPrecondition, "stopped");
}


// --- the web console (docs/console.md "Web security") ---

// Logs a new customer in through the console; returns {Cookie header, CSRF token}.
std::pair<std::string, std::string> ConsoleLogin(httplib::Client& client) {
  auto reg = client.Post("/v1/register");
  EXPECT_EQ(reg->status, 201);
  json r = json::parse(reg->body);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto res = client.Post("/v1/console/login", login.dump(), "application/json");
  EXPECT_EQ(res->status, 200) << res->body;
  const std::string set_cookie = res->get_header_value("Set-Cookie");
  const std::string cookie = set_cookie.substr(0, set_cookie.find(';'));
  return {cookie, json::parse(res->body)["csrf_token"].get<std::string>()};
}

TEST_F(HttpApiTest, ConsolePageAndApiAnswersCarryTheSecurityHeaders) {
  auto page = client_->Get("/console/");
  ASSERT_TRUE(page);
  ASSERT_EQ(page->status, 200);
  EXPECT_TRUE(page->get_header_value("Content-Type").starts_with("text/html"));
  const std::string csp = page->get_header_value("Content-Security-Policy");
  EXPECT_NE(csp.find("script-src 'self'"), std::string::npos) << csp;
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos) << csp;
  EXPECT_EQ(page->get_header_value("X-Content-Type-Options"), "nosniff");
  EXPECT_EQ(page->get_header_value("Referrer-Policy"), "no-referrer");
  // An API error answer carries them too (a JSON body never renders as a page).
  auto api = client_->Get("/v1/images");
  ASSERT_EQ(api->status, 401);
  EXPECT_FALSE(api->get_header_value("Content-Security-Policy").empty());
  auto missing = client_->Get("/console/no-such-page.js");
  EXPECT_EQ(missing->status, 404);
  auto traversal = client_->Get("/console/../v1/agent");
  EXPECT_NE(traversal->status, 200);
}

TEST_F(HttpApiTest, ConsoleLoginSetsAnHttpOnlySecureSameSiteStrictCookieAndNoTokenInTheBody) {
  auto reg = client_->Post("/v1/register");
  json r = json::parse(reg->body);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto res = client_->Post("/v1/console/login", login.dump(), "application/json");
  ASSERT_EQ(res->status, 200) << res->body;
  const std::string c = res->get_header_value("Set-Cookie");
  EXPECT_TRUE(c.starts_with("vmseal_session=vst_")) << c;
  EXPECT_NE(c.find("HttpOnly"), std::string::npos) << c;
  EXPECT_NE(c.find("Secure"), std::string::npos) << c;
  EXPECT_NE(c.find("SameSite=Strict"), std::string::npos) << c;
  json body = json::parse(res->body);
  EXPECT_FALSE(body.contains("token"));
  EXPECT_EQ(body["csrf_token"].get<std::string>().size(), 64u);
  EXPECT_EQ(res->body.find("vst_"), std::string::npos) << "the session token reached page script";
}

TEST_F(HttpApiTest, CrossSiteFormCannotLogInThroughTheConsole) {
  auto reg = client_->Post("/v1/register");
  json r = json::parse(reg->body);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  // What an HTML form on another site can send: text/plain.
  auto res = client_->Post("/v1/console/login", login.dump(), "text/plain");
  ASSERT_EQ(res->status, 403) << res->body;
  EXPECT_TRUE(res->get_header_value("Set-Cookie").empty());
}

TEST_F(HttpApiTest, CookieSessionWithoutTheCsrfTokenCannotLaunchOrDeleteAndNothingChanges) {
  auto auth = NewCustomer();
  auto img = Upload(auth, std::string(kSealedMagic) + "disk bytes");
  ASSERT_EQ(img->status, 201) << img->body;
  const std::string image_id = json::parse(img->body)["image_id"];
  auto [cookie, csrf] = ConsoleLogin(*client_);
  (void)csrf;
  // The customer's cookie, sent by the browser on a forged cross-site request.
  // (Another customer's cookie: this one's images are not its images.)
  json launch = {{"image_id", image_id}};
  auto forged = client_->Post("/v1/launch", {{"Cookie", cookie}}, launch.dump(), "application/json");
  ASSERT_EQ(forged->status, 403) << forged->body;
  EXPECT_NE(forged->body.find("csrf"), std::string::npos);
  auto upload = client_->Post("/v1/uploads", {{"Cookie", cookie}}, "", "application/json");
  EXPECT_EQ(upload->status, 403);
  auto jobs = client_->Get("/v1/jobs", {{"Cookie", cookie}});
  ASSERT_EQ(jobs->status, 200) << jobs->body;
  EXPECT_TRUE(json::parse(jobs->body)["jobs"].empty());
  // A wrong token is refused the same way.
  auto wrong = client_->Post("/v1/uploads", {{"Cookie", cookie}, {"X-CSRF-Token", std::string(64, '0')}},
                             "", "application/json");
  EXPECT_EQ(wrong->status, 403);
}

TEST_F(HttpApiTest, CookieSessionWithTheCsrfTokenUploadsLaunchesAndLogsOut) {
  auto [cookie, csrf] = ConsoleLogin(*client_);
  httplib::Headers h = {{"Cookie", cookie}, {"X-CSRF-Token", csrf}};
  auto session = client_->Get("/v1/console/session", {{"Cookie", cookie}});
  ASSERT_EQ(session->status, 200);
  EXPECT_EQ(json::parse(session->body)["csrf_token"], csrf);
  auto img = Upload(h, std::string(kSealedMagic) + "disk bytes");
  ASSERT_EQ(img->status, 201) << img->body;
  json launch = {{"image_id", json::parse(img->body)["image_id"]}};
  auto job = client_->Post("/v1/launch", h, launch.dump(), "application/json");
  ASSERT_EQ(job->status, 201) << job->body;
  auto out = client_->Post("/v1/console/logout", h, "", "application/json");
  ASSERT_EQ(out->status, 200) << out->body;
  EXPECT_NE(out->get_header_value("Set-Cookie").find("Max-Age=0"), std::string::npos);
  // The session is gone on the portal, not only in the browser.
  auto after = client_->Get("/v1/jobs", {{"Cookie", cookie}});
  EXPECT_EQ(after->status, 401);
}

TEST_F(HttpApiTest, OperatorConsoleLoginNeedsTheOperatorCredential) {
  json bad = {{"token", "not-it"}};
  auto refused = client_->Post("/v1/console/operator/login", bad.dump(), "application/json");
  EXPECT_EQ(refused->status, 403);
  EXPECT_TRUE(refused->get_header_value("Set-Cookie").empty());
  json good = {{"token", "op-secret"}};
  auto ok = client_->Post("/v1/console/operator/login", good.dump(), "application/json");
  ASSERT_EQ(ok->status, 200) << ok->body;
  const std::string set_cookie = ok->get_header_value("Set-Cookie");
  EXPECT_NE(set_cookie.find("HttpOnly"), std::string::npos);
  const std::string cookie = set_cookie.substr(0, set_cookie.find(';'));
  auto hosts = client_->Get("/v1/operator/hosts", {{"Cookie", cookie}});
  EXPECT_EQ(hosts->status, 200) << hosts->body;
  // A customer's session cookie is not an operator's.
  auto [customer_cookie, csrf] = ConsoleLogin(*client_);
  (void)csrf;
  std::string as_operator = "vmseal_operator=" + customer_cookie.substr(customer_cookie.find('=') + 1);
  auto denied = client_->Get("/v1/operator/hosts", {{"Cookie", as_operator}});
  EXPECT_EQ(denied->status, 403);
}

// Reads a server-sent event stream until `until` is in the text or the
// answer ends; returns {status, Content-Type, text}.
struct EventRead {
  int status = 0;
  std::string content_type;
  std::string text;
};
EventRead ReadEvents(int port, const httplib::Headers& h, const std::string& path, const std::string& until) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(10, 0);
  EventRead out;
  auto res = c.Get(path, h,
                   [&](const httplib::Response& r) {
                     out.status = r.status;
                     out.content_type = r.get_header_value("Content-Type");
                     return true;
                   },
                   [&](const char* data, size_t n) {
                     out.text.append(data, n);
                     return out.text.find(until) == std::string::npos;  // false: stop reading
                   });
  if (res && out.status == 0) out.status = res->status;
  if (res && out.text.empty()) out.text = res->body;
  return out;
}

TEST_F(HttpApiTest, JobEventsStreamTheJobToItsOwnerByCookie) {
  auto [cookie, csrf] = ConsoleLogin(*client_);
  httplib::Headers h = {{"Cookie", cookie}, {"X-CSRF-Token", csrf}};
  auto img = Upload(h, std::string(kSealedMagic) + "disk bytes");
  ASSERT_EQ(img->status, 201) << img->body;
  json launch = {{"image_id", json::parse(img->body)["image_id"]}};
  auto job = client_->Post("/v1/launch", h, launch.dump(), "application/json");
  ASSERT_EQ(job->status, 201) << job->body;
  const std::string id = json::parse(job->body)["job_id"];
  // No token in the URL: the cookie alone (what an EventSource sends).
  EventRead r = ReadEvents(server_->port(), {{"Cookie", cookie}}, "/v1/jobs/" + id + "/events", "\n\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.content_type.starts_with("text/event-stream")) << r.content_type;
  ASSERT_NE(r.text.find("event: job\ndata: {"), std::string::npos) << r.text;
  EXPECT_NE(r.text.find("\"job_id\":\"" + id + "\""), std::string::npos) << r.text;
  // A change (stop) is pushed as a new job event on the same stream.
  std::thread stopper([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    httplib::Client c("127.0.0.1", server_->port());
    auto stop = c.Post("/v1/vms/" + id + "/stop", h, "", "application/json");
    EXPECT_TRUE(stop);
  });
  EventRead changed = ReadEvents(server_->port(), {{"Cookie", cookie}}, "/v1/jobs/" + id + "/events",
                                 "\"wanted\":\"stopped\"");
  stopper.join();
  EXPECT_NE(changed.text.find("\"wanted\":\"stopped\""), std::string::npos) << changed.text;
  EXPECT_NE(changed.text.find("id: 2\n"), std::string::npos) << changed.text;
}

TEST_F(HttpApiTest, JobEventsAreRefusedToAnotherCustomerAndWithoutASession) {
  auto [cookie, csrf] = ConsoleLogin(*client_);
  httplib::Headers h = {{"Cookie", cookie}, {"X-CSRF-Token", csrf}};
  auto img = Upload(h, std::string(kSealedMagic) + "disk bytes");
  ASSERT_EQ(img->status, 201) << img->body;
  json launch = {{"image_id", json::parse(img->body)["image_id"]}};
  auto job = client_->Post("/v1/launch", h, launch.dump(), "application/json");
  ASSERT_EQ(job->status, 201) << job->body;
  const std::string path = "/v1/jobs/" + json::parse(job->body)["job_id"].get<std::string>() + "/events";
  auto [other_cookie, other_csrf] = ConsoleLogin(*client_);
  (void)other_csrf;
  EventRead other = ReadEvents(server_->port(), {{"Cookie", other_cookie}}, path, "\n\n");
  EXPECT_EQ(other.status, 404) << other.text;
  EXPECT_EQ(other.text.find("event:"), std::string::npos);
  EventRead none = ReadEvents(server_->port(), {}, path, "\n\n");
  EXPECT_EQ(none.status, 401) << none.text;
  // After logout the session's stream cannot be opened again.
  ASSERT_EQ(client_->Post("/v1/console/logout", h, "", "application/json")->status, 200);
  EventRead after = ReadEvents(server_->port(), {{"Cookie", cookie}}, path, "\n\n");
  EXPECT_EQ(after.status, 401) << after.text;
}

TEST_F(HttpApiTest, OperatorReadsFlavorsAndTheNewestAuditProofsAndNothingElseMayRead) {
  json good = {{"token", "op-secret"}};
  auto ok = client_->Post("/v1/console/operator/login", good.dump(), "application/json");
  ASSERT_EQ(ok->status, 200) << ok->body;
  const std::string set_cookie = ok->get_header_value("Set-Cookie");
  const httplib::Headers op = {{"Cookie", set_cookie.substr(0, set_cookie.find(';'))}};
  auto flavors = client_->Get("/v1/operator/flavors", op);
  ASSERT_EQ(flavors->status, 200) << flavors->body;
  EXPECT_EQ(json::parse(flavors->body)["flavors"][0]["name"], "trusted-boot");
  auto audit = client_->Get("/v1/operator/audit?limit=2", op);
  ASSERT_EQ(audit->status, 200) << audit->body;
  json a = json::parse(audit->body);
  EXPECT_EQ(a["log_key"], "fake-log+00000000+AQ==");
  ASSERT_EQ(a["proofs"].size(), 2u);  // the newest two of three, for the checkpoint's size
  EXPECT_NE(a["proofs"][0].get<std::string>().find("index 1\n"), std::string::npos);
  EXPECT_NE(a["proofs"][1].get<std::string>().find("index 2\n\nsize 3"), std::string::npos);
  EXPECT_EQ(client_->Get("/v1/operator/audit?limit=0", op)->status, 400);
  EXPECT_EQ(client_->Get("/v1/operator/audit?limit=51", op)->status, 400);
  EXPECT_EQ(client_->Get("/v1/operator/audit?limit=x", op)->status, 400);
  const size_t asked = kms_.proofs_asked().size();
  // A customer's session, or none, reads neither (and makes the KMS do nothing).
  auto [cookie, csrf] = ConsoleLogin(*client_);
  (void)csrf;
  // (A customer's session is no operator credential: 401.)
  EXPECT_EQ(client_->Get("/v1/operator/flavors", {{"Cookie", cookie}})->status, 401);
  EXPECT_EQ(client_->Get("/v1/operator/audit", {{"Cookie", cookie}})->status, 401);
  EXPECT_NE(client_->Get("/v1/operator/audit")->status, 200);
  EXPECT_EQ(kms_.proofs_asked().size(), asked);
}

TEST_F(HttpApiTest, OperatorPagesThroughTheWholeAuditLogWithTheEndorsementAndTheConsistencyProof) {
  const httplib::Headers op = {{"Authorization", "Bearer op-secret"}};
  // Records 1..2, then 3 (the last page), oldest first.
  auto first = client_->Get("/v1/operator/audit?after=0&limit=2&old=2", op);
  ASSERT_EQ(first->status, 200) << first->body;
  json a = json::parse(first->body);
  ASSERT_EQ(a["proofs"].size(), 2u);
  EXPECT_NE(a["proofs"][0].get<std::string>().find("index 0\n"), std::string::npos);
  EXPECT_EQ(a["next_after"], 2);
  // The consistency proof from the saved tree of 2 records to this one of 3,
  // the KMS CA and the endorsement field the page verifies.
  EXPECT_EQ(a["consistency"], "vmseal.dev/tlog-consistency@v1\nold 2\n\nsize 3\n");
  EXPECT_TRUE(a.contains("log_key_endorsement"));
  EXPECT_NE(a["kms_ca_cert_pem"].get<std::string>().find("BEGIN CERTIFICATE"), std::string::npos);
  auto last = client_->Get("/v1/operator/audit?after=2&limit=2", op);
  ASSERT_EQ(last->status, 200) << last->body;
  json b = json::parse(last->body);
  ASSERT_EQ(b["proofs"].size(), 1u);
  EXPECT_NE(b["proofs"][0].get<std::string>().find("index 2\n"), std::string::npos);
  EXPECT_EQ(b["next_after"], 0);
  EXPECT_EQ(b["consistency"], "");
  // A saved tree larger than the log's (rolled back): no proof asked for,
  // the answer says the size and the page reports it.
  auto rolled = client_->Get("/v1/operator/audit?old=9", op);
  ASSERT_EQ(rolled->status, 200) << rolled->body;
  EXPECT_EQ(json::parse(rolled->body)["consistency"], "");
  EXPECT_EQ(client_->Get("/v1/operator/audit?after=-2", op)->status, 400);
  EXPECT_EQ(client_->Get("/v1/operator/audit?old=x", op)->status, 400);
}

}  // namespace
}  // namespace vmseal::csp
