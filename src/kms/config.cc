#include "kms/config.h"

#include <cstdio>

#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <thread>

#include "base/env.h"
#include "kms/internal/mini_ca.h"
#include "kms/kek.h"
#include "kms/kek_rotation.h"
#include "kms/pkcs11_kek.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "kms/store.h"
#include "net/https_server.h"
#include "json/json.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;

std::string Resolve(const std::string& base_dir, const std::string& p) {
  if (p.empty() || p[0] == '/' || p.rfind("postgres://", 0) == 0 ||
      p.rfind("postgresql://", 0) == 0) {
    return p;
  }
  return base_dir + "/" + p;
}

StatusOr<SecretBytes> ReadSecretFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), path));
  SecretBytes out(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(text.data()), text.size()));
  return out;
}

StatusOr<Pkcs11KekConfig> ParsePkcs11(const std::string& path, const json& j) {
  if (!j.is_object()) return InvalidArgumentError("config kek_pkcs11: must be an object");
  Pkcs11KekConfig c;
  for (const auto& [key, value] : j.items()) {
    std::string* out = nullptr;
    if (key == "module_path") {
      out = &c.module_path;
    } else if (key == "token_label") {
      out = &c.token_label;
    } else if (key == "key_label") {
      out = &c.key_label;
    } else if (key == "pin_env") {
      out = &c.pin_env;
    } else if (key == "previous_key_label") {
      out = &c.previous_key_label;
    } else if (key == "pin") {
      return InvalidArgumentError("config " + path +
                                  ": kek_pkcs11.pin is not accepted; name an environment variable in pin_env");
    } else {
      return InvalidArgumentError("config " + path + ": unknown key \"kek_pkcs11." + key + "\"");
    }
    if (!value.is_string()) return InvalidArgumentError("config kek_pkcs11." + key + ": must be a string");
    *out = value.get<std::string>();
  }
  if (c.module_path.empty()) return InvalidArgumentError("config kek_pkcs11.module_path: required");
  if (c.token_label.empty()) return InvalidArgumentError("config kek_pkcs11.token_label: required");
  if (c.key_label.empty()) return InvalidArgumentError("config kek_pkcs11.key_label: must not be empty");
  if (c.pin_env.empty()) return InvalidArgumentError("config kek_pkcs11.pin_env: must not be empty");
  return c;
}

}  // namespace

