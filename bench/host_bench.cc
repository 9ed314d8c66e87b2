// Job receipt -> VM started and job receipt -> marker on the console for a
// sealed image, streamed (the default) and copy mode, beside the same plain
// image booted from a local file, in the same run (issue 15 "Figures to
// report"). Per round: streamed, plain, plain, streamed (A B B A), then two
// copy-mode jobs; medians with min..max (bench/internal/abba.h), and the job phases (seconds from
// receipt) so the slow step shows.
//
//   cmake --build build --target host_bench &&
//     build/bench/host_bench [SIZE_MIB] [ROUNDS] [copy|nocopy] [random|sparse]
//
// sparse: the padding is a hole (zeros the guest never reads) instead of
// random bytes; the disk is still SIZE_MIB of virtual disk, sealed and
// served whole (a hole is sealed like any other chunk), with the real boot
// image where the guest reads. For 8 GiB, where random padding would not fit
// this machine's time.
//
// Before each streamed job the agent's overlay pool is given time to refill
// (jobs a few seconds apart, as a host sees them); the wait is reported, and
// so is every launch that had to create its overlay (the slow path).
//
// Work files go under $TMPDIR (default /tmp); keep it short: qemu's QMP
// socket path must fit a unix socket address.
//
// Real parts: the sample image (scripts/build-sample-image.sh) padded with
// random bytes to SIZE_MIB (default 1024), sealed with a customer RSA-3072
// key; the real portal (TLS, host mTLS) serving the package by Range; the
// host agent with nbdkit and the vmseal plugin, its TPM security engine on
// swtpm and qemu (TCG). The KMS is the in-process double of the host tests
// (src/host/testing/in_process_kms.h): the same verification and key
// wrapping code as the KMS, without HTTPS.
#include <httplib.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <cstdio>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "bench/internal/abba.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/portal_server.h"
#include "kms/internal/mini_ca.h"
#include "host/host_agent.h"
#include "host/portal_client.h"
#include "host/testing/in_process_kms.h"
#include "ovf/package.h"
#include "tpm/security_engine.h"
#include "tpm/testing/swtpm_harness.h"
#include "vm/vm_manager.h"

namespace vmseal {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Stopped on the way out of a failed run, so no swtpm outlives the bench.
tpm::testing::Swtpm* g_swtpm = nullptr;

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "host_bench: %s\n", what.c_str());
  if (g_swtpm != nullptr) (void)g_swtpm->Stop();
  std::exit(1);
}

