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
  // Header fields the route adds (e.g. Set-Cookie).
  std::vector<std::pair<std::string, std::string>> headers;
};

Answer JsonAnswer(int http_status, const json& body) {
  return Answer{http_status, DumpJson(body)};
}

// Streamed bodies reach their sink in pieces of this size (the portal
// appends and fsyncs each), and files are sent in pieces of this size.
constexpr size_t kStreamPieceBytes = 4 << 20;
constexpr size_t kFilePieceBytes = 256 << 10;

Answer ErrorAnswer(const Status& status, int http_status = 0,
                   const HttpsServer::ErrorBodyFunction* error_body = nullptr) {
  Answer a = JsonAnswer(http_status != 0 ? http_status : HttpStatusFromCode(status.code()),
                        error_body != nullptr && *error_body ? (*error_body)(status) : ErrorBody(status));
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

// The literal text every path a route's pattern matches starts and ends
// with (possibly empty), so that a request is matched against the regex of
// only the routes whose affixes it has: std::regex_match costs microseconds
// per route, and a server has dozens of routes. Conservative: any
// construct it does not read as plain literals ends an affix, and an
// alternation outside parentheses empties both.
struct LiteralAffixes {
  std::string prefix, suffix;
};
LiteralAffixes LiteralAffixesOf(std::string_view pattern) {
  auto meta = [](char c) { return std::string_view(".[](){}*+?|^$\\").find(c) != std::string_view::npos; };
  auto quantifier = [](char c) { return c == '*' || c == '+' || c == '?' || c == '{'; };
  int depth = 0;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\') {
      ++i;
    } else if (in_class) {
      in_class = c != ']';
    } else if (c == '[') {
      in_class = true;
    } else if (c == '(') {
      ++depth;
    } else if (c == ')') {
      --depth;
    } else if (c == '|' && depth == 0) {
      return {};
    }
  }
  LiteralAffixes out;
  size_t begin = !pattern.empty() && pattern[0] == '^' ? 1 : 0;
  size_t i = begin;
  while (i < pattern.size() && !meta(pattern[i])) ++i;
  // A quantifier after the literals applies to the last one.
  if (i < pattern.size() && quantifier(pattern[i]) && i > begin) --i;
  out.prefix = std::string(pattern.substr(begin, i - begin));
  size_t end = pattern.size();
  if (end > 0 && pattern[end - 1] == '$' && (end < 2 || pattern[end - 2] != '\\')) --end;
  size_t j = end;
  while (j > i && !meta(pattern[j - 1])) --j;  // never into the prefix
  // The first literal after a backslash is an escape (\d, \w), not text.
  if (j > 0 && j < end && pattern[j - 1] == '\\') ++j;
  out.suffix = std::string(pattern.substr(j, end - j));
  return out;
}

struct Route {
  Route(std::string m, std::string p) : method(std::move(m)), pattern(std::move(p)), regex(pattern) {
    const LiteralAffixes a = LiteralAffixesOf(pattern);
    prefix = a.prefix;
    suffix = a.suffix;
  }
  // Whether `path` can match the pattern at all (its literal affixes).
  bool MayMatch(std::string_view path) const {
    return path.size() >= prefix.size() + suffix.size() && path.substr(0, prefix.size()) == prefix &&
           path.substr(path.size() - suffix.size()) == suffix;
  }
  std::string method;
  std::string pattern;
  std::regex regex;
  std::string prefix, suffix;  // LiteralAffixesOf(pattern)
  // JSON and text routes: parses the body, runs the handler, maps its errors.
  std::function<Answer(Request&, const std::string& body)> run;
  // File routes (GET and HEAD).
  FileHandler file;
  // Streamed-body routes, with their own body limit.
  BodyHandler stream;
  uint64_t stream_max_body_bytes = 0;
  // Server-sent event routes, their poll interval and lifetime.
  EventHandler events;
  int events_poll_ms = 500;
  int events_max_seconds = 300;
};

template <typename H, typename Send>
std::function<Answer(Request&, const std::string&)> RunRoute(H handler, Send send,
                                                             const HttpsServer::ErrorBodyFunction* eb) {
  return [handler = std::move(handler), send = std::move(send), eb](Request& request, const std::string& body) {
    if (!body.empty()) {
      StatusOr<json> parsed = ParseJson(body);
      if (!parsed.ok()) return ErrorAnswer(parsed.status(), 0, eb);
      request.body = *std::move(parsed);
    }
    try {
      auto result = handler(request);
      if (!result.ok()) return ErrorAnswer(result.status(), 0, eb);
      return send(*std::move(result));
    } catch (const json::exception&) {
      // A handler read a field of the wrong type.
      return ErrorAnswer(InvalidArgumentError("request body: a field has the wrong type"), 0, eb);
    } catch (const std::exception&) {
      return ErrorAnswer(InternalError("internal error"), 0, eb);
    }
  };
}

