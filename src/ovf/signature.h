// The OVF package signature (DSP0243 §5.3; docs/format/package.md §8.1): a
// `<stem>.cert` file beside the manifest holding one line
// `SHA256(<stem>.mf)= <hex signature over the manifest bytes>` followed by
// the signer's PEM certificate and any intermediates, as ovftool writes it.
// The manifest digests the descriptor (EncryptionSection: wrapped data key,
// encryption tag) and every file as stored, so the signature covers them all.
#ifndef VMSEAL_OVF_SIGNATURE_H_
#define VMSEAL_OVF_SIGNATURE_H_

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/signature.h"
#include "crypto/x509.h"

namespace vmseal::ovf {

// Upper bound of a .cert file (a signature and a short chain).
inline constexpr size_t kMaxPackageCertBytes = 64 * 1024;

struct PackageSignature {
  crypto::SignatureDigest digest = crypto::SignatureDigest::kSha256;
  std::string manifest_name;  // the file the signature line names
  crypto::Bytes signature;
  crypto::Certificate signer;                      // the first certificate
  std::vector<crypto::Certificate> intermediates;  // the others, in order
};

// Parses a .cert file strictly: the signature line (SHA1, SHA256 or SHA512;
// LF or CRLF), then one or more PEM certificates and nothing else.
// INVALID_ARGUMENT naming what is wrong.
StatusOr<PackageSignature> ParsePackageCertificate(std::string_view text);

// Signs `manifest_text` (the .mf bytes) with `key` (P-256 or RSA) and returns
// the .cert text naming `manifest_name`, with `signer_chain_pem` (the signer's
// certificate first) after the signature line. INVALID_ARGUMENT if the first
// certificate's public key is not `key`'s.
StatusOr<std::string> SignManifest(std::string_view manifest_name, std::string_view manifest_text,
                                   const crypto::PrivateKey& key,
                                   std::string_view signer_chain_pem);

// Checks that `sig` names `manifest_name` and that its signature over
// `manifest_text` verifies with the signer certificate's key.
// UNAUTHENTICATED "bad_signature: ..." otherwise.
Status VerifyManifestSignature(const PackageSignature& sig, std::string_view manifest_name,
                               std::string_view manifest_text);

// Checks who signed: the signer certificate chains to one of `roots` (with
// the .cert's intermediates) and its subject commonName is
// `expected_signer`. UNAUTHENTICATED "signer_mismatch: ..." otherwise.
Status VerifySigner(const PackageSignature& sig, const std::vector<crypto::Certificate>& roots,
                    std::string_view expected_signer);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_SIGNATURE_H_
