#include "ovf/package.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "json/json.h"
#include "ovf/disk_conversion.h"
#include "ovf/internal/disk_cipher.h"
#include "ovf/internal/file_coding.h"
#include "ovf/internal/key_wrap.h"
#include "ovf/manifest.h"
#include "ovf/ovirt_dialect.h"
#include "ovf/package_format.h"
#include "ovf/tar.h"

namespace vmseal::ovf {
namespace {

namespace fs = std::filesystem;

std::string BaseName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string Stem(const std::string& name) {
  size_t dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
}

StatusOr<std::string> ReadAll(const RandomAccessFile& file, uint64_t limit, const char* what) {
  ASSIGN_OR_RETURN(uint64_t size, file.Size());
  if (size > limit) {
    return InvalidArgumentError(std::string(what) + " larger than " + std::to_string(limit) +
                                " bytes");
  }
  std::string out(size, '\0');
  ASSIGN_OR_RETURN(size_t n, file.Read(0, std::span<uint8_t>(
                                             reinterpret_cast<uint8_t*>(out.data()), size)));
  if (n != size) return DataLossError(std::string(what) + " shorter than its size");
  return out;
}

std::string NowRfc3339() {
  std::time_t t = std::time(nullptr);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string RandomUuid() {
  crypto::Bytes b = crypto::RandomBytes(16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  std::string h = crypto::HexEncode(b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

// A directory that only appears at `path` once Commit() succeeds; removed
// with its content otherwise.
class AtomicOutputDir {
 public:
  static StatusOr<std::unique_ptr<AtomicOutputDir>> Create(const std::string& path) {
    std::error_code ec;
    if (fs::exists(path, ec)) return AlreadyExistsError("output exists: " + path);
    std::string tmpl = path + ".tmp-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) return ErrnoToStatus(errno, "create directory", path);
    return std::unique_ptr<AtomicOutputDir>(new AtomicOutputDir(path, tmpl));
  }
  ~AtomicOutputDir() {
    if (!committed_) {
      std::error_code ec;
      fs::remove_all(temp_, ec);
    }
  }
  std::string File(const std::string& name) const { return temp_ + "/" + name; }
  Status Commit(Env* env) {
    if (chmod(temp_.c_str(), 0755) != 0) return ErrnoToStatus(errno, "chmod", temp_);
    RETURN_IF_ERROR(env->SyncDir(temp_));
    if (std::rename(temp_.c_str(), path_.c_str()) != 0) {
      return ErrnoToStatus(errno, "rename", path_);
    }
    committed_ = true;
    return env->SyncDir(DirName(path_));
  }

 private:
  AtomicOutputDir(std::string path, std::string temp) : path_(std::move(path)), temp_(std::move(temp)) {}
  const std::string path_;
  const std::string temp_;
  bool committed_ = false;
};

// Keeps the stored file alive for as long as the reader.
class OwningStreamReader : public stream::StreamReader {
 public:
  OwningStreamReader(std::unique_ptr<RandomAccessFile> file,
                     std::unique_ptr<stream::StreamReader> reader)
      : file_(std::move(file)), reader_(std::move(reader)) {}
  uint64_t plaintext_size() const override { return reader_->plaintext_size(); }
  StatusOr<size_t> ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    return reader_->ReadAt(offset, out);
  }

 private:
  std::unique_ptr<RandomAccessFile> file_;
  std::unique_ptr<stream::StreamReader> reader_;
};

}  // namespace

Package::~Package() = default;

StatusOr<std::unique_ptr<Package>> Package::Open(Env* env, const std::string& path,
                                                 const PackageOpenOptions& options) {
  std::unique_ptr<Package> p(new Package());
  RETURN_IF_ERROR(p->Load(env, path, options));
  return p;
}

Status Package::Load(Env* env, const std::string& path, const PackageOpenOptions& options) {
  env_ = env;
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "open package", path);
  std::vector<std::string> present;  // every name in the package
  // An .ovf named explicitly is the package with exactly the files it names
  // (§2.3): the other files of its directory (a Vagrantfile beside a box's
  // descriptor) are not part of it. A directory is the package as a whole.
  const bool explicit_descriptor = !S_ISDIR(st.st_mode) && path.ends_with(".ovf");
  std::set<std::string> unusable;  // explicit descriptor: names that are not plain files
  if (S_ISDIR(st.st_mode) || path.ends_with(".ovf")) {
    dir_ = S_ISDIR(st.st_mode) ? path : DirName(path);
    std::error_code ec;
    auto walk = fs::recursive_directory_iterator(dir_, ec);
    for (auto it = fs::begin(walk); !ec && it != fs::end(walk); it.increment(ec)) {
      const fs::directory_entry& entry = *it;
      std::string name = entry.path().lexically_relative(dir_).string();
      if (!options.allow_subfolders || entry.is_symlink(ec) || !entry.is_directory(ec)) {
        it.disable_recursion_pending();
      } else {
        // A folder of the package: its files are listed under "name/".
        if (Status valid = ValidatePackagePath(name); !valid.ok() ||
            it.depth() + 1 >= static_cast<int>(kMaxPathComponents)) {
          it.disable_recursion_pending();
          if (explicit_descriptor) {
            unusable.insert(name);
            continue;
          }
          return (valid.ok() ? InvalidArgumentError("folder deeper than " +
                                                    std::to_string(kMaxPathComponents) +
                                                    " levels: " + name)
                             : valid)
              .WithPrefix("package directory " + dir_);
        }
        continue;
      }
      if (entry.is_symlink(ec) || !entry.is_regular_file(ec)) {
        if (explicit_descriptor) {
          unusable.insert(name);
          continue;
        }
        return InvalidArgumentError("package directory " + dir_ + " holds a non-regular file: " +
                                    name + " (name the .ovf to seal only the files it references)");
      }
      if (Status valid = options.allow_subfolders ? ValidatePackagePath(name)
                                                  : ValidateFileName(name);
          !valid.ok()) {
        if (explicit_descriptor) {
          unusable.insert(name);
          continue;
        }
        return valid.WithPrefix("package directory " + dir_);
      }
      if (present.size() >= (explicit_descriptor ? 4 * kMaxTarMembers : kMaxTarMembers)) {
        return InvalidArgumentError("too many files in " + dir_);
      }
      present.push_back(name);
    }
    if (ec) return ErrnoToStatus(ec.value(), "list", dir_);
    if (S_ISDIR(st.st_mode)) {
      std::vector<std::string> descriptors;
      for (const std::string& n : present) {
        if (n.ends_with(".ovf")) descriptors.push_back(n);
      }
      if (descriptors.size() > 1) {
        std::sort(descriptors.begin(), descriptors.end());
        std::string names;
        for (size_t i = 0; i < descriptors.size() && i < 4; ++i) {
          names += (i ? ", " : "") + descriptors[i];
        }
        return InvalidArgumentError("package directory " + dir_ + " holds more than one .ovf (" +
                                    names + "; name the .ovf to seal)");
      }
      if (!descriptors.empty()) descriptor_name_ = descriptors[0];
      if (descriptor_name_.empty()) return InvalidArgumentError("no .ovf descriptor in " + path);
    } else {
      descriptor_name_ = BaseName(path);
    }
    ASSIGN_OR_RETURN(auto f, env->NewRandomAccessFile(dir_ + "/" + descriptor_name_));
    ASSIGN_OR_RETURN(descriptor_text_, ReadAll(*f, kMaxDescriptorBytes, "descriptor"));
  } else {
    ASSIGN_OR_RETURN(archive_file_, env->NewRandomAccessFile(path));
    ASSIGN_OR_RETURN(archive_, TarReader::Open(archive_file_.get(), options.allow_subfolders));
    const auto& members = archive_->members();
    if (members.empty() || !members[0].name.ends_with(".ovf")) {
      return InvalidArgumentError("the OVA's first member is not an .ovf descriptor");
    }
    descriptor_name_ = members[0].name;
    for (const TarMember& m : members) present.push_back(m.name);
    auto f = archive_->NewMemberFile(members[0]);
    ASSIGN_OR_RETURN(descriptor_text_, ReadAll(*f, kMaxDescriptorBytes, "descriptor"));
  }
  if (options.import_ovirt_dialect && IsOvirtDescriptor(descriptor_text_)) {
    ASSIGN_OR_RETURN(imported_text_, ConvertOvirtDescriptor(descriptor_text_, &import_notes_));
  }
  ASSIGN_OR_RETURN(Descriptor d, Descriptor::Parse(descriptor_to_seal()));
  files_ = d.Files();

  // Exactly the descriptor, its manifest and certificate, and References
  // (a chunked file as its chunks, §2.3).
  const std::string stem = Stem(descriptor_name_);
  const std::string mf_name = stem + ".mf", cert_name = stem + ".cert";
  std::set<std::string> expected = {descriptor_name_};
  std::set<std::string> have(present.begin(), present.end());
  for (const FileRef& f : files_) {
    std::vector<std::string>& parts = parts_[f.id];
    if (f.chunk_size == 0) {
      parts.push_back(f.href);
    } else {
      while (have.count(internal::ChunkName(f.href, parts.size()))) {
        parts.push_back(internal::ChunkName(f.href, parts.size()));
      }
      if (parts.empty()) {
        return InvalidArgumentError("missing file: " + internal::ChunkName(f.href, 0) +
                                    " (the first chunk of " + f.href + ")");
      }
    }
    for (const std::string& n : parts) {
      if (unusable.count(n)) return InvalidArgumentError("not a regular file: " + n);
      if (!have.count(n)) return InvalidArgumentError("missing file: " + n);
      expected.insert(n);
    }
  }
  if (!explicit_descriptor) {
    for (const std::string& n : present) {
      if (!expected.count(n) && n != mf_name && n != cert_name) {
        return InvalidArgumentError(
            "extra file in package: " + n +
            (archive_ ? " (in the OVA " + path + ")"
                      : " (in the package directory " + dir_ +
                            "; name the .ovf to seal only the files it references)"));
      }
    }
  }
  for (const FileRef& f : files_) {
    const std::vector<std::string>& parts = parts_[f.id];
    uint64_t size = 0;
    for (size_t i = 0; i < parts.size(); ++i) {
      ASSIGN_OR_RETURN(auto file, OpenStoredName(parts[i]));
      ASSIGN_OR_RETURN(uint64_t part_size, file->Size());
      if (f.chunk_size != 0 && (part_size > f.chunk_size || part_size == 0 ||
                                (i + 1 < parts.size() && part_size != f.chunk_size))) {
        return InvalidArgumentError("chunk " + parts[i] + " has " + std::to_string(part_size) +
                                    " bytes; ovf:chunkSize is " + std::to_string(f.chunk_size) +
                                    " (only the last chunk may be shorter)");
      }
      size += part_size;
    }
    if (f.size && *f.size != size) {
      return InvalidArgumentError("size of " + f.href + " is " + std::to_string(size) +
                                  " bytes; its ovf:size says " + std::to_string(*f.size));
    }
  }
  if (unusable.count(mf_name) || unusable.count(cert_name)) {
    return InvalidArgumentError("not a regular file: " + mf_name + " or " + cert_name);
  }
  if (have.count(mf_name)) {
    std::unique_ptr<RandomAccessFile> mf;
    if (archive_) {
      mf = archive_->NewMemberFile(*archive_->Find(mf_name));
    } else {
      ASSIGN_OR_RETURN(mf, env->NewRandomAccessFile(dir_ + "/" + mf_name));
    }
    ASSIGN_OR_RETURN(manifest_text_, ReadAll(*mf, kMaxManifestBytes, "manifest"));
    if (manifest_text_.empty()) return InvalidArgumentError("manifest is empty");
  } else if (options.require_manifest) {
    return InvalidArgumentError("package has no manifest (" + mf_name + ")");
  }
  if (has_manifest()) {
    ASSIGN_OR_RETURN(auto entries, ParseManifest(manifest_text_));
    std::set<std::string> listed;
    for (const ManifestEntry& e : entries) {
      if (!expected.count(e.name)) {
        return InvalidArgumentError("manifest lists a file not in the package: " + e.name);
      }
      listed.insert(e.name);
    }
    for (const std::string& n : expected) {
      if (!listed.count(n)) return InvalidArgumentError("manifest does not list " + n);
    }
    if (options.verify_manifest) RETURN_IF_ERROR(VerifyManifest());
  }
  if (have.count(cert_name)) {
    if (!has_manifest()) {
      return InvalidArgumentError("package has a signature (" + cert_name + ") but no manifest");
    }
    std::unique_ptr<RandomAccessFile> cert;
    if (archive_) {
      cert = archive_->NewMemberFile(*archive_->Find(cert_name));
    } else {
      ASSIGN_OR_RETURN(cert, env->NewRandomAccessFile(dir_ + "/" + cert_name));
    }
    ASSIGN_OR_RETURN(std::string cert_text, ReadAll(*cert, kMaxPackageCertBytes, "certificate"));
    ASSIGN_OR_RETURN(PackageSignature sig, ParsePackageCertificate(cert_text));
    RETURN_IF_ERROR(VerifyManifestSignature(sig, mf_name, manifest_text_));
    signature_ = std::move(sig);
    certificate_text_ = std::move(cert_text);
  } else if (options.require_signature) {
    return FailedPreconditionError("unsigned_package: the package has no signature (" +
                                   cert_name + ")");
  }

  if (d.HasEncryptionSection()) {
    RETURN_IF_ERROR(d.ReadEncryption(&tag_, &wrapped_key_));
    ASSIGN_OR_RETURN(escrow_key_, d.ReadEscrowKey(tag_));
    encrypted_ = true;
    for (FileRef& f : files_) {
      RETURN_IF_ERROR(ValidateFileName(f.href).WithPrefix("sealed file href (sealed packages "
                                                          "are flat)"));
      if (f.compressed || f.chunked) {
        return InvalidArgumentError("encrypted file " + f.href + " must not be compressed or chunked");
      }
    }
  } else {
    for (const FileRef& f : files_) {
      if (!f.encryption_algorithm.empty()) {
        return InvalidArgumentError("file " + f.href + " has EncryptedData but the package has "
                                    "no EncryptionSection");
      }
    }
    if (options.require_encrypted) return FailedPreconditionError("package is not encrypted");
  }
  return OkStatus();
}

Status Package::VerifyManifest() const {
  if (!has_manifest()) return InvalidArgumentError("package has no manifest");
  ASSIGN_OR_RETURN(auto entries, ParseManifest(manifest_text_));
  for (const ManifestEntry& e : entries) {
    std::vector<uint8_t> digest;
    if (e.name == descriptor_name_) {
      StreamingDigest d(e.algorithm);
      d.Update(crypto::AsBytes(descriptor_text_));
      digest = d.Finish();
    } else {
      bool known = false;
      for (const auto& [id, parts] : parts_) {
        for (const std::string& n : parts) known = known || n == e.name;
      }
      if (!known) return InvalidArgumentError("manifest lists an unknown file");
      ASSIGN_OR_RETURN(auto file, OpenStoredName(e.name));
      ASSIGN_OR_RETURN(digest, DigestFile(*file, e.algorithm));
    }
    if (digest != e.digest) return DataLossError("manifest mismatch for " + e.name);
  }
  return OkStatus();
}

const FileRef* Package::FindFile(const std::string& file_id) const {
  for (const FileRef& f : files_) {
    if (f.id == file_id) return &f;
  }
  return nullptr;
}

StatusOr<std::unique_ptr<RandomAccessFile>> Package::OpenStoredName(
    const std::string& name) const {
  if (archive_) {
    const TarMember* m = archive_->Find(name);
    if (m == nullptr) return NotFoundError("missing file: " + name);
    return archive_->NewMemberFile(*m);
  }
  // No links: a name in a directory package is a plain file of that
  // directory (Load listed it as one).
  struct stat st;
  const std::string path = dir_ + "/" + name;
  for (size_t slash = name.find('/'); slash != std::string::npos;
       slash = name.find('/', slash + 1)) {
    const std::string folder = dir_ + "/" + name.substr(0, slash);
    if (lstat(folder.c_str(), &st) != 0) return ErrnoToStatus(errno, "open", folder);
    if (!S_ISDIR(st.st_mode)) {
      return InvalidArgumentError("not a folder (links are refused): " + name.substr(0, slash));
    }
  }
  if (lstat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "open", path);
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError("not a regular file: " + name);
  return env_->NewRandomAccessFile(path);
}

StatusOr<std::unique_ptr<RandomAccessFile>> Package::OpenStoredFile(
    const std::string& file_id) const {
  const FileRef* f = FindFile(file_id);
  if (f == nullptr) return NotFoundError("no file with id " + file_id.substr(0, 100));
  auto it = parts_.find(file_id);
  if (it == parts_.end() || it->second.size() == 1) {
    return OpenStoredName(it == parts_.end() ? f->href : it->second[0]);
  }
  std::vector<std::unique_ptr<RandomAccessFile>> parts;
  for (const std::string& n : it->second) {
    ASSIGN_OR_RETURN(auto part, OpenStoredName(n));
    parts.push_back(std::move(part));
  }
  ASSIGN_OR_RETURN(auto joined, internal::ConcatenatedFile::Create(std::move(parts)));
  return std::unique_ptr<RandomAccessFile>(std::move(joined));
}

StatusOr<SecretBytes> Package::UnwrapDataKey(std::string_view private_key_pem) const {
  if (!encrypted_) return FailedPreconditionError("package is not encrypted");
  ASSIGN_OR_RETURN(auto key, internal::LoadPrivateKeyPem(private_key_pem));
  const std::string key_id = internal::KeyId(key.Public());
  if (key_id != tag_.key_id) {
    return FailedPreconditionError("the private key is not the package's recipient (keyId " +
                                   tag_.key_id + ")");
  }
  ASSIGN_OR_RETURN(SecretBytes data_key,
                   internal::UnwrapKey(key, wrapped_key_.algorithm, wrapped_key_.ciphertext,
                                       OaepLabel(tag_)));
  if (data_key.size() != stream::kDataKeyBytes) return DataLossError("decryption failed");
  return data_key;
}

StatusOr<SecretBytes> Package::UnwrapEscrowDataKey(std::string_view private_key_pem) const {
  if (!encrypted_) return FailedPreconditionError("package is not encrypted");
  if (!escrow_key_) return FailedPreconditionError("no_escrow_key: the package carries no escrow copy of its key");
  ASSIGN_OR_RETURN(auto key, internal::LoadPrivateKeyPem(private_key_pem));
  if (internal::KeyId(key.Public()) != escrow_key_->key_id) {
    return FailedPreconditionError("no_escrow_key: the private key is not the package's escrow recipient "
                                   "(keyId " + escrow_key_->key_id + ")");
  }
  ASSIGN_OR_RETURN(SecretBytes data_key, internal::UnwrapKey(key, escrow_key_->algorithm,
                                                             escrow_key_->ciphertext, EscrowLabel(tag_)));
  if (data_key.size() != stream::kDataKeyBytes) return DataLossError("decryption failed");
  return data_key;
}

stream::StreamContext Package::ContextFor(const std::string& file_id) const {
  stream::StreamContext c;
  c.image_id = tag_.image_id + "/" + file_id;
  c.tenant = tag_.stream_tenant.empty() ? tag_.tenant : tag_.stream_tenant;
  c.key_version = tag_.stream_key_version != 0 ? tag_.stream_key_version : tag_.key_version;
  return c;
}

Status Package::DecryptFile(const std::string& file_id, const SecretBytes& data_key,
                            WritableFile* out) const {
  if (!encrypted_) return FailedPreconditionError("package is not encrypted");
  ASSIGN_OR_RETURN(auto cipher, internal::NewDiskCipher(tag_.data_algorithm, tag_.chunk_size_bytes));
  ASSIGN_OR_RETURN(auto in, OpenStoredFile(file_id));
  return cipher->Open(*in, out, data_key, ContextFor(file_id));
}

StatusOr<std::unique_ptr<stream::StreamReader>> Package::NewDiskReader(
    const std::string& file_id, const SecretBytes& data_key) const {
  if (!encrypted_) return FailedPreconditionError("package is not encrypted");
  if (tag_.data_algorithm != kStreamAlgorithmUri) {
    return FailedPreconditionError("random access needs the stream format (not " +
                                   tag_.data_algorithm + ")");
  }
#ifdef VMSEAL_OVF_HAVE_STREAM
  ASSIGN_OR_RETURN(auto in, OpenStoredFile(file_id));
  ASSIGN_OR_RETURN(auto reader, stream::StreamReader::Create(in.get(), data_key, ContextFor(file_id)));
  return std::unique_ptr<stream::StreamReader>(
      new OwningStreamReader(std::move(in), std::move(reader)));
#else
  (void)data_key;
  (void)file_id;
  return UnimplementedError("the stream format is not linked into this build");
#endif
}

namespace {

// One file to seal: where its plaintext comes from and what it becomes.
struct SealSource {
  std::string id;
  std::string href;
  std::unique_ptr<RandomAccessFile> data;
  uint64_t size = 0;
  std::string sealed_href;
  uint64_t sealed_size = 0;
  // Set when the disk was converted (§2.3).
  std::string converted_format_uri;
  uint64_t converted_capacity = 0;
};

// A private scratch directory beside the output (mode 0700) for the plain
// bytes that seal must materialize: decompressed files and converted disks.
// Removed with everything in it when seal ends, whatever the outcome.
class StagingDir {
 public:
  explicit StagingDir(std::string out_path) : out_path_(std::move(out_path)) {}
  ~StagingDir() {
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  StatusOr<std::string> Path(const std::string& name) {
    if (dir_.empty()) {
      std::string tmpl = out_path_ + ".stage-XXXXXX";
      if (mkdtemp(tmpl.data()) == nullptr) return ErrnoToStatus(errno, "create directory", tmpl);
      dir_ = tmpl;
    }
    return dir_ + "/" + name;
  }

 private:
  const std::string out_path_;
  std::string dir_;
};

// Copies `in` to a new file `path` (or, when `gunzip`, decompresses it
// there, bounded by kMaxGunzipBytes) and opens the copy.
constexpr uint64_t kMaxGunzipBytes = uint64_t{16} << 40;  // 16 TiB
StatusOr<std::unique_ptr<RandomAccessFile>> Materialize(Env* env, const RandomAccessFile& in,
                                                        const std::string& path, bool gunzip) {
  {
    ASSIGN_OR_RETURN(auto out, env->NewExclusiveFile(path, 0600));
    if (gunzip) {
      RETURN_IF_ERROR(internal::Gunzip(in, out.get(), kMaxGunzipBytes).status());
    } else {
      std::vector<uint8_t> buf(1 << 20);
      uint64_t off = 0;
      while (true) {
        ASSIGN_OR_RETURN(size_t n, in.Read(off, buf));
        if (n == 0) break;
        RETURN_IF_ERROR(out->Append(std::span<const uint8_t>(buf.data(), n)));
        off += n;
      }
    }
    RETURN_IF_ERROR(out->Close());
  }
  return env->NewRandomAccessFile(path);
}

// Converts the source's disk when it is VMDK, VHD or VHDX (§2.3). `path`
// is the file on disk if there is one (then `confine_dir` is its directory);
// otherwise the bytes are first copied into the staging directory.
// `declared` is the Disk's ovf:format (empty when none).
Status ConvertIfForeign(Env* env, StagingDir& stage, SealSource& s, const std::string& path,
                        const std::string& confine_dir, const std::string& declared,
                        bool in_package, bool convert, int64_t memory_bytes,
                        std::vector<std::string>* notes) {
  if (!convert) return OkStatus();
  ASSIGN_OR_RETURN(SourceDiskFormat actual, DetectSourceDiskFormat(*s.data));
  bool known = false;
  const SourceDiskFormat said = FormatFromUri(declared, &known);
  if (known && NeedsConversion(said) &&
      !(actual == said || (said == SourceDiskFormat::kVmdk &&
                           actual == SourceDiskFormat::kVmdkDescriptor))) {
    return InvalidArgumentError("disk " + s.href + ": ovf:format \"" + declared.substr(0, 200) +
                                "\" names " + QemuDriverName(said) + " but the file is " +
                                QemuDriverName(actual));
  }
  if (!NeedsConversion(actual)) return OkStatus();
  if (in_package && actual == SourceDiskFormat::kVmdkDescriptor) {
    return UnimplementedError("disk " + s.href + " is a VMDK text descriptor (monolithicFlat): "
                              "its extent files are not in the package's References; export "
                              "the disk as streamOptimized or monolithicSparse");
  }
  std::string source = path, dir = confine_dir;
  if (source.empty()) {
    ASSIGN_OR_RETURN(source, stage.Path(s.id + ".source"));
    ASSIGN_OR_RETURN(s.data, Materialize(env, *s.data, source, /*gunzip=*/false));
    dir = DirName(source);
  }
  // In memory when it fits: the package is then the only copy seal writes.
  ConversionResult converted;
  ASSIGN_OR_RETURN(std::optional<MemoryConversion> in_memory,
                   ConvertToQcow2InMemory(env, source, actual, dir,
                                          memory_bytes < 0
                                              ? DefaultInMemoryConversionBytes()
                                              : static_cast<uint64_t>(memory_bytes)));
  if (in_memory.has_value()) {
    converted = in_memory->result;
    s.data = std::move(in_memory->file);
  } else {
    ASSIGN_OR_RETURN(std::string dest, stage.Path(s.id + ".qcow2"));
    ASSIGN_OR_RETURN(converted, ConvertToQcow2(env, source, actual, dir, dest));
    ASSIGN_OR_RETURN(s.data, env->NewRandomAccessFile(dest));
  }
  s.converted_format_uri = std::string(kQcow2FormatUri);
  s.converted_capacity = converted.virtual_size;
  if (notes != nullptr) {
    notes->push_back("converted " + s.href + " (" + QemuDriverName(actual) + ") to qcow2, " +
                     std::to_string(converted.virtual_size) + " bytes");
  }
  return OkStatus();
}

bool IsPackagePath(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return true;
  return path.ends_with(".ovf") || path.ends_with(".ova");
}

}  // namespace

Status SealPackage(Env* env, const SealOptions& options, const std::string& out_path) {
  if (options.inputs.empty()) return InvalidArgumentError("nothing to seal");
  {
    struct stat st;
    if (lstat(out_path.c_str(), &st) == 0) return AlreadyExistsError("output exists: " + out_path);
  }
  ASSIGN_OR_RETURN(auto recipient, internal::LoadPublicKeyPem(options.recipient_pem));
  if (options.signing_key != nullptr) {
    // Fail before sealing gigabytes: the certificate must be the key's.
    ASSIGN_OR_RETURN(auto chain, crypto::Certificate::ParsePemBundle(options.signing_chain_pem));
    ASSIGN_OR_RETURN(crypto::PublicKey cert_key, chain[0].GetPublicKey());
    if (cert_key.KeyId() != options.signing_key->KeyId()) {
      return InvalidArgumentError("the signing certificate is not for the signing key");
    }
  }
  EncryptionTag tag;
  tag.format = std::string(kTagFormat);
  tag.version = kTagVersion;
  ASSIGN_OR_RETURN(std::string_view wrap_algorithm,
                   internal::WrapAlgorithmFor(recipient.type(), options.xmlenc_compat));
  tag.key_wrap_algorithm = std::string(wrap_algorithm);
  tag.data_algorithm = std::string(options.xmlenc_compat ? kAes256GcmUri : kStreamAlgorithmUri);
  tag.key_id = internal::KeyId(recipient);
  tag.image_id = options.image_id.empty() ? RandomUuid() : options.image_id;
  tag.tenant = options.tenant;
  tag.key_version = options.key_version;
  tag.created = options.created.empty() ? NowRfc3339() : options.created;
  RETURN_IF_ERROR(ValidateIdentity("image id", tag.image_id));
  RETURN_IF_ERROR(ValidateIdentity("tenant", tag.tenant));
  if (tag.key_version == 0) return InvalidArgumentError("key version must be at least 1");
  if (options.xmlenc_compat && options.chunk_size_bytes != 0) {
    return InvalidArgumentError("--xmlenc-compat has no chunk size");
  }
  ASSIGN_OR_RETURN(auto cipher, internal::NewDiskCipher(tag.data_algorithm, options.chunk_size_bytes));
  tag.chunk_size_bytes = cipher->chunk_size_bytes();

  // The plain descriptor and the sources of its files.
  StagingDir stage(out_path);
  std::unique_ptr<Package> input_package;
  std::string descriptor_text;
  std::vector<SealSource> sources;
  if (options.inputs.size() == 1 && IsPackagePath(options.inputs[0])) {
    PackageOpenOptions po;
    po.require_encrypted = false;
    po.require_manifest = false;
    po.allow_subfolders = true;
    po.import_ovirt_dialect = true;
    ASSIGN_OR_RETURN(input_package, Package::Open(env, options.inputs[0], po));
    if (input_package->encrypted()) {
      return FailedPreconditionError("input package is already sealed");
    }
    descriptor_text = input_package->descriptor_to_seal();
    if (options.notes != nullptr) {
      for (const std::string& n : input_package->import_notes()) options.notes->push_back(n);
    }
    std::set<std::string> hrefs;
    for (const FileRef& f : input_package->files()) hrefs.insert(f.href);
    for (const FileRef& f : input_package->files()) {
      SealSource s;
      s.id = f.id;
      s.href = f.href;
      ASSIGN_OR_RETURN(s.data, input_package->OpenStoredFile(f.id));
      std::string path;  // the plain file on disk, if there is one
      if (!f.compression.empty()) {
        if (f.compression != "gzip") {
          return UnimplementedError("file " + f.href + ": ovf:compression=\"" +
                                    f.compression.substr(0, 50) +
                                    "\" is not supported (gzip is)");
        }
        ASSIGN_OR_RETURN(path, stage.Path(f.id + ".plain"));
        auto plain = Materialize(env, *s.data, path, /*gunzip=*/true);
        if (!plain.ok()) return plain.status().WithPrefix("file " + f.href);
        s.data = std::move(*plain);
      } else if (!input_package->is_ova() && f.chunk_size == 0) {
        path = input_package->directory() + "/" + f.href;
      }
      RETURN_IF_ERROR(ConvertIfForeign(env, stage, s, path, path.empty() ? "" : DirName(path),
                                       f.disk_format_uri, /*in_package=*/true,
                                       options.convert_disks,
                                       options.conversion_memory_bytes, options.notes));
      if (!s.converted_format_uri.empty()) {
        // "disk1.vmdk" becomes "disk1.qcow2" unless another file has that name.
        std::string renamed = Stem(f.href) + ".qcow2";
        if (!hrefs.count(renamed) && ValidatePackagePath(renamed).ok()) {
          hrefs.insert(renamed);
          s.href = renamed;
        }
      }
      if (s.href.find('/') != std::string::npos) {
        // A sealed package is flat: "disks/a.vmdk" becomes "disks-a.vmdk"
        // (with "-2", "-3", ... before the extension if that name is taken).
        std::string flat = s.href;
        std::replace(flat.begin(), flat.end(), '/', '-');
        const std::string stem = Stem(flat), ext = flat.substr(stem.size());
        for (int k = 2; hrefs.count(flat) || !ValidateFileName(flat).ok(); ++k) {
          if (k > 1000 || stem.size() + ext.size() > kMaxNameBytes - 8) {
            return InvalidArgumentError("cannot give " + f.href + " a flat name");
          }
          flat = stem + "-" + std::to_string(k) + ext;
        }
        hrefs.insert(flat);
        s.href = flat;
      }
      sources.push_back(std::move(s));
    }
  } else {
    std::vector<DiskSpec> disks;
    for (size_t i = 0; i < options.inputs.size(); ++i) {
      if (IsPackagePath(options.inputs[i])) {
        return InvalidArgumentError("a package input must be the only input");
      }
      SealSource s;
      s.id = "file" + std::to_string(i + 1);
      s.href = BaseName(options.inputs[i]);
      ASSIGN_OR_RETURN(s.data, env->NewRandomAccessFile(options.inputs[i]));
      RETURN_IF_ERROR(ConvertIfForeign(env, stage, s, options.inputs[i],
                                       DirName(options.inputs[i]), "", /*in_package=*/false,
                                       options.convert_disks,
                                       options.conversion_memory_bytes, options.notes));
      ASSIGN_OR_RETURN(uint64_t size, s.data->Size());
      DiskSpec d;
      d.file_id = "file" + std::to_string(i + 1);
      d.file_size = size;
      d.capacity = size;
      d.format_uri = std::string(kRawFormatUri);
      uint8_t header[32] = {};
      ASSIGN_OR_RETURN(size_t n, s.data->Read(0, header));
      bool qcow2 = n >= 32 && header[0] == 'Q' && header[1] == 'F' && header[2] == 'I' &&
                   header[3] == 0xfb;
      if (qcow2) {
        d.format_uri = std::string(kQcow2FormatUri);
        d.capacity = 0;
        for (int b = 24; b < 32; ++b) d.capacity = (d.capacity << 8) | header[b];
      }
      d.href = "disk" + std::to_string(i + 1) + (qcow2 ? ".qcow2" : ".raw");
      s.id = d.file_id;
      s.href = d.href;
      disks.push_back(d);
      sources.push_back(std::move(s));
    }
    descriptor_text = GenerateDescriptor(options.vm, disks);
  }
  ASSIGN_OR_RETURN(Descriptor descriptor, Descriptor::Parse(descriptor_text));
  if (descriptor.major_version() == 1) {
    RETURN_IF_ERROR(descriptor.UpgradeToOvf2(options.notes));
  } else {
    RETURN_IF_ERROR(descriptor.CarryExtensions(options.notes));
  }
  if (descriptor.HasEncryptionSection()) {
    return FailedPreconditionError("input descriptor already has an EncryptionSection");
  }
  {
    // The firmware, Secure Boot and TPM the exporter asked for, in the one
    // form the host reads (§2.4); conflicts and what the host cannot give
    // are refused here, on the customer's machine.
    std::vector<std::string> asked_by;
    ASSIGN_OR_RETURN(PlatformRequest platform, descriptor.ReadPlatform(&asked_by));
    RETURN_IF_ERROR(descriptor.SetPlatform(platform));
    if (options.notes != nullptr && !(platform == PlatformRequest())) {
      std::string note = std::string("platform: firmware ") + (platform.efi ? "efi" : "bios") +
                         ", Secure Boot " + (platform.secure_boot ? "on" : "off") + ", TPM " +
                         (platform.tpm ? "2.0" : "none") + " (";
      for (size_t i = 0; i < asked_by.size(); ++i) note += (i ? "; " : "") + asked_by[i];
      options.notes->push_back(note + ")");
    }
  }

  std::vector<SealedFileInfo> sealed;
  for (SealSource& s : sources) {
    ASSIGN_OR_RETURN(s.size, s.data->Size());
    s.sealed_href = s.href + std::string(kSealedSuffix);
    RETURN_IF_ERROR(ValidateFileName(s.sealed_href));
    ASSIGN_OR_RETURN(s.sealed_size, cipher->SealedSize(s.size));
    sealed.push_back(SealedFileInfo{s.id, s.sealed_href, s.sealed_size, s.converted_format_uri,
                                    s.converted_capacity});
  }

  SecretBytes data_key = SecretBytes::Random(stream::kDataKeyBytes);
  WrappedKey wrapped;
  wrapped.algorithm = tag.key_wrap_algorithm;
  wrapped.oaep_label = OaepLabel(tag);
  ASSIGN_OR_RETURN(wrapped.ciphertext,
                   internal::WrapKey(recipient, tag.key_wrap_algorithm, data_key,
                                     wrapped.oaep_label));
  RETURN_IF_ERROR(descriptor.AddEncryption(tag, wrapped, sealed));
  if (!options.escrow_pem.empty()) {
    auto escrow_recipient = internal::LoadPublicKeyPem(options.escrow_pem);
    if (!escrow_recipient.ok()) return escrow_recipient.status().WithPrefix("escrow certificate");
    EscrowKey escrow;
    ASSIGN_OR_RETURN(std::string_view escrow_algorithm,
                     internal::WrapAlgorithmFor(escrow_recipient->type(), /*xmlenc_compat=*/false));
    escrow.algorithm = std::string(escrow_algorithm);
    escrow.key_id = internal::KeyId(*escrow_recipient);
    if (escrow.key_id == tag.key_id) {
      return InvalidArgumentError("the escrow key must be the customer's own, not the KMS recipient key");
    }
    escrow.label = EscrowLabel(tag);
    ASSIGN_OR_RETURN(escrow.ciphertext,
                     internal::WrapKey(*escrow_recipient, escrow.algorithm, data_key, escrow.label));
    RETURN_IF_ERROR(descriptor.AddEscrowKey(escrow));
  }
  if (!options.release_policy_json.empty()) {
    RETURN_IF_ERROR(descriptor.AddReleasePolicy(options.release_policy_json));
  }
  const std::string sealed_descriptor = descriptor.Serialize();
  if (sealed_descriptor.size() > kMaxDescriptorBytes) {
    return InvalidArgumentError("sealed descriptor would exceed the size bound");
  }

  std::string stem = Stem(BaseName(out_path));
  if (!ValidateFileName(stem + ".ovf").ok()) stem = "package";
  const std::string descriptor_name = stem + ".ovf";
  std::vector<ManifestEntry> manifest;
  const crypto::Sha256Digest descriptor_digest = crypto::Sha256(sealed_descriptor);
  manifest.push_back({DigestAlgorithm::kSha256, descriptor_name,
                      std::vector<uint8_t>(descriptor_digest.begin(), descriptor_digest.end())});
  stream::StreamContext context;
  context.image_id = tag.image_id;
  context.tenant = tag.tenant;
  context.key_version = tag.key_version;
  auto seal_one = [&](const SealSource& s, WritableFile* out) -> Status {
    DigestingFile digesting(out, DigestAlgorithm::kSha256);
    stream::StreamContext c = context;
    c.image_id = tag.image_id + "/" + s.id;
    RETURN_IF_ERROR(cipher->Seal(*s.data, &digesting, data_key, c));
    if (digesting.bytes_written() != s.sealed_size) {
      return InternalError("sealed size of " + s.href + " differs from the announced size");
    }
    manifest.push_back({DigestAlgorithm::kSha256, s.sealed_href, digesting.Finish()});
    return OkStatus();
  };

  if (options.ova) {
    ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(env, out_path, 0644));
    TarWriter tar(out->file());
    RETURN_IF_ERROR(tar.AddMember(descriptor_name, sealed_descriptor.size(), [&](WritableFile* w) {
      return w->Append(crypto::AsBytes(sealed_descriptor));
    }));
    for (const SealSource& s : sources) {
      RETURN_IF_ERROR(tar.AddMember(s.sealed_href, s.sealed_size,
                                    [&](WritableFile* w) { return seal_one(s, w); }));
    }
    const std::string mf = FormatManifest(manifest);
    RETURN_IF_ERROR(tar.AddMember(stem + ".mf", mf.size(), [&](WritableFile* w) {
      return w->Append(crypto::AsBytes(mf));
    }));
    if (options.signing_key != nullptr) {
      ASSIGN_OR_RETURN(std::string cert, SignManifest(stem + ".mf", mf, *options.signing_key,
                                                      options.signing_chain_pem));
      RETURN_IF_ERROR(tar.AddMember(stem + ".cert", cert.size(), [&](WritableFile* w) {
        return w->Append(crypto::AsBytes(cert));
      }));
    }
    RETURN_IF_ERROR(tar.Finish());
    return out->Commit();
  }
  ASSIGN_OR_RETURN(auto dir, AtomicOutputDir::Create(out_path));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, dir->File(descriptor_name), sealed_descriptor, 0644));
  for (const SealSource& s : sources) {
    ASSIGN_OR_RETURN(auto f, env->NewExclusiveFile(dir->File(s.sealed_href), 0644));
    RETURN_IF_ERROR(seal_one(s, f.get()));
    RETURN_IF_ERROR(f->Sync());
    RETURN_IF_ERROR(f->Close());
  }
  const std::string mf = FormatManifest(manifest);
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, dir->File(stem + ".mf"), mf, 0644));
  if (options.signing_key != nullptr) {
    ASSIGN_OR_RETURN(std::string cert, SignManifest(stem + ".mf", mf, *options.signing_key,
                                                    options.signing_chain_pem));
    RETURN_IF_ERROR(WriteStringToFileAtomic(env, dir->File(stem + ".cert"), cert, 0644));
  }
  return dir->Commit(env);
}

