// The attestation messages exchanged between a host and the KMS, as plain
// structs, and their JSON form (base64 byte fields). The byte layouts are
// specified in docs/format/attestation.md.
#ifndef VMSEAL_ATTEST_EVIDENCE_H_
#define VMSEAL_ATTEST_EVIDENCE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "base/status.h"
#include "crypto/primitives.h"

namespace vmseal::attest {

using crypto::Bytes;

// A TPM2_Quote over the SHA-256 bank.
struct QuoteEvidence {
  Bytes attest;                   // Marshalled TPMS_ATTEST (type quote).
  Bytes signature;                // Marshalled TPMT_SIGNATURE (RSASSA-SHA256).
  std::vector<Bytes> pcr_values;  // 32-byte values, ascending PCR index.
};

// A TPM2_Certify of the binding key by the AK.
struct CertifyEvidence {
  Bytes attest;      // Marshalled TPMS_ATTEST (type certify).
  Bytes signature;   // Marshalled TPMT_SIGNATURE (RSASSA-SHA256).
  Bytes key_public;  // Marshalled TPMT_PUBLIC of the certified key.
};

// What a host sends to be trusted: both signed with the same nonce.
struct Evidence {
  Bytes nonce;                          // The nonce the KMS issued.
  std::vector<uint32_t> pcr_selection;  // Sorted SHA-256 PCR indices quoted.
  QuoteEvidence quote;
  CertifyEvidence certify;
};

// What a host sends to enroll.
struct EnrollmentRequest {
  Bytes ek_certificate;  // DER X.509 from NV 0x01c00002.
  Bytes ak_public;       // Marshalled TPMT_PUBLIC of the AK.
};

// The KMS's challenge: the contents (no size prefix) of a TPM2B_ID_OBJECT and
// a TPM2B_ENCRYPTED_SECRET, as TPM2_MakeCredential outputs them.
struct CredentialChallenge {
  Bytes credential_blob;
  Bytes encrypted_secret;
};

// JSON encodings (docs/format/attestation.md "JSON"). Decoders reject missing
// fields, wrong types and bad base64 with malformed_evidence.
std::string EvidenceToJson(const Evidence& evidence);
StatusOr<Evidence> EvidenceFromJson(std::string_view json);
// The same from an already parsed value (a field of a request body).
StatusOr<Evidence> EvidenceFromJsonValue(const nlohmann::json& value);
std::string EnrollmentRequestToJson(const EnrollmentRequest& request);
StatusOr<EnrollmentRequest> EnrollmentRequestFromJson(std::string_view json);
std::string CredentialChallengeToJson(const CredentialChallenge& challenge);
StatusOr<CredentialChallenge> CredentialChallengeFromJson(std::string_view json);

}  // namespace vmseal::attest

#endif  // VMSEAL_ATTEST_EVIDENCE_H_
