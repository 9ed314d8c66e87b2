// Attacker tests for the audit log and EK pinning (issue 14) through the real
// `vmseal` binary: a KMS (`kms serve`, SQLite) and a portal (`csp serve`,
// TLS, packages verified) on loopback, customers driven by `vmseal
// customer`, the operator by `vmseal kms ...`, a host's mTLS identity
// calling the KMS, and someone with write access to the KMS store editing
// it with sqlite3. The EK tests enroll one host id with two swtpm TPMs.
#include <httplib.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "attest/evidence.h"
#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/internal/process_harness.h"
#include "host/https_kms_client.h"
#include "kms/policy.h"
#include "kms/store.h"
#include "net/https_client.h"
#include "ovf/package.h"
#include "testing/test_util.h"
#include "tlog/checkpoint.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using json = nlohmann::json;
using vmseal::testing::ReadFileOrDie;
using vmseal::testing::RunCommand;
using vmseal::testing::TempDir;
using vmseal::testing::VmsealBinary;
using vmseal::testing::WriteFileOrDie;

const std::string kGoodPcr0(64, 'a');

class AuditAttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kms_dir_ = dir_.File("kms");
    std::string out;
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "init", "--dir", kms_dir_}, &out, 60), 0) << out;
    for (const char* name : {"portal", "host-x"}) {
      const std::string role = std::string(name) == "portal" ? "portal" : "host";
      ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", kms_dir_, "--role", role,
                            "--name", name, "--out", kms_dir_ + "/" + name},
                           &out, 60),
                0)
          << out;
    }
    ConfigureKms();
    StartKms(0);
    ASSERT_NE(kms_, nullptr);
    MakePortalTlsIdentity();
    std::vector<std::string> argv = {
        VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("portal"), "--port", "0",
        "--port-file", dir_.File("portal.port"), "--tls-cert", dir_.File("portal-server.pem"),
        "--tls-key", dir_.File("portal-server-key.pem"), "--client-ca", kms_dir_ + "/ca.pem",
        "--kms-url", KmsUrl(), "--kms-ca", kms_dir_ + "/ca.pem", "--kms-cert",
        kms_dir_ + "/portal.pem", "--kms-key", kms_dir_ + "/portal-key.pem"};
    auto portal = csp::testing::ServerProcess::Start(argv, dir_.File("portal.log"),
                                                     dir_.File("portal.port"));
    ASSERT_OK(portal);
    portal_ = std::move(portal).value();
    std::string disk(64 << 10, '\0');
    for (size_t i = 0; i < disk.size(); ++i) disk[i] = static_cast<char>(i * 131 % 251);
    WriteFileOrDie(dir_.File("disk.raw"), disk);
  }

  // Hook: changes to kms.json before the KMS first starts.
  virtual void ConfigureKms() {}

  // `kms serve` on `port` (0: any; a restart reuses the first port).
  void StartKms(int port) {
    auto kms = csp::testing::ServerProcess::Start(
        {VmsealBinary(), "kms", "serve", "--config", kms_dir_ + "/kms.json", "--port",
         std::to_string(port), "--port-file", kms_dir_ + "/port"},
        kms_dir_ + "/serve.log", kms_dir_ + "/port");
    ASSERT_OK(kms);
    kms_ = std::move(kms).value();
    kms_port_ = kms_->port();
  }
  std::string KmsUrl() const { return "https://127.0.0.1:" + std::to_string(kms_port_); }
  std::string PortalUrl() const { return "https://127.0.0.1:" + std::to_string(portal_->port()); }

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
  }

  // An mTLS client of the KMS with identity `name` (host-x, operator).
  std::unique_ptr<net::HttpsClient> Kms(const std::string& name) {
    net::HttpsClient::Options o;
    o.host = "127.0.0.1";
    o.port = kms_port_;
    o.ca_pem = ReadFileOrDie(kms_dir_ + "/ca.pem");
    o.cert_pem = ReadFileOrDie(kms_dir_ + "/" + name + ".pem");
    auto key = crypto::ReadSecretFile(kms_dir_ + "/" + name + "-key.pem");
    EXPECT_OK(key);
    o.key_pem = std::move(key).value();
    auto c = net::HttpsClient::Create(std::move(o));
    EXPECT_OK(c);
    return std::move(c).value();
  }

  // `vmseal customer ... ARGS` as `who` through `portal` (default: the
  // portal itself); the exit code, output in *out.
  int Customer(const std::string& who, const std::vector<std::string>& args, std::string* out,
               const std::string& portal = "") {
    ::mkdir(dir_.File(who).c_str(), 0700);
    std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal",
                                     portal.empty() ? PortalUrl() : portal};
    if (portal.empty()) {
      argv.push_back("--ca-cert");
      argv.push_back(dir_.File("portal-ca.pem"));
    }
    argv.insert(argv.end(), {"--session", dir_.File(who + "/session.json"), "--json"});
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out, 120);
  }
  json CustomerJson(const std::string& who, const std::vector<std::string>& args) {
    std::string out;
    EXPECT_EQ(Customer(who, args, &out), 0) << out;
    const size_t brace = out.find('{');
    return json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  }
  void SignUp(const std::string& who) {
    json reg = CustomerJson(who, {"register", "--password-out", dir_.File(who + "/pw")});
    CustomerJson(who, {"login", "--login-id", reg.value("login_id", ""), "--password-file",
                       dir_.File(who + "/pw")});
    CustomerJson(who, {"fetch-cert", "--out", dir_.File(who + "/customer.pem"), "--kms-ca",
                       kms_dir_ + "/ca.pem"});
  }
  // `who` seals the disk, uploads it; sets package_ and the image ids.
  void SealAndUpload(const std::string& who) {
    std::string out;
    ASSERT_EQ(RunCommand({VmsealBinary(), "seal", dir_.File("disk.raw"), "--cert",
                          dir_.File(who + "/customer.pem"), "-o", dir_.File(who + ".ova")},
                         &out, 120),
              0)
        << out;
    package_ = dir_.File(who + ".ova");
    json image = CustomerJson(who, {"upload", package_, "--name", "img"});
    image_id_ = image.value("image_id", "");
    tagged_image_id_ = image.value("tagged_image_id", "");
    ASSERT_FALSE(image_id_.empty()) << image.dump();
    ASSERT_FALSE(tagged_image_id_.empty()) << image.dump();
  }

  // host-x is an enrolled host with a trusted verdict at the KMS (what
  // attestation records; written to the store as in csp_integration_test),
  // registered at the portal, and the operator's default policy trusts it.
  void TrustedHostAtKmsAndPortal() {
    auto op = Kms("operator");
    ASSERT_OK(op->Put("/v1/flavors/good-boot", {{"pcrs", {{"sha256", {{"0", kGoodPcr0}}}}}}));
    ASSERT_OK(op->Put("/v1/policies/_default",
                      {{"flavors", {{"anyOf", {"good-boot"}}}}, {"max_evidence_age_seconds", 300}}));
    {
      auto store = kms::Store::Open(kms_dir_ + "/kms.db");
      ASSERT_OK(store);
      const int64_t now = std::time(nullptr);
      ASSERT_OK((*store)->PutHost({"host-x", "", "", false, {}, now},
                                  {"host.enroll", "host/host-x", json::object()}));
      ASSERT_OK((*store)->SetHostEnrolled("host-x", {"host.activate", "host/host-x", json::object()}));
      kms::Verdict v;
      v.verdict_id = "v-host-x";
      v.host_id = "host-x";
      v.trusted = true;
      v.reason = "ok";
      v.time_unix = now;
      v.details["pcrs"] = kms::PcrValuesToJson({{0, kGoodPcr0}});
      ASSERT_OK((*store)->PutVerdict(v, {"attestation", "host/host-x", json::object()}));
    }
    httplib::SSLClient host("127.0.0.1", portal_->port(), kms_dir_ + "/host-x.pem",
                            kms_dir_ + "/host-x-key.pem");
    host.set_ca_cert_path(dir_.File("portal-ca.pem").c_str());
    host.enable_server_certificate_verification(true);
    json body = {{"host_id", "host-x"}, {"capacity", {{"vcpus", 2}, {"memory_mib", 4096}}},
                 {"tags", json::array()}};
    auto res = host.Post("/v1/hosts/register", body.dump(), "application/json");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
  }

  // A release of the job's key asked by host-x by hand; its evidence is a
  // placeholder, so the KMS denies it (and records the denial).
  void HostAsksForTheKey(const std::string& job) {
    ovf::PackageOpenOptions po;
    auto p = ovf::Package::Open(Env::Default(), package_, po);
    ASSERT_OK(p);
    const ovf::Package& pkg = **p;
    attest::Evidence ev;
    ev.nonce = crypto::Bytes(32, 1);
    ev.pcr_selection = {0};
    json body = {{"job_id", job},
                 {"image_id", pkg.tag().image_id},
                 {"tenant", pkg.tag().tenant},
                 {"key_id", pkg.tag().key_id},
                 {"key_version", pkg.tag().key_version},
                 {"wrap_algorithm", pkg.wrapped_key().algorithm},
                 {"oaep_label", crypto::Base64Encode(pkg.wrapped_key().oaep_label)},
                 {"wrapped_key", crypto::Base64Encode(pkg.wrapped_key().ciphertext)},
                 {"evidence", json::parse(attest::EvidenceToJson(ev))},
                 {"descriptor_name", pkg.descriptor_name()},
                 {"descriptor", pkg.descriptor_text()},
                 {"manifest", pkg.manifest_text()},
                 {"package_cert", pkg.certificate_text()}};
    auto r = Kms("host-x")->Post("/v1/hosts/host-x/releases", body);
    ASSERT_FALSE(r.ok());
  }

  // Customer A with a launched image: job_ placed on host-x, its grant
  // registered, and one (denied) release asked for it.
  void LaunchedImageOfA() {
    TrustedHostAtKmsAndPortal();
    SignUp("a");
    SealAndUpload("a");
    json job = CustomerJson("a", {"launch", image_id_});
    job_ = job.value("job_id", "");
    ASSERT_FALSE(job_.empty()) << job.dump();
    HostAsksForTheKey(job_);
  }

  int Audit(const std::string& who, const std::string& image, const std::vector<std::string>& extra,
            std::string* out, const std::string& portal = "") {
    std::vector<std::string> args = {"audit", image, "--kms-ca", kms_dir_ + "/ca.pem"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Customer(who, args, out, portal);
  }
  json AuditJson(const std::string& who, const std::vector<std::string>& extra = {}) {
    std::string out;
    EXPECT_EQ(Audit(who, image_id_, extra, &out), 0) << out;
    const size_t brace = out.find('{');
    return json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  }
  static const json* Find(const json& audit, const std::string& event) {
    for (const json& e : audit["events"]) {
      if (e["event"] == event) return &e;
    }
    return nullptr;
  }

  // `vmseal kms ...` as the operator on the KMS machine.
  int KmsCli(const std::vector<std::string>& args, std::string* out) {
    std::vector<std::string> argv = {VmsealBinary(), "kms"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out, 120);
  }
  // SQL on the KMS store with the sqlite3 shell, as an attacker with write
  // access to the database file would.
  void EditStore(const std::string& sql) {
    std::string out;
    ASSERT_EQ(RunCommand({"sqlite3", kms_dir_ + "/kms.db", sql}, &out, 60), 0) << out;
  }

  TempDir dir_;
  std::string kms_dir_;
  std::unique_ptr<csp::testing::ServerProcess> kms_;
  int kms_port_ = 0;
  std::unique_ptr<csp::testing::ServerProcess> portal_;
  std::string package_;
  std::string image_id_;
  std::string tagged_image_id_;
  std::string job_;
};

