// vmseal seal | unseal | inspect: the customer's sealed OVF package.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "cli/commands.h"
#include "ovf/package.h"

namespace vmseal::cli {
namespace {

struct SealFlags {
  std::vector<std::string> inputs;
  std::string cert, pubkey, image_id, tenant = "default", format = "ova", out;
  uint32_t cpus = 2;
  uint64_t memory_mib = 2048;
  uint32_t chunk_size = 0;
  bool xmlenc_compat = false;
};

Status RunSeal(const SealFlags& f) {
  if (f.cert.empty() == f.pubkey.empty()) {
    return InvalidArgumentError("give exactly one of --cert and --pubkey");
  }
  if (f.format != "ova" && f.format != "dir") {
    return InvalidArgumentError("--format must be ova or dir");
  }
  Env* env = Env::Default();
  ovf::SealOptions o;
  o.inputs = f.inputs;
  ASSIGN_OR_RETURN(o.recipient_pem, ReadFileToString(env, f.cert.empty() ? f.pubkey : f.cert));
  o.image_id = f.image_id;
  o.tenant = f.tenant;
  o.vm.cpus = f.cpus;
  o.vm.memory_mib = f.memory_mib;
  o.ova = f.format == "ova";
  o.xmlenc_compat = f.xmlenc_compat;
  o.chunk_size_bytes = f.chunk_size;
  return ovf::SealPackage(env, o, f.out);
}

}  // namespace

void AddPackageCommands(CLI::App& app, const CommandSink& sink) {
  auto seal_flags = std::make_shared<SealFlags>();
  CLI::App* seal = app.add_subcommand(
      "seal", "Seal disk images or an OVF/OVA package into an encrypted OVF 2 package");
  seal->add_option("input", seal_flags->inputs,
                   "raw/qcow2 disk images, or one .ovf/.ova/package directory")
      ->required();
  seal->add_option("--cert", seal_flags->cert,
                   "recipient X.509 certificate (PEM) of an RSA or X25519 key");
  seal->add_option("--pubkey", seal_flags->pubkey, "recipient RSA or X25519 public key (PEM)");
  seal->add_option("--image-id", seal_flags->image_id, "image identity (default: random UUID)");
  seal->add_option("--tenant", seal_flags->tenant, "tenant identity")->capture_default_str();
  seal->add_option("--cpus", seal_flags->cpus, "virtual CPUs (image inputs)")->capture_default_str();
  seal->add_option("--memory-mib", seal_flags->memory_mib, "memory in MiB (image inputs)")
      ->capture_default_str();
  seal->add_option("--format", seal_flags->format, "ova or dir")->capture_default_str();
  seal->add_option("--chunk-size", seal_flags->chunk_size, "stream chunk size in bytes (0 = default)");
  seal->add_flag("--xmlenc-compat", seal_flags->xmlenc_compat,
                 "standard XML Encryption (AES-256-GCM, rsa-oaep-mgf1p) readable by xmlsec1; "
                 "RSA recipients only");
  seal->add_option("-o,--output", seal_flags->out, "output .ova file or directory")->required();
  seal->callback([seal_flags, sink] { sink(RunSeal(*seal_flags)); });

  auto unseal_pkg = std::make_shared<std::string>();
  auto unseal_key = std::make_shared<std::string>();
  auto unseal_out = std::make_shared<std::string>();
  CLI::App* unseal = app.add_subcommand(
      "unseal", "Verify and decrypt a sealed package into a plain OVF package directory");
  unseal->add_option("package", *unseal_pkg, "sealed .ova, .ovf or package directory")->required();
  unseal->add_option("--key", *unseal_key, "recipient private key (PEM)")->required();
  unseal->add_option("-o,--output", *unseal_out, "output directory (must not exist)")->required();
  unseal->callback([=] {
    Env* env = Env::Default();
    auto pem = ReadFileToString(env, *unseal_key);
    if (!pem.ok()) return sink(pem.status());
    Status status = ovf::UnsealPackage(env, *unseal_pkg, *pem, *unseal_out);
    // The PEM holds the private key: wipe the copy before it is freed.
    WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(pem->data()), pem->size()));
    sink(status);
  });

  auto inspect_pkg = std::make_shared<std::string>();
  auto inspect_json = std::make_shared<bool>(false);
  CLI::App* inspect = app.add_subcommand(
      "inspect", "Show a package's structure and encryption tag (no key needed)");
  inspect->add_option("package", *inspect_pkg, ".ova, .ovf or package directory")->required();
  inspect->add_flag("--json", *inspect_json, "machine-readable output");
  inspect->callback([=] {
    auto text = ovf::InspectPackage(Env::Default(), *inspect_pkg, *inspect_json);
    if (!text.ok()) return sink(text.status());
    std::cout << *text;
    sink(OkStatus());
  });
}

}  // namespace vmseal::cli
