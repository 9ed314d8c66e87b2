// KEK rotation of 100,000 stored customer keys (issue 19), and the release
// latency while it runs, in the same run:
//   - seeding: real X25519 PKCS#8 keys, each wrapped under KEK A with its own
//     key id and customer id (kms/testing/seed_keys.h: direct multi-row
//     INSERTs, 1000 rows a transaction; no certificate is issued);
//   - releases of an RSA-3072 customer key through KmsService::Release
//     (nonce, quote + certify verification, policy, unwrap, re-wrap to the
//     TPM binding key, audit, one commit), evidence recorded from swtpm
//     beforehand, paced at a fixed rate (open loop: latency counts from each
//     release's due time);
//   - four blocks A B B A: A = releases with no rotation, B = releases while
//     the whole store is re-wrapped (A -> B, then B -> C), each rotation with
//     the KMS serving (KekRotation, batches of 500, compare-and-set);
//   - reference for keys/s: the same unwrap + wrap (AES-256-GCM) of every key
//     alone, without the store, in this run.
//
//   build/bench/kek_rotation_bench [keys=100000] [releases per block=300] [rate/s=100] [store]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/internal/abba.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "kms/kek.h"
#include "kms/kek_rotation.h"
#include "kms/internal/mini_ca.h"
#include "kms/service.h"
#include "kms/store.h"
#include "kms/testing/seed_keys.h"
#include "ovf/descriptor.h"
#include "ovf/package_format.h"
#include "ovf/signature.h"
#include "ovf/testing/signed_texts.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const Status& s, const char* what) {
  std::fprintf(stderr, "kek_rotation_bench: %s: %s\n", what, s.ToString().c_str());
  std::exit(1);
}
template <typename T>
T Must(StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(v.status(), what);
  return *std::move(v);
}
void Must(const Status& s, const char* what) {
  if (!s.ok()) Die(s, what);
}

using bench::LoadAverage;
using bench::Percentile;

