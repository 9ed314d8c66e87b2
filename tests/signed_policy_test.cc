// Attacker tests for the customer's release policy (issue 14, "the policy
// travels with the image") through the real `vmseal` binary: a KMS (`kms
// serve`, with the swtpm manufacturer CA) and a portal (`csp serve`) on
// loopback, customers driven by `vmseal customer` and `vmseal seal`, a host
// whose TPM is swtpm asking for keys with the host's HTTPS KMS client, and
// the portal's own mTLS identity calling the KMS by hand where the portal
// misbehaves.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "ovf/policy_document.h"
#include "internal/sealed_kms_fixture.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using vmseal::testing::kAnyTagPolicy;
using vmseal::testing::kGoldPolicy;
using vmseal::testing::RunCommand;
using vmseal::testing::VmsealBinary;

class SignedPolicyTest : public vmseal::testing::SealedKmsFixture {};

TEST_F(SignedPolicyTest, PortalCertificateCannotWriteACustomersPolicyOrDefault) {
  const std::string a = SignUp("a");
  SealAndUpload("a", "a.ova", {});
  const std::string image = Open("a.ova")->tag().image_id;
  auto portal = Kms("portal");
  const json weak = json::parse(kAnyTagPolicy);
  for (const std::string& path : {std::string("/v1/policies/_default"), "/v1/policies/" + a,
                                  "/v1/policies/" + a + "/" + image}) {
    SCOPED_TRACE(path);
    EXPECT_STATUS(portal->Put(path, weak), StatusCode::kPermissionDenied, "policy_forbidden");
    // Nothing was written.
    EXPECT_STATUS(Kms("operator")->Get(path), StatusCode::kNotFound, "");
  }
  EXPECT_THAT(AuditReasons("request.deny"),
              ::testing::Contains("policy_forbidden").Times(3));
  EXPECT_TRUE(Audit("policy.put").empty());
}

TEST_F(SignedPolicyTest, PortalReplayingOrAlteringASignedPolicyIsRefused) {
  const std::string a = SignUp("a");
  const std::string b = SignUp("b");
  const std::string image_id = SealAndUpload("a", "a.ova", {});
  const std::string tagged = Open("a.ova")->tag().image_id;
  // A signs a weak policy, then a strict one.
  json v1 = CustomerJson("a", {"set-policy", image_id, kAnyTagPolicy});
  ASSERT_EQ(v1["version"], 1) << v1.dump();
  json v2 = CustomerJson("a", {"set-policy", image_id, kGoldPolicy});
  ASSERT_EQ(v2["version"], 2) << v2.dump();
  auto portal = Kms("portal");
  const std::string path = "/v1/signed-policies/" + a + "/" + tagged;
  // The portal kept A's version 1 document and relays it again.
  json replay = SignedBody(dir_.File("a/signing-key.pem"), a, tagged, 1, kAnyTagPolicy);
  EXPECT_STATUS(portal->Put(path, replay), StatusCode::kPermissionDenied, "policy_stale");
  // The portal raises the version of a document A signed: the signature breaks.
  json v9 = replay;
  auto raw = crypto::Base64Decode(v9["document"].get<std::string>());
  ASSERT_OK(raw);
  std::string doc(raw->begin(), raw->end());
  doc.replace(doc.find("\"version\":1"), 11, "\"version\":9");
  v9["document"] = crypto::Base64Encode(crypto::AsBytes(doc));
  EXPECT_STATUS(portal->Put(path, v9), StatusCode::kPermissionDenied, "bad_signature");
  // B signs a policy for A's image: under B's tenant it is not B's image; as
  // A's it is not A's signature.
  json by_b = SignedBody(dir_.File("b/signing-key.pem"), b, tagged, 9, kAnyTagPolicy);
  EXPECT_STATUS(portal->Put("/v1/signed-policies/" + b + "/" + tagged, by_b),
                StatusCode::kPermissionDenied, "tenant_mismatch");
  EXPECT_STATUS(portal->Put(path, by_b), StatusCode::kPermissionDenied, "tenant_mismatch");
  json b_as_a = SignedBody(dir_.File("b/signing-key.pem"), a, tagged, 9, kAnyTagPolicy);
  EXPECT_STATUS(portal->Put(path, b_as_a), StatusCode::kPermissionDenied, "bad_signature");
  // B through the portal as a customer cannot even name A's image.
  std::string out;
  EXPECT_NE(Customer("b", {"set-policy", image_id, kAnyTagPolicy}, &out), 0);
  // A's version 2 stands; every refusal is audited.
  EXPECT_EQ(NewestVersion(a, tagged), 2);
  EXPECT_THAT(AuditReasons("policy.deny"),
              ::testing::ElementsAre("policy_stale", "bad_signature", "tenant_mismatch",
                                     "tenant_mismatch", "bad_signature"));
}