// The byte range a `Range` header asks of a `size`-byte body (RFC 9110
// §14.1.2): one range only; nullopt for the whole body (no header, a form
// this server does not serve, or several ranges). `unsatisfiable` when the
// one range starts past the end.
struct ByteRange {
  uint64_t first = 0;
  uint64_t length = 0;
};
std::optional<ByteRange> ParseRange(std::string_view header, uint64_t size, bool* unsatisfiable) {
  *unsatisfiable = false;
  constexpr std::string_view kPrefix = "bytes=";
  if (!header.starts_with(kPrefix)) return std::nullopt;
  std::string_view spec = header.substr(kPrefix.size());
  if (spec.find(',') != std::string_view::npos) return std::nullopt;
  const size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto number = [](std::string_view t, uint64_t* out) {
    if (t.empty()) return false;
    const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), *out);
    return ec == std::errc() && end == t.data() + t.size();
  };
  uint64_t first = 0, last = 0;
  const std::string_view a = spec.substr(0, dash), b = spec.substr(dash + 1);
  if (a.empty()) {  // the last `b` bytes
    uint64_t suffix = 0;
    if (!number(b, &suffix)) return std::nullopt;
    if (suffix == 0 || size == 0) {
      *unsatisfiable = true;
      return std::nullopt;
    }
    suffix = std::min(suffix, size);
    return ByteRange{size - suffix, suffix};
  }
  if (!number(a, &first)) return std::nullopt;
  if (b.empty()) {
    last = size == 0 ? 0 : size - 1;
  } else if (!number(b, &last) || last < first) {
    return std::nullopt;
  }
  if (first >= size) {
    *unsatisfiable = true;
    return std::nullopt;
  }
  last = std::min(last, size - 1);
  return ByteRange{first, last - first + 1};
}

