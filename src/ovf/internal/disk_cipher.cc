#include "ovf/internal/disk_cipher.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <vector>

#include "crypto/primitives.h"
#include "crypto/ssl_util.h"
#include "ovf/package_format.h"

namespace vmseal::ovf::internal {
namespace {

constexpr size_t kIoBytes = 1 << 20;

// XML Encryption 1.1 AES-256-GCM: IV(12) || ciphertext || tag(16), no AAD.
class GcmCipher : public DiskCipher {
 public:
  std::string_view algorithm_uri() const override { return kAes256GcmUri; }
  uint32_t chunk_size_bytes() const override { return 0; }

  StatusOr<uint64_t> SealedSize(uint64_t plaintext_bytes) const override {
    if (plaintext_bytes > kMaxGcmMessageBytes) {
      return OutOfRangeError("file exceeds the AES-GCM single-message limit of " +
                             std::to_string(kMaxGcmMessageBytes) + " bytes");
    }
    return plaintext_bytes + kGcmIvBytes + kGcmTagBytes;
  }

  Status Seal(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
              const stream::StreamContext& /*context*/) const override {
    ASSIGN_OR_RETURN(uint64_t size, in.Size());
    RETURN_IF_ERROR(SealedSize(size).status());
    if (key.size() != 32) return InvalidArgumentError("data key must be 32 bytes");
    crypto::Bytes iv = crypto::RandomBytes(kGcmIvBytes);
    crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.UnsafeData(),
                                   iv.data()) != 1) {
      return crypto::SslError("AES-GCM init");
    }
    RETURN_IF_ERROR(out->Append(iv));
    std::vector<uint8_t> buf(kIoBytes), ct(kIoBytes);
    for (uint64_t offset = 0; offset < size;) {
      ASSIGN_OR_RETURN(size_t n, in.Read(offset, buf));
      if (n == 0) return DataLossError("input file shrank while sealing");
      int len = 0;
      if (EVP_EncryptUpdate(ctx.get(), ct.data(), &len, buf.data(), static_cast<int>(n)) != 1) {
        return crypto::SslError("AES-GCM encrypt");
      }
      RETURN_IF_ERROR(out->Append(std::span<const uint8_t>(ct.data(), len)));
      offset += n;
    }
    int len = 0;
    uint8_t tag[kGcmTagBytes];
    if (EVP_EncryptFinal_ex(ctx.get(), ct.data(), &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagBytes, tag) != 1) {
      return crypto::SslError("AES-GCM final");
    }
    return out->Append(tag);
  }

  Status Open(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
              const stream::StreamContext& /*context*/) const override {
    ASSIGN_OR_RETURN(uint64_t size, in.Size());
    if (size < kGcmIvBytes + kGcmTagBytes) {
      return InvalidArgumentError("AES-GCM message shorter than IV and tag");
    }
    if (key.size() != 32) return InvalidArgumentError("data key must be 32 bytes");
    uint8_t iv[kGcmIvBytes], tag[kGcmTagBytes];
    ASSIGN_OR_RETURN(size_t got, in.Read(0, iv));
    if (got != sizeof(iv)) return DataLossError("short read");
    ASSIGN_OR_RETURN(got, in.Read(size - kGcmTagBytes, tag));
    if (got != sizeof(tag)) return DataLossError("short read");
    crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    if (!ctx ||
        EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key.UnsafeData(), iv) != 1) {
      return crypto::SslError("AES-GCM init");
    }
    const uint64_t end = size - kGcmTagBytes;
    std::vector<uint8_t> buf(kIoBytes), pt(kIoBytes);
    for (uint64_t offset = kGcmIvBytes; offset < end;) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(kIoBytes, end - offset));
      ASSIGN_OR_RETURN(size_t n, in.Read(offset, std::span<uint8_t>(buf.data(), want)));
      if (n != want) return DataLossError("short read");
      int len = 0;
      if (EVP_DecryptUpdate(ctx.get(), pt.data(), &len, buf.data(), static_cast<int>(n)) != 1) {
        return crypto::SslError("AES-GCM decrypt");
      }
      RETURN_IF_ERROR(out->Append(std::span<const uint8_t>(pt.data(), len)));
      offset += n;
    }
    int len = 0;
    if (EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagBytes, tag) != 1) {
      return crypto::SslError("AES-GCM tag");
    }
    if (EVP_DecryptFinal_ex(ctx.get(), pt.data(), &len) != 1) {
      ERR_clear_error();
      WipeBytes(pt);
      return DataLossError("decryption failed");
    }
    WipeBytes(pt);
    return OkStatus();
  }
};

#ifdef VMSEAL_OVF_HAVE_STREAM
class StreamCipher : public DiskCipher {
 public:
  explicit StreamCipher(uint32_t chunk_size_bytes) : chunk_size_bytes_(chunk_size_bytes) {}
  std::string_view algorithm_uri() const override { return kStreamAlgorithmUri; }
  uint32_t chunk_size_bytes() const override { return chunk_size_bytes_; }
  StatusOr<uint64_t> SealedSize(uint64_t plaintext_bytes) const override {
    return stream::SealedSize(plaintext_bytes, chunk_size_bytes_);
  }
  Status Seal(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
              const stream::StreamContext& context) const override {
    stream::SealOptions options;
    options.chunk_size_bytes = chunk_size_bytes_;
    return stream::Seal(in, out, key, context, options);
  }
  Status Open(const RandomAccessFile& in, WritableFile* out, const SecretBytes& key,
              const stream::StreamContext& context) const override {
    stream::OpenOptions options;
    options.sparse_output = false;  // `out` may be a tar member
    return stream::Open(in, out, key, context, options);
  }

 private:
  const uint32_t chunk_size_bytes_;
};
#endif

}  // namespace

bool StreamFormatAvailable() {
#ifdef VMSEAL_OVF_HAVE_STREAM
  return true;
#else
  return false;
#endif
}

StatusOr<std::unique_ptr<DiskCipher>> NewDiskCipher(std::string_view algorithm_uri,
                                                    uint32_t chunk_size_bytes) {
  if (algorithm_uri == kAes256GcmUri) {
    if (chunk_size_bytes != 0) {
      return InvalidArgumentError("AES-GCM files have no chunk size");
    }
    return std::unique_ptr<DiskCipher>(new GcmCipher());
  }
  if (algorithm_uri == kStreamAlgorithmUri) {
#ifdef VMSEAL_OVF_HAVE_STREAM
    // The tag records the effective chunk size, never "0 = default".
    return std::unique_ptr<DiskCipher>(new StreamCipher(
        chunk_size_bytes != 0 ? chunk_size_bytes : stream::kDefaultChunkSizeBytes));
#else
    return UnimplementedError("the stream format is not linked into this build");
#endif
  }
  return InvalidArgumentError("unknown algorithm: " + std::string(algorithm_uri.substr(0, 200)));
}

}  // namespace vmseal::ovf::internal
