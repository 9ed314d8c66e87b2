// Test-only: a real KMS and a real portal process (`vmseal kms serve`,
// `vmseal csp serve --accept-unverified-packages`) on loopback, and plain
// HTTP calls against the portal as a customer would make them.
#ifndef VMSEAL_TESTS_INTERNAL_PORTAL_FIXTURE_H_
#define VMSEAL_TESTS_INTERNAL_PORTAL_FIXTURE_H_

#include <httplib.h>
#include <signal.h>

#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "csp/internal/process_harness.h"
#include "testing/test_util.h"

namespace vmseal::testing {

class PortalFixture : public ::testing::Test {
 protected:
  // Starts the KMS and the portal with `extra` portal flags.
  void StartServers(const std::vector<std::string>& extra = {}) {
    // A server may close while a refused body is still being written.
    ::signal(SIGPIPE, SIG_IGN);
    auto kms = csp::testing::StartKms(dir_.File("kms"));
    ASSERT_OK(kms);
    kms_ = std::move(kms).value();
    WriteFileOrDie(dir_.File("op-token"), "operator-secret\n");
    std::vector<std::string> argv = {
        VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("data"), "--port", "0",
        "--port-file", dir_.File("port"), "--kms-url", kms_.url(), "--kms-ca", kms_.ca(),
        "--kms-cert", kms_.portal_cert(), "--kms-key", kms_.portal_key(),
        "--operator-token-file", dir_.File("op-token"), "--accept-unverified-packages"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    if (tls_) {
      // The portal's KMS identity doubles as its server certificate; hosts'
      // client certificates chain to the KMS's CA.
      argv.insert(argv.end(), {"--tls-cert", kms_.portal_cert(), "--tls-key", kms_.portal_key(), "--client-ca",
                               kms_.ca()});
    }
    auto portal = csp::testing::ServerProcess::Start(argv, dir_.File("portal.log"),
                                                     dir_.File("port"));
    ASSERT_OK(portal);
    portal_ = std::move(portal).value();
  }

  httplib::Client Portal() {
    httplib::Client c("127.0.0.1", portal_->port());
    c.set_read_timeout(60, 0);
    c.set_write_timeout(60, 0);
    return c;
  }
  static nlohmann::json Json(const httplib::Result& r) {
    return nlohmann::json::parse(r ? r->body : "", nullptr, false);
  }
  // Registers a customer: {customer_id, login_id, password, ...}.
  nlohmann::json Register() {
    httplib::Client c = Portal();
    auto reg = c.Post("/v1/register", "{}", "application/json");
    EXPECT_TRUE(reg && reg->status == 201) << (reg ? reg->body : "no answer");
    return Json(reg);
  }
  httplib::Result Login(const std::string& login_id, const std::string& password) {
    httplib::Client c = Portal();
    nlohmann::json body = {{"login_id", login_id}, {"password", password}};
    return c.Post("/v1/login", body.dump(), "application/json");
  }
  // A registered, logged-in customer's bearer header.
  httplib::Headers Customer() {
    nlohmann::json r = Register();
    auto in = Login(r.value("login_id", ""), r.value("password", ""));
    EXPECT_TRUE(in && in->status == 200) << (in ? in->body : "no answer");
    return {{"Authorization", "Bearer " + Json(in).value("token", "")}};
  }
  // Uploads a small package (accepted unverified) and returns its image id.
  std::string UploadImage(const httplib::Headers& auth) {
    httplib::Client c = Portal();
    auto begin = c.Post("/v1/uploads", auth, "", "application/json");
    EXPECT_TRUE(begin && begin->status / 100 == 2) << (begin ? begin->body : "no answer");
    const std::string id = Json(begin).value("upload_id", "");
    auto put = c.Put("/v1/uploads/" + id + "?offset=0", auth, std::string(4096, 'p'),
                     "application/octet-stream");
    EXPECT_TRUE(put && put->status / 100 == 2) << (put ? put->body : "no answer");
    auto commit = c.Post("/v1/uploads/" + id + "/commit", auth, "{\"name\":\"web\"}",
                         "application/json");
    EXPECT_TRUE(commit && commit->status / 100 == 2)
        << (commit ? std::to_string(commit->status) + " " + commit->body : "no answer");
    return Json(commit).value("image_id", "");
  }

  TempDir dir_;
  // Serve TLS (set before StartServers).
  bool tls_ = false;
  csp::testing::KmsInstance kms_;
  std::unique_ptr<csp::testing::ServerProcess> portal_;
};

}  // namespace vmseal::testing

#endif  // VMSEAL_TESTS_INTERNAL_PORTAL_FIXTURE_H_
