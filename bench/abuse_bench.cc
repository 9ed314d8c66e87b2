// Slow and abusive clients against the KMS's HTTPS front end (issue 16):
// good mTLS releases while N slow connections are held open, beside an
// unloaded baseline measured in the same run (A B B A per N: baseline,
// loaded, loaded, baseline; median and spread of each side: bench/internal/abba.h).
//
// A slow connection connects and then sends one byte every few seconds,
// forever: half of them bytes of a TLS ClientHello (a handshake that never
// ends), half a complete anonymous TLS handshake followed by the bytes of an
// HTTP request header. A connection the server closes is opened again at
// once (an attacker keeps its N). They come from 100 loopback addresses
// (127.0.1.x), the good hosts from 127.0.0.1, so a per-address cap does not
// decide the result by itself.
//
// Good hosts: `clients` concurrent mTLS clients, each on a new connection
// per run (hosts reconnect: their keep-alive lapses between releases), each
// sending releases with fresh swtpm evidence (recorded before the timed
// runs) until its share is done or the run's time bound passes. A release
// that fails or times out (10 s client timeout) counts as not served.
//
// Targets (issue 16): with 1,000 slow connections, releases/s >= 0.8x the
// baseline and p99 <= 2x the baseline.
//
//   build-*/bench/abuse_bench [--short] [--releases=N] [--slow=64,1000]
//
// --target=portal (or both, the default) measures the portal the same way:
// the real `vmseal csp serve` (TLS, beside a real `vmseal kms serve`, both
// spawned from VMSEAL_BINARY, default build/vmseal) with `clients` customers
// each on its own keep-alive connection listing images and jobs, beside the
// same slow connections (their header bytes are a request to the portal).
//
// --target=flood: registration and login floods from 200 addresses against
// the portal with its default limits: the KMS CPU of the registration flood
// beside what the configured rate allows, and the portal's peak memory
// beside the Argon2id concurrency bound. (Login back-off is an attacker
// test: tests/abuse_limits_test.)
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <latch>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <httplib.h>

