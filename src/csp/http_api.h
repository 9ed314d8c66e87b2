// The portal's HTTP routes (docs/api/csp.yaml) as thin adapters over the
// service cores. Transport setup (TLS, mTLS, ports) is the caller's.
#ifndef VMSEAL_CSP_HTTP_API_H_
#define VMSEAL_CSP_HTTP_API_H_

#include <string>

#include "base/secret_bytes.h"
#include "csp/accounts.h"
#include "csp/hosts.h"
#include "csp/images.h"
#include "csp/jobs.h"
#include "store/object_store.h"

namespace httplib {
class Server;
struct Request;
}  // namespace httplib

namespace vmseal::csp {

// The cores the routes call. All pointers must outlive the server.
struct PortalServices {
  Accounts* accounts = nullptr;
  ImageService* images = nullptr;
  JobManager* jobs = nullptr;
  HostRegistry* hosts = nullptr;
  store::ObjectStore* store = nullptr;
  // Bearer credential of /v1/operator routes; empty disables them.
  const SecretBytes* operator_token = nullptr;
};

// Registers every route of docs/api/csp.yaml on `server`. Host routes take
// the host id from the verified TLS client certificate's CN; on a server
// without TLS they answer 401.
void RegisterPortalRoutes(httplib::Server& server, const PortalServices& services);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_HTTP_API_H_