std::string Lower(std::string_view in) {
  std::string out(in);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
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

std::string Request::Header(const std::string& name) const {
  const std::string want = Lower(name);
  for (const auto& [k, v] : headers) {
    if (k == want) return v;
  }
  return "";
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
  class ConnectionBase;
  template <class StreamT>
  class Connection;

  Options options;
  asio::ssl::context ssl{asio::ssl::context::tls_server};
  std::vector<Route> routes;
  Observer observer;
  Admission admission_hook;
  Completion completion_hook;
  ErrorBodyFunction error_body;
  std::vector<std::pair<std::string, std::string>> default_headers;
  std::unique_ptr<rate_limit::KeyedTokenBucket> anonymous;  // per client address
  std::atomic<int> port{0};
  std::atomic<uint64_t> timed_out_header{0}, timed_out_body{0}, timed_out_write{0}, queue_full{0},
      rate_limited{0};

  std::mutex mu;
  std::condition_variable stopped_cv;
  bool started = false;
  bool stopping = false;
  bool stopped = false;

  // Declared before the event loop: connections destroyed with it still
  // report to them.
  std::unique_ptr<internal::ConnectionTable> table;
  std::mutex conns_mu;
  std::unordered_map<uint64_t, std::weak_ptr<ConnectionBase>> conns;
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
  Answer Error(const Status& status, int http_status = 0) const {
    return ErrorAnswer(status, http_status, &error_body);
  }
};

// What the table of open connections needs of one: its strand and a way to
// close it.
class HttpsServer::Impl::ConnectionBase : public std::enable_shared_from_this<ConnectionBase> {
 public:
  virtual ~ConnectionBase() = default;
  virtual asio::any_io_executor executor() = 0;
  // Closes the socket; pending operations end with an error. On the strand.
  virtual void Close() = 0;
};

// One connection, driven on its own strand: handshake (TLS), then requests
// one at a time (read header, read body, wait for the worker, write the
// answer). `StreamT` is beast::ssl_stream<beast::tcp_stream> or, for plain
// HTTP, beast::tcp_stream.
template <class StreamT>
class HttpsServer::Impl::Connection : public HttpsServer::Impl::ConnectionBase {
  static constexpr bool kTls = !std::is_same_v<StreamT, beast::tcp_stream>;

 public:
  Connection(Impl* impl, uint64_t id, std::string address, tcp::socket socket)
      : impl_(impl), id_(id), address_(std::move(address)), stream_(MakeStream(impl, std::move(socket))) {}
  ~Connection() override {
    impl_->table->Remove(id_);
    impl_->Forget(id_);
  }

  asio::any_io_executor executor() override { return stream_.get_executor(); }

  // The handshake and first request header share one deadline.
  void Start() {
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    stage_ = Stage::kHeader;
    if constexpr (kTls) {
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = Self()](beast::error_code ec) { self->OnHandshake(ec); });
    } else {
      ReadHeader();
    }
  }

  void Close() override {
    beast::error_code ignored;
    Tcp().socket().close(ignored);
  }

 private:
  enum class Stage { kHeader, kBody, kWrite };

  static StreamT MakeStream(Impl* impl, tcp::socket socket) {
    if constexpr (kTls) {
      return StreamT(std::move(socket), impl->ssl);
    } else {
      return StreamT(std::move(socket));
    }
  }

  std::shared_ptr<Connection> Self() { return std::static_pointer_cast<Connection>(shared_from_this()); }
  beast::tcp_stream& Tcp() { return beast::get_lowest_layer(stream_); }

  // Ends the connection: the socket is closed when the last handler holding
  // this object returns.
  void Fail(const beast::error_code& ec) {
    if (ec != beast::error::timeout) return;
    switch (stage_) {
      case Stage::kHeader: ++impl_->timed_out_header; break;
      case Stage::kBody: ++impl_->timed_out_body; break;
      case Stage::kWrite: ++impl_->timed_out_write; break;
    }
  }

  void OnHandshake(const beast::error_code& ec) {
    if (ec) return Fail(ec);
    if constexpr (kTls) peer_ = PeerOf(stream_.native_handle());
    if (peer_.authenticated) impl_->table->MarkAuthenticated(id_);
    ReadHeader();
  }

  // Between requests: the keep-alive timeout until the next request's first
  // byte, then the header deadline.
  void WaitForRequest() {
    stage_ = Stage::kHeader;
    if (buffer_.size() > 0) {
      Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
      return ReadHeader();
    }
    Tcp().expires_after(std::chrono::seconds(impl_->options.keep_alive_timeout_seconds));
    stream_.async_read_some(buffer_.prepare(4096), [self = Self()](beast::error_code ec, size_t n) {
      if (ec) return;  // idle timeout or the peer left: not a failure
      self->buffer_.commit(n);
      self->Tcp().expires_after(std::chrono::seconds(self->impl_->options.read_timeout_seconds));
      self->ReadHeader();
    });
  }

  void ReadHeader() {
    stage_ = Stage::kHeader;
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    // Checked from the header in OnHeader. (Not boost::none: Beast 1.74
    // compares the length with the empty optional and refuses every body.)
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = Self()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(const beast::error_code& ec) {
    if (ec) {
      if (IsHttpParseError(ec)) return Respond(HeaderErrorAnswer(ec));
      return Fail(ec);
    }
    start_ = SteadyClock::now();
    const auto& req = parser_->get();
    request_ = Request{};
    request_.method = std::string(req.method_string());
    const beast::string_view target = req.target();
    const size_t question = target.find('?');
    request_.path = Decode(std::string_view(target.data(), std::min(question, target.size())), false);
    if (question != beast::string_view::npos) {
      request_.query = ParseQuery(std::string_view(target.data() + question + 1, target.size() - question - 1));
    }
    for (const auto& field : req) {
      request_.headers.emplace_back(Lower(std::string_view(field.name_string().data(), field.name_string().size())),
                                    std::string(field.value()));
    }
    request_.peer = peer_;
    request_.remote_address = address_;
    keep_alive_ = req.keep_alive() && ++served_ < impl_->options.keep_alive_max_requests;

    route_ = nullptr;
    const std::string& method = request_.method == "HEAD" ? std::string("GET") : request_.method;
    std::smatch match;
    for (const Route& r : impl_->routes) {
      if (r.method == method && (request_.method != "HEAD" || r.file) && r.MayMatch(request_.path) &&
          std::regex_match(request_.path, match, r.regex)) {
        route_ = &r;
        break;
      }
    }
    if (route_ != nullptr) {
      for (size_t i = 1; i < match.size(); ++i) request_.path_params.push_back(match[i]);
    }
    const uint64_t limit = route_ != nullptr && route_->stream ? route_->stream_max_body_bytes
                                                               : impl_->options.max_body_bytes;
    if (auto refusal = CheckBodyFraming(req, limit)) return Respond(*std::move(refusal));
    const uint64_t length = parser_->content_length().value_or(0);
    if (route_ != nullptr && route_->stream) return OpenStream(length);
    if (length == 0) return Dispatch();
    StartBody(length);
    ContinueIfExpected([self = Self()] { self->ReadBody(); });
  }

  // The body's own deadline grows with its size (a minimum byte rate).
  void StartBody(uint64_t length) {
    stage_ = Stage::kBody;
    body_deadline_ = SteadyClock::now() + std::chrono::seconds(impl_->options.read_timeout_seconds) +
                     std::chrono::milliseconds(length * 1000 / impl_->options.min_body_bytes_per_second);
    Tcp().expires_at(body_deadline_);
  }

  // Sends "100 Continue" if the client waits for it, then `next`.
  template <typename Next>
  void ContinueIfExpected(Next next) {
    if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      return asio::async_write(stream_, asio::buffer(kContinue.data(), kContinue.size()),
                               [self = Self(), next = std::move(next)](beast::error_code e, size_t) mutable {
                                 if (e) return self->Fail(e);
                                 next();
                               });
    }
    next();
  }

  void ReadBody() {
    http::async_read(stream_, buffer_, *parser_, [self = Self()](beast::error_code ec, size_t) {
      if (ec) return self->Fail(ec);
      self->Dispatch();
    });
  }

  // Anonymous callers are limited before the handler runs, so they cannot
  // make the service work without bound. True when the request may go on.
  bool AdmitAnonymous() {
    if (!impl_->anonymous || peer_.authenticated) return true;
    const rate_limit::Decision d = impl_->anonymous->Take(address_);
    if (d.allowed) return true;
    ++impl_->rate_limited;
    impl_->Observe(request_.method, route_->pattern, 429, 0);
    Respond(impl_->Error(ResourceExhaustedError(rate_limit::RateLimitedMessage(
        "too many requests without a client certificate", d.retry_after_seconds))));
    return false;
  }

  // Runs `work` (which returns the next step to post back) on a worker;
  // 503 at once when the queue is full.
  template <typename Work>
  void Submit(Work work) {
    impl_->table->SetBusy(id_, true);
    auto task = [self = Self(), work = std::move(work)]() mutable {
      auto next = work();
      asio::post(self->executor(), std::move(next));
    };
    if (!impl_->pool->TrySubmit(std::move(task), peer_.authenticated)) {
      ++impl_->queue_full;
      impl_->Observe(request_.method, route_->pattern, 503, 0);
      Answer a = impl_->Error(UnavailableError("overloaded: too many requests waiting; retry in 1 s"));
      if (route_->stream) a.close = true;  // its body is not read
      Respond(std::move(a));
    }
  }

  // The admission hook, then `answer`'s handler; the completion hook after.
  Status Admit(const Request& request) const {
    return impl_->admission_hook ? impl_->admission_hook(request) : OkStatus();
  }
  void Complete(int http_status) {
    std::chrono::duration<double> elapsed = SteadyClock::now() - start_;
    impl_->Observe(request_.method, route_->pattern, http_status, elapsed.count());
    if (impl_->completion_hook) impl_->completion_hook(request_, http_status);
  }

  void Dispatch() {
    if (route_ == nullptr) return Respond(impl_->Error(NotFoundError("no such route")));
    if (!AdmitAnonymous()) return;
    if (route_->file) return DispatchFile();
    if (route_->events) return DispatchEvents();
    Submit([self = Self(), body = std::move(parser_->get().body())]() {
      Status admitted = self->Admit(self->request_);
      Answer answer = admitted.ok() ? self->route_->run(self->request_, body) : self->impl_->Error(admitted);
      self->Complete(answer.http_status);
      return [self, answer = std::move(answer)]() mutable { self->Respond(std::move(answer)); };
    });
  }

  // --- file answers ---
  void DispatchFile() {
    Submit([self = Self()]() -> std::function<void()> {
      Status admitted = self->Admit(self->request_);
      StatusOr<FileResponse> file = admitted.ok() ? self->route_->file(self->request_) : StatusOr<FileResponse>(admitted);
      if (!file.ok()) {
        Answer a = self->impl_->Error(file.status());
        self->Complete(a.http_status);
        return [self, a = std::move(a)]() mutable { self->Respond(std::move(a)); };
      }
      bool unsatisfiable = false;
      const std::optional<ByteRange> range = ParseRange(self->request_.Header("range"), file->size_bytes, &unsatisfiable);
      if (unsatisfiable) {
        Answer a = self->impl_->Error(OutOfRangeError("range not satisfiable"), 416);
        self->Complete(416);
        return [self, a = std::move(a), size = file->size_bytes]() mutable {
          self->extra_headers_ = {{"Content-Range", "bytes */" + std::to_string(size)}};
          self->Respond(std::move(a));
        };
      }
      self->Complete(range ? 206 : 200);
      return [self, f = *std::move(file), range]() mutable { self->StartFile(std::move(f), range); };
    });
  }

  // The connection stays busy (not displaced) until the answer is written.
  void StartFile(FileResponse file, std::optional<ByteRange> range) {
    file_ = std::move(file);
    file_offset_ = range ? range->first : 0;
    file_end_ = range ? range->first + range->length : file_.size_bytes;
    file_head_.emplace(range ? http::status::partial_content : http::status::ok, 11);
    file_head_->set(http::field::content_type, file_.content_type);
    file_head_->set(http::field::accept_ranges, "bytes");
    for (const auto& [k, v] : impl_->default_headers) file_head_->set(k, v);
    for (const auto& [k, v] : file_.headers) file_head_->set(k, v);
    if (range) {
      file_head_->set(http::field::content_range, "bytes " + std::to_string(range->first) + "-" +
                                                      std::to_string(file_end_ - 1) + "/" +
                                                      std::to_string(file_.size_bytes));
    }
    file_head_->content_length(file_end_ - file_offset_);
    file_head_->keep_alive(keep_alive_);
    file_serializer_.emplace(*file_head_);
    stage_ = Stage::kWrite;
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    http::async_write_header(stream_, *file_serializer_, [self = Self()](beast::error_code ec, size_t) {
      if (ec) return self->Fail(ec);
      if (self->request_.method == "HEAD") self->file_end_ = self->file_offset_;
      self->NextFilePiece();
    });
  }

  // --- server-sent events ---
  void DispatchEvents() {
    Submit([self = Self()]() -> std::function<void()> {
      Status admitted = self->Admit(self->request_);
      StatusOr<std::unique_ptr<EventStream>> events =
          admitted.ok() ? self->route_->events(self->request_) : StatusOr<std::unique_ptr<EventStream>>(admitted);
      if (!events.ok()) {
        Answer a = self->impl_->Error(events.status());
        self->Complete(a.http_status);
        return [self, a = std::move(a)]() mutable { self->Respond(std::move(a)); };
      }
      self->Complete(200);
      return [self, e = std::shared_ptr<EventStream>(*std::move(events))]() mutable {
        self->StartEvents(std::move(e));
      };
    });
  }

  void StartEvents(std::shared_ptr<EventStream> events) {
    events_ = std::move(events);
    keep_alive_ = false;
    events_end_ = SteadyClock::now() + std::chrono::seconds(route_->events_max_seconds);
    events_last_write_ = SteadyClock::now();
    file_head_.emplace(http::status::ok, 11);
    file_head_->set(http::field::content_type, "text/event-stream; charset=utf-8");
    file_head_->set(http::field::cache_control, "no-store");
    for (const auto& [k, v] : impl_->default_headers) file_head_->set(k, v);
    file_head_->keep_alive(false);
    file_serializer_.emplace(*file_head_);
    stage_ = Stage::kWrite;
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    http::async_write_header(stream_, *file_serializer_, [self = Self()](beast::error_code ec, size_t) {
      if (ec) return self->Fail(ec);
      self->file_serializer_.reset();
      self->file_head_.reset();
      self->NextEvents();
    });
  }

  // Asks the stream on a worker; writes what it has (or a comment line when
  // quiet for a while), then waits a poll interval.
  void NextEvents() {
    if (SteadyClock::now() >= events_end_) return EndEvents();
    auto task = [self = Self()] {
      bool done = false;
      StatusOr<std::string> text = self->events_->Next(&done);
      asio::post(self->executor(), [self, text = std::move(text), done]() mutable {
        if (!text.ok()) return self->EndEvents();
        std::string out = *std::move(text);
        if (out.empty() && SteadyClock::now() - self->events_last_write_ >= kEventsQuietLimit) out = ": -\n\n";
        if (out.empty()) return done ? self->EndEvents() : self->WaitEvents();
        self->events_out_ = std::make_shared<std::string>(std::move(out));
        self->Tcp().expires_after(std::chrono::seconds(self->impl_->options.read_timeout_seconds));
        asio::async_write(self->stream_, asio::buffer(*self->events_out_),
                          [self, done](beast::error_code ec, size_t) {
                            if (ec) return self->Fail(ec);
                            self->events_out_.reset();
                            self->events_last_write_ = SteadyClock::now();
                            if (done) return self->EndEvents();
                            self->WaitEvents();
                          });
      });
    };
    if (!impl_->pool->SubmitContinuation(std::move(task))) Close();
  }

  void WaitEvents() {
    Tcp().expires_never();
    if (!events_timer_) events_timer_.emplace(executor());
    events_timer_->expires_after(std::chrono::milliseconds(route_->events_poll_ms));
    events_timer_->async_wait([self = Self()](beast::error_code ec) {
      if (ec) return;
      self->NextEvents();
    });
  }

  void EndEvents() {
    events_.reset();
    impl_->table->SetBusy(id_, false);
    CloseAfterAnswer();
  }

  // Reads the next piece on a worker (the store may be remote), writes it
  // from the strand; a client that stops reading misses the write deadline.
  void NextFilePiece() {
    if (file_offset_ >= file_end_) {
      impl_->table->SetBusy(id_, false);
      file_serializer_.reset();
      file_head_.reset();
      file_ = FileResponse{};
      if (!keep_alive_) return CloseAfterAnswer();
      return WaitForRequest();
    }
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kFilePieceBytes, file_end_ - file_offset_));
    auto task = [self = Self(), want] {
      auto piece = std::make_shared<std::vector<uint8_t>>(want);
      StatusOr<size_t> n = self->file_.file->Read(self->file_offset_, *piece);
      const size_t got = n.ok() ? *n : 0;
      piece->resize(got);
      asio::post(self->executor(), [self, piece] { self->WriteFilePiece(piece); });
    };
    if (!impl_->pool->SubmitContinuation(std::move(task))) Close();
  }

  void WriteFilePiece(std::shared_ptr<std::vector<uint8_t>> piece) {
    // A file that shrank or failed: the answer cannot be finished; the
    // client sees the connection end short of Content-Length.
    if (piece->empty()) return Close();
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    asio::async_write(stream_, asio::buffer(*piece), [self = Self(), piece](beast::error_code ec, size_t n) {
      if (ec) return self->Fail(ec);
      self->file_offset_ += n;
      self->NextFilePiece();
    });
  }

  // --- streamed request bodies ---
  void OpenStream(uint64_t length) {
    if (!AdmitAnonymous()) return;
    stream_left_ = length;
    Submit([self = Self()]() -> std::function<void()> {
      Status admitted = self->Admit(self->request_);
      StatusOr<std::unique_ptr<BodySink>> sink =
          admitted.ok() ? self->route_->stream(self->request_) : StatusOr<std::unique_ptr<BodySink>>(admitted);
      if (!sink.ok()) {
        Answer a = self->impl_->Error(sink.status());
        a.close = true;  // the body is not read
        self->Complete(a.http_status);
        return [self, a = std::move(a)]() mutable { self->Respond(std::move(a)); };
      }
      return [self, sink = std::shared_ptr<BodySink>(*std::move(sink))]() mutable {
        self->sink_ = std::move(sink);
        self->StartBody(self->stream_left_);
        self->ContinueIfExpected([self] { self->ReadStreamPiece(); });
      };
    });
  }

  // Gathers up to kStreamPieceBytes of the body (first what the header read
  // left in the buffer), then hands it to the sink on a worker.
  void ReadStreamPiece() {
    if (buffer_.size() > 0 && stream_left_ > 0 && piece_.size() < kStreamPieceBytes) {
      const size_t n = std::min<size_t>(static_cast<size_t>(std::min<uint64_t>(buffer_.size(), stream_left_)),
                                        kStreamPieceBytes - piece_.size());
      const auto* data = static_cast<const char*>(buffer_.data().data());
      piece_.append(data, n);
      buffer_.consume(n);
      stream_left_ -= n;
    }
    if (stream_left_ == 0 || piece_.size() >= kStreamPieceBytes) return WriteStreamPiece();
    if (!read_buf_) read_buf_ = std::make_unique<char[]>(kReadChunk);
    const size_t want = std::min<size_t>(static_cast<size_t>(std::min<uint64_t>(kReadChunk, stream_left_)),
                                         kStreamPieceBytes - piece_.size());
    Tcp().expires_at(body_deadline_);
    stream_.async_read_some(asio::buffer(read_buf_.get(), want), [self = Self()](beast::error_code ec, size_t n) {
      if (ec) return self->Fail(ec);
      self->piece_.append(self->read_buf_.get(), n);
      self->stream_left_ -= n;
      self->ReadStreamPiece();
    });
  }

  void WriteStreamPiece() {
    auto task = [self = Self(), piece = std::move(piece_), last = stream_left_ == 0]() mutable {
      Status written = piece.empty() ? OkStatus() : self->sink_->Write(piece);
      Answer answer;
      bool done = !written.ok() || last;
      if (!written.ok()) {
        answer = self->impl_->Error(written);
        answer.close = true;
      } else if (last) {
        StatusOr<json> out = self->sink_->Finish();
        answer = out.ok() ? JsonAnswer(200, *out) : self->impl_->Error(out.status());
      }
      if (done) self->Complete(answer.http_status);
      asio::post(self->executor(), [self, done, answer = std::move(answer)]() mutable {
        if (!done) return self->ReadStreamPiece();
        self->sink_.reset();
        self->Respond(std::move(answer));
      });
    };
    piece_.clear();
    if (!impl_->pool->SubmitContinuation(std::move(task))) Close();
  }

  void Respond(Answer answer) {
    impl_->table->SetBusy(id_, false);
    if (answer.close) keep_alive_ = false;
    res_.emplace(static_cast<http::status>(answer.http_status), 11);
    res_->set(http::field::content_type, answer.content_type);
    if (answer.retry_after_seconds > 0) res_->set(http::field::retry_after, std::to_string(answer.retry_after_seconds));
    for (const auto& [k, v] : impl_->default_headers) res_->set(k, v);
    for (const auto& [k, v] : extra_headers_) res_->set(k, v);
    extra_headers_.clear();
    // insert, not set: a route may add several Set-Cookie fields.
    for (const auto& [k, v] : answer.headers) res_->insert(k, v);
    res_->body() = std::move(answer.body);
    res_->keep_alive(keep_alive_);
    res_->prepare_payload();
    stage_ = Stage::kWrite;
    Tcp().expires_after(std::chrono::seconds(impl_->options.read_timeout_seconds));
    http::async_write(stream_, *res_, [self = Self()](beast::error_code ec, size_t) {
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
                          [self = Self()](beast::error_code ec, size_t n) {
                            if (ec) return self->Close();
                            self->drained_ += n;
                            self->Drain();
                          });
  }

  static constexpr size_t kDrainChunk = 16 << 10;
  static constexpr size_t kReadChunk = 64 << 10;

  Impl* const impl_;
  const uint64_t id_;
  const std::string address_;
  StreamT stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::response<http::string_body>> res_;
  std::vector<std::pair<std::string, std::string>> extra_headers_;
  Peer peer_;
  Stage stage_ = Stage::kHeader;
  // The request being served, its route and when its header was complete.
  Request request_;
  const Route* route_ = nullptr;
  SteadyClock::time_point start_;
  SteadyClock::time_point body_deadline_;
  // A file answer in progress.
  FileResponse file_;
  uint64_t file_offset_ = 0, file_end_ = 0;
  std::optional<http::response<http::empty_body>> file_head_;
  std::optional<http::response_serializer<http::empty_body>> file_serializer_;
  // A server-sent event stream in progress.
  static constexpr auto kEventsQuietLimit = std::chrono::seconds(15);
  std::shared_ptr<EventStream> events_;
  std::shared_ptr<std::string> events_out_;
  std::optional<asio::steady_timer> events_timer_;
  SteadyClock::time_point events_end_, events_last_write_;
  // A streamed body in progress.
  std::shared_ptr<BodySink> sink_;
  uint64_t stream_left_ = 0;
  std::string piece_;
  std::unique_ptr<char[]> read_buf_;
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
  auto start = [&](auto conn) {
    {
      std::lock_guard<std::mutex> lock(conns_mu);
      conns[admission.id] = conn;
    }
    asio::dispatch(conn->executor(), [conn] { conn->Start(); });
  };
  if (options.plain_http) {
    start(std::make_shared<Connection<beast::tcp_stream>>(this, admission.id, remote.address().to_string(),
                                                          std::move(socket)));
  } else {
    start(std::make_shared<Connection<beast::ssl_stream<beast::tcp_stream>>>(
        this, admission.id, remote.address().to_string(), std::move(socket)));
  }
}

