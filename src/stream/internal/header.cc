#include "stream/internal/header.h"

#include <openssl/crypto.h>

#include <cstring>
#include <string>

#include "crypto/primitives.h"

namespace vmseal::stream::internal {
namespace {

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
}
uint32_t GetU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
void AppendU32(std::vector<uint8_t>& out, uint32_t v) {
  uint8_t b[4];
  PutU32(b, v);
  out.insert(out.end(), b, b + 4);
}
void AppendU64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

std::vector<uint8_t> Info(std::string_view label, std::span<const uint8_t> prefix,
                          std::span<const uint8_t> context_bytes) {
  std::vector<uint8_t> info(label.begin(), label.end());
  info.push_back(0x00);
  info.insert(info.end(), prefix.begin(), prefix.end());
  info.insert(info.end(), context_bytes.begin(), context_bytes.end());
  return info;
}

}  // namespace

uint64_t Layout::PlaintextChunkBytes(uint64_t index) const {
  if (index + 1 < chunk_count) return chunk_size_bytes;
  return plaintext_bytes - (chunk_count - 1) * uint64_t{chunk_size_bytes};
}

Status ValidateChunkSize(uint32_t chunk_size_bytes) {
  if (chunk_size_bytes < kMinChunkSizeBytes || chunk_size_bytes > kMaxChunkSizeBytes) {
    return InvalidArgumentError("invalid chunk size " + std::to_string(chunk_size_bytes) +
                                " (must be between " + std::to_string(kMinChunkSizeBytes) +
                                " and " + std::to_string(kMaxChunkSizeBytes) + " bytes)");
  }
  return OkStatus();
}

Status ValidateContext(const StreamContext& context) {
  if (context.image_id.size() > kMaxContextFieldBytes ||
      context.tenant.size() > kMaxContextFieldBytes) {
    return InvalidArgumentError("stream context field longer than 4096 bytes");
  }
  return OkStatus();
}

StatusOr<Layout> LayoutForPlaintext(uint64_t plaintext_bytes, uint32_t chunk_size_bytes) {
  RETURN_IF_ERROR(ValidateChunkSize(chunk_size_bytes));
  uint64_t n = plaintext_bytes == 0 ? 1 : (plaintext_bytes - 1) / chunk_size_bytes + 1;
  if (n > kMaxChunks) {
    return OutOfRangeError("input too large for the stream format (more than 2^32 chunks)");
  }
  Layout layout;
  layout.chunk_size_bytes = chunk_size_bytes;
  layout.chunk_count = n;
  layout.plaintext_bytes = plaintext_bytes;
  layout.sealed_bytes = kHeaderBytes + plaintext_bytes + n * kTagBytes;
  return layout;
}

StatusOr<Layout> LayoutForSealed(uint64_t sealed_bytes, uint32_t chunk_size_bytes) {
  RETURN_IF_ERROR(ValidateChunkSize(chunk_size_bytes));
  if (sealed_bytes < kMinSealedBytes) {
    return InvalidArgumentError("truncated stream: no chunks after the header");
  }
  const uint64_t body = sealed_bytes - kHeaderBytes;
  const uint64_t b = uint64_t{chunk_size_bytes} + kTagBytes;
  const uint64_t n = (body - 1) / b + 1;
  const uint64_t r = body - (n - 1) * b;
  if (n > kMaxChunks) return InvalidArgumentError("invalid stream length: too many chunks");
  if (r < kTagBytes || (r == kTagBytes && n > 1)) {
    return InvalidArgumentError("invalid stream length: truncated final chunk");
  }
  Layout layout;
  layout.chunk_size_bytes = chunk_size_bytes;
  layout.chunk_count = n;
  layout.plaintext_bytes = body - n * kTagBytes;
  layout.sealed_bytes = sealed_bytes;
  return layout;
}

