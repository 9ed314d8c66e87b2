#include "net/https_server.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <optional>
#include <regex>
#include <thread>
#include <unordered_map>

#include "json/json.h"
#include "net/internal/connection_table.h"
#include "net/internal/listen.h"
#include "net/internal/tls_util.h"
#include "net/internal/worker_pool.h"
#include "rate_limit/rate_limit.h"

namespace vmseal::net {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

// Request line and header fields together.
constexpr uint32_t kMaxHeaderBytes = 16 << 10;
// A connection closed after its answer first has the bytes it still sends
// read raw and dropped (a refused body, up to this many, until it pauses or
// the deadline passes), so that the client reads the answer instead of a
// reset.
constexpr size_t kMaxDrainBytes = 8 << 20;
constexpr auto kDrainIdle = std::chrono::milliseconds(200);
constexpr auto kDrainDeadline = std::chrono::milliseconds(2000);
// accept() failing for want of file descriptors is retried after a pause
// (not in a busy loop).
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(50);
// File descriptors kept free for everything else in the process.
constexpr uint64_t kSpareDescriptors = 64;

// What a connection writes back.
struct Answer {
  int http_status = 200;
  std::string body;
  std::string content_type = "application/json";
  int64_t retry_after_seconds = 0;  // > 0: a Retry-After header
  bool close = false;               // end the connection after it
};

Answer JsonAnswer(int http_status, const json& body) {
  return Answer{http_status, DumpJson(body)};
}

Answer ErrorAnswer(const Status& status, int http_status = 0) {
  Answer a = JsonAnswer(http_status != 0 ? http_status : HttpStatusFromCode(status.code()),
                        ErrorBody(status));
  if (a.http_status == 429 || a.http_status == 503) {
    a.retry_after_seconds = std::max<int64_t>(1, rate_limit::RetryAfterOf(status.message()));
  }
  return a;
}

Peer PeerOf(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  // With SSL_VERIFY_PEER a presented certificate that does not verify aborts
  // the handshake; the check here is defence in depth.
  if (cert == nullptr || SSL_get_verify_result(ssl) != X509_V_OK) return {};
  Peer peer = internal::DescribeCert(cert);
  peer.authenticated = true;
  return peer;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX decoding (and '+' as a space in query strings); a malformed escape
// stays as it is.
std::string Decode(std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size()) {
      const int hi = HexValue(in[i + 1]), lo = HexValue(in[i + 2]);
      if (hi >= 0 && lo >= 0) {
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && in[i] == '+' ? ' ' : in[i]);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ParseQuery(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!q.empty()) {
    const size_t amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (part.empty()) continue;
    const size_t eq = part.find('=');
    out.emplace_back(Decode(part.substr(0, eq), true),
                     eq == std::string_view::npos ? std::string() : Decode(part.substr(eq + 1), true));
  }
  return out;
}

// The request body limit from the header alone (RFC 9112 §6.3): 411 for a
// chunked body, 413 over the limit, 400 for a Content-Length that is not one
// decimal number. Empty when the request may go on.
std::optional<Answer> CheckBodyFraming(const http::request<http::string_body>& req, uint64_t max_body_bytes) {
  auto refuse = [](int http_status, const Status& status) {
    Answer a = ErrorAnswer(status, http_status);
    a.close = true;
    return std::optional<Answer>(std::move(a));
  };
  if (req.count(http::field::transfer_encoding) > 0) {
    return refuse(411, InvalidArgumentError("length_required: send the body with Content-Length, not chunked"));
  }
  const size_t count = req.count(http::field::content_length);
  if (count == 0) return std::nullopt;
  if (count != 1) return refuse(400, InvalidArgumentError("bad request: more than one Content-Length"));
  const beast::string_view value = req[http::field::content_length];
  uint64_t length = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), length);
  if (!value.empty() && ec == std::errc::result_out_of_range) {
    return refuse(413, ResourceExhaustedError("request body too large"));
  }
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    return refuse(400, InvalidArgumentError("bad request: Content-Length is not a number"));
  }
  if (length > max_body_bytes) return refuse(413, ResourceExhaustedError("request body too large"));
  return std::nullopt;
}

