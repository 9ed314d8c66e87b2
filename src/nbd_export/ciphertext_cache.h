// A local cache of a remote sealed package: CIPHERTEXT only, in a sparse file
// beside a bitmap of the blocks already fetched, both persisted so that a
// restarted export reuses what an earlier one fetched.
//
// Files in Options::dir (mode 0600):
//   cache.meta    JSON {"version":1,"identity":...,"size":N,"block_bytes":B}
//   cache.data    sparse file of the remote object's size; present blocks
//                 hold the remote bytes at the same offsets
//   cache.bitmap  one byte per block, 1 = present in cache.data
// A block's bitmap byte is written only after its data is on disk
// (fdatasync), so a crash never marks a block whose bytes were lost. A cache
// whose meta names another object, size or block size is discarded. Nothing
// here is trusted for integrity: the stream's AEAD authenticates every chunk
// read through it.
#ifndef VMSEAL_NBD_EXPORT_CIPHERTEXT_CACHE_H_
#define VMSEAL_NBD_EXPORT_CIPHERTEXT_CACHE_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "nbd_export/range_source.h"

namespace vmseal::nbd_export {

struct CiphertextCacheOptions {
  // Directory of the cache files; created if missing. Required.
  std::string dir;
  // Granularity of the bitmap. Default 1 MiB.
  uint64_t block_bytes = uint64_t{1} << 20;
  // A read that misses fetches at least this many bytes from its start
  // (whole blocks, up to the next present block or the end), so sequential
  // reads become few large range requests. Default 8 MiB.
  uint64_t readahead_bytes = uint64_t{8} << 20;
  // fdatasync the data before its blocks are marked present in
  // cache.bitmap (crash safety against power loss; a killed process needs no
  // sync). Default true.
  bool sync = true;
  // Fetched blocks are recorded in cache.bitmap (after one fdatasync of the
  // data) once this many bytes are pending or a second has passed, and by
  // Flush. A crash loses at most that much: it is fetched again. Default
  // 64 MiB.
  uint64_t flush_bytes = uint64_t{64} << 20;
  // Concurrent range requests of Fill. Default 2.
  int fill_streams = 2;
};

// A RandomAccessFile over a RangeSource that keeps what it fetched. Read
// fetches the missing blocks it covers (coalesced, with read-ahead; a block
// wanted by two readers is fetched once) and then reads the local file.
// Thread-safe.
class CiphertextCache final : public RandomAccessFile {
 public:
  static StatusOr<std::unique_ptr<CiphertextCache>> Open(std::unique_ptr<RangeSource> source,
                                                         const CiphertextCacheOptions& options);
  ~CiphertextCache() override;

  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override;
  StatusOr<uint64_t> Size() const override { return size_; }

  // Fetches every missing block of [offset, offset + length) in readahead-
  // sized requests, front to back. Returns CANCELLED when *stop becomes true.
  Status Fill(uint64_t offset, uint64_t length, const std::atomic<bool>* stop);
  // Records every fetched block in cache.bitmap (after syncing the data).
  Status Flush() const;
  // Bytes of [offset, offset + length) held locally.
  uint64_t CachedBytesIn(uint64_t offset, uint64_t length) const;
  // Changes the least bytes a missing read fetches (readahead_bytes), e.g.
  // small while only a package's metadata is read, then the configured
  // value. Thread-safe; reads already fetching keep their size.
  void SetReadahead(uint64_t bytes) { readahead_bytes_.store(std::max<uint64_t>(1, bytes)); }
  // Bytes fetched from the source by this object (not those found cached).
  uint64_t fetched_bytes() const { return fetched_bytes_.load(); }
  // The sparse data file (a real path, for code that needs one).
  const std::string& data_path() const { return data_path_; }

 private:
  enum BlockState : uint8_t { kMissing = 0, kPresent = 1, kFetching = 2 };

  CiphertextCache(std::unique_ptr<RangeSource> source, CiphertextCacheOptions options,
                  uint64_t size, int data_fd, int bitmap_fd, std::string data_path,
                  std::vector<uint8_t> state);
  // Makes blocks [first, last] present, fetching runs of missing ones.
  Status Ensure(uint64_t first, uint64_t last, uint64_t min_run_blocks) const;
  // Fetches blocks [first, first + count) (marked kFetching by the caller).
  Status FetchRun(uint64_t first, uint64_t count) const;
  uint64_t BlockEnd(uint64_t block) const;

  const std::unique_ptr<RangeSource> source_;
  const CiphertextCacheOptions options_;
  const uint64_t size_;
  const int data_fd_;
  const int bitmap_fd_;
  const std::string data_path_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  mutable std::vector<uint8_t> state_;  // BlockState per block, guarded by mu_
  // Fetched runs (first block, count) not yet in cache.bitmap, guarded by mu_.
  mutable std::vector<std::pair<uint64_t, uint64_t>> unrecorded_;
  mutable uint64_t unrecorded_bytes_ = 0;                        // guarded by mu_
  mutable std::chrono::steady_clock::time_point last_flush_;     // guarded by mu_
  mutable std::mutex flush_mu_;  // one Flush at a time
  mutable std::atomic<uint64_t> fetched_bytes_{0};
  std::atomic<uint64_t> readahead_bytes_;  // options_.readahead_bytes until SetReadahead
};

}  // namespace vmseal::nbd_export

#endif  // VMSEAL_NBD_EXPORT_CIPHERTEXT_CACHE_H_
