#include "nbd_export/nbd_file.h"

#include <libnbd.h>

#include <algorithm>
#include <mutex>

namespace vmseal::nbd_export {
namespace {

struct NbdCloser {
  void operator()(nbd_handle* h) const { nbd_close(h); }
};
using NbdPtr = std::unique_ptr<nbd_handle, NbdCloser>;

std::string LastError() {
  const char* e = nbd_get_error();
  return e != nullptr ? std::string(e).substr(0, 200) : "unknown error";
}

class NbdFile final : public RandomAccessFile {
 public:
  NbdFile(NbdPtr h, uint64_t size) : h_(std::move(h)), size_(size) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= size_) return size_t{0};
    const size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), size_ - offset));
    std::lock_guard<std::mutex> lock(mu_);
    // NBD requests are bounded (32 MiB in nbdkit): read in pieces.
    constexpr size_t kMaxRequestBytes = size_t{8} << 20;
    for (size_t done = 0; done < n;) {
      const size_t len = std::min(kMaxRequestBytes, n - done);
      if (nbd_pread(h_.get(), out.data() + done, len, offset + done, 0) != 0) {
        return DataLossError("export read failed: " + LastError());
      }
      done += len;
    }
    return n;
  }
  StatusOr<uint64_t> Size() const override { return size_; }

 private:
  mutable std::mutex mu_;
  const NbdPtr h_;
  const uint64_t size_;
};

}  // namespace

StatusOr<std::unique_ptr<RandomAccessFile>> OpenNbdFile(const std::string& socket_path) {
  NbdPtr h(nbd_create());
  if (h == nullptr) return InternalError("nbd: " + LastError());
  if (nbd_connect_unix(h.get(), socket_path.c_str()) != 0) {
    return UnavailableError("nbd: cannot connect to " + socket_path + ": " + LastError());
  }
  const int64_t size = nbd_get_size(h.get());
  if (size < 0) return UnavailableError("nbd: no size from " + socket_path + ": " + LastError());
  return std::unique_ptr<RandomAccessFile>(new NbdFile(std::move(h), static_cast<uint64_t>(size)));
}

}  // namespace vmseal::nbd_export
