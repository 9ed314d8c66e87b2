#include "cli/portal_http.h"
#include "json/json.h"

namespace vmseal::cli {

using json = nlohmann::json;

StatusOr<std::unique_ptr<httplib::Client>> ConnectPortal(const std::string& url,
                                                         const std::string& ca_cert_file) {
  if (url.empty()) return InvalidArgumentError("--portal is required");
  if (!url.starts_with("https://") && !url.starts_with("http://")) {
    return InvalidArgumentError("--portal must be an http:// or https:// URL");
  }
  auto client = std::make_unique<httplib::Client>(url);
  if (!client->is_valid()) return InvalidArgumentError("bad --portal URL");
  if (url.starts_with("https://")) {
    if (ca_cert_file.empty()) return InvalidArgumentError("--ca-cert is required for https");
    client->set_ca_cert_path(ca_cert_file.c_str());
    client->enable_server_certificate_verification(true);
  }
  client->set_connection_timeout(10);
  client->set_read_timeout(300);
  client->set_write_timeout(300);
  return client;
}

StatusOr<json> CheckReply(const httplib::Result& res, const std::string& what) {
  if (!res) return UnavailableError(what + ": " + httplib::to_string(res.error()));
  StatusOr<json> parsed = ParseJson(res->body);
  json body = parsed.ok() ? *std::move(parsed) : json();
  if (res->status / 100 == 2) return parsed.ok() ? body : json::object();
  std::string message = "HTTP " + std::to_string(res->status);
  StatusCode code = CodeFromHttpStatus(res->status);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    message = body["error"].value("message", message);
  }
  return Status(code, what + ": " + message);
}

}  // namespace vmseal::cli
