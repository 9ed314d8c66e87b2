// `vmseal csp serve`: the cloud portal; `vmseal csp explain-placement`: why
// each host was taken or skipped (operator).
#include <signal.h>

#include <cstdlib>
#include <iostream>

#include <spdlog/spdlog.h>

#include "base/env.h"
#include "cli/commands.h"
#include "cli/portal_http.h"
#include "crypto/primitives.h"
#include "csp/kms_client.h"
#include "csp/ovf_package_verifier.h"
#include "csp/portal_server.h"

namespace vmseal::cli {
namespace {

// Lists packages without checking them. Only behind
// --accept-unverified-packages (tests of the portal with arbitrary bytes).
class UnverifiedPackageVerifier final : public csp::PackageVerifier {
 public:
  StatusOr<csp::VerifiedPackage> Verify(const RandomAccessFile&,
                                        const std::string&) const override {
    return csp::VerifiedPackage{};
  }
};

struct ServeFlags {
  std::string data_dir, objects_dir, listen = "127.0.0.1", tls_cert, tls_key, client_ca;
  int port = 8443;
  std::string s3_endpoint, s3_bucket, s3_region = "us-east-1", s3_access_key_id;
  std::string operator_token_file, port_file;
  std::string kms_url, kms_ca, kms_cert, kms_key;
  int64_t heartbeat_timeout_seconds = 30;
  int64_t trust_check_interval_seconds = 10;
  int64_t trust_stop_timeout_seconds = 60;
  int64_t lease_seconds = 30;
  std::string store;
  int max_attempts = 3;
  bool accept_unverified = false;
  std::vector<std::string> limits;  // name=value
  std::vector<std::string> front_end;  // name=value
};

Status Serve(const ServeFlags& f) {
  csp::PortalServer::Options o;
  o.data_dir = f.data_dir;
  o.objects_dir = f.objects_dir;
  o.bind_address = f.listen;
  o.port = f.port;
  o.tls_cert_file = f.tls_cert;
  o.tls_key_file = f.tls_key;
  o.client_ca_file = f.client_ca;
  o.s3_endpoint = f.s3_endpoint;
  o.s3_bucket = f.s3_bucket;
  o.s3_region = f.s3_region;
  o.s3_access_key_id = f.s3_access_key_id;
  o.heartbeat_timeout_seconds = f.heartbeat_timeout_seconds;
  o.trust_check_interval_seconds = f.trust_check_interval_seconds;
  o.trust_stop_timeout_seconds = f.trust_stop_timeout_seconds;
  o.lease_seconds = f.lease_seconds;
  o.store_url = f.store;
  o.max_attempts = f.max_attempts;
  for (const std::string& nv : f.limits) {
    const size_t eq = nv.find('=');
    if (eq == std::string::npos) return InvalidArgumentError("--limit wants NAME=VALUE, got " + nv);
    RETURN_IF_ERROR(csp::SetAbuseLimit(&o.limits, nv.substr(0, eq), nv.substr(eq + 1)));
  }
  for (const std::string& nv : f.front_end) {
    const size_t eq = nv.find('=');
    if (eq == std::string::npos) return InvalidArgumentError("--front-end wants NAME=VALUE, got " + nv);
    RETURN_IF_ERROR(csp::SetFrontEndLimit(&o.front_end, nv.substr(0, eq), nv.substr(eq + 1)));
  }
  if (f.trust_check_interval_seconds < 0 || f.trust_stop_timeout_seconds < 1) {
    return InvalidArgumentError("--trust-check-interval must be >= 0 and --trust-stop-timeout positive");
  }
  if (f.heartbeat_timeout_seconds < 1 || f.max_attempts < 1 || f.lease_seconds < 1) {
    return InvalidArgumentError("--heartbeat-timeout, --lease-seconds and --max-attempts must be positive");
  }
  if (!f.s3_endpoint.empty()) {
    const char* secret = std::getenv("VMSEAL_S3_SECRET_ACCESS_KEY");
    if (secret == nullptr) {
      return InvalidArgumentError("set VMSEAL_S3_SECRET_ACCESS_KEY for the S3 backend");
    }
    o.s3_secret_access_key = SecretBytes(crypto::AsBytes(std::string_view(secret)));
  }
  if (!f.operator_token_file.empty()) {
    ASSIGN_OR_RETURN(std::string token, ReadFileToString(Env::Default(), f.operator_token_file));
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
    o.operator_token = SecretBytes(crypto::AsBytes(token));
    WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(token.data()), token.size()));
  }
  if (f.kms_url.empty()) {
    return InvalidArgumentError("--kms-url, --kms-ca, --kms-cert and --kms-key are required");
  }
  static UnverifiedPackageVerifier unverified;
  static csp::OvfPackageVerifier ovf_verifier;
  const csp::PackageVerifier* verifier = &ovf_verifier;
  if (f.accept_unverified) {
    spdlog::warn("packages are listed WITHOUT verification (--accept-unverified-packages)");
    verifier = &unverified;
  }
  csp::HttpsKmsClientOptions ko;
  ko.url = f.kms_url;
  ko.ca_cert_file = f.kms_ca;
  ko.cert_file = f.kms_cert;
  ko.key_file = f.kms_key;
  ASSIGN_OR_RETURN(std::unique_ptr<csp::KmsClient> kms, csp::NewHttpsKmsClient(ko));

