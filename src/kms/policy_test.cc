#include "kms/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;

const std::string kA(64, 'a');
const std::string kB(64, 'b');
const std::string kC(64, 'c');

Flavor MakeFlavor(const std::string& name, std::map<std::string, std::string> pcrs) {
  json bank = json::object();
  for (const auto& [k, v] : pcrs) bank[k] = v;
  return {name, json{{"sha256", bank}}};
}

class PolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    flavors_["fw"] = MakeFlavor("fw", {{"0", kA}});
    flavors_["os"] = MakeFlavor("os", {{"7", kB}});
    flavors_["both"] = MakeFlavor("both", {{"0", kA}, {"7", kB}});
    facts_.pcrs = {{0, kA}, {7, kB}};
    facts_.host_tags = {"region=eu-west", "tier=gold"};
    facts_.evidence_age_seconds = 5;
    facts_.now_unix = 100000;
  }
  PolicyDecision Eval(const json& policy) { return EvaluatePolicy(policy, flavors_, facts_); }

  std::map<std::string, Flavor> flavors_;
  PolicyFacts facts_;
};

TEST_F(PolicyTest, AnyOfAllowsWhenOneFlavorMatches) {
  facts_.pcrs[7] = kC;  // "os" no longer matches, "fw" does
  auto d = Eval({{"flavors", {{"anyOf", {"os", "fw"}}}}});
  EXPECT_TRUE(d.allowed) << d.message;
  EXPECT_EQ(d.reason, "ok");
}

TEST_F(PolicyTest, MinKeyVersionRefusesOlderPackagesAndIsSkippedWhereNoVersionIsKnown) {
  const json policy = {{"flavors", {{"anyOf", {"fw"}}}}, {"min_key_version", 3}};
  for (uint64_t v : {1u, 2u}) {
    SCOPED_TRACE(v);
    facts_.key_version = v;
    auto d = Eval(policy);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.reason, "key_version_too_old");
    EXPECT_THAT(d.message, ::testing::HasSubstr("requires version 3"));
  }
  for (uint64_t v : {3u, 4u}) {
    facts_.key_version = v;
    EXPECT_TRUE(Eval(policy).allowed) << v;
  }
  facts_.key_version = 0;  // placement: the package's version is not known
  EXPECT_TRUE(Eval(policy).allowed);
  for (const json& bad : {json(0), json(-1), json("2"), json(1.5)}) {
    SCOPED_TRACE(bad.dump());
    json p = policy;
    p["min_key_version"] = bad;
    EXPECT_STATUS(ValidatePolicy(p), StatusCode::kInvalidArgument, "min_key_version");
  }
}

TEST_F(PolicyTest, AnyOfDeniesWhenNoFlavorMatches) {
  facts_.pcrs[7] = kC;
  auto d = Eval({{"flavors", {{"anyOf", {"os", "both"}}}}});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "pcr_policy");
}

TEST_F(PolicyTest, AllOfNeedsEveryFlavor) {
  EXPECT_TRUE(Eval({{"flavors", {{"allOf", {"fw", "os"}}}}}).allowed);
  facts_.pcrs[0] = kC;
  auto d = Eval({{"flavors", {{"allOf", {"fw", "os"}}}}});
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "pcr_policy");
  EXPECT_NE(d.message.find("fw"), std::string::npos);
}

TEST_F(PolicyTest, FlavorNamingAnUnquotedPcrDoesNotMatch) {
  flavors_["pcr4"] = MakeFlavor("pcr4", {{"4", kA}});
  EXPECT_EQ(Eval({{"flavors", {{"anyOf", {"pcr4"}}}}}).reason, "pcr_policy");
}

TEST_F(PolicyTest, UnknownFlavorNeverMatches) {
  EXPECT_EQ(Eval({{"flavors", {{"anyOf", {"nope"}}}}}).reason, "pcr_policy");
}

TEST_F(PolicyTest, HexCaseDoesNotMatter) {
  std::string upper(64, 'A');
  flavors_["up"] = MakeFlavor("up", {{"0", upper}});
  EXPECT_TRUE(Eval({{"flavors", {{"anyOf", {"up"}}}}}).allowed);
}