StatusOr<KmsConfig> LoadKmsConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), path));
  auto parsed = ParseJson(text);
  if (!parsed.ok()) return parsed.status().WithPrefix("config " + path);
  const json& j = *parsed;
  if (!j.is_object()) return InvalidArgumentError("config " + path + ": not a JSON object");
  const std::string dir = DirName(path);
  KmsConfig c;
  for (const auto& [key, value] : j.items()) {
    auto str = [&](std::string* out) -> Status {
      if (!value.is_string()) return InvalidArgumentError("config " + key + ": must be a string");
      *out = value.get<std::string>();
      return OkStatus();
    };
    auto num = [&](int64_t lo, int64_t hi) -> StatusOr<int64_t> {
      if (!value.is_number_integer()) return InvalidArgumentError("config " + key + ": must be an integer");
      int64_t v = value.get<int64_t>();
      if (v < lo || v > hi) return InvalidArgumentError("config " + key + ": out of range");
      return v;
    };
    if (key == "listen") {
      RETURN_IF_ERROR(str(&c.listen));
    } else if (key == "port") {
      ASSIGN_OR_RETURN(int64_t v, num(0, 65535));
      c.port = static_cast<int>(v);
    } else if (key == "store") {
      RETURN_IF_ERROR(str(&c.store));
    } else if (key == "kek_file") {
      RETURN_IF_ERROR(str(&c.kek_file));
    } else if (key == "kek_previous_file") {
      RETURN_IF_ERROR(str(&c.kek_previous_file));
    } else if (key == "kek_pkcs11") {
      ASSIGN_OR_RETURN(c.kek_pkcs11, ParsePkcs11(path, value));
    } else if (key == "ca_cert") {
      RETURN_IF_ERROR(str(&c.ca_cert));
    } else if (key == "ca_key") {
      RETURN_IF_ERROR(str(&c.ca_key));
    } else if (key == "server_cert") {
      RETURN_IF_ERROR(str(&c.server_cert));
    } else if (key == "server_key") {
      RETURN_IF_ERROR(str(&c.server_key));
    } else if (key == "max_body_bytes") {
      ASSIGN_OR_RETURN(int64_t v, num(1024, int64_t{64} << 20));
      c.max_body_bytes = static_cast<uint64_t>(v);
    } else if (key == "threads") {
      ASSIGN_OR_RETURN(int64_t v, num(1, 256));
      c.threads = static_cast<int>(v);
    } else if (key == "anonymous_per_second") {
      ASSIGN_OR_RETURN(c.anonymous_per_second, num(0, 1000000));
    } else if (key == "anonymous_burst") {
      ASSIGN_OR_RETURN(c.anonymous_burst, num(1, 1000000));
    } else if (key == "read_timeout_seconds") {
      ASSIGN_OR_RETURN(c.read_timeout_seconds, num(1, 3600));
    } else if (key == "max_connections_per_address") {
      ASSIGN_OR_RETURN(c.max_connections_per_address, num(1, 1000000));
    } else if (key == "ek_ca_bundle") {
      RETURN_IF_ERROR(str(&c.ek_ca_bundle));
    } else if (key == "nonce_lifetime_seconds") {
      ASSIGN_OR_RETURN(c.nonce_lifetime_seconds, num(1, 3600));
    } else if (key == "account_grace_seconds") {
      ASSIGN_OR_RETURN(c.account_grace_seconds, num(0, int64_t{366} * 86400));
    } else if (key == "key_destruction_interval_seconds") {
      ASSIGN_OR_RETURN(c.key_destruction_interval_seconds, num(1, 3600));
    } else if (key == "allow_unsigned_packages") {
      if (!value.is_boolean()) return InvalidArgumentError("config " + key + ": must be true or false");
      c.allow_unsigned_packages = value.get<bool>();
    } else {
      return InvalidArgumentError("config " + path + ": unknown key \"" + key + "\"");
    }
  }
  if (c.kek_file.empty() == !c.kek_pkcs11.has_value()) {
    return InvalidArgumentError("config " + path + ": set exactly one of kek_file and kek_pkcs11 (" +
                                (c.kek_pkcs11 ? "both are set" : "neither is set") + ")");
  }
  if (!c.kek_previous_file.empty() && c.kek_file.empty()) {
    return InvalidArgumentError("config " + path + ": kek_previous_file needs kek_file");
  }
  for (std::string* p : {&c.store, &c.kek_file, &c.kek_previous_file, &c.ca_cert, &c.ca_key, &c.server_cert, &c.server_key,
                        &c.ek_ca_bundle}) {
    *p = Resolve(dir, *p);
  }
  return c;
}

StatusOr<std::unique_ptr<KeyEncryptionKey>> OpenConfiguredKek(const KmsConfig& config,
                                                              bool create_if_missing) {
  if (config.kek_file.empty() == !config.kek_pkcs11.has_value()) {
    return InvalidArgumentError("set exactly one of kek_file and kek_pkcs11");
  }
  if (!config.kek_file.empty()) {
    if (create_if_missing) return InvalidArgumentError("the file KEK is created by kms init, not here");
    return LoadFileKek(Env::Default(), config.kek_file);
  }
  const Pkcs11KekConfig& p = *config.kek_pkcs11;
  const char* pin = std::getenv(p.pin_env.c_str());
  if (pin == nullptr || *pin == '\0') {
    return FailedPreconditionError("kek_pkcs11: the token PIN is read from environment variable " +
                                   p.pin_env + " (pin_env), which is not set");
  }
  Pkcs11KekOptions options;
  options.module_path = p.module_path;
  options.token_label = p.token_label;
  options.key_label = p.key_label;
  options.pin = SecretBytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(pin), std::strlen(pin)));
  options.create_if_missing = create_if_missing;
  return OpenPkcs11Kek(options);
}

StatusOr<std::vector<std::unique_ptr<KeyEncryptionKey>>> OpenConfiguredKeks(const KmsConfig& config) {
  std::vector<std::unique_ptr<KeyEncryptionKey>> out;
  ASSIGN_OR_RETURN(auto current, OpenConfiguredKek(config));
  out.push_back(std::move(current));
  KmsConfig previous = config;
  if (!config.kek_previous_file.empty()) {
    previous.kek_file = config.kek_previous_file;
  } else if (config.kek_pkcs11 && !config.kek_pkcs11->previous_key_label.empty()) {
    previous.kek_pkcs11->key_label = config.kek_pkcs11->previous_key_label;
  } else {
    return out;
  }
  ASSIGN_OR_RETURN(auto prev, OpenConfiguredKek(previous));
  if (prev->id() != out[0]->id()) out.push_back(std::move(prev));
  return out;
}