void HttpsServer::Impl::Close(uint64_t id) {
  std::shared_ptr<ConnectionBase> conn;
  {
    std::lock_guard<std::mutex> lock(conns_mu);
    auto it = conns.find(id);
    if (it != conns.end()) conn = it->second.lock();
  }
  if (conn) asio::post(conn->executor(), [conn] { conn->Close(); });
}

HttpsServer::HttpsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

HttpsServer::~HttpsServer() { Stop(); }

namespace {
// Loads the server's credentials and the client CA into `ctx`.
Status ConfigureTls(const HttpsServer::Options& options, SSL_CTX* ctx) {
  ASSIGN_OR_RETURN(auto chain, internal::ParseCertChainPem(options.cert_pem, "server certificate"));
  ASSIGN_OR_RETURN(auto key, internal::ParsePrivateKeyPem(options.key_pem));
  crypto::X509StorePtr client_store;
  if (!options.client_ca_pem.empty()) {
    ASSIGN_OR_RETURN(client_store, internal::StoreFromPem(options.client_ca_pem, "client CA"));
  }

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
  return OkStatus();
}
}  // namespace

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
  auto impl = std::make_unique<Impl>();
  if (!options.plain_http) RETURN_IF_ERROR(ConfigureTls(options, impl->ssl.native_handle()));
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
  Route r(method, pattern);
  r.run = std::move(run);
  return r;
}
}  // namespace

