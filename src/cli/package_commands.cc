// vmseal seal | unseal | inspect: the customer's sealed OVF package.
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "cli/commands.h"
#include "crypto/keys.h"
#include "crypto/x509.h"
#include "json/json.h"
#include "kms/key_versions.h"
#include "kms/policy.h"
#include "ovf/package.h"

namespace vmseal::cli {

// The customer key version a KMS customer certificate names: N for an OU
// "key-version:N" (kms/key_versions.h), 1 for none.
StatusOr<uint64_t> KeyVersionOfCertificate(const std::string& pem) {
  ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::Certificate::FromPem(pem));
  X509_NAME* subject = X509_get_subject_name(cert.x509());
  for (int i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, -1); i >= 0;
       i = X509_NAME_get_index_by_NID(subject, NID_organizationalUnitName, i)) {
    ASN1_STRING* value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
    const std::string ou(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                         static_cast<size_t>(ASN1_STRING_length(value)));
    if (ou.starts_with("key-version:")) return kms::KeyVersionOfOu(ou);
  }
  return uint64_t{1};
}

namespace {

struct SealFlags {
  std::vector<std::string> inputs;
  std::string cert, pubkey, image_id, tenant, format = "ova", out;
  uint32_t cpus = 2;
  uint64_t memory_mib = 2048;
  // Firmware, Secure Boot and TPM of a generated descriptor (package.md §2.4).
  std::string firmware = "bios";
  bool secure_boot = false;
  bool tpm = false;
  uint32_t chunk_size = 0;
  bool xmlenc_compat = false;
  bool keep_disk_format = false;
  int64_t conversion_memory_mib = -1;
  // The package signature (docs/format/package.md §8.1): signed unless
  // --unsigned; the key and certificate default to signing-key.pem and
  // signing-cert.pem beside --cert (where register and fetch-cert put them).
  std::string signing_key, signing_cert;
  bool unsigned_package = false;
  // The image's release policy (package.md §4.1): JSON text, or a file
  // holding it; empty = none (the KMS operator's policy applies).
  std::string policy;
  // Optional customer-held escrow certificate or public key (package.md §4.2).
  std::string escrow_cert;
};

// The --policy argument as compact JSON, validated as the KMS will
// evaluate it (kms/policy.h), so that a package never carries a policy the
// KMS would refuse to apply.
StatusOr<std::string> ReleasePolicyText(const std::string& arg) {
  const size_t first = arg.find_first_not_of(" \t\r\n");
  std::string text = arg;
  if (first == std::string::npos || arg[first] != '{') {
    auto file = ReadFileToString(Env::Default(), arg);
    if (!file.ok()) {
      return InvalidArgumentError("--policy: neither a JSON object nor a readable file: " +
                                  file.status().message());
    }
    text = *std::move(file);
  }
  ASSIGN_OR_RETURN(nlohmann::json policy, ParseJsonObject(text, "--policy"));
  Status valid = kms::ValidatePolicy(policy);
  if (!valid.ok()) return InvalidArgumentError("--policy: " + valid.message());
  return DumpJson(policy);
}

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

// The signing key and its certificate, checked before anything is sealed:
// the certificate is for the key, for package signing, and names `tenant`
// (the portal and the KMS refuse anything else).
struct Signer {
  crypto::PrivateKey key;
  std::string chain_pem;
};
StatusOr<Signer> LoadSigner(const SealFlags& f, const std::string& tenant) {
  const std::string beside = f.cert.empty() ? std::string() : DirName(f.cert) + "/";
  const std::string key_path = !f.signing_key.empty() ? f.signing_key : beside + "signing-key.pem";
  const std::string cert_path = !f.signing_cert.empty() ? f.signing_cert : beside + "signing-cert.pem";
  if (beside.empty() && (f.signing_key.empty() || f.signing_cert.empty())) {
    return InvalidArgumentError("with --pubkey give --signing-key and --signing-cert (or "
                                "--unsigned for an unsigned package)");
  }
  auto key = crypto::LoadPrivateKeyFile(key_path);
  if (!key.ok()) {
    return Status(key.status().code(), "signing key " + key_path + ": " + key.status().message() +
                                           " (vmseal customer register makes one; --unsigned "
                                           "seals without a signature)");
  }
  auto chain = ReadFileToString(Env::Default(), cert_path);
  if (!chain.ok()) {
    return Status(chain.status().code(), "signing certificate " + cert_path + ": " +
                                             chain.status().message() +
                                             " (vmseal customer fetch-cert writes it)");
  }
  ASSIGN_OR_RETURN(auto certs, crypto::Certificate::ParsePemBundle(*chain));
  ASSIGN_OR_RETURN(crypto::PublicKey certified, certs[0].GetPublicKey());
  if (certified.KeyId() != key->KeyId()) {
    return InvalidArgumentError("the signing certificate " + cert_path +
                                " is not for the signing key " + key_path);
  }
  const uint32_t eku = X509_get_extended_key_usage(certs[0].x509());
  if (eku == UINT32_MAX || (eku & XKU_CODE_SIGN) == 0) {
    return InvalidArgumentError("the signing certificate " + cert_path + " is not for package signing");
  }
  if (certs[0].SubjectCommonName() != tenant) {
    return InvalidArgumentError("the signing certificate is for tenant '" +
                                certs[0].SubjectCommonName() + "', the package for tenant '" +
                                tenant + "'");
  }
  return Signer{*std::move(key), *std::move(chain)};
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
  if (!f.cert.empty()) {
    // The version of the customer's key the certificate is for: the tag
    // names it, and the KMS releases only under that version.
    ASSIGN_OR_RETURN(o.key_version, KeyVersionOfCertificate(o.recipient_pem));
  }
  o.vm.cpus = f.cpus;
  o.vm.memory_mib = f.memory_mib;
  if (f.firmware != "bios" && f.firmware != "efi") {
    return InvalidArgumentError("--firmware must be bios or efi");
  }
  if (f.secure_boot && f.firmware != "efi") {
    return InvalidArgumentError("--secure-boot needs --firmware efi");
  }
  o.vm.platform.efi = f.firmware == "efi";
  o.vm.platform.secure_boot = f.secure_boot;
  o.vm.platform.tpm = f.tpm;
  o.ova = f.format == "ova";
  o.xmlenc_compat = f.xmlenc_compat;
  o.convert_disks = !f.keep_disk_format;
  if (f.conversion_memory_mib < -1 || f.conversion_memory_mib > (int64_t{1} << 30)) {
    return InvalidArgumentError("--conversion-memory must be 0..2^30 MiB (or -1: default)");
  }
  o.conversion_memory_bytes =
      f.conversion_memory_mib < 0 ? -1 : f.conversion_memory_mib * (int64_t{1} << 20);
  o.chunk_size_bytes = f.chunk_size;
  if (!f.policy.empty()) {
    ASSIGN_OR_RETURN(o.release_policy_json, ReleasePolicyText(f.policy));
  }
  if (!f.escrow_cert.empty()) {
    ASSIGN_OR_RETURN(o.escrow_pem, ReadFileToString(env, f.escrow_cert));
  }
  std::optional<Signer> signer;
  if (!f.unsigned_package) {
    ASSIGN_OR_RETURN(signer, LoadSigner(f, o.tenant));
    o.signing_key = &signer->key;
    o.signing_chain_pem = signer->chain_pem;
  } else {
    std::cerr << "vmseal seal: --unsigned: the package carries no signature; no portal or KMS "
                 "that requires signed packages accepts it\n";
  }
  std::vector<std::string> notes;
  o.notes = &notes;
  Status sealed = ovf::SealPackage(env, o, f.out);
  // What changed on the way (converted disks, vendor extensions kept as
  // non-required or dropped), also when sealing failed later.
  for (const std::string& n : notes) std::cerr << "vmseal seal: " << n << "\n";
  return sealed;
}

}  // namespace

