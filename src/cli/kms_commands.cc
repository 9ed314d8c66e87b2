// `vmseal kms init|issue-identity|kek-create|serve|audit verify|audit checkpoint|audit export`.
#include <cstdio>
#include <memory>
#include <string>

#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "cli/commands.h"
#include "kms/audit.h"
#include "kms/config.h"
#include "kms/kek.h"
#include "kms/kek_rotation.h"
#include "kms/store.h"
#include "net/https_client.h"
#include "json/json.h"

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
  // Operator API client (kms flavor|policy|host).
  std::string url;
  std::string ca;
  std::string cert;
  std::string key;
  std::string flavor;
  std::vector<std::string> pcrs;  // "INDEX=HEX"
  std::string file;
  std::string customer;
  std::string image;
  std::string host;
  std::vector<std::string> tags;
  int64_t since = 0;
  std::string ek_ca_bundle;
  // kms audit verify
  std::string checkpoint;
  std::string log_key;
};

// An HTTPS client with the operator's identity from --url --ca --cert --key.
StatusOr<std::unique_ptr<net::HttpsClient>> OperatorClient(const KmsFlags& f) {
  constexpr std::string_view kScheme = "https://";
  if (f.url.rfind(kScheme, 0) != 0) return InvalidArgumentError("--url must be https://HOST:PORT");
  std::string rest = f.url.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  net::HttpsClient::Options o;
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos) {
    o.host = rest;
    o.port = 443;
  } else {
    o.host = rest.substr(0, colon);
    char* end = nullptr;
    const std::string port = rest.substr(colon + 1);
    long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p <= 0 || p > 65535) return InvalidArgumentError("--url: bad port");
    o.port = static_cast<int>(p);
  }
  if (o.host.empty()) return InvalidArgumentError("--url: no host");
  ASSIGN_OR_RETURN(o.ca_pem, ReadFileToString(Env::Default(), f.ca));
  ASSIGN_OR_RETURN(o.cert_pem, ReadFileToString(Env::Default(), f.cert));
  ASSIGN_OR_RETURN(o.key_pem, crypto::ReadSecretFile(f.key));
  return net::HttpsClient::Create(std::move(o));
}

Status Print(const StatusOr<nlohmann::json>& answer) {
  RETURN_IF_ERROR(answer.status());
  std::printf("%s\n", answer->dump(2).c_str());
  return OkStatus();
}

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  if (path.empty()) return InvalidArgumentError("--file is required");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), path));
  auto parsed = ParseJson(text);
  if (!parsed.ok()) return parsed.status().WithPrefix(path);
  return parsed;
}

Status FlavorPut(const KmsFlags& f) {
  nlohmann::json pcrs;
  if (!f.file.empty()) {
    ASSIGN_OR_RETURN(pcrs, ReadJsonFile(f.file));
    if (pcrs.is_object() && pcrs.contains("pcrs")) pcrs = pcrs["pcrs"];
  } else {
    if (f.pcrs.empty()) return InvalidArgumentError("give --pcr INDEX=HEX (repeatable) or --file");
    nlohmann::json bank = nlohmann::json::object();
    for (const auto& p : f.pcrs) {
      const size_t eq = p.find('=');
      if (eq == std::string::npos || eq == 0) return InvalidArgumentError("--pcr must be INDEX=HEX: " + p);
      bank[p.substr(0, eq)] = p.substr(eq + 1);
    }
    pcrs = {{"sha256", bank}};
  }
  ASSIGN_OR_RETURN(auto client, OperatorClient(f));
  return Print(client->Put("/v1/flavors/" + f.flavor, {{"pcrs", pcrs}}));
}

std::string PolicyPath(const KmsFlags& f) {
  return "/v1/policies/" + f.customer + (f.image.empty() ? "" : "/" + f.image);
}

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
  kms::AuditVerifyOptions options;
  options.log_key = f.log_key;
  if (!f.checkpoint.empty()) {
    ASSIGN_OR_RETURN(options.checkpoint, ReadFileToString(Env::Default(), f.checkpoint));
  }
  auto head = kms::VerifyStoreAudit(*store, options);
  if (!head.ok()) return head.status().WithPrefix("audit log verification failed");
  std::printf("audit log valid: %lld records, tree head %s, chain head %s\n",
              static_cast<long long>(head->count), head->root_hex.c_str(), head->hash.c_str());
  if (!head->log_key.empty()) {
    std::printf("log key %s%s\n", head->log_key.c_str(),
                f.log_key.empty() ? " (as the log recorded it; pin it with --log-key)" : "");
  }
  if (head->newest_checkpoint_size >= 0) {
    std::printf("consistent with the newest issued checkpoint (%lld records)\n",
                static_cast<long long>(head->newest_checkpoint_size));
  }
  if (head->saved_checkpoint_size >= 0) {
    std::printf("consistent with %s (%lld records)\n", f.checkpoint.c_str(),
                static_cast<long long>(head->saved_checkpoint_size));
  }
  return OkStatus();
}