// The answer to a request header Beast could not parse.
Answer HeaderErrorAnswer(const beast::error_code& ec) {
  Status status = InvalidArgumentError("bad request");
  int http_status = 400;
  if (ec == http::error::header_limit) {
    status = InvalidArgumentError("bad request: request header too large");
    http_status = 431;
  } else if (ec == http::error::bad_content_length) {
    status = InvalidArgumentError("bad request: Content-Length is not a number");
  } else if (ec == http::error::bad_transfer_encoding) {
    status = InvalidArgumentError("length_required: send the body with Content-Length, not chunked");
    http_status = 411;
  }
  Answer a = ErrorAnswer(status, http_status);
  a.close = true;
  return a;
}

struct Route {
  std::string method;
  std::string pattern;
  std::regex regex;
  // Parses the body, runs the handler, maps its errors.
  std::function<Answer(Request, const std::string& body)> run;
};

template <typename H, typename Send>
std::function<Answer(Request, const std::string&)> RunRoute(H handler, Send send) {
  return [handler = std::move(handler), send = std::move(send)](Request request, const std::string& body) {
    if (!body.empty()) {
      StatusOr<json> parsed = ParseJson(body);
      if (!parsed.ok()) return ErrorAnswer(parsed.status());
      request.body = *std::move(parsed);
    }
    try {
      auto result = handler(request);
      if (!result.ok()) return ErrorAnswer(result.status());
      return send(*std::move(result));
    } catch (const json::exception&) {
      // A handler read a field of the wrong type.
      return ErrorAnswer(InvalidArgumentError("request body: a field has the wrong type"));
    } catch (const std::exception&) {
      return ErrorAnswer(InternalError("internal error"));
    }
  };
}

bool IsHttpParseError(const beast::error_code& ec) {
  return ec.category() == beast::http::make_error_code(http::error::bad_target).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message;
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
  class Connection;

  Options options;
  asio::ssl::context ssl{asio::ssl::context::tls_server};
  std::vector<Route> routes;
  Observer observer;
  std::unique_ptr<rate_limit::KeyedTokenBucket> anonymous;  // per client address
  std::atomic<int> port{0};
  std::atomic<uint64_t> timed_out{0}, queue_full{0}, rate_limited{0};

  std::mutex mu;
  std::condition_variable stopped_cv;
  bool started = false;
  bool stopping = false;
  bool stopped = false;

  // Declared before the event loop: connections destroyed with it still
  // report to them.
  std::unique_ptr<internal::ConnectionTable> table;
  std::mutex conns_mu;
  std::unordered_map<uint64_t, std::weak_ptr<Connection>> conns;
  std::unique_ptr<internal::WorkerPool> pool;
  std::unique_ptr<asio::io_context> ioc;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<asio::steady_timer> accept_retry;
  std::vector<std::thread> io_threads;

  void Accept();
  void OnAccept(tcp::socket socket);
  void Close(uint64_t id);
  void Forget(uint64_t id) {
    std::lock_guard<std::mutex> lock(conns_mu);
    conns.erase(id);
  }
  void Observe(const std::string& method, const std::string& route, int http_status, double seconds) {
    if (observer) observer(method, route, http_status, seconds);
  }
};

