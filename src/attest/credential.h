// TPM2_MakeCredential in software (TPM 2.0 Library Part 1, §24 "Credential
// Protection"; Part 3 §12.6), for enrolling an AK: the secret can only be
// recovered by TPM2_ActivateCredential in the TPM that holds both the EK and
// an object whose name is `ak_name`. Pure OpenSSL EVP (RSA-OAEP, KBKDF as
// KDFa, AES-128-CFB, HMAC-SHA256). Thread-safe.
#ifndef VMSEAL_ATTEST_CREDENTIAL_H_
#define VMSEAL_ATTEST_CREDENTIAL_H_

#include <openssl/evp.h>

#include <span>

#include "attest/evidence.h"
#include "base/secret_bytes.h"
#include "base/status.h"

namespace vmseal::attest {

// Protects `credential` (1..32 bytes) to the EK `ek_public` (RSA-2048 key of a
// TCG default EK: nameAlg SHA-256, symmetric AES-128-CFB) for the object named
// `ak_name` (34 bytes: 0x000B || SHA-256). Uses a fresh random seed.
StatusOr<CredentialChallenge> MakeCredential(EVP_PKEY* ek_public, std::span<const uint8_t> ak_name,
                                             const SecretBytes& credential);

// Compares the host's ActivateCredential answer with the issued credential in
// constant time; credential_mismatch if they differ.
Status CheckActivation(const SecretBytes& issued, const SecretBytes& answer);

}  // namespace vmseal::attest

#endif  // VMSEAL_ATTEST_CREDENTIAL_H_