Status RewrapPackage(Env* env, const Package& source, const EncryptionTag& tag,
                     const crypto::Bytes& wrapped_key, const crypto::PrivateKey& signing_key,
                     const std::string& signing_chain_pem, const std::string& out_path) {
  ASSIGN_OR_RETURN(Descriptor descriptor, Descriptor::Parse(source.descriptor_text()));
  WrappedKey key;
  key.algorithm = source.wrapped_key().algorithm;
  key.oaep_label = OaepLabel(tag);
  key.ciphertext = wrapped_key;
  RETURN_IF_ERROR(descriptor.ReplaceEncryptedKey(tag, key));
  const std::string text = descriptor.Serialize();
  if (text.size() > kMaxDescriptorBytes) return InvalidArgumentError("descriptor would exceed the size bound");
  std::string stem = Stem(BaseName(out_path));
  if (!ValidateFileName(stem + ".ovf").ok()) stem = "package";
  std::vector<ManifestEntry> manifest;
  const crypto::Sha256Digest d = crypto::Sha256(text);
  manifest.push_back({DigestAlgorithm::kSha256, stem + ".ovf", std::vector<uint8_t>(d.begin(), d.end())});
  ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(env, out_path, 0644));
  TarWriter tar(out->file());
  RETURN_IF_ERROR(tar.AddMember(stem + ".ovf", text.size(), [&](WritableFile* w) {
    return w->Append(crypto::AsBytes(text));
  }));
  // Every file's stored bytes (ciphertext) unchanged, digested again.
  for (const FileRef& f : source.files()) {
    ASSIGN_OR_RETURN(auto in, source.OpenStoredFile(f.id));
    ASSIGN_OR_RETURN(const uint64_t size, in->Size());
    auto copy = [&](WritableFile* w) -> Status {
      DigestingFile digesting(w, DigestAlgorithm::kSha256);
      std::vector<uint8_t> buf(size_t{1} << 20);
      for (uint64_t off = 0; off < size;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
        ASSIGN_OR_RETURN(size_t got, in->Read(off, std::span<uint8_t>(buf.data(), n)));
        if (got == 0) return DataLossError("file " + f.href + " ended early");
        RETURN_IF_ERROR(digesting.Append(std::span<const uint8_t>(buf.data(), got)));
        off += got;
      }
      manifest.push_back({DigestAlgorithm::kSha256, f.href, digesting.Finish()});
      return OkStatus();
    };
    RETURN_IF_ERROR(tar.AddMember(f.href, size, copy));
  }
  const std::string mf = FormatManifest(manifest);
  RETURN_IF_ERROR(tar.AddMember(stem + ".mf", mf.size(), [&](WritableFile* w) {
    return w->Append(crypto::AsBytes(mf));
  }));
  ASSIGN_OR_RETURN(std::string cert, SignManifest(stem + ".mf", mf, signing_key, signing_chain_pem));
  RETURN_IF_ERROR(tar.AddMember(stem + ".cert", cert.size(), [&](WritableFile* w) {
    return w->Append(crypto::AsBytes(cert));
  }));
  RETURN_IF_ERROR(tar.Finish());
  return out->Commit();
}

