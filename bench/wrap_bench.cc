// Cost of the crypto on the KMS release path, the baseline the KMS benchmark
// compares its per-release CPU against (issue 4): one customer-key unwrap
// (RSA-3072 OAEP or X25519), two RSA-2048 PKCS#1 v1.5 SHA-256 verifies (the
// quote and the certify signature by the AK) and one RSA-2048 OAEP encrypt
// (the re-wrap to the TPM binding key, with a NUL-terminated label).
//
//   cmake --build build --target wrap_bench && build/bench/wrap_bench
#include <benchmark/benchmark.h>
#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::crypto {
namespace {

constexpr std::string_view kImageAd = "image:3f1c;tenant:acme;key-version:1";
constexpr std::string_view kTpmAd = "vmkey";
// A TPMS_ATTEST for a quote is about 150 bytes.
constexpr size_t kAttestBytes = 150;

template <typename T>
T OrDie(StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "wrap_bench: %s\n", v.status().ToString().c_str());
    std::abort();
  }
  return std::move(v).value();
}

struct Fixture {
  PrivateKey customer_rsa = OrDie(PrivateKey::Generate(KeyType::kRsa3072));
  PrivateKey customer_x25519 = OrDie(PrivateKey::Generate(KeyType::kX25519));
  PrivateKey ak = OrDie(PrivateKey::Generate(KeyType::kRsa2048));
  PrivateKey binding = OrDie(PrivateKey::Generate(KeyType::kRsa2048));
  PublicKey ak_public = ak.Public();
  PublicKey binding_public = binding.Public();
  SecretBytes data_key = SecretBytes::Random(kDataKeyBytes);
  Bytes wrapped_rsa = OrDie(RsaOaepWrap(customer_rsa.Public(), data_key, kImageAd));
  Bytes wrapped_x25519 = OrDie(X25519Wrap(customer_x25519.Public(), data_key, kImageAd));
  Bytes quote = RandomBytes(kAttestBytes);
  Bytes certify = RandomBytes(kAttestBytes);
  Bytes quote_sig = Sign(ak, quote);
  Bytes certify_sig = Sign(ak, certify);

  static Bytes Sign(const PrivateKey& key, const Bytes& msg) {
    EvpMdCtxPtr ctx(EVP_MD_CTX_new());
    size_t len = 0;
    if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.pkey()) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &len, msg.data(), msg.size()) != 1) {
      std::abort();
    }
    Bytes sig(len);
    if (EVP_DigestSign(ctx.get(), sig.data(), &len, msg.data(), msg.size()) != 1) std::abort();
    return sig;
  }
};

Fixture& F() {
  static Fixture* f = new Fixture();
  return *f;
}

bool Verify(const PublicKey& key, const Bytes& msg, const Bytes& sig) {
  EvpMdCtxPtr ctx(EVP_MD_CTX_new());
  return EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.pkey()) == 1 &&
         EVP_DigestVerify(ctx.get(), sig.data(), sig.size(), msg.data(), msg.size()) == 1;
}

void VerifyTwice(benchmark::State& state) {
  Fixture& f = F();
  if (!Verify(f.ak_public, f.quote, f.quote_sig) ||
      !Verify(f.ak_public, f.certify, f.certify_sig)) {
    state.SkipWithError("signature verification failed");
  }
}

void BM_Rsa3072OaepUnwrap(benchmark::State& state) {
  Fixture& f = F();
  for (auto _ : state) {
    auto key = RsaOaepUnwrap(f.customer_rsa, f.wrapped_rsa, kImageAd);
    if (!key.ok()) state.SkipWithError("unwrap failed");
    benchmark::DoNotOptimize(key);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Rsa3072OaepUnwrap);

void BM_X25519Unwrap(benchmark::State& state) {
  Fixture& f = F();
  for (auto _ : state) {
    auto key = X25519Unwrap(f.customer_x25519, f.wrapped_x25519, kImageAd);
    if (!key.ok()) state.SkipWithError("unwrap failed");
    benchmark::DoNotOptimize(key);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_X25519Unwrap);

void BM_Rsa2048Pkcs1VerifyX2(benchmark::State& state) {
  for (auto _ : state) VerifyTwice(state);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Rsa2048Pkcs1VerifyX2);

void BM_Rsa2048OaepWrapTpmLabel(benchmark::State& state) {
  Fixture& f = F();
  for (auto _ : state) {
    auto wrapped = RsaOaepWrap(f.binding_public, f.data_key, kTpmAd, OaepLabel::kTpm);
    if (!wrapped.ok()) state.SkipWithError("wrap failed");
    benchmark::DoNotOptimize(wrapped);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Rsa2048OaepWrapTpmLabel);

// The whole per-release crypto with an RSA-3072 customer key.
void BM_ReleaseCryptoRsa3072(benchmark::State& state) {
  Fixture& f = F();
  for (auto _ : state) {
    VerifyTwice(state);
    auto key = RsaOaepUnwrap(f.customer_rsa, f.wrapped_rsa, kImageAd);
    if (!key.ok()) state.SkipWithError("unwrap failed");
    auto wrapped = RsaOaepWrap(f.binding_public, *key, kTpmAd, OaepLabel::kTpm);
    if (!wrapped.ok()) state.SkipWithError("wrap failed");
    benchmark::DoNotOptimize(wrapped);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ReleaseCryptoRsa3072);

// The whole per-release crypto with an X25519 customer key: X25519 unwrap and
// RSA-2048 re-wrap, plus the two verifies.
void BM_ReleaseCryptoX25519(benchmark::State& state) {
  Fixture& f = F();
  for (auto _ : state) {
    VerifyTwice(state);
    auto key = X25519Unwrap(f.customer_x25519, f.wrapped_x25519, kImageAd);
    if (!key.ok()) state.SkipWithError("unwrap failed");
    auto wrapped = RsaOaepWrap(f.binding_public, *key, kTpmAd, OaepLabel::kTpm);
    if (!wrapped.ok()) state.SkipWithError("wrap failed");
    benchmark::DoNotOptimize(wrapped);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ReleaseCryptoX25519);

}  // namespace
}  // namespace vmseal::crypto

BENCHMARK_MAIN();
