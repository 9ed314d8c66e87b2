// Sealed OVF packages (docs/format/package.md): sealing an image or an
// existing OVF/OVA, and reading a package, which is the library the host
// agent uses to stream-decrypt a disk straight out of an OVA.
#ifndef VMSEAL_OVF_PACKAGE_H_
#define VMSEAL_OVF_PACKAGE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "ovf/descriptor.h"
#include "ovf/signature.h"
#include "stream/stream.h"

namespace vmseal::ovf {

struct PackageOpenOptions {
  // FAILED_PRECONDITION "package is not encrypted" when the descriptor has no
  // EncryptionSection. Default: true.
  bool require_encrypted = true;
  // INVALID_ARGUMENT when the package has no manifest. Default: true.
  bool require_manifest = true;
  // Digests every file against the manifest during Open (reads each file
  // once). When false the caller may call VerifyManifest later. Default: true.
  bool verify_manifest = true;
  // FAILED_PRECONDITION "unsigned_package: ..." when the package has no
  // signature (.cert). A .cert that is present is always checked: its
  // signature must verify over the manifest (UNAUTHENTICATED
  // "bad_signature: ..."). Who signed is the caller's question
  // (ovf::VerifySigner). Default: false.
  bool require_signature = false;
  // Files in subfolders of a plain package (hrefs such as "disks/a.vmdk",
  // §2.3): folders are walked (never through a link) and OVA folder members
  // skipped. A sealed package is always flat. Default: false (what seal
  // reads sets it).
  bool allow_subfolders = false;
  // A descriptor in oVirt's dialect (§2.6, ovf/ovirt_dialect.h) is mapped to
  // OVF 2.0 for reading (descriptor_to_seal()); refused otherwise, like any
  // root that is not an OVF Envelope. Default: false (what seal reads sets
  // it).
  bool import_ovirt_dialect = false;
};

// A package opened for reading: an OVA file, a directory holding one .ovf
// (the directory is the package), or the path of an .ovf file (the package
// is the files it references; the directory's other files are ignored). Files are read in place (an OVA member is a
// slice of the archive). Thread-safe after Open.
class Package {
 public:
  // Checks the structure (§8, §10): names, no links or devices, no duplicate,
  // missing or extra file, the descriptor bound and parser rules, sizes,
  // the manifest (per options) and, if present, the EncryptionSection.
  static StatusOr<std::unique_ptr<Package>> Open(Env* env, const std::string& path,
                                                 const PackageOpenOptions& options);
  ~Package();

  bool is_ova() const { return archive_ != nullptr; }
  // The package's directory ("" for an OVA).
  const std::string& directory() const { return dir_; }
  const std::string& descriptor_name() const { return descriptor_name_; }
  // The descriptor exactly as stored.
  const std::string& descriptor_text() const { return descriptor_text_; }
  // The descriptor seal starts from: descriptor_text(), or its OVF 2.0
  // mapping when it was in oVirt's dialect (PackageOpenOptions).
  const std::string& descriptor_to_seal() const {
    return imported_text_.empty() ? descriptor_text_ : imported_text_;
  }
  // What mapping oVirt's dialect dropped or changed, one line each.
  const std::vector<std::string>& import_notes() const { return import_notes_; }
  const std::vector<FileRef>& files() const { return files_; }
  bool has_manifest() const { return !manifest_text_.empty(); }
  // The manifest exactly as stored ("" without one).
  const std::string& manifest_text() const { return manifest_text_; }
  // Whether the package carries a signature (.cert), verified over the
  // manifest during Open; then signature() is valid.
  bool is_signed() const { return signature_.has_value(); }
  const PackageSignature& signature() const { return *signature_; }
  // The .cert exactly as stored ("" when unsigned): what a release request
  // carries to the KMS (docs/protocol.md §5).
  const std::string& certificate_text() const { return certificate_text_; }
  // Whether the descriptor has an EncryptionSection (then tag() and
  // wrapped_key() are valid).
  bool encrypted() const { return encrypted_; }
  const EncryptionTag& tag() const { return tag_; }
  const WrappedKey& wrapped_key() const { return wrapped_key_; }

