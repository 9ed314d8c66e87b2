// Helpers shared by the fuzz targets (not a target itself: only
// *_fuzzer.cc files are). Everything here frees what it allocates per input.
#ifndef VMSEAL_FUZZ_FUZZ_UTIL_H_
#define VMSEAL_FUZZ_FUZZ_UTIL_H_

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::fuzz {

inline std::string_view AsText(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

// The fuzzer's input as a read-only file (not owned).
class MemoryFile : public RandomAccessFile {
 public:
  explicit MemoryFile(std::span<const uint8_t> data) : data_(data) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= data_.size()) return size_t{0};
    const size_t n = std::min<uint64_t>(out.size(), data_.size() - offset);
    std::memcpy(out.data(), data_.data() + offset, n);
    return n;
  }
  StatusOr<uint64_t> Size() const override { return data_.size(); }

 private:
  std::span<const uint8_t> data_;
};

// A sink that keeps only the byte count (for decrypted output).
class CountingFile : public WritableFile {
 public:
  Status Append(std::span<const uint8_t> data) override {
    bytes_ += data.size();
    return OkStatus();
  }
  Status Skip(uint64_t bytes) override {
    bytes_ += bytes;
    return OkStatus();
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  uint64_t bytes() const { return bytes_; }

 private:
  uint64_t bytes_ = 0;
};

// The input in an anonymous memory file, reachable by a path
// (/proc/self/fd/N) for code that opens packages by name and stat()s them.
// Closed (and freed) on destruction.
class MemFd {
 public:
  MemFd(const uint8_t* data, size_t size) {
    fd_ = memfd_create("vmseal-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) return;
    size_t done = 0;
    while (done < size) {
      ssize_t n = write(fd_, data + done, size - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ok_ = done == size;
  }
  ~MemFd() {
    if (fd_ >= 0) close(fd_);
  }
  MemFd(const MemFd&) = delete;
  MemFd& operator=(const MemFd&) = delete;
  bool ok() const { return ok_; }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_ = -1;
  bool ok_ = false;
};

}  // namespace vmseal::fuzz

#endif  // VMSEAL_FUZZ_FUZZ_UTIL_H_