TEST_F(SignedPolicyTest, MisbehavingPortalPlacingAJobOnAHostTheSealedPolicyExcludesIsDenied) {
  SignUp("a");
  // A seals the policy into the package: only hosts tagged tier=gold.
  SealAndUpload("a", "gold.ova", {"--policy", kGoldPolicy});
  // ... and a second image for another flavor than the host's.
  SealAndUpload("a", "other.ova",
                {"--policy", R"({"flavors":{"anyOf":["other-boot"]}})"});
  EnrollHost({"region=demo"});
  // The KMS learnt each sealed policy from the signed descriptor the portal
  // registered at upload: its placement check already excludes host-1.
  EXPECT_THAT(PlacementReason("gold.ova"), HasSubstr(R"("reason":"tags")"));
  EXPECT_THAT(PlacementReason("other.ova"), HasSubstr(R"("reason":"pcr_policy")"));
  // The portal places both jobs on host-1 anyway: no grant.
  EXPECT_STATUS(TryPlaceJobDirectly("gold.ova", "job-gold"), StatusCode::kPermissionDenied, "tags");
  EXPECT_STATUS(TryPlaceJobDirectly("other.ova", "job-other"), StatusCode::kPermissionDenied,
                "pcr_policy");
  std::vector<json> refused = Audit("grant.deny");
  ASSERT_EQ(refused.size(), 2u);
  EXPECT_EQ(refused[0]["reason"], "tags");
  EXPECT_EQ(refused[0]["policy"], "descriptor");
  EXPECT_EQ(refused[0]["job_id"], "job-gold");
  EXPECT_EQ(refused[1]["reason"], "pcr_policy");
  EXPECT_EQ(refused[1]["policy"], "descriptor");
  EXPECT_TRUE(Audit("grant.create").empty());
  // The host asks anyway: there is no grant to release against.
  EXPECT_STATUS(HostRelease("gold.ova", "job-gold"), StatusCode::kPermissionDenied, "no_grant");
  EXPECT_STATUS(HostRelease("other.ova", "job-other"), StatusCode::kPermissionDenied, "no_grant");
  // Checked again at release: host-1 meets the policy when the grant is
  // made, then the operator takes its tier=gold tag away.
  Tag({"region=demo", "tier=gold"});
  PlaceJobDirectly("gold.ova", "job-gold-2");
  Tag({"region=demo"});
  EXPECT_STATUS(HostRelease("gold.ova", "job-gold-2"), StatusCode::kPermissionDenied, "tags");
  std::vector<json> denials = Audit("release.deny");
  ASSERT_EQ(denials.size(), 3u);
  EXPECT_EQ(denials[2]["reason"], "tags");
  EXPECT_EQ(denials[2]["policy"], "descriptor");
  EXPECT_EQ(denials[2]["job_id"], "job-gold-2");
  EXPECT_TRUE(Audit("release.grant").empty());
}

