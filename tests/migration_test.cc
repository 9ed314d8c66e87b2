// Issue 19 (migration) through the real `vmseal` binary: a KMS (`kms serve`)
// and a portal (`csp serve`, packages verified) on loopback, customers
// driven by `vmseal customer` and `vmseal seal`. `customer export` takes the
// customer's package out of the portal only when it verifies against the
// customer's own signature; a portal that swaps or alters it, another
// customer's image, a CA the customer did not pin: refused, nothing written.
#include <sys/stat.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/env.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "host/portal_client.h"
#include "csp/internal/process_harness.h"
#include "kms/migration.h"
#include "net/https_client.h"
#include "ovf/descriptor.h"
#include "ovf/package.h"
#include "internal/sealed_kms_fixture.h"
#include "testing/test_util.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using vmseal::testing::ReadFileOrDie;
using vmseal::testing::RunCommand;
using vmseal::testing::VmsealBinary;
using vmseal::testing::WriteFileOrDie;

// KMS A (`kms init` + `kms serve`, trusting host A's EK CA) and portal A
// are the shared fixture's (tests/internal/sealed_kms_fixture.h).
class CustomerExportTest : public vmseal::testing::SealedKmsFixture {
 protected:
  int Export(const std::string& who, const std::string& image, const std::string& out_file,
             const std::string& ca, std::string* out) {
    return Customer(who, {"export", image, "-o", dir_.File(out_file), "--kms-ca", ca}, out);
  }
  bool Exists(const std::string& name) { return Env::Default()->FileExists(dir_.File(name)); }
  // No temp file of an export left beside the outputs.
  void ExpectNoTempFiles() {
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
    }
  }
  // The portal's stored copy of `package` (its object), found by content.
  std::string StoredObject(const std::string& package) {
    const std::string want = ReadFileOrDie(dir_.File(package));
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir_.File("portal"))) {
      if (e.is_regular_file() && e.file_size() == want.size() &&
          ReadFileOrDie(e.path().string()) == want) {
        return e.path().string();
      }
    }
    return "";
  }

};

TEST_F(CustomerExportTest, ExportWritesTheUploadedPackageVerifiedAgainstTheCustomersSignature) {
  const std::string a = SignUp("a");
  const std::string image = SealAndUpload("a", "a.ova", {});
  ASSERT_FALSE(image.empty());
  json e = CustomerJson("a", {"export", image, "-o", dir_.File("out.ova"), "--kms-ca", kms_.ca()});
  EXPECT_EQ(e.value("verified", false), true);
  EXPECT_EQ(e.value("tenant", ""), a);
  // Byte for byte the package the customer uploaded.
  EXPECT_EQ(ReadFileOrDie(dir_.File("out.ova")), ReadFileOrDie(dir_.File("a.ova")));
  // And it opens offline as the customer's own package.
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "inspect", dir_.File("out.ova")}, &out, 60), 0) << out;
  // An existing file is never replaced.
  EXPECT_NE(Export("a", image, "out.ova", kms_.ca(), &out), 0);
  EXPECT_THAT(out, HasSubstr("exists"));
  ExpectNoTempFiles();
}

