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

#include <cstdint>
#include <span>
#include <string>

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

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_NONCE_H_
