#include "net/https_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "net/internal/body_limit.h"
#include "json/json.h"
#include "net/internal/listen.h"
#include "net/internal/tls_util.h"
#include "rate_limit/rate_limit.h"

namespace vmseal::net {
namespace {

using nlohmann::json;

void SendJson(httplib::Response& res, int http_status, const json& body) {
  res.status = http_status;
  res.set_content(DumpJson(body), "application/json");
}

void SendError(httplib::Response& res, const Status& status) {
  SendJson(res, HttpStatusFromCode(status.code()), ErrorBody(status));
}

Peer PeerOf(const httplib::Request& req) {
  if (req.ssl == nullptr) return {};
  X509* cert = SSL_get0_peer_certificate(req.ssl);
  // With SSL_VERIFY_PEER a presented certificate that does not verify aborts
  // the handshake; the check here is defence in depth.
  if (cert == nullptr || SSL_get_verify_result(req.ssl) != X509_V_OK) return {};
  Peer peer = internal::DescribeCert(cert);
  peer.authenticated = true;
  return peer;
}

// Parses the request; false means an error answer was already written.
bool BuildRequest(const httplib::Request& req, httplib::Response& res, Request* out) {
  out->method = req.method;
  out->path = req.path;
  for (size_t i = 1; i < req.matches.size(); ++i) out->path_params.push_back(req.matches[i]);
  for (const auto& [k, v] : req.params) out->query.emplace_back(k, v);
  out->peer = PeerOf(req);
  if (!req.body.empty()) {
    StatusOr<json> parsed = ParseJson(req.body);
    if (!parsed.ok()) {
      SendError(res, parsed.status());
      return false;
    }
    out->body = *std::move(parsed);
  }
  return true;
}

}  // namespace

std::string Request::QueryParam(const std::string& name, const std::string& fallback) const {
  std::string value = fallback;
  for (const auto& [k, v] : query) {
    if (k == name) value = v;
  }
  return value;
}

json ErrorBody(const Status& status) {
  json err = {{"code", std::string(StatusCodeName(status.code()))}, {"message", status.message()}};
  // A machine-readable reason leads the message as "<reason>: ..." (e.g.
  // "pcr_policy: ..."); expose it as its own field too.
  const std::string& m = status.message();
  const size_t colon = m.find(": ");
  if (colon != std::string::npos && colon > 0 && colon <= 40 &&
      m.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") >= colon) {
    err["reason"] = m.substr(0, colon);
  }
  return json{{"error", err}};
}

struct HttpsServer::Impl {
  Options options;
  std::unique_ptr<httplib::SSLServer> server;
  std::atomic<int> listen_fd{-1};  // set when httplib creates the listening socket
  Observer observer;
  std::thread thread;
  std::atomic<int> port{0};
  std::unique_ptr<rate_limit::KeyedTokenBucket> anonymous;  // per client address
  std::mutex mu;
  std::condition_variable stopped_cv;
  bool stopped = false;