TEST_F(CustomerExportTest, PackageAlteredOrSwappedAtThePortalIsRefusedAndNothingIsWritten) {
  SignUp("a");
  SignUp("b");
  const std::string image = SealAndUpload("a", "a.ova", {});
  const std::string object = StoredObject("a.ova");
  ASSERT_FALSE(object.empty());
  const std::string original = ReadFileOrDie(object);
  std::string out;

  // One ciphertext byte flipped in the portal's store: a manifest digest.
  std::string flipped = original;
  flipped[flipped.size() / 2] ^= 0x01;
  WriteFileOrDie(object, flipped);
  EXPECT_NE(Export("a", image, "flipped.ova", kms_.ca(), &out), 0);
  EXPECT_THAT(out, HasSubstr("does not verify"));
  EXPECT_FALSE(Exists("flipped.ova"));

  // B's own valid, signed package served as A's image: signed by B's key.
  const std::string b_image = SealAndUpload("b", "b.ova", {});
  ASSERT_FALSE(b_image.empty());
  WriteFileOrDie(object, ReadFileOrDie(dir_.File("b.ova")));
  EXPECT_NE(Export("a", image, "swapped.ova", kms_.ca(), &out), 0);
  EXPECT_THAT(out, HasSubstr("signer_mismatch"));
  EXPECT_FALSE(Exists("swapped.ova"));

  // Restored: the export verifies again.
  WriteFileOrDie(object, original);
  EXPECT_EQ(Export("a", image, "ok.ova", kms_.ca(), &out), 0) << out;
  ExpectNoTempFiles();
}

TEST_F(CustomerExportTest, AnotherCustomersImageAndAnUnpinnedCaAreRefused) {
  SignUp("a");
  SignUp("b");
  const std::string image = SealAndUpload("a", "a.ova", {});
  std::string out;
  // B asks for A's image: the portal has no such image for B.
  EXPECT_NE(Export("b", image, "b-took.ova", kms_.ca(), &out), 0);
  EXPECT_FALSE(Exists("b-took.ova"));
  // A pins another CA (one the package's signer does not chain to).
  auto other = crypto::CreateSelfSignedCa({"another kms"});
  ASSERT_OK(other);
  WriteFileOrDie(dir_.File("other-ca.pem"), other->cert.ToPem());
  EXPECT_NE(Export("a", image, "other.ova", dir_.File("other-ca.pem"), &out), 0);
  EXPECT_THAT(out, HasSubstr("signer"));
  EXPECT_FALSE(Exists("other.ova"));
  ExpectNoTempFiles();
}

