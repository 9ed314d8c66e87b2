// An HTTPS server for the services (KMS, portal, host agent): TLS 1.3 only,
// optional mutual TLS against one client CA, JSON bodies, one error shape.
//
// Handlers are plain functions from a parsed Request to StatusOr<json>; a
// non-OK Status becomes the HTTP status from HttpStatusFromCode and the body
// {"error":{"code":"INVALID_ARGUMENT","message":"..."}}. Malformed JSON is
// answered 400 and bodies over Options::max_body_bytes 413 before any handler
// runs.
//
// The front end is event-driven (Boost.Asio/Beast, issue 16): `io_threads`
// threads accept connections, run TLS handshakes and read requests without
// blocking, each under an overall deadline, and hand complete requests to a
// bounded pool of `threads` workers that run the (blocking) handlers. A slow
// or idle client therefore holds a socket and a timer, never a worker. Caps
// on connections (per client address, in all, with places reserved for
// peers with a verified client certificate) and on queued requests bound
// what anonymous callers can hold. Large bodies can stream to a BodySink and
// large answers come from a file (FileResponse, with Range), in pieces that
// workers write or read while the event loop does the socket I/O, so neither
// a slow uploader nor a slow reader holds a worker while it waits. Plain
// HTTP (Options::plain_http) is for loopback tests. Neither Boost nor
// cpp-httplib appears in this header.
#ifndef VMSEAL_NET_HTTPS_SERVER_H_
#define VMSEAL_NET_HTTPS_SERVER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::net {

// The client's certificate as verified by the TLS layer.
struct Peer {
  // True only when the client presented a certificate that chains to the
  // configured client CA. All other fields are empty when false.
  bool authenticated = false;
  // RFC 2253 subject, e.g. "CN=portal-1,OU=portal,O=vmseal".
  std::string subject;
  // The subject's first CN and OU (the OU carries the role).
  std::string common_name;
  std::string organizational_unit;
  // Lowercase hex SHA-256 of the certificate's DER encoding.
  std::string fingerprint_sha256;
};

// One request as a handler sees it.
struct Request {
  std::string method;
  std::string path;
  // Capture groups of the route's regular expression, in order.
  std::vector<std::string> path_params;
  // Query parameters (last value wins).
  std::vector<std::pair<std::string, std::string>> query;
  // The parsed body; null when the request had no body (and for streamed
  // bodies, which go to the route's BodySink).
  nlohmann::json body;
  Peer peer;
  // Header fields, names in lower case, in the order received.
  std::vector<std::pair<std::string, std::string>> headers;
  // The client's IP address.
  std::string remote_address;

  // The query parameter `name`, or `fallback`.
  std::string QueryParam(const std::string& name, const std::string& fallback = "") const;
  // The first header field named `name` (any case), or "".
  std::string Header(const std::string& name) const;
};

// A JSON route: the value is sent with status 200 (201 for POST routes
// registered with created=true).
using JsonHandler = std::function<StatusOr<nlohmann::json>(const Request&)>;
// A plain-text route (e.g. Prometheus /metrics): body and content type.
struct TextResponse {
  std::string body;
  std::string content_type = "text/plain; version=0.0.4";
  // The HTTP status (Text routes; GetText always answers 200).
  int http_status = 200;
  // Header fields to add, in order; a name may repeat (Set-Cookie).
  std::vector<std::pair<std::string, std::string>> headers;
};
using TextHandler = std::function<StatusOr<TextResponse>(const Request&)>;

// A route answered with the bytes of a file or stored object, sent in pieces
// as the client reads them (a worker reads each piece; none waits on the
// client). A single `Range: bytes=...` is answered 206 with Content-Range,
// an unsatisfiable one 416; other Range forms get the whole body (200).
// HEAD gets the header alone.
struct FileResponse {
  std::shared_ptr<RandomAccessFile> file;
  uint64_t size_bytes = 0;
  std::string content_type = "application/octet-stream";
  // Extra header fields (e.g. X-Content-SHA256 of the whole file).
  std::vector<std::pair<std::string, std::string>> headers;
};
using FileHandler = std::function<StatusOr<FileResponse>(const Request&)>;

// Receives a streamed request body in order, in pieces of up to a few MiB.
// Each call runs on a worker, one at a time; the connection reads the next
// piece only after Write returns. Any error ends the request with it (the
// connection is closed; the rest of the body is not read).
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual Status Write(std::string_view bytes) = 0;
  // After the last byte: the JSON answer (status 200).
  virtual StatusOr<nlohmann::json> Finish() = 0;
};
// Called with the request line and header (no body yet): a sink, or the
// error to answer without reading the body.
using BodyHandler = std::function<StatusOr<std::unique_ptr<BodySink>>(const Request&)>;

