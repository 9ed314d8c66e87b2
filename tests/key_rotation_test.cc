// Customer key rotation (issue 19) through the real binaries: a KMS (`kms
// serve`) and a portal (`csp serve`) on loopback, the customer driven by
// `vmseal customer rotate-key|retire-key|fetch-cert|set-policy` and
// `vmseal seal`, and host-1 (swtpm) asking for keys with the host's HTTPS
// KMS client. Each refusal is checked for its reason and its audit record.
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "internal/sealed_kms_fixture.h"
#include "kms/lifecycle.h"
#include "kms/migration.h"
#include "ovf/descriptor.h"
#include "ovf/package.h"

namespace vmseal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;
using vmseal::testing::kAnyTagPolicy;

class KeyRotationTest : public vmseal::testing::SealedKmsFixture {
 protected:
  // `customer rotate-key`: the new certificate replaces customer.pem.
  json RotateKey(const std::string& who) {
    return CustomerJson(who, {"rotate-key", "--out", dir_.File(who + "/customer.pem"), "--kms-ca", kms_.ca()});
  }
  // A re-wrap request for package `name` to the certificate `dest_pem` at
  // version `to_version`, signed by `signer`: what a portal could send the
  // KMS on its own.
  json RewrapBody(const std::string& name, const std::string& dest_pem, uint64_t to_version,
                  const crypto::PrivateKey& signer) {
    auto p = Open(name);
    auto cert = crypto::Certificate::FromPem(dest_pem);
    EXPECT_OK(cert);
    if (p == nullptr || !cert.ok()) return json();
    ovf::EncryptionTag dest = p->tag();
    dest.key_version = to_version;
    dest.stream_key_version = p->tag().key_version;
    kms::RewrapRequest r;
    kms::RewrapAuthorization& a = r.authorization;
    a.tenant = p->tag().tenant;
    a.image_id = p->tag().image_id;
    a.key_version = p->tag().key_version;
    a.destination_cert_sha256 = crypto::HexEncode(crypto::Sha256(cert->ToDer()));
    a.destination_label = ovf::OaepLabel(dest);
    a.nonce = crypto::HexEncode(crypto::RandomBytes(32));
    a.expires_unix = static_cast<int64_t>(::time(nullptr)) + 300;
    auto sig = crypto::Sign(signer, crypto::SignatureDigest::kSha256, kms::RewrapAuthorizationMessage(a));
    EXPECT_OK(sig);
    if (sig.ok()) r.signature = *sig;
    r.destination_cert_pem = cert->ToPem();
    r.key_id = p->tag().key_id;
    r.wrap_algorithm = p->wrapped_key().algorithm;
    r.oaep_label = p->wrapped_key().oaep_label;
    r.wrapped_key = p->wrapped_key().ciphertext;
    return kms::RewrapRequestToJson(r);
  }
  // A retire_key_version request of `tenant` for `version`, signed by `signer`.
  json RetireBody(const std::string& tenant, int64_t version, const crypto::PrivateKey& signer,
                  int64_t issued = 0) {
    kms::LifecycleRequest req;
    req.action = "retire_key_version";
    req.tenant = tenant;
    req.key_version = version;
    req.issued_unix = issued != 0 ? issued : static_cast<int64_t>(::time(nullptr));
    auto doc = kms::SerializeLifecycleRequest(req);
    EXPECT_OK(doc);
    auto sig = kms::SignLifecycleRequest(*doc, signer);
    EXPECT_OK(sig);
    return {{"document", crypto::Base64Encode(crypto::AsBytes(*doc))}, {"signature", crypto::Base64Encode(*sig)}};
  }
  // The stored (ciphertext) bytes of the first file of package `name`.
  std::string StoredDisk(const std::string& name) {
    auto p = Open(name);
    if (p == nullptr || p->files().empty()) return "";
    auto f = p->OpenStoredFile(p->files()[0].id);
    EXPECT_OK(f);
    if (!f.ok()) return "";
    auto size = (*f)->Size();
    EXPECT_OK(size);
    std::string out(*size, '\0');
    auto got = (*f)->Read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size()));
    EXPECT_OK(got);
    return out;
  }
};