// Two complete deployments on loopback: KMS A + portal A (the fixture's),
// KMS B + portal B. The customer moves an image from A to B.
class CustomerMigrateTest : public CustomerExportTest {
 protected:
  void SetUp() override {
    CustomerExportTest::SetUp();
    if (HasFatalFailure()) return;
    // Host B's own TPM; KMS B trusts its EK CA only.
    ::mkdir(dir_.File("host-b").c_str(), 0700);
    ASSERT_NO_FATAL_FAILURE(StartTpm(dir_.File("host-b"), &swtpm_b_, &engine_b_));
    ASSERT_NO_FATAL_FAILURE(StartKmsWithEk(dir_.File("kms-b"), swtpm_b_->ca_bundle_pem(), &kms_b_));
    // Portal B over TLS (hosts authenticate with KMS B certificates).
    std::string out;
    ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "issue-identity", "--dir", kms_b_.dir, "--role",
                          "portal", "--name", "portal-server", "--server", "--server-ip",
                          "127.0.0.1", "--out", kms_b_.dir + "/portal-server"},
                         &out, 60),
              0)
        << out;
    auto portal = csp::testing::ServerProcess::Start(
        {VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("portal-b"), "--port", "0",
         "--port-file", dir_.File("portal-b.port"), "--tls-cert", kms_b_.dir + "/portal-server.pem",
         "--tls-key", kms_b_.dir + "/portal-server-key.pem", "--client-ca", kms_b_.ca(),
         "--kms-url", kms_b_.url(), "--kms-ca", kms_b_.ca(), "--kms-cert", kms_b_.portal_cert(),
         "--kms-key", kms_b_.portal_key()},
        dir_.File("portal-b.log"), dir_.File("portal-b.port"));
    ASSERT_OK(portal);
    portal_b_ = std::move(portal).value();
  }
  std::string PortalBUrl() { return "https://127.0.0.1:" + std::to_string(portal_b_->port()); }
  // `vmseal customer` against portal B as `who` (its directory `who`-b).
  json CustomerB(const std::string& who, const std::vector<std::string>& args) {
    ::mkdir(dir_.File(who + "-b").c_str(), 0700);
    std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", PortalBUrl(),
                                     "--ca-cert", kms_b_.ca(), "--session",
                                     dir_.File(who + "-b/session.json"), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::string out;
    EXPECT_EQ(RunCommand(argv, &out, 120), 0) << out;
    const size_t brace = out.find('{');
    return json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  }
  json SignUpB(const std::string& who, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"register", "--password-out", dir_.File(who + "-b/pw")};
    args.insert(args.end(), extra.begin(), extra.end());
    json reg = CustomerB(who, args);
    CustomerB(who, {"login", "--login-id", reg.value("login_id", ""), "--password-file",
                    dir_.File(who + "-b/pw")});
    CustomerB(who, {"fetch-cert", "--out", dir_.File(who + "-b/customer.pem"), "--kms-ca",
                    kms_b_.ca()});
    return reg;
  }
  int Migrate(const std::string& who, const std::string& image, const std::string& to_kms_ca,
              std::string* out) {
    ::mkdir(dir_.File(who + "-work").c_str(), 0700);
    return Customer(who, {"migrate", image, "--kms-ca", kms_.ca(), "--to-portal", PortalBUrl(),
                          "--to-ca-cert", kms_b_.ca(), "--to-session",
                          dir_.File(who + "-b/session.json"), "--to-kms-ca", to_kms_ca,
                          "--work-dir", dir_.File(who + "-work")},
                    out);
  }
  // An mTLS client of KMS A with identity `name` (portal, operator).
  std::unique_ptr<net::HttpsClient> KmsA(const std::string& name) { return Kms(name); }
  // (event, reason) of every migration.* record in KMS A's audit log.
  std::vector<std::string> MigrationAudit() {
    auto log = KmsA("operator")->Get("/v1/audit?after=0&limit=1000");
    EXPECT_OK(log);
    std::vector<std::string> out;
    if (!log.ok()) return out;
    for (const json& r : (*log)["records"]) {
      json rec = json::parse(r["record"].get<std::string>(), nullptr, false);
      const std::string ev = rec.value("event", "");
      if (ev.rfind("migration.", 0) != 0) continue;
      out.push_back(ev + (ev == "migration.deny" ? " " + rec["details"].value("reason", "") : ""));
    }
    return out;
  }
  // A re-wrap request for `package` (sealed to the customer `who` at A),
  // to the key of `dest_cert`, signed by `signer` (the customer's key, or
  // anyone else's).
  kms::RewrapRequest Request(const std::string& package, const crypto::Certificate& dest_cert,
                             const crypto::PrivateKey& signer, int64_t lifetime = 300) {
    ovf::PackageOpenOptions po;
    auto p = ovf::Package::Open(Env::Default(), dir_.File(package), po);
    EXPECT_OK(p);
    kms::RewrapRequest r;
    if (!p.ok()) return r;
    ovf::EncryptionTag dest_tag = (*p)->tag();
    dest_tag.tenant = "tenant-at-b";
    kms::RewrapAuthorization& a = r.authorization;
    a.tenant = (*p)->tag().tenant;
    a.image_id = (*p)->tag().image_id;
    a.key_version = (*p)->tag().key_version;
    a.destination_cert_sha256 = crypto::HexEncode(crypto::Sha256(dest_cert.ToDer()));
    a.destination_label = ovf::OaepLabel(dest_tag);
    a.nonce = crypto::HexEncode(crypto::RandomBytes(32));
    a.expires_unix = static_cast<int64_t>(::time(nullptr)) + lifetime;
    auto sig = crypto::Sign(signer, crypto::SignatureDigest::kSha256,
                            kms::RewrapAuthorizationMessage(a));
    EXPECT_OK(sig);
    if (sig.ok()) r.signature = *sig;
    r.destination_cert_pem = dest_cert.ToPem();
    r.key_id = (*p)->tag().key_id;
    r.wrap_algorithm = (*p)->wrapped_key().algorithm;
    r.oaep_label = (*p)->wrapped_key().oaep_label;
    r.wrapped_key = (*p)->wrapped_key().ciphertext;
    return r;
  }

  std::unique_ptr<tpm::testing::Swtpm> swtpm_b_;
  std::unique_ptr<tpm::SecurityEngine> engine_b_;
  csp::testing::KmsInstance kms_b_;
  std::unique_ptr<csp::testing::ServerProcess> portal_b_;
};

