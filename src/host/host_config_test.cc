#include "host/host_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "testing/test_util.h"

namespace vmseal::host {
namespace {

using json = nlohmann::json;

json Minimal() {
  return {{"portal_url", "https://portal:8443"}, {"kms_url", "https://kms:8444"},
          {"ca_file", "/i/ca.pem"},              {"cert_file", "/i/host.crt"},
          {"key_file", "/i/host.key"},           {"tpm_tcti", "swtpm:path=/t/tpm.sock"},
          {"state_dir", "/s/state"},             {"image_store_dir", "/s/images"}};
}

TEST(HostConfigTest, MinimalConfigTakesTheDefaults) {
  auto c = ParseHostConfig(Minimal().dump());
  ASSERT_OK(c);
  EXPECT_EQ(c->tpm_tcti, "swtpm:path=/t/tpm.sock");
  EXPECT_EQ(c->pcr_selection, (std::vector<uint32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(c->heartbeat_interval_seconds, 10);
  EXPECT_EQ(c->reattest_interval_seconds, 60);
  EXPECT_FALSE(c->allow_plain_images);
  EXPECT_FALSE(c->capacity.has_value());
  EXPECT_EQ(c->accel, "auto");
}

TEST(HostConfigTest, EveryOptionIsRead) {
  json j = Minimal();
  j["pcr_selection"] = {7, 0, 4};
  j["heartbeat_interval_seconds"] = 0.5;
  j["reattest_interval_seconds"] = 5;
  j["poll_interval_seconds"] = 1;
  j["allow_plain_images"] = true;
  j["capacity"] = {{"vcpus", 8}, {"memory_mib", 16384}};
  j["tags"] = {"region=eu-west"};
  j["accel"] = "tcg";
  auto c = ParseHostConfig(j.dump());
  ASSERT_OK(c);
  EXPECT_EQ(c->pcr_selection, (std::vector<uint32_t>{0, 4, 7}));
  EXPECT_EQ(c->heartbeat_interval_seconds, 0.5);
  EXPECT_TRUE(c->allow_plain_images);
  ASSERT_TRUE(c->capacity.has_value());
  EXPECT_EQ(c->capacity->vcpus, 8u);
  EXPECT_EQ(c->capacity->memory_mib, 16384u);
  EXPECT_EQ(c->capacity->slots, 8u);
  EXPECT_EQ(c->tags, std::vector<std::string>{"region=eu-west"});
}

TEST(HostConfigTest, BadConfigsNameTheKey) {
  struct Case {
    const char* key;
    json value;
    const char* message;
  };
  const Case cases[] = {
      {"portal_url", "http://portal:80", "https://"},
      {"kms_url", nullptr, "kms_url"},
      {"pcr_selection", json::array({0, 24}), "pcr_selection"},
      {"pcr_selection", json::array({1, 1}), "pcr_selection"},
      {"heartbeat_interval_seconds", 0, "heartbeat_interval_seconds"},
      {"allow_plain_images", "yes", "allow_plain_images"},
      {"capacity", json{{"cpus", 2}}, "capacity"},
      {"tags", json::array({"eu-west"}), "key=value"},
      {"accel", "hvf", "accel"},
      {"image_store_dir", "/s/state", "must differ"},
      {"tpm_tcti", "", "tpm_tcti"},
      {"typo_key", 1, "unknown key 'typo_key'"},
      {"vm_user_ids", json{{"first", 0}, {"count", 10}}, "vm_user_ids"},
      {"vm_user_ids", json{{"first", 100}, {"count", 1}}, "vm_user_ids"},
      {"vm_user_ids", json{{"first", 4294967290u}, {"count", 10}}, "vm_user_ids"},
      {"vm_user_ids", json{{"first", -5}, {"count", 10}}, "vm_user_ids"},
      {"vm_user_ids", json{{"first", 100}}, "vm_user_ids"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    json j = Minimal();
    if (c.value.is_null()) {
      j.erase(c.key);
    } else {
      j[c.key] = c.value;
    }
    EXPECT_STATUS(ParseHostConfig(j.dump()), StatusCode::kInvalidArgument, c.message);
  }
  EXPECT_STATUS(ParseHostConfig("[1]"), StatusCode::kInvalidArgument, "not a JSON object");
}

TEST(HostConfigTest, VmUserIdsDefaultToTheirRangeAndCanBeTurnedOff) {
  auto c = ParseHostConfig(Minimal().dump());
  ASSERT_OK(c);
  EXPECT_EQ(c->vm_user_first_id, 0x7A000000u);
  EXPECT_EQ(c->vm_user_count, 4096u);
  json j = Minimal();
  j["vm_user_ids"] = {{"first", 500000}, {"count", 0}};
  c = ParseHostConfig(j.dump());
  ASSERT_OK(c);
  EXPECT_EQ(c->vm_user_count, 0u);
  j["vm_user_ids"] = {{"first", 500000}, {"count", 64}};
  c = ParseHostConfig(j.dump());
  ASSERT_OK(c);
  EXPECT_EQ(c->vm_user_first_id, 500000u);
  EXPECT_EQ(c->vm_user_count, 64u);
}

TEST(HostConfigTest, SkeletonNeedsOnlyRealValues) {
  auto c = ParseHostConfig(HostConfigSkeleton("/var/lib/vmseal-host"));
  ASSERT_OK(c);
  EXPECT_EQ(c->state_dir, "/var/lib/vmseal-host/state");
  EXPECT_EQ(c->image_store_dir, "/var/lib/vmseal-host/images");
  EXPECT_EQ(c->tpm_tcti, "device:/dev/tpmrm0");
}

}  // namespace
}  // namespace vmseal::host