namespace {
Status Unseal(Env* env, const std::string& package_path, std::string_view private_key_pem,
              const std::string& out_dir, bool escrow) {
  {
    struct stat st;
    if (lstat(out_dir.c_str(), &st) == 0) return AlreadyExistsError("output exists: " + out_dir);
  }
  ASSIGN_OR_RETURN(auto package, Package::Open(env, package_path, PackageOpenOptions()));
  ASSIGN_OR_RETURN(SecretBytes data_key, escrow ? package->UnwrapEscrowDataKey(private_key_pem)
                                                : package->UnwrapDataKey(private_key_pem));
  ASSIGN_OR_RETURN(Descriptor descriptor, Descriptor::Parse(package->descriptor_text()));
  ASSIGN_OR_RETURN(auto dir, AtomicOutputDir::Create(out_dir));
  std::vector<ManifestEntry> manifest;
  std::vector<PlainFileInfo> plain;
  for (const FileRef& f : package->files()) {
    PlainFileInfo p;
    p.id = f.id;
    p.href = f.href.substr(0, f.href.size() - kSealedSuffix.size());
    RETURN_IF_ERROR(ValidateFileName(p.href));
    ASSIGN_OR_RETURN(auto out, env->NewExclusiveFile(dir->File(p.href), 0600));
    DigestingFile digesting(out.get(), DigestAlgorithm::kSha256);
    RETURN_IF_ERROR(package->DecryptFile(f.id, data_key, &digesting));
    RETURN_IF_ERROR(out->Sync());
    RETURN_IF_ERROR(out->Close());
    p.size = digesting.bytes_written();
    manifest.push_back({DigestAlgorithm::kSha256, p.href, digesting.Finish()});
    plain.push_back(p);
  }
  RETURN_IF_ERROR(descriptor.RemoveEncryption(plain));
  const std::string text = descriptor.Serialize();
  const std::string name = package->descriptor_name();
  crypto::Sha256Digest d = crypto::Sha256(text);
  manifest.insert(manifest.begin(),
                  ManifestEntry{DigestAlgorithm::kSha256, name, std::vector<uint8_t>(d.begin(), d.end())});
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, dir->File(name), text, 0644));
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, dir->File(Stem(name) + ".mf"),
                                          FormatManifest(manifest), 0644));
  return dir->Commit(env);
}
}  // namespace

