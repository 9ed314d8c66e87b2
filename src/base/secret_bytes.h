// SecretBytes: key material in a move-only buffer that is wiped on
// destruction, compared in constant time and never printed.
#ifndef VMSEAL_BASE_SECRET_BYTES_H_
#define VMSEAL_BASE_SECRET_BYTES_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace vmseal {

class SecretBytes {
 public:
  // An empty secret.
  SecretBytes() = default;
  // `size` zero bytes.
  explicit SecretBytes(size_t size);
  // A copy of `bytes`. The caller remains responsible for wiping its copy.
  explicit SecretBytes(std::span<const uint8_t> bytes);
  ~SecretBytes();

  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  // `size` bytes from the OpenSSL CSPRNG. Aborts if the RNG fails (a broken
  // invariant: nothing can be secure after that).
  static SecretBytes Random(size_t size);

  // An explicit copy, so that copies of key material are visible in review.
  SecretBytes Clone() const;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Constant-time equality (lengths are not secret).
  bool Equals(const SecretBytes& other) const;

  // Raw access. The names are deliberately ugly so that every place that
  // touches key bytes can be found with grep.
  std::span<const uint8_t> UnsafeSpan() const { return {data_, size_}; }
  std::span<uint8_t> UnsafeMutableSpan() { return {data_, size_}; }
  const uint8_t* UnsafeData() const { return data_; }
  uint8_t* UnsafeMutableData() { return data_; }

  // Wipes and releases the buffer; the object becomes empty.
  void Clear();

 private:
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Wipes `bytes` in place (OPENSSL_cleanse), for temporaries that held secrets.
void WipeBytes(std::span<uint8_t> bytes);

}  // namespace vmseal

#endif  // VMSEAL_BASE_SECRET_BYTES_H_
