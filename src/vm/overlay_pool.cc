#include "vm/overlay_pool.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <vector>

#include "base/env.h"

namespace vmseal::vm {
namespace {

constexpr uint64_t kShredChunkBytes = 1 << 20;
// After a failed fill, the filler waits this long before trying again.
constexpr auto kFillRetryDelay = std::chrono::seconds(2);

Status MakePoolDir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "mkdir", dir);
  }
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", dir);
  if (!S_ISDIR(st.st_mode)) return FailedPreconditionError("not a directory: " + dir);
  if ((st.st_mode & 0077) != 0 && ::chmod(dir.c_str(), 0700) != 0) {
    return ErrnoToStatus(errno, "chmod", dir);
  }
  return OkStatus();
}

}  // namespace

Status ShredFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) return OkStatus();
    const int e = errno;
    // Not a regular file we can write (a symlink, a fifo): only unlinked.
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return ErrnoToStatus(errno, "unlink", path);
    return e == ELOOP ? OkStatus() : ErrnoToStatus(e, "open", path);
  }
  struct stat st;
  Status s;
  if (::fstat(fd, &st) != 0) {
    s = ErrnoToStatus(errno, "stat", path);
  } else if (S_ISREG(st.st_mode)) {
    const std::vector<uint8_t> zeros(kShredChunkBytes, 0);
    for (uint64_t off = 0; off < static_cast<uint64_t>(st.st_size) && s.ok();) {
      const size_t n = static_cast<size_t>(
          std::min<uint64_t>(kShredChunkBytes, static_cast<uint64_t>(st.st_size) - off));
      const ssize_t w = ::pwrite(fd, zeros.data(), n, static_cast<off_t>(off));
      if (w <= 0) {
        s = ErrnoToStatus(w < 0 ? errno : EIO, "write", path);
      } else {
        off += static_cast<uint64_t>(w);
      }
    }
    if (s.ok() && ::fdatasync(fd) != 0) s = ErrnoToStatus(errno, "fdatasync", path);
  }
  ::close(fd);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT && s.ok()) {
    s = ErrnoToStatus(errno, "unlink", path);
  }
  return s;
}

namespace {
// A random tag naming this pool's files apart from an earlier pool's.
std::string PoolTag() {
  static const char kHex[] = "0123456789abcdef";
  SecretBytes r = SecretBytes::Random(4);
  std::string out;
  for (size_t i = 0; i < r.size(); ++i) {
    out += kHex[r.UnsafeData()[i] >> 4];
    out += kHex[r.UnsafeData()[i] & 15];
  }
  return out;
}
}  // namespace

OverlayPool::OverlayPool(const OverlayPoolOptions& options)
    : options_(options), tag_(PoolTag()) {}

StatusOr<std::unique_ptr<OverlayPool>> OverlayPool::Create(const OverlayPoolOptions& options) {
  if (options.dir.empty()) return InvalidArgumentError("overlay pool: dir is required");
  if (options.initial_size_bytes == 0 || options.initial_size_bytes % 512 != 0) {
    return InvalidArgumentError("overlay pool: initial size must be a positive multiple of 512");
  }
  RETURN_IF_ERROR(MakePoolDir(options.dir));
  std::unique_ptr<OverlayPool> pool(new OverlayPool(options));
  // Whatever is here was made by an earlier agent whose secrets are gone.
  std::error_code ec;
  std::vector<std::string> orphans;
  for (const auto& entry : std::filesystem::directory_iterator(options.dir, ec)) {
    orphans.push_back(entry.path().string());
  }
  if (ec) return InternalError("list " + options.dir + ": " + ec.message());
  for (const std::string& path : orphans) {
    std::error_code dir_ec;
    if (std::filesystem::is_directory(std::filesystem::symlink_status(path, dir_ec))) {
      std::filesystem::remove_all(path, dir_ec);
    } else {
      RETURN_IF_ERROR(ShredFile(path).WithPrefix("overlay pool"));
    }
    ++pool->stats_.orphans_shredded;
  }
  if (options.target > 0) pool->filler_ = std::thread([p = pool.get()] { p->FillLoop(); });
  return pool;
}

OverlayPool::~OverlayPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cancel_.store(true);
  cv_.notify_all();
  if (filler_.joinable()) filler_.join();
  for (Ready& r : ready_) (void)ShredFile(r.path);
}

void OverlayPool::FillLoop() {
  QemuImgOptions qo = options_.qemu_img;
  qo.cancel = &cancel_;
  for (;;) {
    std::string path;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || ready_.size() < options_.target; });
      if (stop_) return;
      path = options_.dir + "/o-" + tag_ + "-" + std::to_string(next_id_++) + ".qcow2";
    }
    SecretBytes secret = NewDiskSecret();
    Status s = CreateEncryptedOverlay(qo, path, options_.initial_size_bytes, secret);
    std::unique_lock<std::mutex> lock(mu_);
    if (!s.ok()) {
      ++stats_.fill_failures;
      cv_.wait_for(lock, kFillRetryDelay, [this] { return stop_; });
      continue;
    }
    if (stop_) {
      lock.unlock();
      (void)ShredFile(path);
      return;
    }
    ready_.push_back({path, std::move(secret)});
    ++stats_.made_in_background;
    cv_.notify_all();
  }
}

StatusOr<SecretBytes> OverlayPool::Take(const std::string& path, uint64_t virtual_size_bytes) {
  if (virtual_size_bytes == 0) return InvalidArgumentError("overlay: the disk size is 0");
  std::optional<Ready> ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ready_.empty() && virtual_size_bytes >= options_.initial_size_bytes) {
      ready.emplace(std::move(ready_.front()));
      ready_.pop_front();
      ++stats_.taken_from_pool;
    } else {
      ++stats_.made_on_slow_path;
    }
  }
  cv_.notify_all();
  QemuImgOptions qo = options_.qemu_img;
  qo.nice_value = 0;  // on the launch path
  if (!ready) {
    SecretBytes secret = NewDiskSecret();
    RETURN_IF_ERROR(CreateEncryptedOverlay(qo, path, virtual_size_bytes, secret));
    return secret;
  }
  // Never over an existing file (the caller's path is fresh).
  if (::renameat2(AT_FDCWD, ready->path.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
    const int e = errno;
    (void)ShredFile(ready->path);
    return ErrnoToStatus(e, "rename", path);
  }
  Status grown = GrowEncryptedOverlay(qo, path, virtual_size_bytes, ready->secret);
  if (!grown.ok()) {
    (void)ShredFile(path);
    return grown;
  }
  return std::move(ready->secret);
}

OverlayPool::Stats OverlayPool::GetStats() const {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  s.ready = ready_.size();
  return s;
}

bool OverlayPool::WaitUntilFull(int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                      [this] { return ready_.size() >= options_.target; });
}

}  // namespace vmseal::vm