TEST_F(CustomerMigrateTest, MigrateVerifiesTheDestinationAndKmsAReWrapsOnlyWithTheCustomersSignature) {
  const std::string a = SignUp("a");
  json b = SignUpB("a");
  const std::string image = SealAndUpload("a", "a.ova", {});
  ASSERT_FALSE(image.empty());
  std::string out;

  // A destination certificate that does not chain to the KMS B CA the
  // customer pinned (here: KMS A's CA given as --to-kms-ca): refused by the
  // CLI before KMS A is asked anything, and nothing is written.
  EXPECT_NE(Migrate("a", image, kms_.ca(), &out), 0);
  EXPECT_THAT(out, HasSubstr("destination_untrusted"));
  EXPECT_TRUE(MigrationAudit().empty());
  EXPECT_TRUE(std::filesystem::is_empty(dir_.File("a-work")));

  // A destination key of the other type (X25519 at B, RSA at A): refused
  // before anything is signed or asked of A, nothing left behind.
  SignUpB("x", {"--key-algorithm", "x25519"});
  ::mkdir(dir_.File("a-work-x").c_str(), 0700);
  EXPECT_NE(Customer("a", {"migrate", image, "--kms-ca", kms_.ca(), "--to-portal", PortalBUrl(),
                           "--to-ca-cert", kms_b_.ca(), "--to-session",
                           dir_.File("x-b/session.json"), "--to-kms-ca", kms_b_.ca(),
                           "--work-dir", dir_.File("a-work-x")},
                     &out),
            0);
  EXPECT_THAT(out, HasSubstr("key_type_mismatch"));
  EXPECT_TRUE(std::filesystem::is_empty(dir_.File("a-work-x")));
  EXPECT_TRUE(MigrationAudit().empty());

  // Pinned correctly: KMS A re-wraps to the customer's key at B, audited.
  ASSERT_EQ(Migrate("a", image, kms_b_.ca(), &out), 0) << out;
  const size_t brace = out.find('{');
  json m = json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  EXPECT_EQ(m.value("destination_tenant", ""), b.value("customer_id", ""));
  EXPECT_EQ(m.value("source_tenant", ""), a);
  EXPECT_FALSE(m.value("rewrapped_key", "").empty());
  auto b_cert = crypto::Certificate::FromPem(ReadFileOrDie(dir_.File("a-b/customer.pem")));
  ASSERT_OK(b_cert);
  EXPECT_EQ(m.value("destination_cert_sha256", ""),
            crypto::HexEncode(crypto::Sha256(b_cert->ToDer())));
  // The exported source package is the uploaded one, byte for byte.
  EXPECT_EQ(ReadFileOrDie(m.value("source_package", "")), ReadFileOrDie(dir_.File("a.ova")));
  EXPECT_THAT(MigrationAudit(), ::testing::ElementsAre("migration.rewrap"));
  // The package for B: listed at portal B (which had KMS B verify the
  // customer's signature at B), B's tenant and key in the tag, the disks'
  // ciphertext byte for byte the source's (moved, not re-encrypted).
  json b_images = CustomerB("a", {"images"})["images"];
  ASSERT_EQ(b_images.size(), 1u) << b_images.dump();
  ovf::PackageOpenOptions po;
  po.require_signature = true;
  auto src = ovf::Package::Open(Env::Default(), dir_.File("a.ova"), po);
  ASSERT_OK(src);
  auto moved = ovf::Package::Open(Env::Default(), m.value("migrated_package", ""), po);
  ASSERT_OK(moved);
  EXPECT_EQ((*moved)->tag().tenant, b.value("customer_id", ""));
  EXPECT_EQ((*moved)->tag().stream_tenant, a);
  EXPECT_EQ((*moved)->tag().image_id, (*src)->tag().image_id);
  EXPECT_NE((*moved)->wrapped_key().ciphertext, (*src)->wrapped_key().ciphertext);
  ASSERT_EQ((*moved)->files().size(), (*src)->files().size());
  for (size_t i = 0; i < (*src)->files().size(); ++i) {
    auto read_all = [](const ovf::Package& p, const std::string& id) {
      auto f = p.OpenStoredFile(id);
      EXPECT_OK(f);
      std::string bytes;
      if (!f.ok()) return bytes;
      auto size = (*f)->Size();
      EXPECT_OK(size);
      bytes.resize(size.ok() ? *size : 0);
      for (size_t off = 0; off < bytes.size();) {
        auto got = (*f)->Read(off, std::span<uint8_t>(reinterpret_cast<uint8_t*>(bytes.data()) + off,
                                                      bytes.size() - off));
        EXPECT_OK(got);
        if (!got.ok() || *got == 0) break;
        off += *got;
      }
      return bytes;
    };
    const std::string before = read_all(**src, (*src)->files()[i].id);
    EXPECT_FALSE(before.empty());
    EXPECT_EQ(read_all(**moved, (*moved)->files()[i].id), before);
  }
  // The customer sees the re-wrap in their own audit of the image, proven
  // in KMS A's signed log.
  json audit = CustomerJson("a", {"audit", image, "--kms-ca", kms_.ca()});
  bool seen = false;
  for (const json& e : audit["events"]) {
    if (e.value("event", "") == "migration.rewrap") {
      seen = true;
      EXPECT_EQ(e["details"].value("destination_cert_sha256", ""),
                m.value("destination_cert_sha256", ""));
    }
  }
  EXPECT_TRUE(seen) << audit.dump();

  // The same image again: a fresh authorization (a new nonce) is a new
  // re-wrap; the result file of the first is never replaced.
  EXPECT_NE(Migrate("a", image, kms_b_.ca(), &out), 0);
  EXPECT_THAT(out, HasSubstr("exists"));

  // Another customer of portal A cannot have A's image re-wrapped through
  // the portal: no such image for them, and an authorization naming
  // another tenant is refused by the portal before the KMS sees it.
  SignUp("c");
  SignUpB("c");
  EXPECT_NE(Migrate("c", image, kms_b_.ca(), &out), 0);
  EXPECT_THAT(MigrationAudit(), ::testing::ElementsAre("migration.rewrap"));
}