#include "attest/verifier.h"
#include "bench/internal/abba.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "csp/internal/process_harness.h"
#include "kms/internal/mini_ca.h"
#include "kms/kek.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "kms/store.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "ovf/package_format.h"
#include "ovf/signature.h"
#include "ovf/testing/signed_texts.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal {
namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const Status& s, const char* what) {
  std::fprintf(stderr, "abuse_bench: %s: %s\n", what, s.ToString().c_str());
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

// One run of good clients: their rate and p99 (A B B A samples).
struct RunResult {
  double rate = 0;  // good releases (calls) per second
  double p99 = 0;   // s; failures count as the run's time bound
  int failed = 0;
};

// Prints one N's baseline (A) and loaded (B) runs, median and spread of each
// side, and the ratios of medians against issue 16's targets (releases/s
// >= 0.8x the baseline, p99 <= 2x); true if both are met.
bool ReportLoaded(const char* unit, int n, int open_min, long closed,
                  const bench::AbbaSamples<RunResult, RunResult>& s, int total) {
  const bench::Spread base_rate = bench::Summarize(bench::Column(s.a, &RunResult::rate));
  const bench::Spread base_p99 = bench::Summarize(bench::Column(s.a, &RunResult::p99));
  const bench::Spread load_rate = bench::Summarize(bench::Column(s.b, &RunResult::rate));
  const bench::Spread load_p99 = bench::Summarize(bench::Column(s.b, &RunResult::p99));
  int load_failed = 0;
  for (const RunResult& r : s.b) load_failed += r.failed;
  const double rate_ratio = load_rate.median / base_rate.median;
  const double p99_ratio = load_p99.median / base_p99.median;
  const bench::Target rate_target = bench::Target::AtLeast(0.8), p99_target = bench::Target::AtMost(2);
  std::printf("  N=%-5d slow connections (>= %d open when measured; closed by the server %ld times)\n", n, open_min,
              closed);
  std::printf("    baseline  %7.1f %s/s (spread %.1f)  p99 %8.1f ms (spread %.1f)\n", base_rate.median, unit,
              base_rate.range(), base_p99.median * 1e3, base_p99.range() * 1e3);
  std::printf("    loaded    %7.1f %s/s (spread %.1f)  p99 %8.1f ms (spread %.1f)  not served %d/%d\n",
              load_rate.median, unit, load_rate.range(), load_p99.median * 1e3, load_p99.range() * 1e3,
              load_failed, total);
  const bool met = rate_target.Met(rate_ratio) && p99_target.Met(p99_ratio);
  std::printf("    throughput %.2fx baseline (target %s)  p99 %.2fx baseline (target %s)  %s; load average %s\n",
              rate_ratio, rate_target.ToString().c_str(), p99_ratio, p99_target.ToString().c_str(),
              met ? "met" : "NOT met", bench::LoadAverage().c_str());
  return met;
}

crypto::Bytes PackageLabel(const std::string& image, const std::string& tenant) {
  ovf::EncryptionTag tag;
  tag.image_id = image;
  tag.tenant = tenant;
  tag.key_version = 1;
  tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
  const std::vector<uint8_t> label = ovf::OaepLabel(tag);
  return crypto::Bytes(label.begin(), label.end());
}

// `job` names the portal's job, whose grant the KMS checks and uses up.
nlohmann::json BodyOf(const kms::ReleaseRequest& r, const std::string& job) {
  return {{"job_id", job},
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

// N connections that each send one byte every `interval` and are reopened
// when the server closes them. One thread, non-blocking sockets.
class SlowClients {
 public:
  SlowClients(int port, int n, double interval, const char* path = "/v1/hosts/host-1/nonces")
      : port_(port), n_(n), interval_(interval),
        header_(std::string("POST ") + path +
                " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n") {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);  // anonymous attacker
    thread_ = std::thread([this] { Loop(); });
  }
  ~SlowClients() {
    stop_ = true;
    thread_.join();
    for (auto& c : conns_) Close(c);
    SSL_CTX_free(ctx_);
  }
  // Connections currently open, and how often the server closed one.
  int open() const { return open_.load(); }
  long closed_by_server() const { return closed_.load(); }
  // Blocks until all N are connected (TCP) or `seconds` pass.
  void WaitOpen(double seconds) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (open_.load() < n_ && Clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

 private:
  struct Conn {
    int fd = -1;
    SSL* ssl = nullptr;  // header kind only
    bool header = false;
    bool handshaken = false;
    size_t sent = 0;
    Clock::time_point next;
    int source = 0;
  };

  void Close(Conn& c) {
    if (c.ssl != nullptr) SSL_free(c.ssl);
    if (c.fd >= 0) ::close(c.fd);
    c.ssl = nullptr;
    c.fd = -1;
  }

  bool Open(Conn& c) {
    c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c.fd < 0) return false;
    sockaddr_in src{};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000100u + 1 + static_cast<uint32_t>(c.source % 100));  // 127.0.1.x
    ::bind(c.fd, reinterpret_cast<sockaddr*>(&src), sizeof src);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS) {
      ::close(c.fd);
      c.fd = -1;
      return false;
    }
    c.sent = 0;
    c.handshaken = false;
    c.next = Clock::now() + std::chrono::milliseconds(100);
    if (c.header) {
      c.ssl = SSL_new(ctx_);
      SSL_set_fd(c.ssl, c.fd);
      SSL_set_connect_state(c.ssl);
    }
    return true;
  }

  // False when the server closed (or reset) the connection.
  bool Alive(Conn& c) {
    char b;
    const ssize_t r = ::recv(c.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) return false;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK;
    // Data from the server: handshake records (header kind) or an answer.
    if (!c.header || c.handshaken) {
      char buf[4096];
      return ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT) != 0;
    }
    return true;
  }

  void Loop() {
    static const unsigned char kHello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                                           0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb};
    conns_.resize(static_cast<size_t>(n_));
    for (int i = 0; i < n_; ++i) {
      conns_[i].header = i % 2 == 1;
      conns_[i].source = i;
      if (Open(conns_[i])) ++open_;
      if (i % 50 == 49) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // pace the SYNs
    }
    while (!stop_) {
      const auto now = Clock::now();
      for (auto& c : conns_) {
        if (c.fd < 0) {
          if (Open(c)) ++open_;
          continue;
        }
        if (!Alive(c)) {
          ++closed_;
          --open_;
          Close(c);
          if (Open(c)) ++open_;
          continue;
        }
        if (c.header && !c.handshaken) {
          const int r = SSL_do_handshake(c.ssl);
          if (r == 1) {
            c.handshaken = true;
          } else {
            const int e = SSL_get_error(c.ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
              ++closed_;
              --open_;
              Close(c);
              if (Open(c)) ++open_;
            }
          }
          continue;
        }
        if (now < c.next) continue;
        c.next = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(interval_));
        if (c.header) {
          const char* b = &header_[c.sent % header_.size()];
          if (SSL_write(c.ssl, b, 1) == 1) ++c.sent;
        } else if (c.sent < sizeof kHello) {
          if (::send(c.fd, &kHello[c.sent], 1, MSG_NOSIGNAL) == 1) ++c.sent;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  const int port_, n_;
  const double interval_;
  const std::string header_;
  SSL_CTX* ctx_ = nullptr;
  std::vector<Conn> conns_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> open_{0};
  std::atomic<long> closed_{0};
};

// For each N of `slow_counts`: A B B A of `run` (A: the baseline; B: the
// same run with N slow connections to `port` held open, whose headers name
// `path`, given `settle_s` seconds to take their places first), the first N
// after one warm-up run; prints each N (ReportLoaded, `total_per_side`
// requests on each side). True if every N >= 1000 met issue 16's targets.
template <typename Run>
bool MeasureUnderSlowConnections(const char* unit, int port, const std::vector<int>& slow_counts, const char* path,
                                 int settle_s, int total_per_side, Run& run) {
  bool all_met = true;
  bool warmed_up = false;
  for (int n : slow_counts) {
    long closed = 0;
    int open_min = n;
    auto loaded = [&] {
      SlowClients slow(port, n, 2.0, path);
      slow.WaitOpen(10);
      std::this_thread::sleep_for(std::chrono::seconds(settle_s));
      open_min = std::min(open_min, slow.open());
      RunResult r = run();
      closed += slow.closed_by_server();
      return r;
    };
    const auto s = bench::RunAbba({.warm_up_a = warmed_up ? 0 : 1, .runs = 2}, run, loaded);
    warmed_up = true;
    const bool met = ReportLoaded(unit, n, open_min, closed, s, total_per_side);
    if (n >= 1000) all_met = all_met && met;
    std::fflush(stdout);
  }
  return all_met;
}

int Run(bool short_run, int releases, std::vector<int> slow_counts) {
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &rl);

  char tmpl[] = "/tmp/abuse-bench-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  auto tpm = Must(tpm::testing::Swtpm::Start({.parent_dir = dir}), "swtpm");
  auto engine = Must(tpm::SecurityEngine::Create({.tcti = tpm->tcti(), .state_dir = dir + "/tpm-state"}),
                     "security engine");
  auto store = Must(kms::Store::Open(dir + "/kms.db"), "store");
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
  auto challenge = Must(service->BeginEnrollment(host, "host-1", Must(engine->EnrollmentRequest(), "ek")), "enroll");
  Must(service->CompleteEnrollment(host, "host-1", Must(engine->ActivateCredential(challenge), "activate")),
       "complete");
  auto first = Must(service->IssueNonce(host, "host-1"), "nonce");
  Must(service->Attest(host, "host-1", Must(engine->Attest(Must(crypto::HexDecode(first.nonce), "hex"), pcrs), "a"))
           .status(),
       "attest");
  Must(service->FlavorFromHost(op, "good", "host-1").status(), "flavor");
  Must(service->PutPolicy(op, {"acme", "", {{"flavors", {{"anyOf", {"good"}}}},
                                            {"max_evidence_age_seconds", 3600},
                                            {"history", {{"no_failures_within_seconds", 3600}}}}}),
       "policy");

  // The KMS front end as `vmseal kms serve` runs it (64 workers).
  net::HttpsServer::Options so;
  so.cert_pem = server_id.cert_pem;
  so.key_pem = std::move(server_id.key_pem);
  so.client_ca_pem = ca_pem;
  so.threads = 64;
  auto server = Must(net::HttpsServer::Create(std::move(so)), "server");
  kms::RegisterKmsRoutes(service.get(), server.get());
  const int port = Must(server->Start(), "server start");

  // Evidence for every timed run (+ warm-up), recorded before the clock.
  const int clients = 8;
  const int runs = 1 + 4 * static_cast<int>(slow_counts.size());
  const std::string label_image = "img-1";
  const crypto::Bytes label = PackageLabel(label_image, "acme");
  SecretBytes data_key = SecretBytes::Random(32);
  auto key = Must(service->CreateCustomerKey(portal, {"acme", "X25519"}), "customer key");
  auto pub = Must(crypto::PublicKey::FromPem(key.public_key_pem), "public key");
  const crypto::Bytes wrapped = Must(crypto::X25519Wrap(pub, data_key, crypto::AsStringView(label)), "wrap");
  // The portal's part (below): the image it accepted, and a one-launch grant
  // for each release's job (a release without one is denied no_grant).
  // The customer's package-signing key and the signed package texts a host
  // sends with each release (what the customer signed for this image).
  auto signer = Must(crypto::PrivateKey::Generate(crypto::KeyType::kEcP256), "signing key");
  const crypto::Bytes proof =
      Must(crypto::Sign(signer, crypto::SignatureDigest::kSha256, ovf::SigningKeyProofMessage(signer.Public())),
           "proof");
  const std::string signer_chain =
      Must(service->RegisterSigningKey(portal, {"acme", signer.Public().ToPem(), proof}), "register signing key")
          .cert_pem;
  ovf::EncryptionTag tag;
  tag.image_id = label_image;
  tag.tenant = "acme";
  tag.key_id = "sha256:" + pub.KeyId();
  tag.key_version = 1;
  tag.data_algorithm = std::string(ovf::kStreamAlgorithmUri);
  const auto texts = Must(ovf::testing::MakeSignedTexts(tag, {std::string(ovf::kX25519WrapUri), label, wrapped},
                                                        &signer, signer_chain),
                          "sign");
  // The portal registers the image with its signed texts (the KMS keeps the
  // sealed policy they carry), then grants each job.
  Must(service->RegisterImage(portal, {"acme", label_image, "sha256:" + pub.KeyId(), 0},
                              {texts.descriptor_name, texts.descriptor, texts.manifest, texts.certificate}),
       "register image");
  std::fprintf(stderr, "abuse_bench: recording %d evidence sets from swtpm...\n", runs * releases);
  std::vector<std::string> bodies;
  for (int i = 0; i < runs * releases; ++i) {
    auto n = Must(service->IssueNonce(host, "host-1"), "nonce");
    kms::ReleaseRequest r;
    r.image_id = label_image;
    r.tenant = "acme";
    r.key_id = "sha256:" + pub.KeyId();
    r.wrap_algorithm = std::string(ovf::kX25519WrapUri);
    r.oaep_label = label;
    r.wrapped_key = wrapped;
    r.descriptor_name = texts.descriptor_name;
    r.descriptor = texts.descriptor;
    r.manifest = texts.manifest;
    r.package_cert = texts.certificate;
    r.evidence = Must(engine->Attest(Must(crypto::HexDecode(n.nonce), "hex"), pcrs), "attest");
    const std::string job = "job-" + std::to_string(i);
    Must(service->CreateGrant(portal, {job, label_image, "acme", "host-1", 3600}).status(), "grant");
    bodies.push_back(BodyOf(r, job).dump());
  }
  size_t next_body = 0;
  const double bound = short_run ? 12 : 20;  // s per run

  // One run: `releases` releases from `clients` new mTLS connections.
  auto run = [&]() {
    std::atomic<int> next{0}, failed{0};
    std::mutex mu;
    std::string first_failure;
    std::vector<double> lat;
    const size_t base = next_body;
    next_body += static_cast<size_t>(releases);
    const auto t0 = Clock::now();
    const auto end = t0 + std::chrono::duration<double>(bound);
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c) {
      threads.emplace_back([&] {
        net::HttpsClient::Options o;
        o.port = port;
        o.ca_pem = ca_pem;
        o.cert_pem = host_id.cert_pem;
        o.key_pem = host_id.key_pem.Clone();
        o.timeout_seconds = static_cast<int>(bound / 2);
        auto client = Must(net::HttpsClient::Create(std::move(o)), "client");
        std::vector<double> mine;
        for (int i = next++; i < releases && Clock::now() < end; i = next++) {
          const auto s = Clock::now();
          auto out = client->PostRaw("/v1/hosts/host-1/releases", bodies[base + static_cast<size_t>(i)],
                                     "application/json");
          if (out.ok()) {
            mine.push_back(std::chrono::duration<double>(Clock::now() - s).count());
          } else if (failed++ == 0) {
            std::lock_guard<std::mutex> lock(mu);
            first_failure = out.status().ToString();
          }
        }
        std::lock_guard<std::mutex> lock(mu);
        lat.insert(lat.end(), mine.begin(), mine.end());
      });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!first_failure.empty()) std::fprintf(stderr, "abuse_bench: first failed release: %s\n", first_failure.c_str());
    RunResult r;
    r.failed = failed.load() + (releases - static_cast<int>(lat.size()) - failed.load());
    r.rate = static_cast<double>(lat.size()) / wall;
    for (int i = 0; i < r.failed; ++i) lat.push_back(bound);  // not served within the bound
    r.p99 = bench::Percentile(lat, 0.99);
    return r;
  };

  std::printf("abuse_bench: KMS HTTPS front end, %d mTLS hosts, %d releases per run (X25519 key), slow "
              "connections send a byte every %.0f s, runs bounded at %.0f s\n",
              clients, releases, 2.0, bound);
  const bool all_met = MeasureUnderSlowConnections(
      "releases", port, slow_counts, "/v1/hosts/host-1/nonces", 3, 2 * releases, run);
  server->Stop();
  service.reset();
  engine.reset();
  tpm.reset();
  std::string rm = "rm -rf '" + dir + "'";
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir.c_str());
  return all_met ? 0 : 3;
}


