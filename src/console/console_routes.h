// Serves the embedded console (assets.h) under /console/.
#ifndef VMSEAL_CONSOLE_CONSOLE_ROUTES_H_
#define VMSEAL_CONSOLE_CONSOLE_ROUTES_H_

#include "net/https_server.h"

namespace vmseal::console {

// Registers GET /console (redirect to /console/), /console/ (index.html) and
// /console/PATH for every embedded asset; unknown paths are 404. Also sets
// the server's default header fields to SecurityHeaders(), so every answer
// of the server carries the Content-Security-Policy.
void RegisterConsoleRoutes(net::HttpsServer& server);

}  // namespace vmseal::console

#endif  // VMSEAL_CONSOLE_CONSOLE_ROUTES_H_
