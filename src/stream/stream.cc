#include "stream/stream.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <vector>

#include "crypto/primitives.h"
#include "stream/internal/chunk_cipher.h"
#include "stream/internal/header.h"
#include "stream/internal/pipeline.h"
#include "stream/internal/seal_internal.h"

namespace vmseal::stream {
namespace {

using internal::Header;
using internal::Layout;

uint32_t EffectiveChunkSize(uint32_t chunk_size_bytes) {
  return chunk_size_bytes == 0 ? kDefaultChunkSizeBytes : chunk_size_bytes;
}

internal::Salt RandomSalt() {
  internal::Salt salt;
  crypto::Bytes rnd = crypto::RandomBytes(kSaltBytes);
  std::copy(rnd.begin(), rnd.end(), salt.begin());
  return salt;
}

Status SealImpl(const RandomAccessFile& in, WritableFile* out, const SecretBytes& data_key,
                const StreamContext& context, const SealOptions& options,
                const internal::Salt& salt) {
  const uint32_t chunk = EffectiveChunkSize(options.chunk_size_bytes);
  RETURN_IF_ERROR(internal::ValidateChunkSize(chunk));
  ASSIGN_OR_RETURN(uint64_t size, in.Size());
  ASSIGN_OR_RETURN(Layout layout, internal::LayoutForPlaintext(size, chunk));
  ASSIGN_OR_RETURN(internal::DerivedKeys keys,
                   internal::DeriveKeys(data_key, chunk, salt, context));
  internal::HeaderBytes header = internal::EncodeHeader(chunk, salt, keys.commitment);
  RETURN_IF_ERROR(out->Append(header));
  internal::PipelineSpec spec;
  spec.direction = internal::Direction::kSeal;
  spec.layout = layout;
  spec.threads = options.threads;
  spec.progress = options.progress;
  RETURN_IF_ERROR(internal::RunPipeline(in, out, keys.stream_key, spec));
  ASSIGN_OR_RETURN(uint64_t size_after, in.Size());
  if (size_after != size) return AbortedError("input changed size while being read");
  return OkStatus();
}

// Reads and parses the header of `in` and derives its layout from the length;
// all checks on public bytes, before any key is used.
StatusOr<std::pair<Header, Layout>> ReadHeader(const RandomAccessFile& in) {
  ASSIGN_OR_RETURN(uint64_t size, in.Size());
  if (size == 0) return InvalidArgumentError("not a vmseal stream: input is empty");
  internal::HeaderBytes bytes{};
  const size_t want = static_cast<size_t>(std::min<uint64_t>(size, kHeaderBytes));
  ASSIGN_OR_RETURN(size_t n, in.Read(0, {bytes.data(), want}));
  ASSIGN_OR_RETURN(Header header, internal::ParseHeader({bytes.data(), n}));
  ASSIGN_OR_RETURN(Layout layout, internal::LayoutForSealed(size, header.chunk_size_bytes));
  return std::make_pair(header, layout);
}

// Writes straight to a device such as /dev/null (no temp file, no holes).
class DeviceWritableFile final : public WritableFile {
 public:
  DeviceWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~DeviceWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  Status Append(std::span<const uint8_t> data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "write", path_);
      }
      done += static_cast<size_t>(n);
    }
    return OkStatus();
  }
  Status Skip(uint64_t bytes) override {
    static const std::vector<uint8_t> zeros(1 << 16);
    while (bytes > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, zeros.size()));
      RETURN_IF_ERROR(Append({zeros.data(), n}));
      bytes -= n;
    }
    return OkStatus();
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override {
    if (fd_ < 0) return OkStatus();
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) return ErrnoToStatus(errno, "close", path_);
    return OkStatus();
  }

 private:
  const std::string path_;
  int fd_;
};

// Where a file helper writes: a device directly, anything else atomically.
struct Output {
  std::unique_ptr<AtomicOutputFile> atomic;
  std::unique_ptr<DeviceWritableFile> device;
  WritableFile* file() { return atomic ? atomic->file() : device.get(); }
  Status Commit() { return atomic ? atomic->Commit() : device->Close(); }
};

// The length of a pipe or block device is not its st_size: sealing one would
// silently produce a short stream, so only regular files are accepted.
Status CheckRegularInput(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return InvalidArgumentError("input " + path + " is not a regular file");
  }
  return OkStatus();
}