std::vector<uint8_t> EncodeContext(const StreamContext& context) {
  std::vector<uint8_t> out;
  AppendU32(out, static_cast<uint32_t>(context.image_id.size()));
  out.insert(out.end(), context.image_id.begin(), context.image_id.end());
  AppendU32(out, static_cast<uint32_t>(context.tenant.size()));
  out.insert(out.end(), context.tenant.begin(), context.tenant.end());
  AppendU64(out, context.key_version);
  return out;
}

StatusOr<Header> ParseHeader(std::span<const uint8_t> bytes) {
  if (bytes.size() < kMagicBytes || std::memcmp(bytes.data(), kMagic, kMagicBytes) != 0) {
    return InvalidArgumentError("not a vmseal stream");
  }
  if (bytes.size() < kChunkSizeOffset) return InvalidArgumentError("truncated stream header");
  uint32_t version = GetU32(bytes.data() + kVersionOffset);
  if (version != kVersion) {
    return InvalidArgumentError("unsupported stream version " + std::to_string(version));
  }
  if (bytes.size() < kHeaderBytes) return InvalidArgumentError("truncated stream header");
  Header h;
  h.chunk_size_bytes = GetU32(bytes.data() + kChunkSizeOffset);
  RETURN_IF_ERROR(ValidateChunkSize(h.chunk_size_bytes));
  std::memcpy(h.salt.data(), bytes.data() + kSaltOffset, kSaltBytes);
  std::memcpy(h.commitment.data(), bytes.data() + kCommitmentOffset, kCommitmentBytes);
  return h;
}

std::array<uint8_t, kHeaderPrefixBytes> EncodeHeaderPrefix(uint32_t chunk_size_bytes,
                                                           const Salt& salt) {
  std::array<uint8_t, kHeaderPrefixBytes> p{};
  std::memcpy(p.data(), kMagic, kMagicBytes);
  PutU32(p.data() + kVersionOffset, kVersion);
  PutU32(p.data() + kChunkSizeOffset, chunk_size_bytes);
  std::memcpy(p.data() + kSaltOffset, salt.data(), kSaltBytes);
  return p;
}

StatusOr<DerivedKeys> DeriveKeys(const SecretBytes& data_key, uint32_t chunk_size_bytes,
                                 const Salt& salt, const StreamContext& context) {
  if (data_key.size() != kDataKeyBytes) {
    return InvalidArgumentError("data key must be 32 bytes");
  }
  RETURN_IF_ERROR(ValidateContext(context));
  auto prefix = EncodeHeaderPrefix(chunk_size_bytes, salt);
  std::vector<uint8_t> ctx = EncodeContext(context);
  DerivedKeys keys;
  ASSIGN_OR_RETURN(keys.stream_key,
                   crypto::HkdfSha256(data_key, salt, Info(kKeyLabel, prefix, ctx),
                                      kStreamKeyBytes));
  ASSIGN_OR_RETURN(SecretBytes commitment,
                   crypto::HkdfSha256(data_key, salt, Info(kCommitmentLabel, prefix, ctx),
                                      kCommitmentBytes));
  std::memcpy(keys.commitment.data(), commitment.UnsafeData(), kCommitmentBytes);
  return keys;
}

HeaderBytes EncodeHeader(uint32_t chunk_size_bytes, const Salt& salt,
                         std::span<const uint8_t, kCommitmentBytes> commitment) {
  HeaderBytes h{};
  auto prefix = EncodeHeaderPrefix(chunk_size_bytes, salt);
  std::memcpy(h.data(), prefix.data(), prefix.size());
  std::memcpy(h.data() + kCommitmentOffset, commitment.data(), kCommitmentBytes);
  return h;
}

StatusOr<SecretBytes> DeriveAndCheck(const SecretBytes& data_key, const Header& header,
                                     const StreamContext& context) {
  ASSIGN_OR_RETURN(DerivedKeys keys,
                   DeriveKeys(data_key, header.chunk_size_bytes, header.salt, context));
  if (CRYPTO_memcmp(keys.commitment.data(), header.commitment.data(), kCommitmentBytes) !=
      0) {
    return DataLossError("decryption failed");
  }
  return std::move(keys.stream_key);
}

}  // namespace vmseal::stream::internal
