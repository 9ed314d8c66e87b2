// `vmseal kms init|issue-identity|serve|audit verify|audit export`.
#include <cstdio>
#include <memory>
#include <string>

#include "base/env.h"
#include "cli/commands.h"
#include "kms/audit.h"
#include "kms/config.h"
#include "kms/store.h"

namespace vmseal::cli {
namespace {

struct KmsFlags {
  std::string dir;
  std::vector<std::string> dns_names = {"localhost"};
  std::vector<std::string> ip_addresses = {"127.0.0.1"};
  std::string role;
  std::string name;
  std::string out;
  std::string config;
  std::string store;
  std::string listen;
  int port = -1;
  std::string port_file;
};

// The store named by --store, else by the config file.
StatusOr<std::unique_ptr<kms::Store>> OpenAuditStore(const KmsFlags& f) {
  std::string location = f.store;
  if (location.empty()) {
    if (f.config.empty()) return InvalidArgumentError("give --store or --config");
    ASSIGN_OR_RETURN(auto config, kms::LoadKmsConfig(f.config));
    RETURN_IF_ERROR(kms::ApplyKmsEnv(&config));
    location = config.store;
  }
  return kms::Store::Open(location);
}

Status AuditVerify(const KmsFlags& f) {
  ASSIGN_OR_RETURN(auto store, OpenAuditStore(f));
  ASSIGN_OR_RETURN(auto head, kms::VerifyStoreAudit(*store));
  std::printf("audit log valid: %lld records, head %s\n", static_cast<long long>(head.count),
              head.hash.c_str());
  return OkStatus();
}

Status AuditExport(const KmsFlags& f) {
  ASSIGN_OR_RETURN(auto store, OpenAuditStore(f));
  // Verify first: never export a broken chain as if it were good.
  RETURN_IF_ERROR(kms::VerifyStoreAudit(*store));
  std::unique_ptr<AtomicOutputFile> out;
  if (!f.out.empty() && f.out != "-") {
    ASSIGN_OR_RETURN(out, AtomicOutputFile::Create(Env::Default(), f.out, 0644));
  }
  int64_t after = 0;
  while (true) {
    ASSIGN_OR_RETURN(auto page, store->ReadAudit(after, 1000));
    if (page.empty()) break;
    for (const auto& rec : page) {
      nlohmann::json line = {{"seq", rec.seq}, {"record", rec.record}, {"hash", rec.hash}};
      std::string text = line.dump() + "\n";
      if (out) {
        RETURN_IF_ERROR(out->file()->Append(
            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size())));
      } else {
        std::fwrite(text.data(), 1, text.size(), stdout);
      }
    }
    after = page.back().seq;
  }
  if (out) return out->Commit();
  return OkStatus();
}

Status Serve(const KmsFlags& f) {
  if (f.config.empty()) return InvalidArgumentError("kms serve: --config is required");
  ASSIGN_OR_RETURN(auto config, kms::LoadKmsConfig(f.config));
  RETURN_IF_ERROR(kms::ApplyKmsEnv(&config));  // flags > environment > file
  if (!f.store.empty()) config.store = f.store;
  if (!f.listen.empty()) config.listen = f.listen;
  if (f.port >= 0) config.port = f.port;
  return kms::ServeKms(config, f.port_file);
}

}  // namespace

void AddKmsCommands(CLI::App& app, const CommandSink& sink) {
  auto flags = std::make_shared<KmsFlags>();
  CLI::App* kms = app.add_subcommand("kms", "Key management server");
  kms->require_subcommand(1);

  CLI::App* init = kms->add_subcommand("init", "Create the KMS CA, server and operator credentials, KEK and config");
  init->add_option("--dir", flags->dir, "Directory to initialise")->required();
  init->add_option("--dns", flags->dns_names, "DNS names for the server certificate");
  init->add_option("--ip", flags->ip_addresses, "IP addresses for the server certificate");
  init->callback([flags, sink] {
    sink(kms::InitKmsDir({flags->dir, flags->dns_names, flags->ip_addresses}));
  });

  CLI::App* issue = kms->add_subcommand("issue-identity", "Issue a client certificate (portal, host, operator)");
  issue->add_option("--dir", flags->dir, "KMS directory (from kms init)")->required();
  issue->add_option("--role", flags->role, "portal, host or operator")->required();
  issue->add_option("--name", flags->name, "Common name (host id, portal or operator name)")->required();
  issue->add_option("--out", flags->out, "Output prefix: writes PREFIX.pem and PREFIX-key.pem")->required();
  issue->callback([flags, sink] {
    sink(kms::IssueIdentity(flags->dir, flags->role, flags->name, flags->out));
  });

  CLI::App* serve = kms->add_subcommand("serve", "Serve the KMS API over HTTPS (TLS 1.3, mTLS)");
  serve->add_option("--config", flags->config, "kms.json from kms init")->required();
  serve->add_option("--store", flags->store, "SQLite path or postgres:// URL (env VMSEAL_KMS_STORE)");
  serve->add_option("--listen", flags->listen, "Bind address (env VMSEAL_KMS_LISTEN)");
  serve->add_option("--port", flags->port, "TCP port, 0 = any (env VMSEAL_KMS_PORT)");
  serve->add_option("--port-file", flags->port_file, "Write the bound port here once serving");
  serve->callback([flags, sink] { sink(Serve(*flags)); });

  CLI::App* audit = kms->add_subcommand("audit", "Audit log");
  audit->require_subcommand(1);
  CLI::App* verify = audit->add_subcommand("verify", "Verify the hash chain");
  verify->add_option("--config", flags->config, "kms.json");
  verify->add_option("--store", flags->store, "SQLite path or postgres:// URL");
  verify->callback([flags, sink] { sink(AuditVerify(*flags)); });
  CLI::App* exp = audit->add_subcommand("export", "Write the log as JSON lines");
  exp->add_option("--config", flags->config, "kms.json");
  exp->add_option("--store", flags->store, "SQLite path or postgres:// URL");
  exp->add_option("--out", flags->out, "Output file (default stdout)");
  exp->callback([flags, sink] { sink(AuditExport(*flags)); });
}

}  // namespace vmseal::cli