TEST_F(CustomerMigrateTest, ReWrapIsRefusedWithoutTheCustomersSignatureReplayedExpiredOrRedirected) {
  SignUp("a");
  const std::string image = SealAndUpload("a", "a.ova", {});
  ASSERT_FALSE(image.empty());
  auto signing = crypto::LoadPrivateKeyFile(dir_.File("a/signing-key.pem"));
  ASSERT_OK(signing);
  // A destination key the test holds, so that it can open what KMS A sends.
  auto ca = crypto::CreateSelfSignedCa({"kms b"});
  ASSERT_OK(ca);
  auto dest_key = crypto::PrivateKey::Generate(crypto::KeyType::kRsa3072);
  ASSERT_OK(dest_key);
  crypto::IssueOptions io;
  io.common_name = dest_key->KeyId();
  auto dest_cert = crypto::IssueCertificate(*ca, dest_key->Public(), io);
  ASSERT_OK(dest_cert);
  auto portal = KmsA("portal");

  // The portal (or anyone without the customer's signing key) signs its own
  // authorization: refused before any key is touched.
  auto forger = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(forger);
  EXPECT_STATUS(portal->Post("/v1/migrations/rewrap",
                             kms::RewrapRequestToJson(Request("a.ova", *dest_cert, *forger))),
                StatusCode::kPermissionDenied, "bad_authorization");
  // The customer's authorization, with the destination swapped by the
  // portal for a certificate of its own.
  kms::RewrapRequest redirected = Request("a.ova", *dest_cert, *signing);
  auto other = crypto::IssueCertificate(*ca, forger->Public(), io);
  ASSERT_OK(other);
  redirected.destination_cert_pem = other->ToPem();
  EXPECT_STATUS(portal->Post("/v1/migrations/rewrap", kms::RewrapRequestToJson(redirected)),
                StatusCode::kPermissionDenied, "destination_mismatch");
  // Expired (signed with a lifetime in the past).
  EXPECT_STATUS(portal->Post("/v1/migrations/rewrap",
                             kms::RewrapRequestToJson(Request("a.ova", *dest_cert, *signing, -5))),
                StatusCode::kPermissionDenied, "authorization_expired");
  // A host or operator identity may not ask at all.
  kms::RewrapRequest good = Request("a.ova", *dest_cert, *signing);
  EXPECT_STATUS(KmsA("operator")->Post("/v1/migrations/rewrap", kms::RewrapRequestToJson(good)),
                StatusCode::kPermissionDenied, "portal");

  // The customer's own: granted once. The answer opens only with the
  // destination key, under the signed label, to the data key of the disks.
  auto r = portal->Post("/v1/migrations/rewrap", kms::RewrapRequestToJson(good));
  ASSERT_OK(r);
  EXPECT_EQ((*r).value("destination_key_id", ""), dest_key->KeyId());
  auto wrapped = crypto::Base64Decode((*r).value("rewrapped_key", ""));
  ASSERT_OK(wrapped);
  auto data_key = crypto::UnwrapKey(*dest_key, *wrapped,
                                    crypto::AsStringView(good.authorization.destination_label));
  ASSERT_OK(data_key);
  ovf::PackageOpenOptions po;
  auto pkg = ovf::Package::Open(Env::Default(), dir_.File("a.ova"), po);
  ASSERT_OK(pkg);
  ASSERT_FALSE((*pkg)->files().empty());
  {
    auto f = Env::Default()->NewWritableFile(dir_.File("disk.out"), 0600);
    ASSERT_OK(f);
    ASSERT_OK((*pkg)->DecryptFile((*pkg)->files()[0].id, *data_key, f->get()));
    ASSERT_OK((*f)->Close());
  }
  EXPECT_EQ(ReadFileOrDie(dir_.File("disk.out")), ReadFileOrDie(dir_.File("disk.raw")));

  // The same authorization again: replayed.
  EXPECT_STATUS(portal->Post("/v1/migrations/rewrap", kms::RewrapRequestToJson(good)),
                StatusCode::kPermissionDenied, "authorization_replayed");
  EXPECT_THAT(MigrationAudit(),
              ::testing::ElementsAre("migration.deny bad_authorization",
                                     "migration.deny destination_mismatch",
                                     "migration.deny authorization_expired", "migration.rewrap",
                                     "migration.deny authorization_replayed"));
}