void HttpsServer::Json(const std::string& method, const std::string& path_regex, JsonHandler handler,
                       int ok_status) {
  impl_->routes.push_back(MakeRoute(method.c_str(), path_regex,
                                    RunRoute(
                                        std::move(handler), [ok_status](json v) { return JsonAnswer(ok_status, v); },
                                        &impl_->error_body)));
}

void HttpsServer::Get(const std::string& path_regex, JsonHandler handler) {
  Json("GET", path_regex, std::move(handler));
}

void HttpsServer::Post(const std::string& path_regex, JsonHandler handler, bool created) {
  Json("POST", path_regex, std::move(handler), created ? 201 : 200);
}

void HttpsServer::Put(const std::string& path_regex, JsonHandler handler) {
  Json("PUT", path_regex, std::move(handler));
}

void HttpsServer::Delete(const std::string& path_regex, JsonHandler handler) {
  Json("DELETE", path_regex, std::move(handler));
}

void HttpsServer::GetText(const std::string& path_regex, TextHandler handler) {
  impl_->routes.push_back(MakeRoute("GET", path_regex,
                                    RunRoute(
                                        std::move(handler),
                                        [](TextResponse v) {
                                          return Answer{200, std::move(v.body), std::move(v.content_type)};
                                        },
                                        &impl_->error_body)));
}

