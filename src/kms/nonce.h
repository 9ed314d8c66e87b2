// Attestation nonces (docs/protocol.md §5.1): 32 bytes that the KMS can
// check without having stored them, for one host and a short lifetime.
//
//   nonce = issue time (u64 big-endian unix seconds) || 8 random bytes
//           || HMAC-SHA256(key, "vmseal-nonce-v1" || 0x00 || u8 len(host_id)
//                               || host_id || first 16 bytes)[0:16]
//
// Single use is the store's job (Store::ConsumeNonce).
#ifndef VMSEAL_KMS_NONCE_H_
#define VMSEAL_KMS_NONCE_H_

#include <array>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <span>
#include <string>
#include <unordered_set>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/primitives.h"

namespace vmseal::kms {

inline constexpr size_t kNonceBytes = 32;

// The nonce for `host_id` issued at `issued_unix` with the 8-byte `random`.
// INVALID_ARGUMENT for a host id longer than 255 bytes or another size of
// `random`.
StatusOr<crypto::Bytes> MakeNonce(const SecretBytes& key, const std::string& host_id,
                                  int64_t issued_unix, std::span<const uint8_t> random);

// The issue time of a nonce made with `key` for `host_id`; PERMISSION_DENIED
// "nonce_unknown: ..." for any other nonce.
StatusOr<int64_t> OpenNonce(const SecretBytes& key, const std::string& host_id,
                            std::span<const uint8_t> nonce);

// The nonces this process has seen used, until they expire, so that a replay
// is refused before its evidence is verified and its key unwrapped (a replay
// would otherwise cost as much as a release). The store's record, checked in
// the verdict's transaction, stays the authority: across processes, and for
// the nonces this cache has forgotten. Bounded: past `capacity` entries the
// oldest are forgotten. Keyed by the nonce's MAC (uniformly random, unique
// per nonce); meant for nonces that OpenNonce accepted. Thread-safe.
class UsedNonceCache {
 public:
  explicit UsedNonceCache(size_t capacity) : capacity_(capacity) {}

  // Remembers `nonce` until `expires_unix`, forgetting the entries that
  // expired before `now_unix` and, past the capacity, the oldest. Ignores a
  // nonce of another size than kNonceBytes.
  void Add(std::span<const uint8_t> nonce, int64_t expires_unix, int64_t now_unix);
  // True if `nonce` was added and has not been forgotten.
  bool Contains(std::span<const uint8_t> nonce) const;
  size_t size() const;

 private:
  using Tag = std::array<uint8_t, 16>;
  struct TagHash {
    size_t operator()(const Tag& t) const {
      size_t h;
      std::memcpy(&h, t.data(), sizeof h);
      return h;
    }
  };
  static bool TagOf(std::span<const uint8_t> nonce, Tag* tag);

  const size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_set<Tag, TagHash> tags_;
  std::deque<std::pair<int64_t, Tag>> order_;  // (expiry, tag), in insertion order
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_NONCE_H_