// The portal: customers' calls under slow connections (see the top).
int RunPortal(bool short_run, std::vector<int> slow_counts) {
  const int clients = 8;
  const int calls = short_run ? 10000 : 40000;  // about 3 s and 12 s (past the 10 s deadline)
  const double bound = 30;
  char tmpl[] = "/tmp/vmseal-abuse-portal-XXXXXX";
  const std::string dir = Must(StatusOr<std::string>(::mkdtemp(tmpl) ? std::string(tmpl) : ""), "mkdtemp");
  auto kms = Must(csp::testing::StartKms(dir + "/kms"), "start the KMS (is VMSEAL_BINARY or build/vmseal there?)");
  auto portal = Must(csp::testing::ServerProcess::Start(
                         {testing::VmsealBinary(), "csp", "serve", "--data-dir", dir + "/data", "--port", "0",
                          "--port-file", dir + "/port", "--kms-url", kms.url(), "--kms-ca", kms.ca(), "--kms-cert",
                          kms.portal_cert(), "--kms-key", kms.portal_key(), "--tls-cert", kms.portal_cert(),
                          "--tls-key", kms.portal_key(), "--client-ca", kms.ca(), "--accept-unverified-packages"},
                         dir + "/portal.log", dir + "/port"),
                     "start the portal");
  const int port = portal->port();
  auto client = [port] {
    auto c = std::make_unique<httplib::SSLClient>("127.0.0.1", port);
    c->enable_server_certificate_verification(false);
    c->set_read_timeout(10, 0);
    c->set_connection_timeout(10, 0);
    c->set_keep_alive(true);
    return c;
  };
  // One customer with one image.
  auto reg = client()->Post("/v1/register", "{}", "application/json");
  if (!reg || reg->status != 201) Must(InternalError("register failed"), "register");
  const nlohmann::json r = nlohmann::json::parse(reg->body);
  const nlohmann::json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto in = client()->Post("/v1/login", login.dump(), "application/json");
  if (!in || in->status != 200) Must(InternalError("login failed"), "login");
  const httplib::Headers auth = {
      {"Authorization", "Bearer " + nlohmann::json::parse(in->body)["token"].get<std::string>()}};
  {
    auto c = client();
    auto begin = c->Post("/v1/uploads", auth, "", "application/json");
    const std::string id = nlohmann::json::parse(begin->body)["upload_id"];
    c->Put("/v1/uploads/" + id + "?offset=0", auth, std::string(4096, 'p'), "application/octet-stream");
    c->Post("/v1/uploads/" + id + "/commit", auth, "{\"name\":\"web\"}", "application/json");
  }

  auto run = [&]() {
    std::vector<double> lat;
    std::mutex mu;
    std::atomic<int> failed{0};
    const auto t0 = Clock::now();
    std::vector<std::thread> threads;
    for (int i = 0; i < clients; ++i) {
      threads.emplace_back([&, i] {
        auto c = client();
        std::vector<double> mine;
        for (int k = i; k < calls; k += clients) {
          if (std::chrono::duration<double>(Clock::now() - t0).count() > bound) break;
          const auto t = Clock::now();
          auto res = c->Get(k % 2 == 0 ? "/v1/images" : "/v1/jobs", auth);
          if (res && res->status == 200) {
            mine.push_back(std::chrono::duration<double>(Clock::now() - t).count());
          } else {
            ++failed;
            c = client();
          }
        }
        std::lock_guard<std::mutex> lock(mu);
        lat.insert(lat.end(), mine.begin(), mine.end());
      });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
    RunResult res;
    res.failed = calls - static_cast<int>(lat.size());
    res.rate = static_cast<double>(lat.size()) / wall;
    for (int i = 0; i < res.failed; ++i) lat.push_back(bound);
    res.p99 = bench::Percentile(lat, 0.99);
    return res;
  };

  std::printf("abuse_bench: portal (vmseal csp serve, TLS, 64 workers), %d customers on keep-alive "
              "connections, %d calls per run (GET /v1/images, /v1/jobs), slow connections send a byte every "
              "2 s\n",
              clients, calls);
  // Measured across the 10 s header deadline (8 s settling, then the run):
  // the server closes every slow connection during the run and the attacker
  // reconnects (and handshakes) at once.
  const bool all_met = MeasureUnderSlowConnections("calls", port, slow_counts, "/v1/images", 8, 2 * calls, run);
  portal->Stop();
  kms.process->Stop();
  std::string rm = "rm -rf '" + dir + "'";
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir.c_str());
  return all_met ? 0 : 3;
}