StatusOr<Output> OpenOutput(Env* env, const std::string& path, mode_t mode) {
  Output out;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) return InvalidArgumentError("output " + path + " is a directory");
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open", path);
    out.device = std::make_unique<DeviceWritableFile>(path, fd);
    return out;
  }
  ASSIGN_OR_RETURN(out.atomic, AtomicOutputFile::Create(env, path, mode));
  return out;
}

class StreamReaderImpl final : public StreamReader {
 public:
  StreamReaderImpl(const RandomAccessFile* in, Layout layout, SecretBytes key)
      : in_(in), layout_(layout), key_(std::move(key)) {}
  ~StreamReaderImpl() override {
    for (Lease& l : pool_) Wipe(l);
  }

  uint64_t plaintext_size() const override { return layout_.plaintext_bytes; }

  // A chunk the request covers whole is read straight into `out` and
  // decrypted where it lies (no scratch buffer, no copy); a chunk it covers
  // in part goes through a scratch buffer. Cipher contexts (keyed once) and
  // scratch buffers are kept for the next call: a reader serves many
  // threads (the NBD export's), each call takes its own from the pool.
  StatusOr<size_t> ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= layout_.plaintext_bytes || out.empty()) return size_t{0};
    const uint64_t end = std::min<uint64_t>(layout_.plaintext_bytes, offset + out.size());
    const uint64_t c = layout_.chunk_size_bytes;
    if (failed_.load()) return DataLossError("decryption failed");
    ASSIGN_OR_RETURN(Lease lease, Take());
    struct GiveBack {
      const StreamReaderImpl* self;
      Lease* lease;
      ~GiveBack() { self->Return(std::move(*lease)); }
    } give_back{this, &lease};
    size_t copied = 0;
    for (uint64_t i = offset / c; i <= (end - 1) / c; ++i) {
      const uint64_t chunk_start = i * c;
      const uint64_t pt = layout_.PlaintextChunkBytes(i);
      const uint64_t from = std::max(offset, chunk_start) - chunk_start;
      const uint64_t to = std::min(end, chunk_start + pt) - chunk_start;
      Status s;
      if (from == 0 && to == pt) {
        std::span<uint8_t> dst = out.subspan(copied, static_cast<size_t>(pt));
        s = OpenChunkInto(*lease.cipher, i, dst);
        // Never unauthenticated bytes in the caller's buffer.
        if (!s.ok()) OPENSSL_cleanse(dst.data(), dst.size());
      } else {
        if (lease.scratch == nullptr) lease.scratch.reset(new uint8_t[c + kTagBytes]);
        s = OpenChunkSealed(*lease.cipher, i,
                            {lease.scratch.get(), static_cast<size_t>(pt) + kTagBytes});
        if (s.ok()) std::memcpy(out.data() + copied, lease.scratch.get() + from, to - from);
      }
      if (s.code() == StatusCode::kDataLoss) failed_.store(true);
      RETURN_IF_ERROR(s);
      copied += to - from;
    }
    return copied;
  }

  Status VerifyFinalChunk() const {
    ASSIGN_OR_RETURN(auto cipher, internal::ChunkCipher::Create(key_));
    std::vector<uint8_t> buf(layout_.PlaintextChunkBytes(layout_.chunk_count - 1) + kTagBytes);
    return OpenChunkSealed(*cipher, layout_.chunk_count - 1, buf);
  }

 private:
  // One caller's cipher context and scratch buffer (plaintext of one chunk).
  struct Lease {
    std::unique_ptr<internal::ChunkCipher> cipher;
    std::unique_ptr<uint8_t[]> scratch;
  };

  StatusOr<Lease> Take() const {
    {
      std::lock_guard<std::mutex> lock(pool_mu_);
      if (!pool_.empty()) {
        Lease l = std::move(pool_.back());
        pool_.pop_back();
        return l;
      }
    }
    Lease l;
    ASSIGN_OR_RETURN(l.cipher, internal::ChunkCipher::Create(key_));
    return l;
  }

  void Return(Lease l) const {
    if (l.cipher == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(pool_mu_);
      if (pool_.size() < kMaxPooled) {
        pool_.push_back(std::move(l));
        return;
      }
    }
    Wipe(l);
  }

  // Scratch buffers held plaintext: wiped before they are freed.
  void Wipe(Lease& l) const {
    if (l.scratch != nullptr) {
      OPENSSL_cleanse(l.scratch.get(), layout_.chunk_size_bytes + kTagBytes);
    }
  }

  // Reads sealed chunk `i` (ciphertext and tag, one read) into `buf`, which
  // is exactly that long, and opens it into its front.
  Status OpenChunkSealed(internal::ChunkCipher& cipher, uint64_t i, std::span<uint8_t> buf) const {
    const size_t pt = layout_.PlaintextChunkBytes(i);
    if (buf.size() != pt + kTagBytes) return InternalError("open chunk: bad buffer size");
    ASSIGN_OR_RETURN(size_t n, in_->Read(layout_.SealedChunkOffset(i), buf));
    if (n != buf.size()) return AbortedError("input changed size while being read");
    return cipher.Open(i, i + 1 == layout_.chunk_count, buf, buf.first(pt));
  }

  // Reads chunk `i`'s ciphertext into `out` (its plaintext size) and its
  // tag apart (two reads), and opens it where it lies.
  Status OpenChunkInto(internal::ChunkCipher& cipher, uint64_t i, std::span<uint8_t> out) const {
    const size_t pt = layout_.PlaintextChunkBytes(i);
    if (out.size() != pt) return InternalError("open chunk: bad buffer size");
    const uint64_t at = layout_.SealedChunkOffset(i);
    uint8_t tag[kTagBytes];
    ASSIGN_OR_RETURN(size_t n, in_->Read(at, out));
    ASSIGN_OR_RETURN(size_t t, in_->Read(at + pt, {tag, kTagBytes}));
    if (n != pt || t != kTagBytes) return AbortedError("input changed size while being read");
    return cipher.OpenDetached(i, i + 1 == layout_.chunk_count, out,
                               std::span<const uint8_t, kTagBytes>(tag), out);
  }

  static constexpr size_t kMaxPooled = 32;
  const RandomAccessFile* const in_;
  const Layout layout_;
  const SecretBytes key_;
  // Sticky: once a chunk fails to authenticate, the stream is known to be
  // tampered with and no further plaintext is released.
  mutable std::atomic<bool> failed_{false};
  mutable std::mutex pool_mu_;
  mutable std::vector<Lease> pool_;
};

