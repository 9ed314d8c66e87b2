// VerifyCustomerKeyReply and FetchVerifiedCustomerCert: the check `customer
// migrate` and `customer rewrap` run on the certificate a portal relays,
// attacked the ways a portal could lie.
#include "cli/customer_cert.h"

#include <httplib.h>

#include <chrono>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kms/internal/mini_ca.h"
#include "testing/test_util.h"

namespace vmseal::cli {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

class CustomerCertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = kms::internal::CreateRootCa("pinned KMS CA", 30);
    ASSERT_OK(ca);
    ca_ = *std::move(ca);
    auto rogue = kms::internal::CreateRootCa("pinned KMS CA", 30);  // same name, other key
    ASSERT_OK(rogue);
    rogue_ = *std::move(rogue);
    auto roots = crypto::Certificate::ParsePemBundle(ca_.cert_pem);
    ASSERT_OK(roots);
    roots_ = *std::move(roots);
  }

  // A certificate of `key` as KMS `ca` issues it, version `version`.
  std::string Certify(const kms::internal::CertAndKey& ca, const crypto::PrivateKey& key,
                      const std::string& cn, uint64_t version) {
    auto pem = kms::internal::CertifyPublicKey(
        ca, key.Public().ToPem(), cn, "customer", 30,
        version > 1 ? "key-version:" + std::to_string(version) : std::string());
    EXPECT_OK(pem);
    return pem.ok() ? *pem : std::string();
  }

  // The reply an honest portal sends for `key_` at `version`.
  json Reply(uint64_t version = 1) {
    return {{"customer_id", "cust-1"},
            {"key_id", "key-1"},
            {"cert_pem", Certify(ca_, key_, "key-1", version)},
            {"public_key_pem", key_.Public().ToPem()},
            {"version", version}};
  }

  static void ExpectUntrusted(const StatusOr<VerifiedCustomerCert>& r, const std::string& why) {
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().message();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr("destination_untrusted"));
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(why));
  }

  kms::internal::CertAndKey ca_, rogue_;
  std::vector<crypto::Certificate> roots_;
  crypto::PrivateKey key_ = *crypto::PrivateKey::Generate(crypto::KeyType::kX25519);
  crypto::PrivateKey other_key_ = *crypto::PrivateKey::Generate(crypto::KeyType::kX25519);
};

TEST_F(CustomerCertTest, HonestReplyIsAcceptedWithItsKeyAndVersion) {
  json r = Reply(3);
  r["versions"] = json::array({{{"version", 1}}, {{"version", 2}}, {{"version", 3}}});
  auto v = VerifyCustomerKeyReply(r, roots_);
  ASSERT_OK(v);
  EXPECT_EQ(v->customer_id, "cust-1");
  EXPECT_EQ(v->key_id, "key-1");
  EXPECT_EQ(v->version, 3u);
  EXPECT_EQ(v->public_key.KeyId(), key_.KeyId());
  EXPECT_EQ(v->public_key.type(), crypto::KeyType::kX25519);
  EXPECT_EQ(v->cert.ToPem(), r["cert_pem"].get<std::string>());
}

// The portal names its own key, certified by a CA of its own (same subject
// as the pinned one): refused, and the error says which pinned CA.
TEST_F(CustomerCertTest, KeyThePinnedCaDidNotCertifyIsRefused) {
  json r = Reply();
  r["cert_pem"] = Certify(rogue_, other_key_, "key-1", 1);
  r["public_key_pem"] = other_key_.Public().ToPem();
  auto v = VerifyCustomerKeyReply(
      r, roots_, {.certificate = "the destination certificate", .ca = "the KMS CA you pinned (--to-kms-ca)"});
  ExpectUntrusted(v, "the destination certificate does not chain to the KMS CA you pinned (--to-kms-ca)");
}

// fetch-cert's names: its own reason, and the CA the portal served when
// none was pinned.
TEST_F(CustomerCertTest, RefusalCarriesTheCallersReasonAndCa) {
  json r = Reply();
  r["cert_pem"] = Certify(rogue_, key_, "key-1", 1);
  CustomerCertNames names;
  names.certificate = "the customer certificate";
  names.ca = "the KMS CA the portal serves";
  names.reason = "certificate_untrusted";
  auto v = VerifyCustomerKeyReply(r, roots_, names);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), StatusCode::kDataLoss);
  EXPECT_THAT(std::string(v.status().message()),
              ::testing::StartsWith("certificate_untrusted: the customer certificate does not chain to the KMS "
                                    "CA the portal serves: "));
}