TEST_F(SignedPolicyTest, PortalRegisteringAnImageWithoutItsSignedDescriptorNeverGetsTheKeyReleased) {
  const std::string a = SignUp("a");
  SignUp("b");
  // The operator's customer-wide policy for A would let host-1 in; A's
  // sealed policy would not (it wants tier=gold).
  ASSERT_OK(Kms("operator")->Put("/v1/policies/" + a, json::parse(kAnyTagPolicy)));
  EnrollHost({"region=demo"});
  // A seals two packages that the portal never uploads the honest way: it
  // registers them at the KMS by key id alone, so that the grant is checked
  // against the operator's policy instead of the sealed one.
  for (auto [name, policy] : {std::pair{"gold.ova", kGoldPolicy}, std::pair{"any.ova", kAnyTagPolicy}}) {
    std::string out;
    ASSERT_EQ(RunCommand({VmsealBinary(), "seal", dir_.File("disk.raw"), "--cert",
                          dir_.File("a/customer.pem"), "--policy", policy, "-o", dir_.File(name)},
                         &out, 120),
              0)
        << out;
  }
  PlaceJobDirectly("gold.ova", "job-1");
  PlaceJobDirectly("any.ova", "job-2");
  // The release enforces the sealed policy of the descriptor the customer
  // signed whatever the grant was checked against...
  EXPECT_STATUS(HostRelease("gold.ova", "job-1"), StatusCode::kPermissionDenied, "tags");
  // ... and an image not registered with that descriptor is never released,
  // even to a host its policy admits.
  EXPECT_STATUS(HostRelease("any.ova", "job-2"), StatusCode::kPermissionDenied,
                "descriptor_mismatch");
  // Registering B's signed package texts as A's image is refused and audited.
  SealAndUpload("b", "b.ova", {});
  auto theirs = Open("b.ova");
  auto mine = Open("gold.ova");
  EXPECT_STATUS(Kms("portal")->Put("/v1/images/" + a + "/" + mine->tag().image_id,
                                   {{"key_id", mine->tag().key_id},
                                    {"descriptor_name", theirs->descriptor_name()},
                                    {"descriptor", theirs->descriptor_text()},
                                    {"manifest", theirs->manifest_text()},
                                    {"package_cert", theirs->certificate_text()}}),
                StatusCode::kPermissionDenied, "signer_mismatch");
  std::vector<json> denials = Audit("release.deny");
  ASSERT_EQ(denials.size(), 2u);
  EXPECT_EQ(denials[0]["reason"], "tags");
  EXPECT_EQ(denials[0]["policy"], "descriptor");
  EXPECT_EQ(denials[1]["reason"], "descriptor_mismatch");
  EXPECT_TRUE(Audit("release.grant").empty());
  EXPECT_THAT(AuditReasons("request.deny"), ::testing::Contains("signer_mismatch"));
}

TEST_F(SignedPolicyTest, PolicySetWithCustomerSetPolicyIsEnforcedAtRelease) {
  SignUp("a");
  const std::string image_id = SealAndUpload("a", "a.ova", {});
  // Bad input first: a policy the KMS could not evaluate is refused by the
  // CLI before anything is signed or sealed, and changes nothing.
  std::string out;
  EXPECT_NE(Customer("a", {"set-policy", image_id, R"({"flavors":{"someOf":["x"]}})"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("the policy"));
  EXPECT_NE(RunCommand({VmsealBinary(), "seal", dir_.File("disk.raw"), "--cert",
                        dir_.File("a/customer.pem"), "--policy", "[1]", "-o", dir_.File("bad.ova")},
                       &out, 60),
            0);
  EXPECT_THAT(out, HasSubstr("--policy"));
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("bad.ova")));
  EXPECT_EQ(NewestVersion(Open("a.ova")->tag().tenant, Open("a.ova")->tag().image_id), 0);
  json set = CustomerJson("a", {"set-policy", image_id, kGoldPolicy});
  ASSERT_EQ(set["version"], 1) << set.dump();
  EnrollHost({"region=demo"});
  // A host without the tag the customer's signed policy requires gets no
  // grant.
  EXPECT_STATUS(TryPlaceJobDirectly("a.ova", "job-0"), StatusCode::kPermissionDenied, "tags");
  std::vector<json> refused = Audit("grant.deny");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0]["policy"], "signed:v1");
  // Granted while tagged tier=gold, the tag removed before the release:
  // denied at release.
  Tag({"region=demo", "tier=gold"});
  PlaceJobDirectly("a.ova", "job-1");
  Tag({"region=demo"});
  EXPECT_STATUS(HostRelease("a.ova", "job-1"), StatusCode::kPermissionDenied, "tags");
  // The same host once the operator tags it tier=gold again: granted.
  Tag({"region=demo", "tier=gold"});
  PlaceJobDirectly("a.ova", "job-2");
  auto released = HostRelease("a.ova", "job-2");
  ASSERT_OK(released);
  EXPECT_FALSE(released->rewrapped_key.empty());
  std::vector<json> grants = Audit("release.grant");
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0]["policy"], "signed:v1");
  EXPECT_EQ(grants[0]["job_id"], "job-2");
  std::vector<json> denials = Audit("release.deny");
  ASSERT_EQ(denials.size(), 1u);
  EXPECT_EQ(denials[0]["policy"], "signed:v1");
  EXPECT_EQ(denials[0]["reason"], "tags");
}

}  // namespace
}  // namespace vmseal