// CPU seconds (user + system) the process `pid` has used so far.
double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  double ticks = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(field);  // utime, stime
  }
  return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// Peak and current resident memory of `pid` in MiB (VmHWM, VmRSS).
std::pair<double, double> ResidentMib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  double hwm = 0, rss = 0;
  while (std::getline(f, line)) {
    if (line.starts_with("VmHWM:")) hwm = std::stod(line.substr(6)) / 1024;
    if (line.starts_with("VmRSS:")) rss = std::stod(line.substr(6)) / 1024;
  }
  return {hwm, rss};
}

// One anonymous request over a new plain-HTTP connection from the loopback
// address `from`; the answer's status (0: no answer).
int RawPost(const std::string& from, int port, const std::string& path, const std::string& body) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in src{};
  src.sin_family = AF_INET;
  ::inet_pton(AF_INET, from.c_str(), &src.sin_addr);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  int status = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) == 0 &&
      ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) == 0) {
    const std::string req = "POST " + path + " HTTP/1.1\r\nHost: portal\r\nContent-Type: application/json\r\n" +
                            "Connection: close\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[64] = {};
      ssize_t got = 0;
      while (got < 12) {
        const ssize_t n = ::recv(fd, buf + got, sizeof(buf) - 1 - static_cast<size_t>(got), 0);
        if (n <= 0) break;
        got += n;
      }
      if (got >= 12 && std::strncmp(buf, "HTTP/1.1 ", 9) == 0) status = std::atoi(buf + 9);
    }
  }
  ::close(fd);
  return status;
}

