// KMS request bodies (src/kms, src/attest/evidence). The KMS's route
// handlers (RegisterKmsRoutes in src/kms/http_api.cc) pick fields out of the
// parsed body inline, so this target runs the callable decoders they use on
// the same body: ParseJson, the evidence decoder (attestation and release),
// the enrollment request decoder and the EK certificate PEM, the package
// OAEP label of a release request (ParsePackageLabel), and the policy and
// flavor validators with the policy engine (PUT policy, PUT flavor).
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>

#include "attest/evidence.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "fuzz_util.h"
#include "json/json.h"
#include "kms/policy.h"
#include "kms/service.h"
#include "kms/store.h"

namespace attest = vmseal::attest;
namespace kms = vmseal::kms;
using nlohmann::json;

namespace {

const json* Field(const json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() ? nullptr : &*it;
}

void Policy(const json& policy, const json& body) {
  if (!kms::ValidatePolicy(policy).ok()) return;
  std::map<std::string, kms::Flavor> flavors;
  kms::PolicyFacts facts;
  facts.now_unix = 1'700'000'000;
  facts.evidence_age_seconds = 10;
  facts.host_tags = {"region=eu-west", "tier=gold"};
  facts.history.push_back({"v1", "h1", false, "pcr_policy", 1'699'999'000});
  if (const json* pcrs = Field(body, "pcrs")) {
    auto values = kms::PcrValuesFromJson(*pcrs);
    if (values.ok()) facts.pcrs = *values;
    if (kms::ValidateFlavorPcrs(*pcrs).ok()) {
      for (const char* name : {"good-boot", "fw", "os"}) flavors[name] = {name, *pcrs};
    }
  }
  (void)kms::EvaluatePolicy(policy, flavors, facts);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = vmseal::fuzz::AsText(data, size);
  // The enrollment and evidence decoders from text (each parses on its own),
  // and the package label of a release request as raw bytes.
  (void)attest::EnrollmentRequestFromJson(text);
  (void)attest::EvidenceFromJson(text);
  (void)kms::ParsePackageLabel(std::span<const uint8_t>(data, size));

  auto body = vmseal::ParseJsonObject(text, "request body");
  if (!body.ok()) return 0;
  if (const json* ev = Field(*body, "evidence"); ev != nullptr && ev->is_object()) {
    auto evidence = attest::EvidenceFromJsonValue(*ev);
    if (evidence.ok()) {
      // What the KMS decodes it is able to encode again, identically.
      auto again = attest::EvidenceFromJson(attest::EvidenceToJson(*evidence));
      if (!again.ok() || again->nonce != evidence->nonce ||
          again->quote.attest != evidence->quote.attest ||
          again->certify.key_public != evidence->certify.key_public) {
        __builtin_trap();
      }
    }
  }
  if (const json* pem = Field(*body, "ek_certificate_pem"); pem != nullptr && pem->is_string()) {
    (void)vmseal::crypto::Certificate::FromPem(pem->get_ref<const std::string&>());
  }
  if (const json* label = Field(*body, "oaep_label"); label != nullptr && label->is_string()) {
    auto raw = vmseal::crypto::Base64Decode(label->get_ref<const std::string&>());
    if (raw.ok()) (void)kms::ParsePackageLabel(*raw);
  }
  Policy(*body, *body);
  if (const json* p = Field(*body, "policy")) Policy(*p, *body);
  return 0;
}