// The events of one server-sent event stream (text/event-stream, HTML
// "Server-sent events"), for GetEvents routes. The server calls Next on a
// worker every poll interval, never two calls at once; Next must not block.
class EventStream {
 public:
  virtual ~EventStream() = default;
  // The text to send now: zero or more complete events ("id: ...\nevent:
  // ...\ndata: ...\n\n"), or "" when nothing changed. Setting *done ends
  // the stream after this text. An error ends it at once.
  virtual StatusOr<std::string> Next(bool* done) = 0;
};
// Called with the request (after admission): the stream, or the error to
// answer instead.
using EventHandler = std::function<StatusOr<std::unique_ptr<EventStream>>(const Request&)>;

class HttpsServer {
 public:
  struct Options {
    // PEM server certificate chain (leaf first) and its PEM private key.
    std::string cert_pem;
    SecretBytes key_pem;
    // PEM CA certificate(s) that client certificates must chain to. Empty:
    // no client certificates are requested (Peer::authenticated is false).
    std::string client_ca_pem;
    // Serve plain HTTP instead of TLS (cert_pem and key_pem unused). For
    // loopback test deployments only; the caller enforces that.
    bool plain_http = false;
    // Address to bind; the default is loopback only.
    std::string bind_address = "127.0.0.1";
    // TCP port; 0 picks a free one (see port()).
    int port = 0;
    // Largest accepted request body; larger bodies get 413. Default 1 MiB.
    uint64_t max_body_bytes = 1 << 20;
    // Overall deadline, in seconds, for a new connection's TLS handshake and
    // first request header together, and for each later request header
    // (counted from its first byte), however the bytes trickle in; the
    // connection is closed when it passes. Also the deadline for writing an
    // answer. Default 10.
    int read_timeout_seconds = 10;
    // A request body must arrive within read_timeout_seconds plus its
    // Content-Length divided by this rate (bytes per second). Default 64 KiB/s
    // (a 1 MiB body: 26 s).
    uint64_t min_body_bytes_per_second = 64 << 10;
    // Worker threads running the handlers. Default 8.
    int threads = 8;
    // Threads running the event loop (accept, TLS, reading and writing).
    // Default 1.
    int io_threads = 1;
    // Complete requests waiting for a worker; beyond it 503 with
    // Retry-After at once. Default 256.
    uint64_t max_queued_requests = 256;
    // Of those, the most that may come from callers without a verified
    // client certificate. Default 64.
    uint64_t max_queued_anonymous_requests = 64;
    // Connections open at once. Start() raises the process's open-file
    // soft limit towards it, and lowers it to fit what the hard limit
    // allows. Default 4096.
    uint64_t max_connections = 4096;
    // Of max_connections, places held for connections whose handshake
    // verified a client certificate (hosts, portals, operators): anonymous
    // connections, and connections still in their handshake, may take the
    // rest. Default 256.
    uint64_t reserved_authenticated_connections = 256;
    // Anonymous connections (or still in their handshake) from one client
    // address. Default 32.
    //
    // At any of these caps a new connection displaces the oldest anonymous
    // connection that is not being answered, or, when there is none, is
    // closed at once (net/internal/connection_table.h).
    uint64_t max_connections_per_address = 32;
    // Seconds an idle keep-alive connection is kept open. Default 5.
    int keep_alive_timeout_seconds = 5;
    // Requests served on one connection before the server closes it.
    // cpp-httplib's own default is 5, which made every fifth request pay a
    // new TLS handshake (about 1 ms of server CPU with mTLS: more than the
    // request itself). Hosts and the portal keep their connection.
    int keep_alive_max_requests = 10000;
    // Requests per second (and burst) one client address may make without
    // a verified client certificate; beyond it 429 with Retry-After, before
    // the handler runs (so anonymous callers cannot make the service work
    // or write audit records without bound). 0 disables the limit.
    double anonymous_per_second = 20;
    double anonymous_burst = 40;
  };

  // Validates the options and loads the credentials; does not bind yet.
  static StatusOr<std::unique_ptr<HttpsServer>> Create(Options options);
  ~HttpsServer();
  HttpsServer(const HttpsServer&) = delete;
  HttpsServer& operator=(const HttpsServer&) = delete;

