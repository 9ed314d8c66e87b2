// Writes the seed inputs that need the project's own code to make: TPM
// structures and evidence from attest's software TPM, certificates issued by
// the project's CA code, and KMS request bodies carrying them. Run by hand
// when a format changes (docs/fuzzing.md):
//   cmake --build build-fuzz --target vmseal_fuzz_seeds
//   build-fuzz/fuzz/vmseal_fuzz_seeds fuzz/corpus
// Each seed is written to <dir>/<target>/seed-<name>.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "attest/credential.h"
#include "attest/evidence.h"
#include "attest/testing/software_tpm.h"
#include "attest/verifier.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "json/json.h"
#include "ovf/descriptor.h"

namespace attest = vmseal::attest;
namespace crypto = vmseal::crypto;
using crypto::Bytes;

namespace {

std::string g_dir;

void Write(const std::string& target, const std::string& name, const Bytes& bytes) {
  std::filesystem::create_directories(g_dir + "/" + target);
  std::ofstream out(g_dir + "/" + target + "/seed-" + name, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}
void Write(const std::string& target, const std::string& name, std::string_view text) {
  Write(target, name, Bytes(text.begin(), text.end()));
}
Bytes Selected(uint8_t selector, const Bytes& rest) {
  Bytes out{selector};
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}
void Frame(Bytes* out, const Bytes& field) {
  out->push_back(static_cast<uint8_t>(field.size() >> 8));
  out->push_back(static_cast<uint8_t>(field.size()));
  out->insert(out->end(), field.begin(), field.end());
}
Bytes AsBytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

template <typename T>
T Must(vmseal::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "make_seeds: %s: %s\n", what, v.status().ToString().c_str());
    std::exit(1);
  }
  return std::move(*v);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  g_dir = argv[1];

  // --- TPM structures and evidence ---------------------------------------
  auto tpm = Must(attest::testing::SoftwareTpm::Create(), "software TPM");
  const Bytes nonce(32, 0x5a);
  const std::vector<uint32_t> pcrs = {0, 7};
  const std::vector<Bytes> values = {Bytes(32, 0x11), Bytes(32, 0x22)};
  attest::Evidence ev = tpm.Attest(nonce, pcrs, values);
  Write("tpm_structures", "quote-attest", Selected(0, ev.quote.attest));
  Write("tpm_structures", "certify-attest", Selected(1, ev.certify.attest));
  Write("tpm_structures", "ak-public", Selected(2, tpm.ak_public()));
  Write("tpm_structures", "binding-public", Selected(2, ev.certify.key_public));
  Write("tpm_structures", "quote-signature", Selected(3, ev.quote.signature));
  const Bytes ak_public = tpm.ak_public();
  Bytes framed{5};
  for (const Bytes* f : std::initializer_list<const Bytes*>{
           &ak_public, &ev.nonce, &ev.quote.attest, &ev.quote.signature, &ev.certify.attest,
           &ev.certify.signature, &ev.certify.key_public}) {
    Frame(&framed, *f);
  }
  framed.insert(framed.end(), {0x81, 0x00, 0x00});  // PCRs 0 and 7
  for (const Bytes& v : values) framed.insert(framed.end(), v.begin(), v.end());
  Write("tpm_structures", "evidence", framed);

  // An EK (RSA-2048) certified by a manufacturer CA, and a credential
  // challenge made to it for the AK.
  crypto::CaOptions ca_options;
  ca_options.common_name = "fuzz manufacturer CA";
  auto ca = Must(crypto::CreateSelfSignedCa(ca_options), "CA");
  auto ek = Must(crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048), "EK");
  crypto::IssueOptions ek_options;
  ek_options.common_name = "ek";
  auto ek_cert = Must(crypto::IssueCertificate(ca, ek.Public(), ek_options), "EK cert");
  auto ak = Must(attest::AkPublic::Parse(tpm.ak_public()), "AK");
  auto challenge = Must(attest::MakeCredential(ek.pkey(), ak->name(),
                                               vmseal::SecretBytes::Random(32)),
                        "credential");
  Write("tpm_structures", "credential-challenge",
        Selected(4, AsBytes(attest::CredentialChallengeToJson(challenge))));

  // --- X.509 --------------------------------------------------------------
  auto tls_key = Must(crypto::PrivateKey::Generate(crypto::KeyType::kEcP256), "TLS key");
  crypto::IssueOptions tls_options;
  tls_options.common_name = "kms.example";
  tls_options.usage = crypto::CertUsage::kServerAndClient;
  tls_options.dns_names = {"kms.example", "localhost"};
  tls_options.ip_addresses = {"127.0.0.1", "::1"};
  auto tls_cert = Must(crypto::IssueCertificate(ca, tls_key.Public(), tls_options), "TLS cert");
  Write("x509", "ca-der", Selected(0, ca.cert.ToDer()));
  Write("x509", "ek-der", Selected(0, ek_cert.ToDer()));
  Write("x509", "tls-der", Selected(0, tls_cert.ToDer()));
  Write("x509", "bundle-pem", Selected(1, AsBytes(ca.cert.ToPem() + tls_cert.ToPem())));
  Bytes ek_verify{2};
  Frame(&ek_verify, AsBytes(ca.cert.ToPem()));
  const Bytes ek_der = ek_cert.ToDer();
  ek_verify.insert(ek_verify.end(), ek_der.begin(), ek_der.end());
  Write("x509", "ek-verify", ek_verify);
  Bytes chain{4};
  Frame(&chain, AsBytes(ca.cert.ToPem()));
  const std::string leaf_pem = tls_cert.ToPem();
  chain.insert(chain.end(), leaf_pem.begin(), leaf_pem.end());
  Write("x509", "chain", chain);

  // --- KMS request bodies -------------------------------------------------
  using nlohmann::json;
  Write("kms_request", "attestation", "{\"evidence\":" + attest::EvidenceToJson(ev) + "}");
  Write("kms_request", "enrollment",
        vmseal::DumpJson(json{{"ek_certificate_pem", ek_cert.ToPem()},
                              {"ak_public", crypto::Base64Encode(tpm.ak_public())}}));
  attest::EnrollmentRequest enroll{ek_der, tpm.ak_public()};
  Write("kms_request", "enrollment-request", attest::EnrollmentRequestToJson(enroll));
  vmseal::ovf::EncryptionTag tag;
  tag.data_algorithm = "urn:vmseal:stream:v1";
  tag.image_id = "img-1";
  tag.tenant = "acme";
  tag.key_version = 3;
  const Bytes label = vmseal::ovf::OaepLabel(tag);
  Write("kms_request", "package-label", label);
  json release = Must(vmseal::ParseJson(attest::EvidenceToJson(ev)), "evidence JSON");
  Write("kms_request", "release",
        vmseal::DumpJson(json{{"image_id", "img-1"},
                              {"tenant", "acme"},
                              {"key_id", "sha256:" + std::string(64, 'a')},
                              {"key_version", 3},
                              {"wrap_algorithm", "rsa-oaep-sha256"},
                              {"oaep_label", crypto::Base64Encode(label)},
                              {"wrapped_key", crypto::Base64Encode(Bytes(256, 9))},
                              {"evidence", release}}));
  std::printf("make_seeds: wrote seeds under %s\n", g_dir.c_str());
  return 0;
}
