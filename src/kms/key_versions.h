// Customer key versions (issue 19): a customer's KMS key is rotated by
// creating a new version (a new key pair whose private half never leaves the
// KMS, and a new certificate); packages sealed under an older version are
// still released until the customer retires that version. The package tag's
// keyVersion (bound into the key-wrap label, docs/format/package.md §5)
// names the version a release must use: the key the tag names must be that
// version of the customer's keys, and the version must not be retired.
//
// Certificates of version 2 and later carry a second subject OU
// "key-version:N" (docs/protocol.md §1), which `vmseal seal` reads so that a
// package sealed to the certificate names its version; version 1 carries
// none (certificates issued before rotation existed).
//
// The KmsService methods of this file (RotateCustomerKey, RetireCustomerKey,
// ListCustomerKeys) are declared in service.h and defined in
// key_versions.cc.
#ifndef VMSEAL_KMS_KEY_VERSIONS_H_
#define VMSEAL_KMS_KEY_VERSIONS_H_

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "base/status.h"
#include "kms/store.h"

namespace vmseal::kms {

// "key-version:N": the OU of a version-N customer certificate (N >= 2).
std::string KeyVersionOu(int64_t version);
// The version named by a customer certificate's OUs: N for an OU
// "key-version:N", 1 if none; INVALID_ARGUMENT for a malformed one.
StatusOr<uint64_t> KeyVersionOfOu(const std::string& ou);

// The release's key-version check, with a cache of each key's version and
// retirement valid for one Store::ConfigVersion (retiring a version moves
// it). Thread-safe.
class KeyVersions {
 public:
  explicit KeyVersions(Store* store) : store_(store) {}

  // OK if the customer's key `kms_key_id` is version `tag_version` and is
  // not retired. PERMISSION_DENIED "key_version_mismatch: ..." (the tag
  // names another version than the key it names) or
  // "key_version_retired: ...". `config_version` is the one the release
  // read before calling.
  Status CheckRelease(const std::string& customer_id, const std::string& kms_key_id,
                      uint64_t tag_version, int64_t config_version);

 private:
  struct Entry {
    int64_t version = 0;
    int64_t retired_unix = 0;
  };
  Store* const store_;
  std::mutex mu_;
  int64_t cached_version_ = -1;
  std::map<std::string, Entry> entries_;  // by KMS key id
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_KEY_VERSIONS_H_
