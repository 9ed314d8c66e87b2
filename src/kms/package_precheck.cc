#include "kms/package_precheck.h"

#include <utility>
#include <vector>

#include "crypto/primitives.h"
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

}  // namespace

PackagePrecheck::PackagePrecheck(Options options, rate_limit::Clock clock)
    : options_(options), failures_(options.failures, std::move(clock)) {}

Status PackagePrecheck::CheckHost(const std::string& host_id) const {
  const rate_limit::Decision d = failures_.Check(host_id);
  if (d.allowed) return OkStatus();
  return ResourceExhaustedError(rate_limit::RateLimitedMessage(
      "host " + host_id + " sent package texts that failed verification too often",
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
  std::lock_guard<std::mutex> lock(mu_);
  auto it = manifest_of_cert_.find(cert);
  if (it != manifest_of_cert_.end() && it->second != HexSha256(texts.manifest)) {
    return UnauthenticatedError("bad_signature: this .cert verified over another manifest (checked before the signature)");
  }
  return OkStatus();
}

void PackagePrecheck::RememberVerified(const ovf::SignedPackageTexts& texts) {
  const std::string cert = HexSha256(texts.certificate);
  const std::string manifest = HexSha256(texts.manifest);
  std::lock_guard<std::mutex> lock(mu_);
  if (manifest_of_cert_.size() >= options_.max_certificates) manifest_of_cert_.clear();
  manifest_of_cert_[cert] = manifest;
}

size_t PackagePrecheck::remembered_certificates() const {
  std::lock_guard<std::mutex> lock(mu_);
  return manifest_of_cert_.size();
}

}  // namespace vmseal::kms
