// An Env that fails on demand: after a byte budget every write reports a
// full disk, so tests can prove that no partial output survives.
#ifndef VMSEAL_TESTING_FAULT_ENV_H_
#define VMSEAL_TESTING_FAULT_ENV_H_

#include <atomic>
#include <cstdint>
#include <limits>

#include "base/env.h"

namespace vmseal::testing {

class FaultEnv final : public Env {
 public:
  explicit FaultEnv(Env* base = Env::Default()) : base_(base) {}

  // After `bytes` more bytes have been appended (over all files), Append
  // fails with RESOURCE_EXHAUSTED "no space left on device".
  void FailWritesAfter(uint64_t bytes) { write_budget_ = bytes; }
  // Every NewRandomAccessFile fails with PERMISSION_DENIED.
  void FailOpens(bool fail) { fail_opens_ = fail; }

  StatusOr<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(
      const std::string& path) override;
  StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                          mode_t mode) override;
  StatusOr<std::unique_ptr<WritableFile>> NewExclusiveFile(const std::string& path,
                                                           mode_t mode) override;
  Status RenameFile(const std::string& from, const std::string& to) override {
    return base_->RenameFile(from, to);
  }
  Status RemoveFile(const std::string& path) override { return base_->RemoveFile(path); }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  Status SyncDir(const std::string& dir) override { return base_->SyncDir(dir); }

  // Consumes budget; false when exhausted.
  bool Consume(uint64_t bytes);

 private:
  Env* const base_;
  std::atomic<uint64_t> write_budget_{std::numeric_limits<uint64_t>::max()};
  std::atomic<bool> fail_opens_{false};
};

}  // namespace vmseal::testing

#endif  // VMSEAL_TESTING_FAULT_ENV_H_
