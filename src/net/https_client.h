// An HTTPS client for the services: TLS 1.3 only, the server certificate is
// verified against a pinned CA (never the system store) and must name the
// host; optionally presents a client certificate. Returns parsed JSON or the
// server's error as a Status with the server's code and message.
#ifndef VMSEAL_NET_HTTPS_CLIENT_H_
#define VMSEAL_NET_HTTPS_CLIENT_H_

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::net {

class HttpsClient {
 public:
  struct Options {
    // Host name or IP the server certificate must name, and its port.
    std::string host = "127.0.0.1";
    int port = 0;
    // PEM CA certificate(s) the server must chain to. Required.
    std::string ca_pem;
    // Optional client certificate (PEM) and key (PEM) for mutual TLS.
    std::string cert_pem;
    SecretBytes key_pem;
    // Connect + read timeout in seconds. Default 10.
    int timeout_seconds = 10;
    // A kept-alive connection idle for longer than this is replaced by a
    // new one before a POST (servers drop idle connections, typically after
    // 5 s, and a POST is not retried once it may have been received).
    // Default 2 s.
    double idle_reconnect_seconds = 2.0;
  };

  static StatusOr<std::unique_ptr<HttpsClient>> Create(Options options);
  ~HttpsClient();
  HttpsClient(const HttpsClient&) = delete;
  HttpsClient& operator=(const HttpsClient&) = delete;

  // Sends the request; a 2xx answer's JSON body (null when empty) is
  // returned, an error answer becomes its {"error":{...}} as a Status
  // (code from the body, else from the HTTP status). Connection and TLS
  // failures are UNAVAILABLE.
  //
  // Connections are kept alive. A kept-alive connection the server has
  // closed (readable while idle) is replaced before sending. When no answer
  // arrives (the connection broke while writing or reading), GET, PUT and
  // DELETE are sent once more on a new connection; a POST only when the failure happened
  // while writing it on a reused connection (the server cannot have acted on
  // an incomplete request), and before a POST a connection idle for longer
  // than Options::idle_reconnect_seconds is replaced.
  StatusOr<nlohmann::json> Get(const std::string& path);
  StatusOr<nlohmann::json> Post(const std::string& path, const nlohmann::json& body);
  StatusOr<nlohmann::json> Put(const std::string& path, const nlohmann::json& body);
  StatusOr<nlohmann::json> Delete(const std::string& path);
  // Posts raw bytes with the given content type (for tests of bad input).
  StatusOr<nlohmann::json> PostRaw(const std::string& path, const std::string& body,
                                   const std::string& content_type);
  // A GET whose body is returned as text (e.g. /metrics).
  StatusOr<std::string> GetText(const std::string& path);

 private:
  struct Impl;
  explicit HttpsClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmseal::net

#endif  // VMSEAL_NET_HTTPS_CLIENT_H_
