#include "nbd_export/disk_server.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "json/json.h"
#include "ovf/tar.h"

namespace vmseal::nbd_export {
namespace {

using Clock = std::chrono::steady_clock;

// Read-ahead while Open reads a remote package's metadata (the cache fetches
// at least one block).
constexpr uint64_t kMetadataReadaheadBytes = uint64_t{64} << 10;
// More than a stream's header plus one chunk's tag (docs/format/stream.md).
constexpr uint64_t kChunkOverheadBytes = uint64_t{64} << 10;
// The background fill's thread priority (nice), below nbdkit's request
// threads.
constexpr int kPrefetchNice = 10;
// The background fill begins this long after the export has its key.
constexpr auto kPrefetchStartDelay = std::chrono::milliseconds(1000);

// Hands a shared RangeSource to the cache, which wants to own one.
class SharedRangeSource final : public RangeSource {
 public:
  explicit SharedRangeSource(std::shared_ptr<RangeSource> s) : s_(std::move(s)) {}
  uint64_t size() const override { return s_->size(); }
  std::string identity() const override { return s_->identity(); }
  Status Fetch(uint64_t offset, std::span<uint8_t> out) override { return s_->Fetch(offset, out); }

 private:
  const std::shared_ptr<RangeSource> s_;
};

// A non-owning view of the cache, for Package::Open.
class CacheView final : public RandomAccessFile {
 public:
  explicit CacheView(const CiphertextCache* c) : c_(c) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    return c_->Read(offset, out);
  }
  StatusOr<uint64_t> Size() const override { return c_->Size(); }

 private:
  const CiphertextCache* const c_;
};

// The Env through which Package::Open reads a remote OVA: its one path is
// the cache (Package stats the path, so it is the cache's real data file).
class RemoteEnv final : public Env {
 public:
  explicit RemoteEnv(std::unique_ptr<CiphertextCache> cache) : cache_(std::move(cache)) {}
  CiphertextCache* cache() const { return cache_.get(); }
  StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override {
    if (path != cache_->data_path()) return NotFoundError("not in the remote package: " + path);
    return std::unique_ptr<RandomAccessFile>(new CacheView(cache_.get()));
  }
  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string&, mode_t) override {
    return UnimplementedError("remote package is read-only");
  }
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string&, mode_t) override {
    return UnimplementedError("remote package is read-only");
  }
  Status RenameFile(const std::string&, const std::string&) override {
    return UnimplementedError("remote package is read-only");
  }
  Status RemoveFile(const std::string&) override {
    return UnimplementedError("remote package is read-only");
  }
  bool FileExists(const std::string& path) override { return path == cache_->data_path(); }
  Status SyncDir(const std::string&) override { return OkStatus(); }

 private:
  const std::unique_ptr<CiphertextCache> cache_;
};

}  // namespace

StatusOr<std::unique_ptr<DiskServer>> DiskServer::Create(DiskServerOptions options,
                                                         SecretBytes data_key) {
  if (data_key.size() != stream::kDataKeyBytes) {
    return InvalidArgumentError("the data key must be 32 bytes");
  }
  ASSIGN_OR_RETURN(auto server, Open(std::move(options)));
  RETURN_IF_ERROR(server->Unlock(std::move(data_key)));
  return server;
}

StatusOr<std::unique_ptr<DiskServer>> DiskServer::Open(DiskServerOptions options) {
  const bool local = !options.package_path.empty();
  const bool remote = !options.remote.url.empty() || options.source_for_testing != nullptr;
  if (local == remote) {
    return InvalidArgumentError("exactly one source: a package path or a URL");
  }
  if (remote && options.cache_dir.empty()) {
    return InvalidArgumentError("a remote source needs a cache directory");
  }
  std::unique_ptr<DiskServer> server(new DiskServer(std::move(options)));
  RETURN_IF_ERROR(server->Init());
  return server;
}

DiskServer::DiskServer(DiskServerOptions options) : options_(std::move(options)) {}

Status DiskServer::Unlock(SecretBytes data_key) {
  if (data_key.size() != stream::kDataKeyBytes) {
    return InvalidArgumentError("the data key must be 32 bytes");
  }
  std::lock_guard<std::mutex> lock(reader_mu_);
  if (unlocked_.load()) return FailedPreconditionError("the export already has its key");
  ASSIGN_OR_RETURN(auto reader, package_->NewDiskReader(disk_id_, data_key));
  data_key_ = std::move(data_key);
  reader_ = std::move(reader);
  size_ = reader_->plaintext_size();
  unlocked_.store(true);
  return OkStatus();
}

