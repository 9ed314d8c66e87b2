// Taking things back (issue 19) through the real binaries: a KMS (`kms
// serve`) and a portal (`csp serve`) on loopback, customers driven by
// `vmseal customer`, the operator by `vmseal kms`, and host-1 (swtpm)
// asking for keys with the host's HTTPS KMS client. Each refusal is checked
// for its reason and for what it left unchanged; the attacks are made with
// the attacker's own credentials (the portal's certificate, another
// customer's signing key, an old request).
#include <unistd.h>

#include <ctime>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "internal/sealed_kms_fixture.h"
#include "kms/lifecycle.h"
#include "kms/store.h"
#include "ovf/policy_document.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using vmseal::testing::kAnyTagPolicy;
using vmseal::testing::ReadFileOrDie;
using vmseal::testing::RunCommand;
using vmseal::testing::VmsealBinary;

const char kStopPolicy[] = R"({"flavors":{"anyOf":["good-boot"]},"on_trust_loss":"stop"})";

class LifecycleTest : public vmseal::testing::SealedKmsFixture {
 protected:
  // `vmseal kms ARGS` with the operator's credentials; its exit code.
  int Operator(std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {VmsealBinary(), "kms"};
    argv.insert(argv.end(), args.begin(), args.end());
    for (const std::string& a : {std::string("--url"), kms_.url(), std::string("--ca"), kms_.ca(),
                                 std::string("--cert"), kms_.dir + "/operator.pem",
                                 std::string("--key"), kms_.dir + "/operator-key.pem"}) {
      argv.push_back(a);
    }
    return RunCommand(argv, out, 60);
  }
  // A lifecycle request body signed with the key in `key_file`.
  json SignedRequest(const std::string& key_file, const kms::LifecycleRequest& req) {
    auto key = crypto::LoadPrivateKeyFile(key_file);
    EXPECT_OK(key);
    auto bytes = kms::SerializeLifecycleRequest(req);
    EXPECT_OK(bytes);
    auto sig = kms::SignLifecycleRequest(*bytes, *key);
    EXPECT_OK(sig);
    return {{"document", crypto::Base64Encode(crypto::AsBytes(*bytes))},
            {"signature", crypto::Base64Encode(*sig)}};
  }
  kms::LifecycleRequest Revoke(const std::string& tenant, const std::string& image_id) {
    return {"revoke_image", tenant, image_id, static_cast<int64_t>(::time(nullptr)), -1};
  }
  // The KMS's lifecycle marks of `kind`, as the operator lists them.
  json Marks(const std::string& kind) {
    auto got = Kms("operator")->Get("/v1/lifecycle/" + kind);
    EXPECT_OK(got);
    return got.ok() ? (*got)["marks"] : json::array();
  }
};