  // Block the signals before any thread starts so that sigwait gets them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  ASSIGN_OR_RETURN(auto server, csp::PortalServer::Create(std::move(o), verifier, kms.get()));
  RETURN_IF_ERROR(server->Start());
  if (!f.port_file.empty()) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), f.port_file,
                                            std::to_string(server->port()) + "\n", 0644));
  }
  spdlog::info("portal listening on {}:{} ({})", f.listen, server->port(),
               server->tls() ? "TLS" : "plain HTTP, loopback only");
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("portal stopping (signal {})", sig);
  server->Stop();
  return OkStatus();
}

struct ExplainFlags {
  std::string portal, ca_cert, operator_token_file, job_id, image_id, customer_id;
  bool json = false;
};

void PrintPlacement(const nlohmann::json& p) {
  std::cout << "decided at " << p.value("decided_unix", int64_t{0}) << ": "
            << (p.value("chosen_host_id", "").empty() ? "no host chosen"
                                                      : "chose " + p.value("chosen_host_id", ""))
            << "\n";
  for (const auto& d : p["decisions"]) {
    std::cout << "  " << d.value("host_id", "") << (d.value("chosen", false) ? " [taken]"
                                                     : d.value("eligible", false) ? " [eligible]"
                                                                                  : " [skipped]")
              << ":";
    for (const auto& r : d["reasons"]) std::cout << " " << r.get<std::string>() << ";";
    std::cout << "\n";
  }
}

// Asks the portal (operator routes) why each host was taken or skipped.
Status ExplainPlacement(const ExplainFlags& f) {
  if (f.job_id.empty() == f.image_id.empty()) {
    return InvalidArgumentError("give a job id or --image (with --customer), not both");
  }
  if (!f.image_id.empty() && f.customer_id.empty()) {
    return InvalidArgumentError("--image needs --customer");
  }
  ASSIGN_OR_RETURN(std::string token, ReadFileToString(Env::Default(), f.operator_token_file));
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  httplib::Headers auth = {{"Authorization", "Bearer " + token}};
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(token.data()), token.size()));
  ASSIGN_OR_RETURN(auto c, ConnectPortal(f.portal, f.ca_cert));
  nlohmann::json p;
  if (!f.job_id.empty()) {
    ASSIGN_OR_RETURN(p, CheckReply(c->Get("/v1/operator/jobs/" + f.job_id + "/placement", auth),
                                   "explain placement"));
  } else {
    httplib::Params q = {{"customer_id", f.customer_id}, {"image_id", f.image_id}};
    ASSIGN_OR_RETURN(p, CheckReply(c->Get("/v1/operator/placement", q, auth),
                                   "explain placement"));
  }
  if (f.json) {
    std::cout << p.dump(2) << "\n";
    return OkStatus();
  }
  if (p.contains("job")) {
    const auto& j = p["job"];
    std::cout << "job " << j.value("job_id", "") << " (" << j.value("state", "") << ")";
    if (!j.value("failure_reason", "").empty()) {
      std::cout << " failed: " << j.value("failure_reason", "");
    }
    std::cout << "\n";
    for (const auto& h : p["history"]) PrintPlacement(h);
  } else {
    PrintPlacement(p);
  }
  return OkStatus();
}

}  // namespace

