// Attacker tests (issue 16) through the real portal process: password
// guessing, a registration flood and a job flood get 429 with Retry-After
// once their budget is spent, before any Argon2id, KMS or scheduler work;
// the owner gets in again after the back-off; every limit and refusal is on
// /metrics; a login flood from many addresses is bounded in portal memory.
#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>

#include "internal/portal_fixture.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;

class AbuseLimitsTest : public ::vmseal::testing::PortalFixture {};

int64_t RetryAfter(const httplib::Result& r) {
  if (!r || !r->has_header("Retry-After")) return -1;
  return std::stoll(r->get_header_value("Retry-After"));
}

TEST_F(AbuseLimitsTest, PasswordGuessingBacksOffAndTheOwnerGetsBackIn) {
  StartServers();
  nlohmann::json alice = Register();
  const std::string login_id = alice.value("login_id", "");
  int unauthorized = 0, limited = 0;
  int64_t retry_after = 0;
  for (int i = 0; i < 50; ++i) {
    auto r = Login(login_id, "wrong-password-" + std::to_string(i));
    ASSERT_TRUE(r) << "no answer to attempt " << i;
    if (r->status == 401) {
      ++unauthorized;
      EXPECT_EQ(limited, 0) << "a 401 after a 429 at attempt " << i;
    } else {
      ASSERT_EQ(r->status, 429) << r->body;
      ++limited;
      retry_after = RetryAfter(r);
      EXPECT_GE(retry_after, 1) << "429 without Retry-After";
      EXPECT_THAT(r->body, HasSubstr("rate_limited"));
    }
  }
  // The configured budget (login_id_free_failures=5, plus the one failure
  // that starts the back-off) and not one guess more reached Argon2id.
  EXPECT_EQ(unauthorized, 6);
  EXPECT_EQ(limited, 44);
  // While blocked, even the right password is refused (no oracle).
  auto blocked = Login(login_id, alice.value("password", ""));
  ASSERT_TRUE(blocked);
  EXPECT_EQ(blocked->status, 429);
  // After the back-off the owner gets in.
  std::this_thread::sleep_for(std::chrono::seconds(std::max<int64_t>(RetryAfter(blocked), 1)));
  auto in = Login(login_id, alice.value("password", ""));
  ASSERT_TRUE(in);
  EXPECT_EQ(in->status, 200) << in->body;
  // Another login id from the same address was never blocked by alice's.
  nlohmann::json bob = Register();
  auto bob_in = Login(bob.value("login_id", ""), bob.value("password", ""));
  ASSERT_TRUE(bob_in);
  EXPECT_EQ(bob_in->status, 200) << bob_in->body;

  httplib::Client c = Portal();
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body, HasSubstr("vmseal_portal_limit{name=\"login_id_free_failures\"} 5"));
  EXPECT_THAT(metrics->body, HasSubstr("vmseal_portal_rate_limit_keys{limit=\"login_id_failures\"}"));
}

TEST_F(AbuseLimitsTest, RegistrationFloodIsCutOffBeforeTheKms) {
  StartServers({"--limit", "register_per_address_burst=3", "--limit",
                "register_per_address_per_hour=1"});
  int created = 0, limited = 0;
  for (int i = 0; i < 30; ++i) {
    httplib::Client c = Portal();
    auto r = c.Post("/v1/register", "{}", "application/json");
    ASSERT_TRUE(r);
    if (r->status == 201) {
      ++created;
    } else {
      ASSERT_EQ(r->status, 429) << r->body;
      EXPECT_GE(RetryAfter(r), 1);
      ++limited;
    }
  }
  EXPECT_EQ(created, 3);
  EXPECT_EQ(limited, 27);
  // The KMS made exactly as many customer keys: its audit log has one
  // key-creation record per registration that got through.
  std::string out;
  ASSERT_EQ(vmseal::testing::RunCommand({vmseal::testing::VmsealBinary(), "kms", "audit", "export",
                                         "--config", kms_.dir + "/kms.json"},
                                        &out, 60),
            0)
      << out;
  size_t keys = 0;
  for (size_t at = out.find("customer_key.create"); at != std::string::npos;
       at = out.find("customer_key.create", at + 1)) {
    ++keys;
  }
  EXPECT_EQ(keys, 3u) << out;
  httplib::Client c = Portal();
  auto metrics = c.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body,
              HasSubstr("vmseal_portal_rate_limited_total{limit=\"register_address\"} 27"));
}

