// Release latency through KmsService (nonce consume, quote + certify
// verification, verdict record, policy, unwrap with the customer RSA-3072
// key, re-wrap to the TPM binding key, audit) beside the raw crypto cost of
// the same work (one RSA-3072 OAEP decrypt, one RSA-2048 OAEP encrypt, two
// RSA-2048 PKCS#1 v1.5 SHA-256 verifies), measured in the same run.
//
// Evidence: recorded from a real swtpm before the timed loop (one quote +
// certify per nonce, since nonces are single-use), so the loop measures the
// KMS only. Store: SQLite (WAL) in a temp dir, or a postgres:// URL as the
// second argument.
//
//   build/bench/release_bench [releases=300] [store] [https clients=4]
// ("" as store = SQLite in a temp dir). The HTTPS phase runs `clients`
// concurrent mTLS connections (one host identity) against the same service;
// server CPU there = process CPU minus the client threads' CPU.
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <chrono>
#include <latch>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "attest/verifier.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "kms/kek.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "kms/service.h"
#include "kms/store.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal {
namespace {

using Clock = std::chrono::steady_clock;

double ThreadCpuSeconds() {
  struct rusage ru;
  ::getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double CpuSeconds() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

[[noreturn]] void Die(const Status& s, const char* what) {
  std::fprintf(stderr, "release_bench: %s: %s\n", what, s.ToString().c_str());
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

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// Package-style label (docs/format/package.md): prefix 0x00, len-prefixed
// image id and tenant, u64 key version, len-prefixed data algorithm.
crypto::Bytes PackageLabel(const std::string& image, const std::string& tenant) {
  std::string s = "vmseal-package-key-v1";
  s.push_back('\0');
  auto field = [&](const std::string& f) {
    for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((f.size() >> (8 * i)) & 0xff));
    s += f;
  };
  field(image);
  field(tenant);
  for (int i = 0; i < 7; ++i) s.push_back('\0');
  s.push_back('\1');
  field("https://vmseal.dev/ns/stream/v1");
  return crypto::Bytes(s.begin(), s.end());
}

int Run(int releases, const std::string& store_arg, int clients) {
  char tmpl[] = "/tmp/release-bench-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  auto tpm = Must(tpm::testing::Swtpm::Start({.parent_dir = dir}), "swtpm");
  auto engine = Must(tpm::SecurityEngine::Create({.tcti = tpm->tcti(), .state_dir = dir + "/tpm-state"}),
                     "security engine");
  auto store = Must(kms::Store::Open(store_arg.empty() ? dir + "/kms.db" : store_arg), "store");
  auto kek = Must(kms::KekFromBytes(SecretBytes::Random(kms::kKekBytes)), "kek");
  auto ca = Must(kms::internal::CreateRootCa("bench ca", 30), "ca");
  const std::string ca_pem = ca.cert_pem;
  auto server_id = Must(kms::internal::IssueLeaf(ca, {.common_name = "kms", .organizational_unit = "kms",
                                                      .ip_addresses = {"127.0.0.1"}, .server = true}),
                        "server id");
  auto host_id = Must(kms::internal::IssueLeaf(ca, {.common_name = "host-1", .organizational_unit = "host"}),
                      "host id");
  kms::KmsService::Options options;
  options.ek_ca_bundle_pem = tpm->ca_bundle_pem();
  options.nonce_lifetime_seconds = 3600;
  auto service = Must(kms::KmsService::Create(options, store.get(), kek.get(), std::move(ca)), "service");

  const kms::Caller host{kms::Caller::Role::kHost, "host-1", "fp"};
  const kms::Caller op{kms::Caller::Role::kOperator, "op", "fp"};
  const kms::Caller portal{kms::Caller::Role::kPortal, "portal", "fp"};
  const std::vector<uint32_t> pcrs = {0, 7};

  // Enroll, attest once, trust the current PCRs.
  auto challenge = Must(service->BeginEnrollment(host, "host-1", Must(engine->EnrollmentRequest(), "ek")), "enroll");
  Must(service->CompleteEnrollment(host, "host-1", Must(engine->ActivateCredential(challenge), "activate")),
       "complete");
  auto first = Must(service->IssueNonce(host, "host-1"), "nonce");
  auto first_ev = Must(engine->Attest(Must(crypto::HexDecode(first.nonce), "hex"), pcrs), "attest");
  Must(service->Attest(host, "host-1", first_ev).status(), "attest");
  Must(service->FlavorFromHost(op, "good", "host-1").status(), "flavor");
  Must(service->PutPolicy(op, {"acme", "", {{"flavors", {{"anyOf", {"good"}}}},
                                            {"max_evidence_age_seconds", 3600},
                                            {"history", {{"no_failures_within_seconds", 3600}}}}}),
       "policy");

  // The customer key and one package's wrapped data key.
  auto key = Must(service->CreateCustomerKey(portal, {"acme", "RSA-3072"}), "customer key");
  auto pub = Must(crypto::PublicKey::FromPem(key.public_key_pem), "public key");
  SecretBytes data_key = SecretBytes::Random(32);
  const crypto::Bytes label = PackageLabel("img-1", "acme");
  const crypto::Bytes wrapped = Must(crypto::RsaOaepWrap(pub, data_key, crypto::AsStringView(label)), "wrap");

  std::fprintf(stderr, "recording %d evidence sets from swtpm...\n", 2 * releases + 10);
  std::vector<kms::ReleaseRequest> requests;
  for (int i = 0; i < 2 * releases + 10; ++i) {
    auto n = Must(service->IssueNonce(host, "host-1"), "nonce");
    kms::ReleaseRequest r;
    r.image_id = "img-1";
    r.tenant = "acme";
    r.key_id = "sha256:" + pub.KeyId();
    r.wrap_algorithm = "http://www.w3.org/2009/xmlenc11#rsa-oaep";
    r.oaep_label = label;
    r.wrapped_key = wrapped;
    r.evidence = Must(engine->Attest(Must(crypto::HexDecode(n.nonce), "hex"), pcrs), "attest");
    requests.push_back(std::move(r));
  }
  // Warm-up (fills the AK and customer key caches), then the timed loop.
  for (int i = 0; i < 10; ++i) Must(service->Release(host, "host-1", requests[i]).status(), "warm-up release");
  std::vector<double> lat;
  const double cpu0 = CpuSeconds();
  const auto t0 = Clock::now();
  for (int i = 10; i < releases + 10; ++i) {
    const auto s = Clock::now();
    auto out = service->Release(host, "host-1", requests[i]);
    lat.push_back(std::chrono::duration<double>(Clock::now() - s).count());
    Must(out.status(), "release");
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = CpuSeconds() - cpu0;

  // The same crypto alone: RSA-3072 OAEP decrypt + RSA-2048 OAEP encrypt +
  // two RSA-2048 verifies (the AK's quote and certify signatures).
  auto cust = Must(crypto::PrivateKey::Generate(crypto::KeyType::kRsa3072), "rsa3072");
  auto bind = Must(crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048), "rsa2048");
  auto ak = Must(crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048), "ak");
  const crypto::Bytes cwrapped = Must(crypto::RsaOaepWrap(cust.Public(), data_key, crypto::AsStringView(label)), "wrap");
  const crypto::PublicKey bind_pub = bind.Public();
  const std::string msg(145, 'q');  // about the size of a TPMS_ATTEST
  size_t sig_len = 0;
  crypto::Bytes sig(512);
  {
    crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, ak.pkey());
    sig_len = sig.size();
    EVP_DigestSign(ctx.get(), sig.data(), &sig_len, reinterpret_cast<const unsigned char*>(msg.data()), msg.size());
  }
  auto verify = [&] {
    crypto::EvpMdCtxPtr ctx(EVP_MD_CTX_new());
    EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, ak.pkey());
    return EVP_DigestVerify(ctx.get(), sig.data(), sig_len, reinterpret_cast<const unsigned char*>(msg.data()),
                            msg.size()) == 1;
  };
  const double ccpu0 = CpuSeconds();
  const auto c0 = Clock::now();
  for (int i = 0; i < releases; ++i) {
    auto dk = Must(crypto::RsaOaepUnwrap(cust, cwrapped, crypto::AsStringView(label)), "unwrap");
    Must(crypto::RsaOaepWrap(bind_pub, dk, "vmseal-release:img-1", crypto::OaepLabel::kTpm).status(), "rewrap");
    if (!verify() || !verify()) Die(InternalError("verify failed"), "verify");
  }
  const double cwall = std::chrono::duration<double>(Clock::now() - c0).count();
  const double ccpu = CpuSeconds() - ccpu0;

  // Breakdown: evidence verification alone (quote + certify, stateless)
  // and the store writes alone (nonce consume + verdict with two audit
  // records in one transaction).
  auto akp = Must(attest::AkPublic::Parse(engine->AkPublic()), "ak parse");
  const double vcpu0 = CpuSeconds();
  for (int i = 10; i < releases + 10; ++i) {
    const auto& ev = requests[i].evidence;
    Must(attest::VerifyEvidence(*akp, ev.nonce, ev.pcr_selection, ev).status(), "verify");
  }
  const double vcpu = CpuSeconds() - vcpu0;
  std::vector<std::string> store_nonces;
  for (int i = 0; i < releases; ++i) {
    store_nonces.push_back(Must(service->IssueNonce(host, "host-1"), "nonce").nonce);
  }
  const double scpu0 = CpuSeconds();
  const auto s0 = Clock::now();
  for (int i = 0; i < releases; ++i) {
    Must(store->ConsumeNonce(store_nonces[i], "host-1", 0), "consume");
    kms::Verdict v{"bench-" + std::to_string(i), "host-1", true, "ok", 1, {{"pcrs", "x"}}};
    Must(store->PutVerdict(v, std::vector<kms::AuditEvent>{{"attestation.verdict", "host/host-1", {{"v", i}}},
                                                           {"release.grant", "host/host-1", {{"v", i}}}}),
         "verdict");
  }
  const double swall = std::chrono::duration<double>(Clock::now() - s0).count();
  const double scpu = CpuSeconds() - scpu0;

  // Over HTTPS (TLS 1.3, mTLS) with `clients` concurrent connections, each
  // request carrying evidence recorded above (JSON bodies built beforehand).
  net::HttpsServer::Options so;
  so.cert_pem = server_id.cert_pem;
  so.key_pem = std::move(server_id.key_pem);
  so.client_ca_pem = ca_pem;
  so.threads = 8;
  auto server = Must(net::HttpsServer::Create(std::move(so)), "server");
  kms::RegisterKmsRoutes(service.get(), server.get());
  // The floor: the same bodies to a route that only parses them, i.e. what
  // TLS, HTTP and JSON cost before any KMS work.
  server->Post("/bench/echo", [](const net::Request& r) -> StatusOr<nlohmann::json> {
    return nlohmann::json{{"fields", r.body.size()}};
  });
  const int port = Must(server->Start(), "server start");
  std::vector<nlohmann::json> bodies;
  for (int i = releases + 10; i < 2 * releases + 10; ++i) {
    const auto& r = requests[i];
    bodies.push_back({{"image_id", r.image_id}, {"tenant", r.tenant}, {"key_id", r.key_id},
                      {"key_version", r.key_version}, {"wrap_algorithm", r.wrap_algorithm},
                      {"oaep_label", crypto::Base64Encode(r.oaep_label)},
                      {"wrapped_key", crypto::Base64Encode(r.wrapped_key)},
                      {"evidence", nlohmann::json::parse(attest::EvidenceToJson(r.evidence))}});
  }
  // Each client connects (TCP + mTLS handshake, one GET /healthz) before
  // the clock starts: hosts keep their connection, and four concurrent cold
  // handshakes would otherwise be the p99 of a 300-request run.
  struct HttpsRun {
    std::vector<double> lat;
    double wall = 0, server_cpu = 0, connect_max = 0;
  };
  auto run_https = [&](const std::string& path) {
    HttpsRun run;
    std::atomic<int> next{0};
    std::atomic<int> failures{0};
    std::mutex mu;
    double client_cpu = 0;
    std::vector<std::thread> threads;
    std::latch connected(clients + 1);
    std::latch go(1);
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&] {
        const auto k0 = Clock::now();
        net::HttpsClient::Options o;
        o.port = port;
        o.ca_pem = ca_pem;
        o.cert_pem = host_id.cert_pem;
        o.key_pem = host_id.key_pem.Clone();
        auto client = Must(net::HttpsClient::Create(std::move(o)), "client");
        Must(client->Get("/healthz").status(), "connect");
        const double k = std::chrono::duration<double>(Clock::now() - k0).count();
        {
          std::lock_guard<std::mutex> lock(mu);
          run.connect_max = std::max(run.connect_max, k);
        }
        connected.count_down();
        go.wait();
        const double tc0 = ThreadCpuSeconds();
        std::vector<double> mine;
        for (int i = next++; i < releases; i = next++) {
          const auto t = Clock::now();
          auto out = client->Post(path, bodies[i]);
          mine.push_back(std::chrono::duration<double>(Clock::now() - t).count());
          if (!out.ok()) ++failures;
        }
        const double tc = ThreadCpuSeconds() - tc0;
        std::lock_guard<std::mutex> lock(mu);
        run.lat.insert(run.lat.end(), mine.begin(), mine.end());
        client_cpu += tc;
      });
    }
    connected.arrive_and_wait();
    const double hcpu0 = CpuSeconds();
    const auto h0 = Clock::now();
    go.count_down();
    for (auto& t : threads) t.join();
    run.wall = std::chrono::duration<double>(Clock::now() - h0).count();
    run.server_cpu = CpuSeconds() - hcpu0 - client_cpu;
    if (failures.load() != 0) {
      Die(InternalError(std::to_string(failures.load()) + " HTTPS requests to " + path + " failed"), "https");
    }
    return run;
  };
  const HttpsRun floor = run_https("/bench/echo");
  const HttpsRun https = run_https("/v1/hosts/host-1/releases");
  server->Stop();
  const std::vector<double>& hlat = https.lat;
  const double hwall = https.wall;
  const double server_cpu = https.server_cpu;
  const double connect_max = std::max(floor.connect_max, https.connect_max);

  std::printf("release_bench: %d releases, store %s, evidence recorded from swtpm, single thread\n",
              releases, store->backend().c_str());
  std::printf("  KmsService::Release  p50 %.3f ms  p99 %.3f ms  mean %.3f ms  cpu %.3f ms/release  %.0f releases/s\n",
              Percentile(lat, 0.5) * 1e3, Percentile(lat, 0.99) * 1e3, wall / releases * 1e3,
              cpu / releases * 1e3, releases / wall);
  std::printf("  raw crypto           mean %.3f ms  cpu %.3f ms/release  %.0f /s\n", cwall / releases * 1e3,
              ccpu / releases * 1e3, releases / cwall);
  std::printf("  ratio (service cpu / crypto cpu) %.2f   (wall %.2f)\n", cpu / ccpu, wall / cwall);
  std::printf("  HTTPS, %d clients   p50 %.3f ms  p99 %.3f ms  %.0f releases/s  server cpu %.3f ms/release (ratio %.2f)\n",
              clients, Percentile(hlat, 0.5) * 1e3, Percentile(hlat, 0.99) * 1e3, releases / hwall,
              server_cpu / releases * 1e3, server_cpu / ccpu);
  std::printf("  HTTPS floor: same bodies to a parse-only route: server cpu %.3f ms/request, %.0f requests/s\n",
              floor.server_cpu / releases * 1e3, releases / floor.wall);
  std::printf("  (connections opened before the clock: slowest connect + mTLS handshake %.1f ms)\n",
              connect_max * 1e3);
  std::printf("  breakdown: VerifyEvidence cpu %.3f ms; store writes (2 commits) cpu %.3f ms, wall %.3f ms\n",
              vcpu / releases * 1e3, scpu / releases * 1e3, swall / releases * 1e3);
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
  int n = argc > 1 ? std::atoi(argv[1]) : 300;
  if (n <= 0) n = 300;
  const int clients = argc > 3 ? std::max(1, std::atoi(argv[3])) : 4;
  return vmseal::Run(n, argc > 2 ? argv[2] : "", clients);
}
