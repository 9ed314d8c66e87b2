#include "nbd_export/ciphertext_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <thread>

#include "json/json.h"

namespace vmseal::nbd_export {
namespace {

constexpr int kMetaVersion = 1;

Status PwriteAll(int fd, const uint8_t* data, size_t n, uint64_t offset, const char* what) {
  while (n > 0) {
    ssize_t w = pwrite(fd, data, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "write", what);
    }
    data += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return OkStatus();
}

StatusOr<size_t> PreadAll(int fd, uint8_t* data, size_t n, uint64_t offset, const char* what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = pread(fd, data + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "read", what);
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

}  // namespace

StatusOr<std::unique_ptr<CiphertextCache>> CiphertextCache::Open(
    std::unique_ptr<RangeSource> source, const CiphertextCacheOptions& options) {
  if (options.dir.empty()) return InvalidArgumentError("cache: a directory is required");
  if (options.block_bytes < 4096 || options.block_bytes > (uint64_t{64} << 20)) {
    return InvalidArgumentError("cache: block size must be in [4 KiB, 64 MiB]");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) return ErrnoToStatus(ec.value(), "create", options.dir);
  chmod(options.dir.c_str(), 0700);

  const uint64_t size = source->size();
  const uint64_t blocks = (size + options.block_bytes - 1) / options.block_bytes;
  const nlohmann::json meta = {{"version", kMetaVersion},
                               {"identity", source->identity()},
                               {"size", size},
                               {"block_bytes", options.block_bytes}};
  const std::string meta_path = options.dir + "/cache.meta";
  const std::string data_path = options.dir + "/cache.data";
  const std::string bitmap_path = options.dir + "/cache.bitmap";

  // Reuse the files only when they describe this very object.
  bool reuse = false;
  if (auto text = ReadFileToString(Env::Default(), meta_path); text.ok()) {
    auto old = ParseJsonObject(*text, "cache meta");
    reuse = old.ok() && *old == meta;
  }
  if (!reuse) {
    unlink(data_path.c_str());
    unlink(bitmap_path.c_str());
    RETURN_IF_ERROR(
        WriteStringToFileAtomic(Env::Default(), meta_path, DumpJson(meta), 0600));
  }
  int data_fd = open(data_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (data_fd < 0) return ErrnoToStatus(errno, "open", data_path);
  int bitmap_fd = open(bitmap_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (bitmap_fd < 0) {
    int err = errno;
    close(data_fd);
    return ErrnoToStatus(err, "open", bitmap_path);
  }
  auto fail = [&](Status s) {
    close(data_fd);
    close(bitmap_fd);
    return s;
  };
  if (ftruncate(data_fd, static_cast<off_t>(size)) != 0) {
    return fail(ErrnoToStatus(errno, "size", data_path));
  }
  std::vector<uint8_t> state(blocks, kMissing);
  auto n = PreadAll(bitmap_fd, state.data(), state.size(), 0, "cache.bitmap");
  if (!n.ok()) return fail(n.status());
  for (uint8_t& s : state) s = (s == kPresent) ? kPresent : kMissing;
  if (ftruncate(bitmap_fd, static_cast<off_t>(blocks)) != 0) {
    return fail(ErrnoToStatus(errno, "size", bitmap_path));
  }
  return std::unique_ptr<CiphertextCache>(new CiphertextCache(
      std::move(source), options, size, data_fd, bitmap_fd, data_path, std::move(state)));
}

CiphertextCache::CiphertextCache(std::unique_ptr<RangeSource> source,
                                 CiphertextCacheOptions options, uint64_t size, int data_fd,
                                 int bitmap_fd, std::string data_path, std::vector<uint8_t> state)
    : source_(std::move(source)),
      options_(std::move(options)),
      size_(size),
      data_fd_(data_fd),
      bitmap_fd_(bitmap_fd),
      data_path_(std::move(data_path)),
      state_(std::move(state)),
      last_flush_(std::chrono::steady_clock::now()),
      readahead_bytes_(std::max<uint64_t>(1, options_.readahead_bytes)) {}

CiphertextCache::~CiphertextCache() {
  (void)Flush();
  close(data_fd_);
  close(bitmap_fd_);
}

uint64_t CiphertextCache::BlockEnd(uint64_t block) const {
  return std::min(size_, (block + 1) * options_.block_bytes);
}

StatusOr<size_t> CiphertextCache::Read(uint64_t offset, std::span<uint8_t> out) const {
  if (offset >= size_ || out.empty()) return size_t{0};
  const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), size_ - offset));
  const uint64_t b = options_.block_bytes;
  RETURN_IF_ERROR(Ensure(offset / b, (offset + n - 1) / b,
                         std::max<uint64_t>(1, readahead_bytes_.load() / b)));
  return PreadAll(data_fd_, out.data(), n, offset, "cache.data");
}

Status CiphertextCache::Ensure(uint64_t first, uint64_t last, uint64_t min_run_blocks) const {
  const uint64_t blocks = state_.size();
  std::unique_lock<std::mutex> lock(mu_);
  for (uint64_t i = first; i <= last;) {
    if (state_[i] == kPresent) {
      ++i;
      continue;
    }
    if (state_[i] == kFetching) {
      cv_.wait(lock, [&] { return state_[i] != kFetching; });
      continue;  // present now, or missing again after a failed fetch
    }
    // A run of missing blocks from i: at least up to `last`, extended by the
    // read-ahead, ending before the first block that is not missing.
    uint64_t end = i;
    const uint64_t want = std::max(last + 1, i + min_run_blocks);
    while (end < blocks && end < want && state_[end] == kMissing) state_[end++] = kFetching;
    lock.unlock();
    Status s = FetchRun(i, end - i);
    lock.lock();
    for (uint64_t j = i; j < end; ++j) state_[j] = s.ok() ? kPresent : kMissing;
    cv_.notify_all();
    RETURN_IF_ERROR(s);
    i = end;
  }
  return OkStatus();
}

Status CiphertextCache::FetchRun(uint64_t first, uint64_t count) const {
  const uint64_t from = first * options_.block_bytes;
  const uint64_t to = BlockEnd(first + count - 1);
  std::vector<uint8_t> buf(to - from);
  RETURN_IF_ERROR(source_->Fetch(from, buf));
  RETURN_IF_ERROR(PwriteAll(data_fd_, buf.data(), buf.size(), from, "cache.data"));
  fetched_bytes_ += buf.size();
  bool flush = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    unrecorded_.emplace_back(first, count);
    unrecorded_bytes_ += buf.size();
    flush = unrecorded_bytes_ >= options_.flush_bytes ||
            std::chrono::steady_clock::now() - last_flush_ > std::chrono::seconds(1);
  }
  return flush ? Flush() : OkStatus();
}

