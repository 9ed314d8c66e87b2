// The OVF descriptor: safe parsing of untrusted XML, generation of a minimal
// OVF 2 VirtualSystem, the 1.x -> 2.x upgrade, and the EncryptionSection
// (docs/format/package.md §2-§7).
#ifndef VMSEAL_OVF_DESCRIPTOR_H_
#define VMSEAL_OVF_DESCRIPTOR_H_

#include <libxml/tree.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace vmseal::ovf {

// The encryption tag (§4), carried in xenc:EncryptionProperties.
struct EncryptionTag {
  std::string format;               // "vmseal-package"
  uint32_t version = 0;             // 1
  std::string key_wrap_algorithm;   // kRsaOaepUri, kX25519WrapUri or kRsaOaepMgf1pUri
  std::string data_algorithm;       // kStreamAlgorithmUri or kAes256GcmUri
  uint32_t chunk_size_bytes = 0;    // stream chunk size; 0 for AES-GCM
  std::string key_id;               // "sha256:<hex of the recipient SPKI digest>"
  std::string image_id;             // §5 identity
  std::string tenant;
  uint64_t key_version = 1;
  std::string created;              // RFC 3339 UTC, e.g. 2026-11-27T03:00:00Z
  // Optional `streamTenant` (§6): the tenant of the disk streams' context
  // when it is not `tenant` (a package moved to another cloud keeps its
  // ciphertext, sealed under the source tenant). Empty: `tenant`.
  std::string stream_tenant;
  // Optional `streamKeyVersion` (§4, §6): the key version of the disk
  // streams' context when it is not `keyVersion` (a package re-wrapped to a
  // newer key version keeps its ciphertext). 0: `keyVersion`.
  uint64_t stream_key_version = 0;
};

// The wrapped data key and how it was wrapped (the EncryptedKey).
struct WrappedKey {
  std::string algorithm;            // EncryptionMethod Algorithm
  // The §5 label: OAEPparams as stored (RSA-OAEP), or recomputed from the
  // tag for kX25519WrapUri, which stores none and uses it as associated data.
  std::vector<uint8_t> oaep_label;
  std::vector<uint8_t> ciphertext;  // CipherValue
};

// One ovf:File of References.
struct FileRef {
  std::string id;
  std::string href;
  std::optional<uint64_t> size;
  bool compressed = false;          // ovf:compression other than "identity"
  bool chunked = false;             // ovf:chunkSize present
  std::string compression;          // ovf:compression ("" for none or "identity")
  uint64_t chunk_size = 0;          // ovf:chunkSize (0 = not chunked)
  std::string encryption_algorithm; // EncryptedData Algorithm; empty = plain
  // ovf:format of the first DiskSection Disk whose ovf:fileRef names this
  // file; empty when no Disk names it or the Disk has no format.
  std::string disk_format_uri;
};

// What the seal step records for one file.
struct SealedFileInfo {
  std::string id;
  std::string sealed_href;
  uint64_t sealed_size = 0;
  // Set when seal converted the disk (§2.3): the Disk that names this file
  // gets this ovf:format and ovf:capacity (bytes), and loses
  // ovf:populatedSize and ovf:capacityAllocationUnits.
  std::string converted_format_uri;
  uint64_t converted_capacity = 0;
};

// What the unseal step records for one file.
struct PlainFileInfo {
  std::string id;
  std::string href;
  uint64_t size = 0;
};

// What a VirtualSystem asks of the host's platform (§2.4): firmware,
// Secure Boot and a TPM. The defaults are a BIOS machine without a TPM.
struct PlatformRequest {
  bool efi = false;
  // Requires efi.
  bool secure_boot = false;
  // A TPM 2.0 for the guest (a per-VM vTPM on the host).
  bool tpm = false;

  bool operator==(const PlatformRequest&) const = default;
};

// Checks an identity field (image id, tenant): 1..128 bytes of
// [A-Za-z0-9._:@-].
Status ValidateIdentity(std::string_view what, std::string_view value);

// The label (§5) binding a wrapped key to the tag's identity: the RSA-OAEP
// label, or the associated data of the X25519 wrap.
std::vector<uint8_t> OaepLabel(const EncryptionTag& tag);

// §4.2: the customer's escrow copy of the data key, a second EncryptedKey
// (Id "vmseal-escrow-key") that only the customer's own escrow key opens.
struct EscrowKey {
  std::string algorithm;             // kRsaOaepUri or kX25519WrapUri
  std::string key_id;                // "sha256:<hex SPKI digest>" of the escrow key
  std::vector<uint8_t> label;        // EscrowLabel(tag)
  std::vector<uint8_t> ciphertext;   // CipherValue
};

// The escrow label (§4.2): bound to the streams' identity (imageId, the
// stream tenant and key version, dataAlgorithm), which a re-wrap or a move
// to another cloud keeps, so the escrow copy stays valid after either.
std::vector<uint8_t> EscrowLabel(const EncryptionTag& tag);

// A parsed descriptor. Move-only; owns its libxml2 document.
class Descriptor {
 public:
  // Parses untrusted bytes: at most kMaxDescriptorBytes, no DOCTYPE (so no
  // DTD, no entities), no network, root Envelope in the OVF 1.x or 2.x
  // namespace, at most kMaxFiles files with valid names and unique ids.
  static StatusOr<Descriptor> Parse(std::string_view xml);

  Descriptor(Descriptor&&) noexcept;
  Descriptor& operator=(Descriptor&&) noexcept;
  ~Descriptor();

