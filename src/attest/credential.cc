#include "attest/credential.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/rsa.h>

#include <cstring>

#include "attest/reason.h"
#include "crypto/ssl_util.h"

namespace vmseal::attest {
namespace {

using EvpMacPtr = crypto::SslPtr<EVP_MAC, EVP_MAC_free>;
using EvpMacCtxPtr = crypto::SslPtr<EVP_MAC_CTX, EVP_MAC_CTX_free>;

constexpr size_t kSeedBytes = 32;       // digest size of nameAlg SHA-256
constexpr size_t kAes128KeyBytes = 16;  // EK template symmetric AES-128-CFB
constexpr size_t kHmacKeyBytes = 32;
constexpr size_t kNameBytes = 34;
// Part 1 §24.4: the seed is OAEP-encrypted with label "IDENTITY" incl. NUL.
constexpr char kIdentityLabel[] = "IDENTITY";

// KDFa (Part 1 §11.4.10.2) is NIST SP 800-108 counter mode with HMAC: each
// block HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32),
// which is exactly OpenSSL's KBKDF with the default separator and length.
StatusOr<SecretBytes> KdfaSha256(const SecretBytes& key, std::string_view label,
                                 std::span<const uint8_t> context, size_t out_bytes) {
  crypto::EvpKdfPtr kdf(EVP_KDF_fetch(nullptr, "KBKDF", nullptr));
  if (!kdf) return crypto::SslError("KBKDF fetch");
  crypto::EvpKdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return crypto::SslError("KBKDF ctx");
  char mode[] = "COUNTER";
  char mac[] = "HMAC";
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE, mode, 0),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MAC, mac, 0),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(key.UnsafeData()),
                                        key.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<char*>(label.data()),
                                        label.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<uint8_t*>(context.data()),
                                        context.size()),
      OSSL_PARAM_construct_end(),
  };
  SecretBytes out(out_bytes);
  if (EVP_KDF_derive(ctx.get(), out.UnsafeMutableData(), out.size(), params) != 1) {
    return crypto::SslError("KDFa");
  }
  return out;
}

