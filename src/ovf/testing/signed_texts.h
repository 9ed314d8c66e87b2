// Test-only: the signed metadata (descriptor, manifest, .cert) of a
// one-disk package whose data key is wrapped as `key` under `tag`, as
// ovf::SealPackage writes it, without sealing a disk: what a host's release
// request carries (docs/protocol.md §5).
#ifndef VMSEAL_OVF_TESTING_SIGNED_TEXTS_H_
#define VMSEAL_OVF_TESTING_SIGNED_TEXTS_H_

#include <string>
#include <vector>

#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "ovf/descriptor.h"
#include "ovf/manifest.h"
#include "ovf/package_format.h"
#include "ovf/signature.h"

namespace vmseal::ovf::testing {

inline constexpr char kDescriptorName[] = "pkg.ovf";

// `tag` needs image_id, tenant, key_id, key_version; the rest is filled in.
// `signer` null: no .cert (an unsigned package). `release_policy` non-empty:
// the descriptor carries it (package.md §4.1).
inline StatusOr<SignedPackageTexts> MakeSignedTexts(EncryptionTag tag, const WrappedKey& key,
                                                   const crypto::PrivateKey* signer,
                                                   const std::string& chain_pem,
                                                   const std::string& release_policy = "") {
  tag.format = std::string(kTagFormat);
  tag.version = kTagVersion;
  tag.key_wrap_algorithm = key.algorithm;
  if (tag.data_algorithm.empty()) tag.data_algorithm = std::string(kStreamAlgorithmUri);
  if (tag.chunk_size_bytes == 0) tag.chunk_size_bytes = 1 << 20;
  if (tag.created.empty()) tag.created = "2026-01-01T00:00:00Z";
  DiskSpec disk{"file1", "disk1.img", 4096, 4096, std::string(kRawFormatUri)};
  ASSIGN_OR_RETURN(Descriptor d, Descriptor::Parse(GenerateDescriptor({}, {disk})));
  RETURN_IF_ERROR(d.AddEncryption(tag, key, {{"file1", "disk1.img.vmseal", 4200}}));
  if (!release_policy.empty()) RETURN_IF_ERROR(d.AddReleasePolicy(release_policy));
  SignedPackageTexts out;
  out.descriptor_name = kDescriptorName;
  out.descriptor = d.Serialize();
  const crypto::Sha256Digest digest = crypto::Sha256(out.descriptor);
  out.manifest = FormatManifest(
      {{DigestAlgorithm::kSha256, kDescriptorName, std::vector<uint8_t>(digest.begin(), digest.end())},
       {DigestAlgorithm::kSha256, "disk1.img.vmseal", std::vector<uint8_t>(32, 0x5a)}});
  if (signer != nullptr) {
    ASSIGN_OR_RETURN(out.certificate, SignManifest("pkg.mf", out.manifest, *signer, chain_pem));
  }
  return out;
}

}  // namespace vmseal::ovf::testing

#endif  // VMSEAL_OVF_TESTING_SIGNED_TEXTS_H_
