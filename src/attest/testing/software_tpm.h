// Software-made TPM structures for tests (never linked into vmseal): an
// OpenSSL RSA key plays the AK and another the binding key, and quotes and
// certifications are marshalled with tss2-mu and signed in software, so the
// verifier and the KMS's release path run without a TPM.
#ifndef VMSEAL_ATTEST_TESTING_SOFTWARE_TPM_H_
#define VMSEAL_ATTEST_TESTING_SOFTWARE_TPM_H_

#include <openssl/evp.h>
#include <tss2/tss2_tpm2_types.h>

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "attest/evidence.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/keys.h"

namespace vmseal::attest::testing {

// The TPMT_PUBLIC of an RSA-2048 `key`: a restricted RSASSA-SHA256 signing
// key when `ak`, else a decryption key with the OAEP-SHA256 scheme (a
// binding key). Both fixedTPM, fixedParent, sensitiveDataOrigin.
TPMT_PUBLIC PublicFor(EVP_PKEY* key, bool ak);
// A zeroed TPMS_ATTEST of `type` (quote or certify) with the TPM's magic and
// `nonce` (at most 64 bytes) as extraData.
TPMS_ATTEST BaseAttest(uint16_t type, std::span<const uint8_t> nonce);
// Marshalled forms; a marshalling failure is a test failure (ADD_FAILURE)
// and yields empty bytes.
Bytes Marshal(const TPMT_PUBLIC& pub);
Bytes MarshalAttest(const TPMS_ATTEST& attest);
// RSASSA-PKCS1-v1_5 SHA-256 signature of `msg` by `key`, as a marshalled
// TPMT_SIGNATURE.
Bytes Sign(EVP_PKEY* key, std::span<const uint8_t> msg);

// A host's TPM in software: an AK and a binding key, both RSA-2048.
// Not thread-safe.
class SoftwareTpm {
 public:
  // Generates both keys.
  static StatusOr<SoftwareTpm> Create();

  // The marshalled TPMT_PUBLIC of the AK (what enrollment records).
  Bytes ak_public() const;

  // Evidence over `nonce`: a quote of `pcr_values` (32 bytes each, one per
  // index of the sorted `pcr_selection`) and a certification of the binding
  // key, both signed by the AK.
  Evidence Attest(std::span<const uint8_t> nonce, const std::vector<uint32_t>& pcr_selection,
                  const std::vector<Bytes>& pcr_values) const;

  // What TPM2_RSA_Decrypt with the binding key does: RSA-OAEP-SHA256 with
  // `label`, whose last byte must be zero (crypto::OaepLabel::kTpm).
  StatusOr<SecretBytes> Decrypt(std::span<const uint8_t> wrapped,
                                std::span<const uint8_t> label) const;

 private:
  SoftwareTpm(crypto::PrivateKey ak, crypto::PrivateKey binding)
      : ak_(std::move(ak)), binding_(std::move(binding)) {}
  crypto::PrivateKey ak_;
  crypto::PrivateKey binding_;
};

}  // namespace vmseal::attest::testing

#endif  // VMSEAL_ATTEST_TESTING_SOFTWARE_TPM_H_