TEST_F(LifecycleTest, ARevokedImageIsNeverReleasedGrantedOrPlacedAgain) {
  const std::string a = SignUp("a");
  const std::string image = SealAndUpload("a", "a.ova", {"--policy", kAnyTagPolicy});
  const std::string tagged = Open("a.ova")->tag().image_id;
  EnrollHost({"region=demo"});
  PlaceJobDirectly("a.ova", "job-1");
  PlaceJobDirectly("a.ova", "job-2");
  ASSERT_OK(HostRelease("a.ova", "job-1"));
  // The customer revokes it: signed with its key, relayed by the portal.
  std::string out;
  ASSERT_EQ(Customer("a", {"revoke", image}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(R"("state": "revoked")"));
  // The grant made before is worthless, no new grant, no placement.
  EXPECT_STATUS(HostRelease("a.ova", "job-2"), StatusCode::kPermissionDenied, "image_revoked");
  EXPECT_STATUS(TryPlaceJobDirectly("a.ova", "job-3"), StatusCode::kPermissionDenied, "image_revoked");
  EXPECT_THAT(PlacementReason("a.ova"), HasSubstr(R"("reason":"image_revoked")"));
  // Revoking again changes nothing: one audit record, the first mark.
  ASSERT_EQ(Customer("a", {"revoke", image}, &out), 0) << out;
  std::vector<json> revoked = Audit("image.revoke");
  ASSERT_EQ(revoked.size(), 1u);
  EXPECT_EQ(revoked[0]["tenant"], a);
  EXPECT_EQ(revoked[0]["image_id"], tagged);
  EXPECT_FALSE(revoked[0].value("signer_key_id", "").empty());
  EXPECT_EQ(Audit("release.grant").size(), 1u);
  EXPECT_THAT(AuditReasons("release.deny"), ::testing::ElementsAre("image_revoked"));
  ASSERT_EQ(Marks("image").size(), 1u);
  // The customer sees its revocation in its own, verified audit of the image.
  ASSERT_EQ(Customer("a", {"audit", image, "--kms-ca", kms_.ca()}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("image.revoke"));
}

TEST_F(LifecycleTest, PortalOrAnotherCustomerCannotRevokeOrForgeARevocation) {
  const std::string a = SignUp("a");
  const std::string b = SignUp("b");
  const std::string image = SealAndUpload("a", "a.ova", {"--policy", kAnyTagPolicy});
  const std::string tagged = Open("a.ova")->tag().image_id;
  EnrollHost({"region=demo"});
  auto portal = Kms("portal");
  const std::string path = "/v1/lifecycle-requests/" + a;
  // B signs a revocation of A's image: as A's it is not A's signature, as
  // B's it names another tenant.
  EXPECT_STATUS(portal->Post(path, SignedRequest(dir_.File("b/signing-key.pem"), Revoke(a, tagged))),
                StatusCode::kPermissionDenied, "bad_signature");
  EXPECT_STATUS(portal->Post("/v1/lifecycle-requests/" + b,
                             SignedRequest(dir_.File("b/signing-key.pem"), Revoke(a, tagged))),
                StatusCode::kPermissionDenied, "tenant_mismatch");
  // A's own request from an hour ago, kept by the portal: stale.
  kms::LifecycleRequest old = Revoke(a, tagged);
  old.issued_unix -= 3600;
  EXPECT_STATUS(portal->Post(path, SignedRequest(dir_.File("a/signing-key.pem"), old)),
                StatusCode::kPermissionDenied, "stale_request");
  // A's signed policy document replayed as a lifecycle request.
  json policy = {{"document", crypto::Base64Encode(crypto::AsBytes(std::string("{}")))}};
  {
    auto key = crypto::LoadPrivateKeyFile(dir_.File("a/signing-key.pem"));
    ASSERT_OK(key);
    ovf::PolicyDocument d{a, tagged, 5, "2026-12-06T02:00:00Z", json::parse(kAnyTagPolicy)};
    auto bytes = ovf::SerializePolicyDocument(d);
    ASSERT_OK(bytes);
    auto sig = ovf::SignPolicyDocument(*bytes, *key);
    ASSERT_OK(sig);
    policy = {{"document", crypto::Base64Encode(crypto::AsBytes(*bytes))},
              {"signature", crypto::Base64Encode(*sig)}};
  }
  EXPECT_STATUS(portal->Post(path, policy), StatusCode::kInvalidArgument, "malformed_request");
  // A request altered after signing (another image).
  json altered = SignedRequest(dir_.File("a/signing-key.pem"), Revoke(a, tagged));
  auto raw = crypto::Base64Decode(altered["document"].get<std::string>());
  ASSERT_OK(raw);
  std::string doc(raw->begin(), raw->end());
  doc.replace(doc.find(tagged), tagged.size(), std::string(tagged.size(), 'x'));
  altered["document"] = crypto::Base64Encode(crypto::AsBytes(doc));
  EXPECT_STATUS(portal->Post(path, altered), StatusCode::kPermissionDenied, "bad_signature");
  // Disable and host revocation are the operator's: the portal is refused.
  EXPECT_STATUS(portal->Post("/v1/customers/" + a + "/disable", json::object()),
                StatusCode::kPermissionDenied, "forbidden");
  EXPECT_STATUS(portal->Post("/v1/hosts/host-1/revoke", json::object()), StatusCode::kPermissionDenied,
                "forbidden");
  // B through the portal cannot even name A's image.
  std::string out;
  EXPECT_NE(Customer("b", {"revoke", image}, &out), 0);
  // Nothing changed: A's image is released as before, every refusal audited.
  PlaceJobDirectly("a.ova", "job-1");
  ASSERT_OK(HostRelease("a.ova", "job-1"));
  EXPECT_TRUE(Marks("image").empty());
  EXPECT_TRUE(Marks("customer").empty());
  EXPECT_TRUE(Marks("host").empty());
  EXPECT_TRUE(Audit("image.revoke").empty());
  EXPECT_THAT(AuditReasons("lifecycle.deny"),
              ::testing::ElementsAre("bad_signature", "tenant_mismatch", "stale_request",
                                     "malformed_request", "bad_signature", "forbidden", "forbidden"));
}

TEST_F(LifecycleTest, ARevokedHostGetsNoPlacementReleaseOrEnrollment) {
  SignUp("a");
  SealAndUpload("a", "a.ova", {"--policy", kAnyTagPolicy});
  EnrollHost({"region=demo"});
  PlaceJobDirectly("a.ova", "job-1");
  std::string out;
  // Bad input first: changes nothing.
  EXPECT_NE(Operator({"host", "revoke", "--host", "no-such-host"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("unknown_host"));
  EXPECT_NE(Operator({"host", "revoke", "--host", "bad/host"}, &out), 0);
  EXPECT_TRUE(Marks("host").empty());
  ASSERT_EQ(Operator({"host", "revoke", "--host", "host-1", "--reason", "decommissioned"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(R"("state": "revoked")"));
  // The grant made before it is worthless; nothing new is granted or placed.
  EXPECT_STATUS(HostRelease("a.ova", "job-1"), StatusCode::kPermissionDenied, "host_revoked");
  EXPECT_STATUS(TryPlaceJobDirectly("a.ova", "job-2"), StatusCode::kPermissionDenied, "host_revoked");
  EXPECT_THAT(PlacementReason("a.ova"), HasSubstr(R"("reason":"host_revoked")"));
  // The host cannot enroll its way back.
  auto req = engine_->EnrollmentRequest();
  ASSERT_OK(req);
  EXPECT_STATUS(host_->BeginEnrollment(*req), StatusCode::kPermissionDenied, "host_revoked");
  // Listed as unenrolled; audited once with the reason.
  auto hosts = Kms("operator")->Get("/v1/hosts");
  ASSERT_OK(hosts);
  EXPECT_THAT(hosts->dump(), HasSubstr(R"("enrolled":false)"));
  std::vector<json> revoked = Audit("host.revoke");
  ASSERT_EQ(revoked.size(), 1u);
  EXPECT_EQ(revoked[0]["reason"], "decommissioned");
  EXPECT_TRUE(Audit("release.grant").empty());
}

TEST_F(LifecycleTest, ADisabledCustomerGetsNoReleaseUntilEnabledAgain) {
  const std::string a = SignUp("a");
  SealAndUpload("a", "a.ova", {"--policy", kAnyTagPolicy});
  EnrollHost({"region=demo"});
  PlaceJobDirectly("a.ova", "job-1");
  std::string out;
  EXPECT_NE(Operator({"customer", "disable", "--customer", "nobody"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("unknown_customer"));
  ASSERT_EQ(Operator({"customer", "disable", "--customer", a, "--reason", "unpaid"}, &out), 0) << out;
  EXPECT_STATUS(HostRelease("a.ova", "job-1"), StatusCode::kPermissionDenied, "customer_disabled");
  EXPECT_STATUS(TryPlaceJobDirectly("a.ova", "job-2"), StatusCode::kPermissionDenied, "customer_disabled");
  ASSERT_EQ(Operator({"customer", "enable", "--customer", a}, &out), 0) << out;
  ASSERT_OK(HostRelease("a.ova", "job-1"));
  EXPECT_EQ(Audit("customer.disable").size(), 1u);
  EXPECT_EQ(Audit("customer.enable").size(), 1u);
  EXPECT_THAT(AuditReasons("release.deny"), ::testing::ElementsAre("customer_disabled"));
}

TEST_F(LifecycleTest, AClosedAccountsKeysAreDestroyedAndACopyOfItsPackageIsNeverReleased) {
  const std::string a = SignUp("a");
  SealAndUpload("a", "a.ova", {"--policy", kAnyTagPolicy});
  // A copy of the package taken before the account closes.
  vmseal::testing::WriteFileOrDie(dir_.File("copy.ova"), ReadFileOrDie(dir_.File("a.ova")));
  EnrollHost({"region=demo"});
  PlaceJobDirectly("a.ova", "job-1");
  std::string out;
  EXPECT_NE(Customer("a", {"close-account", "--grace-seconds", "-5"}, &out), 0);
  EXPECT_TRUE(Marks("customer").empty());
  ASSERT_EQ(Customer("a", {"close-account", "--grace-seconds", "2"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr(R"("state": "closing")"));
  // Within the grace: no release, and the operator cannot undo it.
  EXPECT_STATUS(HostRelease("a.ova", "job-1"), StatusCode::kPermissionDenied, "account_closing");
  EXPECT_NE(Operator({"customer", "enable", "--customer", a}, &out), 0);
  EXPECT_THAT(out, HasSubstr("account_closing"));
  ::sleep(3);
  // After it: the keys are gone from the store, for good.
  EXPECT_STATUS(HostRelease("copy.ova", "job-1"), StatusCode::kPermissionDenied, "key_destroyed");
  EXPECT_STATUS(TryPlaceJobDirectly("copy.ova", "job-2"), StatusCode::kPermissionDenied, "key_destroyed");
  json marks = Marks("customer");
  ASSERT_EQ(marks.size(), 1u);
  EXPECT_EQ(marks[0]["state"], "destroyed");
  std::vector<json> destroyed = Audit("customer.keys_destroy");
  ASSERT_EQ(destroyed.size(), 1u);
  EXPECT_EQ(destroyed[0]["customer_id"], a);
  EXPECT_EQ(Audit("customer.close").size(), 1u);
  auto store = kms::Store::Open(kms_.dir + "/kms.db");
  ASSERT_OK(store);
  auto keys = (*store)->ListCustomerKeys(a);
  ASSERT_OK(keys);
  EXPECT_TRUE(keys->empty());
  EXPECT_TRUE(Audit("release.grant").empty());
}

// kms.json sets the grace (2 s) and the destruction timer (every second):
// the keys go at their due time with no request to the KMS at all.
class TimedKeyDestructionTest : public LifecycleTest {
 protected:
  void EditKmsConfig(json* config) override {
    (*config)["account_grace_seconds"] = 2;
    (*config)["key_destruction_interval_seconds"] = 1;
  }
};

TEST_F(TimedKeyDestructionTest, AClosedAccountsKeysAreDestroyedOnTimeWithoutAnyRequest) {
  const std::string a = SignUp("a");
  SealAndUpload("a", "a.ova", {"--policy", kAnyTagPolicy});
  std::string out;
  // No --grace-seconds: kms.json's grace applies.
  ASSERT_EQ(Customer("a", {"close-account"}, &out), 0) << out;
  const size_t brace = out.find('{');
  json closed = json::parse(brace == std::string::npos ? "" : out.substr(brace), nullptr, false);
  ASSERT_TRUE(closed.is_object()) << out;
  EXPECT_THAT(closed.dump(), HasSubstr(R"("state":"closing")"));
  auto store = kms::Store::Open(kms_.dir + "/kms.db");
  ASSERT_OK(store);
  auto mark = (*store)->GetLifecycle("customer", a);
  ASSERT_OK(mark);
  EXPECT_EQ(mark->state, "closing");
  EXPECT_EQ(mark->due_unix - mark->since_unix, 2);
  auto keys = (*store)->ListCustomerKeys(a);
  ASSERT_OK(keys);
  ASSERT_FALSE(keys->empty());
  // Nobody asks the KMS anything now; its timer destroys the keys.
  const int64_t due = mark->due_unix;
  bool destroyed = false;
  for (int i = 0; i < 100 && !destroyed; ++i) {
    ::usleep(100 * 1000);
    auto m = (*store)->GetLifecycle("customer", a);
    destroyed = m.ok() && m->state == "destroyed";
  }
  ASSERT_TRUE(destroyed) << "keys not destroyed within 10 s of the close (grace 2 s)";
  const int64_t now = static_cast<int64_t>(::time(nullptr));
  EXPECT_GE(now, due);
  EXPECT_LE(now, due + 3) << "destroyed late";
  keys = (*store)->ListCustomerKeys(a);
  ASSERT_OK(keys);
  EXPECT_TRUE(keys->empty());
  std::vector<json> audit = Audit("customer.keys_destroy");
  ASSERT_EQ(audit.size(), 1u);
  EXPECT_EQ(audit[0]["customer_id"], a);
  EXPECT_EQ(audit[0]["due_unix"], due);
  // And a package of the account is never released again.
  EnrollHost({"region=demo"});
  EXPECT_STATUS(HostRelease("a.ova", "job-1"), StatusCode::kPermissionDenied, "key_destroyed");
}

TEST_F(LifecycleTest, RevokingAnImageStopsItsLaunchesOrReportsThemAsItsPolicySays) {
  SignUp("a");
  const std::string stop = SealAndUpload("a", "stop.ova", {"--policy", kStopPolicy});
  const std::string report = SealAndUpload("a", "report.ova", {"--policy", kAnyTagPolicy});
  // Launches at the portal (no host at the portal: they stay queued).
  json j1 = CustomerJson("a", {"launch", stop});
  json j2 = CustomerJson("a", {"launch", report});
  ASSERT_FALSE(j1.value("job_id", "").empty()) << j1.dump();
  json r1 = CustomerJson("a", {"revoke", stop});
  EXPECT_EQ(r1["stopped"], json::array({j1["job_id"]})) << r1.dump();
  EXPECT_EQ(r1["kms"]["on_trust_loss"], "stop");
  json r2 = CustomerJson("a", {"revoke", report});
  EXPECT_EQ(r2["reported"], json::array({j2["job_id"]})) << r2.dump();
  EXPECT_TRUE(r2["stopped"].empty());
  json s1 = CustomerJson("a", {"status", j1["job_id"].get<std::string>()});
  EXPECT_EQ(s1.value("state", ""), "deleted") << s1.dump();
  // delete-image: revoked at the KMS (already) and gone from the portal.
  json d = CustomerJson("a", {"delete-image", report});
  EXPECT_EQ(d["deleted"], true);
  std::string out;
  EXPECT_NE(Customer("a", {"launch", report}, &out), 0);
}

}  // namespace
}  // namespace vmseal
