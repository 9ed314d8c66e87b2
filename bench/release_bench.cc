// Release latency through KmsService (nonce consume, quote + certify
// verification, verdict record, policy, unwrap with the customer key,
// re-wrap to the TPM binding key, audit) beside the raw crypto cost of the
// same work, measured in the same run, for both customer key types:
//   RSA-3072: one RSA-3072 OAEP decrypt, one RSA-2048 OAEP encrypt, two
//             RSA-2048 PKCS#1 v1.5 SHA-256 verifies;
//   X25519:   one X25519 + HKDF + AES-GCM unwrap, and the same three RSA-2048
//             operations.
//
// Evidence: recorded from a real swtpm before the timed loop (one quote +
// certify per nonce, since nonces are single-use), so the loop measures the
// KMS only. Store: SQLite (WAL) in a temp dir, or a postgres:// URL as the
// second argument.
//
//   build/bench/release_bench [releases=300] [store] [https clients=16] [keys=both|rsa|x25519|store]
// ("" as store = SQLite in a temp dir). The HTTPS phase runs `clients`
// concurrent mTLS connections (one host identity) against the same service;
// server CPU there = process CPU minus the client threads' CPU, and the
// sustainable rate is cores / server CPU per release (the clients run on the
// same cores, so the measured rate is lower).
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <optional>
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
#include "ovf/manifest.h"
#include "ovf/package_format.h"
#include "ovf/descriptor.h"
#include "ovf/signature.h"
#include "ovf/testing/signed_texts.h"
#include "crypto/signature.h"
#include "net/https_server.h"
#include "kms/customer_audit.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "tlog/checkpoint.h"
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

// Context switches of the whole process (voluntary + involuntary).
double ContextSwitches() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_nvcsw + ru.ru_nivcsw);
}

// Kernel time only (of the process, or of the calling thread).
double SysSeconds(int who) {
  struct rusage ru;
  ::getrusage(who, &ru);
  return static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) / 1e6;
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

// The machine-readable reason of a refusal ("reason: message"), or the
// whole message when it has none.
std::string_view ReasonOf(const Status& s) {
  std::string_view m = s.message();
  const size_t colon = m.find(':');
  return colon == std::string_view::npos ? m : m.substr(0, colon);
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// The package label (docs/format/package.md §5) of `image` of `tenant`,
// key version `key_version`, with the stream algorithm a sealed package names.
crypto::Bytes PackageLabel(const std::string& image, const std::string& tenant,
                           uint64_t key_version = 1) {
  ovf::EncryptionTag tag;
  tag.image_id = image;
  tag.tenant = tenant;
  tag.key_version = key_version;
  tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
  const std::vector<uint8_t> label = ovf::OaepLabel(tag);
  return crypto::Bytes(label.begin(), label.end());
}

// The JSON body of POST /v1/hosts/{id}/releases (docs/api/kms.yaml).
nlohmann::json BodyOf(const kms::ReleaseRequest& r) {
  return {{"job_id", r.job_id},
          {"image_id", r.image_id},
          {"tenant", r.tenant},
          {"key_id", r.key_id},
          {"key_version", r.key_version},
          {"wrap_algorithm", r.wrap_algorithm},
          {"oaep_label", crypto::Base64Encode(r.oaep_label)},
          {"wrapped_key", crypto::Base64Encode(r.wrapped_key)},
          {"evidence", nlohmann::json::parse(attest::EvidenceToJson(r.evidence))},
          {"descriptor_name", r.descriptor_name},
          {"descriptor", r.descriptor},
          {"manifest", r.manifest},
          {"package_cert", r.package_cert}};
}

// --- The load generator in another process ---------------------------------
// `release_bench --client` reads its job from stdin (length-prefixed
// fields: port, path, connections, CA, certificate, key, then the bodies),
// opens its connections, writes 'R', waits for 'G', sends every body once
// over the connections and writes "<requests> <failures> <wall s>\n". The
// key travels over the pipe, never argv, env or disk.
bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}
bool ReadAll(int fd, char* out, size_t n) {
  while (n > 0) {
    const ssize_t got = ::read(fd, out, n);
    if (got <= 0) return false;
    out += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}
std::string Field(std::string_view v) {
  const uint32_t n = static_cast<uint32_t>(v.size());
  return std::string(reinterpret_cast<const char*>(&n), sizeof(n)) + std::string(v);
}
std::optional<std::string> ReadField(int fd) {
  uint32_t n = 0;
  if (!ReadAll(fd, reinterpret_cast<char*>(&n), sizeof(n))) return std::nullopt;
  std::string out(n, '\0');
  if (!ReadAll(fd, out.data(), n)) return std::nullopt;
  return out;
}

int ClientMain() {
  std::vector<std::string> f;
  while (auto field = ReadField(0)) f.push_back(*std::move(field));
  if (f.size() < 6) return 2;
  const int port = std::atoi(f[0].c_str());
  const std::string path = f[1];
  const int connections = std::max(1, std::atoi(f[2].c_str()));
  const std::vector<std::string> bodies(f.begin() + 6, f.end());
  std::vector<std::unique_ptr<net::HttpsClient>> conns;
  for (int c = 0; c < connections; ++c) {
    net::HttpsClient::Options o;
    o.port = port;
    o.ca_pem = f[3];
    o.cert_pem = f[4];
    o.key_pem = SecretBytes(crypto::AsBytes(f[5]));
    conns.push_back(Must(net::HttpsClient::Create(std::move(o)), "client"));
    Must(conns.back()->Get("/healthz").status(), "connect");
  }
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(f[5].data()), f[5].size()));
  if (!WriteAll(1, "R")) return 2;
  char go = 0;
  // stdin is at its end (the parent closed it): 'G' comes on fd 3.
  if (!ReadAll(3, &go, 1) || go != 'G') return 2;
  std::atomic<int> next{0}, failures{0};
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&, c] {
      for (int i = next++; i < static_cast<int>(bodies.size()); i = next++) {
        if (!conns[static_cast<size_t>(c)]->PostRaw(path, bodies[static_cast<size_t>(i)], "application/json").ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const std::string line = std::to_string(bodies.size()) + " " + std::to_string(failures.load()) + " " +
                           std::to_string(wall) + "\n";
  return WriteAll(1, line) ? 0 : 2;
}

// Runs ClientMain in a child process against this process's server; returns
// this process's CPU (the server alone) and the child's wall time for the
// requests (connections opened before the clock).
struct ExternalRun {
  double server_cpu = 0, wall = 0;
  int failures = 0;
};
ExternalRun RunExternalClient(int port, const std::string& path, int connections, const std::string& ca_pem,
                              const std::string& cert_pem, const SecretBytes& key_pem,
                              const std::vector<std::string>& bodies) {
  int in[2], out[2], go[2];
  if (::pipe(in) != 0 || ::pipe(out) != 0 || ::pipe(go) != 0) Die(InternalError("pipe"), "client process");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, go[0], 3);
  for (int fd : {in[1], out[0], go[1]}) posix_spawn_file_actions_addclose(&fa, fd);
  char arg0[] = "release_bench";
  char arg1[] = "--client";
  char* argv[] = {arg0, arg1, nullptr};
  char* envp[] = {nullptr};
  pid_t pid = 0;
  if (posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv, envp) != 0) {
    Die(InternalError("posix_spawn"), "client process");
  }
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  ::close(go[0]);
  std::string job = Field(std::to_string(port)) + Field(path) + Field(std::to_string(connections)) +
                    Field(ca_pem) + Field(cert_pem) + Field(crypto::AsStringView(key_pem.UnsafeSpan()));
  for (const auto& b : bodies) job += Field(b);
  const bool sent = WriteAll(in[1], job);
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(job.data()), job.size()));
  ::close(in[1]);
  char ready = 0;
  if (!sent || !ReadAll(out[0], &ready, 1) || ready != 'R') Die(InternalError("client did not connect"), "client process");
  ExternalRun run;
  const double cpu0 = CpuSeconds();
  if (!WriteAll(go[1], "G")) Die(InternalError("go"), "client process");
  std::string line;
  char c = 0;
  while (ReadAll(out[0], &c, 1) && c != '\n') line += c;
  run.server_cpu = CpuSeconds() - cpu0;
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(out[0]);
  ::close(go[1]);
  unsigned long n = 0;
  if (std::sscanf(line.c_str(), "%lu %d %lf", &n, &run.failures, &run.wall) != 3 || n != bodies.size() ||
      !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    Die(InternalError("client process failed: '" + line + "'"), "client process");
  }
  return run;
}

