// Attacker tests for customer-signed packages (issue 14) through the real
// `vmseal` binary: a KMS (`kms serve`) and a portal (`csp serve`, packages
// verified) on loopback, customers driven by `vmseal customer` and `vmseal
// seal`, and a host's or the portal's mTLS identity calling the KMS by hand.
#include <httplib.h>
#include <sys/stat.h>

#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "attest/evidence.h"
#include "base/env.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "csp/internal/process_harness.h"
#include "net/https_client.h"
#include "ovf/package.h"
#include "ovf/signature.h"
#include "testing/test_util.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using vmseal::testing::ReadFileOrDie;
using vmseal::testing::RunCommand;
using vmseal::testing::TempDir;
using vmseal::testing::VmsealBinary;
using vmseal::testing::WriteFileOrDie;

class CustomerSignedPackageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kms = csp::testing::StartKms(dir_.File("kms"));
    ASSERT_OK(kms);
    kms_ = std::move(kms).value();
    ASSERT_OK(kms_.IssueIdentity("host", "host-x"));
    std::vector<std::string> argv = {
        VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("portal"), "--port", "0",
        "--port-file", dir_.File("portal.port"), "--kms-url", kms_.url(), "--kms-ca", kms_.ca(),
        "--kms-cert", kms_.portal_cert(), "--kms-key", kms_.portal_key()};
    auto portal = csp::testing::ServerProcess::Start(argv, dir_.File("portal.log"),
                                                     dir_.File("portal.port"));
    ASSERT_OK(portal);
    portal_ = std::move(portal).value();
    // A small raw disk to seal.
    std::string disk(64 << 10, '\0');
    for (size_t i = 0; i < disk.size(); ++i) disk[i] = static_cast<char>(i * 131 % 251);
    WriteFileOrDie(dir_.File("disk.raw"), disk);
  }

  std::string PortalUrl() { return "http://127.0.0.1:" + std::to_string(portal_->port()); }

  // `vmseal customer ... ARGS` as customer `who` (its own directory and
  // session); the exit code, output in *out.
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
  // Registers, logs in and fetches (and checks) the certificates of `who`.
  json SignUp(const std::string& who) {
    json reg = CustomerJson(who, {"register", "--password-out", dir_.File(who + "/pw")});
    CustomerJson(who, {"login", "--login-id", reg.value("login_id", ""), "--password-file",
                       dir_.File(who + "/pw")});
    CustomerJson(who, {"fetch-cert", "--out", dir_.File(who + "/customer.pem"), "--kms-ca",
                       kms_.ca()});
    return reg;
  }
  // `vmseal seal` of the disk to `who`'s certificate, with extra flags.
  int Seal(const std::string& who, const std::string& out_name,
           const std::vector<std::string>& extra, std::string* out) {
    std::vector<std::string> argv = {VmsealBinary(), "seal", dir_.File("disk.raw"), "--cert",
                                     dir_.File(who + "/customer.pem"), "-o", dir_.File(out_name)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv, out, 120);
  }
  int Upload(const std::string& who, const std::string& package, std::string* out) {
    return Customer(who, {"upload", dir_.File(package), "--name", "img"}, out);
  }
  json Images(const std::string& who) { return CustomerJson(who, {"images"})["images"]; }

  // An mTLS client of the KMS with identity `name` (host-x, portal, operator).
  std::unique_ptr<net::HttpsClient> Kms(const std::string& name) {
    net::HttpsClient::Options o;
    o.host = "127.0.0.1";
    o.port = kms_.process->port();
    o.ca_pem = ReadFileOrDie(kms_.ca());
    o.cert_pem = ReadFileOrDie(kms_.dir + "/" + name + ".pem");
    auto key = crypto::ReadSecretFile(kms_.dir + "/" + name + "-key.pem");
    EXPECT_OK(key);
    o.key_pem = std::move(key).value();
    auto c = net::HttpsClient::Create(std::move(o));
    EXPECT_OK(c);
    return std::move(c).value();
  }

  // A release request built by hand from the package at `path`, as a host
  // (or a portal acting as one) would send it; the evidence is a
  // placeholder, since the signature checks come first.
  json ReleaseBody(const std::string& path, std::string* job = nullptr) {
    ovf::PackageOpenOptions po;
    auto p = ovf::Package::Open(Env::Default(), dir_.File(path), po);
    EXPECT_OK(p);
    if (!p.ok()) return json();
    const ovf::Package& pkg = **p;
    attest::Evidence ev;
    ev.nonce = crypto::Bytes(32, 1);
    ev.pcr_selection = {0, 7};
    json body = {{"job_id", job ? *job : "job-by-hand"},
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
    return body;
  }
  // Every release.deny reason in the KMS audit log, in order.
  std::vector<std::string> DeniedReasons() {
    auto op = Kms("operator");
    auto log = op->Get("/v1/audit?after=0&limit=1000");
    EXPECT_OK(log);
    std::vector<std::string> out;
    if (!log.ok()) return out;
    for (const json& r : (*log)["records"]) {
      json rec = json::parse(r["record"].get<std::string>(), nullptr, false);
      if (rec.value("event", "") == "release.deny") out.push_back(rec["details"].value("reason", ""));
      EXPECT_NE(rec.value("event", ""), "release.grant");
    }
    return out;
  }
  // A signing key and certificate made by someone other than the KMS CA,
  // naming `tenant` (a self-made signer).
  void SelfMadeSigner(const std::string& tenant, const std::string& key_path,
                      const std::string& cert_path) {
    auto ca = crypto::CreateSelfSignedCa({"attacker ca"});
    ASSERT_OK(ca);
    auto key = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    ASSERT_OK(key);
    crypto::IssueOptions io;
    io.common_name = tenant;
    io.usage = crypto::CertUsage::kPackageSigning;
    auto cert = crypto::IssueCertificate(*ca, key->Public(), io);
    ASSERT_OK(cert);
    ASSERT_OK(crypto::WritePrivateKeyFile(Env::Default(), key_path, *key));
    WriteFileOrDie(cert_path, cert->ToPem());
  }

  TempDir dir_;
  csp::testing::KmsInstance kms_;
  std::unique_ptr<csp::testing::ServerProcess> portal_;
};

