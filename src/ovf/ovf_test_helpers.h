// Test-only helpers for the ovf tests: RSA keys, raw tar building (including
// hostile members the writer refuses), schema validation with xmllint.
#ifndef VMSEAL_OVF_OVF_TEST_HELPERS_H_
#define VMSEAL_OVF_OVF_TEST_HELPERS_H_

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <cstring>
#include <string>
#include <vector>

#include "crypto/ssl_util.h"
#include "testing/test_util.h"

namespace vmseal::ovf::testing {

struct RsaKeyPem {
  std::string private_pem;
  std::string public_pem;
};

inline RsaKeyPem NewRsaKey() {
  crypto::EvpPkeyPtr key(EVP_RSA_gen(2048));
  RsaKeyPem out;
  crypto::BioPtr priv(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(priv.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  char* data = nullptr;
  long n = BIO_get_mem_data(priv.get(), &data);
  out.private_pem.assign(data, n);
  crypto::BioPtr pub(BIO_new(BIO_s_mem()));
  PEM_write_bio_PUBKEY(pub.get(), key.get());
  n = BIO_get_mem_data(pub.get(), &data);
  out.public_pem.assign(data, n);
  return out;
}

// Two keys shared by a test binary (RSA key generation is slow).
inline const RsaKeyPem& TestKey() {
  static const RsaKeyPem* key = new RsaKeyPem(NewRsaKey());
  return *key;
}
inline const RsaKeyPem& OtherTestKey() {
  static const RsaKeyPem* key = new RsaKeyPem(NewRsaKey());
  return *key;
}

// A member for RawTar: any name, any type flag.
struct RawMember {
  std::string name;
  std::string data;
  char type = '0';
  std::string linkname;
};

// A USTAR archive built without any validation.
inline std::string RawTar(const std::vector<RawMember>& members) {
  std::string out;
  for (const RawMember& m : members) {
    char h[512];
    std::memset(h, 0, sizeof(h));
    std::memcpy(h, m.name.data(), std::min<size_t>(m.name.size(), 100));
    std::snprintf(h + 100, 8, "%07o", 0644);
    std::snprintf(h + 108, 8, "%07o", 0);
    std::snprintf(h + 116, 8, "%07o", 0);
    std::snprintf(h + 124, 12, "%011llo", static_cast<unsigned long long>(m.data.size()));
    std::snprintf(h + 136, 12, "%011o", 0);
    h[156] = m.type;
    std::memcpy(h + 157, m.linkname.data(), std::min<size_t>(m.linkname.size(), 100));
    std::memcpy(h + 257, "ustar", 6);
    std::memcpy(h + 263, "00", 2);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    std::snprintf(h + 148, 8, "%06o", sum);
    h[155] = ' ';
    out.append(h, 512);
    out += m.data;
    out.append((512 - m.data.size() % 512) % 512, '\0');
  }
  out.append(1024, '\0');
  return out;
}

inline std::string SchemaPath() {
  return vmseal::testing::SourceDir() + "/third_party/dmtf-ovf-schema/dsp8023_2.0.1.xsd";
}

// Validates an OVF descriptor file with xmllint against DSP8023 2.0.1.
inline ::testing::AssertionResult ValidatesAgainstSchema(const std::string& path) {
  std::string out;
  int rc = vmseal::testing::RunCommand(
      {"xmllint", "--noout", "--nonet", "--schema", SchemaPath(), path}, &out, 120);
  if (rc == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << path << " does not validate:\n" << out;
}

}  // namespace vmseal::ovf::testing

#endif  // VMSEAL_OVF_OVF_TEST_HELPERS_H_
