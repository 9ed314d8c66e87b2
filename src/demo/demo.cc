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
  Status ShowAudit();
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
  std::string vm_name_;
  std::string host_of_vm_;
  std::string serial_log_;
};

Status Demo::StartKms() {
  n_.Step("Key management server: its own CA, a key-encryption key, SQLite, TLS 1.3 + mTLS.");
  RETURN_IF_ERROR(Vmseal({"kms", "init", "--dir", Path("kms")}).status());
  // Two TPM "manufacturers": each swtpm has its own local CA; the KMS
  // trusts both for EK certificates.
  std::string bundle;
  for (const auto& t : cluster_.tpms) bundle += t->ca_bundle_pem();
  RETURN_IF_ERROR(WriteFile(Path("kms/ek-ca-bundle.pem"), bundle, 0644));
  ASSIGN_OR_RETURN(std::string cfg_text, ReadFile(Path("kms/kms.json")));
  StatusOr<json> cfg_or = ParseJsonObject(cfg_text, "kms.json");
  if (!cfg_or.ok()) return InternalError("kms init wrote an unreadable kms.json");
  json cfg = *std::move(cfg_or);
  cfg["ek_ca_bundle"] = Path("kms/ek-ca-bundle.pem");
  RETURN_IF_ERROR(WriteFile(Path("kms/kms.json"), cfg.dump(2) + "\n"));
  n_.Say("EK certificate CAs of both TPM makers written to kms/ek-ca-bundle.pem.");
  for (const auto& [role, name] : std::vector<std::pair<std::string, std::string>>{
           {"portal", "portal"}, {"host", "host-a"}, {"host", "host-b"}}) {
    RETURN_IF_ERROR(Vmseal({"kms", "issue-identity", "--dir", Path("kms"), "--role", role,
                            "--name", name, "--out", Path("kms/" + name)})
                        .status());
  }
  std::vector<std::string> argv = {o_.vmseal_binary, "kms", "serve", "--config",
                                   Path("kms/kms.json"), "--port", "0", "--port-file",
                                   Path("kms/port")};
  n_.Command(argv);
  ASSIGN_OR_RETURN(auto kms, Service::Start("kms", argv, Path("logs/kms.log")));
  ASSIGN_OR_RETURN(std::string port, kms->WaitForFile(Path("kms/port"), kServiceStartMs));
  cluster_.services.push_back(std::move(kms));
  kms_url_ = "https://127.0.0.1:" + port;
  n_.Say("KMS listening on " + kms_url_ + " (log: logs/kms.log).");
  return OkStatus();
}

Status Demo::StartPortal() {
  n_.Step("Cloud portal: accounts, embedded object store, host registry, scheduler.");
  RETURN_IF_ERROR(Vmseal({"kms", "issue-identity", "--dir", Path("kms"), "--role", "portal",
                          "--name", "127.0.0.1", "--server", "--server-ip", "127.0.0.1", "--out",
                          Path("kms/portal-tls")})
                      .status());
  RETURN_IF_ERROR(WriteFile(Path("portal-operator-token"),
                            crypto::HexEncode(crypto::RandomBytes(24)) + "\n"));
  std::vector<std::string> argv = {
      o_.vmseal_binary, "csp", "serve", "--data-dir", Path("portal"), "--port", "0",
      "--port-file", Path("portal/port"), "--tls-cert", Path("kms/portal-tls.pem"),
      "--tls-key", Path("kms/portal-tls-key.pem"), "--client-ca", Path("kms/ca.pem"),
      "--kms-url", kms_url_, "--kms-ca", Path("kms/ca.pem"), "--kms-cert",
      Path("kms/portal.pem"), "--kms-key", Path("kms/portal-key.pem"),
      "--operator-token-file", Path("portal-operator-token"), "--heartbeat-timeout", "30"};
  n_.Command(argv);
  std::error_code ec;
  fs::create_directories(Path("portal"), ec);
  ASSIGN_OR_RETURN(auto portal, Service::Start("portal", argv, Path("logs/portal.log")));
  ASSIGN_OR_RETURN(std::string port, portal->WaitForFile(Path("portal/port"), kServiceStartMs));
  cluster_.services.push_back(std::move(portal));
  portal_url_ = "https://127.0.0.1:" + port;
  n_.Say("Portal listening on " + portal_url_ + " (log: logs/portal.log).");
  return OkStatus();
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
    RETURN_IF_ERROR(Measure(*cluster_.tpms[i], i == 1, Path("logs/tpm.log")));
    json cfg = {
        {"portal_url", portal_url_},
        {"kms_url", kms_url_},
        {"ca_file", Path("kms/ca.pem")},
        {"cert_file", Path("kms/" + name + ".pem")},
        {"key_file", Path("kms/" + name + "-key.pem")},
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
  // Both hosts enroll (EK certificate + credential activation) and attest.
  const int64_t deadline = NowMs() + 120000;
  while (true) {
    ASSIGN_OR_RETURN(json hosts, VmsealJson([&] {
                       std::vector<std::string> a = {"kms", "host", "list"};
                       auto f = OperatorFlags();
                       a.insert(a.end(), f.begin(), f.end());
                       return a;
                     }(), false));
    int attested = 0;
    for (const auto& h : hosts.value("hosts", json::array())) {
      if (h.value("enrolled", false) && h.contains("latest") && !h["latest"].is_null()) {
        ++attested;
      }
    }
    if (attested >= 2) break;
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
  n_.Say("Both hosts enrolled with the KMS (EK certificate checked, AK activated) and attested.");
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
  const std::string image_id = img.value("image_id", "");
  n_.Say("image " + image_id + " verified by the portal (manifest, tag) and listed");
  ASSIGN_OR_RETURN(json job, VmsealJson(with({"launch", image_id})));
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
  for (int i = 0; i < 2; ++i) {
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