void HttpsServer::Text(const std::string& method, const std::string& path_regex, TextHandler handler) {
  impl_->routes.push_back(MakeRoute(method.c_str(), path_regex,
                                    RunRoute(
                                        std::move(handler),
                                        [](TextResponse v) {
                                          Answer a{v.http_status, std::move(v.body), std::move(v.content_type)};
                                          a.headers = std::move(v.headers);
                                          return a;
                                        },
                                        &impl_->error_body)));
}

void HttpsServer::SetDefaultHeaders(std::vector<std::pair<std::string, std::string>> headers) {
  impl_->default_headers = std::move(headers);
}

void HttpsServer::GetFile(const std::string& path_regex, FileHandler handler) {
  Route r("GET", path_regex);
  r.file = std::move(handler);
  impl_->routes.push_back(std::move(r));
}

void HttpsServer::Stream(const std::string& method, const std::string& path_regex, BodyHandler handler,
                         uint64_t max_body_bytes) {
  Route r(method, path_regex);
  r.stream = std::move(handler);
  r.stream_max_body_bytes = max_body_bytes;
  impl_->routes.push_back(std::move(r));
}

void HttpsServer::GetEvents(const std::string& path_regex, EventHandler handler, int poll_ms, int max_seconds) {
  Route r("GET", path_regex);
  r.events = std::move(handler);
  r.events_poll_ms = std::max(10, poll_ms);
  r.events_max_seconds = std::max(1, max_seconds);
  impl_->routes.push_back(std::move(r));
}

