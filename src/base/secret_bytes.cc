#include "base/secret_bytes.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>
#include <utility>

namespace vmseal {

SecretBytes::SecretBytes(size_t size) : size_(size) {
  if (size_ > 0) data_ = new uint8_t[size_]();
}

SecretBytes::SecretBytes(std::span<const uint8_t> bytes) : SecretBytes(bytes.size()) {
  if (size_ > 0) std::memcpy(data_, bytes.data(), size_);
}

SecretBytes::~SecretBytes() { Clear(); }

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Clear();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SecretBytes SecretBytes::Random(size_t size) {
  SecretBytes out(size);
  if (size > 0 && RAND_bytes(out.data_, static_cast<int>(size)) != 1) std::abort();
  return out;
}

SecretBytes SecretBytes::Clone() const { return SecretBytes(UnsafeSpan()); }

bool SecretBytes::Equals(const SecretBytes& other) const {
  if (size_ != other.size_) return false;
  if (size_ == 0) return true;
  return CRYPTO_memcmp(data_, other.data_, size_) == 0;
}

void SecretBytes::Clear() {
  if (data_ != nullptr) {
    OPENSSL_cleanse(data_, size_);
    delete[] data_;
  }
  data_ = nullptr;
  size_ = 0;
}

void WipeBytes(std::span<uint8_t> bytes) {
  if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
}

}  // namespace vmseal
