// `vmseal csp serve`: the cloud portal.
#include <signal.h>

#include <cstdlib>
#include <iostream>

#include <spdlog/spdlog.h>

#include "base/env.h"
#include "cli/commands.h"
#include "crypto/primitives.h"
#include "csp/portal_server.h"

namespace vmseal::cli {
namespace {

// Lists packages without checking them. Only behind
// --accept-unverified-packages, until the OVF package verifier is linked.
class UnverifiedPackageVerifier final : public csp::PackageVerifier {
 public:
  StatusOr<csp::VerifiedPackage> Verify(const RandomAccessFile&) const override {
    return csp::VerifiedPackage{};
  }
};

// No KMS client is linked yet: every host is skipped with this reason.
class NoKmsTrustSource final : public csp::TrustSource {
 public:
  StatusOr<csp::TrustVerdict> LatestVerdict(const std::string&) override {
    return UnavailableError("no KMS client configured");
  }
};

struct ServeFlags {
  std::string data_dir, listen = "127.0.0.1", tls_cert, tls_key, client_ca;
  int port = 8443;
  std::string s3_endpoint, s3_bucket, s3_region = "us-east-1", s3_access_key_id;
  std::string operator_token_file, port_file;
  bool accept_unverified = false;
};

Status Serve(const ServeFlags& f) {
  csp::PortalServer::Options o;
  o.data_dir = f.data_dir;
  o.bind_address = f.listen;
  o.port = f.port;
  o.tls_cert_file = f.tls_cert;
  o.tls_key_file = f.tls_key;
  o.client_ca_file = f.client_ca;
  o.s3_endpoint = f.s3_endpoint;
  o.s3_bucket = f.s3_bucket;
  o.s3_region = f.s3_region;
  o.s3_access_key_id = f.s3_access_key_id;
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
  if (!f.accept_unverified) {
    return FailedPreconditionError(
        "no package verifier is linked into this build; pass --accept-unverified-packages "
        "to run the portal without package checks (testing only)");
  }
  spdlog::warn("packages are listed WITHOUT verification (--accept-unverified-packages)");
  static UnverifiedPackageVerifier verifier;
  static NoKmsTrustSource trust;

  // Block the signals before any thread starts so that sigwait gets them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  ASSIGN_OR_RETURN(auto server, csp::PortalServer::Create(std::move(o), &verifier, &trust));
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

}  // namespace

void AddCspCommands(CLI::App& app, const CommandSink& sink) {
  CLI::App* csp = app.add_subcommand("csp", "Cloud portal (accounts, images, hosts, jobs)");
  csp->require_subcommand(1);
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* serve = csp->add_subcommand("serve", "Run the portal until SIGINT/SIGTERM");
  serve->add_option("--data-dir", flags->data_dir, "Database, objects and upload staging")
      ->required();
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
  serve->add_flag("--accept-unverified-packages", flags->accept_unverified,
                  "List packages without verification (testing only)");
  serve->callback([flags, sink] { sink(Serve(*flags)); });
}

}  // namespace vmseal::cli