// Registration and login floods against the real portal (plain HTTP) and
// KMS with the default limits, from 200 loopback addresses: the KMS CPU
// the registration flood costs beside the cost the configured rate allows
// (admitted registrations x the KMS CPU of one, measured first in the same
// run), and the portal's peak memory beside the bound the Argon2id limit
// sets (password_hashes_in_flight x 64 MiB).
int RunFlood(bool short_run) {
  const double seconds = short_run ? 8 : 20;
  const int threads = 32;
  char tmpl[] = "/tmp/vmseal-abuse-flood-XXXXXX";
  const std::string dir = Must(StatusOr<std::string>(::mkdtemp(tmpl) ? std::string(tmpl) : ""), "mkdtemp");
  auto kms = Must(csp::testing::StartKms(dir + "/kms"), "start the KMS (is VMSEAL_BINARY or build/vmseal there?)");
  auto portal = Must(csp::testing::ServerProcess::Start(
                         {testing::VmsealBinary(), "csp", "serve", "--data-dir", dir + "/data", "--port", "0",
                          "--port-file", dir + "/port", "--kms-url", kms.url(), "--kms-ca", kms.ca(), "--kms-cert",
                          kms.portal_cert(), "--kms-key", kms.portal_key(), "--accept-unverified-packages"},
                         dir + "/portal.log", dir + "/port"),
                     "start the portal");
  const int port = portal->port();
  const pid_t kms_pid = kms.process->pid(), portal_pid = portal->pid();
  // Defaults of csp::AbuseLimits (what a public deployment runs).
  const double register_burst = 20, register_per_second = 2, hashes_in_flight = 4, hash_mib = 64;

  // The KMS CPU of one registration: 3, one at a time, from 3 addresses.
  double kms0 = CpuSeconds(kms_pid);
  int made = 0;
  for (int i = 0; i < 3; ++i) made += RawPost("127.0.1." + std::to_string(i + 1), port, "/v1/register", "{}") == 201;
  if (made != 3) Must(InternalError("baseline registrations failed"), "baseline");
  const double per_registration = (CpuSeconds(kms_pid) - kms0) / 3;
  const auto [idle_hwm, idle_rss] = ResidentMib(portal_pid);

  struct Counts {
    std::atomic<int> ok{0}, denied{0}, limited{0}, overloaded{0}, other{0};
    int total() const { return ok + denied + limited + overloaded + other; }
  };
  auto flood = [&](const std::string& path, auto body_of, Counts* counts) {
    const auto until = Clock::now() + std::chrono::duration<double>(seconds);
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        for (int k = t; Clock::now() < until; k += threads) {
          const int st = RawPost("127.0.2." + std::to_string(k % 200 + 1), port, path, body_of(k));
          if (st == 200 || st == 201) {
            ++counts->ok;
          } else if (st == 429) {
            ++counts->limited;
          } else if (st == 503) {
            ++counts->overloaded;
          } else if (st == 401) {
            ++counts->denied;
          } else {
            ++counts->other;
          }
        }
      });
    }
    for (auto& t : ts) t.join();
  };

  std::printf("abuse_bench: floods from 200 addresses, %d connections at once, %.0f s each, default limits "
              "(register burst %.0f + %.0f/s, %.0f Argon2id hashes of %.0f MiB at once); load average at start "
              "%.2f\n",
              threads, seconds, register_burst, register_per_second, hashes_in_flight, hash_mib, [] {
                double l[1] = {0};
                return ::getloadavg(l, 1) == 1 ? l[0] : -1.0;
              }());
  std::printf("  one registration costs the KMS %.1f ms of CPU (3 measured first)\n", per_registration * 1e3);

  Counts reg;
  kms0 = CpuSeconds(kms_pid);
  double portal0 = CpuSeconds(portal_pid);
  flood("/v1/register", [](int) { return std::string("{}"); }, &reg);
  const double kms_cpu = CpuSeconds(kms_pid) - kms0, portal_cpu = CpuSeconds(portal_pid) - portal0;
  const double allowed = register_burst + register_per_second * seconds;
  const double bound = allowed * per_registration;
  std::printf("  registration flood: %d attempts, %d created, %d refused 429, %d 503, %d other\n",
              reg.total(), reg.ok.load(), reg.limited.load(),
              reg.overloaded.load(), reg.other.load());
  std::printf("    KMS CPU %.2f s (%.2f of 2 cores) vs the limit's %.0f registrations x %.1f ms = %.2f s: %.2fx "
              "(target <= 1.2)\n",
              kms_cpu, kms_cpu / seconds / 2, allowed, per_registration * 1e3, bound, kms_cpu / bound);
  std::printf("    portal CPU %.2f s (%.2f of 2 cores)\n", portal_cpu, portal_cpu / seconds / 2);
  const bool reg_met = kms_cpu <= 1.2 * bound && reg.other == 0;

  Counts login;
  flood("/v1/login",
        [](int k) { return "{\"login_id\":\"u-flood" + std::to_string(k) + "\",\"password\":\"guess\"}"; }, &login);
  const auto [hwm, rss] = ResidentMib(portal_pid);
  const double mem_bound = idle_hwm + hashes_in_flight * hash_mib;
  std::printf("  login flood (unknown ids, each an Argon2id): %d attempts, %d answered 401 after a hash, %d "
              "refused 429, %d 503 overloaded, %d other\n",
              login.total(), login.denied.load(), login.limited.load(), login.overloaded.load(), login.other.load());
  std::printf("    portal peak memory %.0f MiB (idle peak %.0f, now %.0f) vs idle + %.0f hashes x %.0f MiB = %.0f "
              "MiB: %.2fx (target <= 1)\n",
              hwm, idle_hwm, rss, hashes_in_flight, hash_mib, mem_bound, hwm / mem_bound);
  const bool mem_met = hwm <= mem_bound && login.other == 0;
  portal->Stop();
  kms.process->Stop();
  std::string rm = "rm -rf '" + dir + "'";
  if (std::system(rm.c_str()) != 0) std::fprintf(stderr, "could not remove %s\n", dir.c_str());
  std::printf("  registration flood KMS CPU %s; login flood portal memory %s\n", reg_met ? "met" : "NOT met",
              mem_met ? "met" : "NOT met");
  return reg_met && mem_met ? 0 : 3;
}

}  // namespace
}  // namespace vmseal