  // Digests every file and the descriptor against the manifest. DATA_LOSS
  // "manifest mismatch for NAME" on a difference.
  Status VerifyManifest() const;

  // The stored bytes of the file with ovf:id `file_id`; valid while the
  // package lives.
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenStoredFile(const std::string& file_id) const;

  // Customer side: unwraps the data key with the recipient's PEM private key
  // (RSA-OAEP or X25519, as the package's key wrap says).
  // FAILED_PRECONDITION if the key's id is not the tag's keyId or its type
  // does not fit the key wrap; DATA_LOSS "decryption failed" if the unwrap
  // fails (wrong key or changed identity).
  StatusOr<SecretBytes> UnwrapDataKey(std::string_view private_key_pem) const;
  // The escrow copy (§4.2), if the package carries one.
  const std::optional<EscrowKey>& escrow_key() const { return escrow_key_; }
  // Customer side, offline: unwraps the escrow copy with the customer's
  // escrow private key. FAILED_PRECONDITION "no_escrow_key" if the package
  // has none, or if the key is not the escrow recipient; DATA_LOSS
  // "decryption failed" otherwise.
  StatusOr<SecretBytes> UnwrapEscrowDataKey(std::string_view private_key_pem) const;

  // The stream context of a file (§6): image id "<imageId>/<file id>".
  stream::StreamContext ContextFor(const std::string& file_id) const;

  // Decrypts one file into `out` (appending). On error `out` holds garbage:
  // publish it atomically.
  Status DecryptFile(const std::string& file_id, const SecretBytes& data_key,
                     WritableFile* out) const;

  // Random access to one decrypted disk (stream format only). The reader
  // keeps what it needs alive but must not outlive the package.
  StatusOr<std::unique_ptr<stream::StreamReader>> NewDiskReader(
      const std::string& file_id, const SecretBytes& data_key) const;

 private:
  Package() = default;
  Status Load(Env* env, const std::string& path, const PackageOpenOptions& options);
  const FileRef* FindFile(const std::string& file_id) const;
  // One stored file (an OVA member or a plain file of the directory) by name.
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenStoredName(const std::string& name) const;

