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
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::kms {

class KeyEncryptionKey;

// `kek_pkcs11` in kms.json: the KEK is an AES-256 key in a PKCS#11 token
// (kms/pkcs11_kek.h). The PIN is never in the file: it is read from the
// environment variable named by `pin_env` when the KEK is opened.
struct Pkcs11KekConfig {
  std::string module_path;  // e.g. /usr/lib/softhsm/libsofthsm2.so (not resolved)
  std::string token_label;
  std::string key_label = "vmseal-kms-kek";
  std::string pin_env = "VMSEAL_KMS_PKCS11_PIN";
  // During a KEK rotation (kms/kek_rotation.h): the label of the previous
  // AES key in the same token, which still opens records naming it
  // (`vmseal kms rotate-kek` writes and removes it). Empty: none.
  std::string previous_key_label;
};

struct KmsConfig {
  std::string listen = "127.0.0.1";  // bind address
  int port = 8443;                   // 0 = any free port
  std::string store;                 // SQLite path or postgres:// URL
  // Exactly one KEK source: a 0600 file with the 32-byte KEK, or a token.
  std::string kek_file;
  std::optional<Pkcs11KekConfig> kek_pkcs11;
  // During a KEK rotation: the previous file KEK, which only unwraps
  // (`vmseal kms rotate-kek` writes and removes it). Only with kek_file.
  std::string kek_previous_file;
  std::string ca_cert;               // PEM paths
  std::string ca_key;
  std::string server_cert;
  std::string server_key;
  uint64_t max_body_bytes = 1 << 20;
  // Request threads. cpp-httplib serves a keep-alive connection on one
  // thread until it closes, so this bounds the hosts served at once: a
  // fleet's hosts each keep a connection while they attest and release.
  int threads = 64;
  // Requests per second and burst one client address may make without a
  // client certificate (net::HttpsServer::Options); 0 disables the limit.
  int64_t anonymous_per_second = 20;
  int64_t anonymous_burst = 40;
  // Front-end deadlines and caps (net::HttpsServer::Options, docs/operations.md
  // 'Slow clients'): the overall handshake + header deadline and the
  // anonymous connections one client address may hold.
  int64_t read_timeout_seconds = 10;
  int64_t max_connections_per_address = 32;
  int64_t nonce_lifetime_seconds = 60;
  // PEM bundle of the TPM manufacturer CAs that EK certificates must chain
  // to. Empty: host enrollment is refused.
  std::string ek_ca_bundle;
  // Serve releases of packages that carry no customer signature
  // (KmsService::Options::require_package_signature = false). For
  // interoperability tests only; default false: a signature is required.
  bool allow_unsigned_packages = false;
  // Crypto-shredding (docs/protocol.md §7): the grace before a closed
  // account's keys are destroyed when the customer names none (0..366
  // days; default 7 days), and how often `kms serve` destroys the keys
  // whose grace is over, whether or not any request comes (1..3600 s;
  // default 60).
  int64_t account_grace_seconds = 7 * 86400;
  int64_t key_destruction_interval_seconds = 60;
};

// Parses a JSON config; relative paths are resolved against the file's dir.
// Unknown keys are refused (typos must not silently fall back to defaults),
// also inside `kek_pkcs11`; exactly one of kek_file and kek_pkcs11 must be set.
StatusOr<KmsConfig> LoadKmsConfig(const std::string& path);

// Opens the configured KEK: the file KEK, or the PKCS#11 KEK with the PIN
// from the environment variable `pin_env` (FAILED_PRECONDITION if unset).
// With `create_if_missing`, a PKCS#11 key that does not exist yet is
// generated in the token (`kms kek-create`); a file KEK is never created here.
StatusOr<std::unique_ptr<KeyEncryptionKey>> OpenConfiguredKek(const KmsConfig& config,
                                                              bool create_if_missing = false);

// The configured KEKs: the current one first, then the previous one of a
// rotation (kek_previous_file or kek_pkcs11.previous_key_label) if set.
StatusOr<std::vector<std::unique_ptr<KeyEncryptionKey>>> OpenConfiguredKeks(const KmsConfig& config);

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
// With `server`, the certificate is a TLS server identity (serverAuth) for
// `dns_names` and `ip_addresses` (e.g. the portal's HTTPS endpoint).
struct ServerIdentity {
  bool server = false;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;
};
Status IssueIdentity(const std::string& dir, const std::string& role, const std::string& name,
                     const std::string& out_prefix, const ServerIdentity& server = {});

// Runs the server until SIGINT/SIGTERM. If `port_file` is not empty, the
// bound port is written there (atomically) once serving.
// With `config_path`, the operator's KEK rotation routes re-read the KEKs
// from that file (kms/kek_rotation.h); without it they are refused.
Status ServeKms(const KmsConfig& config, const std::string& port_file,
                const std::string& config_path = "");

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_CONFIG_H_