void AddPackageCommands(CLI::App& app, const CommandSink& sink) {
  auto seal_flags = std::make_shared<SealFlags>();
  CLI::App* seal = app.add_subcommand(
      "seal", "Seal disk images or an OVF/OVA package into an encrypted OVF 2 package");
  seal->add_option("input", seal_flags->inputs,
                   "disk images (raw, qcow2; VMDK, VHD and VHDX are converted to qcow2 with "
                   "qemu-img), or one .ova, .ovf (its referenced files only) or package "
                   "directory")
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
  seal->add_option("--firmware", seal_flags->firmware,
                   "bios or efi (image inputs; a package's descriptor says it itself)")
      ->capture_default_str();
  seal->add_flag("--secure-boot", seal_flags->secure_boot,
                 "boot with UEFI Secure Boot on (image inputs; needs --firmware efi)");
  seal->add_flag("--tpm", seal_flags->tpm, "give the guest a TPM 2.0 (image inputs)");
  seal->add_option("--format", seal_flags->format, "ova or dir")->capture_default_str();
  seal->add_option("--chunk-size", seal_flags->chunk_size, "stream chunk size in bytes (0 = default)");
  seal->add_flag("--keep-disk-format", seal_flags->keep_disk_format,
                 "seal VMDK, VHD and VHDX disks as they are (an archive: hosts boot only raw "
                 "and qcow2)");
  seal->add_option("--conversion-memory", seal_flags->conversion_memory_mib,
                   "convert a VMDK/VHD/VHDX disk in memory when its qcow2 needs at most this "
                   "many MiB (0: always through a temporary file; default -1: a quarter of the "
                   "available memory, at most 8 GiB)");
  seal->add_flag("--xmlenc-compat", seal_flags->xmlenc_compat,
                 "standard XML Encryption (AES-256-GCM, rsa-oaep-mgf1p) readable by xmlsec1; "
                 "RSA recipients only");
  seal->add_option("--signing-key", seal_flags->signing_key,
                   "package-signing key (PEM, 0600; default signing-key.pem beside --cert)");
  seal->add_option("--signing-cert", seal_flags->signing_cert,
                   "its certificate from the KMS (default signing-cert.pem beside --cert)");
  seal->add_flag("--unsigned", seal_flags->unsigned_package,
                 "UNSIGNED package, for tests and interoperability only: portals and KMSs that "
                 "require signatures refuse it (unsigned_package)");
  seal->add_option("--escrow-cert", seal_flags->escrow_cert,
                   "your own escrow certificate or public key (PEM, RSA or X25519): the package "
                   "also carries its data key wrapped to it, so `unseal --escrow-key` opens it "
                   "offline without the KMS (off by default; docs/threat-model.md)");
  seal->add_option("--policy", seal_flags->policy,
                   "the image's release policy (JSON object or a file holding one), sealed into "
                   "the signed descriptor; the KMS enforces it at release unless you sign a "
                   "newer one (customer set-policy)");
  seal->add_option("-o,--output", seal_flags->out, "output .ova file or directory")->required();
  seal->callback([seal_flags, sink] { sink(RunSeal(*seal_flags)); });

  auto unseal_pkg = std::make_shared<std::string>();
  auto unseal_key = std::make_shared<std::string>();
  auto unseal_out = std::make_shared<std::string>();
  CLI::App* unseal = app.add_subcommand(
      "unseal", "Verify and decrypt a sealed package into a plain OVF package directory");
  unseal->add_option("package", *unseal_pkg, "sealed .ova, .ovf or package directory")->required();
  auto unseal_escrow = std::make_shared<std::string>();
  auto key_opt = unseal->add_option("--key", *unseal_key, "recipient private key (PEM)");
  auto escrow_opt = unseal->add_option("--escrow-key", *unseal_escrow,
                                       "your escrow private key (PEM): opens a package sealed with "
                                       "--escrow-cert offline");
  key_opt->excludes(escrow_opt);
  unseal->add_option("-o,--output", *unseal_out, "output directory (must not exist)")->required();
  unseal->callback([=] {
    Env* env = Env::Default();
    if (unseal_key->empty() == unseal_escrow->empty()) {
      return sink(InvalidArgumentError("give exactly one of --key and --escrow-key"));
    }
    const bool escrow = !unseal_escrow->empty();
    auto pem = ReadFileToString(env, escrow ? *unseal_escrow : *unseal_key);
    if (!pem.ok()) return sink(pem.status());
    Status status = escrow ? ovf::UnsealPackageWithEscrowKey(env, *unseal_pkg, *pem, *unseal_out)
                           : ovf::UnsealPackage(env, *unseal_pkg, *pem, *unseal_out);
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
