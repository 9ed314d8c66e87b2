// Test-only: a real KMS (`vmseal kms serve`, with the swtpm manufacturer
// CA) and a real portal (`vmseal csp serve`) on loopback; customers driven
// by `vmseal customer` and `vmseal seal`; host-1, whose TPM is swtpm, asking
// for keys with the host's HTTPS KMS client; and mTLS clients of the KMS
// with the portal's and the operator's identities for the calls a
// misbehaving portal or the operator makes by hand.
#ifndef VMSEAL_TESTS_INTERNAL_SEALED_KMS_FIXTURE_H_
#define VMSEAL_TESTS_INTERNAL_SEALED_KMS_FIXTURE_H_

#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "csp/internal/process_harness.h"
#include "host/https_kms_client.h"
#include "net/https_client.h"
#include "ovf/package.h"
#include "ovf/policy_document.h"
#include "testing/test_util.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::testing {

using json = nlohmann::json;

const std::vector<uint32_t> kPcrs = {0, 7};
// The image's release policy in the tests: the host's measured boot and a
// tag the host lacks until the operator sets it.
const char kGoldPolicy[] = R"({"flavors":{"anyOf":["good-boot"]},"required_tags":["tier=gold"]})";
const char kAnyTagPolicy[] = R"({"flavors":{"anyOf":["good-boot"]}})";

class SealedKmsFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartTpm(dir_.path(), &swtpm_, &engine_));
    ASSERT_NO_FATAL_FAILURE(StartKmsWithEk(dir_.File("kms"), swtpm_->ca_bundle_pem(), &kms_));
    ASSERT_NO_FATAL_FAILURE(StartPortal(kms_, "portal", &portal_));
    std::string disk(64 << 10, '\0');
    for (size_t i = 0; i < disk.size(); ++i) disk[i] = static_cast<char>(i * 131 % 251);
    WriteFileOrDie(dir_.File("disk.raw"), disk);
  }

  // A host's TPM: a swtpm under `parent_dir` and the security engine on it.
  void StartTpm(const std::string& parent_dir, std::unique_ptr<tpm::testing::Swtpm>* swtpm,
                std::unique_ptr<tpm::SecurityEngine>* engine) {
    auto tpm = tpm::testing::Swtpm::Start({.parent_dir = parent_dir});
    ASSERT_OK(tpm);
    *swtpm = *std::move(tpm);
    auto e = tpm::SecurityEngine::Create({.tcti = (*swtpm)->tcti(),
                                          .state_dir = parent_dir + "/tpm-state"});
    ASSERT_OK(e);
    *engine = *std::move(e);
  }

  // `kms init` in `dir`, kms.json trusting the EK CAs `ek_ca_bundle_pem`
  // (then EditKmsConfig), identities "portal" and "host-1", and `kms serve`.
  void StartKmsWithEk(const std::string& dir, const std::string& ek_ca_bundle_pem,
                      csp::testing::KmsInstance* kms) {
    kms->dir = dir;
    std::string out;
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "init", "--dir", kms->dir}, &out, 60), 0) << out;
    WriteFileOrDie(kms->dir + "/ek-ca.pem", ek_ca_bundle_pem);
    json config = json::parse(ReadFileOrDie(kms->dir + "/kms.json"));
    config["ek_ca_bundle"] = kms->dir + "/ek-ca.pem";
    EditKmsConfig(&config);
    WriteFileOrDie(kms->dir + "/kms.json", config.dump(2));
    ASSERT_OK(kms->IssueIdentity("portal", "portal"));
    ASSERT_OK(kms->IssueIdentity("host", "host-1"));
    auto process = csp::testing::ServerProcess::Start(
        {VmsealBinary(), "kms", "serve", "--config", kms->dir + "/kms.json", "--port", "0",
         "--port-file", kms->dir + "/port"},
        kms->dir + "/serve.log", kms->dir + "/port");
    ASSERT_OK(process);
    kms->process = std::move(process).value();
  }

  // `csp serve` with data dir `name`, relaying to `kms`.
  void StartPortal(const csp::testing::KmsInstance& kms, const std::string& name,
                   std::unique_ptr<csp::testing::ServerProcess>* portal) {
    auto p = csp::testing::ServerProcess::Start(
        {VmsealBinary(), "csp", "serve", "--data-dir", dir_.File(name), "--port", "0",
         "--port-file", dir_.File(name + ".port"), "--kms-url", kms.url(), "--kms-ca", kms.ca(),
         "--kms-cert", kms.portal_cert(), "--kms-key", kms.portal_key()},
        dir_.File(name + ".log"), dir_.File(name + ".port"));
    ASSERT_OK(p);
    *portal = std::move(p).value();
  }

  // Changes kms.json before `kms serve` starts (a test's own settings).
  virtual void EditKmsConfig(json* config) { (void)config; }

  std::string PortalUrl() { return "http://127.0.0.1:" + std::to_string(portal_->port()); }

  int Customer(const std::string& who, const std::vector<std::string>& args, std::string* out) {
    ::mkdir(dir_.File(who).c_str(), 0700);
    std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalUrl(),
                                     "--session", dir_.File(who + "/session.json"), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out, 120);
  }
  json CustomerJson(const std::string& who, const std::vector<std::string>& args) {
    std::string out;
    EXPECT_EQ(Customer(who, args, &out), 0) << out;
    const size_t brace = out.find('{');
    return json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  }
  // Registers, logs in and fetches the certificates of `who`; its tenant.
  std::string SignUp(const std::string& who) {
    json reg = CustomerJson(who, {"register", "--password-out", dir_.File(who + "/pw")});
    CustomerJson(who, {"login", "--login-id", reg.value("login_id", ""), "--password-file",
                       dir_.File(who + "/pw")});
    CustomerJson(who, {"fetch-cert", "--out", dir_.File(who + "/customer.pem"), "--kms-ca",
                       kms_.ca()});
    return reg.value("customer_id", "");
  }
  // Seals the disk for `who` (extra flags: --policy ...) and uploads it;
  // the portal's image id.
  std::string SealAndUpload(const std::string& who, const std::string& name,
                            const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {VmsealBinary(), "seal", dir_.File("disk.raw"), "--cert",
                                     dir_.File(who + "/customer.pem"), "-o", dir_.File(name)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::string out;
    EXPECT_EQ(RunCommand(argv, &out, 120), 0) << out;
    json image = CustomerJson(who, {"upload", dir_.File(name), "--name", name});
    return image.value("image_id", "");
  }

  // An mTLS client of the KMS with identity `name` (portal, operator, host-1).
  std::unique_ptr<net::HttpsClient> Kms(const std::string& name,
                                        const csp::testing::KmsInstance* at = nullptr) {
    const csp::testing::KmsInstance& kms = at != nullptr ? *at : kms_;
    net::HttpsClient::Options o;
    o.host = "127.0.0.1";
    o.port = kms.process->port();
    o.ca_pem = ReadFileOrDie(kms.ca());
    o.cert_pem = ReadFileOrDie(kms.dir + "/" + name + ".pem");
    auto key = crypto::ReadSecretFile(kms.dir + "/" + name + "-key.pem");
    EXPECT_OK(key);
    o.key_pem = std::move(key).value();
    auto c = net::HttpsClient::Create(std::move(o));
    EXPECT_OK(c);
    return std::move(c).value();
  }

  // host-1 enrolls its swtpm with the KMS and attests once; the operator
  // makes its PCRs the flavor "good-boot" and tags it `tags`.
  void EnrollHost(const std::vector<std::string>& tags) {
    ASSERT_NO_FATAL_FAILURE(EnrollHostAt(kms_, engine_.get(), &host_));
    Tag(tags);
  }
  // Enrolls host-1 with the TPM of `engine` at `kms`, attests once and
  // makes its PCRs the flavor good-boot there; *api is the host's client.
  void EnrollHostAt(const csp::testing::KmsInstance& kms, tpm::SecurityEngine* engine,
                    std::unique_ptr<host::KmsApi>* api) {
    auto host = host::NewHttpsKmsClient({.url = kms.url(),
                                         .ca_cert_file = kms.ca(),
                                         .cert_file = kms.dir + "/host-1.pem",
                                         .key_file = kms.dir + "/host-1-key.pem",
                                         .host_id = "host-1"});
    ASSERT_OK(host);
    *api = *std::move(host);
    auto req = engine->EnrollmentRequest();
    ASSERT_OK(req);
    auto challenge = (*api)->BeginEnrollment(*req);
    ASSERT_OK(challenge);
    auto secret = engine->ActivateCredential(*challenge);
    ASSERT_OK(secret);
    ASSERT_OK((*api)->CompleteEnrollment(*secret));
    auto nonce = (*api)->Nonce();
    ASSERT_OK(nonce);
    auto ev = engine->Attest(*nonce, kPcrs);
    ASSERT_OK(ev);
    ASSERT_OK((*api)->Attest(*ev));
    ASSERT_OK(Kms("operator", &kms)->Post("/v1/flavors/good-boot/from-host/host-1", json::object()));
  }
  void Tag(const std::vector<std::string>& tags) {
    ASSERT_OK(Kms("operator")->Put("/v1/hosts/host-1/tags", {{"tags", tags}}));
  }

  // A misbehaving portal (a test double with the portal's certificate)
  // places job `job` of the package `name` on host-1 directly at the KMS,
  // whatever the image's policy says: it registers the image again by its
  // key id alone (no signed descriptor) and asks for the grant.
  Status TryPlaceJobDirectly(const std::string& name, const std::string& job) {
    auto pkg = Open(name);
    if (pkg == nullptr) return InternalError("package does not open");
    auto portal = Kms("portal");
    RETURN_IF_ERROR(portal->Put("/v1/images/" + pkg->tag().tenant + "/" + pkg->tag().image_id,
                                {{"key_id", pkg->tag().key_id}}).status());
    return portal->Post("/v1/grants", {{"job_id", job},
                                       {"image_id", pkg->tag().image_id},
                                       {"tenant", pkg->tag().tenant},
                                       {"host_id", "host-1"},
                                       {"ttl_seconds", 300}}).status();
  }
  void PlaceJobDirectly(const std::string& name, const std::string& job) {
    ASSERT_OK(TryPlaceJobDirectly(name, job));
  }
  // The portal's placement check of package `name` on host-1: its reason.
  std::string PlacementReason(const std::string& name) {
    auto pkg = Open(name);
    auto r = Kms("portal")->Post("/v1/placement-check",
                                 {{"customer_id", pkg->tag().tenant},
                                  {"image_id", pkg->tag().image_id},
                                  {"host_ids", {"host-1"}}});
    EXPECT_OK(r);
    return r.ok() ? r->dump() : "";
  }
  std::unique_ptr<ovf::Package> Open(const std::string& name) {
    ovf::PackageOpenOptions po;
    auto p = ovf::Package::Open(Env::Default(), dir_.File(name), po);
    EXPECT_OK(p);
    return p.ok() ? *std::move(p) : nullptr;
  }
  // host-1 asks for the key of package `name` for job `job`, with fresh
  // evidence from its TPM, as the host agent does.
  StatusOr<host::ReleasedKey> HostRelease(const std::string& name, const std::string& job) {
    return ReleaseWith(host_.get(), engine_.get(), dir_.File(name), job, 0);
  }
  // The release a host makes for job `job` (placement `attempt`) of the
  // package at `path`, with fresh evidence of `engine`'s TPM.
  StatusOr<host::ReleasedKey> ReleaseWith(host::KmsApi* api, tpm::SecurityEngine* engine,
                                          const std::string& path, const std::string& job,
                                          uint64_t attempt) {
    ovf::PackageOpenOptions po;
    auto opened = ovf::Package::Open(Env::Default(), path, po);
    RETURN_IF_ERROR(opened.status());
    const auto& pkg = *opened;
    host::ReleaseRequest r;
    r.job_id = job;
    r.attempt = attempt;
    r.image_id = pkg->tag().image_id;
    r.tenant = pkg->tag().tenant;
    r.key_id = pkg->tag().key_id;
    r.key_version = pkg->tag().key_version;
    r.wrap_algorithm = pkg->wrapped_key().algorithm;
    r.oaep_label = pkg->wrapped_key().oaep_label;
    r.wrapped_key = pkg->wrapped_key().ciphertext;
    r.descriptor_name = pkg->descriptor_name();
    r.descriptor = pkg->descriptor_text();
    r.manifest = pkg->manifest_text();
    r.package_cert = pkg->certificate_text();
    ASSIGN_OR_RETURN(auto nonce, api->Nonce());
    ASSIGN_OR_RETURN(r.evidence, engine->Attest(nonce, kPcrs));
    return api->Release(r);
  }

  // The KMS audit log's records of `event`, parsed.
  std::vector<json> Audit(const std::string& event) {
    auto log = Kms("operator")->Get("/v1/audit?after=0&limit=1000");
    EXPECT_OK(log);
    std::vector<json> out;
    if (!log.ok()) return out;
    for (const json& r : (*log)["records"]) {
      json rec = json::parse(r["record"].get<std::string>(), nullptr, false);
      if (rec.value("event", "") == event) out.push_back(rec["details"]);
    }
    return out;
  }
  std::vector<std::string> AuditReasons(const std::string& event) {
    std::vector<std::string> out;
    for (const json& d : Audit(event)) out.push_back(d.value("reason", ""));
    return out;
  }
  // The newest signed policy the KMS holds for (tenant, image), as the
  // operator reads it; version 0 when it holds none.
  int64_t NewestVersion(const std::string& tenant, const std::string& image_id) {
    auto got = Kms("operator")->Get("/v1/signed-policies/" + tenant + "/" + image_id);
    return got.ok() ? (*got)["version"].get<int64_t>() : 0;
  }
  // A policy document for (tenant, image_id) signed with the key in `key_file`.
  json SignedBody(const std::string& key_file, const std::string& tenant,
                  const std::string& image_id, uint64_t version, const std::string& policy) {
    auto key = crypto::LoadPrivateKeyFile(key_file);
    EXPECT_OK(key);
    ovf::PolicyDocument d{tenant, image_id, version, "2026-12-06T02:00:00Z", json::parse(policy)};
    auto bytes = ovf::SerializePolicyDocument(d);
    EXPECT_OK(bytes);
    auto sig = ovf::SignPolicyDocument(*bytes, *key);
    EXPECT_OK(sig);
    return {{"document", crypto::Base64Encode(crypto::AsBytes(*bytes))},
            {"signature", crypto::Base64Encode(*sig)}};
  }

  TempDir dir_;
  std::unique_ptr<tpm::testing::Swtpm> swtpm_;
  std::unique_ptr<tpm::SecurityEngine> engine_;
  csp::testing::KmsInstance kms_;
  std::unique_ptr<csp::testing::ServerProcess> portal_;
  std::unique_ptr<host::KmsApi> host_;
};

}  // namespace vmseal::testing

#endif  // VMSEAL_TESTS_INTERNAL_SEALED_KMS_FIXTURE_H_
