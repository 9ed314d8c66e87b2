// `vmseal kms rotate-kek`: re-wraps every stored customer key and service
// secret under a new KEK while the KMS processes keep serving
// (kms/kek_rotation.h, docs/operations.md "Rotating the KEK").
//
// Steps (each safe to repeat; a run after a crash resumes):
//  1. open the new KEK here (the file, mode 0600, or the key in the token,
//     generated there if missing) to learn its id;
//  2. kms.json: the new KEK becomes current, the old one previous (skipped
//     when kms.json names the new KEK already: a resumed rotation);
//  3. every KMS (--url, --also-url) re-reads its KEKs from kms.json: the
//     key material never crosses the network;
//  4. the first KMS re-wraps in batches (compare-and-set per key) while all
//     keep serving; this command polls until it is done;
//  5. every KMS drops the old KEK (refused while any record names it);
//  6. kms.json: the previous KEK is removed.
#include <limits.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/env.h"
#include "cli/commands.h"
#include "crypto/keys.h"
#include "json/json.h"
#include "kms/config.h"
#include "kms/kek.h"
#include "net/https_client.h"

namespace vmseal::cli {
namespace {

using nlohmann::json;

struct RotateKekFlags {
  std::string config;
  std::string new_kek_file;
  std::string new_key_label;
  std::vector<std::string> urls;
  std::string ca;
  std::string cert;
  std::string key;
  int64_t timeout_seconds = 3600;
};

StatusOr<std::unique_ptr<net::HttpsClient>> ClientFor(const RotateKekFlags& f, const std::string& url) {
  constexpr std::string_view kScheme = "https://";
  if (url.rfind(kScheme, 0) != 0) return InvalidArgumentError("--url must be https://HOST:PORT: " + url);
  std::string rest = url.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  net::HttpsClient::Options o;
  const size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0) return InvalidArgumentError("--url needs HOST:PORT: " + url);
  o.host = rest.substr(0, colon);
  char* end = nullptr;
  const std::string port = rest.substr(colon + 1);
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p <= 0 || p > 65535) return InvalidArgumentError("--url: bad port: " + url);
  o.port = static_cast<int>(p);
  ASSIGN_OR_RETURN(o.ca_pem, ReadFileToString(Env::Default(), f.ca));
  ASSIGN_OR_RETURN(o.cert_pem, ReadFileToString(Env::Default(), f.cert));
  ASSIGN_OR_RETURN(o.key_pem, crypto::ReadSecretFile(f.key));
  return net::HttpsClient::Create(std::move(o));
}

StatusOr<std::string> AbsolutePath(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) return ErrnoToStatus(errno, "realpath", path);
  return std::string(buf);
}

// Rewrites kms.json in place (atomically, same mode) after `edit`.
Status EditConfig(const std::string& path, const std::function<void(json&)>& edit) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), path));
  ASSIGN_OR_RETURN(json j, ParseJson(text));
  if (!j.is_object()) return InvalidArgumentError(path + ": not a JSON object");
  edit(j);
  struct stat st {};
  const mode_t mode = ::stat(path.c_str(), &st) == 0 ? (st.st_mode & 0777) : 0644;
  return WriteStringToFileAtomic(Env::Default(), path, j.dump(2) + "\n", mode);
}

