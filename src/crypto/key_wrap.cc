#include "crypto/key_wrap.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#include <cstring>
#include <string>

#include "crypto/ssl_util.h"

namespace vmseal::crypto {
namespace {

Status DecryptionFailed() {
  ERR_clear_error();
  return DataLossError("decryption failed");
}

Status CheckAssociatedData(std::string_view associated_data) {
  if (associated_data.empty()) {
    return InvalidArgumentError("associated data must not be empty (name what the key is for)");
  }
  return OkStatus();
}

Status CheckDataKey(const SecretBytes& data_key) {
  if (data_key.size() != kDataKeyBytes) {
    return InvalidArgumentError("data key must be " + std::to_string(kDataKeyBytes) + " bytes");
  }
  return OkStatus();
}

bool IsRsa(KeyType t) { return t == KeyType::kRsa2048 || t == KeyType::kRsa3072; }

// Sets OAEP-SHA256 padding and the label on an encrypt/decrypt context.
Status SetOaep(EVP_PKEY_CTX* ctx, std::string_view associated_data, OaepLabel mode) {
  if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) != 1) {
    return SslError("set OAEP parameters");
  }
  size_t len = associated_data.size() + (mode == OaepLabel::kTpm ? 1 : 0);
  auto* label = static_cast<unsigned char*>(OPENSSL_zalloc(len));
  if (label == nullptr) return SslError("OPENSSL_zalloc");
  std::memcpy(label, associated_data.data(), associated_data.size());
  // On success the context owns `label`.
  if (EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, label, static_cast<int>(len)) != 1) {
    OPENSSL_free(label);
    return SslError("set OAEP label");
  }
  return OkStatus();
}

Status CheckRsaLabel(std::string_view associated_data, OaepLabel mode) {
  RETURN_IF_ERROR(CheckAssociatedData(associated_data));
  if (mode == OaepLabel::kTpm && associated_data.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("associated data for a TPM label must not contain a zero byte");
  }
  return OkStatus();
}

// AES-256-GCM seal: returns ciphertext || tag.
StatusOr<Bytes> GcmSeal(std::span<const uint8_t> key, std::span<const uint8_t> nonce,
                        std::span<const uint8_t> plaintext, std::string_view aad) {
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  Bytes out(plaintext.size() + kGcmTagBytes);
  int len = 0;
  if (!ctx || EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()),
                          nullptr) != 1 ||
      EVP_EncryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.data(), &len, plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + len, &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kGcmTagBytes),
                          out.data() + plaintext.size()) != 1) {
    return SslError("AES-256-GCM encrypt");
  }
  return out;
}

// AES-256-GCM open of ciphertext || tag; DATA_LOSS on any failure.
StatusOr<SecretBytes> GcmOpen(std::span<const uint8_t> key, std::span<const uint8_t> nonce,
                              std::span<const uint8_t> sealed, std::string_view aad) {
  if (sealed.size() < kGcmTagBytes) return DecryptionFailed();
  size_t ct_len = sealed.size() - kGcmTagBytes;
  SecretBytes out(ct_len);
  EvpCipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  int len = 0;
  uint8_t tag[kGcmTagBytes];
  std::memcpy(tag, sealed.data() + ct_len, kGcmTagBytes);
  if (!ctx || EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, static_cast<int>(nonce.size()),
                          nullptr) != 1 ||
      EVP_DecryptInit_ex(ctx.get(), nullptr, nullptr, key.data(), nonce.data()) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const uint8_t*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.UnsafeMutableData(), &len, sealed.data(),
                        static_cast<int>(ct_len)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kGcmTagBytes),
                          tag) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out.UnsafeMutableData() + len, &len) != 1) {
    return DecryptionFailed();
  }
  return out;
}

// X25519 ECDH between `own` (private) and `peer` (public).
StatusOr<SecretBytes> Ecdh(EVP_PKEY* own, EVP_PKEY* peer) {
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(own, nullptr));
  SecretBytes shared(kX25519PublicBytes);
  size_t len = shared.size();
  // OpenSSL rejects an all-zero result (a low-order peer point) here.
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(ctx.get(), peer) != 1 ||
      EVP_PKEY_derive(ctx.get(), shared.UnsafeMutableData(), &len) != 1 ||
      len != kX25519PublicBytes) {
    return DecryptionFailed();
  }
  return shared;
}

// key-wrap.md "X25519": the AES-256-GCM key from the shared secret.
StatusOr<SecretBytes> DeriveWrapKey(const SecretBytes& shared,
                                    std::span<const uint8_t> ephemeral_public,
                                    std::span<const uint8_t> recipient_public,
                                    std::string_view associated_data) {
  Bytes salt(ephemeral_public.begin(), ephemeral_public.end());
  salt.insert(salt.end(), recipient_public.begin(), recipient_public.end());
  Bytes info(kX25519WrapInfoPrefix.begin(), kX25519WrapInfoPrefix.end());
  info.insert(info.end(), associated_data.begin(), associated_data.end());
  return HkdfSha256(shared, salt, info, 32);
}

}  // namespace

