#include "console/console_routes.h"

#include "console/assets.h"
#include "console/web_security.h"

namespace vmseal::console {
namespace {

StatusOr<net::TextResponse> Serve(std::string_view path) {
  const Asset* a = FindAsset(path);
  if (a == nullptr) return NotFoundError("no such console page");
  net::TextResponse out;
  out.body.assign(reinterpret_cast<const char*>(a->bytes.data()), a->bytes.size());
  out.content_type = std::string(a->content_type);
  // Pages change with the binary; a browser revalidates each load.
  out.headers.emplace_back("Cache-Control", "no-cache");
  return out;
}

}  // namespace

void RegisterConsoleRoutes(net::HttpsServer& server) {
  server.SetDefaultHeaders(SecurityHeaders());
  server.Text("GET", "/console", [](const net::Request&) -> StatusOr<net::TextResponse> {
    net::TextResponse out;
    out.http_status = 308;
    out.content_type = "text/plain; charset=utf-8";
    out.body = "/console/\n";
    out.headers.emplace_back("Location", "/console/");
    return out;
  });
  server.Text("GET", "/console/", [](const net::Request&) { return Serve("index.html"); });
  // Asset names: letters, digits, '-', '_', '.', one level of folder; no "..".
  server.Text("GET", R"(/console/((?:[A-Za-z0-9_-]+/)?[A-Za-z0-9_-]+\.[a-z]+))",
              [](const net::Request& req) { return Serve(req.path_params[0]); });
}

}  // namespace vmseal::console