TEST_F(AuditAttackTest, CustomerAuditOfALaunchedImageShowsTheGrantAndTheDenialWithVerifiedProofs) {
  LaunchedImageOfA();
  json audit = AuditJson("a");
  ASSERT_TRUE(audit.is_object());
  EXPECT_EQ(audit["image_id"], tagged_image_id_);
  EXPECT_GT(audit["tree_size"].get<int64_t>(), 0);
  for (const json& e : audit["events"]) EXPECT_EQ(e["inclusion_verified"], true) << e.dump();
  ASSERT_NE(Find(audit, "image.register"), nullptr) << audit.dump();
  const json* grant = Find(audit, "grant.create");
  ASSERT_NE(grant, nullptr) << audit.dump();
  EXPECT_EQ((*grant)["job_id"], job_);
  EXPECT_EQ((*grant)["host_id"], "host-x");
  const json* deny = Find(audit, "release.deny");
  ASSERT_NE(deny, nullptr) << audit.dump();
  EXPECT_EQ((*deny)["job_id"], job_);
  EXPECT_EQ((*deny)["host_id"], "host-x");
  EXPECT_FALSE((*deny)["reason"].get<std::string>().empty());
  // The text form names the events and their proofs too.
  std::string out;
  std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalUrl(), "--ca-cert",
                                   dir_.File("portal-ca.pem"), "--session", dir_.File("a/session.json"),
                                   "audit", image_id_, "--kms-ca", kms_dir_ + "/ca.pem"};
  ASSERT_EQ(RunCommand(argv, &out, 120), 0) << out;
  EXPECT_THAT(out, HasSubstr("grant.create  host=host-x  job=" + job_));
  EXPECT_THAT(out, HasSubstr("[inclusion verified]"));
}

