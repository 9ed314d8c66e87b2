#include "ovf/internal/key_wrap.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "crypto/key_wrap.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"
#include "ovf/package_format.h"

namespace vmseal::ovf::internal {
namespace {

bool IsRsa(crypto::KeyType type) {
  return type == crypto::KeyType::kRsa2048 || type == crypto::KeyType::kRsa3072;
}

Status CheckRecipient(crypto::KeyType type) {
  if (!IsRsa(type) && type != crypto::KeyType::kX25519) {
    return InvalidArgumentError("the recipient key must be RSA-2048, RSA-3072 or X25519");
  }
  return OkStatus();
}

// Whether `type` is the key type `algorithm` wraps to; INVALID_ARGUMENT for
// an algorithm that is not a package key wrap.
StatusOr<bool> KeyFits(std::string_view algorithm, crypto::KeyType type) {
  if (algorithm == kX25519WrapUri) return type == crypto::KeyType::kX25519;
  if (algorithm == kRsaOaepUri || algorithm == kRsaOaepMgf1pUri) return IsRsa(type);
  return InvalidArgumentError("unknown key wrap algorithm: " +
                              std::string(algorithm.substr(0, 200)));
}

// OAEP with SHA-1 for label hash and MGF1 (XML Encryption rsa-oaep-mgf1p).
Status SetOaepSha1(EVP_PKEY_CTX* ctx, std::span<const uint8_t> label) {
  if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) <= 0 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) <= 0) {
    return crypto::SslError("OAEP parameters");
  }
  if (!label.empty()) {
    // OpenSSL takes ownership of the label buffer.
    void* copy = OPENSSL_memdup(label.data(), label.size());
    if (copy == nullptr ||
        EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, copy, static_cast<int>(label.size())) <= 0) {
      OPENSSL_free(copy);
      return crypto::SslError("OAEP label");
    }
  }
  return OkStatus();
}

}  // namespace

StatusOr<crypto::PublicKey> LoadPublicKeyPem(std::string_view pem) {
  if (pem.find("-----BEGIN CERTIFICATE-----") != std::string_view::npos) {
    crypto::BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    crypto::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
    if (!cert) return InvalidArgumentError("not a PEM X.509 certificate");
    crypto::EvpPkeyPtr pkey(X509_get_pubkey(cert.get()));
    if (!pkey) return InvalidArgumentError("certificate has no usable public key");
    ASSIGN_OR_RETURN(crypto::PublicKey key, crypto::PublicKey::FromEvpPkey(pkey.get()));
    RETURN_IF_ERROR(CheckRecipient(key.type()));
    return key;
  }
  ASSIGN_OR_RETURN(crypto::PublicKey key, crypto::PublicKey::FromPem(pem));
  RETURN_IF_ERROR(CheckRecipient(key.type()));
  return key;
}

StatusOr<crypto::PrivateKey> LoadPrivateKeyPem(std::string_view pem) {
  ASSIGN_OR_RETURN(crypto::PrivateKey key,
                   crypto::PrivateKey::FromPem(SecretBytes(crypto::AsBytes(pem))));
  RETURN_IF_ERROR(CheckRecipient(key.type()));
  return key;
}

std::string KeyId(const crypto::PublicKey& key) { return "sha256:" + key.KeyId(); }

StatusOr<std::string_view> WrapAlgorithmFor(crypto::KeyType type, bool xmlenc_compat) {
  RETURN_IF_ERROR(CheckRecipient(type));
  if (type == crypto::KeyType::kX25519) {
    if (xmlenc_compat) {
      return InvalidArgumentError(
          "--xmlenc-compat needs an RSA recipient key (its key wrap is rsa-oaep-mgf1p)");
    }
    return kX25519WrapUri;
  }
  return xmlenc_compat ? kRsaOaepMgf1pUri : kRsaOaepUri;
}

StatusOr<std::vector<uint8_t>> WrapKey(const crypto::PublicKey& public_key,
                                       std::string_view algorithm, const SecretBytes& key,
                                       std::span<const uint8_t> label) {
  ASSIGN_OR_RETURN(bool fits, KeyFits(algorithm, public_key.type()));
  if (!fits) {
    return InvalidArgumentError("key type " + std::string(crypto::KeyTypeName(public_key.type())) +
                                " does not fit key wrap " + std::string(algorithm));
  }
  if (algorithm == kX25519WrapUri) {
    return crypto::X25519Wrap(public_key, key, crypto::AsStringView(label));
  }
  if (algorithm == kRsaOaepUri) {
    return crypto::RsaOaepWrap(public_key, key, crypto::AsStringView(label));
  }
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, public_key.pkey(), nullptr));
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) <= 0) return crypto::SslError("wrap init");
  RETURN_IF_ERROR(SetOaepSha1(ctx.get(), label));
  size_t out_len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &out_len, key.UnsafeData(), key.size()) <= 0) {
    return crypto::SslError("wrap");
  }
  std::vector<uint8_t> out(out_len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &out_len, key.UnsafeData(), key.size()) <= 0) {
    return crypto::SslError("wrap");
  }
  out.resize(out_len);
  return out;
}

StatusOr<SecretBytes> UnwrapKey(const crypto::PrivateKey& private_key,
                                std::string_view algorithm, std::span<const uint8_t> wrapped,
                                std::span<const uint8_t> label) {
  ASSIGN_OR_RETURN(bool fits, KeyFits(algorithm, private_key.type()));
  if (!fits) {
    return FailedPreconditionError("the private key (" +
                                   std::string(crypto::KeyTypeName(private_key.type())) +
                                   ") does not fit the package's key wrap " +
                                   std::string(algorithm));
  }
  if (algorithm == kRsaOaepUri || algorithm == kX25519WrapUri) {
    auto key = algorithm == kRsaOaepUri
                   ? crypto::RsaOaepUnwrap(private_key, wrapped, crypto::AsStringView(label))
                   : crypto::X25519Unwrap(private_key, wrapped, crypto::AsStringView(label));
    if (!key.ok()) return DataLossError("decryption failed");
    return std::move(key).value();
  }
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, private_key.pkey(), nullptr));
  if (!ctx || EVP_PKEY_decrypt_init(ctx.get()) <= 0) return crypto::SslError("unwrap init");
  RETURN_IF_ERROR(SetOaepSha1(ctx.get(), label));
  size_t out_len = 0;
  if (EVP_PKEY_decrypt(ctx.get(), nullptr, &out_len, wrapped.data(), wrapped.size()) <= 0) {
    ERR_clear_error();
    return DataLossError("decryption failed");
  }
  SecretBytes out(out_len);
  if (EVP_PKEY_decrypt(ctx.get(), out.UnsafeMutableData(), &out_len, wrapped.data(),
                       wrapped.size()) <= 0) {
    ERR_clear_error();
    return DataLossError("decryption failed");
  }
  return SecretBytes(out.UnsafeSpan().first(out_len));
}

}  // namespace vmseal::ovf::internal