TEST_F(CustomerSignedPackageTest, SignedPackageOfTheCustomerIsListed) {
  json a = SignUp("a");
  // register made the signing key (0600) beside the session; fetch-cert
  // checked and wrote its certificate beside the customer certificate.
  struct stat st;
  ASSERT_EQ(::stat(dir_.File("a/signing-key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_TRUE(Env::Default()->FileExists(dir_.File("a/signing-cert.pem")));
  std::string out;
  ASSERT_EQ(Seal("a", "a.ova", {}, &out), 0) << out;
  ASSERT_EQ(Upload("a", "a.ova", &out), 0) << out;
  EXPECT_EQ(Images("a").size(), 1u);
}

TEST_F(CustomerSignedPackageTest, PackageSealedToAsKeyBySomeoneElseIsRefusedAtUploadAndNeverGetsAKey) {
  json a = SignUp("a");
  const std::string tenant = a.value("customer_id", "");
  std::string out;
  // Anyone with A's public certificate can seal for A: unsigned, or signed
  // with a self-made key naming A.
  ASSERT_EQ(Seal("a", "unsigned.ova", {"--unsigned"}, &out), 0) << out;
  SelfMadeSigner(tenant, dir_.File("m-key.pem"), dir_.File("m-cert.pem"));
  ASSERT_EQ(Seal("a", "forged.ova", {"--signing-key", dir_.File("m-key.pem"), "--signing-cert",
                                     dir_.File("m-cert.pem")},
                 &out),
            0)
      << out;
  // Pushed through A's own account (a stolen session, or the portal itself):
  // refused before the image exists.
  EXPECT_NE(Upload("a", "unsigned.ova", &out), 0);
  EXPECT_THAT(out, HasSubstr("unsigned_package"));
  EXPECT_NE(Upload("a", "forged.ova", &out), 0);
  EXPECT_THAT(out, HasSubstr("signer_mismatch"));
  EXPECT_TRUE(Images("a").empty());

  // A misbehaving portal or host asks the KMS directly: refused before any
  // evidence, key or unwrap, and audited.
  auto host = Kms("host-x");
  EXPECT_STATUS(host->Post("/v1/hosts/host-x/releases", ReleaseBody("unsigned.ova")),
                StatusCode::kPermissionDenied, "unsigned_package");
  EXPECT_STATUS(host->Post("/v1/hosts/host-x/releases", ReleaseBody("forged.ova")),
                StatusCode::kPermissionDenied, "signer_mismatch");
  // The portal's own identity may not ask for a release at all.
  EXPECT_STATUS(Kms("portal")->Post("/v1/hosts/host-x/releases", ReleaseBody("forged.ova")),
                StatusCode::kPermissionDenied, "host role");
  EXPECT_THAT(DeniedReasons(), ::testing::ElementsAre("unsigned_package", "signer_mismatch"));
}

TEST_F(CustomerSignedPackageTest, AnotherCustomerCannotUploadAsSignedPackage) {
  SignUp("a");
  SignUp("b");
  std::string out;
  ASSERT_EQ(Seal("a", "a.ova", {}, &out), 0) << out;
  EXPECT_NE(Upload("b", "a.ova", &out), 0);
  EXPECT_THAT(out, HasSubstr("tenant_mismatch"));
  EXPECT_TRUE(Images("b").empty());
  // B re-signs A's package with B's own key: still A's tenant and key.
  EXPECT_NE(Seal("a", "a-by-b.ova", {"--signing-key", dir_.File("b/signing-key.pem"),
                                     "--signing-cert", dir_.File("b/signing-cert.pem")},
                 &out),
            0);
  EXPECT_THAT(out, HasSubstr("the signing certificate is for tenant"));
}

TEST_F(CustomerSignedPackageTest, WrappedKeySwappedAfterSigningIsRefusedAtTheKmsBeforeUnwrap) {
  json a = SignUp("a");
  std::string out;
  ASSERT_EQ(Seal("a", "a.ova", {}, &out), 0) << out;
  json body = ReleaseBody("a.ova");
  // Another data key wrapped to A's key under the same label: it would
  // open, but it is not the key A signed.
  auto cert = crypto::Certificate::FromPem(ReadFileOrDie(dir_.File("a/customer.pem")));
  ASSERT_OK(cert);
  auto pub = cert->GetPublicKey();
  ASSERT_OK(pub);
  auto label = crypto::Base64Decode(body["oaep_label"].get<std::string>());
  ASSERT_OK(label);
  auto swapped = crypto::WrapKey(*pub, SecretBytes::Random(crypto::kDataKeyBytes),
                                 crypto::AsStringView(*label));
  ASSERT_OK(swapped);
  body["wrapped_key"] = crypto::Base64Encode(*swapped);
  EXPECT_STATUS(Kms("host-x")->Post("/v1/hosts/host-x/releases", body),
                StatusCode::kPermissionDenied, "key_not_signed: the request's wrapped_key");
  // The descriptor itself changed after signing (the swapped key inside it).
  json changed = ReleaseBody("a.ova");
  std::string descriptor = changed["descriptor"];
  const size_t at = descriptor.find("CipherValue>");
  ASSERT_NE(at, std::string::npos);
  descriptor[at + 12] = descriptor[at + 12] == 'A' ? 'B' : 'A';
  changed["descriptor"] = descriptor;
  EXPECT_STATUS(Kms("host-x")->Post("/v1/hosts/host-x/releases", changed),
                StatusCode::kPermissionDenied, "bad_signature");
  EXPECT_THAT(DeniedReasons(), ::testing::ElementsAre("key_not_signed", "bad_signature"));
}

// A host altering a package it holds, again and again (issue 14, hostile
// cost): each altered descriptor is refused from the manifest's digest
// before any signature or certificate work, and after ten failures the host
// is refused outright (429 rate_limited), the untouched package included;
// nothing is granted.
TEST_F(CustomerSignedPackageTest, HostAlteringAPackageItHoldsIsRefusedCheaplyThenRateLimited) {
  SignUp("a");
  std::string out;
  ASSERT_EQ(Seal("a", "a.ova", {}, &out), 0) << out;
  auto host = Kms("host-x");
  json altered = ReleaseBody("a.ova");
  std::string descriptor = altered["descriptor"];
  const size_t at = descriptor.find("CipherValue>");
  ASSERT_NE(at, std::string::npos);
  descriptor[at + 12] = descriptor[at + 12] == 'A' ? 'B' : 'A';
  altered["descriptor"] = descriptor;
  for (int i = 0; i < 11; ++i) {  // ten free failures, the eleventh blocks the host
    SCOPED_TRACE(i);
    EXPECT_STATUS(host->Post("/v1/hosts/host-x/releases", altered), StatusCode::kPermissionDenied,
                  "bad_signature: the descriptor does not have the digest the manifest lists");
  }
  EXPECT_STATUS(host->Post("/v1/hosts/host-x/releases", ReleaseBody("a.ova")),
                StatusCode::kResourceExhausted, "rate_limited: host host-x");
  std::vector<std::string> want(11, "bad_signature");
  want.push_back("rate_limited");
  EXPECT_EQ(DeniedReasons(), want);  // and no release.grant (DeniedReasons checks)
}

TEST_F(CustomerSignedPackageTest, FetchCertCatchesASigningKeySubstitutedByThePortal) {
  // A customer registered without a signing key (an older client) ...
  httplib::Client c("127.0.0.1", portal_->port());
  // Registration makes an RSA-3072 key at the KMS: more than httplib's
  // default 5 s on a loaded machine.
  c.set_read_timeout(60, 0);
  auto reg = c.Post("/v1/register", "{}", "application/json");
  ASSERT_TRUE(reg && reg->status == 201) << (reg ? reg->body : "no answer");
  json r = json::parse(reg->body);
  const std::string tenant = r["customer_id"];
  WriteFileOrDie(dir_.File("c-pw"), r["password"].get<std::string>() + "\n");
  CustomerJson("c", {"login", "--login-id", r["login_id"], "--password-file", dir_.File("c-pw")});
  // ... and a key it made for itself ...
  auto mine = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(mine);
  ASSERT_OK(crypto::WritePrivateKeyFile(Env::Default(), dir_.File("c/signing-key.pem"), *mine));
  // ... while the portal registers a key of its own for it at the KMS, with
  // a valid proof (it holds that key).
  auto theirs = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(theirs);
  auto proof = crypto::Sign(*theirs, crypto::SignatureDigest::kSha256,
                            ovf::SigningKeyProofMessage(theirs->Public()));
  ASSERT_OK(proof);
  ASSERT_OK(Kms("portal")->Post("/v1/customers/" + tenant + "/signing-key",
                                {{"public_key_pem", theirs->Public().ToPem()},
                                 {"proof", crypto::Base64Encode(*proof)}}));
  std::string out;
  EXPECT_NE(Customer("c", {"fetch-cert", "--out", dir_.File("c/customer.pem"), "--kms-ca",
                           kms_.ca()},
                     &out),
            0);
  EXPECT_THAT(out, HasSubstr("signer_mismatch: the signing certificate certifies key " +
                             theirs->KeyId() + ", not your signing key " + mine->KeyId()));
  // Nothing written: no customer certificate, no signing certificate.
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("c/customer.pem")));
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("c/signing-cert.pem")));
  // A proof made by another key than the one named is refused outright.
  auto other = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(other);
  json r2 = json::parse(c.Post("/v1/register", "{}", "application/json")->body);
  EXPECT_STATUS(Kms("portal")->Post("/v1/customers/" + r2["customer_id"].get<std::string>() +
                                        "/signing-key",
                                    {{"public_key_pem", other->Public().ToPem()},
                                     {"proof", crypto::Base64Encode(*proof)}}),
                StatusCode::kPermissionDenied, "bad_proof");
}

}  // namespace
}  // namespace vmseal