Status CiphertextCache::Flush() const {
  std::lock_guard<std::mutex> flush_lock(flush_mu_);
  std::vector<std::pair<uint64_t, uint64_t>> runs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    runs.swap(unrecorded_);
    unrecorded_bytes_ = 0;
    last_flush_ = std::chrono::steady_clock::now();
  }
  if (runs.empty()) return OkStatus();
  // The data first: a block is marked only once its bytes are durable.
  if (options_.sync && fdatasync(data_fd_) != 0) return ErrnoToStatus(errno, "sync", "cache.data");
  for (const auto& [first, count] : runs) {
    const std::vector<uint8_t> present(count, kPresent);
    RETURN_IF_ERROR(PwriteAll(bitmap_fd_, present.data(), count, first, "cache.bitmap"));
  }
  return OkStatus();
}

Status CiphertextCache::Fill(uint64_t offset, uint64_t length, const std::atomic<bool>* stop) {
  if (offset >= size_ || length == 0) return OkStatus();
  const uint64_t end = std::min(size_, offset + length);
  const uint64_t b = options_.block_bytes;
  const uint64_t step = std::max<uint64_t>(1, readahead_bytes_.load() / b);
  const uint64_t last = (end - 1) / b;
  // Workers take readahead-sized steps in order, so the front fills first.
  std::atomic<uint64_t> next{offset / b};
  std::mutex error_mu;
  Status error;
  auto work = [&] {
    while (true) {
      if (stop != nullptr && stop->load()) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (error.ok()) error = CancelledError("cache fill stopped");
        return;
      }
      const uint64_t i = next.fetch_add(step);
      if (i > last) return;
      Status s = Ensure(i, std::min(last, i + step - 1), step);
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (error.ok()) error = s;
        next = last + 1;  // the others stop at their next step
        return;
      }
    }
  };
  std::vector<std::thread> helpers;
  for (int i = 1; i < options_.fill_streams; ++i) helpers.emplace_back(work);
  work();
  for (std::thread& t : helpers) t.join();
  RETURN_IF_ERROR(error);
  return Flush();
}

uint64_t CiphertextCache::CachedBytesIn(uint64_t offset, uint64_t length) const {
  if (offset >= size_ || length == 0) return 0;
  const uint64_t end = std::min(size_, offset + length);
  const uint64_t b = options_.block_bytes;
  uint64_t total = 0;
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t i = offset / b; i <= (end - 1) / b; ++i) {
    if (state_[i] != kPresent) continue;
    const uint64_t lo = std::max(offset, i * b), hi = std::min(end, BlockEnd(i));
    total += hi - lo;
  }
  return total;
}

}  // namespace vmseal::nbd_export