  // Registers a route. `path_regex` must match the whole path; its groups
  // become Request::path_params. Register all routes before Start().
  void Get(const std::string& path_regex, JsonHandler handler);
  void Post(const std::string& path_regex, JsonHandler handler, bool created = false);
  void Put(const std::string& path_regex, JsonHandler handler);
  void Delete(const std::string& path_regex, JsonHandler handler);
  void GetText(const std::string& path_regex, TextHandler handler);
  // A JSON route of any method answered with `ok_status` (e.g. 202).
  void Json(const std::string& method, const std::string& path_regex, JsonHandler handler,
            int ok_status = 200);
  // A route of any method answered with a TextResponse: its status, content
  // type and header fields (a static page, a JSON answer that sets a cookie).
  void Text(const std::string& method, const std::string& path_regex, TextHandler handler);
  // GET (and HEAD) answered from a file, with Range support.
  void GetFile(const std::string& path_regex, FileHandler handler);
  // A route whose body (Content-Length, up to `max_body_bytes`, beyond
  // Options::max_body_bytes) is streamed to a BodySink, under the same
  // minimum byte rate as other bodies.
  void Stream(const std::string& method, const std::string& path_regex, BodyHandler handler,
              uint64_t max_body_bytes);

  // GET answered with a server-sent event stream: `Content-Type:
  // text/event-stream`, no Content-Length, `Connection: close`. Every
  // `poll_ms` a worker asks the stream for new events (a worker is held
  // only for that call; in between the connection holds a timer); a comment
  // line goes out every 15 s without events (so a client that left is
  // noticed), and the answer ends after `max_seconds` (an EventSource then
  // reconnects by itself) or when the stream says done.
  void GetEvents(const std::string& path_regex, EventHandler handler, int poll_ms = 500,
                 int max_seconds = 300);

  // Runs on the worker before every handler (before a BodyHandler reads the
  // body): a non-OK status is the answer (e.g. a 429 rate limit). Set before
  // Start().
  using Admission = std::function<Status(const Request&)>;
  void SetAdmission(Admission admission);
  // Called on the worker after each routed request with its HTTP status.
  using Completion = std::function<void(const Request&, int http_status)>;
  void SetCompletion(Completion completion);
  // Header fields sent with every answer (errors and files included), before
  // the route's own; e.g. Content-Security-Policy. Set before Start().
  void SetDefaultHeaders(std::vector<std::pair<std::string, std::string>> headers);
  // The JSON error body for a status; default ErrorBody. Set before Start().
  using ErrorBodyFunction = std::function<nlohmann::json(const Status&)>;
  void SetErrorBody(ErrorBodyFunction error_body);

  // Called after every request with the method, route pattern, HTTP status and
  // latency in seconds (for metrics). Set before Start().
  using Observer = std::function<void(const std::string& method, const std::string& route,
                                      int http_status, double seconds)>;
  void SetObserver(Observer observer);

  // What the front end did so far, for metrics and tests.
  struct Stats {
    // Connections open now, and of those with a verified client certificate.
    uint64_t connections_open = 0;
    uint64_t connections_authenticated = 0;
    // New connections closed at once (every place held), and older
    // anonymous connections displaced to make room for new ones.
    uint64_t connections_refused = 0;
    uint64_t connections_displaced = 0;
    // Of those, refused or displaced for the per-address cap.
    uint64_t connections_refused_per_address = 0;
    uint64_t connections_displaced_per_address = 0;
    // Connections closed because the handshake, a request header or body,
    // or an answer missed its deadline (the total, and by stage).
    uint64_t connections_timed_out = 0;
    uint64_t timed_out_header = 0;  // TLS handshake or request header
    uint64_t timed_out_body = 0;    // request body
    uint64_t timed_out_write = 0;   // writing the answer
    // Requests answered 503 because the worker queue was full, and 429 by
    // the anonymous rate limit.
    uint64_t requests_refused_queue_full = 0;
    uint64_t requests_rate_limited = 0;
    // Requests waiting for a worker now.
    uint64_t requests_queued = 0;
  };
  Stats stats() const;

  // Binds and starts serving on background threads. Returns the bound port.
  StatusOr<int> Start();
  // The bound port (0 before Start).
  int port() const;
  // Stops accepting, finishes in-flight requests and joins the threads.
  // Idempotent; also done by the destructor.
  void Stop();
  // Blocks until Stop() is called from another thread (for `serve`).
  void Wait();

 private:
  struct Impl;
  explicit HttpsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The JSON error body for `status` (exposed for tests and clients).
nlohmann::json ErrorBody(const Status& status);

// The front end's counts in the Prometheus text format, each metric named
// `<prefix>_front_end_...` (docs/operations.md 'Slow clients').
std::string RenderFrontEndMetrics(const HttpsServer::Stats& stats, const std::string& prefix);

}  // namespace vmseal::net

#endif  // VMSEAL_NET_HTTPS_SERVER_H_
