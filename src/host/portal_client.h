// The portal's host API (docs/api/csp.yaml, "hosts" routes) over HTTPS with
// the host's mTLS identity: registration, heartbeats, job polling, progress
// and refusal reports, and the package download.
//
// The portal takes the host id from the verified client certificate's CN;
// nothing in a request body can claim another host's identity.
#ifndef VMSEAL_HOST_PORTAL_CLIENT_H_
#define VMSEAL_HOST_PORTAL_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "host/host_agent.h"

namespace vmseal::host {

// What a host offers to the scheduler.
struct HostCapacity {
  uint32_t vcpus = 1;
  uint64_t memory_mib = 512;
  // How many VMs the host may run at once (>= 1).
  uint32_t slots = 1;
};

// This machine's online CPUs and physical memory; slots = vcpus.
HostCapacity DetectCapacity();

struct HostRegistrationInfo {
  HostCapacity capacity;
  // Placement tags as "key=value" (e.g. "region=eu-west"); each must have a
  // non-empty key.
  std::vector<std::string> tags;
};

// A job as the portal hands it to its host.
struct PortalJob {
  std::string job_id;
  // The portal's image id.
  std::string image_id;
  std::string customer_id;
  // The image id named in the package's encryption tag, when the portal
  // announces it ("tagged_image_id"); empty otherwise.
  std::string tagged_image_id;
  // Lowercase hex SHA-256 of the package ("package_sha256"); empty when not
  // announced.
  std::string package_sha256_hex;
  // Which placement of the job this is ("attempt"): a VM the customer
  // started again comes back under the same job id with a new attempt.
  uint64_t attempt = 0;
  // The job's run ("run": 1 for the launch, +1 per customer start); the VM's
  // ended report names it so that a late report cannot end a later run.
  // 0: not announced.
  int64_t run = 0;
  // The VM of an earlier run of the job on this host ("vm_name"), empty for
  // a first launch. It is stopped; the new run replaces it.
  std::string vm_name;
};

// What the portal wants of a VM it places on this host (docs/protocol.md
// §6).
struct PortalVmCommand {
  enum class Action {
    kRun,     // should be running: if it is not, report its end
    kStop,    // stop it and report its end
    kDelete,  // stop it, remove it and its files, report it deleted
  };
  std::string job_id;
  std::string vm_name;
  Action action = Action::kRun;
};

// One poll's answer: new jobs, and the VMs the portal places here.
struct PortalPoll {
  std::vector<PortalJob> jobs;
  std::vector<PortalVmCommand> vms;
};

// The host side of the portal API. Implementations are thread-safe.
class PortalApi {
 public:
  virtual ~PortalApi() = default;
  // Registers (or re-registers with new capacity and tags) this host.
  virtual Status Register(const HostRegistrationInfo& info) = 0;
  // Keeps the host in the trusted compute pool. NOT_FOUND when the portal
  // does not know the host (e.g. it restarted): register again.
  virtual Status Heartbeat() = 0;
  // Jobs placed on this host and not yet started.
  virtual StatusOr<std::vector<PortalJob>> PollJobs() = 0;
  // A phase change of a job (fetching .. running) with, for running, the VM
  // name and serial-console log path.
  virtual Status ReportProgress(const JobUpdate& update) = 0;
  // The host gives the job back: `reason` is machine-readable
  // (e.g. "pcr_policy", "unencrypted_image"), `message` one line for humans.
  // The portal files it under one of its refusal kinds (unencrypted_image,
  // attestation_denied, launch_failed); the message it records starts with
  // `reason`.
  virtual Status ReportRefusal(const std::string& job_id, const std::string& reason,
                               const std::string& message) = 0;
  // Jobs and VM commands. The default is PollJobs with no VM commands.
  virtual StatusOr<PortalPoll> Poll();
  // A VM of this host ended: `reason` is vm::VmEndReasonName of its end
  // (stopped, guest_poweroff, exited, killed, unknown), `text` one line for
  // people, `run` the job's run the VM was launched for (PortalJob::run; 0:
  // unknown, not sent). Repeating a report is harmless. Default
  // UNIMPLEMENTED.
  virtual Status ReportVmEnded(const std::string& vm_name, const std::string& reason,
                               const std::string& text, int64_t run);
  // A disk of a job's VM reported `event` (e.g. chunk_auth_failed) with a
  // line for people. Default UNIMPLEMENTED.
  virtual Status ReportDiskEvent(const std::string& job_id, const std::string& event,
                                 const std::string& text);
  // A VM of this host and its files are gone. Repeating it is harmless.
  // Default UNIMPLEMENTED.
  virtual Status ReportVmDeleted(const std::string& vm_name);
  // The tail of a running VM's serial console, for the customer's console
  // page (docs/console.md). Default UNIMPLEMENTED.
  virtual Status ReportConsole(const std::string& vm_name, const std::string& text);
};

struct PortalClientOptions {
  // "https://host:port" of the portal. Required; plain http is refused.
  std::string url;
  // PEM files: the CA the portal's certificate must chain to, and this
  // host's client certificate and key (issued by the KMS CA, OU host, CN =
  // host id). Required.
  std::string ca_cert_file;
  std::string cert_file;
  std::string key_file;
  // Connect/read/write timeout of each request, seconds. Default 30.
  int timeout_seconds = 30;
  // Package download: how many times a broken transfer is resumed (HTTP
  // Range from the bytes already on disk) before the fetch fails, and the
  // pause before each resume. Defaults 5 and 500 ms.
  int max_resumes = 5;
  int64_t resume_delay_ms = 500;
  // Package download by parallel Range requests: this many connections,
  // each taking the next range of this many bytes (written and hashed in
  // order). A portal that ignores Range gets one plain download. Defaults
  // 3 and 8 MiB; 1 connection still uses ranges.
  int fetch_connections = 3;
  uint64_t fetch_range_bytes = uint64_t{8} << 20;
  // Fail a download whose response does not announce the package's SHA-256
  // (X-Content-SHA256). Default false: the OVF manifest digests, checked
  // when the package is opened, still protect the content.
  bool require_package_digest = false;
  Env* env = nullptr;  // default Env::Default()
};

// Per download: what happened on the wire (for tests and the bench).
struct FetchStats {
  uint64_t bytes = 0;
  int resumes = 0;
  bool digest_checked = false;
  // Range requests answered 206 (0: one plain download), and the most
  // connections open at once.
  int ranges = 0;
  int connections = 0;
};

class PortalClient final : public PortalApi, public PackageSource {
 public:
  static StatusOr<std::unique_ptr<PortalClient>> Create(const PortalClientOptions& options);
  ~PortalClient() override;

