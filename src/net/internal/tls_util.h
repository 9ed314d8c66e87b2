// PEM loading and certificate inspection shared by the server and client.
#ifndef VMSEAL_NET_INTERNAL_TLS_UTIL_H_
#define VMSEAL_NET_INTERNAL_TLS_UTIL_H_

#include <openssl/ssl.h>

#include <string>
#include <vector>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/ssl_util.h"
#include "net/https_server.h"

namespace vmseal::net::internal {

// All certificates in `pem`, in order; INVALID_ARGUMENT if there are none.
StatusOr<std::vector<crypto::X509Ptr>> ParseCertChainPem(const std::string& pem,
                                                         const char* what);
// The private key in `pem`.
StatusOr<crypto::EvpPkeyPtr> ParsePrivateKeyPem(const SecretBytes& pem);
// A fresh store holding every certificate in `pem`.
StatusOr<crypto::X509StorePtr> StoreFromPem(const std::string& pem, const char* what);
// Subject, CN, OU and fingerprint of `cert`.
Peer DescribeCert(X509* cert);
// Lowercase hex SHA-256 of the DER encoding of `cert`.
std::string CertFingerprint(X509* cert);
// A peer that closes mid-write must cost an EPIPE, not the process: ignores
// SIGPIPE process-wide (once). Called by every server and client.
void IgnoreSigpipe();
// Applies the shared policy: TLS 1.3 only, no compression, no renegotiation.
// Also calls IgnoreSigpipe().
Status ApplyTlsPolicy(SSL_CTX* ctx);
// Makes a client context verify the server inside the handshake: the chain
// against the context's own store and nothing else, and `host` (an IP
// address must be in an IP subjectAltName, a name in a DNS one; the subject
// CN never counts). For httplib clients, whose own verification must stay
// off: it adds the system trust store and falls back to the CN.
Status VerifyServerInHandshake(SSL_CTX* ctx, const std::string& host);

}  // namespace vmseal::net::internal

#endif  // VMSEAL_NET_INTERNAL_TLS_UTIL_H_
