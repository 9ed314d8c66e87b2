// Machine-readable reasons for attestation failures. Every verification
// failure in vmseal::attest is a Status whose message starts with the reason's
// name followed by ": " and a one-line detail, e.g.
// "nonce_mismatch: quote extraData differs from the issued nonce". The KMS
// stores and reports the name; ReasonOf() recovers the enum from a Status.
#ifndef VMSEAL_ATTEST_REASON_H_
#define VMSEAL_ATTEST_REASON_H_

#include <string>
#include <string_view>

#include "base/status.h"

namespace vmseal::attest {

enum class Reason {
  kNone = 0,                // Not an attestation failure (or OK).
  kMalformedEvidence,       // Bytes do not parse as the expected structure.
  kBadSignature,            // Signature does not verify under the AK.
  kNonceMismatch,           // extraData differs from the issued nonce.
  kPcrSelectionMismatch,    // Quote covers other PCRs than requested.
  kPcrDigestMismatch,       // pcrDigest differs from the reported values.
  kBindingKeyNotCertified,  // Certify names a different key.
  kBindingKeyAttributes,    // Certified key has the wrong attributes/scheme.
  kAkAttributes,            // AK public is not a restricted signing key.
  kEkChainInvalid,          // EK certificate does not chain to the CA bundle.
  kCredentialMismatch,      // ActivateCredential answer differs.
};

// "malformed_evidence", "bad_signature", ... ("none" for kNone).
std::string_view ReasonName(Reason reason);

// A failure: INVALID_ARGUMENT for kMalformedEvidence, PERMISSION_DENIED for
// the others; message "<name>: <detail>". `detail` must not hold secrets.
Status AttestFailure(Reason reason, std::string_view detail);

// The reason encoded in `status` by AttestFailure, or kNone.
Reason ReasonOf(const Status& status);

}  // namespace vmseal::attest

#endif  // VMSEAL_ATTEST_REASON_H_
