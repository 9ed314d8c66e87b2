// vmseal seal | unseal | inspect: the customer's sealed OVF package.
#include <openssl/x509.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "cli/commands.h"
#include "crypto/x509.h"
#include "ovf/package.h"

namespace vmseal::cli {
namespace {

struct SealFlags {
  std::vector<std::string> inputs;
  std::string cert, pubkey, image_id, tenant, format = "ova", out;
  uint32_t cpus = 2;
  uint64_t memory_mib = 2048;
  uint32_t chunk_size = 0;
  bool xmlenc_compat = false;
};

// The tenant a customer certificate names: the KMS issues customer key
// certificates with OU "customer:<id>". "" if the certificate names none.
StatusOr<std::string> TenantOfCertificate(const std::string& pem) {
  ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::Certificate::FromPem(pem));
  X509_NAME* subject = X509_get_subject_name(cert.x509());
  for (int i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, i)) {
    ASN1_STRING* value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
    const std::string ou(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                         static_cast<size_t>(ASN1_STRING_length(value)));
    if (ou.starts_with("customer:") && ou.size() > 9) return ou.substr(9);
  }
  return std::string();
}

// The tenant sealed into the tag. --cert with a KMS customer certificate:
// the certificate's tenant; a --tenant that contradicts it is an error.
// Otherwise --tenant; a recipient that names no tenant and no --tenant
// (a bare key, a certificate not issued by the KMS) seals for "default",
// which no portal accepts from a customer (tenant_mismatch), with a warning.
StatusOr<std::string> SealTenant(const SealFlags& f, const std::string& recipient_pem) {
  std::string from_cert;
  if (!f.cert.empty()) {
    ASSIGN_OR_RETURN(from_cert, TenantOfCertificate(recipient_pem));
  }
  if (!from_cert.empty()) {
    if (!f.tenant.empty() && f.tenant != from_cert) {
      return InvalidArgumentError("--tenant '" + f.tenant + "' contradicts the certificate, which is " +
                                  "for tenant '" + from_cert + "'");
    }
    return from_cert;
  }
  if (!f.tenant.empty()) return f.tenant;
  std::cerr << "vmseal seal: the recipient names no tenant and --tenant is not given; sealing for "
               "tenant 'default' (a portal refuses it from any customer)\n";
  return std::string("default");
}

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
  ASSIGN_OR_RETURN(o.tenant, SealTenant(f, o.recipient_pem));
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
  seal->add_option("--tenant", seal_flags->tenant,
                   "tenant identity (with --cert: taken from the certificate; must match it)");
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
