#include "base/env.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "base/secret_bytes.h"

namespace vmseal {
namespace {

// Reads of at least this many bytes skip the file's holes.
constexpr size_t kHoleAwareMinBytes = size_t{64} << 10;

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  // Large reads ask the file system where its data is (SEEK_DATA /
  // SEEK_HOLE) and fill holes with zeros here: reading a hole through the
  // page cache would make the kernel allocate, zero and copy pages for
  // nothing, and sparse disk images are often half holes. The lseeks move
  // the shared file offset, which no read here uses (pread only).
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (out.size() < kHoleAwareMinBytes || !hole_aware_.load(std::memory_order_relaxed)) {
      return ReadFully(offset, out);
    }
    size_t done = 0;
    while (done < out.size()) {
      const uint64_t pos = offset + done;
      const size_t left = out.size() - done;
      const off_t data = ::lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0 && errno == ENXIO) {
        // No data at or after pos: a hole up to the end of the file.
        ASSIGN_OR_RETURN(uint64_t size, Size());
        const size_t n = pos >= size ? 0 : static_cast<size_t>(std::min<uint64_t>(left, size - pos));
        std::memset(out.data() + done, 0, n);
        return done + n;
      }
      const off_t hole = data < 0 ? data : ::lseek(fd_, std::max(data, static_cast<off_t>(pos)), SEEK_HOLE);
      if (data < 0 || hole < 0) {
        // No hole support here (or the file changed under us): plain reads.
        hole_aware_.store(false, std::memory_order_relaxed);
        ASSIGN_OR_RETURN(size_t n, ReadFully(pos, out.subspan(done)));
        return done + n;
      }
      const uint64_t data_at = static_cast<uint64_t>(data);
      if (data_at > pos) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(left, data_at - pos));
        std::memset(out.data() + done, 0, n);
        done += n;
        continue;
      }
      // Data from pos up to the next hole (which may be the end of file).
      const uint64_t hole_at = std::max(static_cast<uint64_t>(hole), pos + 1);
      const size_t want = static_cast<size_t>(std::min<uint64_t>(left, hole_at - pos));
      ASSIGN_OR_RETURN(size_t n, ReadFully(pos, out.subspan(done, want)));
      done += n;
      if (n < want) break;  // end of file
    }
    return done;
  }

  StatusOr<uint64_t> Size() const override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoToStatus(errno, "stat", path_);
    return static_cast<uint64_t>(st.st_size);
  }

  bool IsHole(uint64_t offset, uint64_t length) const override {
    if (length == 0 || !hole_aware_.load(std::memory_order_relaxed)) return false;
    const off_t data = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
    if (data >= 0) return static_cast<uint64_t>(data) - offset >= length;
    if (errno != ENXIO) return false;
    // No data at or after offset: a hole if the range is inside the file.
    auto size = Size();
    return size.ok() && offset + length <= *size;
  }

 private:
  // pread until `out` is full or the file ends.
  StatusOr<size_t> ReadFully(uint64_t offset, std::span<uint8_t> out) const {
    size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd_, out.data() + done, out.size() - done,
                          static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "read", path_);
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  const std::string path_;
  const int fd_;
  // Cleared for good once the file system (or a pipe) refuses SEEK_DATA.
  mutable std::atomic<bool> hole_aware_{true};
};

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  Status Append(std::span<const uint8_t> data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done,
                           static_cast<off_t>(pos_));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "write", path_);
      }
      done += static_cast<size_t>(n);
      pos_ += static_cast<uint64_t>(n);
    }
    return OkStatus();
  }

  Status Skip(uint64_t bytes) override {
    pos_ += bytes;
    return OkStatus();
  }

  Status Sync() override {
    RETURN_IF_ERROR(SetLength());
    if (::fdatasync(fd_) != 0) return ErrnoToStatus(errno, "sync", path_);
    return OkStatus();
  }

  Status Close() override {
    if (fd_ < 0) return OkStatus();
    Status s = SetLength();
    if (::close(fd_) != 0 && s.ok()) s = ErrnoToStatus(errno, "close", path_);
    fd_ = -1;
    return s;
  }

 private:
  // A trailing Skip leaves a hole that only ftruncate materialises.
  Status SetLength() {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoToStatus(errno, "stat", path_);
    if (static_cast<uint64_t>(st.st_size) < pos_ &&
        ::ftruncate(fd_, static_cast<off_t>(pos_)) != 0) {
      return ErrnoToStatus(errno, "truncate", path_);
    }
    return OkStatus();
  }

  const std::string path_;
  int fd_;
  uint64_t pos_ = 0;
};

