// Seeds a store with many customer keys quickly (KEK rotation tests and
// kek_rotation bench): real X25519 PKCS#8 private keys (one random key
// each), each wrapped under `kek` with its own key id and customer id as
// associated data, exactly as KmsService::CreateCustomerKey stores them,
// but inserted with multi-row INSERTs in one transaction per 1000 rows
// (no certificate is issued: cert_pem and public_key_pem are placeholders,
// which KEK rotation never reads).
#ifndef VMSEAL_KMS_TESTING_SEED_KEYS_H_
#define VMSEAL_KMS_TESTING_SEED_KEYS_H_

#include <cstdint>
#include <string>

#include "base/status.h"
#include "kms/kek.h"
#include "kms/store.h"

namespace vmseal::kms_testing {

// Inserts keys "<prefix>-000000".. of customers "<prefix>-c000000".. (one
// key, version 1, per customer).
Status SeedWrappedKeys(kms::Store* store, const kms::KeyEncryptionKey& kek, int64_t count, const std::string& prefix);

// Unwraps every stored key with `kek` (by the KEK each record names) and
// checks that it parses as a PKCS#8 private key; returns how many opened.
// The first failure is returned as an error naming the key.
StatusOr<int64_t> OpenEveryKey(kms::Store* store, const kms::KeyEncryptionKey& kek);

}  // namespace vmseal::kms_testing

#endif  // VMSEAL_KMS_TESTING_SEED_KEYS_H_
