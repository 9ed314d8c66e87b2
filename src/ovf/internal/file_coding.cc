#include "ovf/internal/file_coding.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <vector>

namespace vmseal::ovf::internal {

std::string ChunkName(const std::string& href, uint64_t index) {
  char digits[32];
  std::snprintf(digits, sizeof(digits), ".%09llu", static_cast<unsigned long long>(index));
  return href + digits;
}

StatusOr<std::unique_ptr<ConcatenatedFile>> ConcatenatedFile::Create(
    std::vector<std::unique_ptr<RandomAccessFile>> parts) {
  std::unique_ptr<ConcatenatedFile> f(new ConcatenatedFile());
  for (auto& p : parts) {
    ASSIGN_OR_RETURN(uint64_t size, p->Size());
    f->starts_.push_back(f->size_);
    f->size_ += size;
    f->parts_.push_back(std::move(p));
  }
  return f;
}

StatusOr<size_t> ConcatenatedFile::Read(uint64_t offset, std::span<uint8_t> out) const {
  size_t done = 0;
  while (done < out.size() && offset + done < size_) {
    const uint64_t at = offset + done;
    // The last part that starts at or before `at`.
    size_t i = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), at) -
                                   starts_.begin()) - 1;
    ASSIGN_OR_RETURN(size_t n, parts_[i]->Read(at - starts_[i], out.subspan(done)));
    if (n == 0) return DataLossError("a chunk shrank while it was read");
    done += n;
  }
  return done;
}

StatusOr<uint64_t> Gunzip(const RandomAccessFile& in, WritableFile* out, uint64_t max_out) {
  ASSIGN_OR_RETURN(uint64_t in_size, in.Size());
  if (in_size == 0) return DataLossError("gzip: the file is empty");
  z_stream z{};
  // 15 + 16: a gzip wrapper only (not zlib, not raw deflate).
  if (inflateInit2(&z, 15 + 16) != Z_OK) return ResourceExhaustedError("gzip: out of memory");
  struct Ender {
    z_stream* z;
    ~Ender() { inflateEnd(z); }
  } ender{&z};
  std::vector<uint8_t> in_buf(256 << 10), out_buf(256 << 10);
  uint64_t in_off = 0, written = 0;
  bool in_member = false;  // inside a gzip member (its end not yet seen)
  while (true) {
    if (z.avail_in == 0) {
      if (in_off == in_size) break;
      ASSIGN_OR_RETURN(size_t n, in.Read(in_off, in_buf));
      if (n == 0) return DataLossError("gzip: the file shrank while it was read");
      in_off += n;
      z.next_in = in_buf.data();
      z.avail_in = static_cast<uInt>(n);
    }
    z.next_out = out_buf.data();
    z.avail_out = static_cast<uInt>(out_buf.size());
    in_member = true;
    int rc = inflate(&z, Z_NO_FLUSH);
    const size_t produced = out_buf.size() - z.avail_out;
    if (produced > 0) {
      if (written + produced > max_out) {
        return ResourceExhaustedError("gzip: the data expands beyond " +
                                      std::to_string(max_out) + " bytes");
      }
      RETURN_IF_ERROR(out->Append(std::span<const uint8_t>(out_buf.data(), produced)));
      written += produced;
    }
    if (rc == Z_STREAM_END) {
      in_member = false;
      // Another member may follow; anything else is garbage.
      if (z.avail_in == 0 && in_off == in_size) break;
      if (inflateReset(&z) != Z_OK) return InternalError("gzip: reset failed");
      continue;
    }
    if (rc == Z_BUF_ERROR && z.avail_in == 0) continue;  // needs more input
    if (rc != Z_OK) {
      return DataLossError(std::string("gzip: corrupt data (") + (z.msg ? z.msg : "inflate") +
                           ")");
    }
  }
  if (in_member) return DataLossError("gzip: the data ends in the middle of a member");
  return written;
}

}  // namespace vmseal::ovf::internal
