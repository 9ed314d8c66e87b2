// The portal's HTTP routes (docs/api/csp.yaml) as thin adapters over the
// service cores. Transport setup (TLS, mTLS, ports) is the caller's.
#ifndef VMSEAL_CSP_HTTP_API_H_
#define VMSEAL_CSP_HTTP_API_H_

#include <memory>
#include <string>

#include "base/secret_bytes.h"
#include "csp/accounts.h"
#include "csp/console_logs.h"
#include "csp/hosts.h"
#include "csp/images.h"
#include "csp/jobs.h"
#include "csp/kms_client.h"
#include "net/https_server.h"
#include "store/object_store.h"


namespace vmseal::csp {

// The cores the routes call. All pointers must outlive the server.
struct PortalServices {
  Accounts* accounts = nullptr;
  ImageService* images = nullptr;
  JobManager* jobs = nullptr;
  HostRegistry* hosts = nullptr;
  store::ObjectStore* store = nullptr;
  // For the KMS CA certificate customers fetch.
  KmsClient* kms = nullptr;
  // The agent binary served at GET /v1/agent, with its size and hex SHA-256;
  // null disables the routes.
  std::shared_ptr<RandomAccessFile> agent_binary;
  uint64_t agent_size_bytes = 0;
  std::string agent_sha256_hex;
  // The serial-console text hosts relay for the console page; null
  // disables both routes.
  ConsoleLogs* console_logs = nullptr;
  // Bearer credential of /v1/operator routes; empty disables them.
  const SecretBytes* operator_token = nullptr;
};

// Registers every route of docs/api/csp.yaml on `server`. Host routes take
// the host id from the verified TLS client certificate's CN; on a server
// without TLS they answer 401. Also sets the server's error body (with the
// portal's machine reasons).
void RegisterPortalRoutes(net::HttpsServer& server, const PortalServices& services);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_HTTP_API_H_
