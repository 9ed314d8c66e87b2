#include "csp/scheduler.h"

#include "csp/internal/test_doubles.h"
#include <gmock/gmock.h>

#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::testing::HasSubstr;
using ::vmseal::csp::testing::FakeKmsClient;

class SchedulerTest : public ::testing::Test {
 protected:
  SchedulerTest() : hosts_({30}, &clock_), scheduler_(&hosts_, &kms_, &clock_) {}

  // A registered, heartbeating host the KMS finds eligible.
  void AddHost(const std::string& id, uint32_t capacity = 2) {
    ASSERT_OK(hosts_.Register({id, capacity, {{"region", "eu"}}}));
    kms_.SetEligibility(id, true, "ok");
  }
  Placement Place(std::map<std::string, uint32_t> load = {},
                  std::map<std::string, std::string> excluded = {}) {
    return scheduler_.Place({"cust-1", "img-1"}, load, excluded);
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
  FakeKmsClient kms_;
  HostRegistry hosts_;
  Scheduler scheduler_;
};

TEST_F(SchedulerTest, HostTheKmsFindsIneligibleIsSkippedWithTheKmsReason) {
  AddHost("h1");
  AddHost("h2");
  kms_.SetEligibility("h1", false, "pcr_policy");
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "h2");
  EXPECT_FALSE(For(p, "h1").eligible);
  EXPECT_EQ(For(p, "h1").kms_reason, "pcr_policy");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("KMS: not eligible (pcr_policy)"));
}

TEST_F(SchedulerTest, EachKmsDenialReasonIsShown) {
  for (const char* reason : {"evidence_age", "history", "tags", "no_policy", "not_enrolled"}) {
    SCOPED_TRACE(reason);
    AddHost("h1");
    kms_.SetEligibility("h1", false, reason);
    Placement p = Place();
    EXPECT_EQ(p.chosen_host_id, "");
    EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr(std::string("(") + reason + ")"));
  }
}

TEST_F(SchedulerTest, KmsIsAskedOnceWithTheCustomerAndImage) {
  AddHost("h1");
  AddHost("h2");
  Place();
  EXPECT_EQ(kms_.placement_checks(), 1);
  EXPECT_EQ(kms_.last_query(), std::make_pair(std::string("cust-1"), std::string("img-1")));
}

TEST_F(SchedulerTest, UnreachableKmsFailsClosed) {
  AddHost("h1");
  kms_.SetUnavailable(true);
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("KMS placement check failed"));
}

TEST_F(SchedulerTest, HostsFailingPortalRulesAreNotSentToTheKms) {
  AddHost("h1", 1);
  Placement p = Place({{"h1", 1}});
  EXPECT_EQ(kms_.placement_checks(), 0);
  EXPECT_EQ(For(p, "h1").kms_reason, "");
}

TEST_F(SchedulerTest, FullHostIsSkipped) {
  AddHost("h1", 2);
  Placement p = Place({{"h1", 2}});
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("no free slot (2/2 in use)"));
}

TEST_F(SchedulerTest, HostWithOverdueHeartbeatIsSkipped) {
  AddHost("h1");
  clock_.AdvanceSeconds(31);
  Placement p = Place();
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("out of the pool: no heartbeat for 31 s"));
}

TEST_F(SchedulerTest, HostThatRefusedTheJobIsSkipped) {
  AddHost("h1");
  Placement p = Place({}, {{"h1", "attestation denied: pcr 0"}});
  EXPECT_EQ(p.chosen_host_id, "");
  EXPECT_THAT(Reasons(For(p, "h1")), HasSubstr("refused this job before: attestation denied"));
}

TEST_F(SchedulerTest, LeastLoadedByFractionOfCapacityIsChosen) {
  AddHost("big", 8);
  AddHost("small", 2);
  Placement p = Place({{"big", 2}, {"small", 1}});  // 25% vs 50%
  EXPECT_EQ(p.chosen_host_id, "big");
  EXPECT_TRUE(For(p, "small").eligible);
  EXPECT_THAT(Reasons(For(p, "small")), HasSubstr("more loaded than big"));
  EXPECT_THAT(Reasons(For(p, "big")), HasSubstr("chosen"));
}

TEST_F(SchedulerTest, EqualFractionPrefersFewerVmsThenHostId) {
  AddHost("b", 4);
  AddHost("a", 2);
  AddHost("c", 2);
  EXPECT_EQ(Place({{"b", 2}, {"a", 1}, {"c", 1}}).chosen_host_id, "a");
}

TEST_F(SchedulerTest, EveryFailedPortalRuleIsReported) {
  AddHost("h1", 1);
  clock_.AdvanceSeconds(31);
  Placement p = Place({{"h1", 1}}, {{"h1", "launch failed"}});
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