class StreamWriterImpl final : public StreamWriter {
 public:
  StreamWriterImpl(WritableFile* out, uint32_t chunk, std::unique_ptr<internal::ChunkCipher> c)
      : out_(out), chunk_(chunk), cipher_(std::move(c)) {
    buf_.reserve(chunk + kTagBytes);
  }

  Status Write(std::span<const uint8_t> data) override {
    RETURN_IF_ERROR(error_);
    while (!data.empty()) {
      if (buf_.size() == chunk_) {
        // A full chunk followed by more data: it is not the last one.
        error_ = Flush(false);
        RETURN_IF_ERROR(error_);
      }
      size_t n = std::min<size_t>(data.size(), chunk_ - buf_.size());
      buf_.insert(buf_.end(), data.begin(), data.begin() + n);
      data = data.subspan(n);
    }
    return OkStatus();
  }

  Status Finish() override {
    RETURN_IF_ERROR(error_);
    Status s = Flush(true);
    error_ = s.ok() ? FailedPreconditionError("stream writer already finished") : s;
    return s;
  }

 private:
  Status Flush(bool last) {
    if (index_ >= kMaxChunks) {
      return OutOfRangeError("input too large for the stream format (more than 2^32 chunks)");
    }
    const size_t pt = buf_.size();
    buf_.resize(pt + kTagBytes);
    RETURN_IF_ERROR(cipher_->Seal(index_, last, {buf_.data(), pt}, buf_));
    RETURN_IF_ERROR(out_->Append(buf_));
    ++index_;
    buf_.clear();
    return OkStatus();
  }

  WritableFile* const out_;
  const uint32_t chunk_;
  std::unique_ptr<internal::ChunkCipher> cipher_;
  std::vector<uint8_t> buf_;
  uint64_t index_ = 0;
  Status error_;
};

}  // namespace

namespace internal {

Status SealWithSaltForTesting(const RandomAccessFile& in, WritableFile* out,
                              const SecretBytes& data_key, const StreamContext& context,
                              const SealOptions& options, const Salt& salt) {
  return SealImpl(in, out, data_key, context, options, salt);
}

StatusOr<size_t> MemoryFile::Read(uint64_t offset, std::span<uint8_t> out) const {
  if (offset >= data_.size()) return size_t{0};
  size_t n = static_cast<size_t>(std::min<uint64_t>(out.size(), data_.size() - offset));
  std::memcpy(out.data(), data_.data() + offset, n);
  return n;
}

Status VectorWritableFile::Append(std::span<const uint8_t> data) {
  out_->insert(out_->end(), data.begin(), data.end());
  return OkStatus();
}

Status VectorWritableFile::Skip(uint64_t bytes) {
  out_->resize(out_->size() + bytes, 0);
  skipped_bytes_ += bytes;
  return OkStatus();
}

}  // namespace internal

