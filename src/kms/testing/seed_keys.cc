#include "kms/testing/seed_keys.h"

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "crypto/primitives.h"

namespace vmseal::kms_testing {
namespace {

// PKCS#8 PrivateKeyInfo of an X25519 key (RFC 8410): this prefix || 32 bytes.
constexpr uint8_t kX25519Pkcs8Prefix[] = {0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06,
                                          0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20};

std::string Numbered(const std::string& prefix, const char* infix, int64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%06lld", infix, static_cast<long long>(i));
  return prefix + "-" + buf;
}

}  // namespace

Status SeedWrappedKeys(kms::Store* store, const kms::KeyEncryptionKey& kek, int64_t count, const std::string& prefix) {
  constexpr int64_t kRows = 1000;
  for (int64_t start = 0; start < count; start += kRows) {
    std::string customers = "INSERT INTO customers (customer_id, created_unix) VALUES ";
    std::string keys =
        "INSERT INTO customer_keys (key_id, customer_id, algorithm, public_key_pem, cert_pem, "
        "wrapped_private_key, kek_id, created_unix, version, retired_unix) VALUES ";
    for (int64_t i = start; i < std::min(count, start + kRows); ++i) {
      const std::string key_id = Numbered(prefix, "", i);
      const std::string customer = Numbered(prefix, "c", i);
      SecretBytes der(sizeof(kX25519Pkcs8Prefix) + 32);
      std::copy(std::begin(kX25519Pkcs8Prefix), std::end(kX25519Pkcs8Prefix), der.UnsafeMutableData());
      const SecretBytes raw = SecretBytes::Random(32);
      std::copy(raw.UnsafeData(), raw.UnsafeData() + raw.size(),
                der.UnsafeMutableData() + sizeof(kX25519Pkcs8Prefix));
      ASSIGN_OR_RETURN(std::string wrapped, kek.Wrap(der, kms::CustomerKeyAad(key_id, customer)));
      if (i != start) {
        customers.append(", ");
        keys.append(", ");
      }
      customers.append("('").append(customer).append("', 1)");
      keys.append("('").append(key_id).append("', '").append(customer).append("', 'X25519', 'seeded', 'seeded', '");
      keys.append(crypto::Base64Encode(crypto::AsBytes(wrapped))).append("', '").append(kek.id()).append("', 1, 1, 0)");
    }
    RETURN_IF_ERROR(store->ExecForTesting("BEGIN; " + customers + "; " + keys + "; COMMIT;"));
  }
  return OkStatus();
}

StatusOr<int64_t> OpenEveryKey(kms::Store* store, const kms::KeyEncryptionKey& kek) {
  int64_t opened = 0;
  std::string cursor;
  for (;;) {
    // Every key not under a KEK named "" (none is): the whole table by key id.
    ASSIGN_OR_RETURN(auto keys, store->ListKeysNotUnderKek("", cursor, 1000));
    if (keys.empty()) break;
    for (const auto& k : keys) {
      ASSIGN_OR_RETURN(crypto::Bytes blob, crypto::Base64Decode(k.wrapped_private_key));
      auto der = kek.UnwrapUnder(k.kek_id, crypto::AsStringView(blob), kms::CustomerKeyAad(k.key_id, k.customer_id));
      if (!der.ok()) return der.status().WithPrefix("key " + k.key_id);
      const unsigned char* p = der->UnsafeData();
      EVP_PKEY* pkey = d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der->size()));
      if (pkey == nullptr) return DataLossError("key " + k.key_id + " does not parse");
      EVP_PKEY_free(pkey);
      ++opened;
    }
    cursor = keys.back().key_id;
  }
  return opened;
}

}  // namespace vmseal::kms_testing
