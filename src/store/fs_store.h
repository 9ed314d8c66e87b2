// The embedded object store: objects in a local directory, published
// atomically. The default backend of `vmseal csp serve`.
#ifndef VMSEAL_STORE_FS_STORE_H_
#define VMSEAL_STORE_FS_STORE_H_

#include <memory>
#include <mutex>
#include <string>

#include "base/env.h"
#include "store/object_store.h"

namespace vmseal::store {

// Layout under the root directory (see docs/api/csp.yaml for the service):
//   data/<H>.<G>  object content; H = hex SHA-256 of the key, G = a random
//                 generation id, so a replacing Put never touches the bytes a
//                 reader has open.
//   meta/<H>      JSON {"key", "size", "sha256", "data"}; the object exists
//                 exactly when this file exists. Written atomically.
//   staging/<id>.part  a staging's bytes (appended, fdatasync'd per append)
//   staging/<id>.json  {"key", "meta", "sealed"}; the staging exists when
//                      both exist
// Put streams into a temp file (AtomicOutputFile) while hashing, fsyncs and
// renames it to data/, then publishes meta/ atomically. StagePublish renames
// staging/<id>.part to data/ and publishes meta/ the same way (no copy). A
// crash at any point leaves either the old object or the new one, plus at
// most a temp file or an unreferenced data file, which Create sweeps once it
// has not been modified for Options::sweep_min_age_seconds (another process sharing the
// root may be writing it). Several processes may share one root: stagings
// are locked with flock(2) while appended, sealed or published.
class FsObjectStore final : public ObjectStore {
 public:
  struct Options {
    // Root directory; created (mode 0700) if missing. Required.
    std::string root;
    // File I/O seam for content and metadata. Default: Env::Default().
    Env* env = nullptr;
    // The sweep in Create removes an unreferenced data file or temp only
    // once it has not been modified for this long: another process sharing
    // the root may be writing it. Default 15 minutes; 0 sweeps at once.
    int64_t sweep_min_age_seconds = 15 * 60;
  };

  // Opens (creating if needed) the store and sweeps leftovers of interrupted
  // writes.
  static StatusOr<std::unique_ptr<FsObjectStore>> Create(const Options& options);

  StatusOr<ObjectInfo> Put(const std::string& key, Reader& source,
                           const PutOptions& options) override;
  StatusOr<std::unique_ptr<RandomAccessFile>> Get(const std::string& key) override;
  StatusOr<ObjectInfo> Stat(const std::string& key) override;
  StatusOr<std::vector<ObjectInfo>> List(const std::string& prefix) override;
  Status Delete(const std::string& key) override;

  Status StageCreate(const std::string& id, const std::string& key,
                     const std::string& meta) override;
  StatusOr<StagedInfo> StageStat(const std::string& id) override;
  StatusOr<uint64_t> StageAppend(const std::string& id, uint64_t offset_bytes, Reader& source,
                                 uint64_t max_size_bytes,
                                 const StagedBytesObserver& observe) override;
  StatusOr<StagedContent> StageSeal(const std::string& id) override;
  StatusOr<ObjectInfo> StagePublish(const std::string& id, const std::string& sha256_hex) override;
  Status StageRemove(const std::string& id) override;

  // Number of files removed by the sweep in Create (tests).
  int swept_files_for_testing() const { return swept_files_; }

 private:
  struct Meta {
    ObjectInfo info;
    std::string data_name;  // file name under data/
  };
  FsObjectStore(Env* env, std::string root, int64_t sweep_min_age_seconds)
      : env_(env), root_(std::move(root)), sweep_min_age_seconds_(sweep_min_age_seconds) {}
  Status Sweep();
  struct Staging {
    StagedInfo info;
    bool sealed = false;
  };
  StatusOr<Staging> ReadStaging(const std::string& id);
  Status WriteStagingMeta(const std::string& id, const Staging& s);
  std::string StagePath(const std::string& id, const char* ext) const;
  // Publishes `info` with content in data/`data_name` (already durable).
  StatusOr<ObjectInfo> PublishData(const ObjectInfo& info, const std::string& data_name);
  StatusOr<Meta> ReadMeta(const std::string& meta_path);
  std::string MetaPath(const std::string& key) const;

  Env* const env_;
  const std::string root_;
  const int64_t sweep_min_age_seconds_;
  // Serialises publication and removal of meta/ entries.
  std::mutex mu_;
  int swept_files_ = 0;
};

}  // namespace vmseal::store

#endif  // VMSEAL_STORE_FS_STORE_H_
