#include "kms/package_precheck.h"

#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "ovf/manifest.h"
#include "ovf/signature.h"

namespace vmseal::kms {
namespace {

std::string HexSha256(std::string_view text) { return crypto::HexEncode(crypto::Sha256(text)); }

bool WithinBounds(const ovf::SignedPackageTexts& t) {
  return !t.certificate.empty() && t.descriptor.size() <= ovf::kMaxSignedDescriptorBytes &&
         t.manifest.size() <= ovf::kMaxSignedManifestBytes &&
         t.certificate.size() <= ovf::kMaxPackageCertBytes;
}

// The certificates of a .cert text: everything after its first line.
std::string_view ChainOf(std::string_view cert) {
  const size_t eol = cert.find('\n');
  return eol == std::string_view::npos ? std::string_view() : cert.substr(eol + 1);
}

// The signature line "ALG(name)= hex" of a .cert, read without its
// certificates; nullopt for anything ovf::ParsePackageCertificate would not
// read the same way (then the full verification answers).
struct SignatureLine {
  crypto::SignatureDigest digest;
  std::string manifest_name;
  crypto::Bytes signature;
};
std::optional<SignatureLine> ReadSignatureLine(std::string_view cert) {
  const size_t eol = cert.find('\n');
  if (eol == std::string_view::npos) return std::nullopt;
  std::string_view line = cert.substr(0, eol);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const size_t open = line.find('(');
  const size_t close = line.find(")= ");
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) return std::nullopt;
  SignatureLine out;
  const std::string_view alg = line.substr(0, open);
  if (alg == "SHA1") {
    out.digest = crypto::SignatureDigest::kSha1;
  } else if (alg == "SHA256") {
    out.digest = crypto::SignatureDigest::kSha256;
  } else if (alg == "SHA512") {
    out.digest = crypto::SignatureDigest::kSha512;
  } else {
    return std::nullopt;
  }
  out.manifest_name = std::string(line.substr(open + 1, close - open - 1));
  const std::string_view hex = line.substr(close + 3);
  if (hex.empty() || hex.size() > 2 * 1024) return std::nullopt;
  auto sig = crypto::HexDecode(hex);
  if (!sig.ok()) return std::nullopt;
  out.signature = *std::move(sig);
  return out;
}

}  // namespace

PackagePrecheck::PackagePrecheck(Options options, rate_limit::Clock clock)
    : options_(options), failures_(options.failures, std::move(clock)) {}

Status PackagePrecheck::CheckHost(const std::string& host_id) const {
  const rate_limit::Decision d = failures_.Check(host_id);
  if (d.allowed) return OkStatus();
  return ResourceExhaustedError(rate_limit::RateLimitedMessage(
      "host " + host_id + " had too many releases refused (package texts, evidence, key or policy)",
      d.retry_after_seconds));
}

void PackagePrecheck::RecordFailure(const std::string& host_id) { failures_.RecordFailure(host_id); }

Status PackagePrecheck::Check(const ovf::SignedPackageTexts& texts) const {
  if (!WithinBounds(texts)) return OkStatus();  // the full verification's answer
  // 1. The manifest's line for the descriptor (a text parse and a digest).
  auto entries = ovf::ParseManifest(texts.manifest);
  if (!entries.ok()) return OkStatus();  // refused by the full verification, after the signature
  const ovf::ManifestEntry* listed = nullptr;
  for (const ovf::ManifestEntry& e : *entries) {
    if (e.name == texts.descriptor_name) listed = &e;
  }
  if (listed != nullptr) {
    ovf::StreamingDigest digest(listed->algorithm);
    digest.Update(crypto::AsBytes(texts.descriptor));
    if (digest.Finish() != listed->digest) {
      return UnauthenticatedError("bad_signature: the descriptor does not have the digest the manifest lists (checked before the signature)");
    }
  }
  // 2. A .cert already seen verifying, beside another manifest.
  const std::string cert = HexSha256(texts.certificate);
  std::unique_lock<std::mutex> lock(mu_);
  auto it = manifest_of_cert_.find(cert);
  if (it != manifest_of_cert_.end() && it->second != HexSha256(texts.manifest)) {
    return UnauthenticatedError("bad_signature: this .cert verified over another manifest (checked before the signature)");
  }
  if (it != manifest_of_cert_.end()) return OkStatus();  // the same bytes that verified
  // 3. Known certificates under a new signature line.
  auto signer = signer_of_chain_.find(HexSha256(ChainOf(texts.certificate)));
  if (signer == signer_of_chain_.end()) return OkStatus();
  const std::shared_ptr<const crypto::PublicKey> key = signer->second;
  lock.unlock();
  const std::optional<SignatureLine> line = ReadSignatureLine(texts.certificate);
  const std::string stem = texts.descriptor_name.size() > 4
                               ? texts.descriptor_name.substr(0, texts.descriptor_name.size() - 4)
                               : std::string();
  if (!line || line->manifest_name != stem + ".mf") return OkStatus();
  if (!crypto::VerifySignature(*key, line->digest, crypto::AsBytes(texts.manifest), line->signature).ok()) {
    return UnauthenticatedError("bad_signature: the manifest signature does not verify with the known signer "
                                "certificate (checked before parsing it)");
  }
  return OkStatus();
}

void PackagePrecheck::RememberVerified(const ovf::SignedPackageTexts& texts, const crypto::PublicKey& signer) {
  const std::string cert = HexSha256(texts.certificate);
  const std::string manifest = HexSha256(texts.manifest);
  const std::string chain = HexSha256(ChainOf(texts.certificate));
  auto key = std::make_shared<const crypto::PublicKey>(signer);
  std::lock_guard<std::mutex> lock(mu_);
  if (manifest_of_cert_.size() >= options_.max_certificates) manifest_of_cert_.clear();
  if (signer_of_chain_.size() >= options_.max_certificates) signer_of_chain_.clear();
  manifest_of_cert_[cert] = manifest;
  signer_of_chain_[chain] = std::move(key);
}

size_t PackagePrecheck::remembered_certificates() const {
  std::lock_guard<std::mutex> lock(mu_);
  return manifest_of_cert_.size();
}

}  // namespace vmseal::kms