int Run(int64_t keys, int per_block, double rate, const std::string& store_arg) {
  char tmpl[] = "/tmp/kek-bench-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  auto tpm = Must(tpm::testing::Swtpm::Start({.parent_dir = dir}), "swtpm");
  auto engine = Must(tpm::SecurityEngine::Create({.tcti = tpm->tcti(), .state_dir = dir + "/tpm-state"}),
                     "security engine");
  auto store = Must(kms::Store::Open(store_arg.empty() ? dir + "/kms.db" : store_arg), "store");
  kms::KekRing ring(Must(kms::KekFromBytes(SecretBytes::Random(kms::kKekBytes)), "kek A"));
  auto ca = Must(kms::internal::CreateRootCa("bench ca", 30), "ca");
  kms::KmsService::Options options;
  options.ek_ca_bundle_pem = tpm->ca_bundle_pem();
  options.nonce_lifetime_seconds = 3600;
  auto service = Must(kms::KmsService::Create(options, store.get(), &ring, std::move(ca)), "service");
  const kms::Caller host{kms::Caller::Role::kHost, "host-1", "fp"};
  const kms::Caller op{kms::Caller::Role::kOperator, "op", "fp"};
  const kms::Caller portal{kms::Caller::Role::kPortal, "portal", "fp"};
  const std::vector<uint32_t> pcrs = {0, 7};

  auto challenge = Must(service->BeginEnrollment(host, "host-1", Must(engine->EnrollmentRequest(), "ek")), "enroll");
  Must(service->CompleteEnrollment(host, "host-1", Must(engine->ActivateCredential(challenge), "activate")),
       "complete");
  auto first = Must(service->IssueNonce(host, "host-1"), "nonce");
  Must(service->Attest(host, "host-1", Must(engine->Attest(Must(crypto::HexDecode(first.nonce), "hex"), pcrs), "attest"))
           .status(),
       "attest");
  Must(service->FlavorFromHost(op, "good", "host-1").status(), "flavor");
  Must(service->PutPolicy(op, {"acme", "", {{"flavors", {{"anyOf", {"good"}}}}, {"max_evidence_age_seconds", 3600}}}),
       "policy");

  // The tenant's RSA-3072 key, signing key and image.
  auto key = Must(service->CreateCustomerKey(portal, {"acme", "RSA-3072"}), "customer key");
  auto pub = Must(crypto::PublicKey::FromPem(key.public_key_pem), "public key");
  ovf::EncryptionTag tag;
  tag.image_id = "img-1";
  tag.tenant = "acme";
  tag.key_version = 1;
  tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
  const std::vector<uint8_t> label_v = ovf::OaepLabel(tag);
  const crypto::Bytes label(label_v.begin(), label_v.end());
  SecretBytes data_key = SecretBytes::Random(32);
  const crypto::Bytes wrapped = Must(crypto::RsaOaepWrap(pub, data_key, crypto::AsStringView(label)), "wrap");
  auto signer = Must(crypto::PrivateKey::Generate(crypto::KeyType::kEcP256), "signing key");
  const crypto::Bytes proof = Must(
      crypto::Sign(signer, crypto::SignatureDigest::kSha256, ovf::SigningKeyProofMessage(signer.Public())), "proof");
  const std::string chain =
      Must(service->RegisterSigningKey(portal, {"acme", signer.Public().ToPem(), proof}), "register").cert_pem;
  tag.key_id = "sha256:" + pub.KeyId();
  auto texts = Must(ovf::testing::MakeSignedTexts(tag, {std::string(ovf::kRsaOaepUri), label, wrapped}, &signer, chain),
                    "sign");
  Must(service->RegisterImage(portal, {"acme", "img-1", tag.key_id, 0},
                              {texts.descriptor_name, texts.descriptor, texts.manifest, texts.certificate}),
       "register image");

  // Seeding.
  const auto s0 = Clock::now();
  Must(kms_testing::SeedWrappedKeys(store.get(), ring, keys, "seed"), "seed");
  const double seed_s = std::chrono::duration<double>(Clock::now() - s0).count();
  std::printf("kek_rotation_bench: store %s, %lld seeded keys + 1 RSA-3072 (%.1f s to seed: %.0f keys/s), "
              "load average %s\n",
              store->backend().c_str(), static_cast<long long>(keys), seed_s, keys / seed_s,
              LoadAverage().c_str());

  // Evidence for every release of the four blocks plus warm-up.
  const int total = 4 * per_block + 10;
  std::fprintf(stderr, "recording %d evidence sets from swtpm...\n", total);
  std::vector<kms::ReleaseRequest> requests;
  for (int i = 0; i < total; ++i) {
    auto n = Must(service->IssueNonce(host, "host-1"), "nonce");
    kms::ReleaseRequest r;
    r.job_id = "bench-" + std::to_string(i);
    r.image_id = "img-1";
    r.tenant = "acme";
    r.key_id = tag.key_id;
    r.key_version = 1;
    r.wrap_algorithm = std::string(ovf::kRsaOaepUri);
    r.oaep_label = label;
    r.wrapped_key = wrapped;
    r.descriptor_name = texts.descriptor_name;
    r.descriptor = texts.descriptor;
    r.manifest = texts.manifest;
    r.package_cert = texts.certificate;
    Must(service->CreateGrant(portal, {r.job_id, "img-1", "acme", "host-1", 3600}).status(), "grant");
    r.evidence = Must(engine->Attest(Must(crypto::HexDecode(n.nonce), "hex"), pcrs), "attest");
    requests.push_back(std::move(r));
  }
  for (int i = 0; i < 10; ++i) Must(service->Release(host, "host-1", requests[i]).status(), "warm-up");

  // The reference: unwrap + wrap of every key alone (AES-256-GCM), no store.
  double crypto_keys_per_s = 0;
  {
    auto other = Must(kms::KekFromBytes(SecretBytes::Random(kms::kKekBytes)), "kek");
    auto sample = Must(store->ListKeysNotUnderKek("", "", 1000), "sample");
    const auto c0 = Clock::now();
    int64_t n = 0;
    while (n < keys) {
      for (const auto& k : sample) {
        auto blob = Must(crypto::Base64Decode(k.wrapped_private_key), "b64");
        const std::string aad = kms::CustomerKeyAad(k.key_id, k.customer_id);
        auto der = Must(ring.UnwrapUnder(k.kek_id, crypto::AsStringView(blob), aad), "unwrap");
        auto fresh = Must(other->Wrap(der, aad), "wrap");
        (void)crypto::Base64Encode(crypto::AsBytes(fresh));
        if (++n >= keys) break;
      }
    }
    crypto_keys_per_s = static_cast<double>(n) / std::chrono::duration<double>(Clock::now() - c0).count();
  }

  // One block: `per_block` releases paced at `rate`; with `rotate`, a
  // rotation to a fresh KEK starts with the block and releases made while
  // it runs are the block's figures (the block ends when it finishes).
  struct Block {
    std::vector<double> lat;
    double rotation_s = 0;
    int64_t rotated = 0;
  };
  int next_request = 10;
  auto run_block = [&](bool rotate) {
    Block b;
    std::unique_ptr<kms::KekRotation> rotation;
    SecretBytes next = SecretBytes::Random(kms::kKekBytes);
    std::atomic<bool> running{false};
    std::thread worker;
    Clock::time_point r0;
    if (rotate) {
      rotation = std::make_unique<kms::KekRotation>(
          store.get(), &ring,
          [&next]() -> StatusOr<std::vector<std::unique_ptr<kms::KeyEncryptionKey>>> {
            std::vector<std::unique_ptr<kms::KeyEncryptionKey>> out;
            ASSIGN_OR_RETURN(auto k, kms::KekFromBytes(next.Clone()));
            out.push_back(std::move(k));
            return out;
          },
          kms::KekRotation::Options{.batch = 500});
      const std::string previous = ring.id();
      auto reloaded = Must(rotation->Reload(Must(kms::KekFromBytes(next.Clone()), "kek")->id()), "reload");
      (void)reloaded;
      running = true;
      r0 = Clock::now();
      worker = std::thread([&, previous] {
        Must(rotation->RunNow("operator/bench"), "rotation");
        b.rotation_s = std::chrono::duration<double>(Clock::now() - r0).count();
        running = false;
        Must(rotation->Retire(previous, "operator/bench").status(), "retire");
      });
    }
    const auto start = Clock::now();
    for (int i = 0; i < per_block; ++i) {
      if (rotate && !running) break;
      const auto due = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(i / rate));
      std::this_thread::sleep_until(due);
      auto out = service->Release(host, "host-1", requests[static_cast<size_t>(next_request++)]);
      b.lat.push_back(std::chrono::duration<double>(Clock::now() - due).count());
      Must(out.status(), rotate ? "release during the rotation" : "release");
    }
    if (rotate) {
      worker.join();
      auto counts = Must(store->CountKeysByKek(), "counts");
      if (counts.size() != 1 || counts[0].first != ring.id()) Die(InternalError("keys left under another KEK"), "check");
      b.rotated = counts[0].second;
    }
    return b;
  };

  // The warm-up (10 releases) ran above, with the evidence.
  const auto s = bench::RunAbba({.warm_up_a = 0, .runs = 2}, [&] { return run_block(false); },
                                [&] { return run_block(true); });
  const std::string load = LoadAverage();

  std::vector<double> before, during;
  for (const auto& b : s.a) before.insert(before.end(), b.lat.begin(), b.lat.end());
  for (const auto& b : s.b) during.insert(during.end(), b.lat.begin(), b.lat.end());
  std::printf("releases paced at %.0f/s (RSA-3072 customer key, in-process KmsService::Release), blocks A B B A:\n", rate);
  size_t next_a = 0, next_b = 0;
  for (size_t i = 0; i < s.order.size(); ++i) {
    const bool rotated = s.order[i] == 'B';
    const Block& b = rotated ? s.b[next_b++] : s.a[next_a++];
    std::printf("  block %zu %s: %zu releases  p50 %.2f ms  p99 %.2f ms", i + 1, rotated ? "B (rotating)" : "A (idle)    ",
                b.lat.size(), Percentile(b.lat, 0.5) * 1e3, Percentile(b.lat, 0.99) * 1e3);
    if (rotated) {
      std::printf("  rotation of %lld keys in %.2f s: %.0f keys/s", static_cast<long long>(b.rotated), b.rotation_s,
                  b.rotated / b.rotation_s);
    }
    std::printf("\n");
  }
  const double p50b = Percentile(before, 0.5), p99b = Percentile(before, 0.99);
  const double p50d = Percentile(during, 0.5), p99d = Percentile(during, 0.99);
  std::printf("release latency during vs before the rotation: p50 %.2f ms vs %.2f ms (%.2fx), p99 %.2f ms vs %.2f ms "
              "(%.2fx); 0 releases failed\n",
              p50d * 1e3, p50b * 1e3, p50d / p50b, p99d * 1e3, p99b * 1e3, p99d / p99b);
  const bench::Spread rates = bench::Summarize(
      bench::Column(s.b, [](const Block& b) { return static_cast<double>(b.rotated) / b.rotation_s; }));
  std::printf("rotation: %.0f keys/s (median of %zu; spread %.0f..%.0f) vs the same unwrap+wrap alone %.0f keys/s: "
              "%.2fx; load average %s\n",
              rates.median, rates.n, rates.min, rates.max, crypto_keys_per_s, rates.median / crypto_keys_per_s,
              load.c_str());
  service.reset();
  engine.reset();
  tpm.reset();
  std::string rm = "rm -rf '" + dir + "'";
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir.c_str());
  return 0;
}

}  // namespace
}  // namespace vmseal

int main(int argc, char** argv) {
  const long long keys = argc > 1 ? std::atoll(argv[1]) : 100000;
  const int per_block = argc > 2 ? std::atoi(argv[2]) : 300;
  const double rate = argc > 3 ? std::atof(argv[3]) : 100;
  if (keys <= 0 || per_block <= 0 || rate <= 0) {
    std::fprintf(stderr, "usage: kek_rotation_bench [keys] [releases per block] [rate/s] [store]\n");
    return 2;
  }
  return vmseal::Run(keys, per_block, rate, argc > 4 ? argv[4] : "");
}
