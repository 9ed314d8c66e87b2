// kms.json parsing: the KEK source (kek_file or kek_pkcs11) and its checks.
#include "kms/config.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "kms/kek.h"
#include "kms/lifecycle.h"
#include "kms/store.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

class KmsConfigTest : public ::testing::Test {
 protected:
  StatusOr<KmsConfig> Load(const std::string& text) {
    const std::string path = dir_.File("kms.json");
    testing::WriteFileOrDie(path, text);
    return LoadKmsConfig(path);
  }

  testing::TempDir dir_;
};

TEST_F(KmsConfigTest, FileKekResolvesAgainstTheConfigDir) {
  auto c = Load(R"({"store": "kms.db", "kek_file": "kek"})");
  ASSERT_OK(c);
  EXPECT_EQ(c->kek_file, dir_.File("kek"));
  EXPECT_FALSE(c->kek_pkcs11.has_value());
}

TEST_F(KmsConfigTest, KeyDestructionGraceAndIntervalAreReadAndBounded) {
  auto defaults = Load(R"({"store": "kms.db", "kek_file": "kek"})");
  ASSERT_OK(defaults);
  EXPECT_EQ(defaults->account_grace_seconds, 7 * 86400);
  EXPECT_EQ(defaults->key_destruction_interval_seconds, 60);
  auto c = Load(R"({"store": "kms.db", "kek_file": "kek", "account_grace_seconds": 0,
                    "key_destruction_interval_seconds": 5})");
  ASSERT_OK(c);
  EXPECT_EQ(c->account_grace_seconds, 0);
  EXPECT_EQ(c->key_destruction_interval_seconds, 5);
  for (const char* bad : {R"("account_grace_seconds": -1)", R"("account_grace_seconds": 31622401)",
                          R"("account_grace_seconds": "7d")", R"("key_destruction_interval_seconds": 0)",
                          R"("key_destruction_interval_seconds": 3601)"}) {
    SCOPED_TRACE(bad);
    auto refused = Load(std::string(R"({"store": "kms.db", "kek_file": "kek", )") + bad + "}");
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  }
}

// The timer destroys due keys without any request: a closing account whose
// grace is over is destroyed by the first sweep, with its audit record.
TEST(KeyDestructionTimerTest, SweepsAtOnceAndThenEveryInterval) {
  testing::TempDir dir;
  auto store = Store::Open(dir.File("kms.db"));
  ASSERT_OK(store);
  int64_t now = 1'800'000'000;
  std::vector<std::string> forgotten;
  Lifecycle lifecycle({.clock = [&now] { return now; },
                       .forget_keys = [&forgotten](const std::string& c) { forgotten.push_back(c); }},
                      store->get());
  ASSERT_OK((*store)->PutLifecycle({"customer", "acme", "closing", "customer request", "customer/acme",
                                    now - 10, now - 1},
                                   {"customer.close", "customer/acme", nlohmann::json::object()}));
  {
    KeyDestructionTimer timer(&lifecycle, std::chrono::milliseconds(20));
    for (int i = 0; i < 200 && timer.sweeps() < 3; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GE(timer.sweeps(), 3);
  }  // stopped and joined
  auto mark = (*store)->GetLifecycle("customer", "acme");
  ASSERT_OK(mark);
  EXPECT_EQ(mark->state, "destroyed");
  EXPECT_EQ(forgotten, std::vector<std::string>{"acme"});
}

TEST_F(KmsConfigTest, Pkcs11KekParsesEveryField) {
  auto c = Load(R"({"store": "kms.db", "kek_pkcs11": {
      "module_path": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "kms-token",
      "key_label": "kek-2026", "pin_env": "MY_PIN"}})");
  ASSERT_OK(c);
  EXPECT_TRUE(c->kek_file.empty());
  ASSERT_TRUE(c->kek_pkcs11.has_value());
  EXPECT_EQ(c->kek_pkcs11->module_path, "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(c->kek_pkcs11->token_label, "kms-token");
  EXPECT_EQ(c->kek_pkcs11->key_label, "kek-2026");
  EXPECT_EQ(c->kek_pkcs11->pin_env, "MY_PIN");
}