// Signs a checkpoint of the current tree with the store's log key (which
// needs the KEK: --config).
Status AuditCheckpoint(const KmsFlags& f) {
  if (f.config.empty()) return InvalidArgumentError("kms audit checkpoint: --config is required (the log key is wrapped under the KEK)");
  ASSIGN_OR_RETURN(auto config, kms::LoadKmsConfig(f.config));
  RETURN_IF_ERROR(kms::ApplyKmsEnv(&config));
  if (!f.store.empty()) config.store = f.store;
  // Mid-rotation the log key may still be wrapped under the previous KEK.
  ASSIGN_OR_RETURN(auto keks, kms::OpenConfiguredKeks(config));
  kms::KekRing kek(std::move(keks[0]));
  for (size_t i = 1; i < keks.size(); ++i) kek.AddPrevious(std::move(keks[i]));
  ASSIGN_OR_RETURN(auto store, kms::Store::Open(config.store));
  ASSIGN_OR_RETURN(auto log, kms::AuditLog::Open(store.get(), &kek));
  ASSIGN_OR_RETURN(std::string note, log->Checkpoint());
  if (!f.out.empty() && f.out != "-") {
    ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(Env::Default(), f.out, 0644));
    RETURN_IF_ERROR(out->file()->Append(crypto::AsBytes(note)));
    return out->Commit();
  }
  std::fwrite(note.data(), 1, note.size(), stdout);
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
  if (!f.ek_ca_bundle.empty()) config.ek_ca_bundle = f.ek_ca_bundle;
  return kms::ServeKms(config, f.port_file, f.config);
}

// Generates the PKCS#11 KEK named by kek_pkcs11 in the token (sensitive,
// non-extractable); a no-op that prints the id when it exists already.
Status KekCreate(const KmsFlags& f) {
  ASSIGN_OR_RETURN(auto config, kms::LoadKmsConfig(f.config));
  if (!config.kek_pkcs11) {
    return InvalidArgumentError("kms kek-create: " + f.config +
                                " has no kek_pkcs11 (the file KEK is created by kms init)");
  }
  ASSIGN_OR_RETURN(auto kek, kms::OpenConfiguredKek(config, /*create_if_missing=*/true));
  std::printf("KEK ready: %s\n", kek->id().c_str());
  return OkStatus();
}

void AddOperatorFlags(CLI::App* cmd, KmsFlags* f) {
  cmd->add_option("--url", f->url, "KMS URL, https://HOST:PORT")->required();
  cmd->add_option("--ca", f->ca, "KMS CA certificate (PEM)")->required();
  cmd->add_option("--cert", f->cert, "Operator certificate (PEM)")->required();
  cmd->add_option("--key", f->key, "Operator private key (PEM, 0600)")->required();
}