int main(int argc, char** argv) {
  bool short_run = false;
  int releases = 0;
  std::string target = "both";
  std::vector<int> slow = {64, 1000};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--short") {
      short_run = true;
    } else if (a.rfind("--target=", 0) == 0) {
      target = a.substr(9);
    } else if (a.rfind("--releases=", 0) == 0) {
      releases = std::atoi(a.c_str() + 11);
    } else if (a.rfind("--slow=", 0) == 0) {
      slow.clear();
      std::string list = a.substr(7);
      for (size_t p = 0; p <= list.size();) {
        size_t q = list.find(',', p);
        if (q == std::string::npos) q = list.size();
        slow.push_back(std::atoi(list.substr(p, q - p).c_str()));
        p = q + 1;
      }
    } else {
      std::fprintf(stderr,
                   "usage: abuse_bench [--short] [--releases=N] [--slow=64,1000] [--target=kms|portal|flood|both]\n");
      return 2;
    }
  }
  if (releases <= 0) releases = short_run ? 80 : 200;
  ::signal(SIGPIPE, SIG_IGN);
  int rc = 0;
  if (target == "kms" || target == "both") rc = vmseal::Run(short_run, releases, slow);
  if (target == "portal" || target == "both") rc = std::max(rc, vmseal::RunPortal(short_run, slow));
  if (target == "flood" || target == "both") rc = std::max(rc, vmseal::RunFlood(short_run));
  return rc;
}
