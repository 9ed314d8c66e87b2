#include "nbd_export/remote_package.h"

namespace vmseal::nbd_export {
namespace {

// A non-owning view of the cache.
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

}  // namespace

RemotePackageEnv::RemotePackageEnv(std::unique_ptr<CiphertextCache> cache)
    : cache_(std::move(cache)) {}

StatusOr<std::unique_ptr<RandomAccessFile>> RemotePackageEnv::NewRandomAccessFile(
    const std::string& path) {
  if (path != cache_->data_path()) return NotFoundError("not in the remote package: " + path);
  return std::unique_ptr<RandomAccessFile>(new CacheView(cache_.get()));
}
StatusOr<std::unique_ptr<WritableFile>> RemotePackageEnv::NewWritableFile(const std::string&,
                                                                          mode_t) {
  return UnimplementedError("remote package is read-only");
}
StatusOr<std::unique_ptr<WritableFile>> RemotePackageEnv::NewExclusiveFile(const std::string&,
                                                                           mode_t) {
  return UnimplementedError("remote package is read-only");
}
Status RemotePackageEnv::RenameFile(const std::string&, const std::string&) {
  return UnimplementedError("remote package is read-only");
}
Status RemotePackageEnv::RemoveFile(const std::string&) {
  return UnimplementedError("remote package is read-only");
}
bool RemotePackageEnv::FileExists(const std::string& path) { return path == cache_->data_path(); }

StatusOr<RemotePackage> OpenRemotePackage(const HttpsRangeSourceOptions& remote,
                                          const std::string& cache_dir,
                                          const ovf::PackageOpenOptions& options) {
  ASSIGN_OR_RETURN(auto source, NewHttpsRangeSource(remote));
  CiphertextCacheOptions co;
  co.dir = cache_dir;
  co.block_bytes = uint64_t{64} << 10;
  co.readahead_bytes = uint64_t{64} << 10;
  co.sync = false;  // metadata only, refetched if lost
  ASSIGN_OR_RETURN(auto cache, CiphertextCache::Open(std::move(source), co));
  const std::string path = cache->data_path();
  RemotePackage out;
  out.env = std::make_unique<RemotePackageEnv>(std::move(cache));
  ovf::PackageOpenOptions po = options;
  po.verify_manifest = false;
  ASSIGN_OR_RETURN(out.package, ovf::Package::Open(out.env.get(), path, po));
  return out;
}

}  // namespace vmseal::nbd_export