void AddOperatorCommands(CLI::App* kms, std::shared_ptr<KmsFlags> flags, const CommandSink& sink) {
  KmsFlags* f = flags.get();
  CLI::App* flavor = kms->add_subcommand("flavor", "Known-good PCR value sets");
  flavor->require_subcommand(1);
  CLI::App* put = flavor->add_subcommand("put", "Create or replace a flavor");
  AddOperatorFlags(put, f);
  put->add_option("--name", f->flavor, "Flavor name")->required();
  put->add_option("--pcr", f->pcrs, "SHA-256 PCR value INDEX=HEX (repeatable)");
  put->add_option("--file", f->file, R"(JSON file {"sha256": {"INDEX": "HEX"}})");
  put->callback([flags, sink] { sink(FlavorPut(*flags)); });
  CLI::App* list = flavor->add_subcommand("list", "List flavors");
  AddOperatorFlags(list, f);
  list->callback([flags, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Get("/v1/flavors")) : c.status());
  });
  CLI::App* from = flavor->add_subcommand("from-host", "A flavor from an enrolled host's latest trusted PCR values");
  AddOperatorFlags(from, f);
  from->add_option("--name", f->flavor, "Flavor name")->required();
  from->add_option("--host", f->host, "Host id")->required();
  from->callback([flags, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Post("/v1/flavors/" + flags->flavor + "/from-host/" + flags->host,
                                   nlohmann::json::object()))
                : c.status());
  });

  CLI::App* policy = kms->add_subcommand("policy", "Release policies");
  policy->require_subcommand(1);
  CLI::App* set = policy->add_subcommand("set", "Set a customer's (or one image's) release policy");
  AddOperatorFlags(set, f);
  set->add_option("--customer", f->customer, "Customer id (_default: customers without a policy)")->required();
  set->add_option("--image", f->image, "Image id (default: every image of the customer)");
  set->add_option("--file", f->file, "Policy JSON file")->required();
  set->callback([flags, sink] {
    auto body = ReadJsonFile(flags->file);
    if (!body.ok()) return sink(body.status());
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Put(PolicyPath(*flags), *body)) : c.status());
  });
  CLI::App* get = policy->add_subcommand("get", "Show the policy that applies");
  AddOperatorFlags(get, f);
  get->add_option("--customer", f->customer, "Customer id")->required();
  get->add_option("--image", f->image, "Image id");
  get->callback([flags, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Get(PolicyPath(*flags))) : c.status());
  });

  CLI::App* host = kms->add_subcommand("host", "Enrolled hosts");
  host->require_subcommand(1);
  CLI::App* hlist = host->add_subcommand("list", "Hosts with tags and latest verdict");
  AddOperatorFlags(hlist, f);
  hlist->callback([flags, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Get("/v1/hosts")) : c.status());
  });
  CLI::App* tags = host->add_subcommand("tags", "Replace a host's tags");
  AddOperatorFlags(tags, f);
  tags->add_option("--host", f->host, "Host id")->required();
  tags->add_option("--tag", f->tags, "Tag, e.g. region=eu-west (repeatable; none clears)");
  tags->callback([flags, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Put("/v1/hosts/" + flags->host + "/tags", {{"tags", flags->tags}}))
                : c.status());
  });
  auto approve_ek_sha256 = std::make_shared<std::string>();
  CLI::App* approve = host->add_subcommand(
      "approve-ek", "Pin another TPM's EK to a host id (after a TPM replacement); audited");
  AddOperatorFlags(approve, f);
  approve->add_option("--host", f->host, "Host id")->required();
  approve->add_option("--ek-sha256", *approve_ek_sha256,
                      "SHA-256 (hex) of the new EK's public key, as the ek_mismatch denial names it")
      ->required();
  approve->callback([flags, approve_ek_sha256, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Post("/v1/hosts/" + flags->host + "/ek-approval",
                                   {{"ek_sha256", *approve_ek_sha256}}))
                : c.status());
  });
  auto revoke_reason = std::make_shared<std::string>();
  CLI::App* revoke = host->add_subcommand(
      "revoke", "Unenroll a host for good: no placement, grant or release again; audited");
  AddOperatorFlags(revoke, f);
  revoke->add_option("--host", f->host, "Host id")->required();
  revoke->add_option("--reason", *revoke_reason, "Why (recorded in the audit log)");
  revoke->callback([flags, revoke_reason, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Post("/v1/hosts/" + flags->host + "/revoke", {{"reason", *revoke_reason}}))
                : c.status());
  });
  CLI::App* customer = kms->add_subcommand("customer", "Disable or enable a customer's releases");
  customer->require_subcommand(1);
  for (const bool enable : {false, true}) {
    CLI::App* cmd = customer->add_subcommand(
        enable ? "enable" : "disable",
        enable ? "Allow releases of the customer's images again" : "Refuse every release of the customer's images");
    AddOperatorFlags(cmd, f);
    cmd->add_option("--customer", f->customer, "Customer id")->required();
    cmd->add_option("--reason", *revoke_reason, "Why (recorded in the audit log)");
    cmd->callback([flags, revoke_reason, sink, enable] {
      auto c = OperatorClient(*flags);
      sink(c.ok() ? Print((*c)->Post("/v1/customers/" + flags->customer + (enable ? "/enable" : "/disable"),
                                     {{"reason", *revoke_reason}}))
                  : c.status());
    });
  }
  CLI::App* history = host->add_subcommand("history", "A host's attestation verdicts");
  AddOperatorFlags(history, f);
  history->add_option("--host", f->host, "Host id")->required();
  history->add_option("--since", f->since, "Unix time (default 0)");
  history->callback([flags, sink] {
    auto c = OperatorClient(*flags);
    sink(c.ok() ? Print((*c)->Get("/v1/hosts/" + flags->host + "/verdicts?since=" +
                                  std::to_string(flags->since)))
                : c.status());
  });
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
  auto server_id = std::make_shared<kms::ServerIdentity>();
  issue->add_flag("--server", server_id->server,
                  "A TLS server certificate (serverAuth) for --server-dns/--server-ip, e.g. the portal's");
  issue->add_option("--server-dns", server_id->dns_names, "DNS name of the server (repeatable)");
  issue->add_option("--server-ip", server_id->ip_addresses, "IP address of the server (repeatable)");
  issue->callback([flags, sink, server_id] {
    sink(kms::IssueIdentity(flags->dir, flags->role, flags->name, flags->out, *server_id));
  });

  CLI::App* kek_create = kms->add_subcommand(
      "kek-create", "Generate the PKCS#11 KEK named by kek_pkcs11 in kms.json (PIN from pin_env)");
  kek_create->add_option("--config", flags->config, "kms.json with kek_pkcs11")->required();
  kek_create->callback([flags, sink] { sink(KekCreate(*flags)); });

  CLI::App* serve = kms->add_subcommand("serve", "Serve the KMS API over HTTPS (TLS 1.3, mTLS)");
  serve->add_option("--config", flags->config, "kms.json from kms init")->required();
  serve->add_option("--store", flags->store, "SQLite path or postgres:// URL (env VMSEAL_KMS_STORE)");
  serve->add_option("--listen", flags->listen, "Bind address (env VMSEAL_KMS_LISTEN)");
  serve->add_option("--port", flags->port, "TCP port, 0 = any (env VMSEAL_KMS_PORT)");
  serve->add_option("--port-file", flags->port_file, "Write the bound port here once serving");
  serve->add_option("--ek-ca-bundle", flags->ek_ca_bundle,
                    "PEM bundle of TPM manufacturer CAs for host enrollment (config ek_ca_bundle)");
  serve->callback([flags, sink] { sink(Serve(*flags)); });

  CLI::App* audit = kms->add_subcommand("audit", "Audit log");
  audit->require_subcommand(1);
  CLI::App* verify = audit->add_subcommand(
      "verify", "Recompute the log's Merkle tree and prove it extends the newest issued checkpoint and --checkpoint");
  verify->add_option("--config", flags->config, "kms.json");
  verify->add_option("--store", flags->store, "SQLite path or postgres:// URL");
  verify->add_option("--checkpoint", flags->checkpoint, "A signed checkpoint saved earlier (kms audit checkpoint)");
  verify->add_option("--log-key", flags->log_key,
                     "The log's verifier key NAME+ID+KEY (default: as the log recorded it)");
  verify->callback([flags, sink] { sink(AuditVerify(*flags)); });
  CLI::App* checkpoint = audit->add_subcommand("checkpoint", "Print a signed checkpoint (C2SP signed note) of the log");
  checkpoint->add_option("--config", flags->config, "kms.json (its KEK opens the log key)")->required();
  checkpoint->add_option("--store", flags->store, "SQLite path or postgres:// URL (default: the config's)");
  checkpoint->add_option("--out", flags->out, "Output file (default stdout)");
  checkpoint->callback([flags, sink] { sink(AuditCheckpoint(*flags)); });
  CLI::App* exp = audit->add_subcommand("export", "Write the log as JSON lines");
  exp->add_option("--config", flags->config, "kms.json");
  exp->add_option("--store", flags->store, "SQLite path or postgres:// URL");
  exp->add_option("--out", flags->out, "Output file (default stdout)");
  exp->callback([flags, sink] { sink(AuditExport(*flags)); });

  AddOperatorCommands(kms, flags, sink);
  AddKekRotationCommands(kms, sink);
}

}  // namespace vmseal::cli
