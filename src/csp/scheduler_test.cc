#include "csp/scheduler.h"

#include "csp/internal/test_doubles.h"
#include <gmock/gmock.h>

#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::testing::HasSubstr;
using ::vmseal::csp::testing::FakeTrustSource;

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() : hosts_({30}, &clock_), scheduler_(&hosts_, &trust_, &clock_) {}

  // A registered host with a fresh trusted verdict (trusted for a day).
  void AddHost(const std::string& id, uint32_t capacity = 2,
               std::map<std::string, std::string> tags = {{"region", "eu"}}) {
    ASSERT_OK(hosts_.Register({id, capacity, tags}));
    trust_.Set(id, Trusted());
  }
  TrustVerdict Trusted() const {
    return TrustVerdict{true, clock_.NowUnixSeconds(), clock_.NowUnixSeconds() - 86400, ""};
  }
  Placement Place(const ReleasePolicy& policy = {}, std::map<std::string, uint32_t> load = {},
                  std::map<std::string, std::string> excluded = {}) {
    return scheduler_.Place(policy, load, excluded);
  }
  static const HostDecision& For(const Placement& p, const std::string& id) {
    for (const auto& d : p.decisions) {
      if (d.host_id == id) return d;
    }
    ADD_FAILURE() << "no decision for " << id;
    static HostDecision none;
    return none;
  }
  static std::string Reasons(const HostDecision& d) {
    std::string out;
    for (const auto& r : d.reasons) out += r + "\n";
    return out;
  }

  FakeClock clock_;
  FakeTrustSource trust_;
  HostRegistry hosts_;
  Scheduler scheduler_;
};

TEST_F(SchedulerTest, UntrustedHostIsSkippedWithTheKmsReason) {
  AddHost("h1");
  AddHost("h2");
  trust_.Set("h1", TrustVerdict{false, clock_.NowUnixSeconds(), 0, "pcr 7 mismatch"});
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "h2");
  EXPECT_FALSE(For(p, "h1").eligible);
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("KMS verdict untrusted: pcr 7 mismatch"));
}

TEST_F(SchedulerTest, HostWithoutVerdictIsSkipped) {
  ASSERT_OK(hosts_.Register({"h1", 1, {}}));
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("no KMS verdict"));
}

TEST_F(SchedulerTest, StaleVerdictIsSkipped) {
  AddHost("h1");
  clock_.AdvanceSeconds(20);
  ASSERT_OK(hosts_.Heartbeat("h1"));
  ReleasePolicy policy;
  policy.max_verdict_age_seconds = 10;
  Placement p = Place(policy);
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("KMS verdict is 20 s old, policy allows 10 s"));
}

TEST_F(SchedulerTest, ShortTrustHistoryIsSkipped) {
  AddHost("h1");
  trust_.Set("h1", TrustVerdict{true, clock_.NowUnixSeconds(), clock_.NowUnixSeconds() - 10, ""});
  ReleasePolicy policy;
  policy.min_trusted_for_seconds = 3600;
  Placement p = Place(policy);
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("trusted for 10 s, policy requires 3600 s"));
}

TEST_F(SchedulerTest, LongEnoughTrustHistoryIsTaken) {
  AddHost("h1");
  ReleasePolicy policy;
  policy.min_trusted_for_seconds = 3600;
  EXPECT_EQ(Place(policy).chosen_host_id, "h1");
}

TEST_F(SchedulerTest, HostWithWrongTagIsSkipped) {
  AddHost("h1", 2, {{"region", "us"}});
  AddHost("h2", 2, {{"region", "eu"}});
  ReleasePolicy policy;
  policy.required_tags["region"] = "eu";
  Placement p = Place(policy);
  EXPECT_EQ(p.chosen_host_id, "h2");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("tag region=us, policy requires eu"));
}

