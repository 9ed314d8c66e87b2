#include "base/env.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "base/secret_bytes.h"

namespace vmseal {
namespace {

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
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

  StatusOr<uint64_t> Size() const override {
    struct stat st;
    if (::fstat(fd_, &st) != 0) return ErrnoToStatus(errno, "stat", path_);
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  const std::string path_;
  const int fd_;
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

}  // namespace vmseal