// One connection, driven on its own strand: handshake, then requests one at
// a time (read header, read body, wait for the worker, write the answer).
class HttpsServer::Impl::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Impl* impl, uint64_t id, std::string address, tcp::socket socket)
      : impl_(impl), id_(id), address_(std::move(address)), stream_(std::move(socket), impl->ssl) {}
  ~Connection() {
    impl_->table->Remove(id_);
    impl_->Forget(id_);
  }

  asio::any_io_executor executor() { return stream_.get_executor(); }

  // The handshake and first request header share one deadline.
  void Start() {
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    stream_.async_handshake(asio::ssl::stream_base::server,
                            [self = shared_from_this()](beast::error_code ec) { self->OnHandshake(ec); });
  }

  // Closes the socket; pending operations end with an error. On the strand.
  void Close() {
    beast::error_code ignored;
    Tcp().socket().close(ignored);
  }

 private:
  beast::tcp_stream& Tcp() { return beast::get_lowest_layer(stream_); }

  // Ends the connection: the socket is closed when the last handler holding
  // this object returns.
  void Fail(const beast::error_code& ec) {
    if (ec == beast::error::timeout) ++impl_->timed_out;
  }

  void OnHandshake(const beast::error_code& ec) {
    if (ec) return Fail(ec);
    peer_ = PeerOf(stream_.native_handle());
    if (peer_.authenticated) impl_->table->MarkAuthenticated(id_);
    ReadHeader();
  }

  // Between requests: the keep-alive timeout until the next request's first
  // byte, then the header deadline.
  void WaitForRequest() {
    if (buffer_.size() > 0) {
      Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
      return ReadHeader();
    }
    Tcp().expires_after(std::chrono::seconds(impl_->options.keep_alive_timeout_seconds));
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
      if (ec) return;  // idle timeout or the peer left: not a failure
      self->buffer_.commit(n);
      self->Tcp().expires_after(std::chrono::seconds(self->impl_->options.read_timeout_seconds));
      self->ReadHeader();
    });
  }

  void ReadHeader() {
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    // Checked from the header in OnHeader. (Not boost::none: Beast 1.74
    // compares the length with the empty optional and refuses every body.)
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(const beast::error_code& ec) {
    if (ec) {
      if (IsHttpParseError(ec)) return Respond(HeaderErrorAnswer(ec));
      return Fail(ec);
    }
    const auto& req = parser_->get();
    if (auto refusal = CheckBodyFraming(req, impl_->options.max_body_bytes)) return Respond(*std::move(refusal));
    const uint64_t length = parser_->content_length().value_or(0);
    if (length == 0) return Dispatch();
    // The body's own deadline grows with its size (a minimum byte rate).
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds) +
                        std::chrono::milliseconds(length * 1000 / impl_->options.min_body_bytes_per_second));
    if (beast::iequals(req[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      return asio::async_write(stream_, asio::buffer(kContinue.data(), kContinue.size()),
                               [self = shared_from_this()](beast::error_code e, size_t) {
                                 if (e) return self->Fail(e);
                                 self->ReadBody();
                               });
    }
    ReadBody();
  }

  void ReadBody() {
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Fail(ec);
      self->Dispatch();
    });
  }

  void Dispatch() {
    auto& req = parser_->get();
    const auto start = SteadyClock::now();
    Request request;
    request.method = std::string(req.method_string());
    const beast::string_view target = req.target();
    const size_t question = target.find('?');
    request.path = Decode(std::string_view(target.data(), std::min(question, target.size())), false);
    if (question != beast::string_view::npos) {
      request.query = ParseQuery(std::string_view(target.data() + question + 1, target.size() - question - 1));
    }
    request.peer = peer_;
    keep_alive_ = req.keep_alive() && ++served_ < impl_->options.keep_alive_max_requests;

    const Route* route = nullptr;
    std::smatch match;
    for (const Route& r : impl_->routes) {
      if (r.method == request.method && std::regex_match(request.path, match, r.regex)) {
        route = &r;
        break;
      }
    }
    if (route == nullptr) return Respond(ErrorAnswer(NotFoundError("no such route")));
    for (size_t i = 1; i < match.size(); ++i) request.path_params.push_back(match[i]);

    // Anonymous callers are limited before the handler runs, so they cannot
    // make the service work without bound.
    if (impl_->anonymous && !peer_.authenticated) {
      const rate_limit::Decision d = impl_->anonymous->Take(address_);
      if (!d.allowed) {
        ++impl_->rate_limited;
        impl_->Observe(request.method, route->pattern, 429, 0);
        return Respond(ErrorAnswer(ResourceExhaustedError(rate_limit::RateLimitedMessage(
            "too many requests without a client certificate", d.retry_after_seconds))));
      }
    }

    impl_->table->SetBusy(id_, true);
    const std::string method = request.method;
    auto task = [self = shared_from_this(), route, request = std::move(request), body = std::move(req.body()),
                 start]() mutable {
      const std::string m = request.method;
      Answer answer = route->run(std::move(request), body);
      std::chrono::duration<double> elapsed = SteadyClock::now() - start;
      self->impl_->Observe(m, route->pattern, answer.http_status, elapsed.count());
      asio::post(self->executor(), [self, answer = std::move(answer)]() mutable { self->Respond(std::move(answer)); });
    };
    if (!impl_->pool->TrySubmit(std::move(task), peer_.authenticated)) {
      ++impl_->queue_full;
      impl_->Observe(method, route->pattern, 503, 0);
      Respond(ErrorAnswer(UnavailableError("overloaded: too many requests waiting; retry in 1 s")));
    }
  }

  void Respond(Answer answer) {
    impl_->table->SetBusy(id_, false);
    if (answer.close) keep_alive_ = false;
    res_.emplace(static_cast<http::status>(answer.http_status), 11);
    res_->set(http::field::content_type, answer.content_type);
    if (answer.retry_after_seconds > 0) res_->set(http::field::retry_after, std::to_string(answer.retry_after_seconds));
    res_->body() = std::move(answer.body);
    res_->keep_alive(keep_alive_);
    res_->prepare_payload();
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    http::async_write(stream_, *res_, [self = shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->Fail(ec);
      if (!self->keep_alive_) return self->CloseAfterAnswer();
      self->res_.reset();
      self->WaitForRequest();
    });
  }

  // Sends FIN, then reads (raw, bounded) and drops what the client still
  // sends, then closes.
  void CloseAfterAnswer() {
    beast::error_code ignored;
    Tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
    drain_deadline_ = SteadyClock::now() + kDrainDeadline;
    drain_buf_ = std::make_unique<char[]>(kDrainChunk);
    Drain();
  }

  void Drain() {
    const auto left = drain_deadline_ - SteadyClock::now();
    if (drained_ >= kMaxDrainBytes || left <= SteadyClock::duration::zero()) return Close();
    Tcp().expires_after(std::min<SteadyClock::duration>(left, kDrainIdle));
    Tcp().async_read_some(asio::buffer(drain_buf_.get(), kDrainChunk),
                          [self = shared_from_this()](beast::error_code ec, size_t n) {
                            if (ec) return self->Close();
                            self->drained_ += n;
                            self->Drain();
                          });
  }

  static constexpr size_t kDrainChunk = 16 << 10;

  Impl* const impl_;
  const uint64_t id_;
  const std::string address_;
  beast::ssl_stream<beast::tcp_stream> stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> res_;
  Peer peer_;
  bool keep_alive_ = true;
  int served_ = 0;
  SteadyClock::time_point drain_deadline_;
  std::unique_ptr<char[]> drain_buf_;
  size_t drained_ = 0;
};

