#include "kms/kek.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <sys/stat.h>

#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::kms {
namespace {

void AppendLengthPrefixed(std::string& out, std::string_view s) {
  uint64_t n = s.size();
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out.append(s);
}

class AesGcmKek : public KeyEncryptionKey {
 public:
  AesGcmKek(SecretBytes key, std::string id) : key_(std::move(key)), id_(std::move(id)) {}

  const std::string& id() const override { return id_; }

  StatusOr<std::string> Wrap(const SecretBytes& plaintext, std::string_view aad) const override {
    crypto::Bytes nonce = crypto::RandomBytes(kWrapNonceBytes);
    crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    std::string out(1 + kWrapNonceBytes + plaintext.size() + kWrapTagBytes, '\0');
    out[0] = static_cast<char>(kWrappedKeyVersion);
    std::copy(nonce.begin(), nonce.end(), out.begin() + 1);
    auto* ct = reinterpret_cast<unsigned char*>(out.data()) + 1 + kWrapNonceBytes;
    int len = 0;
    if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_.UnsafeData(),
                                   nonce.data()) != 1 ||
        EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_EncryptUpdate(ctx.get(), ct, &len, plaintext.UnsafeData(),
                          static_cast<int>(plaintext.size())) != 1 ||
        EVP_EncryptFinal_ex(ctx.get(), ct + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kWrapTagBytes,
                            ct + plaintext.size()) != 1) {
      return crypto::SslError("AES-GCM wrap");
    }
    return out;
  }

  StatusOr<SecretBytes> Unwrap(std::string_view wrapped, std::string_view aad) const override {
    if (wrapped.size() < 1 + kWrapNonceBytes + kWrapTagBytes) {
      return InvalidArgumentError("wrapped key too short");
    }
    if (static_cast<uint8_t>(wrapped[0]) != kWrappedKeyVersion) {
      return InvalidArgumentError("wrapped key: unknown version");
    }
    const auto* nonce = reinterpret_cast<const unsigned char*>(wrapped.data()) + 1;
    const unsigned char* ct = nonce + kWrapNonceBytes;
    const size_t ct_len = wrapped.size() - 1 - kWrapNonceBytes - kWrapTagBytes;
    SecretBytes out(ct_len);
    crypto::EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
    int len = 0;
    bool ok = ctx && EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, key_.UnsafeData(),
                                        nonce) == 1 &&
              EVP_DecryptUpdate(ctx.get(), nullptr, &len,
                                reinterpret_cast<const unsigned char*>(aad.data()),
                                static_cast<int>(aad.size())) == 1 &&
              EVP_DecryptUpdate(ctx.get(), out.UnsafeMutableData(), &len, ct,
                                static_cast<int>(ct_len)) == 1 &&
              EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kWrapTagBytes,
                                  const_cast<unsigned char*>(ct + ct_len)) == 1 &&
              EVP_DecryptFinal_ex(ctx.get(), out.UnsafeMutableData() + len, &len) == 1;
    if (!ok) {
      ERR_clear_error();
      return UnauthenticatedError("decryption failed");
    }
    return out;
  }

 private:
  const SecretBytes key_;
  const std::string id_;
};

}  // namespace

StatusOr<SecretBytes> KeyEncryptionKey::UnwrapUnder(std::string_view kek_id, std::string_view wrapped,
                                                    std::string_view aad) const {
  if (!Holds(kek_id)) {
    return FailedPreconditionError("kek_mismatch: wrapped under KEK " + std::string(kek_id) +
                                   " but this KMS uses KEK " + id());
  }
  return Unwrap(wrapped, aad);
}

StatusOr<KeyEncryptionKey::WrappedForRecord> KeyEncryptionKey::WrapForRecord(const SecretBytes& plaintext,
                                                                            std::string_view aad) const {
  ASSIGN_OR_RETURN(std::string wrapped, Wrap(plaintext, aad));
  return WrappedForRecord{id(), std::move(wrapped), nullptr};
}

std::string CustomerKeyAad(std::string_view key_id, std::string_view customer_id) {
  std::string aad("vmseal kms customer key v1");
  aad.push_back('\0');
  AppendLengthPrefixed(aad, key_id);
  AppendLengthPrefixed(aad, customer_id);
  return aad;
}

StatusOr<std::unique_ptr<KeyEncryptionKey>> KekFromBytes(SecretBytes key) {
  if (key.size() != kKekBytes) return InvalidArgumentError("KEK must be 32 bytes");
  // The id commits to the key without revealing it.
  crypto::Sha256Hasher h;
  h.Update(std::string_view("vmseal kek id v1"));
  h.Update(key.UnsafeSpan());
  std::string id = "file:" + crypto::HexEncode(h.Finish()).substr(0, 16);
  return std::unique_ptr<KeyEncryptionKey>(new AesGcmKek(std::move(key), std::move(id)));
}

Status CreateFileKek(Env* env, const std::string& path) {
  SecretBytes key = SecretBytes::Random(kKekBytes);
  ASSIGN_OR_RETURN(auto file, env->NewExclusiveFile(path, 0600));
  RETURN_IF_ERROR(file->Append(key.UnsafeSpan()));
  RETURN_IF_ERROR(file->Sync());
  return file->Close();
}

StatusOr<std::unique_ptr<KeyEncryptionKey>> LoadFileKek(Env* env, const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat KEK file", path);
  if (!S_ISREG(st.st_mode)) return FailedPreconditionError("KEK file " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    return FailedPreconditionError("KEK file " + path +
                                   " is accessible by group or others (chmod 600)");
  }
  ASSIGN_OR_RETURN(auto file, env->NewRandomAccessFile(path));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (size != kKekBytes) return InvalidArgumentError("KEK file " + path + " must hold 32 bytes");
  SecretBytes key(kKekBytes);
  ASSIGN_OR_RETURN(size_t n, file->Read(0, key.UnsafeMutableSpan()));
  if (n != kKekBytes) return DataLossError("KEK file " + path + ": short read");
  return KekFromBytes(std::move(key));
}

}  // namespace vmseal::kms