TEST_F(AuditAttackTest, AnotherCustomerAskingForAsImageIsRefusedTenantMismatchAndSeesNothing) {
  LaunchedImageOfA();
  SignUp("b");
  std::string out;
  EXPECT_NE(Audit("b", tagged_image_id_, {}, &out), 0);
  EXPECT_THAT(out, HasSubstr("tenant_mismatch"));
  EXPECT_THAT(out, Not(HasSubstr(job_)));
  EXPECT_THAT(out, Not(HasSubstr("host-x")));
  // By A's portal image id it is not B's image either.
  EXPECT_NE(Audit("b", image_id_, {}, &out), 0);
  EXPECT_THAT(out, Not(HasSubstr(job_)));
  // The refusal is in the KMS log.
  ASSERT_EQ(KmsCli({"audit", "export", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(R"(\"reason\":\"tenant_mismatch\")"));
}

// A relay between customer and portal that flips one bit of one proof hash
// in the audit answer (what a portal that edits the KMS's reply would do).
TEST_F(AuditAttackTest, AProofTamperedInTheRelayedReplyFailsVerification) {
  LaunchedImageOfA();
  httplib::Server proxy;
  const int portal_port = portal_->port();
  const std::string ca = dir_.File("portal-ca.pem");
  proxy.Get(".*", [&](const httplib::Request& req, httplib::Response& res) {
    httplib::SSLClient up("127.0.0.1", portal_port);
    up.set_ca_cert_path(ca.c_str());
    up.enable_server_certificate_verification(true);
    httplib::Headers h;
    if (req.has_header("Authorization")) h.emplace("Authorization", req.get_header_value("Authorization"));
    std::string target = req.path;
    if (!req.params.empty()) {
      target += "?";
      for (const auto& [k, v] : req.params) target += k + "=" + v + "&";
      target.pop_back();
    }
    auto r = up.Get(target, h);
    if (!r) {
      res.status = 502;
      return;
    }
    std::string body = r->body;
    if (req.path.find("/audit") != std::string::npos && r->status == 200) {
      json j = json::parse(body);
      auto proof = tlog::ParseInclusionProof(j["proofs"].back().get<std::string>());
      if (proof.ok() && !proof->hashes.empty()) {
        proof->hashes[0][3] ^= 0x10;
        j["proofs"].back() = tlog::FormatInclusionProof(*proof);
        body = j.dump();
      }
    }
    res.status = r->status;
    res.set_content(body, "application/json");
  });
  const int proxy_port = proxy.bind_to_any_port("127.0.0.1");
  std::thread serving([&] { proxy.listen_after_bind(); });
  while (!proxy.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::string out;
  const int rc = Audit("a", image_id_, {}, &out, "http://127.0.0.1:" + std::to_string(proxy_port));
  proxy.stop();
  serving.join();
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("customer audit verification failed"));
  EXPECT_THAT(out, HasSubstr("is not in the signed tree"));
  // Straight from the portal the same answer verifies.
  EXPECT_EQ(Audit("a", image_id_, {}, &out), 0) << out;
}

TEST_F(AuditAttackTest, DeletingTheNewestRecordsIsCaughtAgainstSavedCheckpoints) {
  LaunchedImageOfA();
  json before = AuditJson("a", {"--save-checkpoint", dir_.File("a/audit.cp")});
  const json* deny = Find(before, "release.deny");
  ASSERT_NE(deny, nullptr);
  const std::string from = std::to_string((*deny)["seq"].get<int64_t>());
  std::string out;
  ASSERT_EQ(KmsCli({"audit", "checkpoint", "--config", kms_dir_ + "/kms.json", "--out",
                    dir_.File("operator.cp")},
                   &out),
            0)
      << out;
  // The KMS stopped, the denial and everything after it deleted, the tree
  // and the newest issued checkpoint dropped so that the KMS rebuilds a
  // consistent shorter log when it starts again.
  const int port = kms_port_;
  kms_->Stop();
  EditStore("DELETE FROM audit_log WHERE seq >= " + from + "; DELETE FROM audit_by_image WHERE seq >= " +
            from + "; DELETE FROM audit_tree; UPDATE audit_frontier SET size = 0, hashes = '';"
            " DELETE FROM audit_checkpoint;");
  StartKms(port);
  ASSERT_EQ(kms_port_, port);
  // Without a saved checkpoint the shorter log verifies...
  ASSERT_EQ(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
  json after = AuditJson("a");
  EXPECT_EQ(Find(after, "release.deny"), nullptr);
  // ...against the ones saved before, it does not.
  EXPECT_NE(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json", "--checkpoint",
                    dir_.File("operator.cp")},
                   &out),
            0);
  EXPECT_THAT(out, HasSubstr("truncated"));
  EXPECT_NE(Audit("a", image_id_, {"--checkpoint", dir_.File("a/audit.cp")}, &out), 0);
  EXPECT_THAT(out, HasSubstr("truncated: the saved checkpoint covers"));
}

TEST_F(AuditAttackTest, RewritingARecordIsCaughtByTheOperatorAndTheCustomer) {
  LaunchedImageOfA();
  json before = AuditJson("a", {"--save-checkpoint", dir_.File("a/audit.cp")});
  const json* deny = Find(before, "release.deny");
  ASSERT_NE(deny, nullptr);
  const std::string seq = std::to_string((*deny)["seq"].get<int64_t>());
  std::string out;
  ASSERT_EQ(KmsCli({"audit", "checkpoint", "--config", kms_dir_ + "/kms.json", "--out",
                    dir_.File("operator.cp")},
                   &out),
            0)
      << out;
  // The denial made to look like another host's.
  EditStore("UPDATE audit_log SET record = replace(record, 'host-x', 'host-y') WHERE seq = " + seq + ";");
  EXPECT_NE(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json", "--checkpoint",
                    dir_.File("operator.cp")},
                   &out),
            0);
  EXPECT_THAT(out, HasSubstr("audit record " + seq));
  EXPECT_NE(Audit("a", image_id_, {"--checkpoint", dir_.File("a/audit.cp")}, &out), 0);
  EXPECT_THAT(out, HasSubstr("audit record " + seq + ": the record is not in the signed tree"));
}

