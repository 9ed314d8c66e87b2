#include "net/internal/body_limit.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <string>

#include "base/status.h"
#include "net/https_server.h"
#include "json/json.h"

namespace vmseal::net::internal {
namespace {

// Set by the pre-routing check of a refused request, read by the logger
// that runs on the same thread once the answer is written.
thread_local bool stop_reading = false;

// A refused body's bytes are read raw (not decrypted) and dropped, up to
// this many or until the peer pauses or the deadline passes, so that a
// client still sending it then reads the answer instead of a reset.
constexpr size_t kMaxDrainBytes = 8 << 20;
constexpr int kDrainIdleMs = 200;
constexpr int kDrainDeadlineMs = 2000;

// Runs once the answer is written (httplib's logger hook): httplib would go
// on reading a refused body as the next request, so the body is drained
// (bounded) and the socket's reading side shut: the connection ends after
// the answer.
void StopReadingAfterAnswer(const httplib::Request& req, const httplib::Response&) {
  const bool stop = stop_reading;
  stop_reading = false;
  if (!stop || req.ssl == nullptr) return;
  const int fd = SSL_get_fd(req.ssl);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kDrainDeadlineMs);
  char buf[64 * 1024];
  size_t drained = 0;
  while (drained < kMaxDrainBytes) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), kDrainIdleMs))) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) break;
    drained += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_RD);
}

// The check (RFC 9112 §6.3: 411 without a length, 413 over the limit).
httplib::Server::HandlerResponse RefuseUnboundedBody(const httplib::Request& req, httplib::Response& res,
                                                     uint64_t max_body_bytes) {
  using httplib::Server;
  stop_reading = false;
  auto refuse = [&](int http_status, const Status& status) {
    res.status = http_status;
    res.set_content(DumpJson(ErrorBody(status)), "application/json");
    res.set_header("Connection", "close");
    stop_reading = true;
    return Server::HandlerResponse::Handled;
  };
  if (req.has_header("Transfer-Encoding")) {
    return refuse(411, InvalidArgumentError("length_required: send the body with Content-Length, not chunked"));
  }
  const bool carries_body = req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
                            req.method == "PRI";
  if (!req.has_header("Content-Length")) {
    // RFC 9112 §6.3: neither Content-Length nor Transfer-Encoding means no
    // body (`curl -X POST URL` sends none). httplib would instead read a
    // POST/PUT/PATCH body until the peer closes, so say so explicitly. The
    // request object is httplib's own mutable one, handed over as const.
    if (carries_body) const_cast<httplib::Request&>(req).set_header("Content-Length", "0");
    return Server::HandlerResponse::Unhandled;
  }
  if (req.get_header_value_count("Content-Length") != 1) {
    return refuse(400, InvalidArgumentError("bad request: more than one Content-Length"));
  }
  const std::string value = req.get_header_value("Content-Length");
  uint64_t length = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), length);
  if (!value.empty() && ec == std::errc::result_out_of_range) {
    return refuse(413, ResourceExhaustedError("request body too large"));
  }
  if (value.empty() || ec != std::errc() || end != value.data() + value.size()) {
    return refuse(400, InvalidArgumentError("bad request: Content-Length is not a number"));
  }
  if (length > max_body_bytes) return refuse(413, ResourceExhaustedError("request body too large"));
  return Server::HandlerResponse::Unhandled;
}

}  // namespace

void LimitBodies(httplib::Server* server, BodyLimit limit, Admit admit) {
  server->set_pre_routing_handler([limit = std::move(limit), admit = std::move(admit)](
                                      const httplib::Request& req, httplib::Response& res) {
    auto handled = RefuseUnboundedBody(req, res, limit(req));
    if (handled == httplib::Server::HandlerResponse::Handled || !admit) return handled;
    handled = admit(req, res);
    if (handled == httplib::Server::HandlerResponse::Handled &&
        req.get_header_value("Content-Length") != "0" && req.has_header("Content-Length")) {
      // Refused before its body was read: end the connection as for 413.
      res.set_header("Connection", "close");
      stop_reading = true;
    }
    return handled;
  });
  server->set_logger(StopReadingAfterAnswer);
}

}  // namespace vmseal::net::internal
