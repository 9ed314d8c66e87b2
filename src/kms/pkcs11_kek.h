// A KEK held in a PKCS#11 token (SoftHSM2 in tests, an HSM in production).
// The AES-256 key is generated inside the token as sensitive and
// non-extractable; wrapping and unwrapping are CKM_AES_GCM operations in the
// token, so the KEK never enters this process. The wrapped-key format and
// associated data are the same as the file KEK (kms/kek.h).
#ifndef VMSEAL_KMS_PKCS11_KEK_H_
#define VMSEAL_KMS_PKCS11_KEK_H_

#include <memory>
#include <string>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "kms/kek.h"

namespace vmseal::kms {

struct Pkcs11KekOptions {
  // Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
  std::string module_path;
  // Label of the initialised token to use.
  std::string token_label;
  // The user PIN. Never logged.
  SecretBytes pin;
  // CKA_LABEL of the AES key in the token.
  std::string key_label = "vmseal-kms-kek";
  // Generate the key in the token when it does not exist yet (kms init);
  // otherwise a missing key is NOT_FOUND.
  bool create_if_missing = false;
};

// Opens a session, logs in and finds (or creates) the key.
StatusOr<std::unique_ptr<KeyEncryptionKey>> OpenPkcs11Kek(const Pkcs11KekOptions& options);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_PKCS11_KEK_H_
