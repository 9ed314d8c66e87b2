#include "json/json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(ParseJson, AcceptsNestingUpToTheLimit) {
  auto v = ParseJson(Nested(kMaxJsonDepth));
  ASSERT_OK(v);
  EXPECT_TRUE(v->is_array());
}

TEST(ParseJson, RefusesOneLevelPastTheLimit) {
  EXPECT_STATUS(ParseJson(Nested(kMaxJsonDepth + 1)), StatusCode::kInvalidArgument,
                "nested too deeply");
}

// The body that crashed the portal (issue 16): 200,000 '[' inside an object.
TEST(ParseJson, RefusesThePortalCrashBody) {
  std::string body = "{\"policy\":" + Nested(200000) + "}";
  EXPECT_STATUS(ParseJson(body), StatusCode::kInvalidArgument, "nested too deeply");
  // Objects count as well as arrays.
  std::string objects;
  for (int i = 0; i < 100; ++i) objects += "{\"a\":";
  objects += "1" + std::string(100, '}');
  EXPECT_STATUS(ParseJson(objects), StatusCode::kInvalidArgument, "nested too deeply");
}

TEST(ParseJson, BracketsInsideStringsDoNotCount) {
  std::string s = "\"" + std::string(1000, '[') + "\\\"" + std::string(1000, '{') + "\"";
  auto v = ParseJson(s);
  ASSERT_OK(v);
  EXPECT_EQ(v->get<std::string>().size(), 2001u);
}

TEST(ParseJson, EscapedBackslashEndsTheString) {
  // "\\" is a complete string; the brackets after it are structure.
  std::string s = "[\"\\\\\"," + Nested(kMaxJsonDepth) + "]";
  EXPECT_STATUS(ParseJson(s), StatusCode::kInvalidArgument, "nested too deeply");
}

TEST(ParseJson, RefusesInputOverTheSizeLimit) {
  JsonLimits limits;
  limits.max_bytes = 16;
  EXPECT_OK(ParseJson("\"0123456789abc\"", limits));
  EXPECT_STATUS(ParseJson("\"0123456789abcde\"", limits), StatusCode::kInvalidArgument,
                "JSON too large (17 bytes, limit 16)");
}

TEST(ParseJson, DefaultSizeLimitIsFourMiB) {
  std::string big = "\"" + std::string((4u << 20) - 1, 'a') + "\"";
  EXPECT_STATUS(ParseJson(big), StatusCode::kInvalidArgument, "too large");
  big.erase(1, 1);
  EXPECT_OK(ParseJson(big));
}

TEST(ParseJson, MalformedInputIsNotEchoed) {
  auto v = ParseJson("{\"password\": \"hunter2-secret\"");
  EXPECT_STATUS(v, StatusCode::kInvalidArgument, "malformed JSON");
  EXPECT_THAT(v.status().message(), Not(HasSubstr("hunter2")));
  EXPECT_STATUS(ParseJson(""), StatusCode::kInvalidArgument, "malformed JSON");
  EXPECT_STATUS(ParseJson("{} {}"), StatusCode::kInvalidArgument, "malformed JSON");
}

TEST(ParseJsonObject, RequiresAnObject) {
  EXPECT_OK(ParseJsonObject("{\"a\":1}", "request body"));
  EXPECT_STATUS(ParseJsonObject("[1]", "request body"), StatusCode::kInvalidArgument,
                "request body is not a JSON object");
  EXPECT_STATUS(ParseJsonObject(Nested(100), "request body"), StatusCode::kInvalidArgument,
                "nested too deeply");
}

TEST(DumpJson, InvalidUtf8IsReplacedNotThrown) {
  nlohmann::json j = {{"name", std::string("a\xff\xfe" "b")}};
  std::string out;
  ASSERT_NO_THROW(out = DumpJson(j));
  EXPECT_EQ(out, "{\"name\":\"a\xEF\xBF\xBD\xEF\xBF\xBD" "b\"}");
  EXPECT_EQ(DumpJson(nlohmann::json{{"a", 1}}, 2), "{\n  \"a\": 1\n}");
}

TEST(DumpJson, RoundTripsThroughParse) {
  nlohmann::json j = {{"k", {1, 2, {{"x", "y"}}}}, {"u", "\xC3\xA9"}};
  auto back = ParseJson(DumpJson(j));
  ASSERT_OK(back);
  EXPECT_EQ(*back, j);
}

}  // namespace
}  // namespace vmseal