StatusOr<Bytes> OaepEncryptSeed(EVP_PKEY* ek, const SecretBytes& seed) {
  crypto::EvpPkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, ek, nullptr));
  if (!ctx || EVP_PKEY_encrypt_init(ctx.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(ctx.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(ctx.get(), EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(ctx.get(), EVP_sha256()) != 1) {
    return crypto::SslError("OAEP init");
  }
  void* label = OPENSSL_memdup(kIdentityLabel, sizeof(kIdentityLabel));  // includes NUL
  if (label == nullptr ||
      EVP_PKEY_CTX_set0_rsa_oaep_label(ctx.get(), label, sizeof(kIdentityLabel)) != 1) {
    OPENSSL_free(label);
    return crypto::SslError("OAEP label");
  }
  size_t len = 0;
  if (EVP_PKEY_encrypt(ctx.get(), nullptr, &len, seed.UnsafeData(), seed.size()) != 1) {
    return crypto::SslError("OAEP size");
  }
  Bytes out(len);
  if (EVP_PKEY_encrypt(ctx.get(), out.data(), &len, seed.UnsafeData(), seed.size()) != 1) {
    return crypto::SslError("OAEP encrypt");
  }
  out.resize(len);
  return out;
}

}  // namespace

StatusOr<CredentialChallenge> MakeCredential(EVP_PKEY* ek_public, std::span<const uint8_t> ak_name,
                                             const SecretBytes& credential) {
  if (ek_public == nullptr || EVP_PKEY_get_base_id(ek_public) != EVP_PKEY_RSA ||
      EVP_PKEY_get_bits(ek_public) != 2048) {
    return InvalidArgumentError("EK public key must be RSA-2048");
  }
  if (ak_name.size() != kNameBytes || ak_name[0] != 0x00 || ak_name[1] != 0x0B) {
    return InvalidArgumentError("AK name must be a SHA-256 name (34 bytes)");
  }
  if (credential.empty() || credential.size() > 32) {
    return InvalidArgumentError("credential must be 1..32 bytes");
  }
  SecretBytes seed = SecretBytes::Random(kSeedBytes);
  CredentialChallenge out;
  ASSIGN_OR_RETURN(out.encrypted_secret, OaepEncryptSeed(ek_public, seed));

  // encIdentity = AES-128-CFB(KDFa(seed, "STORAGE", name), IV 0, TPM2B_DIGEST(cred)).
  ASSIGN_OR_RETURN(SecretBytes sym_key, KdfaSha256(seed, "STORAGE", ak_name, kAes128KeyBytes));
  SecretBytes plain(2 + credential.size());
  plain.UnsafeMutableData()[0] = static_cast<uint8_t>(credential.size() >> 8);
  plain.UnsafeMutableData()[1] = static_cast<uint8_t>(credential.size());
  std::memcpy(plain.UnsafeMutableData() + 2, credential.UnsafeData(), credential.size());
  Bytes enc_identity(plain.size());
  const uint8_t iv[16] = {0};
  crypto::EvpCipherCtxPtr cipher(EVP_CIPHER_CTX_new());
  int len1 = 0;
  int len2 = 0;
  if (!cipher ||
      EVP_EncryptInit_ex(cipher.get(), EVP_aes_128_cfb128(), nullptr, sym_key.UnsafeData(), iv) !=
          1 ||
      EVP_EncryptUpdate(cipher.get(), enc_identity.data(), &len1, plain.UnsafeData(),
                        static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(cipher.get(), enc_identity.data() + len1, &len2) != 1 ||
      static_cast<size_t>(len1 + len2) != plain.size()) {
    return crypto::SslError("AES-128-CFB");
  }

  // outerHMAC = HMAC-SHA256(KDFa(seed, "INTEGRITY", -), encIdentity || name).
  ASSIGN_OR_RETURN(SecretBytes hmac_key, KdfaSha256(seed, "INTEGRITY", {}, kHmacKeyBytes));
  EvpMacPtr mac(EVP_MAC_fetch(nullptr, "HMAC", nullptr));
  if (!mac) return crypto::SslError("HMAC fetch");
  EvpMacCtxPtr mctx(EVP_MAC_CTX_new(mac.get()));
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  uint8_t hmac[32];
  size_t hmac_len = 0;
  if (!mctx || EVP_MAC_init(mctx.get(), hmac_key.UnsafeData(), hmac_key.size(), params) != 1 ||
      EVP_MAC_update(mctx.get(), enc_identity.data(), enc_identity.size()) != 1 ||
      EVP_MAC_update(mctx.get(), ak_name.data(), ak_name.size()) != 1 ||
      EVP_MAC_final(mctx.get(), hmac, &hmac_len, sizeof(hmac)) != 1 || hmac_len != 32) {
    return crypto::SslError("HMAC");
  }
  // TPM2B_ID_OBJECT contents: TPM2B_DIGEST(outerHMAC) || encIdentity.
  out.credential_blob.resize(2 + sizeof(hmac) + enc_identity.size());
  out.credential_blob[0] = 0x00;
  out.credential_blob[1] = sizeof(hmac);
  std::memcpy(out.credential_blob.data() + 2, hmac, sizeof(hmac));
  std::memcpy(out.credential_blob.data() + 2 + sizeof(hmac), enc_identity.data(),
              enc_identity.size());
  return out;
}

Status CheckActivation(const SecretBytes& issued, const SecretBytes& answer) {
  if (issued.empty() || !issued.Equals(answer)) {
    return AttestFailure(Reason::kCredentialMismatch,
                         "ActivateCredential answer differs from the issued credential");
  }
  return OkStatus();
}

}  // namespace vmseal::attest
