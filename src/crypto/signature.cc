#include "crypto/signature.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include "crypto/ssl_util.h"

namespace vmseal::crypto {
namespace {

const char* DigestName(SignatureDigest digest) {
  switch (digest) {
    case SignatureDigest::kSha1: return "SHA1";
    case SignatureDigest::kSha256: return "SHA256";
    case SignatureDigest::kSha512: return "SHA512";
  }
  return "SHA256";
}

Status CheckSigningType(KeyType type) {
  if (type == KeyType::kX25519) {
    return InvalidArgumentError("an X25519 key cannot sign (use P-256 or RSA)");
  }
  return OkStatus();
}

}  // namespace

StatusOr<Bytes> Sign(const PrivateKey& key, SignatureDigest digest,
                     std::span<const uint8_t> message) {
  RETURN_IF_ERROR(CheckSigningType(key.type()));
  if (digest == SignatureDigest::kSha1) {
    return InvalidArgumentError("SHA-1 signatures are not made");
  }
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return SslError("EVP_MD_CTX_new");
  if (EVP_DigestSignInit_ex(ctx.get(), nullptr, DigestName(digest), nullptr, nullptr, key.pkey(),
                            nullptr) != 1) {
    return SslError("EVP_DigestSignInit_ex");
  }
  size_t len = 0;
  if (EVP_DigestSign(ctx.get(), nullptr, &len, message.data(), message.size()) != 1) {
    return SslError("EVP_DigestSign (size)");
  }
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, message.data(), message.size()) != 1) {
    return SslError("EVP_DigestSign");
  }
  sig.resize(len);  // DER ECDSA signatures vary in length
  return sig;
}

Status VerifySignature(const PublicKey& key, SignatureDigest digest,
                       std::span<const uint8_t> message, std::span<const uint8_t> signature) {
  RETURN_IF_ERROR(CheckSigningType(key.type()));
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx) return SslError("EVP_MD_CTX_new");
  if (EVP_DigestVerifyInit_ex(ctx.get(), nullptr, DigestName(digest), nullptr, nullptr,
                              key.pkey(), nullptr) != 1) {
    return SslError("EVP_DigestVerifyInit_ex");
  }
  const int rc = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                                  message.size());
  if (rc != 1) {
    ERR_clear_error();  // a malformed signature leaves decoder errors behind
    return UnauthenticatedError("signature verification failed");
  }
  return OkStatus();
}

}  // namespace vmseal::crypto
