// The hash-chained audit log format (docs/kms-audit.md): each record is the
// canonical JSON {"details","event","prev_hash","seq","subject","time"} (keys
// sorted, no whitespace) and its hash is SHA-256(prev_hash_bytes || record),
// with prev_hash of the first record 32 zero bytes.
#ifndef VMSEAL_KMS_AUDIT_H_
#define VMSEAL_KMS_AUDIT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "kms/store.h"

namespace vmseal::kms {

// Hex of 32 zero bytes: prev_hash of record 1.
inline constexpr const char* kAuditGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";

// Builds record `seq` chained to `prev_hash_hex`.
AuditRecord MakeAuditRecord(int64_t seq, int64_t time_unix, const AuditEvent& event,
                            const std::string& prev_hash_hex);

// The chain head after verifying.
struct AuditHead {
  int64_t count = 0;
  std::string hash = kAuditGenesisHash;
};

// Verifies records in order starting from the genesis: seq 1, 2, ... with no
// gap, each record's own seq and prev_hash fields match, each hash
// recomputes. DATA_LOSS "audit record <seq>: ..." on the first failure.
// Removing the newest records is only detectable against a head recorded
// elsewhere: pass `expected_head` (count and hash) when you have one.
StatusOr<AuditHead> VerifyAuditChain(const std::vector<AuditRecord>& records);

// Reads the whole log from `store` in pages and verifies it.
StatusOr<AuditHead> VerifyStoreAudit(Store& store);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_AUDIT_H_
