#include "kms/nonce.h"

namespace vmseal::kms {
namespace {

constexpr size_t kBodyBytes = 16;  // issue time || random
constexpr size_t kMacBytes = kNonceBytes - kBodyBytes;
static_assert(kMacBytes == 16, "UsedNonceCache keys on the 16-byte MAC");

StatusOr<crypto::Bytes> Mac(const SecretBytes& key, const std::string& host_id,
                            std::span<const uint8_t> body) {
  if (host_id.size() > 255) return InvalidArgumentError("nonce: host id longer than 255 bytes");
  std::string msg = "vmseal-nonce-v1";
  msg.push_back('\0');
  msg.push_back(static_cast<char>(host_id.size()));
  msg += host_id;
  msg.append(reinterpret_cast<const char*>(body.data()), body.size());
  ASSIGN_OR_RETURN(crypto::Sha256Digest mac, crypto::HmacSha256(key, crypto::AsBytes(msg)));
  return crypto::Bytes(mac.begin(), mac.begin() + kMacBytes);
}

}  // namespace

StatusOr<crypto::Bytes> MakeNonce(const SecretBytes& key, const std::string& host_id,
                                  int64_t issued_unix, std::span<const uint8_t> random) {
  if (random.size() != 8) return InvalidArgumentError("nonce: the random part is 8 bytes");
  crypto::Bytes out(8);
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>(static_cast<uint64_t>(issued_unix) >> (56 - 8 * i));
  }
  out.insert(out.end(), random.begin(), random.end());
  ASSIGN_OR_RETURN(crypto::Bytes mac, Mac(key, host_id, out));
  out.insert(out.end(), mac.begin(), mac.end());
  return out;
}

StatusOr<int64_t> OpenNonce(const SecretBytes& key, const std::string& host_id,
                            std::span<const uint8_t> nonce) {
  if (nonce.size() != kNonceBytes) {
    return PermissionDeniedError("nonce_unknown: the nonce was not issued by this KMS");
  }
  auto mac = Mac(key, host_id, nonce.first(kBodyBytes));
  if (!mac.ok() || !crypto::ConstantTimeEquals(*mac, nonce.subspan(kBodyBytes))) {
    return PermissionDeniedError("nonce_unknown: the nonce was not issued by this KMS for this host");
  }
  uint64_t issued = 0;
  for (size_t i = 0; i < 8; ++i) issued = (issued << 8) | nonce[i];
  return static_cast<int64_t>(issued);
}

bool UsedNonceCache::TagOf(std::span<const uint8_t> nonce, Tag* tag) {
  if (nonce.size() != kNonceBytes) return false;
  std::copy(nonce.begin() + kBodyBytes, nonce.end(), tag->begin());
  return true;
}

void UsedNonceCache::Add(std::span<const uint8_t> nonce, int64_t expires_unix, int64_t now_unix) {
  Tag tag;
  if (!TagOf(nonce, &tag) || capacity_ == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (!tags_.insert(tag).second) return;
  order_.emplace_back(expires_unix, tag);
  // Insertion order is close to expiry order (one lifetime for all nonces);
  // an entry that expires early behind a later one is forgotten late, which
  // only costs memory within the bound.
  while (!order_.empty() && (order_.front().first < now_unix || order_.size() > capacity_)) {
    tags_.erase(order_.front().second);
    order_.pop_front();
  }
}

bool UsedNonceCache::Contains(std::span<const uint8_t> nonce) const {
  Tag tag;
  if (!TagOf(nonce, &tag)) return false;
  std::lock_guard<std::mutex> lock(mu_);
  return tags_.count(tag) != 0;
}

size_t UsedNonceCache::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tags_.size();
}

}  // namespace vmseal::kms
