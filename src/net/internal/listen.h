// httplib's listening socket, hardened for both HTTPS servers (KMS, portal).
// httplib binds with SO_REUSEPORT (another process of the same user could
// bind the port too and take connections) and listens with a backlog of 5 (a
// burst of reconnecting hosts has SYNs dropped, each retried a second
// later).
#ifndef VMSEAL_NET_INTERNAL_LISTEN_H_
#define VMSEAL_NET_INTERNAL_LISTEN_H_

#include <httplib.h>

#include <atomic>
#include <string>

#include "base/status.h"

namespace vmseal::net::internal {

// Connections queued by the kernel before accept (capped by
// net.core.somaxconn).
inline constexpr int kListenBacklog = 1024;

// Makes `server` bind with SO_REUSEADDR only, recording the listening socket
// in `*fd` (which must outlive the server). Call before binding.
void UseListenSocketOptions(httplib::Server* server, std::atomic<int>* fd);

// After the bind: widens the listen queue of `fd` to kListenBacklog (Linux
// resizes it when listen() is called again). No-op for fd < 0.
Status WidenListenBacklog(int fd, const std::string& address);

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_LISTEN_H_
