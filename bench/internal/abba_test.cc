// The benchmarks' shared A B B A schedule and summaries (abba.h).
#include "bench/internal/abba.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace vmseal::bench {
namespace {

TEST(AbbaTest, WarmUpsRunFirstThenABBAWithTheirSamplesKeptApart) {
  std::string calls;
  int a = 0, b = 100;
  const auto s = RunAbba({.warm_up_a = 2, .warm_up_b = 1, .runs = 4},
                         [&] { calls += 'a'; return a++; },
                         [&] { calls += 'b'; return std::to_string(b++); });
  EXPECT_EQ(calls, "aab" "abba" "abba");
  EXPECT_EQ(s.order, "ABBAABBA");
  // Warm-up results are dropped: A's samples start at its third call.
  EXPECT_EQ(s.a, (std::vector<int>{2, 3, 4, 5}));
  EXPECT_EQ(s.b, (std::vector<std::string>{"101", "102", "103", "104"}));
}

TEST(AbbaTest, OddRunCountEndsAB) {
  std::string calls;
  const auto s = RunAbba({.warm_up_a = 0, .runs = 3}, [&] { calls += 'a'; return 0; },
                         [&] { calls += 'b'; return 0; });
  EXPECT_EQ(calls, "abbaab");
  EXPECT_EQ(s.order, "ABBAAB");
  EXPECT_EQ(s.a.size(), 3u);
  EXPECT_EQ(s.b.size(), 3u);
}

TEST(AbbaTest, NoRunsRunsOnlyTheWarmUps) {
  int calls = 0;
  const auto s = RunAbba({.warm_up_a = 1, .runs = 0}, [&] { return ++calls; }, [&] { return ++calls; });
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(s.a.empty());
  EXPECT_TRUE(s.order.empty());
}

TEST(AbbaTest, SummarizeGivesTheMedianAndTheSpread) {
  const Spread odd = Summarize({5, 1, 3});
  EXPECT_EQ(odd.median, 3);
  EXPECT_EQ(odd.min, 1);
  EXPECT_EQ(odd.max, 5);
  EXPECT_EQ(odd.range(), 4);
  EXPECT_EQ(odd.n, 3u);
  EXPECT_EQ(Summarize({4, 1, 2, 10}).median, 3);  // the middle two's mean
  const Spread none = Summarize({});
  EXPECT_EQ(none.n, 0u);
  EXPECT_EQ(none.median, 0);
}

TEST(AbbaTest, ColumnTakesAFieldOrAFunctionOfEachSample) {
  struct Run {
    double seconds;
    int failed;
  };
  const std::vector<Run> runs = {{1.5, 0}, {2.5, 3}};
  EXPECT_EQ(Column(runs, &Run::seconds), (std::vector<double>{1.5, 2.5}));
  EXPECT_EQ(Column(runs, [](const Run& r) { return r.failed * 2; }), (std::vector<double>{0, 6}));
}

TEST(AbbaTest, PercentileIsTheNearestRank) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);
  EXPECT_EQ(Percentile(v, 0.99), 100);
  EXPECT_EQ(Percentile(v, 0.5), 51);
  EXPECT_EQ(Percentile(v, 0), 1);
  EXPECT_EQ(Percentile(v, 1), 100);
  EXPECT_EQ(Percentile({}, 0.5), 0);
}

TEST(AbbaTest, TargetSaysWhetherARatioMeetsItsLimit) {
  EXPECT_TRUE(Target::AtLeast(0.8).Met(0.8));
  EXPECT_FALSE(Target::AtLeast(0.8).Met(0.79));
  EXPECT_TRUE(Target::AtMost(2).Met(2));
  EXPECT_FALSE(Target::AtMost(2).Met(2.01));
  EXPECT_EQ(Target::AtLeast(0.8).ToString(), ">= 0.8");
  EXPECT_EQ(Target::AtMost(2).ToString(), "<= 2");
  EXPECT_EQ(RatioText(0.934, Target::AtLeast(0.9)), "0.93x (target >= 0.9: met)");
  EXPECT_EQ(RatioText(2.5, Target::AtMost(2)), "2.50x (target <= 2: NOT met)");
}

TEST(AbbaTest, LoadAverageIsThreeFigures) {
  const std::string load = LoadAverage();
  int spaces = 0;
  for (char c : load) spaces += c == ' ';
  EXPECT_EQ(spaces, 2) << load;
  EXPECT_NE(load, "? ? ?");  // /proc/loadavg is there on Linux
}

}  // namespace
}  // namespace vmseal::bench