// ----------------------------------------------------------------- RSA-OAEP

StatusOr<Bytes> RsaOaepWrap(const PublicKey& public_key, const SecretBytes& data_key,
                            std::string_view associated_data, OaepLabel label) {
  if (!IsRsa(public_key.type())) return InvalidArgumentError("RSA-OAEP wrap needs an RSA key");
  RETURN_IF_ERROR(CheckDataKey(data_key));
  RETURN_IF_ERROR(CheckRsaLabel(associated_data, label));
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(public_key.pkey(), nullptr));
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1) return SslError("EVP_PKEY_encrypt_init");
  RETURN_IF_ERROR(SetOaep(ctx.get(), associated_data, label));
  size_t len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &len, data_key.UnsafeData(), data_key.size()) != 1) {
    return SslError("EVP_PKEY_encrypt");
  }
  Bytes out(len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &len, data_key.UnsafeData(), data_key.size()) !=
      1) {
    return SslError("EVP_PKEY_encrypt");
  }
  out.resize(len);
  return out;
}

StatusOr<SecretBytes> RsaOaepUnwrap(const PrivateKey& private_key,
                                    std::span<const uint8_t> wrapped,
                                    std::string_view associated_data, OaepLabel label) {
  if (!IsRsa(private_key.type())) {
    return InvalidArgumentError("RSA-OAEP unwrap needs an RSA key");
  }
  RETURN_IF_ERROR(CheckRsaLabel(associated_data, label));
  size_t modulus_bytes = static_cast<size_t>(EVP_PKEY_get_size(private_key.pkey()));
  if (wrapped.size() != modulus_bytes) {
    return InvalidArgumentError("wrapped key is " + std::to_string(wrapped.size()) +
                                " bytes, want " + std::to_string(modulus_bytes));
  }
  EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new(private_key.pkey(), nullptr));
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) != 1) return SslError("EVP_PKEY_decrypt_init");
  RETURN_IF_ERROR(SetOaep(ctx.get(), associated_data, label));
  SecretBytes out(modulus_bytes);
  size_t len = out.size();
  if (EVP_PKEY_decrypt(ctx.get(), out.UnsafeMutableData(), &len, wrapped.data(),
                       wrapped.size()) != 1 ||
      len != kDataKeyBytes) {
    return DecryptionFailed();
  }
  return SecretBytes(out.UnsafeSpan().first(len));
}

// ------------------------------------------------------------------- X25519

StatusOr<Bytes> X25519WrapForTesting(const PublicKey& public_key, const SecretBytes& data_key,
                                     std::string_view associated_data,
                                     const SecretBytes& ephemeral_private_key,
                                     std::span<const uint8_t> nonce) {
  if (public_key.type() != KeyType::kX25519) {
    return InvalidArgumentError("X25519 wrap needs an X25519 key");
  }
  RETURN_IF_ERROR(CheckDataKey(data_key));
  RETURN_IF_ERROR(CheckAssociatedData(associated_data));
  if (nonce.size() != kGcmNonceBytes) return InvalidArgumentError("nonce must be 12 bytes");
  ASSIGN_OR_RETURN(PrivateKey eph, PrivateKey::FromRawX25519(ephemeral_private_key));
  Bytes eph_pub = eph.RawX25519Public();
  Bytes rcpt_pub = public_key.RawX25519();
  StatusOr<SecretBytes> shared = Ecdh(eph.pkey(), public_key.pkey());
  if (!shared.ok()) return InvalidArgumentError("invalid X25519 public key");
  ASSIGN_OR_RETURN(SecretBytes key, DeriveWrapKey(*shared, eph_pub, rcpt_pub, associated_data));
  ASSIGN_OR_RETURN(Bytes sealed, GcmSeal(key.UnsafeSpan(), nonce, data_key.UnsafeSpan(),
                                         associated_data));
  Bytes out;
  out.reserve(kX25519WrappedBytes);
  out.push_back(kX25519WrapVersion);
  out.insert(out.end(), eph_pub.begin(), eph_pub.end());
  out.insert(out.end(), nonce.begin(), nonce.end());
  out.insert(out.end(), sealed.begin(), sealed.end());
  return out;
}