// A migrate that failed after the re-wrap (here portal B refuses the
// upload's name) is resumed by running it again: the re-wrap recorded in
// the work dir is reused, KMS A is not asked a second time, and the package
// reaches B. Once uploaded, a further run refuses before asking anything.
TEST_F(CustomerMigrateTest, MigrateResumesAfterAFailedUploadWithoutASecondReWrap) {
  SignUp("a");
  SignUpB("a");
  const std::string image = SealAndUpload("a", "a.ova", {});
  ASSERT_FALSE(image.empty());
  ::mkdir(dir_.File("a-work").c_str(), 0700);
  std::string out;
  EXPECT_NE(Customer("a", {"migrate", image, "--kms-ca", kms_.ca(), "--to-portal", PortalBUrl(),
                           "--to-ca-cert", kms_b_.ca(), "--to-session",
                           dir_.File("a-b/session.json"), "--to-kms-ca", kms_b_.ca(),
                           "--work-dir", dir_.File("a-work"), "--to-name", std::string(200, 'n')},
                     &out),
            0);
  EXPECT_THAT(out, HasSubstr("128 characters"));
  EXPECT_THAT(MigrationAudit(), ::testing::ElementsAre("migration.rewrap"));
  EXPECT_TRUE(Exists("a-work/" + image + ".rewrap.json"));
  EXPECT_TRUE(CustomerB("a", {"images"})["images"].empty());

  ASSERT_EQ(Migrate("a", image, kms_b_.ca(), &out), 0) << out;
  const size_t brace = out.find('{');
  json m = json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  EXPECT_EQ(m.value("resumed", false), true) << out;
  EXPECT_THAT(MigrationAudit(), ::testing::ElementsAre("migration.rewrap"));
  json b_images = CustomerB("a", {"images"})["images"];
  ASSERT_EQ(b_images.size(), 1u) << b_images.dump();
  // The package at B opens with the re-wrap KMS A made the first time.
  ovf::PackageOpenOptions po;
  po.require_signature = true;
  auto moved = ovf::Package::Open(Env::Default(), m.value("migrated_package", ""), po);
  ASSERT_OK(moved);
  auto first = json::parse(ReadFileOrDie(dir_.File("a-work/" + image + ".rewrap.json")));
  auto recorded = crypto::Base64Decode(first.value("rewrapped_key", ""));
  ASSERT_OK(recorded);
  EXPECT_EQ((*moved)->wrapped_key().ciphertext, *recorded);

  EXPECT_NE(Migrate("a", image, kms_b_.ca(), &out), 0);
  EXPECT_THAT(out, HasSubstr("migrated already"));
  EXPECT_THAT(MigrationAudit(), ::testing::ElementsAre("migration.rewrap"));
}

