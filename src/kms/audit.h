// The KMS audit log (docs/format/audit-log.md): each record is the canonical
// JSON {"details","event","prev_hash","seq","subject","time"} (keys sorted,
// no whitespace). Records form an RFC 6962 Merkle tree (leaf seq-1 = the
// record's bytes) whose heads the KMS signs as C2SP checkpoints with its log
// key; verification is by the tree and against checkpoints. The older hash
// chain (hash = SHA-256(prev_hash_bytes || record), prev_hash of record 1
// 32 zero bytes) is still written and checked.
#ifndef VMSEAL_KMS_AUDIT_H_
#define VMSEAL_KMS_AUDIT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "kms/kek.h"
#include "kms/store.h"
#include "tlog/merkle.h"
#include "tlog/note.h"

namespace vmseal::kms {

// Hex of 32 zero bytes: prev_hash of record 1.
inline constexpr const char* kAuditGenesisHash =
    "0000000000000000000000000000000000000000000000000000000000000000";

// Builds record `seq` chained to `prev_hash_hex`.
AuditRecord MakeAuditRecord(int64_t seq, int64_t time_unix, const AuditEvent& event,
                            const std::string& prev_hash_hex);

// The chain head after verifying (and, from VerifyStoreAudit, the tree).
struct AuditHead {
  int64_t count = 0;
  std::string hash = kAuditGenesisHash;
  std::string root_hex;               // tree head of `count` leaves
  std::string log_key;                // verifier key the checkpoints were checked with
  int64_t newest_checkpoint_size = -1;  // the newest issued checkpoint checked, -1: none
  int64_t saved_checkpoint_size = -1;   // the caller's checkpoint checked, -1: none
};

// Verifies records in order starting from the genesis: seq 1, 2, ... with no
// gap, each record's own seq and prev_hash fields match, each hash
// recomputes. DATA_LOSS "audit record <seq>: ..." on the first failure.
// Removing the newest records is only detectable against a head recorded
// elsewhere: pass `expected_head` (count and hash) when you have one.
StatusOr<AuditHead> VerifyAuditChain(const std::vector<AuditRecord>& records);

struct AuditVerifyOptions {
  // A signed checkpoint saved earlier (e.g. `kms audit checkpoint` output);
  // "" for none. The log must be an extension of it.
  std::string checkpoint;
  // The log's verifier key ("<name>+<id>+<key>") to check checkpoints with;
  // "" takes the one the log recorded when the key was created.
  std::string log_key;
};

// Reads the whole log from `store` in pages and verifies it: the chain; the
// tree recomputed from the records against the stored tree head; and the
// log as an extension (RFC 6962 consistency) of the newest checkpoint the
// KMS issued and of `options.checkpoint`. DATA_LOSS naming what failed:
// "truncated: ...", "rewritten: ...", "fork or rewrite: ...";
// UNAUTHENTICATED if a checkpoint's signature does not verify.
StatusOr<AuditHead> VerifyStoreAudit(Store& store, const AuditVerifyOptions& options = {});

// The store's audit tree as a proof generator's node source.
class StoreAuditNodes : public tlog::NodeSource {
 public:
  explicit StoreAuditNodes(Store& store) : store_(store) {}
  StatusOr<tlog::Hash> Node(int level, uint64_t index) override { return store_.AuditNode(level, index); }

 private:
  Store& store_;
};

// The log's signed views: checkpoints and proofs, signed with the KMS log
// key (Ed25519), which is created once per store, wrapped under the KEK and
// audited like the nonce MAC key. Thread-safe.
class AuditLog {
 public:
  // Loads the log key, creating it if the store has none. kek_mismatch
  // (FAILED_PRECONDITION) if the store's key is wrapped under another KEK.
  static StatusOr<std::unique_ptr<AuditLog>> Open(Store* store, const KeyEncryptionKey* kek);

  // The checkpoint origin and key name, "vmseal-kms/audit/<16 hex>".
  const std::string& origin() const { return signer_->key_name(); }
  // The verifier key customers and operators pin.
  std::string verifier_key() const { return signer_->VerifierKey(); }

  // A signed checkpoint (signed note) of the current tree, also remembered
  // in the store as the newest issued.
  StatusOr<std::string> Checkpoint();
  // c2sp.org/tlog-proof@v1 text proving record `seq` (1-based) is in the
  // tree of `size` leaves (0: the current tree), with a signed checkpoint of
  // that size; the record's bytes are the proof's extra data.
  StatusOr<std::string> InclusionProof(int64_t seq, int64_t size);
  // vmseal.dev/tlog-consistency@v1 text from the tree of `old_size` leaves
  // to the tree of `size` leaves (0: current), with a signed checkpoint of
  // `size`.
  StatusOr<std::string> ConsistencyProof(int64_t old_size, int64_t size);

  // Proofs of several records against one signed checkpoint of the current
  // tree (one signature for them all), and a consistency proof from
  // `old_size` records to it when 0 < old_size <= its size (none for a
  // larger old_size: the verifier reports that truncation). DATA_LOSS if a
  // record is missing.
  struct RecordProofs {
    uint64_t size = 0;
    std::string checkpoint;
    std::vector<std::string> inclusion;  // tlog-proof text per seq, in order
    std::string consistency;             // "" when old_size == 0
  };
  StatusOr<RecordProofs> ProveRecords(const std::vector<int64_t>& seqs, int64_t old_size);

 private:
  AuditLog(Store* store, std::unique_ptr<tlog::NoteSigner> signer)
      : store_(store), signer_(std::move(signer)) {}
  // The size to prove against (0 = current) and its signed checkpoint.
  StatusOr<std::pair<uint64_t, std::string>> SignedAt(int64_t size);

  Store* const store_;
  const std::unique_ptr<tlog::NoteSigner> signer_;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_AUDIT_H_
