// The assembled portal: database, object store (filesystem or S3), upload
// staging, accounts, images, host registry, scheduler, jobs and the HTTP(S)
// server, as `vmseal csp serve` runs it.
#ifndef VMSEAL_CSP_PORTAL_SERVER_H_
#define VMSEAL_CSP_PORTAL_SERVER_H_

#include <memory>
#include <string>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "csp/abuse_guard.h"
#include "csp/hosts.h"
#include "csp/kms_client.h"
#include "csp/package_verifier.h"
#include "net/https_server.h"

namespace vmseal::csp {

// The portal's front-end defaults: HttpsServer's, with 64 workers and no
// anonymous per-address request limit.
net::HttpsServer::Options PortalFrontEndDefaults();

// Sets the front-end limit `name` (an HttpsServer::Options field:
// threads, read_timeout_seconds, min_body_bytes_per_second,
// max_connections, max_connections_per_address,
// reserved_authenticated_connections, max_queued_requests,
// max_queued_anonymous_requests, keep_alive_timeout_seconds,
// anonymous_per_second, anonymous_burst) from its decimal `value`.
// INVALID_ARGUMENT for an unknown name or a bad value.
Status SetFrontEndLimit(net::HttpsServer::Options* options, const std::string& name,
                        const std::string& value);

class PortalServer {
 public:
  struct Options {
    // Directory for portal.db, objects/ (filesystem store) and staging/.
    // Required.
    // The portal's database: "" for SQLite in data_dir (one portal), or a
    // postgres:// URL that several replicas share (with one S3 store).
    std::string store_url;
    std::string data_dir;
    // Root of the filesystem object store (objects and upload stagings)
    // when no S3 endpoint is set; replicas on one machine may share it.
    // Default: data_dir + "/objects".
    std::string objects_dir;
    // Address and port to listen on; port 0 picks a free one.
    std::string bind_address = "127.0.0.1";
    int port = 0;
    // PEM files of the server certificate and key, and of the CA that host
    // client certificates must chain to. Without cert and key the server
    // speaks plain HTTP, which is allowed only on a loopback address.
    std::string tls_cert_file;
    std::string tls_key_file;
    std::string client_ca_file;
    // S3 backend instead of the filesystem store when s3_endpoint is set.
    std::string s3_endpoint;
    std::string s3_bucket;
    std::string s3_region = "us-east-1";
    std::string s3_access_key_id;
    SecretBytes s3_secret_access_key;
    // Bearer credential of the operator routes; empty disables them.
    SecretBytes operator_token;
    // Argon2id memory cost in KiB (tests lower it). Default 64 MiB.
    uint32_t argon2_m_cost_kib = 64 * 1024;
    // The binary served at GET /v1/agent (its SHA-256 is computed once at
    // start). Default: the running executable. Empty disables the route.
    std::string agent_binary_path = "/proc/self/exe";
    // A host with no heartbeat for longer than this leaves the pool.
    int64_t heartbeat_timeout_seconds = 30;
    // Loss of trust (csp/lifecycle.h TrustWatch, docs/protocol.md §7.2):
    // how often the KMS is asked whether running VMs' hosts are still
    // trusted (0: never), and how long a host has to confirm a VM stopped
    // for lost trust before it is reported unanswered. Defaults 10 s, 60 s.
    int64_t trust_check_interval_seconds = 10;
    int64_t trust_stop_timeout_seconds = 60;
    // Lease of a host on a job it was given (renewed by its heartbeats,
    // polls and progress); once past, the job goes to another host.
    int64_t lease_seconds = 30;
    // Most hosts one job is tried on before it fails. Default 3.
    int max_attempts = 3;
    // Lifetime of the KMS grant of a placed job (JobManager::Options).
    // Default 600 s.
    int64_t grant_ttl_seconds = 600;
    // Rate limits and quotas (429 with Retry-After); on GET /metrics.
    AbuseLimits limits;
    // The event-driven front end's limits (deadlines, connection caps,
    // queues, worker threads; docs/operations.md 'Slow clients'). Its
    // credentials, address, port and JSON body limit (1 MiB) are set from
    // the fields above; upload bodies stream to the store. Customers have
    // no client certificate, so the front end's anonymous per-address
    // request limit is off here (the abuse guard limits what costs).
    net::HttpsServer::Options front_end = PortalFrontEndDefaults();
  };

  // `verifier` checks packages before they are listed; `kms` creates
  // customer keys and decides host eligibility. Both must outlive the server.
  static StatusOr<std::unique_ptr<PortalServer>> Create(Options options,
                                                        const PackageVerifier* verifier,
                                                        KmsClient* kms);
  ~PortalServer();

  // Serves on a background thread (and runs the scheduler's Tick every
  // second) until Stop. Returns once the server accepts connections. A
  // second Start, or a Start after Stop, is FAILED_PRECONDITION.
  Status Start();
  // Stops serving and joins the threads. Safe at any time: before Start,
  // right after it, and more than once (also done by the destructor).
  void Stop();
  int port() const;
  bool tls() const;
  // The front end's counts (also on GET /metrics).
  net::HttpsServer::Stats front_end_stats() const;

 private:
  struct Impl;
  explicit PortalServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_PORTAL_SERVER_H_
