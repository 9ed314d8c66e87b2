// The I/O seam: every file the project reads or writes goes through an Env so
// that tests can inject short writes, a full disk or a crash (LevelDB's Env).
#ifndef VMSEAL_BASE_ENV_H_
#define VMSEAL_BASE_ENV_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"

namespace vmseal {

// A file read by offset. Thread-safe: Read may be called concurrently.
class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // Reads up to out.size() bytes at `offset`; returns the count read, which is
  // smaller only at end of file.
  virtual StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const = 0;
  // The file's size in bytes.
  virtual StatusOr<uint64_t> Size() const = 0;
  // True if the `length` bytes at `offset` are known to lie in a hole: they
  // read as zeros and the file system stores nothing for them. False when
  // they hold data or nobody knows. Lets a reader of a sparse disk image
  // skip its holes.
  virtual bool IsHole(uint64_t /*offset*/, uint64_t /*length*/) const { return false; }
};

// A file written front to back. Not thread-safe.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data`; an error (e.g. RESOURCE_EXHAUSTED for a full disk)
  // leaves the file's content unspecified.
  virtual Status Append(std::span<const uint8_t> data) = 0;
  // Advances the write position by `bytes` without writing, leaving a hole
  // that reads as zeros (used to keep decrypted disk images sparse).
  virtual Status Skip(uint64_t bytes) = 0;
  // Makes the file's content durable (fdatasync).
  virtual Status Sync() = 0;
  // Closes the file; the file's length is the write position.
  virtual Status Close() = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The POSIX environment. Never deleted.
  static Env* Default();

  virtual StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) = 0;
  // Creates or truncates `path` with permission `mode` (before umask).
  virtual StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path, mode_t mode) = 0;
  // Creates `path`, failing with ALREADY_EXISTS if it exists (O_EXCL).
  virtual StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(
      const std::string& path, mode_t mode) = 0;
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual bool FileExists(const std::string& path) = 0;
  // fsync of a directory, so that a rename in it is durable.
  virtual Status SyncDir(const std::string& dir) = 0;
};

// Maps errno after a failed call on `path` to a Status with a clear message,
// e.g. ENOSPC -> RESOURCE_EXHAUSTED "write out.img: no space left on device".
Status ErrnoToStatus(int err, std::string_view what, std::string_view path);

// Reads a whole (small) file.
StatusOr<std::string> ReadFileToString(Env* env, const std::string& path);

// Writes `data` to `path` atomically (temp file beside it, fsync, rename,
// fsync dir) with permission `mode`. On error `path` is untouched.
Status WriteStringToFileAtomic(Env* env, const std::string& path, std::string_view data,
                               mode_t mode);

// An output file that only appears at `path` once Commit() succeeds. Writes
// go to a temp file in the same directory; if the object is destroyed
// without a successful Commit, the temp file is removed. This is how every
// command publishes its output: after any failure no partial file remains.
class AtomicOutputFile {
 public:
  // Opens a fresh temp file beside `path`. `mode` is applied to the temp file
  // so the content is never readable more widely than intended.
  static StatusOr<std::unique_ptr<AtomicOutputFile>> Create(Env* env, std::string path,
                                                            mode_t mode);
  ~AtomicOutputFile();
  AtomicOutputFile(const AtomicOutputFile&) = delete;
  AtomicOutputFile& operator=(const AtomicOutputFile&) = delete;

  // The file to write into. Valid until Commit or destruction.
  WritableFile* file() { return file_.get(); }
  const std::string& temp_path() const { return temp_path_; }

  // Syncs, closes and renames the temp file to the final path.
  Status Commit();
  // Closes and renames without any fsync: for a file that is worthless
  // after a crash anyway and checked when read (the host's fetched
  // ciphertext package: every chunk is authenticated, and the VM it is
  // fetched for does not outlive a power loss). All or nothing still holds
  // while the machine runs.
  Status CommitWithoutSync();

 private:
  AtomicOutputFile(Env* env, std::string path, std::string temp_path,
                   std::unique_ptr<WritableFile> file);
  Env* const env_;
  const std::string path_;
  const std::string temp_path_;
  std::unique_ptr<WritableFile> file_;
  bool committed_ = false;
};

// Directory part of `path` ("." when it has none).
std::string DirName(const std::string& path);

}  // namespace vmseal

#endif  // VMSEAL_BASE_ENV_H_
