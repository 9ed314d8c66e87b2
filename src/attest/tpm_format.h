// Parsing and checking of the TPM 2.0 structures carried in attestation
// evidence (TPM 2.0 Library Part 2), with tss2-mu for the byte layout and
// OpenSSL for the keys. No TPM is needed. See docs/format/attestation.md.
#ifndef VMSEAL_ATTEST_TPM_FORMAT_H_
#define VMSEAL_ATTEST_TPM_FORMAT_H_

#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::attest {

using crypto::Bytes;

// docs/format/attestation.md "Conventions".
inline constexpr uint32_t kTpmGeneratedMagic = 0xff544347;  // TPM_GENERATED_VALUE
inline constexpr uint16_t kAttestTypeCertify = 0x8017;      // TPM_ST_ATTEST_CERTIFY
inline constexpr uint16_t kAttestTypeQuote = 0x8018;        // TPM_ST_ATTEST_QUOTE
inline constexpr size_t kMaxNonceBytes = 64;                // TPM2B_DATA limit
inline constexpr size_t kMinNonceBytes = 16;
inline constexpr size_t kRsaKeyBits = 2048;
inline constexpr uint32_t kMaxPcrIndex = 23;  // PC Client: 24 PCRs

// Unmarshals a whole TPMS_ATTEST (no trailing bytes), checks the magic and
// that its type is `expected_type`. Fails with malformed_evidence.
StatusOr<TPMS_ATTEST> ParseAttest(std::span<const uint8_t> bytes, uint16_t expected_type);

// Unmarshals a whole TPMT_PUBLIC (no trailing bytes). malformed_evidence.
StatusOr<TPMT_PUBLIC> ParsePublic(std::span<const uint8_t> bytes);

// Marshals a TPMT_PUBLIC (the exact bytes the name is computed over).
StatusOr<Bytes> MarshalPublic(const TPMT_PUBLIC& pub);

// Unmarshals a whole TPMT_SIGNATURE and requires RSASSA with SHA-256.
StatusOr<TPMT_SIGNATURE> ParseSignature(std::span<const uint8_t> bytes);

// The object name for a SHA-256 nameAlg: 0x000B || SHA-256(marshalled_public).
Bytes ComputeName(std::span<const uint8_t> marshalled_public);

// An OpenSSL RSA public key from an RSA TPMT_PUBLIC (exponent 0 = 65537).
StatusOr<crypto::EvpPkeyPtr> RsaPublicKey(const TPMT_PUBLIC& pub);

// The TPML_PCR_SELECTION for `pcrs` in the SHA-256 bank (sizeofSelect 3).
// `pcrs` must be non-empty, each <= kMaxPcrIndex.
StatusOr<TPML_PCR_SELECTION> MakePcrSelection(const std::vector<uint32_t>& pcrs);

// The sorted PCR indices a TPML_PCR_SELECTION selects, which must be one
// SHA-256 bank; fails otherwise.
StatusOr<std::vector<uint32_t>> PcrIndices(const TPML_PCR_SELECTION& selection);

// Verifies an RSASSA-PKCS1-v1_5 SHA-256 signature over `message`.
// bad_signature on mismatch.
Status VerifyRsaSsaSha256(EVP_PKEY* key, std::span<const uint8_t> message,
                          const TPMT_SIGNATURE& signature);

// Exponent as used in the TPM (0 in the structure means 65537).
inline uint32_t RsaExponent(const TPMT_PUBLIC& pub) {
  return pub.parameters.rsaDetail.exponent == 0 ? 65537u : pub.parameters.rsaDetail.exponent;
}

// The bytes of a TPM2B-like buffer.
template <typename T>
Bytes B(const T& tpm2b) {
  return Bytes(tpm2b.buffer, tpm2b.buffer + tpm2b.size);
}

}  // namespace vmseal::attest

#endif  // VMSEAL_ATTEST_TPM_FORMAT_H_
