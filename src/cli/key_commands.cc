// vmseal keygen: writes a PEM key pair and prints its key id.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "base/env.h"
#include "cli/commands.h"
#include "crypto/keys.h"

namespace vmseal::cli {
namespace {

struct KeygenFlags {
  std::string type = "rsa3072";
  std::string out;
  bool json = false;
};

Status RunKeygen(const KeygenFlags& flags) {
  ASSIGN_OR_RETURN(crypto::KeyType type, crypto::ParseKeyType(flags.type));
  if (type == crypto::KeyType::kEcP256) {
    return InvalidArgumentError("keygen makes rsa3072, rsa2048 or x25519 keys");
  }
  if (flags.out.empty()) return InvalidArgumentError("--out must not be empty");
  Env* env = Env::Default();
  const std::string priv_path = flags.out + ".pem";
  const std::string pub_path = flags.out + ".pub.pem";
  for (const std::string& p : {priv_path, pub_path}) {
    if (env->FileExists(p)) return AlreadyExistsError(p + " exists; not overwriting it");
  }
  ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::PrivateKey::Generate(type));
  RETURN_IF_ERROR(crypto::WritePrivateKeyFile(env, priv_path, key));
  Status s = WriteStringToFileAtomic(env, pub_path, key.Public().ToPem(), 0644);
  if (!s.ok()) {
    (void)env->RemoveFile(priv_path);  // no half-written key pair
    return s;
  }
  const std::string key_id = key.KeyId();
  if (flags.json) {
    nlohmann::json j = {{"key_id", key_id},
                        {"type", std::string(crypto::KeyTypeName(type))},
                        {"private_key", priv_path},
                        {"public_key", pub_path}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("key id: %s\nprivate key: %s (mode 0600)\npublic key: %s\n", key_id.c_str(),
                priv_path.c_str(), pub_path.c_str());
  }
  return OkStatus();
}

}  // namespace

void AddKeyCommands(CLI::App& app, const CommandSink& sink) {
  auto flags = std::make_shared<KeygenFlags>();
  CLI::App* cmd = app.add_subcommand(
      "keygen",
      "Generate a key pair: PREFIX.pem (private, PKCS#8, mode 0600) and PREFIX.pub.pem "
      "(public, SPKI). Prints the key id: hex SHA-256 of the public key's DER "
      "SubjectPublicKeyInfo. Never overwrites existing files.");
  cmd->add_option("--type", flags->type, "Key type: rsa3072 (default), rsa2048 or x25519")
      ->check(CLI::IsMember({"rsa3072", "rsa2048", "x25519"}));
  cmd->add_option("--out", flags->out, "Output prefix (writes PREFIX.pem and PREFIX.pub.pem)")
      ->required();
  cmd->add_flag("--json", flags->json, "Print the result as one JSON object");
  cmd->callback([flags, sink] { sink(RunKeygen(*flags)); });
}

}  // namespace vmseal::cli
