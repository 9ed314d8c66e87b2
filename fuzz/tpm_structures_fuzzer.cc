// TPM 2.0 structures from hosts (src/attest/tpm_format, verifier, evidence):
// the first input byte picks the parser, the rest is its input.
//   0 TPMS_ATTEST (quote)      1 TPMS_ATTEST (certify)
//   2 TPMT_PUBLIC (and the AK built from it, its name, re-marshalling)
//   3 TPMT_SIGNATURE           4 a credential challenge (JSON; the host
//                                decodes the KMS's credential blob from it)
//   5 whole evidence verified against an AK: fields framed as 2-byte
//     big-endian length + bytes: AK TPMT_PUBLIC, nonce, quote attest, quote
//     signature, certify attest, certify signature, certified TPMT_PUBLIC,
//     then a 3-byte PCR bitmap and the PCR values (32 bytes each).
// The seeds (fuzz/corpus/tpm_structures) come from attest's software TPM.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "attest/evidence.h"
#include "attest/tpm_format.h"
#include "attest/verifier.h"
#include "fuzz_util.h"

namespace attest = vmseal::attest;
using vmseal::crypto::Bytes;

namespace {

// Consumes one framed field; false when the input runs out.
bool Take(std::span<const uint8_t>* in, Bytes* out) {
  if (in->size() < 2) return false;
  const size_t n = (size_t{(*in)[0]} << 8) | (*in)[1];
  if (in->size() - 2 < n) return false;
  out->assign(in->begin() + 2, in->begin() + 2 + n);
  *in = in->subspan(2 + n);
  return true;
}

void Public(std::span<const uint8_t> in) {
  auto pub = attest::ParsePublic(in);
  if (pub.ok()) {
    auto marshalled = attest::MarshalPublic(*pub);
    // A whole TPMT_PUBLIC (no trailing bytes) marshals back to itself.
    if (!marshalled.ok() || !std::equal(marshalled->begin(), marshalled->end(), in.begin(),
                                        in.end())) {
      __builtin_trap();
    }
    (void)attest::RsaPublicKey(*pub);
    (void)attest::ComputeName(in);
  }
  auto ak = attest::AkPublic::Parse(in);
  if (ak.ok()) (void)(*ak)->SpkiPem();
}

void Evidence(std::span<const uint8_t> in) {
  Bytes ak_public;
  attest::Evidence ev;
  if (!Take(&in, &ak_public) || !Take(&in, &ev.nonce) || !Take(&in, &ev.quote.attest) ||
      !Take(&in, &ev.quote.signature) || !Take(&in, &ev.certify.attest) ||
      !Take(&in, &ev.certify.signature) || !Take(&in, &ev.certify.key_public) || in.size() < 3) {
    return;
  }
  for (uint32_t i = 0; i < 24; ++i) {
    if (in[i / 8] & (1u << (i % 8))) ev.pcr_selection.push_back(i);
  }
  in = in.subspan(3);
  for (size_t i = 0; i < ev.pcr_selection.size() && in.size() >= 32; ++i) {
    ev.quote.pcr_values.emplace_back(in.begin(), in.begin() + 32);
    in = in.subspan(32);
  }
  auto ak = attest::AkPublic::Parse(ak_public);
  if (!ak.ok()) return;
  auto verified = attest::VerifyEvidence(**ak, ev.nonce, ev.pcr_selection, ev);
  if (verified.ok()) {
    (void)verified->binding_key.Key();
    (void)verified->binding_key.SpkiPem();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::span<const uint8_t> in(data + 1, size - 1);
  switch (data[0] % 6) {
    case 0:
      (void)attest::ParseAttest(in, attest::kAttestTypeQuote);
      break;
    case 1:
      (void)attest::ParseAttest(in, attest::kAttestTypeCertify);
      break;
    case 2:
      Public(in);
      break;
    case 3:
      (void)attest::ParseSignature(in);
      break;
    case 4:
      (void)attest::CredentialChallengeFromJson(vmseal::fuzz::AsText(in.data(), in.size()));
      break;
    case 5:
      Evidence(in);
      break;
  }
  return 0;
}
