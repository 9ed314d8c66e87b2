// The console's web security (docs/console.md "Web security"): the session
// cookie, the CSRF token that every state-changing call made with the cookie
// must carry, and the header fields sent with every portal answer.
//
// A browser holds the portal's session token only in an HttpOnly, Secure,
// SameSite=Strict cookie, so page scripts never see it. The CSRF token is
// HMAC-SHA256(key = session token, "vmseal-console-csrf-v1"): a page of
// the portal's origin reads it from GET /v1/console/session (another origin
// cannot read that answer), and the portal recomputes it from the cookie.
// Stateless, so it survives a portal restart exactly as the session does.
#ifndef VMSEAL_CONSOLE_WEB_SECURITY_H_
#define VMSEAL_CONSOLE_WEB_SECURITY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "net/https_server.h"

namespace vmseal::console {

// Cookie names: a customer's session token, and the operator's credential.
inline constexpr char kSessionCookie[] = "vmseal_session";
inline constexpr char kOperatorCookie[] = "vmseal_operator";
// The request header that carries the CSRF token.
inline constexpr char kCsrfHeader[] = "X-CSRF-Token";

// The header fields of every portal answer: Content-Security-Policy
// (default-src 'self'; script-src 'self'; object-src 'none';
// frame-ancestors 'none'; no inline script or style), X-Content-Type-Options,
// Referrer-Policy, X-Frame-Options and Cross-Origin-Opener-Policy.
std::vector<std::pair<std::string, std::string>> SecurityHeaders();

// A Set-Cookie value that stores `value` under `name` for `max_age_seconds`:
// Path=/, HttpOnly, Secure, SameSite=Strict.
std::string SetCookieValue(std::string_view name, std::string_view value, int64_t max_age_seconds);
// A Set-Cookie value that removes the cookie `name`.
std::string ClearCookieValue(std::string_view name);

// The value of cookie `name` in the request's Cookie header fields, or
// nullopt. Values are taken as they are (no decoding).
std::optional<std::string> CookieValue(const net::Request& req, std::string_view name);

// The CSRF token of a session: lowercase hex, 64 characters.
std::string CsrfToken(const SecretBytes& session_token);

// True for methods that change state (anything but GET, HEAD, OPTIONS).
bool IsStateChanging(std::string_view method);

// Checks the request's X-CSRF-Token against the session's token in constant
// time: PERMISSION_DENIED "csrf: ..." when it is missing or wrong. Safe
// methods pass without one.
Status CheckCsrf(const net::Request& req, const SecretBytes& session_token);

// Where a request's credential came from.
enum class CredentialSource { kBearer, kCookie };
struct Credential {
  SecretBytes token;
  CredentialSource source = CredentialSource::kBearer;
};

// The request's credential: an `Authorization: Bearer` header, else the
// cookie `cookie_name`. A cookie credential on a state-changing request must
// carry the CSRF token (CheckCsrf). UNAUTHENTICATED when there is neither.
StatusOr<Credential> RequestCredential(const net::Request& req, std::string_view cookie_name);

}  // namespace vmseal::console

#endif  // VMSEAL_CONSOLE_WEB_SECURITY_H_
