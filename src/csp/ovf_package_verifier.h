// PackageVerifier over the OVF package library (src/ovf): a package is listed
// only if its structure is valid, every file matches the manifest and the
// descriptor carries the vmseal EncryptionSection (docs/format/package.md).
#ifndef VMSEAL_CSP_OVF_PACKAGE_VERIFIER_H_
#define VMSEAL_CSP_OVF_PACKAGE_VERIFIER_H_

#include "csp/package_verifier.h"

namespace vmseal::csp {

// Stateless; thread-safe.
class OvfPackageVerifier final : public PackageVerifier {
 public:
  // Opens `local_path` as an OVA with ovf::Package (encryption and manifest
  // required, manifest verified). FAILED_PRECONDITION "not encrypted" for a
  // plain package, DATA_LOSS "manifest" for a digest mismatch,
  // INVALID_ARGUMENT for anything malformed.
  StatusOr<VerifiedPackage> Verify(const RandomAccessFile& package,
                                   const std::string& local_path) const override;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_OVF_PACKAGE_VERIFIER_H_
