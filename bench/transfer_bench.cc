// Package transfer speed against the same portal in the same run (issue 15
// "Upload and fetch >= 0.9x curl"):
//   upload:   `vmseal customer upload` (the real binary: begin, digest,
//             PUTs, commit) against `curl -T` of the same file in one PUT,
//             and against the same protocol by curl (begin POST, PUT,
//             commit POST: three curl processes);
//   fetch:    the host's whole-package fetch (PortalClient::Fetch: parallel
//             Range requests into a 0600 file, SHA-256 checked against the
//             portal's; VMSEAL_FETCH_CONNECTIONS and VMSEAL_FETCH_RANGE_MIB
//             override its connections and range size) and the
//             streamed export's sequential Range reads (HttpsRangeSource,
//             8 MiB ranges, two in flight as the prefetch runs them, written
//             to a file) against `curl -o` with the host's mTLS identity.
// Pairs run A B B A per round; each figure is the median over the runs with
// its spread (min..max), and the ratio is curl's time over ours (>= 0.9 is
// the target). The machine's load average is printed: on a shared machine
// the figures are noisy.
//
//   cmake --build build --target transfer_bench vmseal
//   build/bench/transfer_bench [SIZE_MIB=512] [ROUNDS=2]
//
// The portal is the real one (TLS 1.3, host mTLS, streamed bodies, Range);
// its package check and the KMS are stand-ins (not measured here).
#include <httplib.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench/internal/abba.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "csp/portal_server.h"
#include "host/portal_client.h"
#include "kms/internal/mini_ca.h"
#include "nbd_export/range_source.h"

namespace vmseal {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "transfer_bench: %s\n", what.c_str());
  std::exit(1);
}