  // 1 or 2 (the namespace of the Envelope).
  int major_version() const;
  // Moves every element and attribute from the 1.x to the 2.x namespace,
  // then CarryExtensions.
  Status UpgradeToOvf2(std::vector<std::string>* notes = nullptr);
  // Foreign elements directly in the Envelope or a VirtualSystem(Collection),
  // which OVF 2 does not allow there, move into their VirtualSystem's
  // VirtualHardwareSection with ovf:required="false" (dropped when there is
  // none). A required one is UNIMPLEMENTED "required extension element
  // prefix:Name ..." unless it is a known advisory vendor section (VMware's
  // BootOrderSection, IpAssignmentSection). One note per element kept or
  // dropped is appended to `notes`.
  Status CarryExtensions(std::vector<std::string>* notes = nullptr);

  // The platform the first VirtualSystem asks for, from every place an
  // exporter writes it (§2.4): vbox:Machine's Hardware/Firmware and
  // TrustedPlatformModule, VMware's vmw:Config firmware and
  // bootOptions.efiSecureBootEnabled / uefi.secureBoot.enabled, a VMware
  // vTPM Item (ResourceSubType vmware.vtpm), and vmseal:Platform. Reads the
  // VirtualHardwareSection after CarryExtensions (OVF 2 only). One line per
  // setting found, naming its element, is appended to `sources`. Two places
  // that disagree, an unknown value, or Secure Boot without EFI is
  // INVALID_ARGUMENT naming the elements; 32-bit EFI or a TPM 1.2 is
  // UNIMPLEMENTED.
  StatusOr<PlatformRequest> ReadPlatform(std::vector<std::string>* sources = nullptr) const;

  // Replaces the first VirtualSystem's vmseal:Platform (§2.4) by one for
  // `platform`, the last element of its VirtualHardwareSection with
  // ovf:required="false"; for the default platform (BIOS, no TPM) removes
  // it. FAILED_PRECONDITION without a VirtualSystem and VirtualHardwareSection.
  Status SetPlatform(const PlatformRequest& platform);

  // The files of References, in order.
  std::vector<FileRef> Files() const;
  bool HasEncryptionSection() const;

  // Adds the EncryptionSection after References and an EncryptedData to each
  // file, and sets each file's href and size to the sealed ones. A sealed
  // file is one plain file: ovf:compression and ovf:chunkSize are removed. Requires an
  // OVF 2 descriptor without an EncryptionSection; every file must be listed.
  Status AddEncryption(const EncryptionTag& tag, const WrappedKey& key,
                       const std::vector<SealedFileInfo>& files);

  // Replaces the EncryptedKey's wrapped key, KeyName, OAEPparams (RSA) and
  // the tag's keyId, tenant, keyVersion, streamTenant and streamKeyVersion
  // by those of `tag` and `key` (a package re-wrapped for another cloud or
  // to a newer key version; the files are unchanged).
  // Requires a valid EncryptionSection with the same algorithms.
  Status ReplaceEncryptedKey(const EncryptionTag& tag, const WrappedKey& key);

  // Reads and validates the EncryptionSection (unknown algorithms, a file
  // without EncryptedData, references that do not match: INVALID_ARGUMENT).
  // The section holds the package's EncryptedKey first and at most one
  // escrow EncryptedKey after it (§4.2; read with ReadEscrowKey).
  Status ReadEncryption(EncryptionTag* tag, WrappedKey* key) const;

  // Adds the escrow EncryptedKey (§4.2) after the package's; requires
  // AddEncryption first and no escrow key yet. The caller wrapped the key
  // under EscrowLabel(tag).
  Status AddEscrowKey(const EscrowKey& key);
  // The escrow EncryptedKey, validated (algorithm, no OAEPparams other than
  // the label recomputed from `tag`, KeyName, size), or nullopt if none.
  StatusOr<std::optional<EscrowKey>> ReadEscrowKey(const EncryptionTag& tag) const;

  // Adds the customer's release policy (§4.1) to the EncryptionSection: an
  // EncryptionProperty "vmseal-policy" holding <vmseal:ReleasePolicy> with
  // `policy_json` as its text. The caller validated the policy (the KMS
  // evaluates it); here only its size (1..kMaxReleasePolicyBytes) and that
  // there is no policy yet are checked. Requires AddEncryption first.
  Status AddReleasePolicy(std::string_view policy_json);

  // The release policy text of §4.1, or nullopt when the descriptor carries
  // none. INVALID_ARGUMENT for more than one, an empty or oversized one.
  StatusOr<std::optional<std::string>> ReadReleasePolicy() const;

  // Removes the EncryptionSection and every EncryptedData, and restores the
  // files' hrefs and sizes.
  Status RemoveEncryption(const std::vector<PlainFileInfo>& files);

  // The document as UTF-8 XML, indented.
  std::string Serialize() const;

 private:
  explicit Descriptor(xmlDoc* doc) : doc_(doc) {}
  xmlDoc* doc_;
};

// Hardware and identity for a generated VirtualSystem.
struct VirtualSystemSpec {
  std::string name = "vm";   // VirtualSystem ovf:id and Name
  uint32_t cpus = 2;
  uint64_t memory_mib = 2048;
  // Firmware, Secure Boot and TPM (§2.4); written as vmseal:Platform.
  PlatformRequest platform;
};

// One disk of a generated VirtualSystem.
struct DiskSpec {
  std::string file_id;       // "file1", ...
  std::string href;          // plaintext file name
  uint64_t file_size = 0;    // bytes of the file
  uint64_t capacity = 0;     // virtual disk size in bytes
  std::string format_uri;    // kRawFormatUri or kQcow2FormatUri
};

// A complete minimal OVF 2 descriptor (plain, no EncryptionSection) for the
// given disks: CPUs, memory, one disk controller, the disks and one NIC.
std::string GenerateDescriptor(const VirtualSystemSpec& vm, const std::vector<DiskSpec>& disks);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_DESCRIPTOR_H_
