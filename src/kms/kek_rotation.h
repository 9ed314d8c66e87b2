// KEK rotation (issue 19; docs/operations.md "Rotating the KEK").
//
// A serving KMS holds its KEK as a KekRing: the current KEK, which wraps
// everything new, and the previous ones still named by stored records,
// which only unwrap. Every wrapped record names its KEK (`kek_id` of a
// customer key; the "<kek id> " prefix of a service secret), so a record is
// opened by exactly the KEK it names.
//
// KekRotation drives a rotation in a serving process, through operator
// routes (`vmseal kms rotate-kek`):
//   Reload  re-reads the KEKs of kms.json (current + previous: the CLI wrote
//           them) into the ring; the key material comes from the KEK file
//           or the PKCS#11 token, never over the network;
//   Start   re-wraps, in a background thread, every customer key and
//           service secret that names another KEK than the current one, in
//           batches, each key replaced by compare-and-set on its wrapped
//           blob (a key deleted or re-wrapped by another process meanwhile
//           is left alone); resumable: a rotation started again after a
//           crash skips what names the current KEK already;
//   Retire  drops a previous KEK from the ring, refused (kek_in_use) while
//           any record names it.
// Start, finish and retirement are audited (kms.kek_rotation.*).
#ifndef VMSEAL_KMS_KEK_ROTATION_H_
#define VMSEAL_KMS_KEK_ROTATION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <pthread.h>

#include "base/status.h"
#include "kms/kek.h"
#include "kms/store.h"

namespace vmseal::kms {

// The current KEK and the previous ones. Thread-safe; members are never
// freed while the ring lives (id() hands out references to their ids).
class KekRing : public KeyEncryptionKey {
 public:
  explicit KekRing(std::unique_ptr<KeyEncryptionKey> current);

  const std::string& id() const override;
  StatusOr<std::string> Wrap(const SecretBytes& plaintext, std::string_view aad) const override;
  // Tries the current KEK, then the previous ones (for callers that do not
  // know the record's KEK); prefer UnwrapUnder.
  StatusOr<SecretBytes> Unwrap(std::string_view wrapped, std::string_view aad) const override;
  bool Holds(std::string_view kek_id) const override;
  StatusOr<SecretBytes> UnwrapUnder(std::string_view kek_id, std::string_view wrapped,
                                    std::string_view aad) const override;
  // Wraps under the current KEK and holds the ring's write gate until the
  // result's `hold` is released: Install waits for every such hold, so once
  // a reload has returned no record can be stored under the KEK it replaced.
  StatusOr<WrappedForRecord> WrapForRecord(const SecretBytes& plaintext, std::string_view aad) const override;

  // Wraps under the member `kek_id` (FAILED_PRECONDITION if not held).
  StatusOr<std::string> WrapUnder(std::string_view kek_id, const SecretBytes& plaintext,
                                  std::string_view aad) const;
  // Makes `kek` the current KEK; the former current stays as a previous
  // one. A KEK the ring holds already (same id) becomes current again.
  // Waits for the holds of WrapForRecord that name the former current KEK.
  void Install(std::unique_ptr<KeyEncryptionKey> kek);
  // Adds `kek` as a previous KEK (no-op if held).
  void AddPrevious(std::unique_ptr<KeyEncryptionKey> kek);
  // Stops unwrapping under `kek_id`: FAILED_PRECONDITION if it is the
  // current KEK, NOT_FOUND if not held.
  Status Drop(std::string_view kek_id);
  // The ids held, current first.
  std::vector<std::string> ids() const;

 private:
  const KeyEncryptionKey* FindLocked(std::string_view kek_id) const;

  // Shared by WrapForRecord until its record is stored, exclusive in
  // Install. Writer-preferring (glibc's PTHREAD_RWLOCK_PREFER_WRITER_
  // NONRECURSIVE_NP): a steady stream of key creations cannot starve a
  // reload. Taken before mu_, never while holding it.
  class WriteGate {
   public:
    WriteGate();
    ~WriteGate();
    WriteGate(const WriteGate&) = delete;
    WriteGate& operator=(const WriteGate&) = delete;
    void lock_shared();
    void unlock_shared();
    void lock();
    void unlock();

   private:
    pthread_rwlock_t lock_;
  };
  mutable WriteGate gate_;
  mutable std::shared_mutex mu_;
  std::vector<std::unique_ptr<KeyEncryptionKey>> all_;  // never shrinks
  // Duplicates of members (a reload opens the KEKs again), kept rather than
  // destroyed: closing a PKCS#11 KEK logs the whole process out of its token.
  std::vector<std::unique_ptr<KeyEncryptionKey>> retained_;
  std::set<std::string, std::less<>> dropped_;
  const KeyEncryptionKey* current_ = nullptr;
};

class KekRotation {
 public:
  // The KEKs kms.json names now: [0] current, then previous ones.
  using Loader = std::function<StatusOr<std::vector<std::unique_ptr<KeyEncryptionKey>>>()>;
  struct Options {
    int64_t batch = 500;  // keys per compare-and-set transaction
  };
  KekRotation(Store* store, KekRing* ring, Loader loader, Options options);
  KekRotation(Store* store, KekRing* ring, Loader loader) : KekRotation(store, ring, std::move(loader), Options()) {}
  ~KekRotation();  // stops a running re-wrap after its current batch

  // Re-reads the configured KEKs into the ring. FAILED_PRECONDITION
  // "kek_unexpected: ..." (the ring unchanged) unless the configured
  // current KEK is `expected_kek_id` (the operator's new KEK).
  StatusOr<nlohmann::json> Reload(const std::string& expected_kek_id);
  // Starts (or, if it runs already, reports) the re-wrap to `kek_id`,
  // which must be the ring's current KEK (else FAILED_PRECONDITION
  // "kek_not_current: ..."). Audited kms.kek_rotation.start.
  StatusOr<nlohmann::json> Start(const std::string& kek_id, const std::string& by);
  // Runs the re-wrap to the current KEK in this thread (tests, bench).
  Status RunNow(const std::string& by);
  // State, counters, the ring and the keys each KEK wraps.
  StatusOr<nlohmann::json> Describe();
  // Drops `kek_id` from the ring: FAILED_PRECONDITION "kek_in_use: ..."
  // while any customer key or service secret names it (counts given),
  // "kek_current: ..." for the current KEK, or while a re-wrap runs.
  // Audited kms.kek_rotation.retire.
  StatusOr<nlohmann::json> Retire(const std::string& kek_id, const std::string& by);

 private:
  Status Rewrap(const std::string& target, const std::string& by);
  StatusOr<int64_t> RewrapSecrets(const std::string& target, const std::string& by);
  void Join();

  Store* const store_;
  KekRing* const ring_;
  const Loader loader_;
  const Options options_;

  std::mutex mu_;  // below, and one Start/Retire/Reload at a time
  std::thread worker_;
  std::atomic<bool> running_{false};
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> rewrapped_{0};
  std::atomic<int64_t> secrets_rewrapped_{0};
  std::string state_ = "idle";  // idle, running, done, failed
  std::string target_;
  std::string error_;
  int64_t started_unix_ = 0;
  int64_t finished_unix_ = 0;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_KEK_ROTATION_H_
