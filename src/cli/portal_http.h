// HTTP(S) plumbing shared by the portal-facing commands (`vmseal customer`,
// `vmseal csp explain-placement`): connecting with a pinned CA and turning
// the portal's answers into JSON or a Status.
#ifndef VMSEAL_CLI_PORTAL_HTTP_H_
#define VMSEAL_CLI_PORTAL_HTTP_H_

#include <httplib.h>

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace vmseal::cli {

// A client for `url` ("https://host:port" or, on loopback only in
// practice, "http://..."); https requires `ca_cert_file`, a PEM CA the
// portal's certificate must chain to.
StatusOr<std::unique_ptr<httplib::Client>> ConnectPortal(const std::string& url,
                                                         const std::string& ca_cert_file);

// A 2xx JSON answer (an empty object for an empty body), or the portal's
// {"error":{...}} as a Status "<what>: <message>".
StatusOr<nlohmann::json> CheckReply(const httplib::Result& res, const std::string& what);

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_PORTAL_HTTP_H_