Status ApplyKmsEnv(KmsConfig* config) {
  if (const char* v = std::getenv("VMSEAL_KMS_STORE"); v != nullptr && *v) config->store = v;
  if (const char* v = std::getenv("VMSEAL_KMS_LISTEN"); v != nullptr && *v) config->listen = v;
  if (const char* v = std::getenv("VMSEAL_KMS_PORT"); v != nullptr && *v) {
    char* end = nullptr;
    long port = std::strtol(v, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) return InvalidArgumentError("VMSEAL_KMS_PORT: bad port");
    config->port = static_cast<int>(port);
  }
  return OkStatus();
}

Status InitKmsDir(const InitOptions& options) {
  Env* env = Env::Default();
  const std::string& d = options.dir;
  if (d.empty()) return InvalidArgumentError("kms init: --dir is required");
  if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoToStatus(errno, "mkdir", d);
  if (env->FileExists(d + "/ca.pem")) {
    return AlreadyExistsError("kms init: " + d + " is already initialised (ca.pem exists)");
  }
  ASSIGN_OR_RETURN(auto ca, internal::CreateRootCa("vmseal KMS CA", 3650));
  internal::LeafOptions server{.common_name = "kms", .organizational_unit = "kms",
                               .dns_names = options.dns_names,
                               .ip_addresses = options.ip_addresses, .server = true};
  ASSIGN_OR_RETURN(auto server_id, internal::IssueLeaf(ca, server));
  ASSIGN_OR_RETURN(auto op, internal::IssueLeaf(ca, {.common_name = "operator",
                                                     .organizational_unit = "operator"}));
  auto key_view = [](const SecretBytes& s) {
    return std::string_view(reinterpret_cast<const char*>(s.UnsafeData()), s.size());
  };
  // Secrets first, the CA certificate last: ca.pem marks a finished init.
  RETURN_IF_ERROR(CreateFileKek(env, d + "/kek"));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, d + "/ca-key.pem", key_view(ca.key_pem), 0600));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, d + "/server-key.pem", key_view(server_id.key_pem), 0600));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, d + "/server.pem", server_id.cert_pem, 0644));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, d + "/operator-key.pem", key_view(op.key_pem), 0600));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, d + "/operator.pem", op.cert_pem, 0644));
  json config = {{"listen", "127.0.0.1"}, {"port", 8443},
                 {"store", "kms.db"},     {"kek_file", "kek"},
                 {"ca_cert", "ca.pem"},   {"ca_key", "ca-key.pem"},
                 {"server_cert", "server.pem"}, {"server_key", "server-key.pem"}};
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, d + "/kms.json", config.dump(2) + "\n", 0644));
  return WriteStringToFileAtomic(env, d + "/ca.pem", ca.cert_pem, 0644);
}

Status IssueIdentity(const std::string& dir, const std::string& role, const std::string& name,
                     const std::string& out_prefix, const ServerIdentity& server) {
  if (role != "portal" && role != "host" && role != "operator") {
    return InvalidArgumentError("role must be portal, host or operator");
  }
  if (name.empty() || name.size() > 64) return InvalidArgumentError("name must be 1..64 characters");
  ASSIGN_OR_RETURN(std::string ca_cert, ReadFileToString(Env::Default(), dir + "/ca.pem"));
  ASSIGN_OR_RETURN(SecretBytes ca_key, ReadSecretFile(dir + "/ca-key.pem"));
  internal::CertAndKey ca{ca_cert, std::move(ca_key)};
  if (server.server && server.dns_names.empty() && server.ip_addresses.empty()) {
    return InvalidArgumentError("a server identity needs --dns or --ip");
  }
  internal::LeafOptions leaf{.common_name = name, .organizational_unit = role};
  leaf.server = server.server;
  leaf.dns_names = server.dns_names;
  leaf.ip_addresses = server.ip_addresses;
  ASSIGN_OR_RETURN(auto id, internal::IssueLeaf(ca, leaf));
  std::string_view key(reinterpret_cast<const char*>(id.key_pem.UnsafeData()), id.key_pem.size());
  RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), out_prefix + "-key.pem", key, 0600));
  return WriteStringToFileAtomic(Env::Default(), out_prefix + ".pem", id.cert_pem, 0644);
}