DiskServer::~DiskServer() {
  StopPrefetch();
  if (events_fd_ >= 0) close(events_fd_);
}

Status DiskServer::Init() {
  if (!options_.events_path.empty()) {
    events_fd_ = open(options_.events_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                      0600);
    if (events_fd_ < 0) return ErrnoToStatus(errno, "open", options_.events_path);
  }
  ovf::PackageOpenOptions po;
  // Every chunk is authenticated as it is read; digesting the manifest would
  // read (and, remotely, download) the whole package before serving a byte.
  po.verify_manifest = false;
  std::string path = options_.package_path;
  Env* env = Env::Default();
  if (path.empty()) {
    std::unique_ptr<RangeSource> source;
    if (options_.source_for_testing != nullptr) {
      source = std::make_unique<SharedRangeSource>(options_.source_for_testing);
    } else {
      ASSIGN_OR_RETURN(source, NewHttpsRangeSource(options_.remote));
    }
    CiphertextCacheOptions co;
    co.dir = options_.cache_dir;
    co.readahead_bytes = options_.readahead_bytes;
    ASSIGN_OR_RETURN(auto cache, CiphertextCache::Open(std::move(source), co));
    // The tar headers, descriptor and manifest are small: one block per miss
    // (not 8 MiB of read-ahead each) until the disk's place is known.
    cache->SetReadahead(kMetadataReadaheadBytes);
    cache_ = cache.get();
    path = cache->data_path();
    remote_env_ = std::make_unique<RemoteEnv>(std::move(cache));
    env = remote_env_.get();
  }
  ASSIGN_OR_RETURN(package_, ovf::Package::Open(env, path, po));
  const ovf::EncryptionTag& tag = package_->tag();
  if (!options_.expected_image_id.empty() && tag.image_id != options_.expected_image_id) {
    return FailedPreconditionError("the package is not the expected image");
  }
  if (!options_.expected_tenant.empty() && tag.tenant != options_.expected_tenant) {
    return FailedPreconditionError("the package is not the expected tenant's");
  }
  if (package_->files().empty()) return InvalidArgumentError("the package has no files");
  disk_id_ = options_.disk_id.empty() ? package_->files()[0].id : options_.disk_id;
  const ovf::FileRef* ref = nullptr;
  for (const ovf::FileRef& f : package_->files()) {
    if (f.id == disk_id_) ref = &f;
  }
  if (ref == nullptr) return NotFoundError("no disk with id " + disk_id_.substr(0, 100));
  chunk_bytes_ = tag.chunk_size_bytes != 0 ? tag.chunk_size_bytes
                                           : stream::kDefaultChunkSizeBytes;
  if (cache_ != nullptr) {
    // Where the disk's ciphertext lies in the OVA: what the prefetch fills.
    CacheView view(cache_);
    ASSIGN_OR_RETURN(auto tar, ovf::TarReader::Open(&view));
    const ovf::TarMember* m = tar->Find(ref->href);
    if (m == nullptr) return NotFoundError("missing file: " + ref->href);
    member_offset_ = m->data_offset;
    member_size_ = m->size;
    // What Unlock reads (the stream's header and its final chunk) and what
    // is read first after it (the first chunk: the disk-format inspection,
    // the boot sector), fetched now while the key is still on its way. A
    // chunk's ciphertext is its plaintext plus a tag, after the header: a
    // little more than chunk_bytes_ from either end covers both, which may
    // straddle a cache block (a miss there would otherwise fetch a whole
    // read-ahead after the key).
    if (member_size_ > 0) {
      const std::atomic<bool> no_stop{false};
      const uint64_t edge = std::min(member_size_, chunk_bytes_ + kChunkOverheadBytes);
      RETURN_IF_ERROR(cache_->Fill(member_offset_, edge, &no_stop));
      RETURN_IF_ERROR(cache_->Fill(member_offset_ + member_size_ - edge, edge, &no_stop));
    }
    cache_->SetReadahead(options_.readahead_bytes);
    WriteProgress();  // replaces what an earlier process left
  }
  return OkStatus();
}

