#include "console/web_security.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"

namespace vmseal::console {
namespace {

SecretBytes Token(std::string_view s) { return SecretBytes(crypto::AsBytes(s)); }

net::Request WithHeaders(std::string method, std::vector<std::pair<std::string, std::string>> headers) {
  net::Request r;
  r.method = std::move(method);
  r.path = "/v1/launch";
  r.headers = std::move(headers);
  return r;
}

TEST(WebSecurityTest, SessionCookieIsHttpOnlySecureAndSameSiteStrict) {
  const std::string c = SetCookieValue(kSessionCookie, "vst_abc", 3600);
  EXPECT_TRUE(c.starts_with("vmseal_session=vst_abc;"));
  EXPECT_NE(c.find("; HttpOnly"), std::string::npos);
  EXPECT_NE(c.find("; Secure"), std::string::npos);
  EXPECT_NE(c.find("; SameSite=Strict"), std::string::npos);
  EXPECT_NE(c.find("; Path=/"), std::string::npos);
  EXPECT_NE(c.find("Max-Age=3600"), std::string::npos);
  EXPECT_NE(ClearCookieValue(kSessionCookie).find("Max-Age=0"), std::string::npos);
}

TEST(WebSecurityTest, ContentSecurityPolicyAllowsNoInlineScriptOrStyle) {
  std::string csp;
  bool nosniff = false, referrer = false;
  for (const auto& [k, v] : SecurityHeaders()) {
    if (k == "Content-Security-Policy") csp = v;
    if (k == "X-Content-Type-Options" && v == "nosniff") nosniff = true;
    if (k == "Referrer-Policy" && v == "no-referrer") referrer = true;
  }
  EXPECT_NE(csp.find("default-src 'self'"), std::string::npos);
  EXPECT_NE(csp.find("script-src 'self'"), std::string::npos);
  EXPECT_NE(csp.find("object-src 'none'"), std::string::npos);
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos);
  EXPECT_EQ(csp.find("unsafe-inline"), std::string::npos);
  EXPECT_EQ(csp.find("unsafe-eval"), std::string::npos);
  EXPECT_TRUE(nosniff);
  EXPECT_TRUE(referrer);
}

TEST(WebSecurityTest, CookieValueFindsTheNamedCookieAmongOthers) {
  net::Request r = WithHeaders("GET", {{"cookie", "a=1; vmseal_session=vst_x ; b=2"}});
  EXPECT_EQ(CookieValue(r, kSessionCookie).value_or(""), "vst_x");
  EXPECT_EQ(CookieValue(r, "a").value_or(""), "1");
  EXPECT_FALSE(CookieValue(r, "vmseal").has_value());
  // A cookie whose name merely ends with ours is not ours.
  net::Request evil = WithHeaders("GET", {{"cookie", "xvmseal_session=vst_y"}});
  EXPECT_FALSE(CookieValue(evil, kSessionCookie).has_value());
}

TEST(WebSecurityTest, CsrfTokenIsBoundToTheSession) {
  const std::string a = CsrfToken(Token("vst_a"));
  EXPECT_EQ(a.size(), 64u);
  EXPECT_EQ(a, CsrfToken(Token("vst_a")));
  EXPECT_NE(a, CsrfToken(Token("vst_b")));
}

TEST(WebSecurityTest, CookieCredentialOnAPostWithoutCsrfTokenIsRefused) {
  net::Request r = WithHeaders("POST", {{"cookie", "vmseal_session=vst_a"}});
  auto c = RequestCredential(r, kSessionCookie);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(c.status().message().find("csrf: missing"), std::string::npos);
}

TEST(WebSecurityTest, CookieCredentialWithAnotherSessionsCsrfTokenIsRefused) {
  net::Request r = WithHeaders("DELETE", {{"cookie", "vmseal_session=vst_a"},
                                          {"x-csrf-token", CsrfToken(Token("vst_b"))}});
  auto c = RequestCredential(r, kSessionCookie);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("csrf: wrong"), std::string::npos);
}

TEST(WebSecurityTest, CookieCredentialWithItsCsrfTokenPasses) {
  net::Request r = WithHeaders("POST", {{"cookie", "vmseal_session=vst_a"},
                                        {"x-csrf-token", CsrfToken(Token("vst_a"))}});
  auto c = RequestCredential(r, kSessionCookie);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->source, CredentialSource::kCookie);
  EXPECT_TRUE(c->token.Equals(Token("vst_a")));
}

TEST(WebSecurityTest, SafeMethodWithCookieNeedsNoCsrfToken) {
  net::Request r = WithHeaders("GET", {{"cookie", "vmseal_session=vst_a"}});
  EXPECT_TRUE(RequestCredential(r, kSessionCookie).ok());
}

TEST(WebSecurityTest, BearerTokenNeedsNoCsrfTokenAndWinsOverTheCookie) {
  net::Request r = WithHeaders("POST", {{"authorization", "Bearer vst_cli"}, {"cookie", "vmseal_session=vst_a"}});
  auto c = RequestCredential(r, kSessionCookie);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->source, CredentialSource::kBearer);
  EXPECT_TRUE(c->token.Equals(Token("vst_cli")));
}

TEST(WebSecurityTest, NoCredentialIsUnauthenticated) {
  auto c = RequestCredential(WithHeaders("GET", {}), kSessionCookie);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace vmseal::console
