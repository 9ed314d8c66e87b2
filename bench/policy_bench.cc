// What the customer's release policy (issue 14) costs the KMS, per call:
// accepting a signed policy document (parse, ECDSA P-256 verify, one SQLite
// transaction), and per release the extra work when the policy comes from
// the signed descriptor (parse + validate its JSON) or from a stored signed
// document when the release cache misses (one SELECT + parse). A release
// that hits the cache pays none of these.
//
//   cmake --build build --target policy_bench && build/bench/policy_bench
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <memory>
#include <string>

#include "crypto/keys.h"
#include "crypto/signature.h"
#include "json/json.h"
#include "kms/internal/mini_ca.h"
#include "kms/kek.h"
#include "kms/policy.h"
#include "kms/service.h"
#include "ovf/policy_document.h"
#include "ovf/signature.h"

namespace vmseal {
namespace {

const char kPolicy[] =
    R"({"flavors":{"anyOf":["good-boot"]},"required_tags":["region=eu-west","tier=gold"],)"
    R"("max_evidence_age_seconds":300,"history":{"no_failures_within_seconds":3600}})";

template <typename T>
T Must(StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "policy_bench: %s\n", v.status().ToString().c_str());
    std::abort();
  }
  return *std::move(v);
}
void Must(const Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "policy_bench: %s\n", s.ToString().c_str());
    std::abort();
  }
}

std::string Document(uint64_t version) {
  return Must(ovf::SerializePolicyDocument(
      {"acme", "img-1", version, "2026-12-06T02:00:00Z", nlohmann::json::parse(kPolicy)}));
}

void BM_ParsePolicyDocument(benchmark::State& state) {
  const std::string doc = Document(3);
  for (auto _ : state) benchmark::DoNotOptimize(ovf::ParsePolicyDocument(doc));
}
BENCHMARK(BM_ParsePolicyDocument);

void BM_VerifyPolicyDocumentSignature(benchmark::State& state) {
  auto key = Must(crypto::PrivateKey::Generate(crypto::KeyType::kEcP256));
  const std::string doc = Document(3);
  const crypto::Bytes sig = Must(ovf::SignPolicyDocument(doc, key));
  const crypto::PublicKey pub = key.Public();
  for (auto _ : state) Must(ovf::VerifyPolicyDocumentSignature(doc, sig, pub));
}
BENCHMARK(BM_VerifyPolicyDocumentSignature);

// Per release with a sealed policy: what EffectivePolicy does with it.
void BM_DescriptorPolicyParseAndValidate(benchmark::State& state) {
  for (auto _ : state) {
    auto p = Must(ParseJsonObject(kPolicy, "policy"));
    Must(kms::ValidatePolicy(p));
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_DescriptorPolicyParseAndValidate);

// A KMS on SQLite in a temp dir with tenant acme, its signing key and img-1.
struct Kms {
  Kms() {
    char tmpl[] = "/tmp/policy-bench-XXXXXX";
    dir = ::mkdtemp(tmpl);
    store = Must(kms::Store::Open(dir + "/kms.db"));
    kek = Must(kms::KekFromBytes(SecretBytes::Random(kms::kKekBytes)));
    auto ca = Must(kms::internal::CreateRootCa("bench ca", 30));
    service = Must(kms::KmsService::Create({}, store.get(), kek.get(), std::move(ca)));
    Must(service->CreateCustomerKey(portal, {"acme", "X25519"}).status());
    Must(service->RegisterImage(portal, {"acme", "img-1", "sha256:aa", 0}));
    const crypto::Bytes proof = Must(crypto::Sign(signing, crypto::SignatureDigest::kSha256,
                                                  ovf::SigningKeyProofMessage(signing.Public())));
    Must(service->RegisterSigningKey(portal, {"acme", signing.Public().ToPem(), proof}).status());
  }
  const kms::Caller portal{kms::Caller::Role::kPortal, "portal", "fp"};
  crypto::PrivateKey signing = Must(crypto::PrivateKey::Generate(crypto::KeyType::kEcP256));
  std::string dir;
  std::unique_ptr<kms::Store> store;
  std::unique_ptr<kms::KeyEncryptionKey> kek;
  std::unique_ptr<kms::KmsService> service;
};

// The whole acceptance: parse, image and key lookups, verify, validate,
// version check and insert with its audit record in one transaction.
void BM_PutSignedPolicy(benchmark::State& state) {
  Kms kms;
  uint64_t version = 0;
  for (auto _ : state) {
    const std::string doc = Document(++version);
    state.PauseTiming();
    const crypto::Bytes sig = Must(ovf::SignPolicyDocument(doc, kms.signing));
    state.ResumeTiming();
    Must(kms.service->PutSignedPolicy(kms.portal, {"acme", "img-1", doc, sig}).status());
  }
}
BENCHMARK(BM_PutSignedPolicy)->Unit(benchmark::kMicrosecond);

// A release whose policy cache misses: the newest document, parsed.
void BM_NewestSignedPolicyUncached(benchmark::State& state) {
  Kms kms;
  for (uint64_t v = 1; v <= 20; ++v) {
    const std::string doc = Document(v);
    Must(kms.service->PutSignedPolicy(
                        kms.portal, {"acme", "img-1", doc, Must(ovf::SignPolicyDocument(doc, kms.signing))})
             .status());
  }
  for (auto _ : state) {
    auto rec = Must(kms.store->NewestPolicyDocument("acme", "img-1"));
    benchmark::DoNotOptimize(Must(ovf::ParsePolicyDocument(rec.document)));
  }
}
BENCHMARK(BM_NewestSignedPolicyUncached)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace vmseal

BENCHMARK_MAIN();