Status DiskServer::Read(uint64_t offset, std::span<uint8_t> out) {
  if (!unlocked_.load()) return FailedPreconditionError("the export has no key yet");
  last_read_ns_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  if (offset > size_ || out.size() > size_ - offset) {
    return OutOfRangeError("read beyond the end of the disk");
  }
  size_t done = 0;
  while (done < out.size()) {
    const uint64_t pos = offset + done;
    const uint64_t index = pos / chunk_bytes_;
    const uint64_t chunk_start = index * chunk_bytes_;
    const uint64_t chunk_len = std::min(chunk_bytes_, size_ - chunk_start);
    const uint64_t from = pos - chunk_start;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(chunk_len - from, out.size() - done));
    if (from == 0 && n == chunk_len) {
      // A whole chunk: decrypt straight into the caller's buffer.
      RETURN_IF_ERROR(ReadChunk(index, out.subspan(done, n)));
    } else {
      ASSIGN_OR_RETURN(auto chunk, DecryptedChunk(index));
      std::memcpy(out.data() + done, chunk->bytes.get() + from, n);
    }
    done += n;
  }
  return OkStatus();
}

Status DiskServer::ReadChunk(uint64_t index, std::span<uint8_t> out) {
  std::shared_ptr<stream::StreamReader> reader;
  {
    std::lock_guard<std::mutex> lock(reader_mu_);
    if (failed_chunks_.count(index)) return DataLossError("decryption failed");
    reader = reader_;
  }
  Status s = ReadChunkWith(*reader, index, out);
  if (s.code() == StatusCode::kDataLoss) return ConfirmAuthFailure(index, out);
  return s;
}

Status DiskServer::ReadChunkWith(const stream::StreamReader& reader, uint64_t index,
                                 std::span<uint8_t> out) {
  auto n = reader.ReadAt(index * chunk_bytes_, out);
  if (!n.ok()) return n.status();
  if (*n != out.size()) return InternalError("short read from the stream");
  return OkStatus();
}

Status DiskServer::ConfirmAuthFailure(uint64_t index, std::span<uint8_t> out) {
  // The stream reader refuses every chunk once one failed, so a DATA_LOSS
  // here may be another thread's chunk failing just before this read began
  // with the same reader. This export confines a failure to its chunk: a
  // fresh reader (which authenticates the header and the final chunk again)
  // reads this chunk once more; only if that fails too is the chunk
  // recorded as failed, for good. Either way the others are served by a
  // fresh reader from now on. One confirmation at a time (failures are
  // rare); the bytes in `out` are authenticated or wiped by the reader.
  bool first = false;
  Status s;
  {
    std::lock_guard<std::mutex> lock(reader_mu_);
    if (failed_chunks_.count(index)) return DataLossError("decryption failed");
    ASSIGN_OR_RETURN(auto fresh, package_->NewDiskReader(disk_id_, data_key_));
    s = ReadChunkWith(*fresh, index, out);
    if (s.code() == StatusCode::kDataLoss) {
      first = failed_chunks_.insert(index).second;
      // `fresh` now refuses everything too.
      auto again = package_->NewDiskReader(disk_id_, data_key_);
      if (again.ok()) reader_ = std::move(again).value();
    } else {
      reader_ = std::move(fresh);
    }
  }
  if (first) {
    const uint64_t offset = index * chunk_bytes_;
    AppendEvent(DumpJson({{"event", "chunk_auth_failed"},
                          {"disk", disk_id_},
                          {"offset", offset},
                          {"length", std::min(chunk_bytes_, size_ - offset)}}));
  }
  return s;
}

DiskServer::Chunk::~Chunk() {
  if (bytes != nullptr) WipeBytes({bytes.get(), size});
}

StatusOr<std::shared_ptr<const DiskServer::Chunk>> DiskServer::DecryptedChunk(
    uint64_t index) {
  std::promise<ChunkResult> promise;
  std::shared_future<ChunkResult> future;
  bool owner = false;
  {
    std::lock_guard<std::mutex> lock(lru_mu_);
    auto it = chunks_.find(index);
    if (it != chunks_.end()) {
      lru_.remove(index);
      lru_.push_front(index);
      future = it->second;
    } else {
      future = promise.get_future().share();
      chunks_.emplace(index, future);
      lru_.push_front(index);
      while (lru_.size() > std::max<size_t>(1, options_.plaintext_cache_chunks)) {
        chunks_.erase(lru_.back());
        lru_.pop_back();
      }
      owner = true;
    }
  }
  if (owner) {
    const uint64_t len = std::min(chunk_bytes_, size_ - index * chunk_bytes_);
    auto chunk = std::make_shared<Chunk>();
    chunk->bytes.reset(new uint8_t[len]);
    chunk->size = len;
    Status s = ReadChunk(index, {chunk->bytes.get(), chunk->size});
    if (s.ok()) {
      promise.set_value(std::shared_ptr<const Chunk>(std::move(chunk)));
    } else {
      promise.set_value(s);
      // Failures are not cached here (ReadChunk keeps auth failures sticky).
      std::lock_guard<std::mutex> lock(lru_mu_);
      auto it = chunks_.find(index);
      if (it != chunks_.end()) {
        chunks_.erase(it);
        lru_.remove(index);
      }
    }
  }
  return future.get();
}