StatusOr<Bytes> X25519Wrap(const PublicKey& public_key, const SecretBytes& data_key,
                           std::string_view associated_data) {
  SecretBytes eph = SecretBytes::Random(kX25519PublicBytes);
  Bytes nonce = RandomBytes(kGcmNonceBytes);
  return X25519WrapForTesting(public_key, data_key, associated_data, eph, nonce);
}

StatusOr<SecretBytes> X25519Unwrap(const PrivateKey& private_key,
                                   std::span<const uint8_t> wrapped,
                                   std::string_view associated_data) {
  if (private_key.type() != KeyType::kX25519) {
    return InvalidArgumentError("X25519 unwrap needs an X25519 key");
  }
  RETURN_IF_ERROR(CheckAssociatedData(associated_data));
  if (wrapped.size() != kX25519WrappedBytes) {
    return InvalidArgumentError("wrapped key is " + std::to_string(wrapped.size()) +
                                " bytes, want " + std::to_string(kX25519WrappedBytes));
  }
  if (wrapped[0] != kX25519WrapVersion) {
    return InvalidArgumentError("unsupported X25519 wrap version " + std::to_string(wrapped[0]));
  }
  std::span<const uint8_t> eph_pub = wrapped.subspan(1, kX25519PublicBytes);
  std::span<const uint8_t> nonce = wrapped.subspan(1 + kX25519PublicBytes, kGcmNonceBytes);
  std::span<const uint8_t> sealed = wrapped.subspan(1 + kX25519PublicBytes + kGcmNonceBytes);
  EvpPkeyPtr peer(EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nullptr, eph_pub.data(),
                                              eph_pub.size()));
  if (!peer) return DecryptionFailed();
  ASSIGN_OR_RETURN(SecretBytes shared, Ecdh(private_key.pkey(), peer.get()));
  Bytes rcpt_pub = private_key.RawX25519Public();
  ASSIGN_OR_RETURN(SecretBytes key, DeriveWrapKey(shared, eph_pub, rcpt_pub, associated_data));
  return GcmOpen(key.UnsafeSpan(), nonce, sealed, associated_data);
}

// ----------------------------------------------------------------- dispatch

StatusOr<Bytes> WrapKey(const PublicKey& public_key, const SecretBytes& data_key,
                        std::string_view associated_data) {
  if (IsRsa(public_key.type())) return RsaOaepWrap(public_key, data_key, associated_data);
  if (public_key.type() == KeyType::kX25519) {
    return X25519Wrap(public_key, data_key, associated_data);
  }
  return InvalidArgumentError("key type " + std::string(KeyTypeName(public_key.type())) +
                              " cannot wrap keys");
}

StatusOr<SecretBytes> UnwrapKey(const PrivateKey& private_key, std::span<const uint8_t> wrapped,
                                std::string_view associated_data) {
  if (IsRsa(private_key.type())) return RsaOaepUnwrap(private_key, wrapped, associated_data);
  if (private_key.type() == KeyType::kX25519) {
    return X25519Unwrap(private_key, wrapped, associated_data);
  }
  return InvalidArgumentError("key type " + std::string(KeyTypeName(private_key.type())) +
                              " cannot unwrap keys");
}

// --------------------------------------------------------------------- Aead

StatusOr<std::unique_ptr<Aead>> Aead::Create(SecretBytes key) {
  if (key.size() != kKeyBytes) return InvalidArgumentError("AEAD key must be 32 bytes");
  return std::unique_ptr<Aead>(new Aead(std::move(key)));
}

StatusOr<Bytes> Aead::Encrypt(std::span<const uint8_t> plaintext,
                              std::string_view associated_data) const {
  RETURN_IF_ERROR(CheckAssociatedData(associated_data));
  if (plaintext.size() > kMaxPlaintextBytes) return InvalidArgumentError("plaintext too large");
  Bytes out = RandomBytes(kGcmNonceBytes);
  ASSIGN_OR_RETURN(Bytes sealed, GcmSeal(key_.UnsafeSpan(), out, plaintext, associated_data));
  out.insert(out.end(), sealed.begin(), sealed.end());
  return out;
}

StatusOr<SecretBytes> Aead::Decrypt(std::span<const uint8_t> ciphertext,
                                    std::string_view associated_data) const {
  RETURN_IF_ERROR(CheckAssociatedData(associated_data));
  if (ciphertext.size() < kOverheadBytes) {
    return InvalidArgumentError("ciphertext shorter than " + std::to_string(kOverheadBytes) +
                                " bytes");
  }
  if (ciphertext.size() > kMaxPlaintextBytes + kOverheadBytes) {
    return InvalidArgumentError("ciphertext too large");
  }
  return GcmOpen(key_.UnsafeSpan(), ciphertext.first(kGcmNonceBytes),
                 ciphertext.subspan(kGcmNonceBytes), associated_data);
}

}  // namespace vmseal::crypto
