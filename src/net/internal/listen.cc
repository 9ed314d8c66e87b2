#include "net/internal/listen.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace vmseal::net::internal {

void UseListenSocketOptions(httplib::Server* server, std::atomic<int>* fd) {
  server->set_socket_options([fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    fd->store(sock);
  });
}

Status WidenListenBacklog(int fd, const std::string& address) {
  if (fd < 0) return OkStatus();
  if (::listen(fd, kListenBacklog) != 0) {
    return UnavailableError("listen on " + address + ": " + std::strerror(errno));
  }
  return OkStatus();
}

}  // namespace vmseal::net::internal
