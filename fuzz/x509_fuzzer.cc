// X.509 certificates (src/crypto/x509, src/attest/ek_certificate) and the
// package signature file that carries them (src/ovf/signature). The first
// input byte picks the parser, the rest is its input:
//   0 one DER certificate and everything read from it (a host's EK
//     certificate, a TLS peer's)
//   1 a PEM bundle (CA bundles, enrollment's ek_certificate_pem)
//   2 an EK certificate verified against a CA bundle: 2-byte big-endian
//     length + CA bundle PEM, then the EK certificate DER
//   3 a package .cert file (signature line + PEM chain)
//   4 a chain: 2-byte length + roots PEM, then leaf and intermediates PEM
// The seeds (fuzz/corpus/x509) are certificates the project issues.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "attest/ek_certificate.h"
#include "crypto/x509.h"
#include "fuzz_util.h"
#include "ovf/signature.h"

namespace crypto = vmseal::crypto;
using vmseal::fuzz::AsText;

namespace {

void ReadAll(const crypto::Certificate& c) {
  (void)c.Fingerprint();
  (void)c.SubjectCommonName();
  (void)c.SerialHex();
  (void)c.NotBefore();
  (void)c.NotAfter();
  (void)c.GetPublicKey();
  // What parsed re-encodes and parses again.
  auto again = crypto::Certificate::FromPem(c.ToPem());
  if (!again.ok() || again->ToDer() != c.ToDer()) __builtin_trap();
}

// Splits `in` at a 2-byte big-endian length.
bool Split(std::span<const uint8_t> in, std::string_view* first, std::span<const uint8_t>* rest) {
  if (in.size() < 2) return false;
  const size_t n = (size_t{in[0]} << 8) | in[1];
  if (in.size() - 2 < n) return false;
  *first = AsText(in.data() + 2, n);
  *rest = in.subspan(2 + n);
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::span<const uint8_t> in(data + 1, size - 1);
  std::string_view first;
  std::span<const uint8_t> rest;
  switch (data[0] % 5) {
    case 0: {
      auto c = crypto::Certificate::FromDer(in);
      if (c.ok()) ReadAll(*c);
      break;
    }
    case 1: {
      auto bundle = crypto::Certificate::ParsePemBundle(AsText(in.data(), in.size()));
      if (bundle.ok()) {
        for (const auto& c : *bundle) ReadAll(c);
      }
      (void)crypto::Certificate::FromPem(AsText(in.data(), in.size()));
      break;
    }
    case 2: {
      if (!Split(in, &first, &rest)) break;
      auto verifier = vmseal::attest::EkCertificateVerifier::Create(first);
      if (verifier.ok()) (void)(*verifier)->Verify(rest);
      break;
    }
    case 3:
      (void)vmseal::ovf::ParsePackageCertificate(AsText(in.data(), in.size()));
      break;
    case 4: {
      if (!Split(in, &first, &rest)) break;
      auto roots = crypto::Certificate::ParsePemBundle(first);
      auto chain = crypto::Certificate::ParsePemBundle(AsText(rest.data(), rest.size()));
      if (!roots.ok() || !chain.ok()) break;
      crypto::VerifyOptions options;
      options.intermediates.assign(chain->begin() + 1, chain->end());
      (void)crypto::VerifyCertificateChain(chain->front(), *roots, options);
      (void)crypto::VerifyEkCertificate(chain->front(), *roots, options.intermediates);
      break;
    }
  }
  return 0;
}