int Run(int releases, const std::string& store_arg, int clients, const std::string& keys) {
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
  // The hostile phase measures what each altered package costs its own
  // checks, hundreds from one host: the per-host limit on failed package
  // verifications (ten, then refused) would answer most of them rate_limited.
  options.package_precheck.failures.free_failures = 1 << 30;
  kms::internal::CertAndKey ca_copy{ca.cert_pem, ca.key_pem.Clone()};
  auto service = Must(kms::KmsService::Create(options, store.get(), kek.get(), std::move(ca)), "service");
  // The baseline: the same service on the same store that verifies every
  // package's texts again (Options::remember_verified_packages = false).
  kms::KmsService::Options baseline_options = options;
  baseline_options.remember_verified_packages = false;
  auto baseline = Must(kms::KmsService::Create(baseline_options, store.get(), kek.get(), std::move(ca_copy)),
                       "baseline service");

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

  // The HTTPS server (TLS 1.3, mTLS), up for both key types. The floor
  // route answers the same bodies without any KMS work: what TLS, HTTP and
  // JSON cost per request.
  net::HttpsServer::Options so;
  so.cert_pem = server_id.cert_pem;
  so.key_pem = std::move(server_id.key_pem);
  so.client_ca_pem = ca_pem;
  so.threads = 64;  // the KMS default (kms.json "threads")
  auto server = Must(net::HttpsServer::Create(std::move(so)), "server");
  kms::RegisterKmsRoutes(service.get(), server.get());
  server->Post("/bench/echo", [](const net::Request& r) -> StatusOr<nlohmann::json> {
    return nlohmann::json{{"fields", r.body.size()}};
  });
  const int port = Must(server->Start(), "server start");

  // `count` POSTs of bodies[i % bodies.size()] to `path` from `clients`
  // concurrent mTLS connections. Each client connects (TCP + mTLS handshake,
  // one GET /healthz) before the clock starts: hosts keep their connection,
  // and concurrent cold handshakes would otherwise be the p99 of a short run.
  // Server CPU = process CPU minus the client threads' CPU.
  struct HttpsRun {
    std::vector<double> lat;
    double wall = 0, server_cpu = 0, server_sys = 0, connect_max = 0, switches = 0;
  };
  // rate > 0: open loop, request i is due at start + i / rate and its
  // latency counts from that due time (queueing included, no coordinated
  // omission); rate 0: closed loop, each client sends as soon as it can.
  // expect: "" for success, else a text the refusal must contain (its
  // reason); any other answer stops the bench.
  // reconnect: each request on a new connection (a full mTLS handshake).
  // settle: before the server's CPU is read, wait until the server is idle
  // (under 10% of a core over 50 ms; at most 3 s), so that work a request
  // leaves behind after its answer (a refused body drained, a connection
  // closed) is charged to it and not to the next run measured.
  auto run_https = [&](const std::string& path, const std::vector<std::string>& bodies, int count,
                       double rate = 0, const std::string& expect = "", bool reconnect = false,
                       bool settle = false) {
    HttpsRun run;
    std::atomic<int> next{0};
    std::atomic<int> failures{0};
    std::mutex mu;
    std::string first_failure;
    double client_cpu = 0, client_sys = 0;
    std::vector<std::thread> threads;
    std::latch connected(clients + 1);
    std::latch go(1);
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&] {
        const auto k0 = Clock::now();
        auto connect = [&] {
          net::HttpsClient::Options o;
          o.port = port;
          o.ca_pem = ca_pem;
          o.cert_pem = host_id.cert_pem;
          o.key_pem = host_id.key_pem.Clone();
          return Must(net::HttpsClient::Create(std::move(o)), "client");
        };
        auto client = connect();
        Must(client->Get("/healthz").status(), "connect");
        const double k = std::chrono::duration<double>(Clock::now() - k0).count();
        {
          std::lock_guard<std::mutex> lock(mu);
          run.connect_max = std::max(run.connect_max, k);
        }
        connected.count_down();
        go.wait();
        const double tc0 = ThreadCpuSeconds();
        const double ts0 = SysSeconds(RUSAGE_THREAD);
        std::vector<double> mine;
        const auto start = Clock::now();
        for (int i = next++; i < count; i = next++) {
          auto t = Clock::now();
          if (rate > 0) {
            const auto due = start + std::chrono::duration_cast<Clock::duration>(
                                         std::chrono::duration<double>(i / rate));
            std::this_thread::sleep_until(due);
            t = due;
          }
          if (reconnect) client = connect();
          auto out = client->PostRaw(path, bodies[static_cast<size_t>(i) % bodies.size()], "application/json");
          mine.push_back(std::chrono::duration<double>(Clock::now() - t).count());
          const bool as_expected =
              expect.empty() ? out.ok() : !out.ok() && out.status().message().find(expect) != std::string::npos;
          if (!as_expected && failures++ == 0) {
            std::lock_guard<std::mutex> lock(mu);
            first_failure = out.ok() ? "accepted" : out.status().ToString();
          }
        }
        const double tc = ThreadCpuSeconds() - tc0;
        const double ts = SysSeconds(RUSAGE_THREAD) - ts0;
        std::lock_guard<std::mutex> lock(mu);
        run.lat.insert(run.lat.end(), mine.begin(), mine.end());
        client_cpu += tc;
        client_sys += ts;
      });
    }
    connected.arrive_and_wait();
    const double hcpu0 = CpuSeconds();
    const double hsys0 = SysSeconds(RUSAGE_SELF);
    const double sw0 = ContextSwitches();
    const auto h0 = Clock::now();
    go.count_down();
    for (auto& t : threads) t.join();
    run.wall = std::chrono::duration<double>(Clock::now() - h0).count();
    if (settle) {
      const auto deadline = Clock::now() + std::chrono::seconds(3);
      double before = CpuSeconds();
      while (Clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        const double now = CpuSeconds();
        if (now - before < 0.005) break;
        before = now;
      }
    }
    run.server_cpu = CpuSeconds() - hcpu0 - client_cpu;
    run.server_sys = SysSeconds(RUSAGE_SELF) - hsys0 - client_sys;
    run.switches = ContextSwitches() - sw0;
    if (failures.load() != 0) {
      Die(InternalError(std::to_string(failures.load()) + " HTTPS requests to " + path +
                        " did not answer as expected (" + (expect.empty() ? "success" : expect) +
                        "), first: " + first_failure),
          "https");
    }
    return run;
  };

  const std::string label_image = "img-1";
  const crypto::Bytes label = PackageLabel(label_image, "acme");
  SecretBytes data_key = SecretBytes::Random(32);
  const crypto::PrivateKey ak = Must(crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048), "ak");
  const crypto::PrivateKey bind = Must(crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048), "rsa2048");
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

  // The same crypto as a release, alone: the unwrap with the customer key
  // (RSA-3072 OAEP decrypt, or X25519 + HKDF + AES-GCM), one RSA-2048 OAEP
  // encrypt to the binding key, two RSA-2048 verifies (the AK's quote and
  // certify signatures).
  struct CryptoCost {
    double cpu = 0, wall = 0;  // s, for `n` releases
  };
  auto crypto_cost = [&](bool x25519, int n) {
    auto cust = Must(crypto::PrivateKey::Generate(x25519 ? crypto::KeyType::kX25519 : crypto::KeyType::kRsa3072),
                     "customer key");
    const crypto::Bytes cwrapped =
        x25519 ? Must(crypto::X25519Wrap(cust.Public(), data_key, crypto::AsStringView(label)), "wrap")
               : Must(crypto::RsaOaepWrap(cust.Public(), data_key, crypto::AsStringView(label)), "wrap");
    CryptoCost c;
    const double ccpu0 = CpuSeconds();
    const auto c0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      auto dk = x25519 ? Must(crypto::X25519Unwrap(cust, cwrapped, crypto::AsStringView(label)), "unwrap")
                       : Must(crypto::RsaOaepUnwrap(cust, cwrapped, crypto::AsStringView(label)), "unwrap");
      Must(crypto::RsaOaepWrap(bind_pub, dk, "vmseal-release:img-1", crypto::OaepLabel::kTpm).status(), "rewrap");
      if (!verify() || !verify()) Die(InternalError("verify failed"), "verify");
    }
    c.wall = std::chrono::duration<double>(Clock::now() - c0).count();
    c.cpu = CpuSeconds() - ccpu0;
    return c;
  };
  // For the hostile-input phase: a good request, used bodies (replays) and
  // the cheapest good release's server CPU over HTTPS.
  std::optional<kms::ReleaseRequest> good_request;
  std::vector<std::string> used_bodies;
  double cheapest_release_cpu = 0;
  std::string cheapest_release_kind;

  // This machine's speed against the one the targets were set on: the
  // issue's RSA-3072 crypto cost, 710 unwrap+rewrap per second per core.
  constexpr double kReferenceRsaCryptoCpu = 1.0 / 710;
  double rsa_crypto_cpu = 0;  // s per release, measured in this run

  bool floor_done = false;
  HttpsRun nonce_run;
  // One key type: the customer key, the package's wrapped data key, the
  // in-process loop, the same crypto alone, and the HTTPS run.
  // The customer's package-signing key (registered once the tenant has a
  // customer key), and the signed package texts a host sends with each
  // release: what the customer signed for this request's image and key.
  std::unique_ptr<crypto::PrivateKey> signer;
  std::string signer_chain;
  auto sign_request = [&](kms::ReleaseRequest& r) {
    if (!signer) {
      signer = std::make_unique<crypto::PrivateKey>(
          Must(crypto::PrivateKey::Generate(crypto::KeyType::kEcP256), "signing key"));
      const crypto::Bytes proof = Must(crypto::Sign(*signer, crypto::SignatureDigest::kSha256,
                                                    ovf::SigningKeyProofMessage(signer->Public())),
                                       "proof");
      signer_chain = Must(service->RegisterSigningKey(portal, {"acme", signer->Public().ToPem(), proof}),
                          "register signing key")
                         .cert_pem;
    }
    ovf::EncryptionTag tag;
    tag.image_id = r.image_id;
    tag.tenant = r.tenant;
    tag.key_id = r.key_id;
    tag.key_version = r.key_version;
    tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
    const ovf::WrappedKey key{r.wrap_algorithm, r.oaep_label, r.wrapped_key};
    auto texts = Must(ovf::testing::MakeSignedTexts(tag, key, signer.get(), signer_chain), "sign");
    r.descriptor_name = texts.descriptor_name;
    r.descriptor = texts.descriptor;
    r.manifest = texts.manifest;
    r.package_cert = texts.certificate;
  };
  auto measure = [&](const std::string& algorithm) {
    const bool x25519 = algorithm == "X25519";
    // One image per key type: an image id is wrapped to one key.
    std::string image_id = label_image;
    if (x25519) image_id = "img-x25519";
    auto key = Must(service->CreateCustomerKey(portal, {"acme", algorithm}), "customer key");
    // Each key of the customer is its next version (kms/key_versions.h).
    const uint64_t key_version = static_cast<uint64_t>(key.version);
    const crypto::Bytes image_label = PackageLabel(image_id, "acme", key_version);
    auto pub = Must(crypto::PublicKey::FromPem(key.public_key_pem), "public key");
    const crypto::Bytes wrapped =
        x25519 ? Must(crypto::X25519Wrap(pub, data_key, crypto::AsStringView(image_label)), "wrap")
               : Must(crypto::RsaOaepWrap(pub, data_key, crypto::AsStringView(image_label)), "wrap");

    // The portal registers the image it accepted with its signed metadata
    // (after the first request is signed, below); every release below is of
    // its own job, placed on host-1 with a one-launch grant (checked against
    // the sealed policy on host-1's latest verdict).
    std::fprintf(stderr, "%s: recording evidence sets from swtpm...\n", algorithm.c_str());
    std::vector<kms::ReleaseRequest> requests;
    const int paced = releases;    // evidence for the paced run
    const int external = releases;  // and for the load generator in another process
    for (int i = 0; i < 2 * releases + 10 + paced + external; ++i) {
      auto n = Must(service->IssueNonce(host, "host-1"), "nonce");
      kms::ReleaseRequest r;
      r.job_id = "bench-" + algorithm + "-" + std::to_string(i);
      r.image_id = image_id;
      r.tenant = "acme";
      r.key_id = "sha256:" + pub.KeyId();
      r.wrap_algorithm = std::string(x25519 ? ovf::kX25519WrapUri : ovf::kRsaOaepUri);
      r.oaep_label = image_label;
      r.key_version = key_version;
      r.wrapped_key = wrapped;
      if (requests.empty()) {
        sign_request(r);
        Must(service->RegisterImage(portal, {"acme", image_id, r.key_id, 0},
                                    {r.descriptor_name, r.descriptor, r.manifest, r.package_cert}),
             "register image");
      } else {
        r.descriptor_name = requests[0].descriptor_name;
        r.descriptor = requests[0].descriptor;
        r.manifest = requests[0].manifest;
        r.package_cert = requests[0].package_cert;
      }
      Must(service->CreateGrant(portal, {r.job_id, image_id, "acme", "host-1", 3600}).status(),
           "grant");
      r.evidence = Must(engine->Attest(Must(crypto::HexDecode(n.nonce), "hex"), pcrs), "attest");
      requests.push_back(std::move(r));
    }
    // Warm-up (fills the AK and customer key caches of both), then the
    // timed loop in four blocks, A B B A: A this service, B the baseline
    // that verifies each package again. Figures of A are the service's.
    for (int i = 0; i < 10; ++i) {
      Must((i % 2 ? baseline : service)->Release(host, "host-1", requests[i]).status(), "warm-up release");
    }
    std::vector<double> lat;
    double cpu = 0, wall = 0, base_cpu = 0;
    std::vector<double> block_cpu[2];
    const int block = std::max(1, releases / 4);
    for (int b = 0; b < 4; ++b) {
      const bool is_baseline = b == 1 || b == 2;
      kms::KmsService* s_used = is_baseline ? baseline.get() : service.get();
      const int from = 10 + b * block, to = b == 3 ? releases + 10 : 10 + (b + 1) * block;
      const double cpu0 = CpuSeconds();
      const auto t0 = Clock::now();
      for (int i = from; i < to; ++i) {
        const auto s = Clock::now();
        auto out = s_used->Release(host, "host-1", requests[i]);
        if (!is_baseline) lat.push_back(std::chrono::duration<double>(Clock::now() - s).count());
        Must(out.status(), "release");
      }
      const double c = CpuSeconds() - cpu0;
      block_cpu[is_baseline].push_back(c / (to - from));
      if (is_baseline) {
        base_cpu += c;
      } else {
        cpu += c;
        wall += std::chrono::duration<double>(Clock::now() - t0).count();
      }
    }
    const int measured = static_cast<int>(lat.size());
    const int base_measured = releases - measured;

    const CryptoCost cc = crypto_cost(x25519, releases);
    const double cwall = cc.wall, ccpu = cc.cpu;
    if (!x25519) rsa_crypto_cpu = ccpu / releases;

    std::vector<std::string> bodies;
    for (int i = releases + 10; i < 2 * releases + 10 + paced + external; ++i) {
      const auto& r = requests[i];
      bodies.push_back(BodyOf(r).dump());
    }
    if (!floor_done) {
      floor_done = true;
      const HttpsRun floor = run_https("/bench/echo", bodies, releases);
      std::printf("  HTTPS floor: the same bodies to a parse-only route: server cpu %.3f ms/request "
                  "(kernel %.3f), %.0f requests/s\n",
                  floor.server_cpu / releases * 1e3, floor.server_sys / releases * 1e3, releases / floor.wall);
      // A host asks for a nonce before each attestation (MAC-authenticated,
      // nothing written: docs/protocol.md §5.1).
      nonce_run = run_https("/v1/hosts/host-1/nonces", {"{}"}, releases);
      std::printf("  nonce issue (each release needs one first): server cpu %.3f ms/request (kernel %.3f)\n",
                  nonce_run.server_cpu / releases * 1e3, nonce_run.server_sys / releases * 1e3);
    }
    const std::vector<std::string> closed(bodies.begin(), bodies.begin() + releases);
    const std::vector<std::string> open(bodies.begin() + releases, bodies.begin() + releases + paced);
    const std::vector<std::string> outside(bodies.begin() + releases + paced, bodies.end());
    const HttpsRun https = run_https("/v1/hosts/host-1/releases", closed, releases);
    good_request = requests[0];
    used_bodies = closed;
    if (cheapest_release_cpu == 0 || https.server_cpu / releases < cheapest_release_cpu) {
      cheapest_release_cpu = https.server_cpu / releases;
      cheapest_release_kind = algorithm;
    }

    const double per = cpu / measured, cper = ccpu / releases, hper = https.server_cpu / releases;
    const double base_per = base_cpu / base_measured;
    if (rsa_crypto_cpu == 0) {
      const int n = std::min(releases, 300);
      rsa_crypto_cpu = crypto_cost(false, n).cpu / n;
    }
    // The targets: server CPU <= 1.3x (issue 14; an earlier issue set 1.35) the crypto cost with RSA-3072 keys,
    // so that 2 cores sustain >= 1,000 releases/s; >= 5,000/s with X25519
    // keys, whose crypto is a twentieth of that and so cannot carry a ratio
    // target (TLS, HTTP, JSON and the commit cost more than it). Rates are
    // also shown scaled to the reference machine by this run's RSA speed.
    const double target_rate = x25519 ? 5000 : 1000;
    const double speed = kReferenceRsaCryptoCpu / rsa_crypto_cpu;  // > 1: faster than the reference
    const unsigned cores = std::thread::hardware_concurrency();
    std::printf("  %s customer key\n", algorithm.c_str());
    std::printf("    KmsService::Release  p50 %.3f ms  p99 %.3f ms  cpu %.3f ms/release  %.0f releases/s\n",
                Percentile(lat, 0.5) * 1e3, Percentile(lat, 0.99) * 1e3, per * 1e3, measured / wall);
    std::printf("    before (each package verified again, blocks A B B A in this run): cpu %.3f ms/release "
                "(blocks %.3f, %.3f) vs after %.3f ms (blocks %.3f, %.3f): after/before %.2f; in-process "
                "ratio before %.2f\n",
                base_per * 1e3, block_cpu[1][0] * 1e3, block_cpu[1][1] * 1e3, per * 1e3,
                block_cpu[0][0] * 1e3, block_cpu[0][1] * 1e3, per / base_per, base_per / cper);
    std::printf("    raw crypto           cpu %.3f ms/release  %.0f /s per core\n", cper * 1e3, releases / cwall);
    std::printf("    in-process ratio (service cpu / crypto cpu)   %.2f%s\n", per / cper,
                x25519 ? "  (no ratio target for X25519: its target is the rate)" : "  (target <= 1.3)");
    {
      // The customer audit's cost per release (docs/format/audit-log.md
      // §6.1): one page of one record is one signed checkpoint and one
      // inclusion proof read from the store; the customer then verifies it.
      const int n = std::min(releases, 200);
      const kms::CustomerAuditRequest areq{"acme", image_id, 0, 1, 0};
      auto roots = Must(crypto::Certificate::ParsePemBundle(service->ca_cert_pem()), "ca");
      kms::CustomerAuditVerifyOptions vo{roots, "acme", image_id, 0, ""};
      std::vector<kms::CustomerAuditPage> pages;
      const double a0 = CpuSeconds();
      for (int i = 0; i < n; ++i) pages.push_back(Must(service->CustomerAudit(portal, areq), "customer audit"));
      const double acpu = (CpuSeconds() - a0) / n;
      const double v0 = CpuSeconds();
      for (const auto& page : pages) Must(kms::VerifyCustomerAuditPage(page, vo).status(), "verify audit");
      const double vcpu = (CpuSeconds() - v0) / n;
      const auto frontier = Must(store->AuditFrontier(), "frontier");
      std::printf("    audit: 1 signed checkpoint + 1 inclusion proof (log of %llu records, %zu hashes) KMS cpu "
                  "%.3f ms = %.3fx the release; the customer's check %.3f ms\n",
                  static_cast<unsigned long long>(frontier.size()),
                  Must(tlog::ParseInclusionProof(pages[0].proofs[0]), "proof").hashes.size(), acpu * 1e3,
                  acpu / per, vcpu * 1e3);
    }
    std::printf("    HTTPS, %d clients   p50 %.3f ms  p99 %.3f ms  %.0f releases/s measured (clients share the "
                "cores)\n",
                clients, Percentile(https.lat, 0.5) * 1e3, Percentile(https.lat, 0.99) * 1e3,
                releases / https.wall);
    std::printf("    HTTPS server cpu %.3f ms/release (kernel %.3f): ratio %.2f%s\n", hper * 1e3,
                https.server_sys / releases * 1e3, hper / cper, x25519 ? "" : " (target <= 1.3)");
    const double sustain = cores / hper;
    std::printf("    %u cores sustain %.0f releases/s: %.2fx the %.0f/s target; %.2fx at the reference speed "
                "(this machine runs the RSA-3072 crypto at %.2fx the issue's 710/s per core)\n",
                cores, sustain, sustain / target_rate, target_rate, sustain / speed / target_rate, speed);
    if (!open.empty()) {
      // The latency target: p99 at 80% of the rate target.
      const double rate = 0.8 * target_rate;
      const HttpsRun p = run_https("/v1/hosts/host-1/releases", open, static_cast<int>(open.size()), rate);
      std::printf("    HTTPS paced at %.0f releases/s (80%% of %.0f/s): p50 %.3f ms  p99 %.3f ms "
                  "(target p99 <= 50 ms: %.2fx), achieved %.0f releases/s\n",
                  rate, target_rate, Percentile(p.lat, 0.5) * 1e3, Percentile(p.lat, 0.99) * 1e3,
                  Percentile(p.lat, 0.99) / 0.050, static_cast<double>(open.size()) / p.wall);
    }
    {
      // The same releases from a load generator in another process (its
      // connections opened before the clock): this process's CPU is the
      // server's alone; the measured rate has the generator on the same cores.
      const ExternalRun e = RunExternalClient(port, "/v1/hosts/host-1/releases", clients, ca_pem, host_id.cert_pem,
                                              host_id.key_pem, outside);
      if (e.failures != 0) Die(InternalError(std::to_string(e.failures) + " external releases failed"), "https");
      const double eper = e.server_cpu / static_cast<double>(outside.size());
      std::printf("    HTTPS, load generator in another process (%d connections): server cpu %.3f ms/release, "
                  "%u cores sustain %.0f releases/s (%.2fx the %.0f/s target); measured %.0f releases/s with the "
                  "generator on the same cores (%.2fx)\n",
                  clients, eper * 1e3, cores, cores / eper, cores / eper / target_rate, target_rate,
                  static_cast<double>(outside.size()) / e.wall, static_cast<double>(outside.size()) / e.wall / target_rate);
    }
    const double cycle = hper + nonce_run.server_cpu / releases;
    std::printf("    whole cycle with a separate nonce request (nonce + release) server cpu %.3f ms: %u cores sustain "
                "%.0f cycles/s (%.2fx the target; %.2fx at the reference speed); a host using the answer's "
                "next_nonce makes no nonce request: its cycle is the release above\n",
                cycle * 1e3, cores, cores / cycle, cores / cycle / target_rate, cores / cycle / speed / target_rate);
    std::printf("    (%.1f context switches per release, clients included; slowest connect + mTLS handshake "
                "before the clock: %.1f ms)\n",
                https.switches / releases, https.connect_max * 1e3);
  };

  std::printf("release_bench: %d releases per phase, store %s, evidence recorded from swtpm\n", releases,
              store->backend().c_str());
  if (keys == "both" || keys == "rsa") measure("RSA-3072");
  if (keys == "both" || keys == "x25519") measure("X25519");

  // Hostile input: what each kind of refused request costs the server,
  // (not with keys=store: the store writes alone)
  // beside the cheapest good release (none may cost more: bad input must not
  // slow the server). Every request must be refused with its reason; the
  // kinds that get past the nonce check carry fresh evidence.
  if (good_request) {
    const int n = std::min(releases, 300);
    const kms::ReleaseRequest& good = *good_request;
    Must(service->PutFlavor(op, {"other", {{"sha256", {{"0", std::string(64, 'a')}}}}}), "flavor");
    Must(service->RegisterImage(portal, {"acme", "img-pcr", good.key_id, 0}), "register image");
    std::fprintf(stderr, "hostile: recording evidence sets from swtpm...\n");
    // `n` bodies of `good` changed by `change`, each with a fresh nonce
    // (attested by the swtpm when `attest`, else left with the good
    // evidence's structures).
    //
    // The package texts are signed once per kind, as the customer would
    // have signed this (changed) request, and every body of the kind
    // carries those same texts: a host cannot mint customer-signed packages,
    // it can only send again the ones it holds (the KMS verifies each once
    // and remembers it; the first body of each kind pays that verification).
    auto fresh = [&](const std::function<void(kms::ReleaseRequest&)>& change, bool attest,
                     const std::function<void(kms::ReleaseRequest&)>& after_signing = nullptr) {
      std::vector<std::string> out;
      std::optional<kms::ReleaseRequest> signed_once;
      for (int i = 0; i < n; ++i) {
        kms::ReleaseRequest r = good;
        auto nonce = Must(crypto::HexDecode(Must(service->IssueNonce(host, "host-1"), "nonce").nonce), "hex");
        if (attest) {
          r.evidence = Must(engine->Attest(nonce, pcrs), "attest");
        } else {
          r.evidence.nonce = nonce;
        }
        change(r);
        // Signed as the customer would have signed this (changed) request,
        // so that it is refused for the reason the kind is about; once.
        if (!signed_once) {
          sign_request(r);
          signed_once = r;
        } else {
          r.descriptor_name = signed_once->descriptor_name;
          r.descriptor = signed_once->descriptor;
          r.manifest = signed_once->manifest;
          r.package_cert = signed_once->package_cert;
        }
        // A host altering the package it holds changes the signed texts.
        if (after_signing) after_signing(r);
        // Each body is its own job with a one-launch grant, so that it is
        // refused for the reason the kind is about, not for a used grant.
        static int hostile_job = 0;
        r.job_id = "hostile-" + std::to_string(++hostile_job);
        if (r.tenant == "acme") {
          Must(service->CreateGrant(portal, {r.job_id, r.image_id, "acme", "host-1", 3600}).status(),
               "grant");
        }
        out.push_back(BodyOf(r).dump());
      }
      return out;
    };
    struct Kind {
      std::string name, expect;
      std::vector<std::string> bodies;
      std::string path = "/v1/hosts/host-1/releases";
      bool reconnect = false;
      bool closes = false;  // the server closes the connection after the refusal
      bool good = false;    // not hostile: good releases, the reference of the ratios
    };
    std::vector<Kind> kinds;
    // The reference, measured in the same blocks as the kinds: good
    // releases of the same image, each its own granted job, fresh evidence.
    kinds.push_back({"good release (reference)", "", fresh([](kms::ReleaseRequest&) {}, true)});
    kinds.back().good = true;
    // Not bad input, the price of any request on a new connection: the
    // floor of the kinds after which the server closes the connection.
    kinds.push_back({"new connection (mTLS)", "", {"{}"}, "/bench/echo", true});
    kinds.push_back({"malformed JSON", "", {BodyOf(good).dump().substr(0, 300)}});
    kinds.push_back({"oversized body (2 MiB)", "too large",
                     {std::string("{\"image_id\":\"") + std::string(2 << 20, 'x') + "\"}"},
                     "/v1/hosts/host-1/releases", false, true});
    kinds.push_back({"wrong TPM structures", "malformed_evidence", fresh([&](kms::ReleaseRequest& r) {
                       r.evidence.quote.attest = crypto::RandomBytes(r.evidence.quote.attest.size());
                     }, false)});
    kinds.push_back({"replayed nonce", "nonce_used",
                     std::vector<std::string>(used_bodies.begin(), used_bodies.begin() + n)});
    kinds.push_back({"forged quote signature", "", fresh([&](kms::ReleaseRequest& r) {
                       r.evidence.quote.signature.back() ^= 0x01;
                     }, true)});
    kinds.push_back({"unknown key", "unknown_key", fresh([&](kms::ReleaseRequest& r) {
                       r.key_id = "sha256:" + std::string(64, '0');
                     }, true)});
    kinds.push_back({"another customer's image", "", fresh([&](kms::ReleaseRequest& r) {
                       r.tenant = "globex";
                     }, true)});
    kinds.push_back({"PCRs outside policy", "pcr_policy", fresh([&](kms::ReleaseRequest& r) {
                       r.image_id = "img-pcr";
                       r.oaep_label = PackageLabel("img-pcr", "acme", r.key_version);
                     }, true)});
    // A host altering a package it holds (never verified): the descriptor
    // alone; descriptor and manifest beside a .cert the KMS verified before;
    // one digit of the signature above the known signer certificate (a
    // signature check with the remembered key; no X.509 decoding). The
    // per-host limit, off here, bounds how many of any kind a host gets.
    auto flip = [](std::string& text, size_t at) { text[at] = text[at] == 'A' ? 'B' : 'A'; };
    kinds.push_back({"altered descriptor", "bad_signature", fresh([](kms::ReleaseRequest&) {}, true,
                     [&](kms::ReleaseRequest& r) { flip(r.descriptor, r.descriptor.find("CipherValue>") + 12); })});
    kinds.push_back({"altered descriptor+manifest", "bad_signature", fresh([](kms::ReleaseRequest&) {}, true,
                     [&](kms::ReleaseRequest& r) {
                       r.descriptor_name = good.descriptor_name;
                       r.descriptor = good.descriptor;
                       flip(r.descriptor, r.descriptor.find("CipherValue>") + 12);
                       auto entries = Must(ovf::ParseManifest(good.manifest), "manifest");
                       for (ovf::ManifestEntry& e : entries) {
                         if (e.name != r.descriptor_name) continue;
                         ovf::StreamingDigest d(e.algorithm);
                         d.Update(crypto::AsBytes(r.descriptor));
                         e.digest = d.Finish();
                       }
                       r.manifest = ovf::FormatManifest(entries);
                       r.package_cert = good.package_cert;
                     })});
    kinds.push_back({"altered signature (.cert)", "bad_signature", fresh([](kms::ReleaseRequest&) {}, true,
                     [&](kms::ReleaseRequest& r) {
                       const size_t at = r.package_cert.find("= ") + 12;
                       r.package_cert[at] = r.package_cert[at] == '0' ? '1' : '0';
                     })});
    // The reference's good releases run after the refused kinds too (the
    // second block): the tenant's policy without its history rule, which
    // would refuse host-1 after the forged quotes' failed verdicts.
    Must(service->PutPolicy(op, {"acme", "", {{"flavors", {{"anyOf", {"good"}}}},
                                              {"max_evidence_age_seconds", 3600}}}),
         "policy");
    // Set after the grants above: a grant is checked against the image's
    // policy, so the release is what refuses these (pcr_policy).
    Must(service->PutPolicy(op, {"acme", "img-pcr", {{"flavors", {{"anyOf", {"other"}}}}}}), "policy");
    for (auto& k : kinds) {
      if (k.expect.empty() && !k.reconnect && !k.good) {
        // Learn the reason from one request, then require it of all.
        auto probe = Must(net::HttpsClient::Create({.port = port, .ca_pem = ca_pem, .cert_pem = host_id.cert_pem,
                                                    .key_pem = host_id.key_pem.Clone()}),
                          "client");
        auto out = probe->PostRaw("/v1/hosts/host-1/releases", k.bodies[0], "application/json");
        if (out.ok()) Die(InternalError(k.name + " was accepted"), "hostile");
        k.expect = std::string(ReasonOf(out.status()));
        if (k.bodies.size() > 1) k.bodies.erase(k.bodies.begin());  // its nonce is used now
      }
    }
    // Two blocks of each kind, in the order A..Z then Z..A (half of its
    // bodies each), so that neither the machine's load drifting nor the
    // order favours a kind; its figure is the mean of the two blocks.
    struct Block {
      double per = 0, p99 = 0;
    };
    std::vector<std::array<Block, 2>> blocks(kinds.size());
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t j = 0; j < kinds.size(); ++j) {
        const size_t i = pass == 0 ? j : kinds.size() - 1 - j;
        const Kind& k = kinds[i];
        // Bodies with fresh nonces are sent once each (half in each block);
        // the others n / 2 times.
        std::vector<std::string> half = k.bodies;
        if (half.size() > 1) {
          const size_t mid = half.size() / 2;
          half = pass == 0 ? std::vector<std::string>(k.bodies.begin(), k.bodies.begin() + mid)
                           : std::vector<std::string>(k.bodies.begin() + mid, k.bodies.end());
        }
        const int count = half.size() == 1 ? n / 2 : static_cast<int>(half.size());
        // Settled: the oversized bodies' drain after their refusal (up to
        // 2 MiB each, read and dropped once the answer is written) is
        // charged to that kind, not to the one measured after it.
        const HttpsRun h = run_https(k.path, half, count, 0, k.expect, k.reconnect, /*settle=*/true);
        blocks[i][pass] = {h.server_cpu / count, Percentile(h.lat, 0.99)};
      }
    }
    const double reference = (blocks[0][0].per + blocks[0][1].per) / 2;  // kinds[0]: good releases
    std::printf("  hostile input over HTTPS, %d of each, every one refused with its reason: server cpu per "
                "request, and its ratio to a good %s release in the same blocks (%.3f ms; target <= 1; "
                "the good releases of the phase above: %.3f ms)\n",
                n, cheapest_release_kind.c_str(), reference * 1e3, cheapest_release_cpu * 1e3);
    double connection_cpu = 0;  // of the "new connection" kind
    for (size_t i = 0; i < kinds.size(); ++i) {
      const Kind& k = kinds[i];
      const double per = (blocks[i][0].per + blocks[i][1].per) / 2;
      if (k.reconnect) connection_cpu = per;
      std::printf("    %-27s %-20s %.3f ms (blocks %.3f, %.3f)  %.2fx   p99 %.3f ms", k.name.c_str(),
                  k.expect.empty() ? "(answered)" : k.expect.c_str(), per * 1e3, blocks[i][0].per * 1e3,
                  blocks[i][1].per * 1e3, per / reference,
                  std::max(blocks[i][0].p99, blocks[i][1].p99) * 1e3);
      if (k.closes) {
        // The refusal closes the connection (the body is never read), so
        // each one costs the sender a new handshake too.
        std::printf("   beyond its new connection: %.3f ms  %.2fx", (per - connection_cpu) * 1e3,
                    (per - connection_cpu) / reference);
      }
      std::printf("\n");
    }
  }
  server->Stop();

  // Breakdown: evidence verification alone (quote + certify, stateless)
  // and the store write alone (the release's one transaction: nonce marked
  // used, verdict, two audit records).
  std::vector<attest::Evidence> evs;
  std::vector<std::string> store_nonces;
  for (int i = 0; i < releases; ++i) {
    auto n = Must(service->IssueNonce(host, "host-1"), "nonce");
    if (i < 50) evs.push_back(Must(engine->Attest(Must(crypto::HexDecode(n.nonce), "hex"), pcrs), "attest"));
    store_nonces.push_back(n.nonce);
  }
  auto akp = Must(attest::AkPublic::Parse(engine->AkPublic()), "ak parse");
  const double vcpu0 = CpuSeconds();
  for (int k = 0; k < releases; ++k) {
    const auto& ev = evs[static_cast<size_t>(k) % evs.size()];
    Must(attest::VerifyEvidence(*akp, ev.nonce, ev.pcr_selection, ev).status(), "verify");
  }
  const double vcpu = CpuSeconds() - vcpu0;
  const double scpu0 = CpuSeconds();
  const auto s0 = Clock::now();
  for (int i = 0; i < releases; ++i) {
    const kms::Store::NonceUse use{store_nonces[i], "host-1", 1};
    kms::Verdict v{"bench-" + std::to_string(i), "host-1", true, "ok", 1, {{"pcrs", "x"}}};
    Must(store->PutVerdict(v,
                           std::vector<kms::AuditEvent>{{"attestation.verdict", "host/host-1", {{"v", i}}},
                                                        {"release.grant", "host/host-1", {{"v", i}}}},
                           &use),
         "verdict");
  }
  const double swall = std::chrono::duration<double>(Clock::now() - s0).count();
  const double scpu = CpuSeconds() - scpu0;
  std::printf("  breakdown: VerifyEvidence cpu %.3f ms; store write (1 commit) cpu %.3f ms, wall %.3f ms\n",
              vcpu / releases * 1e3, scpu / releases * 1e3, swall / releases * 1e3);
  {
    // The same writes from 8 threads at once, as concurrent releases make
    // them: group commit puts the writers that queue behind one COMMIT into
    // the next one (one fsync per batch), each answered after its COMMIT.
    std::vector<std::string> more;
    for (int i = 0; i < releases; ++i) more.push_back(Must(service->IssueNonce(host, "host-1"), "nonce").nonce);
    std::atomic<int> next{0};
    const double gcpu0 = CpuSeconds();
    const auto g0 = Clock::now();
    std::vector<std::thread> writers;
    for (int t = 0; t < 8; ++t) {
      writers.emplace_back([&] {
        for (int i = next++; i < releases; i = next++) {
          const kms::Store::NonceUse use{more[static_cast<size_t>(i)], "host-1", 1};
          kms::Verdict v{"bench-g-" + std::to_string(i), "host-1", true, "ok", 1, {{"pcrs", "x"}}};
          Must(store->PutVerdict(v,
                                 std::vector<kms::AuditEvent>{{"attestation.verdict", "host/host-1", {{"v", i}}},
                                                              {"release.grant", "host/host-1", {{"v", i}}}},
                                 &use),
               "verdict");
        }
      });
    }
    for (auto& w : writers) w.join();
    const double gwall = std::chrono::duration<double>(Clock::now() - g0).count();
    const double gcpu = CpuSeconds() - gcpu0;
    std::printf("  store write, 8 writers at once (group commit): cpu %.3f ms/write (%.2fx the single writer's), "
                "%.0f writes/s\n",
                gcpu / releases * 1e3, gcpu / scpu, releases / gwall);
  }
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
  if (argc > 1 && std::string(argv[1]) == "--client") return vmseal::ClientMain();
  int n = argc > 1 ? std::atoi(argv[1]) : 300;
  if (n <= 0) n = 300;
  const int clients = argc > 3 ? std::max(1, std::atoi(argv[3])) : 16;
  const std::string keys = argc > 4 ? argv[4] : "both";
  if (keys != "both" && keys != "rsa" && keys != "x25519" && keys != "store") {
    std::fprintf(stderr, "release_bench: keys must be both, rsa, x25519 or store (the store writes alone)\n");
    return 2;
  }
  return vmseal::Run(n, argc > 2 ? argv[2] : "", clients, keys);
}