Status UnsealPackage(Env* env, const std::string& package_path, std::string_view private_key_pem,
                     const std::string& out_dir) {
  return Unseal(env, package_path, private_key_pem, out_dir, /*escrow=*/false);
}

Status UnsealPackageWithEscrowKey(Env* env, const std::string& package_path,
                                  std::string_view escrow_private_key_pem, const std::string& out_dir) {
  return Unseal(env, package_path, escrow_private_key_pem, out_dir, /*escrow=*/true);
}

StatusOr<std::string> InspectPackage(Env* env, const std::string& package_path, bool json) {
  PackageOpenOptions po;
  po.require_encrypted = false;
  po.require_manifest = false;
  ASSIGN_OR_RETURN(auto p, Package::Open(env, package_path, po));
  // The release policy sealed into the descriptor (§4.1), if any.
  std::optional<std::string> release_policy;
  if (p->encrypted()) {
    ASSIGN_OR_RETURN(Descriptor d, Descriptor::Parse(p->descriptor_text()));
    ASSIGN_OR_RETURN(release_policy, d.ReadReleasePolicy());
  }
  if (json) {
    nlohmann::json j;
    j["container"] = p->is_ova() ? "ova" : "directory";
    j["descriptor"] = p->descriptor_name();
    j["manifest"] = p->has_manifest() ? "verified" : "absent";
    if (p->is_signed()) {
      // Verified over the manifest; who the signer is, is for the reader
      // to check against the certificate it trusts.
      j["signature"] = {{"status", "verified"},
                        {"signer", p->signature().signer.SubjectCommonName()},
                        {"signer_sha256", p->signature().signer.Fingerprint()}};
    } else {
      j["signature"] = {{"status", "absent"}};
    }
    j["encrypted"] = p->encrypted();
    j["files"] = nlohmann::json::array();
    for (const FileRef& f : p->files()) {
      nlohmann::json jf;
      jf["id"] = f.id;
      jf["href"] = f.href;
      if (f.size) jf["size"] = *f.size;
      if (!f.encryption_algorithm.empty()) jf["algorithm"] = f.encryption_algorithm;
      j["files"].push_back(jf);
    }
    if (p->encrypted()) {
      const EncryptionTag& t = p->tag();
      j["tag"] = {{"format", t.format},
                  {"version", t.version},
                  {"keyWrapAlgorithm", t.key_wrap_algorithm},
                  {"dataAlgorithm", t.data_algorithm},
                  {"chunkSize", t.chunk_size_bytes},
                  {"keyId", t.key_id},
                  {"imageId", t.image_id},
                  {"tenant", t.tenant},
                  {"keyVersion", t.key_version},
                  {"created", t.created}};
      if (!t.stream_tenant.empty()) j["tag"]["streamTenant"] = t.stream_tenant;
      if (t.stream_key_version != 0) j["tag"]["streamKeyVersion"] = t.stream_key_version;
      if (p->escrow_key()) j["escrow_key_id"] = p->escrow_key()->key_id;
      j["release_policy"] = nullptr;
      if (release_policy) {
        auto parsed = ParseJson(*release_policy);
        j["release_policy"] = parsed.ok() ? *parsed : nlohmann::json("(not JSON)");
      }
    }
    return j.dump(2) + "\n";
  }
  std::string out;
  out += "container:  " + std::string(p->is_ova() ? "ova" : "directory") + "\n";
  out += "descriptor: " + p->descriptor_name() + "\n";
  out += "manifest:   " + std::string(p->has_manifest() ? "verified" : "absent") + "\n";
  out += "signature:  " +
         (p->is_signed() ? "verified, signer " + p->signature().signer.SubjectCommonName() +
                               " (certificate sha256 " + p->signature().signer.Fingerprint() + ")"
                         : std::string("absent")) +
         "\n";
  out += "encrypted:  " + std::string(p->encrypted() ? "yes" : "no") + "\n";
  for (const FileRef& f : p->files()) {
    out += "file:       " + f.id + " " + f.href + " " +
           (f.size ? std::to_string(*f.size) + " bytes" : "size unknown");
    if (!f.encryption_algorithm.empty()) out += " " + f.encryption_algorithm;
    out += "\n";
  }
  if (p->encrypted()) {
    const EncryptionTag& t = p->tag();
    out += "tag:\n";
    out += "  format:           " + t.format + " v" + std::to_string(t.version) + "\n";
    out += "  keyWrapAlgorithm: " + t.key_wrap_algorithm + "\n";
    out += "  dataAlgorithm:    " + t.data_algorithm + "\n";
    out += "  chunkSize:        " + std::to_string(t.chunk_size_bytes) + "\n";
    out += "  keyId:            " + t.key_id + "\n";
    out += "  imageId:          " + t.image_id + "\n";
    out += "  tenant:           " + t.tenant + "\n";
    out += "  keyVersion:       " + std::to_string(t.key_version) + "\n";
    if (!t.stream_tenant.empty()) out += "  streamTenant:     " + t.stream_tenant + "\n";
    if (t.stream_key_version != 0) {
      out += "  streamKeyVersion: " + std::to_string(t.stream_key_version) + "\n";
    }
    out += "  created:          " + t.created + "\n";
    if (p->escrow_key()) out += "escrow copy:        key " + p->escrow_key()->key_id + " (yours)\n";
    std::string policy = "none (the KMS operator's policy applies unless you sign one)";
    if (release_policy) {
      auto parsed = ParseJson(*release_policy);
      policy = parsed.ok() ? DumpJson(*parsed) : "(not JSON: every release is denied)";
    }
    out += "release policy:     " + policy + "\n";
  }
  return out;
}

}  // namespace vmseal::ovf
