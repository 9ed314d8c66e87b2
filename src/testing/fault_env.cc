#include "testing/fault_env.h"

#include <utility>

namespace vmseal::testing {
namespace {

class FaultFile final : public WritableFile {
 public:
  FaultFile(FaultEnv* env, std::unique_ptr<WritableFile> base)
      : env_(env), base_(std::move(base)) {}
  Status Append(std::span<const uint8_t> data) override {
    if (!env_->Consume(data.size())) {
      return ResourceExhaustedError("write: no space left on device");
    }
    return base_->Append(data);
  }
  Status Skip(uint64_t bytes) override { return base_->Skip(bytes); }
  Status Sync() override { return base_->Sync(); }
  Status Close() override { return base_->Close(); }

 private:
  FaultEnv* const env_;
  std::unique_ptr<WritableFile> base_;
};

}  // namespace

bool FaultEnv::Consume(uint64_t bytes) {
  uint64_t cur = write_budget_.load();
  while (true) {
    if (cur < bytes) return false;
    if (write_budget_.compare_exchange_weak(cur, cur - bytes)) return true;
  }
}

StatusOr<std::unique_ptr<RandomAccessFile>> FaultEnv::NewRandomAccessFile(
    const std::string& path) {
  if (fail_opens_) return PermissionDeniedError("open " + path + ": permission denied");
  return base_->NewRandomAccessFile(path);
}

StatusOr<std::unique_ptr<WritableFile>> FaultEnv::NewWritableFile(const std::string& path,
                                                                  mode_t mode) {
  ASSIGN_OR_RETURN(auto f, base_->NewWritableFile(path, mode));
  return std::unique_ptr<WritableFile>(new FaultFile(this, std::move(f)));
}

StatusOr<std::unique_ptr<WritableFile>> FaultEnv::NewExclusiveFile(const std::string& path,
                                                                   mode_t mode) {
  ASSIGN_OR_RETURN(auto f, base_->NewExclusiveFile(path, mode));
  return std::unique_ptr<WritableFile>(new FaultFile(this, std::move(f)));
}

}  // namespace vmseal::testing