void HttpsServer::Impl::Accept() {
  acceptor->async_accept(asio::make_strand(*ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (!acceptor->is_open()) return;
    if (ec) {
      // Out of file descriptors (or a connection reset before accept): wait
      // instead of spinning; connections queue in the backlog meanwhile.
      accept_retry->expires_after(kAcceptRetryDelay);
      accept_retry->async_wait([this](beast::error_code e) {
        if (!e && acceptor->is_open()) Accept();
      });
      return;
    }
    OnAccept(std::move(socket));
    Accept();
  });
}

void HttpsServer::Impl::OnAccept(tcp::socket socket) {
  beast::error_code ec;
  // Small JSON requests and answers: no Nagle delay (it adds ~40 ms per
  // request against delayed ACKs).
  socket.set_option(tcp::no_delay(true), ec);
  const auto remote = socket.remote_endpoint(ec);
  if (ec) return;
  const internal::ConnectionTable::Admission admission = table->Admit(remote.address().to_string());
  for (uint64_t id : admission.displaced) Close(id);
  if (!admission.admitted) return;  // the socket closes here
  auto conn = std::make_shared<Connection>(this, admission.id, remote.address().to_string(), std::move(socket));
  {
    std::lock_guard<std::mutex> lock(conns_mu);
    conns[admission.id] = conn;
  }
  asio::dispatch(conn->executor(), [conn] { conn->Start(); });
}