Status RotateKek(const RotateKekFlags& f) {
  if (f.new_kek_file.empty() == f.new_key_label.empty()) {
    return InvalidArgumentError("kms rotate-kek: give exactly one of --new-kek-file and --new-key-label");
  }
  if (f.urls.empty()) return InvalidArgumentError("kms rotate-kek: --url is required");
  ASSIGN_OR_RETURN(kms::KmsConfig config, kms::LoadKmsConfig(f.config));
  ASSIGN_OR_RETURN(auto configured, kms::OpenConfiguredKeks(config));
  std::vector<std::unique_ptr<net::HttpsClient>> clients;
  for (const auto& url : f.urls) {
    ASSIGN_OR_RETURN(auto c, ClientFor(f, url));
    clients.push_back(std::move(c));
  }

  // 1. The new KEK, opened here only to learn (and check) its id.
  std::unique_ptr<kms::KeyEncryptionKey> fresh;
  std::string new_file;
  if (!f.new_kek_file.empty()) {
    if (!config.kek_pkcs11.has_value() && config.kek_file.empty()) return InvalidArgumentError("no KEK configured");
    if (config.kek_pkcs11.has_value()) {
      return InvalidArgumentError("kms rotate-kek: kms.json uses kek_pkcs11; give --new-key-label");
    }
    ASSIGN_OR_RETURN(new_file, AbsolutePath(f.new_kek_file));
    ASSIGN_OR_RETURN(fresh, kms::LoadFileKek(Env::Default(), new_file));
  } else {
    if (!config.kek_pkcs11.has_value()) {
      return InvalidArgumentError("kms rotate-kek: kms.json uses kek_file; give --new-kek-file");
    }
    kms::KmsConfig next = config;
    next.kek_pkcs11->key_label = f.new_key_label;
    next.kek_pkcs11->previous_key_label.clear();
    ASSIGN_OR_RETURN(fresh, kms::OpenConfiguredKek(next, /*create_if_missing=*/true));
  }
  const std::string new_id = fresh->id();
  const std::string old_id = configured[0]->id();

  // 2. kms.json: new current, old previous (a resumed run finds it so).
  if (old_id != new_id) {
    if (configured.size() > 1) {
      return FailedPreconditionError("kms rotate-kek: kms.json is mid-rotation to KEK " + old_id +
                                     " (previous " + configured[1]->id() +
                                     "); finish that rotation first by running it again with its KEK");
    }
    std::string old_file;
    if (!config.kek_file.empty()) {
      ASSIGN_OR_RETURN(old_file, AbsolutePath(config.kek_file));
    }
    const std::string old_label = config.kek_pkcs11 ? config.kek_pkcs11->key_label : "";
    RETURN_IF_ERROR(EditConfig(f.config, [&](json& j) {
      if (!new_file.empty()) {
        j["kek_file"] = new_file;
        j["kek_previous_file"] = old_file;
      } else {
        j["kek_pkcs11"]["key_label"] = f.new_key_label;
        j["kek_pkcs11"]["previous_key_label"] = old_label;
      }
    }));
    std::printf("kms.json: KEK %s is current, %s previous\n", new_id.c_str(), old_id.c_str());
  } else {
    std::printf("kms.json names KEK %s already: resuming\n", new_id.c_str());
  }
  std::fflush(stdout);

  // 3. Every KMS loads the KEKs kms.json names.
  for (size_t i = 0; i < clients.size(); ++i) {
    auto r = clients[i]->Post("/v1/kek/reload", {{"kek_id", new_id}});
    if (!r.ok()) return r.status().WithPrefix("reload at " + f.urls[i]);
  }

  // 4. The re-wrap, on the first KMS.
  auto started = clients[0]->Post("/v1/kek/rotation", {{"kek_id", new_id}});
  if (!started.ok()) return started.status().WithPrefix("start at " + f.urls[0]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(f.timeout_seconds);
  json status;
  for (;;) {
    ASSIGN_OR_RETURN(status, clients[0]->Get("/v1/kek"));
    const json& rot = status["rotation"];
    const std::string state = rot.value("state", "");
    if (rot.value("to_kek_id", "") == new_id && state == "done") break;
    if (state == "failed") {
      return InternalError("the re-wrap at " + f.urls[0] + " failed: " + rot.value("error", "") +
                           " (run kms rotate-kek again to resume)");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return DeadlineExceededError("the re-wrap has not finished within --timeout (it goes on; run "
                                   "kms rotate-kek again to wait for it)");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const int64_t rewrapped = status["rotation"].value("keys_rewrapped", int64_t{0});

  // 5. The old KEKs are dropped where no record names them.
  std::vector<std::string> old_ids;
  for (const auto& id : status["ring"]) {
    if (id.get<std::string>() != new_id) old_ids.push_back(id.get<std::string>());
  }
  for (const auto& old : old_ids) {
    for (size_t i = 0; i < clients.size(); ++i) {
      auto r = clients[i]->Post("/v1/kek/retire", {{"kek_id", old}});
      if (!r.ok()) return r.status().WithPrefix("retire " + old + " at " + f.urls[i]);
    }
  }

  // 6. kms.json forgets the previous KEK.
  RETURN_IF_ERROR(EditConfig(f.config, [&](json& j) {
    j.erase("kek_previous_file");
    if (j.contains("kek_pkcs11") && j["kek_pkcs11"].is_object()) j["kek_pkcs11"].erase("previous_key_label");
  }));
  std::printf("KEK rotated to %s: %lld customer keys re-wrapped by this run; retired:", new_id.c_str(),
              static_cast<long long>(rewrapped));
  for (const auto& old : old_ids) std::printf(" %s", old.c_str());
  std::printf("\n");
  if (!new_file.empty() && old_id != new_id) {
    std::printf("no record names the old KEK now: destroy its file (and any backup of it)\n");
  }
  return OkStatus();
}

}  // namespace

void AddKekRotationCommands(CLI::App* kms, const CommandSink& sink) {
  auto f = std::make_shared<RotateKekFlags>();
  CLI::App* cmd = kms->add_subcommand(
      "rotate-kek",
      "Re-wrap every stored key under a new KEK while the KMS serves; then retire the old KEK");
  cmd->add_option("--config", f->config, "kms.json of the KMS (rewritten: the new KEK becomes current)")
      ->required();
  cmd->add_option("--new-kek-file", f->new_kek_file, "The new 32-byte file KEK (mode 0600; kms kek-new)");
  cmd->add_option("--new-key-label", f->new_key_label,
                  "CKA_LABEL of the new AES key in the kek_pkcs11 token (generated there if missing)");
  cmd->add_option("--url", f->urls, "Each KMS serving the store, https://HOST:PORT (repeatable; the first re-wraps)")
      ->required();
  cmd->add_option("--ca", f->ca, "KMS CA certificate (PEM)")->required();
  cmd->add_option("--cert", f->cert, "Operator certificate (PEM)")->required();
  cmd->add_option("--key", f->key, "Operator private key (PEM, 0600)")->required();
  cmd->add_option("--timeout", f->timeout_seconds, "Seconds to wait for the re-wrap (default 3600)");
  cmd->callback([f, sink] { sink(RotateKek(*f)); });

  auto out = std::make_shared<std::string>();
  CLI::App* fresh = kms->add_subcommand("kek-new", "Write a new random 32-byte file KEK (mode 0600) for rotate-kek");
  fresh->add_option("--out", *out, "Output file (must not exist)")->required();
  fresh->callback([out, sink] {
    Status s = kms::CreateFileKek(Env::Default(), *out);
    if (!s.ok()) return sink(s);
    auto k = kms::LoadFileKek(Env::Default(), *out);
    if (!k.ok()) return sink(k.status());
    std::printf("new KEK %s written to %s\n", (*k)->id().c_str(), out->c_str());
    sink(OkStatus());
  });
}

}  // namespace vmseal::cli