#define CHECK_OK(expr)                                                        \
  do {                                                                        \
    ::vmseal::Status check_s_ = ::vmseal::internal::AsStatus(expr);           \
    if (!check_s_.ok()) Die(std::string(#expr) + ": " + check_s_.ToString()); \
  } while (0)

class AcceptAllVerifier final : public csp::PackageVerifier {
 public:
  StatusOr<csp::VerifiedPackage> Verify(const RandomAccessFile&,
                                        const std::string&) const override {
    return csp::VerifiedPackage{"bench-img", "bench-key", 1};
  }
};

class EveryHostEligibleKms final : public csp::KmsClient {
 public:
  StatusOr<csp::CustomerKey> CreateCustomerKey(const std::string& customer_id,
                                               const std::string&) override {
    ASSIGN_OR_RETURN(auto key, crypto::PrivateKey::Generate(crypto::KeyType::kEcP256));
    csp::CustomerKey out;
    out.key_id = "key-" + customer_id;
    out.customer_id = customer_id;
    out.algorithm = "P-256";
    out.public_key_pem = key.Public().ToPem();
    return out;
  }
  StatusOr<std::vector<csp::HostEligibility>> CheckPlacement(
      const std::string&, const std::string&, const std::vector<std::string>& hosts) override {
    std::vector<csp::HostEligibility> out;
    for (const auto& h : hosts) out.push_back({h, true, "ok"});
    return out;
  }
  Status RegisterImage(const std::string&, const std::string&, const std::string&,
                       const ovf::SignedPackageTexts&) override {
    return OkStatus();
  }
  Status CreateGrant(const csp::LaunchGrant&) override { return OkStatus(); }
  std::string CaCertificatePem() const override { return ""; }
};

void Issue(const kms::internal::CertAndKey& ca, const std::string& dir, const std::string& cn,
           const std::string& role, bool server, const std::string& name) {
  kms::internal::LeafOptions lo{.common_name = cn, .organizational_unit = role};
  if (server) {
    lo.ip_addresses = {"127.0.0.1"};
    lo.server = true;
  }
  auto id = kms::internal::IssueLeaf(ca, lo);
  CHECK_OK(id);
  CHECK_OK(WriteStringToFileAtomic(Env::Default(), dir + "/" + name + ".crt", id->cert_pem, 0600));
  CHECK_OK(WriteStringToFileAtomic(
      Env::Default(), dir + "/" + name + ".key",
      std::string(reinterpret_cast<const char*>(id->key_pem.UnsafeData()), id->key_pem.size()),
      0600));
}

double CpuSeconds(int who) {
  struct rusage u;
  ::getrusage(who, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// CPU seconds (user + system) of the last TimeCommand: the command's own
// (the client) and this process's (the in-process portal) while it ran.
double last_client_cpu = 0, last_portal_cpu = 0;
// Seconds of each curl commit POST (the portal's commit: seal, publish, list).
std::vector<double> commit_seconds;

// Seconds a shell command takes; dies when it fails.
double TimeCommand(const std::string& cmd) {
  const double child0 = CpuSeconds(RUSAGE_CHILDREN), self0 = CpuSeconds(RUSAGE_SELF);
  const auto t = Clock::now();
  if (std::system(cmd.c_str()) != 0) Die("failed: " + cmd);
  const double s = std::chrono::duration<double>(Clock::now() - t).count();
  last_client_cpu = CpuSeconds(RUSAGE_CHILDREN) - child0;
  last_portal_cpu = CpuSeconds(RUSAGE_SELF) - self0;
  return s;
}

template <typename F>
double TimeCall(F&& f) {
  const auto t = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// One side's samples (seconds, or CPU seconds): median and min..max.
struct Series {
  std::vector<double> s;
  // Appends `more` (one A B B A round's samples of this side).
  void Add(const std::vector<double>& more) { s.insert(s.end(), more.begin(), more.end()); }
  double Median() const { return bench::Summarize(s).median; }
  double Min() const { return bench::Summarize(s).min; }
  double Max() const { return bench::Summarize(s).max; }
};

void PrintPair(const char* what, const Series& ours, const Series& curl, double mib) {
  std::printf("%-28s %8.1f MiB/s (%.2f s, %.2f..%.2f)   curl %8.1f MiB/s (%.2f s, %.2f..%.2f)"
              "   ratio %s\n",
              what, mib / ours.Median(), ours.Median(), ours.Min(), ours.Max(),
              mib / curl.Median(), curl.Median(), curl.Min(), curl.Max(),
              bench::RatioText(curl.Median() / ours.Median(), bench::Target::AtLeast(0.9)).c_str());
}

int Main(int argc, char** argv) {
  const uint64_t size_mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 512;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 2;
  if (size_mib < 16 || rounds < 1) Die("usage: transfer_bench [SIZE_MIB>=16] [ROUNDS>=1]");
  const char* bin_env = std::getenv("VMSEAL_BINARY");
  const std::string vmseal = bin_env != nullptr ? bin_env : VMSEAL_BINARY_DEFAULT;
  const char* tmp = std::getenv("TMPDIR");
  std::string dir_template = std::string(tmp != nullptr ? tmp : "/tmp") + "/xfer_bench.XXXXXX";
  if (::mkdtemp(dir_template.data()) == nullptr) Die("mkdtemp failed");
  const std::string dir = dir_template;
  auto file = [&](const std::string& n) { return dir + "/" + n; };

  // The "package": random bytes (the stand-in verifier accepts anything).
  {
    std::ofstream out(file("pkg.ova"), std::ios::binary);
    for (uint64_t i = 0; i < size_mib; ++i) {
      crypto::Bytes r = crypto::RandomBytes(1 << 20);
      out.write(reinterpret_cast<const char*>(r.data()), static_cast<std::streamsize>(r.size()));
    }
  }
  const double mib = static_cast<double>(size_mib);

  auto ca = kms::internal::CreateRootCa("vmseal bench CA", 1);
  CHECK_OK(ca);
  CHECK_OK(WriteStringToFileAtomic(Env::Default(), file("ca.pem"), ca->cert_pem, 0600));
  Issue(*ca, dir, "127.0.0.1", "portal", true, "server");
  Issue(*ca, dir, "bench-host", "host", false, "host");
  AcceptAllVerifier verifier;
  EveryHostEligibleKms kms;
  csp::PortalServer::Options po;
  po.data_dir = file("portal");
  po.argon2_m_cost_kib = 64;
  po.tls_cert_file = file("server.crt");
  po.tls_key_file = file("server.key");
  po.client_ca_file = file("ca.pem");
  // VMSEAL_PORTAL_IO_THREADS: the portal front end's event-loop threads
  // (TLS); default the portal's own.
  if (const char* v = std::getenv("VMSEAL_PORTAL_IO_THREADS")) {
    po.front_end.io_threads = std::atoi(v);
  }
  const int portal_io_threads = po.front_end.io_threads;
  auto portal = csp::PortalServer::Create(std::move(po), &verifier, &kms);
  CHECK_OK(portal);
  CHECK_OK((*portal)->Start());
  const std::string url = "https://127.0.0.1:" + std::to_string((*portal)->port());

  httplib::SSLClient http("127.0.0.1", (*portal)->port());
  http.set_ca_cert_path(file("ca.pem").c_str());
  http.enable_server_certificate_verification(true);
  http.set_read_timeout(600, 0);
  for (int i = 0; i < 200 && !http.Get("/v1/kms/ca"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto reg = http.Post("/v1/register");
  if (!reg || reg->status != 201) Die("portal register failed");
  json r = json::parse(reg->body);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto lg = http.Post("/v1/login", login.dump(), "application/json");
  if (!lg || lg->status != 200) Die("login failed");
  const std::string token = json::parse(lg->body)["token"];
  httplib::Headers auth = {{"Authorization", "Bearer " + token}};
  CHECK_OK(WriteStringToFileAtomic(Env::Default(), file("session.json"),
                                   json{{"token", token}}.dump(), 0600));

  // commit: the whole protocol by curl (begin POST, PUT, commit POST), each
  // a curl process as `vmseal customer upload` is one; else the PUT alone.
  auto curl_upload = [&](bool commit) {
    double b = 0;
    std::string id;
    if (commit) {
      b = TimeCommand("curl -sS -f --cacert " + file("ca.pem") + " -H 'Authorization: Bearer " +
                      token + "' -X POST '" + url + "/v1/uploads' -o " + file("begin.json"));
      std::ifstream in(file("begin.json"));
      id = json::parse(in)["upload_id"];
    } else {
      auto begin = http.Post("/v1/uploads", auth, "", "application/json");
      if (!begin || begin->status != 201) Die("start upload failed");
      id = json::parse(begin->body)["upload_id"];
    }
    const double s = b + TimeCommand("curl -sS -f --cacert " + file("ca.pem") +
                                 " -H 'Authorization: Bearer " + token + "'" +
                                 " -H 'Content-Type: application/octet-stream' -T " +
                                 file("pkg.ova") + " '" + url + "/v1/uploads/" + id +
                                 "?offset=0' -o /dev/null");
    if (!commit) return s;
    const std::string body = json{{"name", "curl"}}.dump();
    const double c = TimeCommand("curl -sS -f --cacert " + file("ca.pem") +
                                 " -H 'Authorization: Bearer " + token + "'" +
                                 " -H 'Content-Type: application/json' -d '" + body + "' '" +
                                 url + "/v1/uploads/" + id + "/commit' -o /dev/null");
    commit_seconds.push_back(c);
    return s + c;
  };
  // VMSEAL_BINARY_REF: another build of `vmseal` (e.g. before a change),
  // timed in the same rounds as ours.
  const char* ref_env = std::getenv("VMSEAL_BINARY_REF");
  const std::string ref_bin = ref_env != nullptr ? ref_env : "";
  auto upload_with = [&](const std::string& bin) {
    return TimeCommand(bin + " customer --portal " + url + " --ca-cert " + file("ca.pem") +
                       " --session " + file("session.json") + " upload " + file("pkg.ova") +
                       " --name bench > " + file("upload.out"));
  };
  auto ours_upload = [&] {
    return TimeCommand(vmseal + " customer --portal " + url + " --ca-cert " + file("ca.pem") +
                       " --session " + file("session.json") + " upload " + file("pkg.ova") +
                       " --name bench > " + file("upload.out"));
  };
  Series up_curl, up_ours, upc_curl;
  // CPU seconds per upload: client (the command) and portal (this process).
  Series cpu_client_curl, cpu_portal_curl, cpu_client_ours, cpu_portal_ours;
  auto run_curl = [&] {
    const double s = curl_upload(false);
    cpu_client_curl.s.push_back(last_client_cpu);
    cpu_portal_curl.s.push_back(last_portal_cpu);
    return s;
  };
  auto run_ours = [&] {
    const double s = ours_upload();
    cpu_client_ours.s.push_back(last_client_cpu);
    cpu_portal_ours.s.push_back(last_portal_cpu);
    return s;
  };
  (void)curl_upload(false);  // warm-up (page cache, portal store)
  // VMSEAL_BENCH_FETCH_ONLY=1: one untimed upload (the fetch needs an
  // image), then the fetch rounds only.
  const bool fetch_only = std::getenv("VMSEAL_BENCH_FETCH_ONLY") != nullptr;
  if (fetch_only) (void)ours_upload();
  Series up_ref, up_ours_vs_ref;
  // Each round: curl ours ours curl (the warm-up ran above), two curl
  // uploads with commit, and with VMSEAL_BINARY_REF ref ours ours ref.
  for (int i = 0; i < rounds && !fetch_only; ++i) {
    const auto up = bench::RunAbba({.warm_up_a = 0, .runs = 2}, run_curl, run_ours);
    up_curl.Add(up.a);
    up_ours.Add(up.b);
    upc_curl.s.push_back(curl_upload(true));
    upc_curl.s.push_back(curl_upload(true));
    if (!ref_bin.empty()) {
      const auto vs = bench::RunAbba({.warm_up_a = 0, .runs = 2}, [&] { return upload_with(ref_bin); },
                                     ours_upload);
      up_ref.Add(vs.a);
      up_ours_vs_ref.Add(vs.b);
    }
  }
  if (!ref_bin.empty()) PrintPair("upload: ours vs VMSEAL_BINARY_REF", up_ours_vs_ref, up_ref, mib);
  if (!fetch_only) {
    PrintPair("customer upload (binary)", up_ours, up_curl, mib);
    PrintPair("  vs curl begin + PUT + commit", up_ours, upc_curl, mib);
    std::printf("upload CPU s, median (min..max): client ours %.2f (%.2f..%.2f) curl %.2f "
              "(%.2f..%.2f); portal with ours %.2f (%.2f..%.2f) with curl %.2f (%.2f..%.2f)\n",
              cpu_client_ours.Median(), cpu_client_ours.Min(), cpu_client_ours.Max(),
              cpu_client_curl.Median(), cpu_client_curl.Min(), cpu_client_curl.Max(),
              cpu_portal_ours.Median(), cpu_portal_ours.Min(), cpu_portal_ours.Max(),
              cpu_portal_curl.Median(), cpu_portal_curl.Min(), cpu_portal_curl.Max());
  {
    Series commits{commit_seconds};
    std::printf("commit POST (curl, the portal's seal + publish + listing), s: %.3f (%.3f..%.3f)\n",
                commits.Median(), commits.Min(), commits.Max());
  }
  }
  std::fflush(stdout);
  const std::string image_id = [&] {
    std::ifstream in(file("upload.out"));
    std::string id;
    in >> id;
    return id;
  }();

  // A job for the host, so that it may read the package.
  host::PortalClientOptions pco;
  pco.url = url;
  pco.ca_cert_file = file("ca.pem");
  pco.cert_file = file("host.crt");
  pco.key_file = file("host.key");
  pco.timeout_seconds = 600;
  // Tuning knobs for the parallel fetch (defaults: PortalClientOptions').
  if (const char* v = std::getenv("VMSEAL_FETCH_CONNECTIONS")) pco.fetch_connections = std::atoi(v);
  if (const char* v = std::getenv("VMSEAL_FETCH_RANGE_MIB")) {
    pco.fetch_range_bytes = std::strtoull(v, nullptr, 10) << 20;
  }
  auto pc = host::PortalClient::Create(pco);
  CHECK_OK(pc);
  CHECK_OK((*pc)->Register({.capacity = {.vcpus = 2, .memory_mib = 2048, .slots = 2}}));
  // Heartbeats as `host serve` sends them: the portal drops a host silent
  // for 30 s and refuses its job (the fetches would then get 404).
  std::atomic<bool> stop_heartbeats{false};
  std::thread heartbeats([&] {
    for (int tick = 0; !stop_heartbeats; ++tick) {
      if (tick % 50 == 0) (void)(*pc)->Heartbeat();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  json launch_body = {{"image_id", image_id}};
  auto launch = http.Post("/v1/launch", auth, launch_body.dump(), "application/json");
  if (!launch || launch->status != 201) Die("launch failed: " + (launch ? launch->body : ""));
  auto jobs = (*pc)->PollJobs();
  CHECK_OK(jobs);
  if (jobs->size() != 1) Die("expected one job");
  host::Job job{.job_id = (*jobs)[0].job_id, .image_id = (*jobs)[0].image_id,
                .tenant = (*jobs)[0].customer_id,
                .package_sha256_hex = (*jobs)[0].package_sha256_hex};
  const std::string package_url = url + "/v1/hosts/jobs/" + job.job_id + "/package";

  // The host keeps its lease (the portal gives the job to another host
  // after --lease-seconds without word from it).
  auto keep_lease = [&] { CHECK_OK((*pc)->Heartbeat()); };
  int fetch_connections_used = 0, fetch_ranges = 0;
  auto curl_fetch = [&] {
    keep_lease();
    const double s = TimeCommand("curl -sS -f --cacert " + file("ca.pem") + " --cert " +
                                 file("host.crt") + " --key " + file("host.key") + " -o " +
                                 file("curl.out") + " '" + package_url + "'");
    std::filesystem::remove(file("curl.out"));
    return s;
  };
  auto ours_fetch = [&] {
    keep_lease();
    const double s = TimeCall([&] { CHECK_OK((*pc)->Fetch(job, file("fetch.out"))); });
    fetch_connections_used = (*pc)->last_fetch().connections;
    fetch_ranges = (*pc)->last_fetch().ranges;
    std::filesystem::remove(file("fetch.out"));
    return s;
  };
  nbd_export::HttpsRangeSourceOptions ro;
  ro.url = package_url;
  ro.ca_file = file("ca.pem");
  ro.cert_file = file("host.crt");
  ro.key_file = file("host.key");
  auto ours_ranges = [&] {
    keep_lease();
    const double s = TimeCall([&] {
      auto src = nbd_export::NewHttpsRangeSource(ro);
      CHECK_OK(src);
      const uint64_t size = (*src)->size();
      constexpr uint64_t kRange = uint64_t{8} << 20;
      FILE* out = std::fopen(file("ranges.out").c_str(), "wb");
      if (out == nullptr) Die("open ranges.out");
      // Two ranges in flight, as the export's prefetch runs them.
      std::vector<uint8_t> a(kRange), b(kRange);
      for (uint64_t off = 0; off < size; off += 2 * kRange) {
        const uint64_t na = std::min(kRange, size - off);
        const uint64_t nb = off + na < size ? std::min(kRange, size - off - na) : 0;
        Status sb = OkStatus();
        std::thread t([&] {
          if (nb > 0) sb = (*src)->Fetch(off + na, {b.data(), nb});
        });
        Status sa = (*src)->Fetch(off, {a.data(), na});
        t.join();
        CHECK_OK(sa);
        CHECK_OK(sb);
        if (std::fwrite(a.data(), 1, na, out) != na) Die("write");
        if (nb > 0 && std::fwrite(b.data(), 1, nb, out) != nb) Die("write");
      }
      std::fclose(out);
    });
    std::filesystem::remove(file("ranges.out"));
    return s;
  };
  Series f_curl, f_ours, g_curl, g_ours;
  // A warm-up fetch by curl, then per round curl ours ours curl, whole
  // file and ranges.
  for (int i = 0; i < rounds; ++i) {
    const auto whole = bench::RunAbba({.warm_up_a = i == 0 ? 1 : 0, .runs = 2}, curl_fetch, ours_fetch);
    f_curl.Add(whole.a);
    f_ours.Add(whole.b);
    const auto ranges = bench::RunAbba({.warm_up_a = 0, .runs = 2}, curl_fetch, ours_ranges);
    g_curl.Add(ranges.a);
    g_ours.Add(ranges.b);
  }

  double load[3] = {0, 0, 0};
  (void)getloadavg(load, 3);
  std::printf("\ntransfer_bench: %llu MiB over loopback TLS 1.3, %d round(s) A B B A, "
              "median (min..max); load average %.2f %.2f %.2f (%u cores, shared); portal "
              "io_threads %d\n",
              static_cast<unsigned long long>(size_mib), rounds, load[0], load[1], load[2],
              std::thread::hardware_concurrency(), portal_io_threads);
  if (!fetch_only) {
    PrintPair("customer upload (binary)", up_ours, up_curl, mib);
    PrintPair("  vs curl begin + PUT + commit", up_ours, upc_curl, mib);
  }
  PrintPair("host fetch (whole file)", f_ours, f_curl, mib);
  std::printf("  (fetch by %d connection(s), %d ranges of %llu MiB)\n", fetch_connections_used,
              fetch_ranges, static_cast<unsigned long long>(pco.fetch_range_bytes >> 20));
  PrintPair("host ranges (8 MiB x2)", g_ours, g_curl, mib);

  stop_heartbeats = true;
  heartbeats.join();
  (*portal)->Stop();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace vmseal

int main(int argc, char** argv) { return vmseal::Main(argc, argv); }