void HttpsServer::Impl::Close(uint64_t id) {
  std::shared_ptr<Connection> conn;
  {
    std::lock_guard<std::mutex> lock(conns_mu);
    auto it = conns.find(id);
    if (it != conns.end()) conn = it->second.lock();
  }
  if (conn) asio::post(conn->executor(), [conn] { conn->Close(); });
}

HttpsServer::HttpsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpsServer::~HttpsServer() { Stop(); }

StatusOr<std::unique_ptr<HttpsServer>> HttpsServer::Create(Options options) {
  if (options.max_body_bytes == 0) return InvalidArgumentError("max_body_bytes must be > 0");
  if (options.port < 0 || options.port > 65535) return InvalidArgumentError("port out of range");
  if (options.threads <= 0) return InvalidArgumentError("threads must be > 0");
  if (options.io_threads <= 0) return InvalidArgumentError("io_threads must be > 0");
  if (options.read_timeout_seconds <= 0) return InvalidArgumentError("read_timeout_seconds must be > 0");
  if (options.min_body_bytes_per_second == 0) {
    return InvalidArgumentError("min_body_bytes_per_second must be > 0");
  }
  if (options.keep_alive_max_requests <= 0) {
    return InvalidArgumentError("keep_alive_max_requests must be > 0");
  }
  if (options.keep_alive_timeout_seconds <= 0) {
    return InvalidArgumentError("keep_alive_timeout_seconds must be > 0");
  }
  if (options.max_queued_requests == 0) return InvalidArgumentError("max_queued_requests must be > 0");
  if (options.max_connections == 0 || options.max_connections_per_address == 0) {
    return InvalidArgumentError("max_connections and max_connections_per_address must be > 0");
  }
  if (options.reserved_authenticated_connections >= options.max_connections) {
    return InvalidArgumentError("reserved_authenticated_connections must be < max_connections");
  }
  if (options.anonymous_per_second < 0 || options.anonymous_burst < 0) {
    return InvalidArgumentError("anonymous rate limit must not be negative");
  }
  ASSIGN_OR_RETURN(auto chain, internal::ParseCertChainPem(options.cert_pem, "server certificate"));
  ASSIGN_OR_RETURN(auto key, internal::ParsePrivateKeyPem(options.key_pem));
  crypto::X509StorePtr client_store;
  if (!options.client_ca_pem.empty()) {
    ASSIGN_OR_RETURN(client_store, internal::StoreFromPem(options.client_ca_pem, "client CA"));
  }

  auto impl = std::make_unique<Impl>();
  SSL_CTX* ctx = impl->ssl.native_handle();
  RETURN_IF_ERROR(internal::ApplyTlsPolicy(ctx));
  // No session tickets: the clients keep their connections and never
  // resume, and each ticket serializes the session (with the client's
  // certificate) for nothing.
  SSL_CTX_set_num_tickets(ctx, 0);
  if (SSL_CTX_use_certificate(ctx, chain[0].get()) != 1 || SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    ERR_clear_error();
    return InvalidArgumentError("server certificate and key do not match");
  }
  for (size_t i = 1; i < chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(ctx, chain[i].get()) != 1) return crypto::SslError("SSL_CTX_add1_chain_cert");
  }
  if (client_store) {
    SSL_CTX_set_cert_store(ctx, client_store.release());  // takes ownership
    // Request a certificate; verify it if sent. Routes decide whether an
    // anonymous caller may proceed (e.g. /healthz).
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
  if (options.anonymous_per_second > 0) {
    impl->anonymous = std::make_unique<rate_limit::KeyedTokenBucket>(
        rate_limit::KeyedTokenBucket::Options{options.anonymous_per_second,
                                              std::max(1.0, options.anonymous_burst)});
  }
  impl->options = std::move(options);
  return std::unique_ptr<HttpsServer>(new HttpsServer(std::move(impl)));
}

