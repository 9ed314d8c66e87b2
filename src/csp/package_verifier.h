// The portal's check of an uploaded package before it is listed as an image.
// The portal core depends only on this interface; ovf_package_verifier.h is
// the implementation over the OVF package library (src/ovf).
#ifndef VMSEAL_CSP_PACKAGE_VERIFIER_H_
#define VMSEAL_CSP_PACKAGE_VERIFIER_H_

#include <cstdint>
#include <string>

#include "base/env.h"
#include "base/status.h"
#include "ovf/signed_package_texts.h"

namespace vmseal::csp {

// What the portal may learn from a sealed package (docs/protocol.md step 5):
// never disk content or keys.
struct VerifiedPackage {
  // The image id named in the encryption tag (the KMS checks it again).
  std::string tagged_image_id;
  // Key id of the customer key the data key is wrapped to, as the tag names
  // it ("sha256:<hex SPKI digest>").
  std::string key_id;
  // Number of encrypted disks.
  uint64_t disk_count = 0;
  // The tenant the tag names. The portal lists a package only for the
  // customer whose id this is and whose key `key_id` names
  // (tenant_mismatch otherwise). A verifier that reads a tag MUST fill
  // `tenant` and `key_id` (OvfPackageVerifier refuses a tag without them);
  // only a verifier that reads no tag at all (the portal's explicit
  // --accept-unverified-packages test mode, test doubles) leaves `tenant`
  // empty, and such a package is not registered at the KMS, so no key is
  // ever released for it.
  std::string tenant;
  // The key id (hex SHA-256 of the SPKI) of the key that signed the
  // package's manifest, the signature checked (docs/format/package.md
  // §8.1); empty for an unsigned package. The portal lists a package whose
  // tag it read only if this is the uploader's registered signing key.
  std::string signer_key_id;
  // The signed package's descriptor, manifest and .cert exactly as stored
  // (set with `signer_key_id`): the portal registers the image at the KMS
  // with them, and the KMS verifies them itself (docs/protocol.md §4).
  ovf::SignedPackageTexts signed_texts;
};

// Thread-safe.
class PackageVerifier {
 public:
  virtual ~PackageVerifier() = default;
  // Reads the package; OK only if every file's manifest digest matches and
  // the encryption tag is present with every disk encrypted. Errors:
  // DATA_LOSS "manifest" for a digest mismatch, FAILED_PRECONDITION
  // "not encrypted" for a plaintext disk or a missing tag, INVALID_ARGUMENT
  // for a malformed package. `local_path` is the same bytes as a local file
  // (staged upload), for verifiers that open packages by path.
  virtual StatusOr<VerifiedPackage> Verify(const RandomAccessFile& package,
                                           const std::string& local_path) const = 0;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_PACKAGE_VERIFIER_H_
