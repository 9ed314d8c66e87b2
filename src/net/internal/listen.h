// The listen queue of the HTTPS servers (KMS, portal): a burst of
// reconnecting hosts must not have SYNs dropped (httplib's backlog of 5 did,
// each retried a second later).
#ifndef VMSEAL_NET_INTERNAL_LISTEN_H_
#define VMSEAL_NET_INTERNAL_LISTEN_H_

namespace vmseal::net::internal {

// Connections queued by the kernel before accept (capped by
// net.core.somaxconn).
inline constexpr int kListenBacklog = 1024;

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_LISTEN_H_