TEST_F(AuditAttackTest, ARecordWithheldFromTheListingIsCaughtByTheCustomer) {
  LaunchedImageOfA();
  json before = AuditJson("a", {"--save-checkpoint", dir_.File("a/audit.cp")});
  const json* deny = Find(before, "release.deny");
  ASSERT_NE(deny, nullptr);
  const std::string seq = std::to_string((*deny)["seq"].get<int64_t>());
  // The record stays in the log (every proof still verifies) but the KMS
  // no longer lists it for the image.
  EditStore("DELETE FROM audit_by_image WHERE seq = " + seq + ";");
  std::string out;
  EXPECT_NE(Audit("a", image_id_, {"--checkpoint", dir_.File("a/audit.cp")}, &out), 0);
  EXPECT_THAT(out, HasSubstr("withheld: audit record " + seq));
}

TEST_F(AuditAttackTest, AuditWithoutThePinnedCaOrWithABadSavedCheckpointFailsClearly) {
  SignUp("a");
  SealAndUpload("a");
  std::string out;
  // Another CA than the KMS's: the log key carries no endorsement by it.
  EXPECT_NE(Customer("a", {"audit", image_id_, "--kms-ca", dir_.File("portal-ca.pem")}, &out), 0);
  EXPECT_THAT(out, HasSubstr("is not endorsed by the pinned KMS CA"));
  // No CA at all is a usage error.
  EXPECT_NE(Customer("a", {"audit", image_id_}, &out), 0);
  EXPECT_THAT(out, HasSubstr("--kms-ca"));
  // A saved checkpoint that is not one, and nothing is written.
  WriteFileOrDie(dir_.File("a/garbage.cp"), "not a checkpoint\n");
  EXPECT_NE(Audit("a", image_id_, {"--checkpoint", dir_.File("a/garbage.cp"), "--save-checkpoint",
                                   dir_.File("a/new.cp")},
                  &out),
            0);
  EXPECT_THAT(out, HasSubstr("the saved checkpoint"));
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("a/new.cp")));
  // The image's registration is listed and proven.
  json audit = AuditJson("a", {"--save-checkpoint", dir_.File("a/new.cp")});
  EXPECT_NE(Find(audit, "image.register"), nullptr) << audit.dump();
  EXPECT_TRUE(Env::Default()->FileExists(dir_.File("a/new.cp")));
}