TEST_F(PolicyTest, RequiredTags) {
  json p = {{"flavors", {{"anyOf", {"both"}}}}, {"required_tags", {"region=eu-west"}}};
  EXPECT_TRUE(Eval(p).allowed);
  p["required_tags"] = {"region=eu-west", "region=us-east"};
  auto d = Eval(p);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "tags");
  EXPECT_NE(d.message.find("region=us-east"), std::string::npos);
}

TEST_F(PolicyTest, EvidenceAge) {
  json p = {{"flavors", {{"anyOf", {"both"}}}}, {"max_evidence_age_seconds", 5}};
  EXPECT_TRUE(Eval(p).allowed);
  facts_.evidence_age_seconds = 6;
  EXPECT_EQ(Eval(p).reason, "evidence_age");
}

TEST_F(PolicyTest, HistoryWindow) {
  json p = {{"flavors", {{"anyOf", {"both"}}}}, {"history", {{"no_failures_within_seconds", 3600}}}};
  facts_.history = {{"v1", "h", false, "bad_signature", facts_.now_unix - 3601, {}},
                    {"v2", "h", true, "ok", facts_.now_unix - 10, {}}};
  EXPECT_TRUE(Eval(p).allowed);
  facts_.history.push_back({"v3", "h", false, "pcr_digest_mismatch", facts_.now_unix - 3599, {}});
  auto d = Eval(p);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.reason, "history");
  EXPECT_NE(d.message.find("pcr_digest_mismatch"), std::string::npos);
}

TEST_F(PolicyTest, MalformedPolicyFailsClosed) {
  EXPECT_EQ(Eval(json::object()).reason, "no_policy");
  EXPECT_EQ(Eval({{"flavors", {{"oneOf", {"both"}}}}}).reason, "no_policy");
  EXPECT_EQ(Eval(json::array()).reason, "no_policy");
}

TEST_F(PolicyTest, ValidatePolicyRejectsBadShapes) {
  EXPECT_OK(ValidatePolicy({{"flavors", {{"allOf", {"a"}}}},
                            {"required_tags", {"x=y"}},
                            {"max_evidence_age_seconds", 300},
                            {"history", {{"no_failures_within_seconds", 3600}}},
                            {"allow_plain_images", false}}));
  EXPECT_FALSE(ValidatePolicy({{"flavors", {{"anyOf", json::array()}}}}).ok());
  EXPECT_FALSE(ValidatePolicy({{"flavors", {{"anyOf", {"a"}}}}, {"typo", 1}}).ok());
  EXPECT_FALSE(ValidatePolicy({{"flavors", {{"anyOf", {"a"}}}}, {"max_evidence_age_seconds", -1}}).ok());
  EXPECT_FALSE(ValidatePolicy({{"flavors", {{"anyOf", {"a"}}, {"allOf", {"b"}}}}}).ok());
  EXPECT_FALSE(ValidatePolicy({{"flavors", {{"anyOf", {1}}}}}).ok());
  EXPECT_FALSE(ValidatePolicy({{"flavors", {{"anyOf", {"a"}}}}, {"history", {{"x", 1}}}}).ok());
}

TEST_F(PolicyTest, ValidateFlavorPcrs) {
  EXPECT_OK(ValidateFlavorPcrs({{"sha256", {{"0", kA}, {"23", kB}}}}));
  EXPECT_FALSE(ValidateFlavorPcrs({{"sha256", json::object()}}).ok());
  EXPECT_FALSE(ValidateFlavorPcrs({{"sha256", {{"24", kA}}}}).ok());
  EXPECT_FALSE(ValidateFlavorPcrs({{"sha256", {{"0", "abc"}}}}).ok());
  EXPECT_FALSE(ValidateFlavorPcrs({{"sha1", {{"0", kA}}}}).ok());
  auto round = PcrValuesFromJson(PcrValuesToJson({{0, kA}, {7, kB}}));
  ASSERT_OK(round);
  EXPECT_EQ(round->at(7), kB);
}

}  // namespace
}  // namespace vmseal::kms