  // Wraps a handler: parse, run, map errors, observe.
  template <typename H, typename Send>
  httplib::Server::Handler Wrap(std::string route, H handler, Send send) {
    return [this, route, handler, send](const httplib::Request& req, httplib::Response& res) {
      auto start = std::chrono::steady_clock::now();
      Request request;
      if (anonymous && !PeerOf(req).authenticated) {
        rate_limit::Decision d = anonymous->Take(req.remote_addr);
        if (!d.allowed) {
          res.set_header("Retry-After", std::to_string(d.retry_after_seconds));
          SendError(res, ResourceExhaustedError(rate_limit::RateLimitedMessage(
                             "too many requests without a client certificate",
                             d.retry_after_seconds)));
          if (observer) observer(req.method, route, res.status, 0);
          return;
        }
      }
      if (BuildRequest(req, res, &request)) {
        try {
          auto result = handler(request);
          if (result.ok()) {
            send(res, *std::move(result));
          } else {
            SendError(res, result.status());
          }
        } catch (const json::exception&) {
          // A handler read a field of the wrong type.
          SendError(res, InvalidArgumentError("request body: a field has the wrong type"));
        } catch (const std::exception&) {
          SendError(res, InternalError("internal error"));
        }
      }
      if (observer) {
        std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
        observer(req.method, route, res.status, elapsed.count());
      }
    };
  }
};

HttpsServer::HttpsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpsServer::~HttpsServer() { Stop(); }

StatusOr<std::unique_ptr<HttpsServer>> HttpsServer::Create(Options options) {
  if (options.max_body_bytes == 0) return InvalidArgumentError("max_body_bytes must be > 0");
  if (options.port < 0 || options.port > 65535) return InvalidArgumentError("port out of range");
  if (options.threads <= 0) return InvalidArgumentError("threads must be > 0");
  if (options.keep_alive_max_requests <= 0) {
    return InvalidArgumentError("keep_alive_max_requests must be > 0");
  }
  if (options.keep_alive_timeout_seconds <= 0) {
    return InvalidArgumentError("keep_alive_timeout_seconds must be > 0");
  }
  ASSIGN_OR_RETURN(auto chain, internal::ParseCertChainPem(options.cert_pem, "server certificate"));
  ASSIGN_OR_RETURN(auto key, internal::ParsePrivateKeyPem(options.key_pem));
  crypto::X509StorePtr client_store;
  if (!options.client_ca_pem.empty()) {
    ASSIGN_OR_RETURN(client_store, internal::StoreFromPem(options.client_ca_pem, "client CA"));
  }
  Status setup_status;
  auto server = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
    setup_status = internal::ApplyTlsPolicy(&ctx);
    if (!setup_status.ok()) return false;
    // No session tickets: the clients keep their connections and never
    // resume, and each ticket serializes the session (with the client's
    // certificate) for nothing.
    SSL_CTX_set_num_tickets(&ctx, 0);
    if (SSL_CTX_use_certificate(&ctx, chain[0].get()) != 1 ||
        SSL_CTX_use_PrivateKey(&ctx, key.get()) != 1 || SSL_CTX_check_private_key(&ctx) != 1) {
      setup_status = InvalidArgumentError("server certificate and key do not match");
      ERR_clear_error();
      return false;
    }
    for (size_t i = 1; i < chain.size(); ++i) {
      if (SSL_CTX_add1_chain_cert(&ctx, chain[i].get()) != 1) {
        setup_status = crypto::SslError("SSL_CTX_add1_chain_cert");
        return false;
      }
    }
    if (client_store) {
      SSL_CTX_set_cert_store(&ctx, client_store.release());  // takes ownership
      // Request a certificate; verify it if sent. Routes decide whether an
      // anonymous caller may proceed (e.g. /healthz).
      SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER, nullptr);
    }
    return true;
  });
  if (!setup_status.ok()) return setup_status;
  if (!server->is_valid()) return crypto::SslError("TLS server setup");

  auto impl = std::make_unique<Impl>();
  internal::UseListenSocketOptions(server.get(), &impl->listen_fd);
  server->set_payload_max_length(options.max_body_bytes);
  internal::LimitBodies(server.get(), [max = options.max_body_bytes](const httplib::Request&) { return max; });
  server->set_read_timeout(options.read_timeout_seconds, 0);
  // Small JSON requests and answers: no Nagle delay (it adds ~40 ms per
  // request against delayed ACKs).
  server->set_tcp_nodelay(true);
  server->set_write_timeout(options.read_timeout_seconds, 0);
  server->set_keep_alive_timeout(options.keep_alive_timeout_seconds);
  server->set_keep_alive_max_count(static_cast<size_t>(options.keep_alive_max_requests));
  int threads = options.threads;
  server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server->set_error_handler(httplib::Server::HandlerWithResponse(
      [](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    Status status = res.status == 404   ? NotFoundError("no such route")
                    : res.status == 413 ? ResourceExhaustedError("request body too large")
                    : res.status == 405 ? UnimplementedError("method not allowed")
                                        : InvalidArgumentError("bad request");
    res.set_content(DumpJson(ErrorBody(status)), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  if (options.anonymous_per_second < 0 || options.anonymous_burst < 0) {
    return InvalidArgumentError("anonymous rate limit must not be negative");
  }
  if (options.anonymous_per_second > 0) {
    impl->anonymous = std::make_unique<rate_limit::KeyedTokenBucket>(
        rate_limit::KeyedTokenBucket::Options{options.anonymous_per_second,
                                              std::max(1.0, options.anonymous_burst)});
  }
  impl->options = std::move(options);
  impl->server = std::move(server);
  return std::unique_ptr<HttpsServer>(new HttpsServer(std::move(impl)));
}

void HttpsServer::Get(const std::string& path_regex, JsonHandler handler) {
  impl_->server->Get(path_regex, impl_->Wrap(path_regex, std::move(handler),
                                             [](httplib::Response& res, json v) {
                                               SendJson(res, 200, v);
                                             }));
}

void HttpsServer::Post(const std::string& path_regex, JsonHandler handler, bool created) {
  int code = created ? 201 : 200;
  impl_->server->Post(path_regex, impl_->Wrap(path_regex, std::move(handler),
                                               [code](httplib::Response& res, json v) {
                                                 SendJson(res, code, v);
                                               }));
}

void HttpsServer::Put(const std::string& path_regex, JsonHandler handler) {
  impl_->server->Put(path_regex, impl_->Wrap(path_regex, std::move(handler),
                                             [](httplib::Response& res, json v) {
                                               SendJson(res, 200, v);
                                             }));
}

void HttpsServer::Delete(const std::string& path_regex, JsonHandler handler) {
  impl_->server->Delete(path_regex, impl_->Wrap(path_regex, std::move(handler),
                                                [](httplib::Response& res, json v) {
                                                  SendJson(res, 200, v);
                                                }));
}

void HttpsServer::GetText(const std::string& path_regex, TextHandler handler) {
  impl_->server->Get(path_regex, impl_->Wrap(path_regex, std::move(handler),
                                             [](httplib::Response& res, TextResponse v) {
                                               res.status = 200;
                                               res.set_content(v.body, v.content_type.c_str());
                                             }));
}

void HttpsServer::SetObserver(Observer observer) { impl_->observer = std::move(observer); }

StatusOr<int> HttpsServer::Start() {
  if (impl_->thread.joinable()) return FailedPreconditionError("server already started");
  int port;
  if (impl_->options.port == 0) {
    port = impl_->server->bind_to_any_port(impl_->options.bind_address);
  } else {
    port = impl_->server->bind_to_port(impl_->options.bind_address, impl_->options.port)
               ? impl_->options.port
               : -1;
  }
  if (port <= 0) {
    return UnavailableError("cannot bind " + impl_->options.bind_address + ":" +
                            std::to_string(impl_->options.port));
  }
  impl_->port = port;
  RETURN_IF_ERROR(internal::WidenListenBacklog(impl_->listen_fd, impl_->options.bind_address));
  impl_->thread = std::thread([this] { impl_->server->listen_after_bind(); });
  // stop() is a no-op until the accept loop runs, so wait for it (bounded).
  for (int i = 0; i < 5000 && !impl_->server->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!impl_->server->is_running()) return InternalError("server did not start");
  return port;
}

int HttpsServer::port() const { return impl_->port; }

void HttpsServer::Stop() {
  if (!impl_) return;
  impl_->server->stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->stopped = true;
  impl_->stopped_cv.notify_all();
}

void HttpsServer::Wait() {
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->stopped_cv.wait(lock, [this] { return impl_->stopped; });
}

}  // namespace vmseal::net
