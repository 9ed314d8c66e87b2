// Attacker tests (issue 16) through the real portal process: password
// guessing, a registration flood and a job flood get 429 with Retry-After
// once their budget is spent, before any Argon2id, KMS or scheduler work;
// the owner gets in again after the back-off; every limit and refusal is on
// /metrics.
#include <chrono>
#include <thread>

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
