#include "net/https_client.h"

#include <httplib.h>

#include <openssl/err.h>

#include <poll.h>

#include <chrono>
#include <functional>
#include <mutex>

#include "json/json.h"
#include "net/internal/tls_util.h"

namespace vmseal::net {
namespace {

using nlohmann::json;

StatusOr<json> FromResult(const httplib::Result& result) {
  if (!result) {
    return UnavailableError("HTTPS request failed: " + httplib::to_string(result.error()));
  }
  const httplib::Response& res = result.value();
  json body;
  if (!res.body.empty()) {
    StatusOr<json> parsed = ParseJson(res.body);
    if (parsed.ok()) body = *std::move(parsed);
  }
  if (res.status >= 200 && res.status < 300) {
    if (!res.body.empty() && body.is_null()) {
      return DataLossError("server answered with malformed JSON");
    }
    return body;
  }
  StatusCode code = CodeFromHttpStatus(res.status);
  std::string message = "HTTP " + std::to_string(res.status);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    const json& err = body["error"];
    if (err.contains("message") && err["message"].is_string()) {
      message = err["message"].get<std::string>();
    }
    if (err.contains("code") && err["code"].is_string()) {
      std::string name = err["code"].get<std::string>();
      for (int c = 1; c <= 16; ++c) {
        if (StatusCodeName(static_cast<StatusCode>(c)) == name) code = static_cast<StatusCode>(c);
      }
    }
  }
  if (code == StatusCode::kOk) code = StatusCode::kUnknown;
  return Status(code, message);
}

}  // namespace

struct HttpsClient::Impl {
  std::unique_ptr<httplib::SSLClient> client;
  std::mutex mu;  // httplib clients are not thread-safe; guards all below
  std::chrono::steady_clock::duration idle_reconnect{};
  // When the last request on the kept-alive connection ended.
  std::chrono::steady_clock::time_point last_used{};

  // Sends with `call` (under mu). See the header for the retry rules.
  httplib::Result Send(bool idempotent, const std::function<httplib::Result()>& call);
};

namespace {

// An idle kept-alive connection has nothing to read; readable (close_notify,
// FIN) or hung up means the server has closed it.
bool ServerClosed(int fd) {
  pollfd p{};
  p.fd = fd;
  p.events = POLLIN;
  return ::poll(&p, 1, 0) != 0;
}

// No answer: the connection broke while writing the request or reading the
// answer. (A failed connect is not retried: it would only double the wait.)
bool NoAnswer(httplib::Error e) {
  return e == httplib::Error::Read || e == httplib::Error::Write;
}

}  // namespace

httplib::Result HttpsClient::Impl::Send(bool idempotent,
                                        const std::function<httplib::Result()>& call) {
  bool reused = client->is_socket_open() != 0;
  if (reused) {
    const bool idle_long = std::chrono::steady_clock::now() - last_used > idle_reconnect;
    if (ServerClosed(static_cast<int>(client->socket())) || (!idempotent && idle_long)) {
      client->stop();  // closes the socket; the request opens a new one
      reused = false;
    }
  }
  httplib::Result result = call();
  if (!result && ((idempotent && NoAnswer(result.error())) ||
                  (reused && result.error() == httplib::Error::Write))) {
    client->stop();
    result = call();
  }
  last_used = std::chrono::steady_clock::now();
  return result;
}

HttpsClient::HttpsClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpsClient::~HttpsClient() = default;

StatusOr<std::unique_ptr<HttpsClient>> HttpsClient::Create(Options options) {
  if (options.ca_pem.empty()) return InvalidArgumentError("client: a CA to pin is required");
  if (options.port <= 0 || options.port > 65535) return InvalidArgumentError("port out of range");
  if (!(options.idle_reconnect_seconds >= 0)) {
    return InvalidArgumentError("idle_reconnect_seconds must be >= 0");
  }
  ASSIGN_OR_RETURN(auto store, internal::StoreFromPem(options.ca_pem, "server CA"));
  std::unique_ptr<httplib::SSLClient> client;
  if (!options.cert_pem.empty()) {
    ASSIGN_OR_RETURN(auto chain,
                     internal::ParseCertChainPem(options.cert_pem, "client certificate"));
    ASSIGN_OR_RETURN(auto key, internal::ParsePrivateKeyPem(options.key_pem));
    if (X509_check_private_key(chain[0].get(), key.get()) != 1) {
      ERR_clear_error();
      return InvalidArgumentError("client certificate and key do not match");
    }
    // httplib takes its own references.
    client = std::make_unique<httplib::SSLClient>(options.host, options.port, chain[0].get(),
                                                  key.get());
  } else {
    client = std::make_unique<httplib::SSLClient>(options.host, options.port);
  }
  if (!client->is_valid()) return crypto::SslError("TLS client setup");
  SSL_CTX* ctx = client->ssl_context();
  RETURN_IF_ERROR(internal::ApplyTlsPolicy(ctx));
  client->set_ca_cert_store(store.release());  // takes ownership
  // OpenSSL verifies the server in the handshake, against the pinned store
  // only (see VerifyServerInHandshake).
  client->enable_server_certificate_verification(false);
  RETURN_IF_ERROR(internal::VerifyServerInHandshake(ctx, options.host));
  client->set_connection_timeout(options.timeout_seconds, 0);
  client->set_read_timeout(options.timeout_seconds, 0);
  client->set_write_timeout(options.timeout_seconds, 0);
  client->set_keep_alive(true);
  client->set_tcp_nodelay(true);  // see https_server.cc
  auto impl = std::make_unique<Impl>();
  impl->client = std::move(client);
  impl->idle_reconnect = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(options.idle_reconnect_seconds));
  return std::unique_ptr<HttpsClient>(new HttpsClient(std::move(impl)));
}

StatusOr<json> HttpsClient::Get(const std::string& path) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return FromResult(impl_->Send(true, [&] { return impl_->client->Get(path); }));
}

StatusOr<json> HttpsClient::Post(const std::string& path, const json& body) {
  return PostRaw(path, DumpJson(body), "application/json");
}

StatusOr<json> HttpsClient::PostRaw(const std::string& path, const std::string& body,
                                    const std::string& content_type) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return FromResult(
      impl_->Send(false, [&] { return impl_->client->Post(path, body, content_type); }));
}

StatusOr<json> HttpsClient::Put(const std::string& path, const json& body) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  const std::string text = DumpJson(body);
  return FromResult(
      impl_->Send(true, [&] { return impl_->client->Put(path, text, "application/json"); }));
}

StatusOr<json> HttpsClient::Delete(const std::string& path) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return FromResult(impl_->Send(true, [&] { return impl_->client->Delete(path); }));
}

StatusOr<std::string> HttpsClient::GetText(const std::string& path) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto result = impl_->Send(true, [&] { return impl_->client->Get(path); });
  if (!result) {
    return UnavailableError("HTTPS request failed: " + httplib::to_string(result.error()));
  }
  if (result->status != 200) {
    ASSIGN_OR_RETURN(auto ignored, FromResult(result));
    return UnknownError("HTTP " + std::to_string(result->status));
  }
  return result->body;
}

}  // namespace vmseal::net
