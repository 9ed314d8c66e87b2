#include "demo/demo.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "crypto/primitives.h"
#include "demo/internal/subprocess.h"
#include "json/json.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::demo {
namespace {

namespace fs = std::filesystem;
using internal::RunCommand;
using internal::Service;
using json = nlohmann::json;

constexpr int kServiceStartMs = 30000;
constexpr int kCommandMs = 120000;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string Quote(const std::string& s) {
  if (!s.empty() && s.find_first_of(" \t\"'$\\{}") == std::string::npos) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Narration: numbered steps, the commands as a user would type them, and
// indented results.
class Narrator {
 public:
  Narrator(bool quiet, std::string dir) : quiet_(quiet), dir_(std::move(dir)) {}
  void Step(const std::string& text) {
    if (quiet_) return;
    std::printf("\n[%d] %s\n", ++step_, text.c_str());
    std::fflush(stdout);
  }
  void Command(const std::vector<std::string>& argv) {
    if (quiet_) return;
    std::string line = "    $ vmseal";
    for (size_t i = 1; i < argv.size(); ++i) {
      line += ' ';
      line += Quote(Shorten(argv[i]));
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  void Say(const std::string& text) {
    if (quiet_) return;
    std::printf("      %s\n", Shorten(text).c_str());
    std::fflush(stdout);
  }

 private:
  // The working directory is shown as $D (printed once at the start).
  std::string Shorten(std::string s) const {
    for (size_t at = s.find(dir_); !dir_.empty() && at != std::string::npos;
         at = s.find(dir_, at + 2)) {
      s.replace(at, dir_.size(), "$D");
    }
    return s;
  }
  const bool quiet_;
  const std::string dir_;
  int step_ = 0;
};

StatusOr<std::string> SelfExe() {
  std::error_code ec;
  fs::path p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return InternalError("cannot find the vmseal binary: " + ec.message());
  return p.string();
}

// scripts/build-sample-image.sh: $VMSEAL_SOURCE_DIR, else up from the
// binary (build/vmseal -> ../scripts), else the current directory.
StatusOr<std::string> FindSampleScript(const std::string& binary) {
  std::vector<fs::path> candidates;
  if (const char* src = std::getenv("VMSEAL_SOURCE_DIR"); src != nullptr && *src) {
    candidates.push_back(fs::path(src) / "scripts/build-sample-image.sh");
  }
  for (fs::path d = fs::path(binary).parent_path(); !d.empty() && d != d.root_path();
       d = d.parent_path()) {
    candidates.push_back(d / "scripts/build-sample-image.sh");
  }
  candidates.push_back(fs::current_path() / "scripts/build-sample-image.sh");
  for (const auto& c : candidates) {
    if (fs::exists(c)) return c.string();
  }
  return NotFoundError(
      "scripts/build-sample-image.sh not found: run from the source tree or pass "
      "--sample-image-script");
}

Status WriteFile(const std::string& path, const std::string& text, mode_t mode = 0600) {
  return WriteStringToFileAtomic(Env::Default(), path, text, mode);
}

StatusOr<std::string> ReadFile(const std::string& path) {
  return ReadFileToString(Env::Default(), path);
}

// Everything the demo started, stopped in reverse order on destruction.
struct Cluster {
  std::vector<std::unique_ptr<tpm::testing::Swtpm>> tpms;
  std::vector<std::unique_ptr<Service>> services;  // KMS, portal
  std::vector<std::unique_ptr<Service>> hosts;     // host agents
  std::vector<std::string> host_configs;
  std::string vmseal;
  ~Cluster() {
    // The host agents first, so that none launches another VM; then every VM
    // their hosts have, including VMs launched during --keep (their qemu runs
    // in its own session and would outlive the agent).
    for (auto it = hosts.rbegin(); it != hosts.rend(); ++it) (*it)->Stop(30000);
    for (const std::string& config : host_configs) {
      (void)RunCommand({vmseal, "host", "delete", "--all", "--config", config}, 120000, {},
                       "/dev/null");
    }
    for (auto it = services.rbegin(); it != services.rend(); ++it) (*it)->Stop();
    tpms.clear();
  }
};

class Demo {
 public:
  Demo(DemoOptions o, std::string dir)
      : o_(std::move(o)), dir_(std::move(dir)), n_(o_.quiet, dir_) {
    cluster_.vmseal = o_.vmseal_binary;
  }

  Status Run();

 private:
  std::string Path(const std::string& rel) const { return dir_ + "/" + rel; }

  // Runs `vmseal args...`, narrated; non-zero exit is an error carrying the
  // command's stderr (which went to the demo log) tail.
  StatusOr<std::string> Vmseal(std::vector<std::string> args, bool narrate = true,
                               bool show_stderr = false) {
    std::vector<std::string> argv = {o_.vmseal_binary};
    argv.insert(argv.end(), args.begin(), args.end());
    if (narrate) n_.Command(argv);
    const std::string err = Path("logs/commands.log");
    ASSIGN_OR_RETURN(auto r, RunCommand(argv, kCommandMs, {}, show_stderr ? "" : err));
    if (r.exit_code != 0) {
      std::string tail = internal::Tail(err, 600);
      return InternalError("`vmseal " + args[0] + (args.size() > 1 ? " " + args[1] : "") +
                           "` failed (exit " + std::to_string(r.exit_code) + "): " + tail);
    }
    return r.out;
  }
  StatusOr<json> VmsealJson(std::vector<std::string> args, bool narrate = true) {
    ASSIGN_OR_RETURN(std::string out, Vmseal(std::move(args), narrate));
    StatusOr<json> j = ParseJson(out);
    if (!j.ok()) return InternalError("expected JSON from vmseal, got: " + out);
    return j;
  }

  Status StartKms();
  Status StartPortal();
  Status StartHosts();
  Status SetPolicy();
  Status PlayCustomer();
  Status MigrateToCloudB();
  Status ShowAudit();
  // One cloud's parts: a KMS in `kdir` trusting the EK CAs of `tpms`, with
  // identities for the portal and `hosts`; a portal in `pdir`; a host agent.
  StatusOr<std::string> StartKmsIn(const std::string& kdir, const std::vector<size_t>& tpms,
                                   const std::vector<std::string>& hosts);
  StatusOr<std::string> StartPortalIn(const std::string& kdir, const std::string& pdir,
                                      const std::string& kms_url);
  Status StartHost(const std::string& name, size_t tpm, bool tampered, const std::string& kdir,
                   const std::string& portal_url, const std::string& kms_url);
  Status WaitAttested(const std::vector<std::string>& operator_flags, int count);
  // Waits for `job` (customer flags `cflags`) to run; returns its status.
  StatusOr<json> WaitRunning(const std::vector<std::string>& cflags, const std::string& job);
  // Waits for the marker on the serial console `serial_log`.
  Status WaitMarker(const std::string& serial_log);
  std::vector<std::string> OperatorFlags() const {
    return {"--url", kms_url_, "--ca", Path("kms/ca.pem"), "--cert", Path("kms/operator.pem"),
            "--key", Path("kms/operator-key.pem")};
  }
  std::vector<std::string> CustomerFlags() const {
    return {"--portal", portal_url_, "--ca-cert", Path("kms/ca.pem"), "--session",
            Path("customer/session.json"), "--json"};
  }

  const DemoOptions o_;
  const std::string dir_;
  Narrator n_;
  Cluster cluster_;
  std::string kms_url_;
  std::string portal_url_;
  std::string marker_;
  std::string job_id_;
  std::string image_id_;
  std::string vm_name_;
  std::string host_of_vm_;
  std::string serial_log_;
};

Status Demo::StartKms() {
  n_.Step("Key management server: its own CA, a key-encryption key, SQLite, TLS 1.3 + mTLS.");
  // Two TPM "manufacturers": each swtpm has its own local CA; the KMS
  // trusts both for EK certificates.
  ASSIGN_OR_RETURN(kms_url_, StartKmsIn("kms", {0, 1}, {"host-a", "host-b"}));
  return OkStatus();
}

StatusOr<std::string> Demo::StartKmsIn(const std::string& kdir, const std::vector<size_t>& tpms,
                                       const std::vector<std::string>& hosts) {
  RETURN_IF_ERROR(Vmseal({"kms", "init", "--dir", Path(kdir)}).status());
  std::string bundle;
  for (size_t t : tpms) bundle += cluster_.tpms[t]->ca_bundle_pem();
  RETURN_IF_ERROR(WriteFile(Path(kdir + "/ek-ca-bundle.pem"), bundle, 0644));
  ASSIGN_OR_RETURN(std::string cfg_text, ReadFile(Path(kdir + "/kms.json")));
  StatusOr<json> cfg_or = ParseJsonObject(cfg_text, "kms.json");
  if (!cfg_or.ok()) return InternalError("kms init wrote an unreadable kms.json");
  json cfg = *std::move(cfg_or);
  cfg["ek_ca_bundle"] = Path(kdir + "/ek-ca-bundle.pem");
  RETURN_IF_ERROR(WriteFile(Path(kdir + "/kms.json"), cfg.dump(2) + "\n"));
  n_.Say("EK certificate CA" + std::string(tpms.size() > 1 ? "s of the TPM makers" : " of the TPM maker") +
         " written to " + kdir + "/ek-ca-bundle.pem.");
  std::vector<std::pair<std::string, std::string>> ids = {{"portal", "portal"}};
  for (const auto& h : hosts) ids.emplace_back("host", h);
  for (const auto& [role, name] : ids) {
    RETURN_IF_ERROR(Vmseal({"kms", "issue-identity", "--dir", Path(kdir), "--role", role,
                            "--name", name, "--out", Path(kdir + "/" + name)})
                        .status());
  }
  std::vector<std::string> argv = {o_.vmseal_binary, "kms", "serve", "--config",
                                   Path(kdir + "/kms.json"), "--port", "0", "--port-file",
                                   Path(kdir + "/port")};
  n_.Command(argv);
  ASSIGN_OR_RETURN(auto kms, Service::Start(kdir, argv, Path("logs/" + kdir + ".log")));
  ASSIGN_OR_RETURN(std::string port, kms->WaitForFile(Path(kdir + "/port"), kServiceStartMs));
  cluster_.services.push_back(std::move(kms));
  const std::string url = "https://127.0.0.1:" + port;
  n_.Say("KMS listening on " + url + " (log: logs/" + kdir + ".log).");
  return url;
}

Status Demo::StartPortal() {
  n_.Step("Cloud portal: accounts, embedded object store, host registry, scheduler.");
  ASSIGN_OR_RETURN(portal_url_, StartPortalIn("kms", "portal", kms_url_));
  return OkStatus();
}

StatusOr<std::string> Demo::StartPortalIn(const std::string& kdir, const std::string& pdir,
                                          const std::string& kms_url) {
  RETURN_IF_ERROR(Vmseal({"kms", "issue-identity", "--dir", Path(kdir), "--role", "portal",
                          "--name", "127.0.0.1", "--server", "--server-ip", "127.0.0.1", "--out",
                          Path(kdir + "/portal-tls")})
                      .status());
  RETURN_IF_ERROR(WriteFile(Path(pdir + "-operator-token"),
                            crypto::HexEncode(crypto::RandomBytes(24)) + "\n"));
  std::vector<std::string> argv = {
      o_.vmseal_binary, "csp", "serve", "--data-dir", Path(pdir), "--port", "0",
      "--port-file", Path(pdir + "/port"), "--tls-cert", Path(kdir + "/portal-tls.pem"),
      "--tls-key", Path(kdir + "/portal-tls-key.pem"), "--client-ca", Path(kdir + "/ca.pem"),
      "--kms-url", kms_url, "--kms-ca", Path(kdir + "/ca.pem"), "--kms-cert",
      Path(kdir + "/portal.pem"), "--kms-key", Path(kdir + "/portal-key.pem"),
      "--operator-token-file", Path(pdir + "-operator-token"), "--heartbeat-timeout", "30"};
  n_.Command(argv);
  std::error_code ec;
  fs::create_directories(Path(pdir), ec);
  ASSIGN_OR_RETURN(auto portal, Service::Start(pdir, argv, Path("logs/" + pdir + ".log")));
  ASSIGN_OR_RETURN(std::string port, portal->WaitForFile(Path(pdir + "/port"), kServiceStartMs));
  cluster_.services.push_back(std::move(portal));
  const std::string url = "https://127.0.0.1:" + port;
  n_.Say("Portal listening on " + url + " (log: logs/" + pdir + ".log).");
  return url;
}

// Firmware would measure the boot chain into PCRs 0-7; the demo does the
// same with fixed "component" digests, plus one unexpected component on
// the tampered host.
Status Measure(const tpm::testing::Swtpm& tpm, bool tampered, const std::string& log) {
  auto extend = [&](int pcr, const std::string& component) -> Status {
    std::string digest = crypto::HexEncode(crypto::Sha256(component));
    auto r = RunCommand({"tpm2_pcrextend", "-T", tpm.tcti(),
                         std::to_string(pcr) + ":sha256=" + digest},
                        30000, {}, log);
    if (!r.ok()) return r.status();
    if (r->exit_code != 0) return InternalError("tpm2_pcrextend failed; see " + log);
    return OkStatus();
  };
  for (int pcr = 0; pcr < 8; ++pcr) {
    RETURN_IF_ERROR(extend(pcr, "vmseal-demo boot component " + std::to_string(pcr)));
  }
  if (tampered) RETURN_IF_ERROR(extend(4, "an unexpected boot loader"));
  return OkStatus();
}

Status Demo::StartHosts() {
  n_.Step("Two hosts, each with its own TPM (swtpm): host-a measured as trusted, host-b with "
          "an unexpected boot loader in PCR 4.");
  for (int i = 0; i < 2; ++i) {
    const std::string name = i == 0 ? "host-a" : "host-b";
    RETURN_IF_ERROR(StartHost(name, static_cast<size_t>(i), i == 1, "kms", portal_url_, kms_url_));
  }
  RETURN_IF_ERROR(WaitAttested(OperatorFlags(), 2));
  n_.Say("Both hosts enrolled with the KMS (EK certificate checked, AK activated) and attested.");
  return OkStatus();
}

Status Demo::StartHost(const std::string& name, size_t tpm, bool tampered, const std::string& kdir,
                       const std::string& portal_url, const std::string& kms_url) {
  {
    const size_t i = tpm;
    RETURN_IF_ERROR(Measure(*cluster_.tpms[i], tampered, Path("logs/tpm.log")));
    json cfg = {
        {"portal_url", portal_url},
        {"kms_url", kms_url},
        {"ca_file", Path(kdir + "/ca.pem")},
        {"cert_file", Path(kdir + "/" + name + ".pem")},
        {"key_file", Path(kdir + "/" + name + "-key.pem")},
        {"tpm_tcti", cluster_.tpms[i]->tcti()},
        {"state_dir", Path(name + "/state")},
        {"image_store_dir", Path(name + "/images")},
        {"heartbeat_interval_seconds", 2},
        {"reattest_interval_seconds", 15},
        {"poll_interval_seconds", 1},
        {"tags", json::array({"region=demo"})},
        {"capacity", {{"vcpus", 2}, {"memory_mib", 2048}}},
        {"accel", "tcg"},
    };
    std::error_code ec;
    fs::create_directories(Path(name), ec);
    RETURN_IF_ERROR(WriteFile(Path(name + "/host.json"), cfg.dump(2) + "\n"));
    std::vector<std::string> argv = {o_.vmseal_binary, "host", "serve", "--config",
                                     Path(name + "/host.json")};
    n_.Command(argv);
    cluster_.host_configs.push_back(Path(name + "/host.json"));
    ASSIGN_OR_RETURN(auto host, Service::Start(name, argv, Path("logs/" + name + ".log")));
    cluster_.hosts.push_back(std::move(host));
  }
  return OkStatus();
}

// Waits until `count` hosts of the KMS that `operator_flags` name are
// enrolled (EK certificate + credential activation) and attested.
Status Demo::WaitAttested(const std::vector<std::string>& operator_flags, int count) {
  const int64_t deadline = NowMs() + 120000;
  while (true) {
    ASSIGN_OR_RETURN(json hosts, VmsealJson([&] {
                       std::vector<std::string> a = {"kms", "host", "list"};
                       a.insert(a.end(), operator_flags.begin(), operator_flags.end());
                       return a;
                     }(), false));
    int attested = 0;
    for (const auto& h : hosts.value("hosts", json::array())) {
      if (h.value("enrolled", false) && h.contains("latest") && !h["latest"].is_null()) {
        ++attested;
      }
    }
    if (attested >= count) break;
    for (const auto& s : cluster_.services) {
      if (!s->Alive()) {
        return FailedPreconditionError(s->name() + " stopped; last log lines:\n" +
                                       internal::Tail(s->log_path(), 1500));
      }
    }
    if (NowMs() > deadline) {
      return DeadlineExceededError("hosts did not enroll and attest within 120 s; see logs/");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  return OkStatus();
}

Status Demo::SetPolicy() {
  n_.Step("Operator: the known-good PCR values of host-a become flavor \"demo-good\"; both "
          "hosts are tagged region=demo; the default release policy requires both.");
  std::vector<std::string> a = {"kms", "flavor", "from-host", "--name", "demo-good", "--host",
                                "host-a"};
  auto f = OperatorFlags();
  a.insert(a.end(), f.begin(), f.end());
  RETURN_IF_ERROR(Vmseal(a).status());
  for (const char* host : {"host-a", "host-b"}) {
    a = {"kms", "host", "tags", "--host", host, "--tag", "region=demo"};
    a.insert(a.end(), f.begin(), f.end());
    RETURN_IF_ERROR(Vmseal(a).status());
  }
  json policy = {{"flavors", {{"anyOf", json::array({"demo-good"})}}},
                 {"required_tags", json::array({"region=demo"})},
                 {"max_evidence_age_seconds", 300}};
  RETURN_IF_ERROR(WriteFile(Path("policy.json"), policy.dump(2) + "\n", 0644));
  n_.Say("policy.json: " + policy.dump());
  a = {"kms", "policy", "set", "--customer", "_default", "--file", Path("policy.json")};
  a.insert(a.end(), f.begin(), f.end());
  return Vmseal(a).status();
}

Status Demo::PlayCustomer() {
  n_.Step("Customer: register with the portal. The KMS generates the customer's key pair; "
          "the private key never leaves it. The customer's package-signing key is made here "
          "and only its public half goes, for the KMS CA to certify.");
  std::error_code ec;
  fs::create_directories(Path("customer"), ec);
  auto cflags = CustomerFlags();
  auto with = [&](std::vector<std::string> sub) {
    std::vector<std::string> a = {"customer"};
    a.insert(a.end(), cflags.begin(), cflags.end());
    a.insert(a.end(), sub.begin(), sub.end());
    return a;
  };
  ASSIGN_OR_RETURN(json reg, VmsealJson(with({"register", "--password-out",
                                              Path("customer/password")})));
  const std::string customer_id = reg.value("customer_id", "");
  const std::string login_id = reg.value("login_id", "");
  n_.Say("customer id " + customer_id + ", login id " + login_id +
         " (password written once to customer/password, mode 0600)");
  RETURN_IF_ERROR(VmsealJson(with({"login", "--login-id", login_id, "--password-file",
                                   Path("customer/password")}))
                      .status());
  ASSIGN_OR_RETURN(json cert, VmsealJson(with({"fetch-cert", "--out",
                                               Path("customer/customer-cert.pem"), "--kms-ca",
                                               Path("kms/ca.pem")})));
  n_.Say("certificate of key " + cert.value("key_id", "") + " verified against the KMS CA");
  ASSIGN_OR_RETURN(json agent, VmsealJson(with({"fetch-agent", "--out",
                                                Path("customer/vmseal-agent")})));
  n_.Say("agent binary fetched, SHA-256 " + agent.value("sha256", "") + " checked");

  n_.Step("Customer: build a small bootable disk image whose init prints a secret marker "
          "to the serial console.");
  const std::string image = Path("customer/sample.img");
  n_.Say("$ " + o_.sample_image_script + " " + image);
  ASSIGN_OR_RETURN(auto built, RunCommand({o_.sample_image_script, image}, 600000, {},
                                          Path("logs/sample-image.log")));
  if (built.exit_code != 0) {
    return InternalError("building the sample image failed: " +
                         internal::Tail(Path("logs/sample-image.log"), 800));
  }
  ASSIGN_OR_RETURN(marker_, ReadFile(image + ".marker"));
  while (!marker_.empty() && (marker_.back() == '\n' || marker_.back() == '\r')) {
    marker_.pop_back();
  }
  n_.Say("marker inside the image: " + marker_);

  n_.Step("Customer: seal it on the customer's machine: random data key, AES-256-GCM chunks, "
          "the key wrapped to the customer certificate, an OVF 2 package signed with the "
          "customer's signing key.");
  RETURN_IF_ERROR(Vmseal({"seal", image, "--cert", Path("customer/customer-cert.pem"),
                          "--tenant", customer_id, "--cpus", "1", "--memory-mib", "256", "-o",
                          Path("customer/sample.ova")},
                         true, /*show_stderr=*/true)
                      .status());
  ASSIGN_OR_RETURN(json inspect, VmsealJson({"inspect", Path("customer/sample.ova"), "--json"}));
  n_.Say("encryption tag (no key needed to read it): " + inspect.value("tag", json::object()).dump());

  n_.Step("Customer: upload (streaming, resumable) and launch.");
  ASSIGN_OR_RETURN(json img, VmsealJson(with({"upload", Path("customer/sample.ova"), "--name",
                                              "sample"})));
  image_id_ = img.value("image_id", "");
  n_.Say("image " + image_id_ + " verified by the portal (manifest, tag) and listed");
  ASSIGN_OR_RETURN(json job, VmsealJson(with({"launch", image_id_})));
  job_id_ = job.value("job_id", "");
  n_.Say("job " + job_id_ + " queued");

  n_.Step("Portal and hosts: placement on the trusted compute pool, attestation, key release, "
          "decryption, boot.");
  std::string last_state;
  const int64_t deadline = NowMs() + 300000;
  json status;
  while (true) {
    ASSIGN_OR_RETURN(status, VmsealJson(with({"status", job_id_}), false));
    std::string state = status.value("state", "");
    if (state != last_state) {
      std::string where = status.value("host_id", "");
      n_.Say("job " + state + (where.empty() ? "" : " on " + where));
      last_state = state;
    }
    if (state == "running" || state == "failed") break;
    if (NowMs() > deadline) return DeadlineExceededError("the job did not finish within 300 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  std::vector<std::string> explain = {"csp", "explain-placement", "--portal", portal_url_,
                                      "--ca-cert", Path("kms/ca.pem"), "--operator-token-file",
                                      Path("portal-operator-token"), job_id_};
  ASSIGN_OR_RETURN(std::string why, Vmseal(explain));
  std::istringstream lines(why);
  for (std::string line; std::getline(lines, line);) n_.Say(line);
  if (last_state != "running") {
    return InternalError("the job failed: " + status.value("reason", status.dump()));
  }
  host_of_vm_ = status.value("host_id", "");
  vm_name_ = status.value("vm_name", "");
  serial_log_ = status.value("serial_log_path", "");

  n_.Step("The VM boots from the decrypted disk: its serial console prints the marker.");
  if (serial_log_.empty()) return InternalError("the host reported no serial log");
  const int64_t boot_deadline = NowMs() + 180000;
  while (internal::Tail(serial_log_, 1 << 20).find(marker_) == std::string::npos) {
    if (NowMs() > boot_deadline) {
      return DeadlineExceededError("the marker did not appear on the serial console within "
                                   "180 s; see " + serial_log_);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  n_.Say("serial console (" + serial_log_ + "): " + marker_);
  return OkStatus();
}

// Moving to another cloud (issue 19): deployment B on loopback, with its own
// KMS (own CA and KEK), portal and host (host-c, its own TPM). The customer
// opens an account at B, verifies the certificate there against B's KMS CA
// (obtained out of band), and migrates: KMS A re-wraps the image's data key
// to that certificate on the customer's signed authorization (audited; the
// data key never leaves KMS A in the clear), the disk data moves as
// ciphertext, re-signed for B. Portal B places it on host-c, KMS B releases
// the key to host-c's TPM, and the same marker shows. The VM at B is then
// deleted (the demo keeps the one at A).
Status Demo::MigrateToCloudB() {
  const int64_t started = NowMs();
  n_.Step("Another cloud, B: its own KMS (own CA and KEK), portal and host host-c (its own TPM).");
  ASSIGN_OR_RETURN(std::string kms_b, StartKmsIn("kms-b", {2}, {"host-c"}));
  ASSIGN_OR_RETURN(std::string portal_b, StartPortalIn("kms-b", "portal-b", kms_b));
  RETURN_IF_ERROR(StartHost("host-c", 2, false, "kms-b", portal_b, kms_b));
  const std::vector<std::string> op_b = {"--url", kms_b, "--ca", Path("kms-b/ca.pem"), "--cert",
                                         Path("kms-b/operator.pem"), "--key", Path("kms-b/operator-key.pem")};
  RETURN_IF_ERROR(WaitAttested(op_b, 1));
  auto op = [&](std::vector<std::string> a) {
    a.insert(a.end(), op_b.begin(), op_b.end());
    return a;
  };
  RETURN_IF_ERROR(Vmseal(op({"kms", "flavor", "from-host", "--name", "b-good", "--host", "host-c"})).status());
  json policy = {{"flavors", {{"anyOf", json::array({"b-good"})}}}, {"max_evidence_age_seconds", 300}};
  RETURN_IF_ERROR(WriteFile(Path("policy-b.json"), policy.dump(2) + "\n", 0644));
  RETURN_IF_ERROR(Vmseal(op({"kms", "policy", "set", "--customer", "_default", "--file", Path("policy-b.json")}))
                      .status());
  n_.Say("host-c enrolled and attested at KMS B; B's operator trusts its boot state (flavor b-good).");

  n_.Step("Customer: an account at B; the certificate there is verified against B's KMS CA, "
          "which the customer obtained out of band.");
  std::error_code ec;
  fs::create_directories(Path("customer-b"), ec);
  const std::vector<std::string> cb = {"--portal", portal_b, "--ca-cert", Path("kms-b/ca.pem"), "--session",
                                       Path("customer-b/session.json"), "--json"};
  auto at_b = [&](std::vector<std::string> sub) {
    std::vector<std::string> a = {"customer"};
    a.insert(a.end(), cb.begin(), cb.end());
    a.insert(a.end(), sub.begin(), sub.end());
    return a;
  };
  ASSIGN_OR_RETURN(json reg, VmsealJson(at_b({"register", "--password-out", Path("customer-b/password")})));
  RETURN_IF_ERROR(VmsealJson(at_b({"login", "--login-id", reg.value("login_id", ""), "--password-file",
                                   Path("customer-b/password")}))
                      .status());
  ASSIGN_OR_RETURN(json cert, VmsealJson(at_b({"fetch-cert", "--out", Path("customer-b/customer-cert.pem"),
                                               "--kms-ca", Path("kms-b/ca.pem")})));
  n_.Say("customer id at B " + reg.value("customer_id", "") + "; certificate of key " +
         cert.value("key_id", "") + " verified against KMS B's CA");

  n_.Step("Customer: migrate the image. KMS A re-wraps its data key to the customer's key at B on "
          "the customer's signed authorization (audited); the disk moves as ciphertext, re-signed for B.");
  auto cflags = CustomerFlags();
  std::vector<std::string> mig = {"customer"};
  mig.insert(mig.end(), cflags.begin(), cflags.end());
  fs::create_directories(Path("customer/migrate"), ec);
  const std::vector<std::string> rest = {"migrate", image_id_, "--kms-ca", Path("kms/ca.pem"), "--to-portal",
                                         portal_b, "--to-ca-cert", Path("kms-b/ca.pem"), "--to-session",
                                         Path("customer-b/session.json"), "--to-kms-ca", Path("kms-b/ca.pem"),
                                         "--work-dir", Path("customer/migrate")};
  mig.insert(mig.end(), rest.begin(), rest.end());
  // The upload prints the image id at B before the JSON answer.
  ASSIGN_OR_RETURN(std::string mig_out, Vmseal(mig));
  const size_t brace = mig_out.find('{');
  StatusOr<json> moved_or = ParseJson(brace == std::string::npos ? std::string() : mig_out.substr(brace));
  if (!moved_or.ok()) return InternalError("expected JSON from customer migrate, got: " + mig_out);
  const json moved = *std::move(moved_or);
  n_.Say("data key re-wrapped by KMS A to key " + moved.value("destination_key_id", "") + " of tenant " +
         moved.value("destination_tenant", "") + " at B; package uploaded to portal B");
  ASSIGN_OR_RETURN(json images, VmsealJson(at_b({"images"}), false));
  if (!images.contains("images") || !images["images"].is_array() || images["images"].empty()) {
    return InternalError("portal B lists no image after the migration");
  }
  const std::string image_b = images["images"][0].value("image_id", "");
  ASSIGN_OR_RETURN(json job, VmsealJson(at_b({"launch", image_b})));
  const std::string job_b = job.value("job_id", "");
  n_.Say("image " + image_b + " launched at B as job " + job_b);

  n_.Step("Cloud B: placement on host-c, attestation to KMS B, key release, boot: the same marker.");
  ASSIGN_OR_RETURN(json status, WaitRunning(cb, job_b));
  RETURN_IF_ERROR(WaitMarker(status.value("serial_log_path", "")));
  n_.Say("serial console at B (" + status.value("serial_log_path", "") + "): " + marker_);
  RETURN_IF_ERROR(VmsealJson(at_b({"vm", "delete", job_b})).status());
  for (const int64_t deadline = NowMs() + 120000;;) {
    ASSIGN_OR_RETURN(json st, VmsealJson(at_b({"status", job_b}), false));
    if (st.value("state", "") == "deleted") break;
    if (NowMs() > deadline) return DeadlineExceededError("host-c did not delete the VM at B within 120 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  n_.Say("the VM at B is deleted (its host removes the decrypted disk); the migration act took " +
         std::to_string((NowMs() - started) / 1000) + " s");
  return OkStatus();
}

StatusOr<json> Demo::WaitRunning(const std::vector<std::string>& cflags, const std::string& job) {
  std::string last_state;
  const int64_t deadline = NowMs() + 300000;
  json status;
  while (true) {
    std::vector<std::string> a = {"customer"};
    a.insert(a.end(), cflags.begin(), cflags.end());
    a.push_back("status");
    a.push_back(job);
    ASSIGN_OR_RETURN(status, VmsealJson(a, false));
    std::string state = status.value("state", "");
    if (state != last_state) {
      std::string where = status.value("host_id", "");
      n_.Say("job " + state + (where.empty() ? "" : " on " + where));
      last_state = state;
    }
    if (state == "running") return status;
    if (state == "failed") return InternalError("the job failed: " + status.value("reason", status.dump()));
    if (NowMs() > deadline) return DeadlineExceededError("the job did not run within 300 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
}

Status Demo::WaitMarker(const std::string& serial_log) {
  if (serial_log.empty()) return InternalError("the host reported no serial log");
  const int64_t boot_deadline = NowMs() + 180000;
  while (internal::Tail(serial_log, 1 << 20).find(marker_) == std::string::npos) {
    if (NowMs() > boot_deadline) {
      return DeadlineExceededError("the marker did not appear on the serial console within 180 s; see " +
                                   serial_log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return OkStatus();
}

Status Demo::ShowAudit() {
  n_.Step("The KMS audit trail of this run (a transparency log; verified):");
  ASSIGN_OR_RETURN(std::string lines, Vmseal({"kms", "audit", "export", "--config",
                                              Path("kms/kms.json")}));
  std::istringstream in(lines);
  for (std::string line; std::getline(in, line);) {
    StatusOr<json> r_or = ParseJsonObject(line, "audit line");
    if (!r_or.ok()) continue;
    json r = *std::move(r_or);
    json rec = r;
    if (r.contains("record") && r["record"].is_string()) {
      StatusOr<json> inner = ParseJson(r["record"].get<std::string>());
      if (inner.ok()) rec = *std::move(inner);
    }
    if (!rec.is_object()) rec = r;
    std::string details = rec.value("details", json::object()).dump();
    if (details.size() > 90) details = details.substr(0, 87) + "...";
    n_.Say(std::to_string(r.value("seq", 0)) + "  " + rec.value("event", "?") + "  " +
           rec.value("subject", "") + "  " + details);
  }
  RETURN_IF_ERROR(Vmseal({"kms", "audit", "verify", "--config", Path("kms/kms.json")}).status());
  return OkStatus();
}

Status Demo::Run() {
  std::error_code ec;
  fs::create_directories(Path("logs"), ec);
  if (ec) return InternalError("cannot create " + Path("logs") + ": " + ec.message());
  if (!o_.quiet) std::printf("vmseal demo: the whole system on loopback. D=%s (logs in $D/logs)\n", dir_.c_str());
  // host-a and host-b at cloud A, host-c at cloud B (the migration act).
  for (int i = 0; i < 3; ++i) {
    tpm::testing::SwtpmOptions t;
    t.parent_dir = dir_;
    ASSIGN_OR_RETURN(auto tpm, tpm::testing::Swtpm::Start(t));
    cluster_.tpms.push_back(std::move(tpm));
  }
  RETURN_IF_ERROR(StartKms());
  RETURN_IF_ERROR(StartPortal());
  RETURN_IF_ERROR(StartHosts());
  RETURN_IF_ERROR(SetPolicy());
  RETURN_IF_ERROR(PlayCustomer());
  RETURN_IF_ERROR(MigrateToCloudB());
  RETURN_IF_ERROR(ShowAudit());
  if (o_.keep) {
    std::printf(
        "\nThe system keeps running. Try, for example:\n"
        "  %s customer --portal %s --ca-cert %s --session %s status\n"
        "  %s customer --portal %s --ca-cert %s --session %s vm stop %s\n"
        "  %s kms host list --url %s --ca %s --cert %s --key %s\n"
        "  %s host vms --config %s\n"
        "Press Ctrl-C to stop everything (every VM of the demo's hosts too).\n",
        o_.vmseal_binary.c_str(), portal_url_.c_str(), Path("kms/ca.pem").c_str(),
        Path("customer/session.json").c_str(), o_.vmseal_binary.c_str(), portal_url_.c_str(),
        Path("kms/ca.pem").c_str(), Path("customer/session.json").c_str(), job_id_.c_str(),
        o_.vmseal_binary.c_str(), kms_url_.c_str(),
        Path("kms/ca.pem").c_str(), Path("kms/operator.pem").c_str(),
        Path("kms/operator-key.pem").c_str(), o_.vmseal_binary.c_str(),
        Path(host_of_vm_ + "/host.json").c_str());
    std::fflush(stdout);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    int sig = 0;
    sigwait(&set, &sig);
  }
  n_.Step("Stopping the hosts, then every VM they run (each decrypted disk is removed), the "
          "portal, the KMS and the TPMs.");
  return OkStatus();
}

}  // namespace

Status RunSystemDemo(const DemoOptions& options) {
  DemoOptions o = options;
  if (o.vmseal_binary.empty()) {
    ASSIGN_OR_RETURN(o.vmseal_binary, SelfExe());
  }
  if (o.sample_image_script.empty()) {
    ASSIGN_OR_RETURN(o.sample_image_script, FindSampleScript(o.vmseal_binary));
  }
  std::string dir = o.work_dir;
  bool remove = false;
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/vmseal-demo-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) return ErrnoToStatus(errno, "create", tmpl);
    dir = tmpl;
    remove = !o.keep;
  } else {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return InternalError("cannot create " + dir + ": " + ec.message());
  }
  Status s;
  {
    Demo demo(o, dir);
    s = demo.Run();
  }  // every process is stopped here
  if (s.ok() && remove) {
    std::error_code ec;
    fs::remove_all(dir, ec);
  } else if (!s.ok()) {
    std::fprintf(stderr, "vmseal demo: the logs are kept in %s/logs\n", dir.c_str());
  }
  return s;
}

}  // namespace vmseal::demo