void HttpsServer::SetAdmission(Admission admission) { impl_->admission_hook = std::move(admission); }
void HttpsServer::SetCompletion(Completion completion) { impl_->completion_hook = std::move(completion); }
void HttpsServer::SetErrorBody(ErrorBodyFunction error_body) { impl_->error_body = std::move(error_body); }

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
    st.connections_refused_per_address = c.refused_per_address_total;
    st.connections_displaced_per_address = c.displaced_per_address_total;
  }
  st.timed_out_header = impl_->timed_out_header;
  st.timed_out_body = impl_->timed_out_body;
  st.timed_out_write = impl_->timed_out_write;
  st.connections_timed_out = st.timed_out_header + st.timed_out_body + st.timed_out_write;
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

std::string RenderFrontEndMetrics(const HttpsServer::Stats& st, const std::string& prefix) {
  std::string out;
  auto family = [&](const char* name, const char* type, const char* help) {
    const std::string full = prefix + "_front_end_" + name;
    out += "# HELP " + full + " " + help + "\n# TYPE " + full + " " + type + "\n";
  };
  auto sample = [&](const char* name, const std::string& labels, uint64_t value) {
    out += prefix + "_front_end_" + name + labels + " " + std::to_string(value) + "\n";
  };
  auto single = [&](const char* name, const char* type, const char* help, uint64_t value) {
    family(name, type, help);
    sample(name, "", value);
  };
  single("connections_open", "gauge", "Connections open now.", st.connections_open);
  single("connections_authenticated", "gauge", "Open connections with a verified client certificate.",
         st.connections_authenticated);
  single("requests_queued", "gauge", "Complete requests waiting for a worker.", st.requests_queued);
  single("requests_refused_queue_full_total", "counter", "Requests answered 503: the worker queue was full.",
         st.requests_refused_queue_full);
  single("requests_rate_limited_total", "counter", "Anonymous requests answered 429.", st.requests_rate_limited);
  family("connections_timed_out_total", "counter", "Connections closed at a deadline, by stage.");
  sample("connections_timed_out_total", "{stage=\"header\"}", st.timed_out_header);
  sample("connections_timed_out_total", "{stage=\"body\"}", st.timed_out_body);
  sample("connections_timed_out_total", "{stage=\"write\"}", st.timed_out_write);
  family("connections_refused_total", "counter", "New connections closed at once, by the cap that was full.");
  sample("connections_refused_total", "{cap=\"per_address\"}", st.connections_refused_per_address);
  sample("connections_refused_total", "{cap=\"total\"}",
         st.connections_refused - st.connections_refused_per_address);
  family("connections_displaced_total", "counter", "Older anonymous connections closed for new ones, by cap.");
  sample("connections_displaced_total", "{cap=\"per_address\"}", st.connections_displaced_per_address);
  sample("connections_displaced_total", "{cap=\"total\"}",
         st.connections_displaced - st.connections_displaced_per_address);
  return out;
}

void HttpsServer::Wait() {
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->stopped_cv.wait(lock, [this] { return impl_->stopped; });
}

}  // namespace vmseal::net
