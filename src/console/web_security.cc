#include "console/web_security.h"

#include "crypto/primitives.h"

namespace vmseal::console {
namespace {

constexpr std::string_view kCsrfLabel = "vmseal-console-csrf-v1";

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> SecurityHeaders() {
  return {
      {"Content-Security-Policy",
       "default-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; "
       "base-uri 'none'; form-action 'self'"},
      {"X-Content-Type-Options", "nosniff"},
      {"Referrer-Policy", "no-referrer"},
      {"X-Frame-Options", "DENY"},
      {"Cross-Origin-Opener-Policy", "same-origin"},
  };
}

std::string SetCookieValue(std::string_view name, std::string_view value, int64_t max_age_seconds) {
  return std::string(name) + "=" + std::string(value) + "; Path=/; Max-Age=" +
         std::to_string(max_age_seconds) + "; HttpOnly; Secure; SameSite=Strict";
}

std::string ClearCookieValue(std::string_view name) { return SetCookieValue(name, "", 0); }

std::optional<std::string> CookieValue(const net::Request& req, std::string_view name) {
  for (const auto& [field, value] : req.headers) {
    if (field != "cookie") continue;
    std::string_view rest = value;
    while (!rest.empty()) {
      const size_t semi = rest.find(';');
      std::string_view pair = Trim(rest.substr(0, semi));
      rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
      const size_t eq = pair.find('=');
      if (eq == std::string_view::npos) continue;
      if (Trim(pair.substr(0, eq)) == name) return std::string(Trim(pair.substr(eq + 1)));
    }
  }
  return std::nullopt;
}

std::string CsrfToken(const SecretBytes& session_token) {
  auto mac = crypto::HmacSha256(session_token, crypto::AsBytes(kCsrfLabel));
  // HMAC fails only on an empty key; such a session never authenticates.
  return mac.ok() ? crypto::HexEncode(*mac) : std::string();
}

bool IsStateChanging(std::string_view method) {
  return method != "GET" && method != "HEAD" && method != "OPTIONS";
}

Status CheckCsrf(const net::Request& req, const SecretBytes& session_token) {
  if (!IsStateChanging(req.method)) return OkStatus();
  const std::string got = req.Header(kCsrfHeader);
  if (got.empty()) return PermissionDeniedError("csrf: missing X-CSRF-Token");
  const std::string want = CsrfToken(session_token);
  if (want.empty() || !crypto::ConstantTimeEquals(crypto::AsBytes(got), crypto::AsBytes(want))) {
    return PermissionDeniedError("csrf: wrong X-CSRF-Token");
  }
  return OkStatus();
}

StatusOr<Credential> RequestCredential(const net::Request& req, std::string_view cookie_name) {
  const std::string h = req.Header("Authorization");
  if (!h.empty()) {
    if (!h.starts_with("Bearer ") || h.size() <= 7) return UnauthenticatedError("missing bearer token");
    return Credential{SecretBytes(crypto::AsBytes(std::string_view(h).substr(7))), CredentialSource::kBearer};
  }
  std::optional<std::string> cookie = CookieValue(req, cookie_name);
  if (!cookie.has_value() || cookie->empty()) return UnauthenticatedError("missing bearer token");
  Credential c{SecretBytes(crypto::AsBytes(*cookie)), CredentialSource::kCookie};
  RETURN_IF_ERROR(CheckCsrf(req, c.token));
  return c;
}

}  // namespace vmseal::console