  std::string dir_;                               // directory packages
  std::unique_ptr<RandomAccessFile> archive_file_;
  std::unique_ptr<class TarReader> archive_;      // OVA packages
  std::string descriptor_name_;
  std::string descriptor_text_;
  std::string imported_text_;  // "" unless mapped from oVirt's dialect
  std::vector<std::string> import_notes_;
  std::string manifest_text_;
  std::optional<PackageSignature> signature_;
  std::string certificate_text_;
  std::vector<FileRef> files_;
  // The stored names of each file (by id): its href, or its chunks.
  std::map<std::string, std::vector<std::string>> parts_;
  bool encrypted_ = false;
  EncryptionTag tag_;
  WrappedKey wrapped_key_;
  std::optional<EscrowKey> escrow_key_;
  Env* env_ = nullptr;
};

struct SealOptions {
  // One or more disk images, or exactly one OVF/OVA package (an .ova file,
  // an .ovf file or a directory holding one). Raw and qcow2 disks are sealed
  // as they are; VMDK, VHD and VHDX disks are first converted to qcow2 with
  // qemu-img (§2.3); gzip-compressed and chunked package files are sealed as
  // their plain bytes (§2.3).
  std::vector<std::string> inputs;
  // The recipient: PEM certificate or PEM public key, RSA-2048, RSA-3072
  // or X25519. The key type picks the key wrap (§3): rsa-oaep or the
  // X25519 wrap.
  std::string recipient_pem;
  // Identity bound into the key wrap; empty image_id = a random UUID.
  std::string image_id;
  std::string tenant = "default";
  uint64_t key_version = 1;
  // Hardware of a generated VirtualSystem (image inputs only).
  VirtualSystemSpec vm;
  // true: one OVA file at the output path; false: a directory.
  bool ova = true;
  // One standard AES-256-GCM message per file, key wrapped with
  // rsa-oaep-mgf1p (§3.2); RSA recipients only. Default: the stream format.
  bool xmlenc_compat = false;
  // Stream chunk size (0 = the stream format's default).
  uint32_t chunk_size_bytes = 0;
  // Convert VMDK, VHD and VHDX disks to qcow2 (§2.3). false: seal every
  // disk as it is (an archive the host will not boot: it runs raw and qcow2
  // only).
  bool convert_disks = true;
  // A converted disk whose qcow2 needs at most this many bytes is converted
  // into memory (a memfd) rather than a temporary file, so seal writes the
  // data once (ovf/disk_conversion.h ConvertToQcow2InMemory). -1 (default):
  // a quarter of the available memory, at most 8 GiB; 0: always a file.
  int64_t conversion_memory_bytes = -1;
  // When set, seal appends one line per thing the user should know: each
  // disk converted, each vendor extension kept as non-required or dropped
  // (§2.2, §2.3). Not owned.
  std::vector<std::string>* notes = nullptr;
  // Tag creation time (RFC 3339); empty = now. Tests inject it.
  std::string created;
  // When set, the package is signed (§8.1): a <stem>.cert with a SHA-256
  // signature over the manifest by this key (P-256 or RSA) and
  // `signing_chain_pem` (the key's certificate first). Not owned.
  const crypto::PrivateKey* signing_key = nullptr;
  std::string signing_chain_pem;
  // The customer's release policy for the image, JSON text written into the
  // descriptor (§4.1) and so covered by the package signature; empty = none
  // (the KMS operator's policy applies). The caller validates it.
  std::string release_policy_json;
  // Optional customer-held escrow (§4.2): a PEM certificate or public key
  // (RSA 2048/3072 or X25519) of the customer's own; the data key is also
  // wrapped to it, in a second EncryptedKey covered by the signature, so
  // that `vmseal unseal --escrow-key` opens the package offline. Empty
  // (default): no escrow copy.
  std::string escrow_pem;
};

// Seals `options.inputs` into a package at `out_path`, which must not exist.
// The data key is random, lives only in memory and is wrapped to the
// recipient. Nothing appears at `out_path` unless everything succeeded.
Status SealPackage(Env* env, const SealOptions& options, const std::string& out_path);

// Verifies and decrypts the package at `package_path` into a plain OVF
// package directory `out_dir` (which must not exist): descriptor without the
// EncryptionSection, decrypted files, a recomputed manifest.
// Writes `source` as an OVA at `out_path` with its EncryptedKey and tag
// replaced (Descriptor::ReplaceEncryptedKey: `tag`, `wrapped_key`), every
// file's stored bytes unchanged, a new manifest, signed with `signing_key`
// (a package moved to another cloud, docs/protocol.md §7).
Status RewrapPackage(Env* env, const Package& source, const EncryptionTag& tag,
                     const crypto::Bytes& wrapped_key, const crypto::PrivateKey& signing_key,
                     const std::string& signing_chain_pem, const std::string& out_path);

Status UnsealPackage(Env* env, const std::string& package_path,
                     std::string_view private_key_pem, const std::string& out_dir);
// The same with the customer's escrow private key (§4.2), offline.
Status UnsealPackageWithEscrowKey(Env* env, const std::string& package_path,
                                  std::string_view escrow_private_key_pem, const std::string& out_dir);

// A human-readable (or JSON) description of the package and its tag; needs
// no key. Verifies the manifest.
StatusOr<std::string> InspectPackage(Env* env, const std::string& package_path, bool json);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_PACKAGE_H_
