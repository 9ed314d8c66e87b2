#include "csp/ovf_package_verifier.h"

#include "ovf/package.h"

namespace vmseal::csp {

StatusOr<VerifiedPackage> OvfPackageVerifier::Verify(const RandomAccessFile&,
                                                     const std::string& local_path) const {
  if (local_path.empty()) return FailedPreconditionError("package verifier needs a local file");
  ovf::PackageOpenOptions options;
  options.require_encrypted = true;
  options.require_manifest = true;
  options.verify_manifest = true;
  auto package = ovf::Package::Open(Env::Default(), local_path, options);
  if (!package.ok()) {
    // Package errors name the staging path; the customer needs only what.
    const Status& s = package.status();
    std::string message = s.message();
    if (size_t at = message.find(local_path); at != std::string::npos) {
      message.replace(at, local_path.size(), "package");
    }
    // The reason token stays first for signature refusals.
    if (message.starts_with("bad_signature:")) return Status(s.code(), message);
    return Status(s.code(), "package rejected: " + message);
  }
  const ovf::Package& p = **package;
  if (!p.encrypted()) return FailedPreconditionError("package rejected: not encrypted");
  if (p.tag().image_id.empty() || p.tag().tenant.empty() || p.tag().key_id.empty()) {
    return FailedPreconditionError("package rejected: the encryption tag lacks its image id, "
                                   "tenant or key id");
  }
  VerifiedPackage out;
  out.tagged_image_id = p.tag().image_id;
  out.key_id = p.tag().key_id;
  out.disk_count = p.files().size();
  out.tenant = p.tag().tenant;
  if (p.is_signed()) {
    // Open verified the signature over the manifest, which digests every file.
    auto signer = p.signature().signer.GetPublicKey();
    if (!signer.ok()) return InvalidArgumentError("package rejected: unreadable signer key");
    out.signer_key_id = signer->KeyId();
    out.signed_texts = {p.descriptor_name(), p.descriptor_text(), p.manifest_text(),
                        p.certificate_text()};
  }
  return out;
}

}  // namespace vmseal::csp
