// The server side of the streamed-launch export: one disk of a sealed
// package, decrypted on demand. This is what the nbdkit plugin (plugin.cc)
// runs; it has no nbdkit dependency, so it is tested directly too.
//
// Ciphertext comes from a local package (OVA, directory or .ovf) read in
// place, or from a remote OVA read by HTTPS Range requests through a
// persistent CIPHERTEXT cache (ciphertext_cache.h) that a background thread
// fills. Plaintext exists only in memory (the caller's buffers and a small
// cache of decrypted chunks); nothing here writes plaintext to a file.
#ifndef VMSEAL_NBD_EXPORT_DISK_SERVER_H_
#define VMSEAL_NBD_EXPORT_DISK_SERVER_H_

#include <atomic>
#include <future>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "nbd_export/ciphertext_cache.h"
#include "nbd_export/range_source.h"
#include "ovf/package.h"
#include "stream/stream.h"

namespace vmseal::nbd_export {

struct DiskServerOptions {
  // Local source: the sealed package (.ova file, package directory or .ovf).
  // Exactly one of package_path and remote.url is set.
  std::string package_path;
  // Remote source: an OVA by HTTPS Range requests (see range_source.h).
  HttpsRangeSourceOptions remote;
  // Remote source: the directory of the ciphertext cache (and progress.json).
  std::string cache_dir;
  // The ovf:id of the disk to serve; empty = the first file of References.
  std::string disk_id;
  // When set, the package's tag must carry this image id / tenant
  // (FAILED_PRECONDITION otherwise), so a swapped package is refused by name
  // before any key is used on it.
  std::string expected_image_id;
  std::string expected_tenant;
  // Where events are appended, one JSON object per line (O_APPEND); empty =
  // none. E.g. {"event":"chunk_auth_failed","disk":"file1","offset":N,"length":L}.
  std::string events_path;
  // Remote source: see CiphertextCacheOptions. Default 8 MiB.
  uint64_t readahead_bytes = uint64_t{8} << 20;
  // Remote source: fill the whole cache in the background (StartPrefetch).
  bool prefetch = true;
  // Decrypted chunks kept in memory for reads smaller than a chunk: enough
  // for the requests a client keeps in flight over several connections
  // (nbdcopy: 4 x 64 x 256 KiB), so each chunk is decrypted once. Default 64.
  size_t plaintext_cache_chunks = 64;
  // A remote source for tests and benchmarks instead of HTTPS (not owned by
  // options; moved in by Create). Null = use `remote`.
  std::shared_ptr<RangeSource> source_for_testing;
};

// Progress of the background fill, as written to <cache_dir>/progress.json.
struct PrefetchProgress {
  uint64_t cached_bytes = 0;  // of the disk's ciphertext held locally
  uint64_t total_bytes = 0;   // the disk's ciphertext size
  bool complete = false;      // every byte local: the source is no longer needed
};

// Serves one disk. Thread-safe; Read may be called concurrently.
class DiskServer {
 public:
  // Opens the package (structure, descriptor, tag; the manifest is not
  // digested: every chunk is authenticated when read), checks the expected
  // identity, and opens the disk's stream with `data_key` (DATA_LOSS
  // "decryption failed" for a wrong key or context, as stream::StreamReader).
  static StatusOr<std::unique_ptr<DiskServer>> Create(DiskServerOptions options,
                                                      SecretBytes data_key);
  // Create in two steps, so that the package is opened while the host still
  // waits for the key: Open does everything that needs no key (structure,
  // descriptor, tag, the expected identity, where the disk lies) and, for a
  // remote source, reads the metadata with a small read-ahead and fetches
  // the blocks Unlock reads (the disk stream's header and final chunk);
  // then the configured read-ahead applies. Nothing is served before
  // Unlock: Read fails with FAILED_PRECONDITION and size() is 0.
  static StatusOr<std::unique_ptr<DiskServer>> Open(DiskServerOptions options);
  // Opens the disk's stream with `data_key` (DATA_LOSS "decryption failed"
  // for a wrong key or context). Once only (FAILED_PRECONDITION after).
  // Not concurrent with Read.
  Status Unlock(SecretBytes data_key);
  ~DiskServer();

  // Plaintext size of the disk.
  uint64_t size() const { return size_; }
  // Fills `out` with the plaintext at `offset` (offset + out.size() <=
  // size()). A chunk that does not authenticate fails the read with
  // DATA_LOSS "decryption failed", is recorded as an event once, and stays
  // failed for every later read that touches it; other chunks keep serving.
  Status Read(uint64_t offset, std::span<uint8_t> out);

  // Remote source: starts the thread that fills the cache (no-op for a local
  // source or with prefetch off). Call after any fork.
  void StartPrefetch();
  // Stops the fill thread (idempotent; also done by the destructor).
  void StopPrefetch();
  // Current progress (local sources are always complete).
  PrefetchProgress Progress() const;

 private:
  explicit DiskServer(DiskServerOptions options);
  Status Init();
  struct Chunk;
  StatusOr<std::shared_ptr<const Chunk>> DecryptedChunk(uint64_t index);
  Status ReadChunk(uint64_t index, std::span<uint8_t> out);
  Status ReadChunkWith(const stream::StreamReader& reader, uint64_t index,
                       std::span<uint8_t> out);
  Status ConfirmAuthFailure(uint64_t index, std::span<uint8_t> out);
  void AppendEvent(const std::string& line);
  void PrefetchLoop();
  void WriteProgress();

  const DiskServerOptions options_;
  SecretBytes data_key_;  // set once by Unlock, before any Read
  std::atomic<bool> unlocked_{false};
  std::unique_ptr<Env> remote_env_;
  CiphertextCache* cache_ = nullptr;  // owned by remote_env_ (remote source only)
  std::unique_ptr<ovf::Package> package_;
  std::string disk_id_;
  uint64_t size_ = 0;
  uint64_t chunk_bytes_ = 0;
  uint64_t member_offset_ = 0;  // remote: the disk's ciphertext in the OVA
  uint64_t member_size_ = 0;
  int events_fd_ = -1;

  std::mutex reader_mu_;
  std::shared_ptr<stream::StreamReader> reader_;  // guarded by reader_mu_
  std::set<uint64_t> failed_chunks_;              // guarded by reader_mu_

  // Decrypted chunks for partial reads; a chunk wanted by several readers at
  // once is decrypted once (they share the future).
  // A decrypted chunk: plaintext, wiped when the last reader lets it go
  // (evicted from the cache and no read copying from it any more).
  struct Chunk {
    std::unique_ptr<uint8_t[]> bytes;  // not zero-filled: written whole
    size_t size = 0;
    Chunk() = default;
    Chunk(const Chunk&) = delete;
    Chunk& operator=(const Chunk&) = delete;
    ~Chunk();
  };
  using ChunkResult = StatusOr<std::shared_ptr<const Chunk>>;
  std::mutex lru_mu_;
  std::list<uint64_t> lru_;  // most recent first
  std::unordered_map<uint64_t, std::shared_future<ChunkResult>> chunks_;

  // When the last Read began (steady clock ticks): the fill gives way to
  // a reading guest.
  std::atomic<int64_t> last_read_ns_{0};
  std::atomic<bool> stop_{false};
  std::thread prefetch_thread_;
};

}  // namespace vmseal::nbd_export

#endif  // VMSEAL_NBD_EXPORT_DISK_SERVER_H_
