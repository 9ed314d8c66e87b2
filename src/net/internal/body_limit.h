// Request body limits for an httplib server, enforced from the headers
// before any body byte is read. httplib itself reads an oversized body to its
// end (to discard it), and reads a chunked body, or one without
// Content-Length until the peer closes, into memory without any bound.
//
// Refused: a Content-Length over the route's limit (413), a chunked body
// (411, length_required), a Content-Length that is not one decimal number
// (400). A POST/PUT/PATCH without Content-Length has no body (RFC 9112
// §6.3) and is served as such. The answer is the
// usual {"error": ...} body; then the rest of the body is drained (raw,
// bounded) and, over TLS, the connection closed. (Over plain HTTP, allowed
// on loopback only, httplib gives no handle to close it.)
#ifndef VMSEAL_NET_INTERNAL_BODY_LIMIT_H_
#define VMSEAL_NET_INTERNAL_BODY_LIMIT_H_

#include <httplib.h>

#include <cstdint>
#include <functional>

namespace vmseal::net::internal {

// The largest body a request may carry (by method and path).
using BodyLimit = std::function<uint64_t(const httplib::Request&)>;

// Admission after the body check, still before the body is read (rate
// limits): Handled when it wrote an answer, Unhandled to go on.
using Admit = std::function<httplib::Server::HandlerResponse(const httplib::Request&,
                                                             httplib::Response&)>;

// Installs the check (then `admit`, if set) as `server`'s pre-routing
// handler, and the logger that stops reading a refused body.
void LimitBodies(httplib::Server* server, BodyLimit limit, Admit admit = nullptr);

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_BODY_LIMIT_H_
