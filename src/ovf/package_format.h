// Constants of the sealed OVF package format. Every value here is specified
// in docs/format/package.md; the section is cited beside each group.
#ifndef VMSEAL_OVF_PACKAGE_FORMAT_H_
#define VMSEAL_OVF_PACKAGE_FORMAT_H_

#include <cstdint>
#include <string_view>

#include "stream/stream_format.h"

namespace vmseal::ovf {

// §2 Namespaces.
inline constexpr std::string_view kOvf1Namespace = "http://schemas.dmtf.org/ovf/envelope/1";
inline constexpr std::string_view kOvf2Namespace = "http://schemas.dmtf.org/ovf/envelope/2";
inline constexpr std::string_view kRasdNamespace =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData";
inline constexpr std::string_view kVssdNamespace =
    "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData";
inline constexpr std::string_view kXencNamespace = "http://www.w3.org/2001/04/xmlenc#";
inline constexpr std::string_view kXenc11Namespace = "http://www.w3.org/2009/xmlenc11#";
inline constexpr std::string_view kDsNamespace = "http://www.w3.org/2000/09/xmldsig#";
inline constexpr std::string_view kVmsealNamespace = "https://vmseal.dev/ns/package/v1";

// §2.4 The platform a VirtualSystem asks for: <vmseal:Platform> in its
// VirtualHardwareSection, attributes (no namespace) firmware="bios"|"efi",
// secureBoot="true"|"false", tpm="none"|"2.0".
inline constexpr std::string_view kPlatformElement = "Platform";
inline constexpr std::string_view kVmwareNamespace = "http://www.vmware.com/schema/ovf";
inline constexpr std::string_view kVirtualBoxNamespace = "http://www.virtualbox.org/ovf/machine";

// §3 Algorithms. The stream URI is defined by docs/format/stream.md.
inline constexpr std::string_view kStreamAlgorithmUri = stream::kAlgorithmUri;
inline constexpr std::string_view kAes256GcmUri = "http://www.w3.org/2009/xmlenc11#aes256-gcm";
inline constexpr std::string_view kRsaOaepUri = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
inline constexpr std::string_view kRsaOaepMgf1pUri =
    "http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p";
// The X25519 key wrap of docs/format/key-wrap.md "X25519" with the §5 label
// as its associated data (standard profile, X25519 recipients only).
inline constexpr std::string_view kX25519WrapUri =
    "https://vmseal.dev/ns/wrap/x25519-hkdf-sha256-aes256gcm-v1";
inline constexpr std::string_view kSha256Uri = "http://www.w3.org/2001/04/xmlenc#sha256";
inline constexpr std::string_view kSha1Uri = "http://www.w3.org/2000/09/xmldsig#sha1";
inline constexpr std::string_view kMgf1Sha256Uri = "http://www.w3.org/2009/xmlenc11#mgf1sha256";
inline constexpr std::string_view kEncryptedKeyType =
    "http://www.w3.org/2001/04/xmlenc#EncryptedKey";

// §4 The encryption tag.
inline constexpr std::string_view kTagFormat = "vmseal-package";
inline constexpr uint32_t kTagVersion = 1;
inline constexpr std::string_view kEncryptedKeyId = "vmseal-key";
inline constexpr std::string_view kEncryptedDataIdPrefix = "vmseal-data-";
inline constexpr std::string_view kTagPropertyId = "vmseal-tag";

// §4.1 The release policy: a second EncryptionProperty of the EncryptedKey
// holding <vmseal:ReleasePolicy> with the policy JSON as its text.
inline constexpr std::string_view kPolicyPropertyId = "vmseal-policy";
inline constexpr size_t kMaxReleasePolicyBytes = 16 * 1024;

// §5 The label prefix (followed by length-prefixed fields).
inline constexpr std::string_view kOaepLabelPrefix = "vmseal-package-key-v1";

// §4.2 The customer's escrow copy of the data key (optional): a second
// EncryptedKey with this Id, wrapped under the escrow label.
inline constexpr std::string_view kEscrowKeyId = "vmseal-escrow-key";
inline constexpr std::string_view kEscrowLabelPrefix = "vmseal-escrow-key-v1";

// §6 File naming: a sealed file's href is the plaintext href plus this.
inline constexpr std::string_view kSealedSuffix = ".vmseal";

// §7 Disk format URIs recorded in DiskSection.
inline constexpr std::string_view kRawFormatUri = "https://vmseal.dev/ns/disk-format/raw";
inline constexpr std::string_view kQcow2FormatUri =
    "http://www.gnome.org/~markmc/qcow-image-format.html";

// §9 Limits.
inline constexpr uint64_t kMaxDescriptorBytes = 4u << 20;     // 4 MiB
inline constexpr uint64_t kMaxManifestBytes = 1u << 20;       // 1 MiB
inline constexpr uint64_t kMaxCertBytes = 1u << 20;           // 1 MiB
inline constexpr size_t kMaxFiles = 64;                       // files in References
inline constexpr size_t kMaxTarMembers = 256;                 // members in an OVA
inline constexpr size_t kMaxNameBytes = 240;                  // file names, UTF-8 bytes (longer than 100: pax path)
inline constexpr size_t kMaxIdentityBytes = 128;              // image id, tenant
inline constexpr size_t kMaxWrappedKeyBytes = 1024;           // RSA up to 8192 bits
// AES-GCM with a 96-bit IV: at most 2^32 - 2 blocks of plaintext (SP 800-38D).
inline constexpr uint64_t kMaxGcmMessageBytes = ((uint64_t{1} << 32) - 2) * 16;
inline constexpr size_t kGcmIvBytes = 12;
inline constexpr size_t kGcmTagBytes = 16;

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_PACKAGE_FORMAT_H_
