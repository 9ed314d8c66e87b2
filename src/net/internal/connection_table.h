// Admission of connections to the HTTPS front end (issue 16): a global cap,
// capacity reserved for peers with a verified client certificate, and a cap
// per client address for everyone else. No sockets here: the front end asks
// before it starts a connection's TLS handshake and tells the table when the
// handshake verified a client certificate, when a request is being handled
// and when the connection ends.
//
// A connection is "anonymous" until its handshake verified a client
// certificate; connections still in their handshake are anonymous too (the
// server cannot tell who they are yet). When a cap is reached, a new
// connection displaces the OLDEST anonymous connection that is not being
// answered (still in its handshake, idle, or sending its request) instead of
// being refused: slow connections that hold their place cannot keep a host
// from connecting, since its handshake then completes within milliseconds,
// while displacing it in that time would take an attacker more new
// connections than the cap in those milliseconds. Connections with a
// verified certificate are never displaced.
#ifndef VMSEAL_NET_INTERNAL_CONNECTION_TABLE_H_
#define VMSEAL_NET_INTERNAL_CONNECTION_TABLE_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace vmseal::net::internal {

class ConnectionTable {
 public:
  struct Limits {
    // All connections open at once, anonymous or not (>= 1).
    uint64_t max_connections = 4096;
    // Of max_connections, places only authenticated connections may take
    // (< max_connections).
    uint64_t reserved_authenticated = 256;
    // Anonymous connections from one client address (>= 1).
    uint64_t max_per_address = 32;
  };

  // The table's answer for a new connection.
  struct Admission {
    // False: close the new connection at once (every place is held by
    // connections that may not be displaced).
    bool admitted = false;
    // The new connection's id (when admitted).
    uint64_t id = 0;
    // Connections displaced to make room: already removed from the table;
    // the caller closes them.
    std::vector<uint64_t> displaced;
  };

  // Counts, for metrics.
  struct Counts {
    uint64_t open = 0;
    uint64_t authenticated = 0;
    uint64_t displaced_total = 0;
    uint64_t refused_total = 0;
    // Of those, for the per-address cap.
    uint64_t displaced_per_address_total = 0;
    uint64_t refused_per_address_total = 0;
  };

  explicit ConnectionTable(Limits limits);

  // A new connection from `address`.
  Admission Admit(const std::string& address);
  // The handshake of `id` verified a client certificate: it no longer counts
  // against the anonymous caps and is never displaced.
  void MarkAuthenticated(uint64_t id);
  // A request of `id` is queued or being answered (busy) or done (not busy):
  // busy connections are not displaced.
  void SetBusy(uint64_t id, bool busy);
  // `id` ended (no-op for displaced or unknown ids).
  void Remove(uint64_t id);

  Counts counts() const;
  const Limits& limits() const { return limits_; }

 private:
  struct Entry {
    std::string address;
    bool authenticated = false;
    bool busy = false;
  };
  // The oldest displaceable connection (from `address`, or from any address
  // when null); 0 when there is none. Holds mu_.
  uint64_t OldestDisplaceable(const std::string* address) const;
  // Removes `id` (present) and updates the counts. Holds mu_.
  void Erase(std::map<uint64_t, Entry>::iterator it);

  const Limits limits_;
  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  // By id, which is accept order: the first displaceable entry is the oldest.
  std::map<uint64_t, Entry> entries_;
  std::unordered_map<std::string, uint64_t> anonymous_per_address_;
  uint64_t anonymous_ = 0;
  uint64_t displaced_total_ = 0;
  uint64_t refused_total_ = 0;
  uint64_t displaced_per_address_total_ = 0;
  uint64_t refused_per_address_total_ = 0;
};

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_CONNECTION_TABLE_H_
