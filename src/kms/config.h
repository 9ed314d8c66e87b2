// KMS configuration, first-run initialisation (`vmseal kms init`), identity
// issuing and the serve loop, shared by the CLI and the process tests.
//
// `kms init --dir D` writes (keys 0600, refusing to overwrite):
//   D/ca.pem D/ca-key.pem          the KMS CA
//   D/server.pem D/server-key.pem  the KMS TLS identity (SAN: names given)
//   D/operator.pem D/operator-key.pem  the first operator credential
//   D/kek                          the 32-byte file KEK
//   D/kms.json                     the config pointing at the above,
//                                  store D/kms.db (SQLite)
#ifndef VMSEAL_KMS_CONFIG_H_
#define VMSEAL_KMS_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::kms {

struct KmsConfig {
  std::string listen = "127.0.0.1";  // bind address
  int port = 8443;                   // 0 = any free port
  std::string store;                 // SQLite path or postgres:// URL
  std::string kek_file;              // 0600 file with the 32-byte KEK
  std::string ca_cert;               // PEM paths
  std::string ca_key;
  std::string server_cert;
  std::string server_key;
  uint64_t max_body_bytes = 1 << 20;
  int threads = 8;
  int64_t nonce_lifetime_seconds = 60;
  // PEM bundle of the TPM manufacturer CAs that EK certificates must chain
  // to. Empty: host enrollment is refused.
  std::string ek_ca_bundle;
};

// Parses a JSON config; relative paths are resolved against the file's dir.
// Unknown keys are refused (typos must not silently fall back to defaults).
StatusOr<KmsConfig> LoadKmsConfig(const std::string& path);

// Environment overrides: VMSEAL_KMS_STORE, VMSEAL_KMS_LISTEN, VMSEAL_KMS_PORT.
Status ApplyKmsEnv(KmsConfig* config);

struct InitOptions {
  std::string dir;
  // Names for the server certificate's subjectAltName.
  std::vector<std::string> dns_names = {"localhost"};
  std::vector<std::string> ip_addresses = {"127.0.0.1"};
};
// Creates the KMS directory contents listed above. ALREADY_EXISTS if
// D/ca.pem exists.
Status InitKmsDir(const InitOptions& options);

// Issues a client certificate for `role` (portal, host, operator) with CN
// `name`, signed by the CA in `dir`; writes <out>.pem and <out>-key.pem.
Status IssueIdentity(const std::string& dir, const std::string& role, const std::string& name,
                     const std::string& out_prefix);

// Runs the server until SIGINT/SIGTERM. If `port_file` is not empty, the
// bound port is written there (atomically) once serving.
Status ServeKms(const KmsConfig& config, const std::string& port_file);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_CONFIG_H_
