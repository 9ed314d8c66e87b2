// USTAR archives as used by OVA packages (docs/format/package.md §8): a
// streaming writer whose member sizes are known in advance, and a hardened
// reader that hands out each member as a RandomAccessFile slice, so a disk is
// decrypted straight from the archive without extracting it.
#ifndef VMSEAL_OVF_TAR_H_
#define VMSEAL_OVF_TAR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::ovf {

// Checks a package file name: 1..kMaxNameBytes bytes of UTF-8 (spaces and
// non-ASCII letters allowed: VirtualBox names disks "Debian 12-disk001.vmdk"),
// no control characters, none of \ : * ? " < > |, no leading or trailing
// space, not "." or "..", no '/' (so no absolute path, no traversal, no
// subdirectory). The error names the rule broken.
Status ValidateFileName(const std::string& name);

// A relative path inside a plain (not yet sealed) package: 1 to
// kMaxPathComponents names joined by '/', each valid for ValidateFileName,
// kMaxNameBytes in all. No leading, trailing or doubled '/', no '.' or '..'.
inline constexpr size_t kMaxPathComponents = 8;
Status ValidatePackagePath(const std::string& path);

// Writes a USTAR archive into `out`, which it does not own. Not thread-safe.
class TarWriter {
 public:
  // Produces exactly `size` bytes of member data into the given file.
  using DataFn = std::function<Status(WritableFile* out)>;

  explicit TarWriter(WritableFile* out) : out_(out) {}
  // Appends a regular file `name` (ValidateFileName) of `size` bytes (sizes
  // of 8 GiB and more use the base-256 size field; a name over 100 bytes or
  // not ASCII also gets a pax 'x' header with its path). Fails with INTERNAL if
  // `data` writes a different number of bytes.
  Status AddMember(const std::string& name, uint64_t size, const DataFn& data);
  // Appends the two zero blocks that end the archive. Does not close `out`.
  Status Finish();

 private:
  WritableFile* const out_;
};

// One regular member of an archive.
struct TarMember {
  std::string name;
  uint64_t data_offset = 0;  // of the member's data within the archive
  uint64_t size = 0;
};

// Reads the member index of an archive. Thread-safe after Open.
class TarReader {
 public:
  // Reads every header of `file` (which must outlive the reader): POSIX
  // ustar, pax (an 'x' header's path and size apply to the next member; 'g'
  // headers may not set them), GNU (base-256 sizes, 'L' long names) and
  // Unix v7 archives; a leading "./" is dropped from names. Rejects, each
  // with its own INVALID_ARGUMENT message: a bad checksum or magic, a member
  // that is not a regular file (link, device, directory, fifo, sparse or
  // another GNU extension), a malformed or over-64-KiB extended header, an
  // invalid name (ValidateFileName), a duplicate name, data beyond the end
  // of the file, more than kMaxTarMembers members.
  // With `allow_subfolders` (plain packages that seal reads), member names
  // are paths (ValidatePackagePath) and directory members are skipped.
  static StatusOr<std::unique_ptr<TarReader>> Open(const RandomAccessFile* file,
                                                   bool allow_subfolders = false);

  const std::vector<TarMember>& members() const { return members_; }
  // The member called `name`, or nullptr.
  const TarMember* Find(const std::string& name) const;
  // A view of the member's data; valid while the archive file lives.
  std::unique_ptr<RandomAccessFile> NewMemberFile(const TarMember& member) const;

 private:
  TarReader(const RandomAccessFile* file, std::vector<TarMember> members)
      : file_(file), members_(std::move(members)) {}
  const RandomAccessFile* const file_;
  const std::vector<TarMember> members_;
};

// A window [offset, offset + size) of `base` as a file of its own.
std::unique_ptr<RandomAccessFile> NewSliceFile(const RandomAccessFile* base, uint64_t offset,
                                               uint64_t size);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_TAR_H_
