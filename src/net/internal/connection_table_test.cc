#include "net/internal/connection_table.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "net/internal/worker_pool.h"

namespace vmseal::net::internal {
namespace {

ConnectionTable::Limits Limits(uint64_t max, uint64_t reserved, uint64_t per_address) {
  ConnectionTable::Limits l;
  l.max_connections = max;
  l.reserved_authenticated = reserved;
  l.max_per_address = per_address;
  return l;
}

TEST(ConnectionTable, PerAddressCapDisplacesTheOldestOfThatAddressOnly) {
  ConnectionTable table(Limits(100, 10, 2));
  const uint64_t other = table.Admit("10.0.0.9").id;
  const uint64_t a1 = table.Admit("10.0.0.1").id;
  const uint64_t a2 = table.Admit("10.0.0.1").id;
  auto third = table.Admit("10.0.0.1");
  ASSERT_TRUE(third.admitted);
  EXPECT_EQ(third.displaced, std::vector<uint64_t>{a1});
  EXPECT_NE(third.id, a2);
  EXPECT_NE(other, 0u);
  EXPECT_EQ(table.counts().open, 3u);
  EXPECT_EQ(table.counts().displaced_total, 1u);
}

TEST(ConnectionTable, AuthenticatedConnectionsAreNeverDisplacedAndLeaveTheAddressCap) {
  ConnectionTable table(Limits(100, 10, 2));
  const uint64_t host = table.Admit("10.0.0.1").id;
  table.MarkAuthenticated(host);
  const uint64_t a1 = table.Admit("10.0.0.1").id;
  table.Admit("10.0.0.1");
  auto next = table.Admit("10.0.0.1");
  ASSERT_TRUE(next.admitted);
  EXPECT_EQ(next.displaced, std::vector<uint64_t>{a1});  // not the host
  EXPECT_EQ(table.counts().authenticated, 1u);
}

TEST(ConnectionTable, BusyConnectionsAreNotDisplacedAndAFullTableRefuses) {
  ConnectionTable table(Limits(100, 10, 2));
  const uint64_t a1 = table.Admit("10.0.0.1").id;
  const uint64_t a2 = table.Admit("10.0.0.1").id;
  table.SetBusy(a1, true);
  table.SetBusy(a2, true);
  auto refused = table.Admit("10.0.0.1");
  EXPECT_FALSE(refused.admitted);
  EXPECT_TRUE(refused.displaced.empty());
  EXPECT_EQ(table.counts().refused_total, 1u);
  table.SetBusy(a2, false);
  auto admitted = table.Admit("10.0.0.1");
  ASSERT_TRUE(admitted.admitted);
  EXPECT_EQ(admitted.displaced, std::vector<uint64_t>{a2});
}

// 4 places, 2 of them reserved: anonymous connections from many addresses
// share 2; authenticated ones may take all 4.
TEST(ConnectionTable, ReservedPlacesAreForAuthenticatedConnectionsOnly) {
  ConnectionTable table(Limits(4, 2, 10));
  const uint64_t x = table.Admit("10.0.0.1").id;
  table.Admit("10.0.0.2");
  auto third = table.Admit("10.0.0.3");
  ASSERT_TRUE(third.admitted);
  EXPECT_EQ(third.displaced, std::vector<uint64_t>{x});
  table.MarkAuthenticated(third.id);  // its handshake verified a certificate
  auto fourth = table.Admit("10.0.0.4");
  ASSERT_TRUE(fourth.admitted);
  EXPECT_TRUE(fourth.displaced.empty());
  table.MarkAuthenticated(fourth.id);
  EXPECT_EQ(table.counts().open, 3u);
  EXPECT_EQ(table.counts().authenticated, 2u);
  // All 4 places: one anonymous and three authenticated; a fifth
  // connection displaces the anonymous one, never an authenticated one.
  auto fifth = table.Admit("10.0.0.5");
  table.MarkAuthenticated(fifth.id);
  auto sixth = table.Admit("10.0.0.6");
  ASSERT_TRUE(sixth.admitted);
  EXPECT_EQ(sixth.displaced.size(), 1u);
  table.MarkAuthenticated(sixth.id);
  EXPECT_FALSE(table.Admit("10.0.0.7").admitted);
  EXPECT_EQ(table.counts().open, 4u);
  EXPECT_EQ(table.counts().authenticated, 4u);
}

TEST(ConnectionTable, RemoveFreesThePlaceAndIgnoresDisplacedIds) {
  ConnectionTable table(Limits(100, 10, 1));
  const uint64_t a1 = table.Admit("10.0.0.1").id;
  auto a2 = table.Admit("10.0.0.1");
  ASSERT_EQ(a2.displaced, std::vector<uint64_t>{a1});
  table.Remove(a1);  // already gone: no effect on a2's count
  EXPECT_EQ(table.counts().open, 1u);
  table.Remove(a2.id);
  EXPECT_EQ(table.counts().open, 0u);
  auto a3 = table.Admit("10.0.0.1");
  EXPECT_TRUE(a3.admitted);
  EXPECT_TRUE(a3.displaced.empty());
}

TEST(WorkerPool, FullQueueRefusesAndAnonymousTasksHaveAShare) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> running;
  WorkerPool pool(1, 2, 1);
  std::atomic<int> ran{0};
  ASSERT_TRUE(pool.TrySubmit([&] { running.set_value(); released.wait(); ++ran; }, true));
  running.get_future().wait();  // the worker is busy; the queue is empty
  EXPECT_TRUE(pool.TrySubmit([&] { ++ran; }, false));
  EXPECT_FALSE(pool.TrySubmit([&] { ++ran; }, false));  // the anonymous share is used
  EXPECT_TRUE(pool.TrySubmit([&] { ++ran; }, true));
  EXPECT_FALSE(pool.TrySubmit([&] { ++ran; }, true));  // the queue is full
  EXPECT_EQ(pool.queued(), 2u);
  release.set_value();
  pool.Stop();  // runs what was queued
  EXPECT_EQ(ran.load(), 3);
  EXPECT_FALSE(pool.TrySubmit([&] { ++ran; }, true));
}

}  // namespace
}  // namespace vmseal::net::internal