#define CHECK_OK(expr)                                                    \
  do {                                                                    \
    ::vmseal::Status check_s_ = ::vmseal::internal::AsStatus(expr);        \
    if (!check_s_.ok()) Die(std::string(#expr) + ": " + check_s_.ToString()); \
  } while (0)

int Run(const std::string& cmd) { return std::system(cmd.c_str()); }

// The portal's side is not measured: it lists the package unchecked (the
// host checks the manifest) and sees every host as eligible.
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
                                               const std::string& /*algorithm*/) override {
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

// An identity as `vmseal kms issue-identity` makes it (OU = role).
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

std::string SourceDir() {
  const char* s = std::getenv("VMSEAL_SOURCE_DIR");
  return s != nullptr ? s : VMSEAL_SOURCE_DIR_DEFAULT;
}

int Main(int argc, char** argv) {
  const uint64_t size_mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1024;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 1;
  const bool with_copy = argc > 3 ? std::string(argv[3]) != "nocopy" : true;
  const bool sparse = argc > 4 && std::string(argv[4]) == "sparse";
  if (size_mib < 64) Die("size must be at least 64 MiB");
  if (rounds < 1) Die("rounds must be at least 1");
  const char* tmp = std::getenv("TMPDIR");
  std::string dir_template = std::string(tmp != nullptr ? tmp : "/tmp") + "/host_bench.XXXXXX";
  if (::mkdtemp(dir_template.data()) == nullptr) Die("mkdtemp failed");
  const std::string dir = dir_template;
  auto file = [&](const std::string& n) { return dir + "/" + n; };
  std::printf("host_bench: %llu MiB image, work dir %s\n",
              static_cast<unsigned long long>(size_mib), dir.c_str());

  // 1. The sample image, padded with random bytes (raw disk: the partition
  //    table covers only the bootable part; the rest is data).
  const std::string marker = "vmseal-bench-" + crypto::HexEncode(crypto::RandomBytes(8));
  if (Run(SourceDir() + "/scripts/build-sample-image.sh " + file("disk.img") + " --marker " +
          marker + " > " + file("image.log") + " 2>&1") != 0) {
    Die("build-sample-image.sh failed; see " + file("image.log"));
  }
  {
    FILE* f = std::fopen(file("disk.img").c_str(), "ab");
    if (f == nullptr) Die("open disk.img");
    uint64_t have = std::filesystem::file_size(file("disk.img"));
    const uint64_t want = size_mib << 20;
    if (sparse && have < want) {
      if (::ftruncate(::fileno(f), static_cast<off_t>(want)) != 0) Die("truncate disk.img");
      have = want;
    }
    while (have < want) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(want - have, 4 << 20));
      crypto::Bytes r = crypto::RandomBytes(n);
      if (std::fwrite(r.data(), 1, n, f) != n) Die("write padding");
      have += n;
    }
    std::fclose(f);
  }
  const uint64_t disk_bytes = std::filesystem::file_size(file("disk.img"));

  // 2. Seal it for a customer key.
  auto customer = crypto::PrivateKey::Generate(crypto::KeyType::kRsa3072);
  CHECK_OK(customer);
  ovf::SealOptions seal;
  seal.inputs = {file("disk.img")};
  seal.recipient_pem = customer->Public().ToPem();
  seal.image_id = "bench-img";
  seal.tenant = "bench-tenant";
  seal.vm.cpus = 1;
  seal.vm.memory_mib = 256;
  auto t_seal = Clock::now();
  CHECK_OK(ovf::SealPackage(Env::Default(), seal, file("bench.ova")));
  const double seal_s = Seconds(t_seal, Clock::now());
  const uint64_t package_bytes = std::filesystem::file_size(file("bench.ova"));
  // disk.img stays: the reference boots it from a local plain file.

  // 3. TPM, VMs, KMS double; enroll and trust the current state.
  auto swtpm = tpm::testing::Swtpm::Start({.parent_dir = dir});
  CHECK_OK(swtpm);
  g_swtpm = swtpm->get();
  auto engine = tpm::SecurityEngine::Create({.tcti = (*swtpm)->tcti(), .state_dir = file("tpm")});
  CHECK_OK(engine);
  auto vms = vm::VmManager::Create({.state_dir = file("images"), .accel = vm::Accel::kTcg});
  if (!vms.ok()) Die(vms.status().ToString());
  CHECK_OK(vms);
  const std::vector<uint32_t> pcrs = {0, 7};
  host::testing::InProcessKms kms((*swtpm)->ca_bundle_pem(), std::move(customer).value(), pcrs);

  // 4. The portal over TLS, with the package uploaded by a customer.
  auto ca = kms::internal::CreateRootCa("vmseal bench CA", 1);
  CHECK_OK(ca);
  CHECK_OK(WriteStringToFileAtomic(Env::Default(), file("ca.pem"), ca->cert_pem, 0600));
  Issue(*ca, dir, "127.0.0.1", "portal", true, "server");
  Issue(*ca, dir, "bench-host", "host", false, "host");
  AcceptAllVerifier verifier;
  EveryHostEligibleKms trust;
  csp::PortalServer::Options po;
  po.data_dir = file("portal");
  po.argon2_m_cost_kib = 64;
  po.tls_cert_file = file("server.crt");
  po.tls_key_file = file("server.key");
  po.client_ca_file = file("ca.pem");
  auto portal = csp::PortalServer::Create(std::move(po), &verifier, &trust);
  CHECK_OK(portal);
  CHECK_OK((*portal)->Start());

  host::PortalClientOptions pco;
  pco.url = "https://127.0.0.1:" + std::to_string((*portal)->port());
  pco.ca_cert_file = file("ca.pem");
  pco.cert_file = file("host.crt");
  pco.key_file = file("host.key");
  pco.timeout_seconds = 120;
  auto portal_client = host::PortalClient::Create(pco);
  CHECK_OK(portal_client);
  CHECK_OK((*portal_client)->Register({.capacity = {.vcpus = 64, .memory_mib = 65536,
                                                    .slots = 64}}));
  // Heartbeats, as the service's heartbeat thread sends them, so the portal
  // keeps the host in the pool during the upload and the job.
  std::atomic<bool> stop_heartbeats{false};
  std::thread heartbeats([&] {
    while (!stop_heartbeats) {
      (void)(*portal_client)->Heartbeat();
      for (int i = 0; i < 50 && !stop_heartbeats; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
  });

  httplib::SSLClient customer_http("127.0.0.1", (*portal)->port());
  customer_http.set_ca_cert_path(file("ca.pem").c_str());
  customer_http.enable_server_certificate_verification(true);
  customer_http.set_read_timeout(600, 0);
  customer_http.set_write_timeout(600, 0);
  auto reg = customer_http.Post("/v1/register");
  if (!reg || reg->status != 201) Die("portal register failed");
  json r = json::parse(reg->body);
  json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
  auto lg = customer_http.Post("/v1/login", login.dump(), "application/json");
  httplib::Headers auth = {
      {"Authorization", "Bearer " + json::parse(lg->body)["token"].get<std::string>()}};
  auto begin = customer_http.Post("/v1/uploads", auth, "", "application/json");
  const std::string upload_id = json::parse(begin->body)["upload_id"];
  auto pkg_file = Env::Default()->NewRandomAccessFile(file("bench.ova"));
  CHECK_OK(pkg_file);
  std::shared_ptr<RandomAccessFile> pkg(std::move(pkg_file).value());
  auto put = customer_http.Put(
      ("/v1/uploads/" + upload_id + "?offset=0").c_str(), auth, package_bytes,
      [pkg](size_t offset, size_t length, httplib::DataSink& sink) {
        std::vector<uint8_t> buf(std::min<size_t>(length, 1 << 20));
        auto n = pkg->Read(offset, buf);
        if (!n.ok() || *n == 0) return false;
        return sink.write(reinterpret_cast<const char*>(buf.data()), *n);
      },
      "application/octet-stream");
  if (!put || put->status != 200) Die("upload failed");
  auto commit = customer_http.Post("/v1/uploads/" + upload_id + "/commit", auth,
                                   R"({"name":"bench"})", "application/json");
  if (!commit || commit->status != 201) Die("commit failed");
  const std::string image_id = json::parse(commit->body)["image_id"];

  // 5. Agents, one per launch mode, over the same TPM, VMs and portal;
  //    enroll once and trust the current state.
  // Each agent its own disk dir: its overlay pool (disk_dir/pool) is its own.
  auto make_agent = [&](host::LaunchMode mode, const std::string& disk_dir, size_t pool) {
    host::HostAgentOptions ao;
    ao.work_dir = file("work");
    ao.disk_dir = disk_dir;
    ao.overlay_pool_target = pool;
    ao.pcr_selection = pcrs;
    ao.launch_mode = mode;
    ao.nbd_plugin_path = VMSEAL_NBD_PLUGIN_PATH;
    ao.portal_url = pco.url;
    ao.ca_file = pco.ca_cert_file;
    ao.cert_file = pco.cert_file;
    ao.key_file = pco.key_file;
    auto agent =
        host::HostAgent::Create(ao, engine->get(), vms->get(), &kms, portal_client->get());
    CHECK_OK(agent);
    return std::move(agent).value();
  };
  auto streamed = make_agent(host::LaunchMode::kStream, file("images/vd"), 3);
  auto copying = make_agent(host::LaunchMode::kCopy, file("images/vc"), with_copy ? 2 : 0);
  CHECK_OK(streamed->Enroll());
  auto pcr_values = (*engine)->ReadPcrs({7});
  CHECK_OK(pcr_values);
  kms.allowed_pcr7.insert(crypto::HexEncode((*pcr_values)[0]));

  struct Timing {
    double started_s = 0;  // job receipt (or launch call) -> VM started
    double marker_s = 0;   // job receipt (or launch call) -> marker on the console
    std::map<std::string, double> phase_s;  // job phase -> seconds from receipt
    std::vector<std::pair<std::string, double>> steps_ms;  // HostAgent::LastLaunchProfile
  };
  // One job of the customer's image through `agent`: launch at the portal,
  // take the job, run it, wait for the marker; then the VM goes.
  auto run_job = [&](host::HostAgent* agent) {
    json launch_body = {{"image_id", image_id}};
    auto launch = customer_http.Post("/v1/launch", auth, launch_body.dump(), "application/json");
    if (!launch || launch->status != 201) Die("launch failed");
    auto jobs = (*portal_client)->PollJobs();
    CHECK_OK(jobs);
    if (jobs->empty()) Die("no job");
    const auto& pj = jobs->back();
    // No tenant: the image is sealed (for "bench-tenant") before the
    // portal's customer exists; the KMS stand-in grants by image.
    host::Job job{.job_id = pj.job_id, .image_id = pj.image_id,
                  .package_sha256_hex = pj.package_sha256_hex};
    const auto t0 = Clock::now();
    Timing t;
    auto vm = agent->RunJob(job, [&](const host::JobUpdate& u) {
      t.phase_s[host::JobPhaseName(u.phase)] = Seconds(t0, Clock::now());
      (void)(*portal_client)->ReportProgress(u);  // as the service does
    });
    CHECK_OK(vm);
    t.started_s = Seconds(t0, Clock::now());
    t.steps_ms = agent->LastLaunchProfile();
    CHECK_OK((*vms)->WaitForSerialMarker(vm->name, marker, 600000));
    t.marker_s = Seconds(t0, Clock::now());
    CHECK_OK(agent->DeleteVm(vm->name));
    (void)(*portal_client)->ReportVmDeleted(vm->name);
    return t;
  };
  // The reference: the same plain image booted from a local file.
  int plain_runs = 0;
  auto run_plain = [&] {
    const std::string name = "plain-" + std::to_string(++plain_runs);
    const std::string disk = file("images/" + name + ".img");
    if (::link(file("disk.img").c_str(), disk.c_str()) != 0) Die("link disk.img");
    vm::VmSpec spec;
    spec.name = name;
    spec.disk_path = disk;
    spec.disk_format = vm::DiskFormat::kRaw;
    spec.cpus = 1;
    spec.memory_mib = 256;
    const auto t0 = Clock::now();
    auto vm = (*vms)->Launch(spec);
    CHECK_OK(vm);
    Timing t;
    t.started_s = Seconds(t0, Clock::now());
    CHECK_OK((*vms)->WaitForSerialMarker(name, marker, 600000));
    t.marker_s = Seconds(t0, Clock::now());
    CHECK_OK((*vms)->Delete(name));  // removes the link, not disk.img
    return t;
  };

  std::vector<double> refill_waits;
  auto refill = [&](host::HostAgent* agent) {
    const auto t0 = Clock::now();
    if (!agent->overlay_pool()->WaitUntilFull(600000)) Die("overlay pool did not fill");
    refill_waits.push_back(Seconds(t0, Clock::now()));
  };
  std::vector<Timing> stream_runs, plain, copy_runs;
  auto run_streamed = [&] {
    refill(streamed.get());
    return run_job(streamed.get());
  };
  for (int i = 0; i < rounds; ++i) {
    // A B B A: streamed, plain, plain, streamed (first a plain warm-up:
    // page cache, qemu binary); then copy mode twice.
    const auto s = bench::RunAbba({.warm_up_a = 0, .warm_up_b = i == 0 ? 1 : 0, .runs = 2}, run_streamed,
                                  run_plain);
    stream_runs.insert(stream_runs.end(), s.a.begin(), s.a.end());
    plain.insert(plain.end(), s.b.begin(), s.b.end());
    if (with_copy) {
      refill(copying.get());
      copy_runs.push_back(run_job(copying.get()));
      copy_runs.push_back(run_job(copying.get()));
    }
  }

  const auto median = [](std::vector<double> v) { return bench::Median(std::move(v)); };
  auto line = [&](const char* what, const std::vector<Timing>& runs, bool at_marker) {
    if (runs.empty()) return 0.0;
    const bench::Spread v = bench::Summarize(bench::Column(runs, at_marker ? &Timing::marker_s : &Timing::started_s));
    std::printf("%-36s %8.3f s  (%.3f..%.3f, n=%zu)\n", what, v.median, v.min, v.max, v.n);
    return v.median;
  };
  const double mib = static_cast<double>(disk_bytes) / (1 << 20);
  std::printf("\nhost_bench: image %.0f MiB (package %.1f MiB, sealed in %.1f s, not counted), "
              "%d round(s) A B B A, median (min..max)\n",
              mib, static_cast<double>(package_bytes) / (1 << 20), seal_s, rounds);
  std::printf("KMS: in-process double, TPM: swtpm, qemu: TCG; load average %s "
              "(%u cores, shared: figures are noisy)\n",
              bench::LoadAverage().c_str(), std::thread::hardware_concurrency());
  const double s_started = line("streamed: job -> VM started", stream_runs, false);
  const double s_marker = line("streamed: job -> marker", stream_runs, true);
  line("copy:     job -> VM started", copy_runs, false);
  line("copy:     job -> marker", copy_runs, true);
  const double p_started = line("plain file: launch -> VM started", plain, false);
  const double p_marker = line("plain file: launch -> marker", plain, true);
  for (const auto* runs : {&stream_runs, &copy_runs}) {
    if (runs->empty()) continue;
    std::printf("%s phases (median s from receipt):", runs == &stream_runs ? "streamed" : "copy");
    for (const char* ph : {"fetching", "attesting", "decrypting", "launching", "running"}) {
      std::vector<double> v;
      for (const Timing& t : *runs) v.push_back(t.phase_s.count(ph) ? t.phase_s.at(ph) : 0);
      std::printf(" %s %.2f", ph, median(v));
    }
    std::printf("\n");
    // The agent's own steps (median ms each; names in the order they ran).
    std::printf("%s steps (median ms):", runs == &stream_runs ? "streamed" : "copy");
    for (const auto& step : runs->front().steps_ms) {
      const std::string& name = step.first;
      std::vector<double> v;
      for (const Timing& t : *runs) {
        for (const auto& [n, ms] : t.steps_ms) {
          if (n == name) v.push_back(ms);
        }
      }
      std::printf(" %s %.0f", name.c_str(), median(v));
    }
    std::printf("\n");
  }
  for (host::HostAgent* agent : {streamed.get(), copying.get()}) {
    if (agent == copying.get() && !with_copy) continue;
    const vm::OverlayPool::Stats ps = agent->overlay_pool()->GetStats();
    std::printf("%s overlay pool: %llu taken ready, %llu made on the slow path, %llu made in "
                "the background\n", agent == streamed.get() ? "streamed" : "copy",
                static_cast<unsigned long long>(ps.taken_from_pool),
                static_cast<unsigned long long>(ps.made_on_slow_path),
                static_cast<unsigned long long>(ps.made_in_background));
  }
  std::printf("waits for a full pool before jobs:");
  for (double w : refill_waits) std::printf(" %.1f s", w);
  std::printf("\n");
  std::printf("image %s: %.0f MiB virtual disk\n", sparse ? "sparse (boot image + hole)"
                                                          : "boot image + random bytes", mib);
  std::printf("streamed job -> VM started %.3f s: %s 1.5 s\n", s_started,
              s_started <= 1.5 ? "<=" : "ABOVE");
  std::printf("streamed job -> marker / plain file launch -> marker: %.2fx (target <= 1.5x)\n",
              s_marker / p_marker);
  std::printf("streamed VM started - plain VM started: %+.3f s\n", s_started - p_started);
  {
    // The streamed job's qemu step (VmManager::Launch over the export and
    // its overlay) against the same call on the plain file.
    std::vector<double> q;
    for (const Timing& t : stream_runs) {
      for (const auto& [n, ms] : t.steps_ms) {
        if (n == "qemu") q.push_back(ms / 1000);
      }
    }
    if (!q.empty() && p_started > 0) {
      std::printf("streamed qemu step %.3f s vs plain file launch -> VM started %.3f s: %.2fx\n",
                  median(q), p_started, median(q) / p_started);
    }
  }

  stop_heartbeats = true;
  heartbeats.join();
  (*portal)->Stop();
  streamed.reset();
  copying.reset();
  engine->reset();  // before its TPM goes away
  (void)(*swtpm)->Stop();
  g_swtpm = nullptr;
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace
}  // namespace vmseal

int main(int argc, char** argv) { return vmseal::Main(argc, argv); }