StatusOr<uint64_t> SealedSize(uint64_t plaintext_bytes, uint32_t chunk_size_bytes) {
  ASSIGN_OR_RETURN(Layout layout, internal::LayoutForPlaintext(
                                      plaintext_bytes, EffectiveChunkSize(chunk_size_bytes)));
  return layout.sealed_bytes;
}

Status Seal(const RandomAccessFile& in, WritableFile* out, const SecretBytes& data_key,
            const StreamContext& context, const SealOptions& options) {
  return SealImpl(in, out, data_key, context, options, RandomSalt());
}

Status Open(const RandomAccessFile& in, WritableFile* out, const SecretBytes& data_key,
            const StreamContext& context, const OpenOptions& options) {
  ASSIGN_OR_RETURN(auto parsed, ReadHeader(in));
  ASSIGN_OR_RETURN(SecretBytes stream_key,
                   internal::DeriveAndCheck(data_key, parsed.first, context));
  internal::PipelineSpec spec;
  spec.direction = internal::Direction::kOpen;
  spec.layout = parsed.second;
  spec.threads = options.threads;
  spec.sparse = options.sparse_output;
  spec.progress = options.progress;
  return internal::RunPipeline(in, out, stream_key, spec);
}

Status SealFile(Env* env, const std::string& in_path, const std::string& out_path,
                const SecretBytes& data_key, const StreamContext& context,
                const SealOptions& options) {
  ASSIGN_OR_RETURN(auto in, env->NewRandomAccessFile(in_path));
  RETURN_IF_ERROR(CheckRegularInput(in_path));
  ASSIGN_OR_RETURN(Output out, OpenOutput(env, out_path, 0644));
  RETURN_IF_ERROR(Seal(*in, out.file(), data_key, context, options));
  return out.Commit();
}

Status OpenFile(Env* env, const std::string& in_path, const std::string& out_path,
                const SecretBytes& data_key, const StreamContext& context,
                const OpenOptions& options) {
  ASSIGN_OR_RETURN(auto in, env->NewRandomAccessFile(in_path));
  RETURN_IF_ERROR(CheckRegularInput(in_path));
  // Check the header before creating any output file.
  RETURN_IF_ERROR(ReadHeader(*in));
  ASSIGN_OR_RETURN(Output out, OpenOutput(env, out_path, 0600));
  OpenOptions opts = options;
  if (!out.atomic) opts.sparse_output = false;
  RETURN_IF_ERROR(Open(*in, out.file(), data_key, context, opts));
  return out.Commit();
}

StatusOr<std::unique_ptr<StreamReader>> StreamReader::Create(const RandomAccessFile* in,
                                                             const SecretBytes& data_key,
                                                             const StreamContext& context) {
  ASSIGN_OR_RETURN(auto parsed, ReadHeader(*in));
  ASSIGN_OR_RETURN(SecretBytes key, internal::DeriveAndCheck(data_key, parsed.first, context));
  auto reader = std::make_unique<StreamReaderImpl>(in, parsed.second, std::move(key));
  // Authenticate the final chunk now, so the reported length is trustworthy.
  RETURN_IF_ERROR(reader->VerifyFinalChunk());
  return std::unique_ptr<StreamReader>(std::move(reader));
}

StatusOr<std::unique_ptr<StreamWriter>> StreamWriter::Create(WritableFile* out,
                                                             const SecretBytes& data_key,
                                                             const StreamContext& context,
                                                             uint32_t chunk_size_bytes) {
  const uint32_t chunk = EffectiveChunkSize(chunk_size_bytes);
  RETURN_IF_ERROR(internal::ValidateChunkSize(chunk));
  internal::Salt salt = RandomSalt();
  ASSIGN_OR_RETURN(internal::DerivedKeys keys,
                   internal::DeriveKeys(data_key, chunk, salt, context));
  ASSIGN_OR_RETURN(auto cipher, internal::ChunkCipher::Create(keys.stream_key));
  internal::HeaderBytes header = internal::EncodeHeader(chunk, salt, keys.commitment);
  RETURN_IF_ERROR(out->Append(header));
  return std::unique_ptr<StreamWriter>(new StreamWriterImpl(out, chunk, std::move(cipher)));
}

}  // namespace vmseal::stream