  Status Register(const HostRegistrationInfo& info) override;
  Status Heartbeat() override;
  StatusOr<std::vector<PortalJob>> PollJobs() override;
  Status ReportProgress(const JobUpdate& update) override;
  Status ReportRefusal(const std::string& job_id, const std::string& reason,
                       const std::string& message) override;
  StatusOr<PortalPoll> Poll() override;
  Status ReportVmEnded(const std::string& vm_name, const std::string& reason,
                       const std::string& text, int64_t run) override;
  Status ReportDiskEvent(const std::string& job_id, const std::string& event,
                         const std::string& text) override;
  Status ReportVmDeleted(const std::string& vm_name) override;
  Status ReportConsole(const std::string& vm_name, const std::string& text) override;

  // Downloads GET /v1/hosts/jobs/{id}/package to `dest_path` (mode 0600)
  // through a temp file beside it: by parallel Range requests when the
  // portal answers them (fetch_connections, fetch_range_bytes; the ranges
  // are written and hashed in order), else in one request; a broken
  // connection is resumed with Range from the bytes received. It checks the SHA-256 the portal announces (the
  // X-Content-SHA256 header, else job.package_sha256_hex). `dest_path`
  // appears only when the whole package arrived and matched; never held in
  // memory. DATA_LOSS on a digest mismatch, UNAVAILABLE when the transfer
  // keeps breaking.
  Status Fetch(const Job& job, const std::string& dest_path) override;

  // Statistics of the last Fetch.
  FetchStats last_fetch() const;

 private:
  struct Impl;
  explicit PortalClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_PORTAL_CLIENT_H_
