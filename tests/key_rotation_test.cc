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
#include "internal/sealed_kms_fixture.h"
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
