// The embedded console: served with the security headers, and written so
// that the Content-Security-Policy holds (no inline script or style, no
// HTML built from data).
#include "console/console_routes.h"

#include <httplib.h>

#include <regex>

#include <gtest/gtest.h>

#include "console/assets.h"
#include "testing/test_util.h"

namespace vmseal::console {
namespace {

std::string Text(const Asset& a) {
  return std::string(reinterpret_cast<const char*>(a.bytes.data()), a.bytes.size());
}

class ConsoleRoutesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    net::HttpsServer::Options o;
    o.plain_http = true;
    auto s = net::HttpsServer::Create(std::move(o));
    ASSERT_TRUE(s.ok()) << s.status().message();
    server_ = std::move(s).value();
    RegisterConsoleRoutes(*server_);
    auto port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status().message();
    client_ = std::make_unique<httplib::Client>("127.0.0.1", *port);
  }
  void TearDown() override { server_->Stop(); }

  std::unique_ptr<net::HttpsServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(ConsoleRoutesTest, EveryAssetIsServedWithItsTypeAndTheSecurityHeaders) {
  ASSERT_FALSE(AllAssets().empty());
  for (const Asset& a : AllAssets()) {
    SCOPED_TRACE(std::string(a.path));
    auto res = client_->Get("/console/" + std::string(a.path));
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200);
    EXPECT_EQ(res->body, Text(a));
    EXPECT_EQ(res->get_header_value("Content-Type"), a.content_type);
    EXPECT_FALSE(res->get_header_value("Content-Security-Policy").empty());
    EXPECT_EQ(res->get_header_value("X-Content-Type-Options"), "nosniff");
  }
}

TEST_F(ConsoleRoutesTest, RootServesTheIndexAndBareConsoleRedirects) {
  auto index = client_->Get("/console/");
  ASSERT_EQ(index->status, 200);
  EXPECT_EQ(index->body, Text(*FindAsset("index.html")));
  auto bare = client_->Get("/console");
  EXPECT_EQ(bare->status, 308);
  EXPECT_EQ(bare->get_header_value("Location"), "/console/");
}

TEST_F(ConsoleRoutesTest, UnknownAndTraversingPathsAreNotFound) {
  for (const char* path : {"/console/nope.js", "/console/../etc/passwd", "/console/js/../index.html",
                           "/console/%2e%2e/x.js", "/console/a/b/c.js"}) {
    SCOPED_TRACE(path);
    auto res = client_->Get(path);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 404);
  }
}

TEST(ConsoleAssetsTest, HtmlHasNoInlineScriptStyleOrEventHandlers) {
  const std::regex inline_script(R"(<script(?![^>]*\ssrc=)[^>]*>)", std::regex::icase);
  const std::regex handler(R"(\son[a-z]+\s*=)", std::regex::icase);
  const std::regex style_attr(R"(\sstyle\s*=)", std::regex::icase);
  int pages = 0;
  for (const Asset& a : AllAssets()) {
    if (!a.path.ends_with(".html")) continue;
    ++pages;
    SCOPED_TRACE(std::string(a.path));
    const std::string t = Text(a);
    EXPECT_FALSE(std::regex_search(t, inline_script));
    EXPECT_FALSE(std::regex_search(t, handler));
    EXPECT_FALSE(std::regex_search(t, style_attr));
    EXPECT_EQ(t.find("<style"), std::string::npos);
    EXPECT_EQ(t.find("http://"), std::string::npos) << "no other origin";
    EXPECT_EQ(t.find("https://"), std::string::npos) << "no other origin";
  }
  EXPECT_GT(pages, 0);
}

TEST(ConsoleAssetsTest, ScriptsNeverBuildHtmlFromStrings) {
  int scripts = 0;
  for (const Asset& a : AllAssets()) {
    if (!a.path.ends_with(".js")) continue;
    ++scripts;
    SCOPED_TRACE(std::string(a.path));
    const std::string t = Text(a);
    for (const char* sink : {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                             "new Function", ".style.", "setAttribute('style'", "setAttribute(\"style\""}) {
      EXPECT_EQ(t.find(sink), std::string::npos) << sink;
    }
  }
  EXPECT_GT(scripts, 0);
}

}  // namespace
}  // namespace vmseal::console
