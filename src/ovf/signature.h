// The OVF package signature (DSP0243 §5.3; docs/format/package.md §8.1): a
// `<stem>.cert` file beside the manifest holding one line
// `SHA256(<stem>.mf)= <hex signature over the manifest bytes>` followed by
// the signer's PEM certificate and any intermediates, as ovftool writes it.
// The manifest digests the descriptor (EncryptionSection: wrapped data key,
// encryption tag) and every file as stored, so the signature covers them all.
#ifndef VMSEAL_OVF_SIGNATURE_H_
#define VMSEAL_OVF_SIGNATURE_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "ovf/descriptor.h"
#include "ovf/signed_package_texts.h"

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

// What a customer signs (SHA-256) to prove that it holds a package-signing
// key when it registers the key (docs/protocol.md §1): the ASCII text
// "vmseal-signing-key-proof-v1", a zero byte, then the key's SPKI DER.
crypto::Bytes SigningKeyProofMessage(const crypto::PublicKey& key);

// --- Signed package metadata (docs/format/package.md §8.2) ---------------

// Bounds of the texts a key release request carries (docs/protocol.md §5).
inline constexpr size_t kMaxSignedDescriptorBytes = 256 * 1024;
inline constexpr size_t kMaxSignedManifestBytes = 64 * 1024;


// What the signature covers, read from the verified texts.
struct SignedDescriptor {
  PackageSignature signature;
  EncryptionTag tag;
  WrappedKey wrapped_key;
  // The release policy JSON text of §4.1, nullopt when the descriptor has none.
  std::optional<std::string> release_policy;
};

// Checks the texts, in this order, before any key is touched: the bounds
// above; a certificate is present (FAILED_PRECONDITION "unsigned_package:
// ..."); it parses and its signature over the manifest, which it must name
// "<stem>.mf", verifies (UNAUTHENTICATED "bad_signature: ..."); the manifest
// lists `descriptor_name` with the digest of `descriptor` (UNAUTHENTICATED
// "bad_signature: ..." on a mismatch); the descriptor parses and has a
// valid EncryptionSection (INVALID_ARGUMENT otherwise). Who signed is
// VerifySigner's question.
StatusOr<SignedDescriptor> VerifySignedDescriptor(const SignedPackageTexts& texts);

// Checks that the signer certificate of `sig` holds exactly the public key
// of `registered_cert_pem` (the tenant's registered signing certificate) and
// passes VerifySigner against `roots` for `tenant`. UNAUTHENTICATED
// "signer_mismatch: ..." otherwise.
Status VerifyRegisteredSigner(const PackageSignature& sig, const std::string& registered_cert_pem,
                              const std::vector<crypto::Certificate>& roots,
                              std::string_view tenant);

}  // namespace vmseal::ovf

#endif  // VMSEAL_OVF_SIGNATURE_H_
