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
// Put streams into a temp file (AtomicOutputFile) while hashing, fsyncs and
// renames it to data/, then publishes meta/ atomically. A crash at any point
// leaves either the old object or the new one, plus at most a temp file or an
// unreferenced data file, which Create sweeps.
class FsObjectStore final : public ObjectStore {
 public:
  struct Options {
    // Root directory; created (mode 0700) if missing. Required.
    std::string root;
    // File I/O seam for content and metadata. Default: Env::Default().
    Env* env = nullptr;
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

  // Number of files removed by the sweep in Create (tests).
  int swept_files_for_testing() const { return swept_files_; }

 private:
  struct Meta {
    ObjectInfo info;
    std::string data_name;  // file name under data/
  };
  FsObjectStore(Env* env, std::string root) : env_(env), root_(std::move(root)) {}
  Status Sweep();
  StatusOr<Meta> ReadMeta(const std::string& meta_path);
  std::string MetaPath(const std::string& key) const;

  Env* const env_;
  const std::string root_;
  // Serialises publication and removal of meta/ entries.
  std::mutex mu_;
  int swept_files_ = 0;
};

}  // namespace vmseal::store

#endif  // VMSEAL_STORE_FS_STORE_H_
