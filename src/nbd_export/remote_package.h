// A sealed package (OVA) read by HTTPS Range requests through a ciphertext
// cache, opened without downloading it: the host agent reads the descriptor,
// the encryption tag and the wrapped key this way before the key release,
// and the disks stream later through Export (docs/nbd-export.md).
#ifndef VMSEAL_NBD_EXPORT_REMOTE_PACKAGE_H_
#define VMSEAL_NBD_EXPORT_REMOTE_PACKAGE_H_

#include <memory>
#include <string>

#include "base/env.h"
#include "base/status.h"
#include "nbd_export/ciphertext_cache.h"
#include "nbd_export/range_source.h"
#include "ovf/package.h"

namespace vmseal::nbd_export {

// The Env through which Package::Open reads a remote OVA: its one path is
// the cache's data file (Package stats the path, so it is a real file).
class RemotePackageEnv final : public Env {
 public:
  explicit RemotePackageEnv(std::unique_ptr<CiphertextCache> cache);
  CiphertextCache* cache() const { return cache_.get(); }
  StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override;
  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string&, mode_t) override;
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string&, mode_t) override;
  Status RenameFile(const std::string&, const std::string&) override;
  Status RemoveFile(const std::string&) override;
  bool FileExists(const std::string& path) override;
  Status SyncDir(const std::string&) override { return OkStatus(); }

 private:
  const std::unique_ptr<CiphertextCache> cache_;
};

// A remote package opened for its metadata.
struct RemotePackage {
  std::unique_ptr<RemotePackageEnv> env;  // owns the cache
  std::unique_ptr<ovf::Package> package;  // reads through env
};

// Opens the OVA at `remote.url` through a cache in `cache_dir` with small
// (64 KiB) blocks and no read-ahead, so only the tar headers, descriptor
// and manifest are fetched. The manifest is not digested (that would read
// every byte): each disk chunk is authenticated when an export reads it.
StatusOr<RemotePackage> OpenRemotePackage(const HttpsRangeSourceOptions& remote,
                                          const std::string& cache_dir,
                                          const ovf::PackageOpenOptions& options);

}  // namespace vmseal::nbd_export

#endif  // VMSEAL_NBD_EXPORT_REMOTE_PACKAGE_H_