TEST_F(AbuseLimitsTest, JobFloodHitsTheCustomersQuota) {
  StartServers({"--limit", "jobs_in_progress_per_customer=3"});
  httplib::Headers alice = Customer();
  const std::string image = UploadImage(alice);
  nlohmann::json launch = {{"image_id", image}};
  // No host is registered: jobs stay queued, in progress.
  for (int i = 0; i < 3; ++i) {
    httplib::Client c = Portal();
    auto r = c.Post("/v1/launch", alice, launch.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status / 100, 2) << r->body;
  }
  httplib::Client c = Portal();
  auto r = c.Post("/v1/launch", alice, launch.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429) << r->body;
  EXPECT_THAT(r->body, HasSubstr("quota_exceeded: 3 jobs in progress, the quota is 3"));
  EXPECT_GE(RetryAfter(r), 1);
  // Nothing was created by the refused call.
  auto jobs = c.Get("/v1/jobs", alice);
  ASSERT_TRUE(jobs);
  EXPECT_EQ(Json(jobs)["jobs"].size(), 3u) << jobs->body;
  // Another customer has a quota of its own.
  httplib::Headers bob = Customer();
  const std::string bob_image = UploadImage(bob);
  auto b = c.Post("/v1/launch", bob, nlohmann::json{{"image_id", bob_image}}.dump(),
                  "application/json");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->status / 100, 2) << b->body;
}

// The portal's peak resident memory (VmHWM) in bytes, or -1.
int64_t PeakResidentBytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with("VmHWM:")) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

// A login flood from many addresses (the per-address rates and connection
// cap are raised here so that one test address stands for many): 40 logins at once, each an
// Argon2id of 64 MiB. At most `password_hashes_in_flight` hashes run at
// once, so the portal's peak memory grows by at most that many hashes;
// the rest wait, then get 503 "overloaded" with Retry-After. Without the
// bound the same flood adds about 40 x 64 MiB.
TEST_F(AbuseLimitsTest, LoginFloodFromManyAddressesIsBoundedInPortalMemory) {
  StartServers({"--limit", "login_per_address_burst=1000", "--limit", "login_address_free_failures=100000",
                "--limit", "login_id_free_failures=100000", "--limit", "password_hashes_in_flight=2",
                "--limit", "password_hash_wait_seconds=0.5", "--front-end", "max_connections_per_address=64"});
  nlohmann::json alice = Register();
  const int64_t before = PeakResidentBytes(portal_->pid());
  ASSERT_GT(before, 0);
  std::vector<std::future<std::pair<int, int64_t>>> calls;
  for (int i = 0; i < 40; ++i) {
    calls.push_back(std::async(std::launch::async, [&, i] {
      auto r = Login("u-nobody" + std::to_string(i), "guess");
      return std::make_pair(r ? r->status : 0, RetryAfter(r));
    }));
  }
  int denied = 0, overloaded = 0;
  for (auto& f : calls) {
    const auto [status, retry_after] = f.get();
    if (status == 401) {
      ++denied;
    } else {
      EXPECT_EQ(status, 503);
      EXPECT_GE(retry_after, 1);
      ++overloaded;
    }
  }
  const int64_t after = PeakResidentBytes(portal_->pid());
  constexpr int64_t kHash = 64 << 20;
  EXPECT_LE(after - before, 2 * kHash + (32 << 20))
      << "peak memory grew by " << (after - before) / (1 << 20) << " MiB for 2 hashes at once";
  EXPECT_GE(denied, 2);
  EXPECT_GE(overloaded, 1) << "40 logins at once never waited past 0.5 s for 2 places";
  auto m = Portal().Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_THAT(m->body, HasSubstr("vmseal_portal_password_hashes{state=\"peak\"} 2\n"));
  EXPECT_THAT(m->body, HasSubstr("vmseal_portal_overloaded_total{limit=\"password_hashing\"} " +
                                 std::to_string(overloaded) + "\n"));
  auto in = Login(alice.value("login_id", ""), alice.value("password", ""));
  ASSERT_TRUE(in);
  EXPECT_EQ(in->status, 200) << in->body;
}

TEST_F(AbuseLimitsTest, UnknownLimitIsRefusedAtStart) {
  std::string out;
  int rc = vmseal::testing::RunCommand(
      {vmseal::testing::VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("d"),
       "--kms-url", "https://127.0.0.1:1", "--kms-ca", "x", "--kms-cert", "x", "--kms-key", "x",
       "--limit", "logins_per_day=5"},
      &out, 30);
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("unknown limit 'logins_per_day'"));
  rc = vmseal::testing::RunCommand(
      {vmseal::testing::VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("d"),
       "--kms-url", "https://127.0.0.1:1", "--kms-ca", "x", "--kms-cert", "x", "--kms-key", "x",
       "--limit", "register_burst=-1"},
      &out, 30);
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("must be a non-negative number"));
}

}  // namespace
}  // namespace vmseal