void DiskServer::AppendEvent(const std::string& line) {
  if (events_fd_ < 0) return;
  const std::string text = line + "\n";
  // One write with O_APPEND: lines from several threads never interleave.
  ssize_t w = write(events_fd_, text.data(), text.size());
  (void)w;
}

void DiskServer::StartPrefetch() {
  if (cache_ == nullptr || !options_.prefetch || prefetch_thread_.joinable()) {
    if (cache_ != nullptr) WriteProgress();
    return;
  }
  stop_ = false;
  prefetch_thread_ = std::thread([this] { PrefetchLoop(); });
}

void DiskServer::StopPrefetch() {
  stop_ = true;
  if (prefetch_thread_.joinable()) prefetch_thread_.join();
}

void DiskServer::PrefetchLoop() {
  // The fill runs behind what the guest reads: its thread (and the fetch
  // threads it starts, which inherit it) at a lower CPU priority than
  // nbdkit's request threads, and between steps it gives way while the
  // guest is reading (a booting guest's reads are what it waits for), at
  // most kMaxYield per step so that the fill still ends. Front to back, so
  // the first bytes of the disk (where boot reads) come first.
  (void)setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), kPrefetchNice);
  constexpr uint64_t kStepBytes = uint64_t{16} << 20;
  constexpr auto kGuestActive = std::chrono::milliseconds(150);
  constexpr auto kMaxYield = std::chrono::seconds(1);
  // Nor does it start at once: the export gets its key just before qemu
  // starts, which is then what the host waits for.
  for (const auto start = Clock::now();
       !stop_.load() && Clock::now() - start < kPrefetchStartDelay;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto last_write = Clock::now() - std::chrono::seconds(1);
  bool reported_failure = false;
  uint64_t pos = 0;
  while (!stop_.load() && pos < member_size_) {
    const auto yield_end = Clock::now() + kMaxYield;
    while (!stop_.load() && Clock::now() < yield_end &&
           Clock::now() - Clock::time_point(Clock::duration(last_read_ns_.load(
                              std::memory_order_relaxed))) < kGuestActive) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const uint64_t n = std::min(kStepBytes, member_size_ - pos);
    Status s = cache_->Fill(member_offset_ + pos, n, &stop_);
    if (!s.ok()) {
      if (s.code() == StatusCode::kCancelled) break;
      if (!reported_failure) {
        AppendEvent(DumpJson({{"event", "prefetch_retrying"}, {"disk", disk_id_},
                              {"error", s.ToString()}}));
        reported_failure = true;
      }
      for (int i = 0; i < 20 && !stop_.load(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    reported_failure = false;
    pos += n;
    if (Clock::now() - last_write > std::chrono::milliseconds(250)) {
      WriteProgress();
      last_write = Clock::now();
    }
  }
  if (pos >= member_size_) {
    WriteProgress();
    AppendEvent(DumpJson({{"event", "prefetch_complete"}, {"disk", disk_id_},
                          {"bytes", member_size_},
                          {"fetched_bytes", cache_->fetched_bytes()}}));
  }
}

PrefetchProgress DiskServer::Progress() const {
  PrefetchProgress p;
  if (cache_ == nullptr) {
    p.cached_bytes = p.total_bytes = size_;
    p.complete = true;
    return p;
  }
  p.total_bytes = member_size_;
  p.cached_bytes = cache_->CachedBytesIn(member_offset_, member_size_);
  p.complete = p.cached_bytes == p.total_bytes;
  return p;
}

void DiskServer::WriteProgress() {
  const PrefetchProgress p = Progress();
  const std::string text = DumpJson({{"cached_bytes", p.cached_bytes},
                                     {"total_bytes", p.total_bytes},
                                     {"complete", p.complete}});
  (void)WriteStringToFileAtomic(Env::Default(), options_.cache_dir + "/progress.json", text,
                                0600);
}

}  // namespace vmseal::nbd_export