// A genuine certificate, but the portal claims another key beside it.
TEST_F(CustomerCertTest, CertificateOfAnotherKeyThanThePortalNamesIsRefused) {
  json r = Reply();
  r["public_key_pem"] = other_key_.Public().ToPem();
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_, {.portal = "portal B"}),
                  "the certificate certifies another key than portal B names");
  r["public_key_pem"] = "not a key";
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "certifies another key");
}

TEST_F(CustomerCertTest, CertificateNamingAnotherKeyIdIsRefused) {
  json r = Reply();
  r["key_id"] = "key-2";
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "names key key-1, not key-2");
  r.erase("key_id");
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "names key key-1, not ");
}

TEST_F(CustomerCertTest, ReplyWithoutCustomerIdIsRefused) {
  json r = Reply();
  r["customer_id"] = "";
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "the portal named no customer id");
}

// An older version's certificate served as the newest, or the newest held
// back while the listing shows it.
TEST_F(CustomerCertTest, VersionOtherThanListedOrOlderThanAListedOneIsRefused) {
  json r = Reply(1);
  r["version"] = 2;
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "the certificate is for key version 1, the portal says 2");
  r = Reply(2);
  r.erase("version");  // absent means 1
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "key version 2, the portal says 1");
  r = Reply(2);
  r["versions"] = json::array({{{"version", 1}}, {{"version", 2}}, {{"version", 3}}});
  ExpectUntrusted(VerifyCustomerKeyReply(r, roots_), "served key version 2 but version 3 exists");
}

TEST_F(CustomerCertTest, MalformedReplyIsRefusedBeforeAnyCheckPasses) {
  EXPECT_FALSE(VerifyCustomerKeyReply(json::array(), roots_).ok());
  // Fields of another type are refused, not thrown.
  for (const char* field : {"cert_pem", "public_key_pem", "key_id", "customer_id", "version"}) {
    SCOPED_TRACE(field);
    json wrong = Reply();
    wrong[field] = json::array({1});
    EXPECT_FALSE(VerifyCustomerKeyReply(wrong, roots_).ok());
  }
  json odd_versions = Reply();
  odd_versions["versions"] = json::array({"3", 7, json::object({{"version", "9"}})});
  EXPECT_OK(VerifyCustomerKeyReply(odd_versions, roots_));  // nothing in it names a newer version
  json r = Reply();
  r["cert_pem"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
  EXPECT_FALSE(VerifyCustomerKeyReply(r, roots_).ok());
  r.erase("cert_pem");
  EXPECT_FALSE(VerifyCustomerKeyReply(r, roots_).ok());
}

TEST_F(CustomerCertTest, LoadPinnedCaReadsABundleAndRefusesAnEmptyFile) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.File("ca.pem"), ca_.cert_pem + rogue_.cert_pem);
  auto two = LoadPinnedCa(dir.File("ca.pem"));
  ASSERT_OK(two);
  EXPECT_EQ(two->size(), 2u);
  testing::WriteFileOrDie(dir.File("empty.pem"), "");
  EXPECT_FALSE(LoadPinnedCa(dir.File("empty.pem")).ok());
  EXPECT_FALSE(LoadPinnedCa(dir.File("missing.pem")).ok());
}

// Through HTTP: the reply of a real (loopback) server is fetched and checked;
// a portal error reply is named after the caller's step.
TEST_F(CustomerCertTest, FetchChecksWhatThePortalServesAndNamesItsErrors) {
  httplib::Server server;
  json served = Reply(2);
  server.Get("/v1/customer/key", [&](const httplib::Request& req, httplib::Response& res) {
    if (req.get_header_value("Authorization") != "Bearer s") {
      res.status = 401;
      res.set_content(R"({"error":{"code":"unauthenticated","message":"not logged in"}})", "application/json");
      return;
    }
    res.set_content(served.dump(), "application/json");
  });
  const int port = server.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread t([&] { server.listen_after_bind(); });
  // The socket listens from bind_to_any_port on; the accept loop is bounded.
  for (int i = 0; i < 200 && !server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  httplib::Client client("127.0.0.1", port);
  auto v = FetchVerifiedCustomerCert(client, {{"Authorization", "Bearer s"}}, roots_, "rewrap");
  ASSERT_OK(v);
  EXPECT_EQ(v->version, 2u);
  served["cert_pem"] = Certify(rogue_, key_, "key-1", 2);
  ExpectUntrusted(FetchVerifiedCustomerCert(client, {{"Authorization", "Bearer s"}}, roots_, "rewrap"),
                  "does not chain");
  auto denied = FetchVerifiedCustomerCert(client, {{"Authorization", "Bearer x"}}, roots_, "rewrap");
  EXPECT_FALSE(denied.ok());
  EXPECT_THAT(std::string(denied.status().message()), HasSubstr("rewrap: "));
  server.stop();
  t.join();
}

}  // namespace
}  // namespace vmseal::cli