// The package `customer migrate` moved is launched at B: portal B places it
// on host B (its own swtpm, enrolled at KMS B) with a grant from KMS B, the
// host fetches it from portal B, KMS B releases its key to the host's TPM,
// and the disk decrypts to the bytes sealed at A: the ciphertext moved
// unchanged, and only B's keys were needed. The source package, shown to
// KMS B, is not released.
TEST_F(CustomerMigrateTest, MigratedImageIsPlacedByPortalBAndReleasedByKmsBToHostB) {
  SignUp("a");
  const std::string b = SignUpB("a").value("customer_id", "");
  // Sealed under a rotated key at A (version 2), while the customer's key
  // at B is version 1: the migrated package names B's version and keeps the
  // streams' (streamKeyVersion 2).
  json rotated = CustomerJson("a", {"rotate-key", "--out", dir_.File("a/customer.pem"), "--kms-ca", kms_.ca()});
  ASSERT_EQ(rotated.value("version", 0), 2) << rotated.dump();
  const std::string image = SealAndUpload("a", "a.ova", {});
  ASSERT_FALSE(image.empty());
  ASSERT_EQ(Open("a.ova")->tag().key_version, 2u);
  std::string out;
  ASSERT_EQ(Migrate("a", image, kms_b_.ca(), &out), 0) << out;
  json b_images = CustomerB("a", {"images"})["images"];
  ASSERT_EQ(b_images.size(), 1u) << b_images.dump();
  const std::string image_b = b_images[0].value("image_id", "");

  // Host B: enrolled at KMS B, whose operator trusts its boot state for the
  // customer; in portal B's pool with one slot.
  std::unique_ptr<host::KmsApi> host_b;
  ASSERT_NO_FATAL_FAILURE(EnrollHostAt(kms_b_, engine_b_.get(), &host_b));
  ASSERT_OK(Kms("operator", &kms_b_)->Put("/v1/policies/" + b,
                                          {{"flavors", {{"anyOf", {"good-boot"}}}}}));
  host::PortalClientOptions pco;
  pco.url = PortalBUrl();
  pco.ca_cert_file = kms_b_.ca();
  pco.cert_file = kms_b_.dir + "/host-1.pem";
  pco.key_file = kms_b_.dir + "/host-1-key.pem";
  auto portal_b_host = host::PortalClient::Create(pco);
  ASSERT_OK(portal_b_host);
  ASSERT_OK((*portal_b_host)->Register({.capacity = {.vcpus = 2, .memory_mib = 2048, .slots = 1}}));
  ASSERT_OK((*portal_b_host)->Heartbeat());

  // Launched through portal B: placed on host B (KMS B's placement check
  // and grant).
  json launched = CustomerB("a", {"launch", image_b});
  const std::string job_id = launched.value("job_id", "");
  ASSERT_FALSE(job_id.empty()) << launched.dump();
  json status = CustomerB("a", {"status", job_id});
  EXPECT_EQ(status.value("state", ""), "placed") << status.dump();
  EXPECT_EQ(status.value("host_id", ""), "host-1") << status.dump();
  auto jobs = (*portal_b_host)->PollJobs();
  ASSERT_OK(jobs);
  ASSERT_EQ(jobs->size(), 1u);
  const host::PortalJob& pj = (*jobs)[0];
  EXPECT_EQ(pj.job_id, job_id);
  EXPECT_EQ(pj.customer_id, b);

  // The host fetches the package from portal B (digest checked) ...
  host::Job hj;
  hj.job_id = pj.job_id;
  hj.image_id = pj.image_id;
  hj.tenant = pj.customer_id;
  hj.package_sha256_hex = pj.package_sha256_hex;
  hj.attempt = pj.attempt;
  ASSERT_OK((*portal_b_host)->Fetch(hj, dir_.File("host-b/package.ova")));
  auto fetched = Open("host-b/package.ova");
  ASSERT_NE(fetched, nullptr);
  EXPECT_EQ(fetched->tag().tenant, b);
  EXPECT_EQ(fetched->tag().key_version, 1u);
  EXPECT_EQ(fetched->tag().stream_key_version, 2u);
  // ... and KMS B releases its key to host B's TPM for this job.
  auto released = ReleaseWith(host_b.get(), engine_b_.get(), dir_.File("host-b/package.ova"),
                              job_id, pj.attempt);
  ASSERT_OK(released);
  auto data_key = engine_b_->Decrypt(released->rewrapped_key, released->label);
  ASSERT_OK(data_key);
  ASSERT_FALSE(fetched->files().empty());
  {
    auto f = Env::Default()->NewWritableFile(dir_.File("host-b/disk.out"), 0600);
    ASSERT_OK(f);
    ASSERT_OK(fetched->DecryptFile(fetched->files()[0].id, *data_key, f->get()));
    ASSERT_OK((*f)->Close());
  }
  EXPECT_EQ(ReadFileOrDie(dir_.File("host-b/disk.out")), ReadFileOrDie(dir_.File("disk.raw")));
  int grants = 0;
  auto log = Kms("operator", &kms_b_)->Get("/v1/audit?after=0&limit=1000");
  ASSERT_OK(log);
  for (const json& r : (*log)["records"]) {
    json rec = json::parse(r["record"].get<std::string>(), nullptr, false);
    if (rec.value("event", "") == "release.grant") ++grants;
  }
  EXPECT_EQ(grants, 1);

  // The source package (sealed and signed for the customer at A), shown to
  // KMS B for the same job: its signer is not certified by KMS B, and
  // nothing is released.
  auto from_a = ReleaseWith(host_b.get(), engine_b_.get(), dir_.File("a.ova"), job_id, pj.attempt);
  EXPECT_STATUS(from_a, StatusCode::kUnauthenticated, "signer_mismatch");
}

}  // namespace
}  // namespace vmseal