TEST_F(SchedulerTest, HostMissingATagIsSkipped) {
  AddHost("h1", 2, {});
  ReleasePolicy policy;
  policy.required_tags["region"] = "eu";
  Placement p = Place(policy);
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("missing tag region (policy requires eu)"));
}

TEST_F(SchedulerTest, FullHostIsSkipped) {
  AddHost("h1", 2);
  Placement p = Place({}, {{"h1", 2}});
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("no free slot (2/2 in use)"));
}

TEST_F(SchedulerTest, HostWithOverdueHeartbeatIsSkipped) {
  AddHost("h1");
  clock_.AdvanceSeconds(31);
  trust_.Set("h1", Trusted());
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("out of the pool: no heartbeat for 31 s"));
}

TEST_F(SchedulerTest, HostThatRefusedTheJobIsSkipped) {
  AddHost("h1");
  Placement p = Place({}, {}, {{"h1", "attestation denied: pcr 0"}});
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("refused this job before: attestation denied"));
}

TEST_F(SchedulerTest, LeastLoadedByFractionOfCapacityIsChosen) {
  AddHost("big", 8);
  AddHost("small", 2);
  Placement p = Place({}, {{"big", 2}, {"small", 1}});  // 25% vs 50%
  EXPECT_EQ(p.chosen_host_id, "big");
  EXPECT_TRUE(For(p, "small").eligible);
  EXPECT_THAT(Reasons(For(p, "small")), HasSubstr("more loaded than big"));
  EXPECT_THAT(Reasons(For(p, "big")), HasSubstr("chosen"));
}

TEST_F(SchedulerTest, EqualFractionPrefersFewerVmsThenHostId) {
  AddHost("b", 4);
  AddHost("a", 2);
  AddHost("c", 2);
  EXPECT_EQ(Place({}, {{"b", 2}, {"a", 1}, {"c", 1}}).chosen_host_id, "a");
}

TEST_F(SchedulerTest, EveryFailedRuleIsReported) {
  AddHost("h1", 1, {{"region", "us"}});
  trust_.Set("h1", TrustVerdict{false, clock_.NowUnixSeconds(), 0, "quote signature invalid"});
  ReleasePolicy policy;
  policy.required_tags["region"] = "eu";
  Placement p = Place(policy, {{"h1", 1}});
  const HostDecision& d = For(p, "h1");
  EXPECT_EQ(d.reasons.size(), 3u) << Reasons(d);
}

TEST_F(SchedulerTest, NoHostsMeansNoPlacement) {
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_EQ(DescribePlacement(p), "no hosts registered");
}

TEST(HostRegistryTest, HeartbeatOfUnknownHostIsNotFound) {
  FakeClock clock;
  HostRegistry hosts({30}, &clock);
  EXPECT_STATUS(hosts.Heartbeat("ghost"), StatusCode::kNotFound, "not registered");
}

TEST(HostRegistryTest, ZeroCapacityIsRejected) {
  FakeClock clock;
  HostRegistry hosts({30}, &clock);
  EXPECT_STATUS(hosts.Register({"h", 0, {}}), StatusCode::kInvalidArgument, "capacity");
}

TEST(HostRegistryTest, OverdueHostLeavesThePoolAndHeartbeatBringsItBack) {
  FakeClock clock;
  HostRegistry hosts({30}, &clock);
  ASSERT_OK(hosts.Register({"h", 1, {}}));
  clock.AdvanceSeconds(30);
  EXPECT_TRUE(hosts.ExpireStale().empty());
  clock.AdvanceSeconds(1);
  EXPECT_EQ(hosts.ExpireStale(), std::vector<std::string>{"h"});
  EXPECT_FALSE(hosts.Get("h")->in_pool);
  EXPECT_TRUE(hosts.ExpireStale().empty());  // reported once
  ASSERT_OK(hosts.Heartbeat("h"));
  EXPECT_TRUE(hosts.Get("h")->in_pool);
}

}  // namespace
}  // namespace vmseal::csp