namespace {
template <typename Send>
Route MakeRoute(const char* method, const std::string& pattern, Send run) {
  return Route{method, pattern, std::regex(pattern), std::move(run)};
}
}  // namespace

void HttpsServer::Get(const std::string& path_regex, JsonHandler handler) {
  impl_->routes.push_back(MakeRoute("GET", path_regex, RunRoute(std::move(handler), [](json v) {
                                      return JsonAnswer(200, v);
                                    })));
}

void HttpsServer::Post(const std::string& path_regex, JsonHandler handler, bool created) {
  const int code = created ? 201 : 200;
  impl_->routes.push_back(MakeRoute("POST", path_regex, RunRoute(std::move(handler), [code](json v) {
                                      return JsonAnswer(code, v);
                                    })));
}

void HttpsServer::Put(const std::string& path_regex, JsonHandler handler) {
  impl_->routes.push_back(MakeRoute("PUT", path_regex, RunRoute(std::move(handler), [](json v) {
                                      return JsonAnswer(200, v);
                                    })));
}

void HttpsServer::Delete(const std::string& path_regex, JsonHandler handler) {
  impl_->routes.push_back(MakeRoute("DELETE", path_regex, RunRoute(std::move(handler), [](json v) {
                                      return JsonAnswer(200, v);
                                    })));
}

void HttpsServer::GetText(const std::string& path_regex, TextHandler handler) {
  impl_->routes.push_back(MakeRoute("GET", path_regex, RunRoute(std::move(handler), [](TextResponse v) {
                                      return Answer{200, std::move(v.body), std::move(v.content_type)};
                                    })));
}

void HttpsServer::SetObserver(Observer observer) { impl_->observer = std::move(observer); }

