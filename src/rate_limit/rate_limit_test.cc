#include "rate_limit/rate_limit.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace vmseal::rate_limit {
namespace {

struct FakeClock {
  double now = 1000;
  Clock clock() {
    return [this] { return now; };
  }
};

TEST(KeyedTokenBucket, AllowsTheBurstThenRefillsAtTheRate) {
  FakeClock t;
  KeyedTokenBucket b({.per_second = 2, .burst = 3}, t.clock());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b.Take("1.2.3.4").allowed) << i;
  Decision d = b.Take("1.2.3.4");
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_seconds, 1);
  t.now += 0.5;  // one token back
  EXPECT_TRUE(b.Take("1.2.3.4").allowed);
  EXPECT_FALSE(b.Take("1.2.3.4").allowed);
  // Another key has its own bucket.
  EXPECT_TRUE(b.Take("5.6.7.8").allowed);
  // A long pause refills only up to the burst.
  t.now += 3600;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b.Take("1.2.3.4").allowed);
  EXPECT_FALSE(b.Take("1.2.3.4").allowed);
}

TEST(KeyedTokenBucket, RetryAfterCoversTheWait) {
  FakeClock t;
  KeyedTokenBucket b({.per_second = 0.1, .burst = 1}, t.clock());
  EXPECT_TRUE(b.Take("k").allowed);
  Decision d = b.Take("k");
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_seconds, 10);
  t.now += d.retry_after_seconds;
  EXPECT_TRUE(b.Take("k").allowed);
}

TEST(KeyedTokenBucket, ZeroRateDisablesTheLimit) {
  KeyedTokenBucket b({.per_second = 0, .burst = 0});
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(b.Take("k").allowed);
  EXPECT_EQ(b.size(), 0u);
}

TEST(KeyedTokenBucket, KeysAreBounded) {
  FakeClock t;
  KeyedTokenBucket b({.per_second = 1, .burst = 1, .max_keys = 100}, t.clock());
  for (int i = 0; i < 10000; ++i) b.Take("10.0." + std::to_string(i));
  EXPECT_EQ(b.size(), 100u);
  // The most recent key is still tracked (and empty).
  EXPECT_FALSE(b.Take("10.0.9999").allowed);
}

TEST(FailureBackoff, BlocksExponentiallyAfterTheFreeFailures) {
  FakeClock t;
  FailureBackoff f({.free_failures = 3, .base_seconds = 2, .max_seconds = 60}, t.clock());
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(f.Check("alice").allowed);
    f.RecordFailure("alice");
  }
  EXPECT_TRUE(f.Check("alice").allowed);  // three free failures
  f.RecordFailure("alice");               // 4th: 2 s
  Decision d = f.Check("alice");
  ASSERT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_seconds, 2);
  t.now += 2;
  EXPECT_TRUE(f.Check("alice").allowed);
  f.RecordFailure("alice");  // 5th: 4 s
  EXPECT_EQ(f.Check("alice").retry_after_seconds, 4);
  t.now += 4;
  f.RecordFailure("alice");  // 6th: 8 s
  EXPECT_EQ(f.Check("alice").retry_after_seconds, 8);
  for (int i = 0; i < 10; ++i) f.RecordFailure("alice");
  EXPECT_EQ(f.Check("alice").retry_after_seconds, 60);  // capped
  EXPECT_TRUE(f.Check("bob").allowed);  // per key
}

TEST(FailureBackoff, SuccessClearsAndOldFailuresAreForgotten) {
  FakeClock t;
  FailureBackoff f({.free_failures = 1, .base_seconds = 1, .forget_after_seconds = 100},
                   t.clock());
  f.RecordFailure("a");
  f.RecordFailure("a");
  EXPECT_FALSE(f.Check("a").allowed);
  f.RecordSuccess("a");
  EXPECT_TRUE(f.Check("a").allowed);
  EXPECT_EQ(f.size(), 0u);
  f.RecordFailure("b");
  t.now += 101;
  f.RecordFailure("c");  // expiry runs on the next failure
  EXPECT_EQ(f.size(), 1u);
}

TEST(FailureBackoff, KeysAreBounded) {
  FakeClock t;
  FailureBackoff f({.free_failures = 0, .max_keys = 50}, t.clock());
  for (int i = 0; i < 5000; ++i) f.RecordFailure("login-" + std::to_string(i));
  EXPECT_EQ(f.size(), 50u);
  EXPECT_FALSE(f.Check("login-4999").allowed);
}

TEST(ConcurrencyLimit, HoldsAtMostMaxAndRefusesAfterTheWait) {
  ConcurrencyLimit limit(2);
  auto a = limit.TryAcquireFor(0);
  auto b = limit.TryAcquireFor(0);
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(limit.in_use(), 2);
  const auto t = std::chrono::steady_clock::now();
  EXPECT_FALSE(limit.TryAcquireFor(0.05).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t, std::chrono::milliseconds(45));
  EXPECT_EQ(limit.refused(), 1u);
  a.reset();
  EXPECT_EQ(limit.in_use(), 1);
  EXPECT_TRUE(limit.TryAcquireFor(0).has_value());  // destroyed at once
  EXPECT_EQ(limit.in_use(), 1);
  EXPECT_EQ(limit.peak(), 2);
}

TEST(ConcurrencyLimit, AWaiterGetsThePlaceFreedWhileItWaits) {
  ConcurrencyLimit limit(1);
  auto held = limit.TryAcquireFor(0);
  ASSERT_TRUE(held.has_value());
  std::thread freer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    held.reset();
  });
  auto got = limit.TryAcquireFor(10);
  freer.join();
  EXPECT_TRUE(got.has_value());
  EXPECT_EQ(limit.refused(), 0u);
}

TEST(ConcurrencyLimit, ManyThreadsNeverExceedMax) {
  ConcurrencyLimit limit(3);
  std::atomic<int> inside{0}, most{0}, served{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 20; ++k) {
        auto t = limit.TryAcquireFor(5);
        if (!t) continue;
        const int now = ++inside;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        --inside;
        ++served;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(most.load(), 3);
  EXPECT_EQ(limit.peak(), most.load());
  EXPECT_EQ(served.load() + static_cast<int>(limit.refused()), 16 * 20);
  EXPECT_EQ(limit.in_use(), 0);
}

TEST(ConcurrencyLimit, ZeroMeansNoLimit) {
  ConcurrencyLimit limit(0);
  std::vector<ConcurrencyLimit::Ticket> held;
  for (int i = 0; i < 100; ++i) held.push_back(*limit.TryAcquireFor(0));
  EXPECT_EQ(limit.in_use(), 100);
  EXPECT_EQ(limit.refused(), 0u);
}

TEST(RateLimitedMessage, CarriesTheRetryAfter) {
  const std::string m = RateLimitedMessage("too many registrations from 10.0.0.1", 42);
  EXPECT_EQ(m, "rate_limited: too many registrations from 10.0.0.1; retry in 42 s");
  EXPECT_EQ(RetryAfterOf(m), 42);
  EXPECT_EQ(RetryAfterOf(RateLimitedMessage("x", 0)), 1);
  EXPECT_EQ(RetryAfterOf("invalid login id or password"), 0);
  EXPECT_EQ(RetryAfterOf("x; retry in s"), 0);
  EXPECT_EQ(RetryAfterOf("x; retry in 1a s"), 0);
  EXPECT_EQ(RetryAfterOf("x; retry in 99999999999 s"), 0);
}

}  // namespace
}  // namespace vmseal::rate_limit