// Unauthenticated callers cannot grow the log without bound: 60 refused
// requests without a client certificate add at most two records.
TEST_F(AuditAttackTest, AnonymousFailingRequestsAddAtMostTwoAuditRecordsPerWindow) {
  auto count = [&] {
    std::string out;
    EXPECT_EQ(KmsCli({"audit", "export", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
    return std::count(out.begin(), out.end(), '\n');
  };
  const auto before = count();
  int refused = 0;
  for (int i = 0; i < 60; ++i) {
    httplib::SSLClient anonymous("127.0.0.1", kms_port_);
    anonymous.set_ca_cert_path((kms_dir_ + "/ca.pem").c_str());
    anonymous.enable_server_certificate_verification(true);
    auto r = anonymous.Post("/v1/customers/acme/keys", "{}", "application/json");
    ASSERT_TRUE(r);
    EXPECT_TRUE(r->status == 401 || r->status == 429) << r->status << " " << r->body;
    ++refused;
  }
  EXPECT_EQ(refused, 60);
  const auto added = count() - before;
  EXPECT_GE(added, 1);  // the refusals reached the KMS and the first is recorded
  EXPECT_LE(added, 2);
  std::string out;
  ASSERT_EQ(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
}

// EK pinning: host-x enrolled with TPM A; the same host id with TPM B is
// refused until the operator approves B's EK with the real CLI.
class EkSwapTest : public AuditAttackTest {
 protected:
  void ConfigureKms() override {
    auto a = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
    ASSERT_OK(a);
    tpm_a_ = std::move(a).value();
    auto b = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
    ASSERT_OK(b);
    tpm_b_ = std::move(b).value();
    WriteFileOrDie(kms_dir_ + "/ek-ca.pem", tpm_a_->ca_bundle_pem() + tpm_b_->ca_bundle_pem());
    json config = json::parse(ReadFileOrDie(kms_dir_ + "/kms.json"));
    config["ek_ca_bundle"] = kms_dir_ + "/ek-ca.pem";
    WriteFileOrDie(kms_dir_ + "/kms.json", config.dump(2));
  }

  // Enrolls host-x with `tpm` through the host's HTTPS KMS client.
  Status Enroll(tpm::testing::Swtpm& tpm, const std::string& state) {
    ASSIGN_OR_RETURN(auto engine, tpm::SecurityEngine::Create({.tcti = tpm.tcti(), .state_dir = dir_.File(state)}));
    ASSIGN_OR_RETURN(auto client, host::NewHttpsKmsClient({.url = KmsUrl(),
                                                          .ca_cert_file = kms_dir_ + "/ca.pem",
                                                          .cert_file = kms_dir_ + "/host-x.pem",
                                                          .key_file = kms_dir_ + "/host-x-key.pem",
                                                          .host_id = "host-x"}));
    ASSIGN_OR_RETURN(auto request, engine->EnrollmentRequest());
    ASSIGN_OR_RETURN(auto challenge, client->BeginEnrollment(request));
    ASSIGN_OR_RETURN(auto secret, engine->ActivateCredential(challenge));
    return client->CompleteEnrollment(secret);
  }

  std::string AuditExport() {
    std::string out;
    EXPECT_EQ(KmsCli({"audit", "export", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
    return out;
  }

  std::unique_ptr<tpm::testing::Swtpm> tpm_a_;
  std::unique_ptr<tpm::testing::Swtpm> tpm_b_;
};

TEST_F(EkSwapTest, AnotherTpmUnderAnEnrolledHostIdIsRefusedUntilTheOperatorApprovesIt) {
  ASSERT_OK(Enroll(*tpm_a_, "tpm-a"));
  Status swapped = Enroll(*tpm_b_, "tpm-b");
  ASSERT_FALSE(swapped.ok());
  EXPECT_THAT(swapped.message(), HasSubstr("ek_mismatch"));
  // The denial names B's EK; the operator approves exactly that one.
  const std::string marker = "this EK (";
  const size_t at = swapped.message().find(marker);
  ASSERT_NE(at, std::string::npos) << swapped.message();
  const std::string ek_b = swapped.message().substr(at + marker.size(), 64);
  std::string log = AuditExport();
  EXPECT_THAT(log, HasSubstr(R"(\"reason\":\"ek_mismatch\")"));
  EXPECT_THAT(log, HasSubstr("enrollment with EK " + ek_b));
  // Refused again: a denial changes nothing.
  EXPECT_THAT(Enroll(*tpm_b_, "tpm-b").message(), HasSubstr("ek_mismatch"));

  std::string out;
  ASSERT_EQ(KmsCli({"host", "approve-ek", "--url", KmsUrl(), "--ca", kms_dir_ + "/ca.pem", "--cert",
                    kms_dir_ + "/operator.pem", "--key", kms_dir_ + "/operator-key.pem", "--host",
                    "host-x", "--ek-sha256", ek_b},
                   &out),
            0)
      << out;
  ASSERT_OK(Enroll(*tpm_b_, "tpm-b"));
  // The pin moved: TPM A is now the stranger.
  Status old = Enroll(*tpm_a_, "tpm-a");
  EXPECT_THAT(old.message(), HasSubstr("ek_mismatch"));
  log = AuditExport();
  EXPECT_THAT(log, HasSubstr("host.ek.approve"));
  EXPECT_THAT(log, HasSubstr(ek_b));
  ASSERT_EQ(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
}

TEST_F(EkSwapTest, AHostCertificateCannotApproveItsOwnEk) {
  ASSERT_OK(Enroll(*tpm_a_, "tpm-a"));
  Status swapped = Enroll(*tpm_b_, "tpm-b");
  ASSERT_THAT(swapped.message(), HasSubstr("ek_mismatch"));
  const std::string marker = "this EK (";
  const std::string ek_b = swapped.message().substr(swapped.message().find(marker) + marker.size(), 64);
  std::string out;
  EXPECT_NE(KmsCli({"host", "approve-ek", "--url", KmsUrl(), "--ca", kms_dir_ + "/ca.pem", "--cert",
                    kms_dir_ + "/host-x.pem", "--key", kms_dir_ + "/host-x-key.pem", "--host", "host-x",
                    "--ek-sha256", ek_b},
                   &out),
            0);
  EXPECT_THAT(out, HasSubstr("operator"));
  EXPECT_THAT(Enroll(*tpm_b_, "tpm-b").message(), HasSubstr("ek_mismatch"));
}

// Releases by host-x with its real TPM (swtpm) against the real KMS: the
// host enrolled and attested, the operator trusting its PCRs, customer A's
// signed image registered by the portal's upload, and the portal's
// one-launch grants made with the portal's identity.
class HostReleaseTest : public AuditAttackTest {
 protected:
  void ConfigureKms() override {
    auto tpm = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
    ASSERT_OK(tpm);
    tpm_ = std::move(tpm).value();
    WriteFileOrDie(kms_dir_ + "/ek-ca.pem", tpm_->ca_bundle_pem());
    json config = json::parse(ReadFileOrDie(kms_dir_ + "/kms.json"));
    config["ek_ca_bundle"] = kms_dir_ + "/ek-ca.pem";
    WriteFileOrDie(kms_dir_ + "/kms.json", config.dump(2));
  }

  StatusOr<std::unique_ptr<host::KmsApi>> HostClient() {
    return host::NewHttpsKmsClient({.url = KmsUrl(),
                                    .ca_cert_file = kms_dir_ + "/ca.pem",
                                    .cert_file = kms_dir_ + "/host-x.pem",
                                    .key_file = kms_dir_ + "/host-x-key.pem",
                                    .host_id = "host-x"});
  }

  // Enrolls and attests host-x, trusts its PCRs, uploads A's signed image.
  void EnrolledHostAndSignedImage() {
    auto engine = tpm::SecurityEngine::Create({.tcti = tpm_->tcti(), .state_dir = dir_.File("tpm-state")});
    ASSERT_OK(engine);
    engine_ = std::move(engine).value();
    auto client = HostClient();
    ASSERT_OK(client);
    client_ = std::move(client).value();
    auto request = engine_->EnrollmentRequest();
    ASSERT_OK(request);
    auto challenge = client_->BeginEnrollment(*request);
    ASSERT_OK(challenge);
    auto secret = engine_->ActivateCredential(*challenge);
    ASSERT_OK(secret);
    ASSERT_OK(client_->CompleteEnrollment(*secret));
    auto ev = FreshEvidence();
    ASSERT_OK(ev);
    ASSERT_OK(client_->Attest(*ev));
    auto op = Kms("operator");
    ASSERT_OK(op->Post("/v1/flavors/host-x-boot/from-host/host-x", json::object()));
    ASSERT_OK(op->Put("/v1/policies/_default",
                      {{"flavors", {{"anyOf", {"host-x-boot"}}}}, {"max_evidence_age_seconds", 600}}));
    SignUp("a");
    SealAndUpload("a");
    ovf::PackageOpenOptions po;
    auto p = ovf::Package::Open(Env::Default(), package_, po);
    ASSERT_OK(p);
    const ovf::Package& pkg = **p;
    signed_.image_id = pkg.tag().image_id;
    signed_.tenant = pkg.tag().tenant;
    signed_.key_id = pkg.tag().key_id;
    signed_.key_version = pkg.tag().key_version;
    signed_.wrap_algorithm = pkg.wrapped_key().algorithm;
    signed_.oaep_label = pkg.wrapped_key().oaep_label;
    signed_.wrapped_key = pkg.wrapped_key().ciphertext;
    signed_.descriptor_name = pkg.descriptor_name();
    signed_.descriptor = pkg.descriptor_text();
    signed_.manifest = pkg.manifest_text();
    signed_.package_cert = pkg.certificate_text();
  }

  // Evidence from host-x's TPM over a nonce the KMS just issued.
  StatusOr<attest::Evidence> FreshEvidence() {
    ASSIGN_OR_RETURN(crypto::Bytes nonce, client_->Nonce());
    return engine_->Attest(nonce, {0, 7});
  }

  // A release of A's image for job `job` (granted by the portal when
  // `grant`), with fresh evidence.
  host::ReleaseRequest GrantedRequest(const std::string& job, bool grant = true) {
    host::ReleaseRequest r = signed_;
    r.job_id = job;
    if (grant) {
      EXPECT_OK(Kms("portal")->Post("/v1/grants", {{"job_id", r.job_id}, {"image_id", r.image_id},
                                                   {"tenant", r.tenant}, {"host_id", "host-x"},
                                                   {"ttl_seconds", 600}}));
    }
    auto ev = FreshEvidence();
    EXPECT_OK(ev);
    if (ev.ok()) r.evidence = *std::move(ev);
    return r;
  }

  // The KMS's audit log as `kms audit export` writes it (one JSON line each).
  std::string ExportedLog() {
    std::string text;
    EXPECT_EQ(KmsCli({"audit", "export", "--config", kms_dir_ + "/kms.json"}, &text), 0) << text;
    return text;
  }

  std::unique_ptr<tpm::testing::Swtpm> tpm_;
  std::unique_ptr<tpm::SecurityEngine> engine_;
  std::unique_ptr<host::KmsApi> client_;
  host::ReleaseRequest signed_;  // A's signed image, no job or evidence
};

// Group commit of the release records (issue 14): concurrent releases
// share one transaction and one fsync, and each is answered only once its
// own record is durable. A KMS killed with SIGKILL in the middle of a
// release load must not have answered any key whose release.grant record
// is missing after the crash, and the log must still verify.
TEST_F(HostReleaseTest, KillingTheKmsUnderReleaseLoadLosesNoRecordOfAnAnsweredRelease) {
  EnrolledHostAndSignedImage();
  // One job per release, each with the portal's one-launch grant on host-x
  // and evidence over its own nonce (recorded before the load).
  constexpr int kReleases = 36;
  std::vector<host::ReleaseRequest> requests;
  for (int i = 0; i < kReleases; ++i) requests.push_back(GrantedRequest("crash-job-" + std::to_string(i)));
  ASSERT_FALSE(HasFailure());

  // Four host connections release concurrently; the KMS is killed once a
  // third of the keys were answered, with releases still in flight.
  std::mutex mu;
  std::vector<std::string> answered;
  std::atomic<int> next{0};
  std::atomic<int> refused_before_kill{0};
  std::atomic<bool> killed{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      auto c = HostClient();
      if (!c.ok()) return;
      for (int i = next++; i < kReleases; i = next++) {
        auto key = (*c)->Release(requests[static_cast<size_t>(i)]);
        if (key.ok()) {
          EXPECT_FALSE(key->rewrapped_key.empty());
          std::lock_guard<std::mutex> lock(mu);
          answered.push_back(requests[static_cast<size_t>(i)].job_id);
        } else if (!killed) {
          ++refused_before_kill;
          ADD_FAILURE() << "release refused before the kill: " << key.status().ToString();
        }
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool loaded = false;
  while (!loaded && std::chrono::steady_clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(mu);
      loaded = static_cast<int>(answered.size()) >= kReleases / 3;
    }
    if (!loaded) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  killed = true;
  kms_->Kill();
  for (auto& t : threads) t.join();
  ASSERT_TRUE(loaded) << "the releases were not answered within 60 s";
  EXPECT_EQ(refused_before_kill.load(), 0);
  std::vector<std::string> acked;
  {
    std::lock_guard<std::mutex> lock(mu);
    acked = answered;
  }
  ASSERT_GE(acked.size(), static_cast<size_t>(kReleases / 3));
  // Some releases were cut off by the kill (else it tested nothing).
  EXPECT_LT(acked.size(), static_cast<size_t>(kReleases)) << "the kill came after every release";

  // After the crash: the log verifies, and holds a release.grant record for
  // every job whose key was answered.
  std::string out;
  ASSERT_EQ(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
  size_t grants = 0;
  std::set<std::string> logged;
  std::istringstream lines(ExportedLog());
  for (std::string line; std::getline(lines, line);) {
    json entry = json::parse(line, nullptr, false);
    if (!entry.is_object() || !entry.contains("record")) continue;
    json rec = json::parse(entry["record"].get<std::string>(), nullptr, false);
    if (!rec.is_object() || rec.value("event", "") != "release.grant") continue;
    ++grants;
    logged.insert(rec["details"].value("job_id", ""));
  }
  EXPECT_GE(grants, acked.size());
  for (const std::string& job : acked) EXPECT_TRUE(logged.count(job)) << job << " was answered, not logged";
  // Restarted on the same store, the KMS refuses an answered job again:
  // its grant is recorded used.
  StartKms(kms_port_);
  ASSERT_NE(kms_, nullptr);
  auto again = HostClient();
  ASSERT_OK(again);
  client_ = std::move(again).value();
  host::ReleaseRequest retry = GrantedRequest(acked.front(), /*grant=*/false);
  auto second = client_->Release(retry);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr("no_grant"));
}

// A host with a real TPM asking for a key it is granted, again and again
// with evidence the KMS refuses (a forged quote signature, a nonce it never
// issued), is refused each time for that reason and then, after ten, even
// with good evidence (429 rate_limited); nothing is released. Portal
// refusals (no grant) do not count against it.
TEST_F(HostReleaseTest, HostSendingForgedEvidenceIsRefusedThenRateLimited) {
  EnrolledHostAndSignedImage();
  for (int i = 0; i < 12; ++i) {
    SCOPED_TRACE(i);
    auto r = client_->Release(GrantedRequest("never-granted-" + std::to_string(i), /*grant=*/false));
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("no_grant"));
  }
  // Every grant first: a forged quote records an untrusted verdict, after
  // which the portal could place nothing on host-x.
  std::vector<host::ReleaseRequest> granted;
  for (int i = 0; i < 12; ++i) granted.push_back(GrantedRequest("forged-" + std::to_string(i)));
  ASSERT_FALSE(HasFailure());
  for (int i = 0; i < 11; ++i) {  // ten free refusals, the eleventh blocks the host
    SCOPED_TRACE(i);
    host::ReleaseRequest r = granted[static_cast<size_t>(i)];
    if (i % 2 == 0) {
      r.evidence.quote.signature.back() ^= 0x01;
    } else {
      r.evidence.nonce[20] ^= 0x01;  // the MAC no longer matches: a nonce the KMS never issued
    }
    auto out = client_->Release(r);
    ASSERT_FALSE(out.ok());
    EXPECT_THAT(out.status().message(), HasSubstr(i % 2 == 0 ? "bad_signature" : "nonce_unknown"));
  }
  auto blocked = client_->Release(granted.back());  // untouched evidence, granted job
  ASSERT_FALSE(blocked.ok());
  EXPECT_EQ(blocked.status().code(), StatusCode::kResourceExhausted) << blocked.status().ToString();
  EXPECT_THAT(blocked.status().message(), HasSubstr("rate_limited: host host-x"));
  const std::string log = ExportedLog();
  EXPECT_THAT(log, Not(HasSubstr("release.grant")));
  EXPECT_THAT(log, HasSubstr(R"(\"reason\":\"rate_limited\")"));
  std::string out;
  ASSERT_EQ(KmsCli({"audit", "verify", "--config", kms_dir_ + "/kms.json"}, &out), 0) << out;
}

}  // namespace
}  // namespace vmseal
