// RAII owners for OpenSSL handles and a helper that turns the OpenSSL error
// queue into a Status (Tink internal/ssl_unique_ptr.h).
#ifndef VMSEAL_CRYPTO_SSL_UTIL_H_
#define VMSEAL_CRYPTO_SSL_UTIL_H_

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string_view>

#include "base/status.h"

namespace vmseal::crypto {

template <typename T, void (*F)(T*)>
struct SslDeleter {
  void operator()(T* p) const { F(p); }
};
template <typename T, void (*F)(T*)>
using SslPtr = std::unique_ptr<T, SslDeleter<T, F>>;

using EvpPkeyPtr = SslPtr<EVP_PKEY, EVP_PKEY_free>;
using EvpPkeyCtxPtr = SslPtr<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using EvpCipherCtxPtr = SslPtr<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using EvpMdCtxPtr = SslPtr<EVP_MD_CTX, EVP_MD_CTX_free>;
using EvpKdfPtr = SslPtr<EVP_KDF, EVP_KDF_free>;
using EvpKdfCtxPtr = SslPtr<EVP_KDF_CTX, EVP_KDF_CTX_free>;
using EvpCipherPtr = SslPtr<EVP_CIPHER, EVP_CIPHER_free>;
using EvpMdPtr = SslPtr<EVP_MD, EVP_MD_free>;
using BioPtr = SslPtr<BIO, BIO_free_all>;
using X509Ptr = SslPtr<X509, X509_free>;
using X509StorePtr = SslPtr<X509_STORE, X509_STORE_free>;
using X509StoreCtxPtr = SslPtr<X509_STORE_CTX, X509_STORE_CTX_free>;
using X509NamePtr = SslPtr<X509_NAME, X509_NAME_free>;
using X509ExtensionPtr = SslPtr<X509_EXTENSION, X509_EXTENSION_free>;
using X509ReqPtr = SslPtr<X509_REQ, X509_REQ_free>;
using BignumPtr = SslPtr<BIGNUM, BN_free>;
using Asn1IntegerPtr = SslPtr<ASN1_INTEGER, ASN1_INTEGER_free>;

// Drains the OpenSSL error queue and returns INTERNAL "what: <first error>".
// Never includes key material (OpenSSL error strings do not).
Status SslError(std::string_view what);

}  // namespace vmseal::crypto

#endif  // VMSEAL_CRYPTO_SSL_UTIL_H_