class PosixEnv final : public Env {
 public:
  StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open", path);
    struct stat st;
    if (::fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
      ::close(fd);
      return InvalidArgumentError("open " + path + ": is a directory");
    }
    return std::unique_ptr<RandomAccessFile>(new PosixRandomAccessFile(path, fd));
  }

  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                          mode_t mode) override {
    return Open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  }

  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path,
                                                           mode_t mode) override {
    return Open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoToStatus(errno, "rename", to);
    return OkStatus();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoToStatus(errno, "remove", path);
    return OkStatus();
  }

  bool FileExists(const std::string& path) override {
    return ::access(path.c_str(), F_OK) == 0;
  }

  Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open", dir);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoToStatus(err, "sync", dir);
    return OkStatus();
  }

 private:
  StatusOr<std::unique_ptr<WritableFile>> Open(const std::string& path, int flags,
                                               mode_t mode) {
    int fd = ::open(path.c_str(), flags, mode);
    if (fd < 0) return ErrnoToStatus(errno, "create", path);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd));
  }
};

}  // namespace

Env* Env::Default() {
  static Env* env = new PosixEnv();
  return env;
}

Status ErrnoToStatus(int err, std::string_view what, std::string_view path) {
  std::string msg(what);
  msg += " ";
  msg += path;
  msg += ": ";
  msg += std::strerror(err);
  switch (err) {
    case ENOENT: return NotFoundError(std::move(msg));
    case EACCES:
    case EPERM: return PermissionDeniedError(std::move(msg));
    case EEXIST: return AlreadyExistsError(std::move(msg));
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return ResourceExhaustedError(std::move(msg));
    case EISDIR:
    case ENOTDIR:
    case EINVAL: return InvalidArgumentError(std::move(msg));
    default: return UnavailableError(std::move(msg));
  }
}

StatusOr<std::string> ReadFileToString(Env* env, const std::string& path) {
  ASSIGN_OR_RETURN(auto file, env->NewRandomAccessFile(path));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::string out(size, '\0');
  ASSIGN_OR_RETURN(size_t n, file->Read(0, {reinterpret_cast<uint8_t*>(out.data()), out.size()}));
  out.resize(n);
  return out;
}

Status WriteStringToFileAtomic(Env* env, const std::string& path, std::string_view data,
                               mode_t mode) {
  ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(env, path, mode));
  RETURN_IF_ERROR(out->file()->Append(
      {reinterpret_cast<const uint8_t*>(data.data()), data.size()}));
  return out->Commit();
}

std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

StatusOr<std::unique_ptr<AtomicOutputFile>> AtomicOutputFile::Create(Env* env,
                                                                     std::string path,
                                                                     mode_t mode) {
  // A random suffix; O_EXCL makes a collision an error rather than a clobber.
  SecretBytes rnd = SecretBytes::Random(6);
  static const char kHex[] = "0123456789abcdef";
  std::string suffix;
  for (uint8_t b : rnd.UnsafeSpan()) {
    suffix += kHex[b >> 4];
    suffix += kHex[b & 15];
  }
  size_t slash = path.find_last_of('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string temp = dir + "." + base + ".tmp-" + suffix;
  ASSIGN_OR_RETURN(auto file, env->NewExclusiveFile(temp, mode));
  return std::unique_ptr<AtomicOutputFile>(
      new AtomicOutputFile(env, std::move(path), std::move(temp), std::move(file)));
}

AtomicOutputFile::AtomicOutputFile(Env* env, std::string path, std::string temp_path,
                                   std::unique_ptr<WritableFile> file)
    : env_(env), path_(std::move(path)), temp_path_(std::move(temp_path)),
      file_(std::move(file)) {}

AtomicOutputFile::~AtomicOutputFile() {
  if (!committed_) {
    file_.reset();
    (void)env_->RemoveFile(temp_path_);
  }
}

Status AtomicOutputFile::Commit() {
  if (committed_ || file_ == nullptr) return FailedPreconditionError("already committed");
  RETURN_IF_ERROR(file_->Sync());
  RETURN_IF_ERROR(file_->Close());
  file_.reset();
  RETURN_IF_ERROR(env_->RenameFile(temp_path_, path_));
  committed_ = true;
  return env_->SyncDir(DirName(path_));
}

Status AtomicOutputFile::CommitWithoutSync() {
  if (committed_ || file_ == nullptr) return FailedPreconditionError("already committed");
  RETURN_IF_ERROR(file_->Close());
  file_.reset();
  RETURN_IF_ERROR(env_->RenameFile(temp_path_, path_));
  committed_ = true;
  return OkStatus();
}

}  // namespace vmseal