Status ServeKms(const KmsConfig& config, const std::string& port_file, const std::string& config_path) {
  // Block the stop signals before any thread starts so only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  if (config.store.empty()) return InvalidArgumentError("kms serve: no store configured");
  ASSIGN_OR_RETURN(auto store, Store::Open(config.store));
  // The KEK ring: the current KEK and, mid-rotation, the previous one.
  ASSIGN_OR_RETURN(auto keks, OpenConfiguredKeks(config));
  auto kek = std::make_unique<KekRing>(std::move(keks[0]));
  for (size_t i = 1; i < keks.size(); ++i) kek->AddPrevious(std::move(keks[i]));
  ASSIGN_OR_RETURN(std::string ca_cert, ReadFileToString(Env::Default(), config.ca_cert));
  ASSIGN_OR_RETURN(SecretBytes ca_key, ReadSecretFile(config.ca_key));
  KmsService::Options service_options;
  service_options.nonce_lifetime_seconds = config.nonce_lifetime_seconds;
  service_options.require_package_signature = !config.allow_unsigned_packages;
  service_options.account_grace_seconds = config.account_grace_seconds;
  if (config.allow_unsigned_packages) {
    std::fprintf(stderr, "kms: allow_unsigned_packages: releases WITHOUT a customer signature "
                         "are served (interoperability tests only)\n");
  }
  if (!config.ek_ca_bundle.empty()) {
    ASSIGN_OR_RETURN(service_options.ek_ca_bundle_pem,
                     ReadFileToString(Env::Default(), config.ek_ca_bundle));
  }
  ASSIGN_OR_RETURN(auto service, KmsService::Create(service_options, store.get(), kek.get(),
                                                    {ca_cert, std::move(ca_key)}));
  net::HttpsServer::Options server_options;
  ASSIGN_OR_RETURN(server_options.cert_pem, ReadFileToString(Env::Default(), config.server_cert));
  ASSIGN_OR_RETURN(server_options.key_pem, ReadSecretFile(config.server_key));
  server_options.client_ca_pem = ca_cert;
  server_options.bind_address = config.listen;
  server_options.port = config.port;
  server_options.max_body_bytes = config.max_body_bytes;
  server_options.threads = config.threads;
  server_options.anonymous_per_second = static_cast<double>(config.anonymous_per_second);
  server_options.anonymous_burst = static_cast<double>(config.anonymous_burst);
  server_options.read_timeout_seconds = static_cast<int>(config.read_timeout_seconds);
  server_options.max_connections_per_address = static_cast<uint64_t>(config.max_connections_per_address);
  ASSIGN_OR_RETURN(auto server, net::HttpsServer::Create(std::move(server_options)));
  RegisterKmsRoutes(service.get(), server.get());
  KekRotation::Loader reload;
  if (!config_path.empty()) {
    reload = [config_path]() -> StatusOr<std::vector<std::unique_ptr<KeyEncryptionKey>>> {
      ASSIGN_OR_RETURN(auto fresh, LoadKmsConfig(config_path));
      return OpenConfiguredKeks(fresh);
    };
  }
  KekRotation rotation(store.get(), kek.get(), std::move(reload));
  RegisterKekRotationRoutes(&rotation, server.get());
  ASSIGN_OR_RETURN(int port, server->Start());
  if (!port_file.empty()) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), port_file, std::to_string(port) + "\n", 0644));
  }
  std::cout << "vmseal kms: serving on " << config.listen << ":" << port << " (store "
            << store->backend() << ", kek " << kek->id() << ")" << std::endl;
  // Keys of closed accounts are destroyed on time, not only at the next
  // request that happens to sweep.
  KeyDestructionTimer shredder(&service->lifecycle(),
                               std::chrono::seconds(config.key_destruction_interval_seconds));
  int sig = 0;
  sigwait(&stop_signals, &sig);
  shredder.Stop();
  server->Stop();
  return OkStatus();
}

}  // namespace vmseal::kms
