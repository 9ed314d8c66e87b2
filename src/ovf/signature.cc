#include "ovf/signature.h"

#include <openssl/x509v3.h>

#include <utility>

#include "ovf/manifest.h"

namespace vmseal::ovf {
namespace {

constexpr std::string_view kPemBegin = "-----BEGIN CERTIFICATE-----";

struct DigestName {
  std::string_view name;
  crypto::SignatureDigest digest;
};
constexpr DigestName kDigests[] = {
    {"SHA1", crypto::SignatureDigest::kSha1},
    {"SHA256", crypto::SignatureDigest::kSha256},
    {"SHA512", crypto::SignatureDigest::kSha512},
};

std::string_view NameOf(crypto::SignatureDigest digest) {
  for (const DigestName& d : kDigests) {
    if (d.digest == digest) return d.name;
  }
  return "SHA256";
}

bool IsHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

Status Bad(std::string_view what) {
  return InvalidArgumentError("package certificate: " + std::string(what));
}

}  // namespace

StatusOr<PackageSignature> ParsePackageCertificate(std::string_view text) {
  if (text.size() > kMaxPackageCertBytes) return Bad("larger than 64 KiB");
  const size_t eol = text.find('\n');
  if (eol == std::string_view::npos) return Bad("no signature line");
  std::string_view line = text.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

  crypto::SignatureDigest digest = crypto::SignatureDigest::kSha256;
  const size_t open = line.find('(');
  if (open == std::string_view::npos) return Bad("the first line is not ALG(name)= signature");
  bool known = false;
  for (const DigestName& d : kDigests) {
    if (line.substr(0, open) == d.name) {
      digest = d.digest;
      known = true;
    }
  }
  if (!known) return Bad("unknown signature digest '" + std::string(line.substr(0, open)) + "'");
  const size_t close = line.find(")= ", open);
  if (close == std::string_view::npos) return Bad("the first line is not ALG(name)= signature");
  std::string manifest_name(line.substr(open + 1, close - open - 1));
  if (manifest_name.empty() || !manifest_name.ends_with(".mf") ||
      manifest_name.find('/') != std::string::npos) {
    return Bad("the signature line must name the package's .mf file");
  }
  const std::string_view hex = line.substr(close + 3);
  if (hex.empty() || hex.size() % 2 != 0 || hex.size() > 2 * 1024 || !IsHex(hex)) {
    return Bad("the signature is not hex");
  }
  ASSIGN_OR_RETURN(crypto::Bytes signature, crypto::HexDecode(hex));

  std::string_view rest = text.substr(eol + 1);
  const size_t first = rest.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return Bad("no signer certificate");
  if (rest.substr(first, kPemBegin.size()) != kPemBegin) {
    return Bad("only PEM certificates may follow the signature line");
  }
  // Everything after the signature line is certificates: ParsePemBundle
  // reads them all; re-encoding them must give back the same blocks, so no
  // other PEM type or stray text hides between them.
  auto certs = crypto::Certificate::ParsePemBundle(rest);
  if (!certs.ok()) return Bad("unreadable signer certificate");
  std::string canonical;
  for (const crypto::Certificate& c : *certs) canonical += c.ToPem();
  std::string given;
  for (char c : rest) {
    if (c != '\r' && c != '\n' && c != ' ' && c != '\t') given += c;
  }
  std::string expect;
  for (char c : canonical) {
    if (c != '\r' && c != '\n' && c != ' ' && c != '\t') expect += c;
  }
  if (given != expect) return Bad("unexpected text among the certificates");
  return PackageSignature{digest, std::move(manifest_name), std::move(signature), (*certs)[0],
                          std::vector<crypto::Certificate>(certs->begin() + 1, certs->end())};
}

StatusOr<std::string> SignManifest(std::string_view manifest_name, std::string_view manifest_text,
                                   const crypto::PrivateKey& key,
                                   std::string_view signer_chain_pem) {
  ASSIGN_OR_RETURN(auto chain, crypto::Certificate::ParsePemBundle(signer_chain_pem));
  ASSIGN_OR_RETURN(crypto::PublicKey cert_key, chain[0].GetPublicKey());
  if (cert_key.KeyId() != key.KeyId()) {
    return InvalidArgumentError("the signing certificate is not for the signing key");
  }
  ASSIGN_OR_RETURN(crypto::Bytes signature,
                   crypto::Sign(key, crypto::SignatureDigest::kSha256,
                                crypto::AsBytes(manifest_text)));
  std::string out = std::string(NameOf(crypto::SignatureDigest::kSha256)) + "(" +
                    std::string(manifest_name) + ")= " + crypto::HexEncode(signature) + "\n";
  for (const crypto::Certificate& c : chain) out += c.ToPem();
  return out;
}

Status VerifyManifestSignature(const PackageSignature& sig, std::string_view manifest_name,
                               std::string_view manifest_text) {
  if (sig.manifest_name != manifest_name) {
    return UnauthenticatedError("bad_signature: the signature names " + sig.manifest_name +
                                ", the package's manifest is " + std::string(manifest_name));
  }
  ASSIGN_OR_RETURN(crypto::PublicKey key, sig.signer.GetPublicKey());
  Status verified = crypto::VerifySignature(key, sig.digest, crypto::AsBytes(manifest_text),
                                            sig.signature);
  if (!verified.ok()) {
    return UnauthenticatedError("bad_signature: the manifest signature does not verify with the "
                                "signer certificate " + sig.signer.Fingerprint());
  }
  return OkStatus();
}

Status VerifySigner(const PackageSignature& sig, const std::vector<crypto::Certificate>& roots,
                    std::string_view expected_signer) {
  crypto::VerifyOptions options;
  options.intermediates = sig.intermediates;
  Status chain = crypto::VerifyCertificateChain(sig.signer, roots, options);
  if (!chain.ok()) {
    return UnauthenticatedError("signer_mismatch: the signer certificate does not chain to a "
                                "trusted CA (" + chain.message() + ")");
  }
  // A package signing certificate, not a TLS identity that happens to carry
  // the same name.
  const uint32_t eku = X509_get_extended_key_usage(sig.signer.x509());
  if (eku == UINT32_MAX || (eku & XKU_CODE_SIGN) == 0) {
    return UnauthenticatedError("signer_mismatch: the signer certificate is not for package "
                                "signing (no codeSigning extended key usage)");
  }
  const std::string cn = sig.signer.SubjectCommonName();
  if (cn != expected_signer) {
    return UnauthenticatedError("signer_mismatch: signed by '" + cn + "', expected '" +
                                std::string(expected_signer) + "'");
  }
  return OkStatus();
}

namespace {

Status BadSignature(const std::string& detail) {
  return UnauthenticatedError("bad_signature: " + detail);
}

// "<stem>.ovf": a plain file name, as in a package (§8).
bool ValidDescriptorName(std::string_view name) {
  if (name.size() < 5 || name.size() > 100 || !name.ends_with(".ovf")) return false;
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return name.front() != '.';
}

}  // namespace

crypto::Bytes SigningKeyProofMessage(const crypto::PublicKey& key) {
  constexpr std::string_view kContext = "vmseal-signing-key-proof-v1";
  crypto::Bytes out(kContext.begin(), kContext.end());
  out.push_back(0);
  const crypto::Bytes der = key.ToDer();
  out.insert(out.end(), der.begin(), der.end());
  return out;
}

StatusOr<SignedDescriptor> VerifySignedDescriptor(const SignedPackageTexts& texts) {
  if (!ValidDescriptorName(texts.descriptor_name)) {
    return InvalidArgumentError("descriptor name must be <stem>.ovf of [A-Za-z0-9._-]");
  }
  if (texts.descriptor.size() > kMaxSignedDescriptorBytes ||
      texts.manifest.size() > kMaxSignedManifestBytes ||
      texts.certificate.size() > kMaxPackageCertBytes) {
    return InvalidArgumentError("package metadata too large (descriptor <= 256 KiB, manifest, "
                                "certificate <= 64 KiB)");
  }
  if (texts.certificate.empty()) {
    return FailedPreconditionError("unsigned_package: the package carries no signature (.cert)");
  }
  auto parsed = ParsePackageCertificate(texts.certificate);
  if (!parsed.ok()) return BadSignature(parsed.status().message());
  SignedDescriptor out{*std::move(parsed), {}, {}};
  const std::string stem = texts.descriptor_name.substr(0, texts.descriptor_name.size() - 4);
  RETURN_IF_ERROR(VerifyManifestSignature(out.signature, stem + ".mf", texts.manifest));

  auto entries = ParseManifest(texts.manifest);
  if (!entries.ok()) return BadSignature("the signed manifest does not parse");
  const ManifestEntry* listed = nullptr;
  for (const ManifestEntry& e : *entries) {
    if (e.name == texts.descriptor_name) listed = &e;
  }
  if (listed == nullptr) {
    return BadSignature("the signed manifest does not list " + texts.descriptor_name);
  }
  StreamingDigest digest(listed->algorithm);
  digest.Update(crypto::AsBytes(texts.descriptor));
  if (digest.Finish() != listed->digest) {
    return BadSignature("the descriptor is not the one the signed manifest digests");
  }

  ASSIGN_OR_RETURN(Descriptor descriptor, Descriptor::Parse(texts.descriptor));
  if (!descriptor.HasEncryptionSection()) {
    return InvalidArgumentError("the signed descriptor has no EncryptionSection");
  }
  RETURN_IF_ERROR(descriptor.ReadEncryption(&out.tag, &out.wrapped_key));
  ASSIGN_OR_RETURN(out.release_policy, descriptor.ReadReleasePolicy());
  return out;
}

Status VerifyRegisteredSigner(const PackageSignature& sig, const std::string& registered_cert_pem,
                              const std::vector<crypto::Certificate>& roots,
                              std::string_view tenant) {
  auto registered = crypto::Certificate::FromPem(registered_cert_pem);
  if (!registered.ok()) {
    return UnauthenticatedError("signer_mismatch: the registered signing certificate is unreadable");
  }
  ASSIGN_OR_RETURN(crypto::PublicKey want, registered->GetPublicKey());
  auto got = sig.signer.GetPublicKey();
  if (!got.ok() || got->KeyId() != want.KeyId()) {
    return UnauthenticatedError("signer_mismatch: signed by key " +
                                (got.ok() ? got->KeyId() : std::string("(unreadable)")) +
                                ", tenant '" + std::string(tenant) +
                                "' registered signing key " + want.KeyId());
  }
  return VerifySigner(sig, roots, tenant);
}

}  // namespace vmseal::ovf