TEST_F(KeyRotationTest, OlderVersionsReleaseUntilRetiredAndTheTagsVersionSelectsTheKey) {
  const std::string a = SignUp("a");
  SealAndUpload("a", "v1.ova", {"--policy", kAnyTagPolicy});
  EnrollHost({"region=demo"});
  ASSERT_EQ(Open("v1.ova")->tag().key_version, 1u);

  // Rotation: a new key pair at the KMS, its certificate verified and written.
  json rotated = RotateKey("a");
  EXPECT_EQ(rotated.value("version", 0), 2) << rotated.dump();
  EXPECT_EQ(rotated.value("verified", false), true);
  SealAndUpload("a", "v2.ova", {"--policy", kAnyTagPolicy});
  auto v1 = Open("v1.ova");
  auto v2 = Open("v2.ova");
  ASSERT_NE(v2, nullptr);
  EXPECT_EQ(v2->tag().key_version, 2u);
  EXPECT_NE(v2->tag().key_id, v1->tag().key_id);
  // fetch-cert returns the newest version.
  json fetched = CustomerJson("a", {"fetch-cert", "--out", dir_.File("a/again.pem"), "--kms-ca", kms_.ca()});
  EXPECT_EQ(fetched.value("version", 0), 2);
  EXPECT_EQ(vmseal::testing::ReadFileOrDie(dir_.File("a/again.pem")),
            vmseal::testing::ReadFileOrDie(dir_.File("a/customer.pem")));

  // Both versions release while neither is retired.
  PlaceJobDirectly("v1.ova", "job-1");
  PlaceJobDirectly("v2.ova", "job-2");
  ASSERT_OK(HostRelease("v1.ova", "job-1"));
  ASSERT_OK(HostRelease("v2.ova", "job-2"));

  // The newest version cannot be retired; an unknown one is not found.
  std::string out;
  EXPECT_NE(Customer("a", {"retire-key", "--version", "2"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("key_version_current"));
  EXPECT_NE(Customer("a", {"retire-key", "--version", "7"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("unknown_key_version"));
  // Retiring version 1: its packages are refused from then on, version 2's not.
  ASSERT_EQ(Customer("a", {"retire-key", "--version", "1"}, &out), 0) << out;
  PlaceJobDirectly("v1.ova", "job-3");
  PlaceJobDirectly("v2.ova", "job-4");
  EXPECT_STATUS(HostRelease("v1.ova", "job-3"), StatusCode::kPermissionDenied, "key_version_retired");
  ASSERT_OK(HostRelease("v2.ova", "job-4"));
  // Retiring it again changes nothing.
  EXPECT_NE(Customer("a", {"retire-key", "--version", "1"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("key_version_retired"));

  std::vector<json> retired = Audit("customer_key.retire");
  ASSERT_EQ(retired.size(), 1u);
  EXPECT_EQ(retired[0]["version"], 1);
  EXPECT_EQ(retired[0]["key_id"], Audit("customer_key.create")[0]["key_id"]);
  std::vector<std::string> denied;
  for (const json& d : Audit("customer_key.deny")) denied.push_back(d.value("reason", ""));
  EXPECT_THAT(denied, ElementsAre("key_version_current", "unknown_key_version", "key_version_retired"));
  EXPECT_THAT(AuditReasons("release.deny"), ElementsAre("key_version_retired"));
  EXPECT_EQ(Audit("release.grant").size(), 3u);
  std::vector<int64_t> created;
  for (const json& d : Audit("customer_key.create")) created.push_back(d.value("version", int64_t{0}));
  EXPECT_THAT(created, ElementsAre(1, 2));
}

// `customer rewrap`: the KMS re-wraps an image's data key from version 1 to
// the newest version on the customer's signature, the disk ciphertext is
// kept (streamKeyVersion), the old version is retired by the customer's
// signed request, and the image still releases and decrypts; a package that
// was not re-wrapped is refused with its reason and cannot be re-wrapped
// any more. Neither a re-wrap nor a retirement goes through on the portal's
// word.
TEST_F(KeyRotationTest, RewrapMovesAnImageToTheNewestVersionSoTheOldOneRetiresAndTheImageStillOpens) {
  const std::string a = SignUp("a");
  const std::string v1_cert = vmseal::testing::ReadFileOrDie(dir_.File("a/customer.pem"));
  // The customer's own escrow key (package.md §4.2) for the first image.
  auto escrow = crypto::PrivateKey::Generate(crypto::KeyType::kX25519);
  ASSERT_OK(escrow);
  {
    auto pem = escrow->ToPem();
    ASSERT_OK(pem);
    vmseal::testing::WriteFileOrDie(dir_.File("a/escrow-key.pem"), std::string(crypto::AsStringView(pem->UnsafeSpan())));
    vmseal::testing::WriteFileOrDie(dir_.File("a/escrow.pem"), escrow->Public().ToPem());
  }
  const std::string image =
      SealAndUpload("a", "v1.ova", {"--policy", kAnyTagPolicy, "--escrow-cert", dir_.File("a/escrow.pem")});
  const std::string stale = SealAndUpload("a", "stale.ova", {"--policy", kAnyTagPolicy});
  ASSERT_FALSE(image.empty());
  ASSERT_FALSE(stale.empty());
  EnrollHost({"region=demo"});
  auto signing = crypto::LoadPrivateKeyFile(dir_.File("a/signing-key.pem"));
  ASSERT_OK(signing);
  auto forger = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(forger);
  const std::vector<std::string> rewrap = {"rewrap", image, "--kms-ca", kms_.ca(), "--work-dir", dir_.File("a")};
  std::string out;
  // At the newest version already: refused, nothing changed or written.
  EXPECT_NE(Customer("a", rewrap, &out), 0);
  EXPECT_THAT(out, HasSubstr("key_version_current"));
  EXPECT_EQ(CustomerJson("a", {"images"})["images"].size(), 2u);
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("a/" + image + ".rewrapped.ova")));
  RotateKey("a");
  const std::string v2_cert = vmseal::testing::ReadFileOrDie(dir_.File("a/customer.pem"));

  // The portal on its own (its mTLS identity at the KMS): an authorization
  // signed by another key, one signed by the customer but naming an older
  // certificate than the newest, and a retirement without or with a forged
  // signature, or signed for another version: all refused, nothing moves.
  auto portal = Kms("portal");
  EXPECT_STATUS(portal->Post("/v1/customers/" + a + "/key-rewraps", RewrapBody("v1.ova", v2_cert, 2, *forger)),
                StatusCode::kPermissionDenied, "bad_authorization");
  EXPECT_STATUS(portal->Post("/v1/customers/" + a + "/key-rewraps", RewrapBody("v1.ova", v1_cert, 1, *signing)),
                StatusCode::kPermissionDenied, "destination_not_newest");
  const std::string retire = "/v1/customers/" + a + "/key-versions/1/retire";
  EXPECT_STATUS(portal->Post(retire, json::object()), StatusCode::kPermissionDenied, "bad_signature");
  EXPECT_STATUS(portal->Post(retire, RetireBody(a, 1, *forger)), StatusCode::kPermissionDenied, "bad_signature");
  EXPECT_STATUS(portal->Post("/v1/customers/" + a + "/key-versions/2/retire", RetireBody(a, 1, *signing)),
                StatusCode::kPermissionDenied, "request_mismatch");
  EXPECT_STATUS(portal->Post(retire, RetireBody(a, 1, *signing, ::time(nullptr) - 3600)),
                StatusCode::kPermissionDenied, "stale_request");
  EXPECT_TRUE(Audit("customer_key.retire").empty());
  EXPECT_TRUE(Audit("customer_key.rewrap").empty());

  // The customer re-wraps: version 2's key and tag, version 1 for the
  // streams, the same ciphertext, signed again; the old image is replaced.
  json r = CustomerJson("a", rewrap);
  EXPECT_EQ(r.value("from_version", 0), 1) << r.dump();
  EXPECT_EQ(r.value("to_version", 0), 2);
  const std::string moved = r.value("new_image_id", "");
  ASSERT_FALSE(moved.empty()) << r.dump();
  const std::string package = "a/" + image + ".rewrapped.ova";
  auto v1 = Open("v1.ova");
  auto v2 = Open(package);
  ASSERT_NE(v2, nullptr);
  EXPECT_EQ(v2->tag().key_version, 2u);
  EXPECT_EQ(v2->tag().stream_key_version, 1u);
  EXPECT_EQ(v2->tag().image_id, v1->tag().image_id);
  EXPECT_NE(v2->tag().key_id, v1->tag().key_id);
  EXPECT_TRUE(v2->is_signed());
  EXPECT_EQ(StoredDisk(package), StoredDisk("v1.ova"));
  json images = CustomerJson("a", {"images"})["images"];
  ASSERT_EQ(images.size(), 2u) << images.dump();
  for (const json& i : images) EXPECT_NE(i.value("image_id", ""), image);
  // The customer's escrow copy survives the re-wrap: `vmseal unseal
  // --escrow-key` opens the package offline, byte-exact.
  EXPECT_TRUE(v2->escrow_key().has_value());
  ASSERT_EQ(vmseal::testing::RunCommand({vmseal::testing::VmsealBinary(), "unseal", dir_.File(package),
                                         "--escrow-key", dir_.File("a/escrow-key.pem"), "-o",
                                         dir_.File("escrowed")},
                                        &out, 60),
            0)
      << out;
  EXPECT_EQ(vmseal::testing::ReadFileOrDie(dir_.File("escrowed/disk1.raw")),
            vmseal::testing::ReadFileOrDie(dir_.File("disk.raw")));
  // One authorization, one re-wrap: the customer's own, sent twice.
  const json once = RewrapBody("v1.ova", v2_cert, 2, *signing);
  ASSERT_OK(portal->Post("/v1/customers/" + a + "/key-rewraps", once));
  EXPECT_STATUS(portal->Post("/v1/customers/" + a + "/key-rewraps", once), StatusCode::kPermissionDenied,
                "authorization_replayed");

  // The customer retires version 1 (signed): the re-wrapped image releases
  // and its key decrypts the disk; the package never re-wrapped is refused.
  ASSERT_EQ(Customer("a", {"retire-key", "--version", "1"}, &out), 0) << out;
  PlaceJobDirectly(package, "job-1");
  auto released = HostRelease(package, "job-1");
  ASSERT_OK(released);
  auto data_key = engine_->Decrypt(released->rewrapped_key, released->label);
  ASSERT_OK(data_key);
  {
    auto f = Env::Default()->NewWritableFile(dir_.File("disk.out"), 0600);
    ASSERT_OK(f);
    ASSERT_OK(v2->DecryptFile(v2->files()[0].id, *data_key, f->get()));
    ASSERT_OK((*f)->Close());
  }
  EXPECT_EQ(vmseal::testing::ReadFileOrDie(dir_.File("disk.out")),
            vmseal::testing::ReadFileOrDie(dir_.File("disk.raw")));
  PlaceJobDirectly("stale.ova", "job-2");
  EXPECT_STATUS(HostRelease("stale.ova", "job-2"), StatusCode::kPermissionDenied, "key_version_retired");
  // ... and cannot be re-wrapped any more: refused, nothing changed.
  EXPECT_NE(Customer("a", {"rewrap", stale, "--kms-ca", kms_.ca(), "--work-dir", dir_.File("a")}, &out), 0);
  EXPECT_THAT(out, HasSubstr("key_version_retired"));
  EXPECT_EQ(CustomerJson("a", {"images"})["images"].size(), 2u);
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("a/" + stale + ".rewrapped.ova")));

  std::vector<json> rewraps = Audit("customer_key.rewrap");
  ASSERT_EQ(rewraps.size(), 2u);
  EXPECT_EQ(rewraps[0]["from_version"], 1);
  EXPECT_EQ(rewraps[0]["to_version"], 2);
  EXPECT_EQ(rewraps[0]["image_id"], v1->tag().image_id);
  std::vector<json> retired = Audit("customer_key.retire");
  ASSERT_EQ(retired.size(), 1u);
  EXPECT_EQ(retired[0]["signed_by_customer"], true);
  std::vector<std::string> denied;
  for (const json& d : Audit("customer_key.deny")) denied.push_back(d.value("reason", ""));
  EXPECT_THAT(denied, ElementsAre("bad_authorization", "destination_not_newest", "bad_signature",
                                  "request_mismatch", "authorization_replayed", "key_version_retired"));
  EXPECT_THAT(AuditReasons("lifecycle.deny"), ElementsAre("bad_signature", "stale_request"));
  EXPECT_THAT(AuditReasons("release.deny"), ElementsAre("key_version_retired"));
}

TEST_F(KeyRotationTest, PackageWhoseTagNamesAnotherVersionThanItsKeyIsRefused) {
  const std::string a = SignUp("a");
  const std::string v1_cert = vmseal::testing::ReadFileOrDie(dir_.File("a/customer.pem"));
  EnrollHost({"region=demo"});
  RotateKey("a");
  // Signed by the customer and wrapped to the version-1 key, but its tag
  // claims version 2: the version it names is not the key's, so a retired
  // version cannot be passed off as a newer one (nor a min_key_version
  // rule dodged).
  auto signing = crypto::LoadPrivateKeyFile(dir_.File("a/signing-key.pem"));
  ASSERT_OK(signing);
  ovf::SealOptions o;
  o.inputs = {dir_.File("disk.raw")};
  o.recipient_pem = v1_cert;
  o.tenant = a;
  o.key_version = 2;
  o.signing_key = &*signing;
  o.signing_chain_pem = vmseal::testing::ReadFileOrDie(dir_.File("a/signing-cert.pem"));
  o.release_policy_json = kAnyTagPolicy;
  ASSERT_OK(ovf::SealPackage(Env::Default(), o, dir_.File("claims-v2.ova")));
  json image = CustomerJson("a", {"upload", dir_.File("claims-v2.ova"), "--name", "claims-v2"});
  ASSERT_FALSE(image.value("image_id", "").empty()) << image.dump();
  PlaceJobDirectly("claims-v2.ova", "job-1");
  EXPECT_STATUS(HostRelease("claims-v2.ova", "job-1"), StatusCode::kPermissionDenied, "key_version_mismatch");
  EXPECT_THAT(AuditReasons("release.deny"), ElementsAre("key_version_mismatch"));
  EXPECT_TRUE(Audit("release.grant").empty());
}

TEST_F(KeyRotationTest, ImagePolicyMinKeyVersionRefusesPackagesUnderOlderVersions) {
  const std::string a = SignUp("a");
  const std::string image = SealAndUpload("a", "v1.ova", {"--policy", kAnyTagPolicy});
  EnrollHost({"region=demo"});
  PlaceJobDirectly("v1.ova", "job-1");
  ASSERT_OK(HostRelease("v1.ova", "job-1"));
  RotateKey("a");
  // The customer signs a policy for the image that accepts version 2 and newer.
  std::string out;
  ASSERT_EQ(Customer("a", {"set-policy", image,
                           R"({"flavors":{"anyOf":["good-boot"]},"min_key_version":2})"},
                     &out),
            0)
      << out;
  PlaceJobDirectly("v1.ova", "job-2");
  EXPECT_STATUS(HostRelease("v1.ova", "job-2"), StatusCode::kPermissionDenied, "key_version_too_old");
  EXPECT_THAT(AuditReasons("release.deny"), ElementsAre("key_version_too_old"));
  // A package sealed under version 2 releases.
  SealAndUpload("a", "v2.ova", {"--policy", kAnyTagPolicy});
  PlaceJobDirectly("v2.ova", "job-3");
  ASSERT_OK(HostRelease("v2.ova", "job-3"));
  // A policy with a malformed min_key_version is refused before it is stored.
  EXPECT_NE(Customer("a", {"set-policy", image, R"({"flavors":{"anyOf":["good-boot"]},"min_key_version":0})"},
                     &out),
            0);
  EXPECT_THAT(out, HasSubstr("min_key_version"));
}

}  // namespace
}  // namespace vmseal