TEST_F(KmsConfigTest, Pkcs11KekDefaults) {
  auto c = Load(R"({"kek_pkcs11": {"module_path": "/m.so", "token_label": "t"}})");
  ASSERT_OK(c);
  EXPECT_EQ(c->kek_pkcs11->key_label, "vmseal-kms-kek");
  EXPECT_EQ(c->kek_pkcs11->pin_env, "VMSEAL_KMS_PKCS11_PIN");
}

TEST_F(KmsConfigTest, BothOrNeitherKekSourceIsRefused) {
  EXPECT_STATUS(Load(R"({"kek_file": "kek", "kek_pkcs11": {"module_path": "/m.so", "token_label": "t"}})"),
                StatusCode::kInvalidArgument, "set exactly one of kek_file and kek_pkcs11 (both are set)");
  EXPECT_STATUS(Load(R"({"store": "kms.db"})"), StatusCode::kInvalidArgument,
                "set exactly one of kek_file and kek_pkcs11 (neither is set)");
}

TEST_F(KmsConfigTest, Pkcs11ObjectIsChecked) {
  EXPECT_STATUS(Load(R"({"kek_pkcs11": {"module_path": "/m.so", "token_label": "t", "slot": 0}})"),
                StatusCode::kInvalidArgument, "unknown key \"kek_pkcs11.slot\"");
  EXPECT_STATUS(Load(R"({"kek_pkcs11": {"module_path": "/m.so", "token_label": "t", "pin": "1234"}})"),
                StatusCode::kInvalidArgument, "pin_env");
  EXPECT_STATUS(Load(R"({"kek_pkcs11": {"token_label": "t"}})"), StatusCode::kInvalidArgument,
                "kek_pkcs11.module_path: required");
  EXPECT_STATUS(Load(R"({"kek_pkcs11": {"module_path": "/m.so"}})"), StatusCode::kInvalidArgument,
                "kek_pkcs11.token_label: required");
  EXPECT_STATUS(Load(R"({"kek_pkcs11": {"module_path": "/m.so", "token_label": 5}})"),
                StatusCode::kInvalidArgument, "kek_pkcs11.token_label: must be a string");
  EXPECT_STATUS(Load(R"({"kek_pkcs11": "/m.so"})"), StatusCode::kInvalidArgument,
                "kek_pkcs11: must be an object");
  EXPECT_STATUS(Load(R"({"kek_file": "kek", "kek_pkcs": {}})"), StatusCode::kInvalidArgument,
                "unknown key \"kek_pkcs\"");
}

TEST_F(KmsConfigTest, MissingPinVariableIsNamedAndTheModuleIsNotLoaded) {
  auto c = Load(R"({"kek_pkcs11": {"module_path": "/nonexistent/lib.so", "token_label": "t",
                                    "pin_env": "VMSEAL_CONFIG_TEST_PIN"}})");
  ASSERT_OK(c);
  ::unsetenv("VMSEAL_CONFIG_TEST_PIN");
  EXPECT_STATUS(OpenConfiguredKek(*c), StatusCode::kFailedPrecondition,
                "environment variable VMSEAL_CONFIG_TEST_PIN");
  ::setenv("VMSEAL_CONFIG_TEST_PIN", "1234", 1);
  EXPECT_STATUS(OpenConfiguredKek(*c), StatusCode::kNotFound, "cannot load module /nonexistent/lib.so");
  ::unsetenv("VMSEAL_CONFIG_TEST_PIN");
}

TEST_F(KmsConfigTest, FileKekOpensFromConfig) {
  ASSERT_OK(CreateFileKek(Env::Default(), dir_.File("kek")));
  auto c = Load(R"({"kek_file": "kek"})");
  ASSERT_OK(c);
  auto kek = OpenConfiguredKek(*c);
  ASSERT_OK(kek);
  EXPECT_EQ((*kek)->id().rfind("file:", 0), 0u) << (*kek)->id();
  EXPECT_STATUS(OpenConfiguredKek(*c, /*create_if_missing=*/true), StatusCode::kInvalidArgument,
                "kms init");
}

}  // namespace
}  // namespace vmseal::kms