void AddCspCommands(CLI::App& app, const CommandSink& sink) {
  CLI::App* csp = app.add_subcommand("csp", "Cloud portal (accounts, images, hosts, jobs)");
  csp->require_subcommand(1);
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* serve = csp->add_subcommand("serve", "Run the portal until SIGINT/SIGTERM");
  serve->add_option("--data-dir", flags->data_dir, "Database, objects and upload staging")
      ->required();
  serve->add_option("--objects-dir", flags->objects_dir,
                    "Filesystem object store and upload stagings (default DATA_DIR/objects); "
                    "replicas on one machine may share it");
  serve->add_option("--listen", flags->listen, "Address to bind (default 127.0.0.1)");
  serve->add_option("--port", flags->port, "TCP port, 0 for any (default 8443)");
  serve->add_option("--port-file", flags->port_file, "Write the bound port here");
  serve->add_option("--tls-cert", flags->tls_cert, "PEM server certificate chain");
  serve->add_option("--tls-key", flags->tls_key, "PEM server private key");
  serve->add_option("--client-ca", flags->client_ca, "PEM CA of host client certificates");
  serve->add_option("--s3-endpoint", flags->s3_endpoint,
                    "Use an S3 store at this URL (secret in VMSEAL_S3_SECRET_ACCESS_KEY)");
  serve->add_option("--s3-bucket", flags->s3_bucket, "S3 bucket");
  serve->add_option("--s3-region", flags->s3_region, "S3 SigV4 region");
  serve->add_option("--s3-access-key-id", flags->s3_access_key_id, "S3 access key id");
  serve->add_option("--operator-token-file", flags->operator_token_file,
                    "File holding the operator bearer token");
  serve->add_option("--kms-url", flags->kms_url, "KMS URL, https://host:port")->required();
  serve->add_option("--kms-ca", flags->kms_ca, "PEM CA of the KMS (vmseal kms init)")->required();
  serve->add_option("--kms-cert", flags->kms_cert,
                    "PEM portal identity from `vmseal kms issue-identity --role portal`")
      ->required();
  serve->add_option("--kms-key", flags->kms_key, "PEM key of that identity")->required();
  std::string limit_help = "Set a rate limit or quota, NAME=VALUE (0 disables it); repeatable. "
                           "Defaults:";
  for (const auto& [name, value] : csp::AbuseLimitValues(csp::AbuseLimits{})) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), " %s=%g", name.c_str(), value);
    limit_help += buf;
  }
  serve->add_option("--limit", flags->limits, limit_help);
  serve->add_option("--front-end", flags->front_end,
                    "Set a front-end limit, NAME=VALUE; repeatable (docs/operations.md 'Slow clients': "
                    "threads=64 read_timeout_seconds=10 min_body_bytes_per_second=65536 "
                    "max_connections=4096 max_connections_per_address=32 "
                    "reserved_authenticated_connections=256 max_queued_requests=256 "
                    "max_queued_anonymous_requests=64 keep_alive_timeout_seconds=5 anonymous_per_second=0)");
  serve->add_option("--trust-check-interval", flags->trust_check_interval_seconds,
                    "Seconds between checks with the KMS that running VMs' hosts are still "
                    "trusted (default 10; 0 = never)");
  serve->add_option("--trust-stop-timeout", flags->trust_stop_timeout_seconds,
                    "Seconds a host has to confirm a VM stopped for lost trust before it is "
                    "reported unanswered (default 60)");
  serve->add_option("--heartbeat-timeout", flags->heartbeat_timeout_seconds,
                    "Seconds without heartbeat before a host leaves the pool (default 30)");
  serve->add_option("--store", flags->store,
                    "postgres://... : a PostgreSQL shared by several portal replicas (with "
                    "one S3 store); default SQLite in --data-dir");
  serve->add_option("--lease-seconds", flags->lease_seconds,
                    "Lease of a host on a job it was given, renewed by its heartbeats (default 30)");
  serve->add_option("--max-attempts", flags->max_attempts,
                    "Hosts a job is tried on before it fails (default 3)");
  serve->add_flag("--accept-unverified-packages", flags->accept_unverified,
                  "List packages without verification (testing only)");
  serve->callback([flags, sink] { sink(Serve(*flags)); });

  auto ef = std::make_shared<ExplainFlags>();
  CLI::App* explain = csp->add_subcommand(
      "explain-placement", "Why each host was taken or skipped for a job or an image (operator)");
  explain->add_option("--portal", ef->portal, "Portal URL")->required();
  explain->add_option("--ca-cert", ef->ca_cert, "PEM CA of the portal certificate (https)");
  explain->add_option("--operator-token-file", ef->operator_token_file,
                      "File holding the operator bearer token")->required();
  explain->add_option("job_id", ef->job_id, "Job id: every placement decision of the job");
  explain->add_option("--image", ef->image_id, "Image id: the decision if launched now");
  explain->add_option("--customer", ef->customer_id, "Owner of --image");
  explain->add_flag("--json", ef->json, "Print JSON");
  explain->callback([ef, sink] { sink(ExplainPlacement(*ef)); });
}

}  // namespace vmseal::cli