StatusOr<int> HttpsServer::Start() {
  Impl& s = *impl_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.started) return FailedPreconditionError("server already started");
    s.started = true;
  }
  const Options& o = s.options;
  // Room for the connections: raise the soft open-file limit towards what
  // max_connections needs; with a lower hard limit, fewer connections.
  uint64_t max_connections = o.max_connections;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    const rlim_t want = static_cast<rlim_t>(o.max_connections + kSpareDescriptors);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
      rlimit raised = rl;
      raised.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min(want, rl.rlim_max);
      if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
      max_connections = std::max<uint64_t>(2 * kSpareDescriptors, rl.rlim_cur) - kSpareDescriptors;
    }
  }
  internal::ConnectionTable::Limits limits;
  limits.max_connections = max_connections;
  limits.reserved_authenticated = std::min(o.reserved_authenticated_connections, max_connections / 2);
  limits.max_per_address = o.max_connections_per_address;
  s.table = std::make_unique<internal::ConnectionTable>(limits);

  s.ioc = std::make_unique<asio::io_context>(o.io_threads);
  beast::error_code ec;
  tcp::endpoint endpoint;
  const auto address = asio::ip::make_address(o.bind_address, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, static_cast<uint16_t>(o.port));
  } else {
    tcp::resolver resolver(*s.ioc);
    auto results = resolver.resolve(o.bind_address, std::to_string(o.port), ec);
    if (!ec && !results.empty()) endpoint = results.begin()->endpoint();
  }
  const std::string where = o.bind_address + ":" + std::to_string(o.port);
  if (ec) return UnavailableError("cannot bind " + where);
  s.acceptor = std::make_unique<tcp::acceptor>(asio::make_strand(*s.ioc));
  // SO_REUSEADDR only: SO_REUSEPORT would let another process of the same
  // user bind the port too and take connections.
  s.acceptor->open(endpoint.protocol(), ec);
  if (!ec) s.acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor->bind(endpoint, ec);
  if (!ec) s.acceptor->listen(internal::kListenBacklog, ec);
  if (ec) {
    s.acceptor.reset();
    s.ioc.reset();
    return UnavailableError("cannot bind " + where);
  }
  s.port = s.acceptor->local_endpoint(ec).port();
  s.accept_retry = std::make_unique<asio::steady_timer>(s.acceptor->get_executor());
  s.pool = std::make_unique<internal::WorkerPool>(o.threads, o.max_queued_requests,
                                                  std::min(o.max_queued_anonymous_requests, o.max_queued_requests));
  asio::post(s.acceptor->get_executor(), [&s] { s.Accept(); });
  for (int i = 0; i < o.io_threads; ++i) s.io_threads.emplace_back([&s] { s.ioc->run(); });
  return s.port.load();
}

int HttpsServer::port() const { return impl_->port; }

HttpsServer::Stats HttpsServer::stats() const {
  Stats st;
  if (impl_->table) {
    const auto c = impl_->table->counts();
    st.connections_open = c.open;
    st.connections_authenticated = c.authenticated;
    st.connections_refused = c.refused_total;
    st.connections_displaced = c.displaced_total;
  }
  st.connections_timed_out = impl_->timed_out;
  st.requests_refused_queue_full = impl_->queue_full;
  st.requests_rate_limited = impl_->rate_limited;
  if (impl_->pool) st.requests_queued = impl_->pool->queued();
  return st;
}

void HttpsServer::Stop() {
  if (!impl_) return;
  Impl& s = *impl_;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    if (s.stopping) {  // another thread stops it: wait for that
      s.stopped_cv.wait(lock, [&s] { return s.stopped; });
      return;
    }
    s.stopping = true;
  }
  if (s.ioc) {
    // Stop accepting (on the acceptor's strand), let the workers finish what
    // they hold, close every connection, then stop the loop.
    std::promise<void> closed;
    asio::post(s.acceptor->get_executor(), [&s, &closed] {
      beast::error_code ignored;
      s.acceptor->close(ignored);
      s.accept_retry->cancel();
      closed.set_value();
    });
    closed.get_future().wait();
    s.pool->Stop();
    std::vector<uint64_t> ids;
    {
      std::lock_guard<std::mutex> lock(s.conns_mu);
      for (const auto& [id, conn] : s.conns) ids.push_back(id);
    }
    for (uint64_t id : ids) s.Close(id);
    // Closed connections end within milliseconds once their handlers run;
    // the loop is stopped regardless after a bounded wait.
    for (int i = 0; i < 1000; ++i) {
      {
        std::lock_guard<std::mutex> lock(s.conns_mu);
        if (s.conns.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    s.ioc->stop();
    for (auto& t : s.io_threads) t.join();
    s.io_threads.clear();
    // Destroys the handlers still queued, and with them the connections.
    s.accept_retry.reset();
    s.acceptor.reset();
    s.ioc.reset();
  }
  std::lock_guard<std::mutex> lock(s.mu);
  s.stopped = true;
  s.stopped_cv.notify_all();
}

void HttpsServer::Wait() {
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->stopped_cv.wait(lock, [this] { return impl_->stopped; });
}

}  // namespace vmseal::net
