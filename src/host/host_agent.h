// The host agent's core: enrollment, attestation and the provisioning job
// pipeline (fetch -> check tag -> attest + release -> unwrap in the TPM ->
// decrypt -> launch). A plain class: the HTTP service (`vmseal host serve`)
// is a thin adapter over it.
#ifndef VMSEAL_HOST_HOST_AGENT_H_
#define VMSEAL_HOST_HOST_AGENT_H_

#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "host/kms_api.h"
#include "nbd_export/export.h"
#include "tpm/security_engine.h"
#include "ovf/package.h"
#include "vm/overlay_pool.h"
#include "vm/vm_manager.h"

namespace vmseal::host {

// One provisioning job, as the portal hands it to the host.
struct Job {
  std::string job_id;
  std::string image_id;  // the portal's image id
  // The customer the portal runs the job for. When set, the package's tag
  // must name this tenant (FAILED_PRECONDITION "tenant_mismatch" otherwise).
  std::string tenant;
  // When set, the package's encryption tag must name this image id
  // (FAILED_PRECONDITION "image_mismatch" otherwise). The portal's own image
  // id differs from the id the customer sealed with, so it is only set when
  // the portal announces the tagged id.
  std::string expected_tag_image_id;
  // Lowercase hex SHA-256 of the package the portal announced with the job;
  // the download must match it. Empty: not announced.
  std::string package_sha256_hex;
  // The portal's run of the job (PortalJob::run), kept with the VM so that
  // its end report names it. 0: none.
  int64_t run = 0;
  // The portal's placement of the job (PortalJob::attempt), named in the
  // key release: the KMS releases only to the job's newest attempt.
  uint64_t attempt = 0;
};

// The phases a job goes through on the host (docs/protocol.md §5).
enum class JobPhase { kFetching, kAttesting, kDecrypting, kLaunching, kRunning, kFailed };
const char* JobPhaseName(JobPhase phase);

struct JobUpdate {
  std::string job_id;
  JobPhase phase = JobPhase::kFetching;
  std::string reason;           // kFailed: machine-readable reason + detail
  std::string vm_name;          // kRunning
  std::string serial_log_path;  // kRunning
};

// Fetches the sealed package of a job to a local path (streaming; the
// object store's digest is checked by the implementation).
class PackageSource {
 public:
  virtual ~PackageSource() = default;
  virtual Status Fetch(const Job& job, const std::string& dest_path) = 0;
};

// How a VM gets its disks (docs/protocol.md §5).
enum class LaunchMode {
  // Default. Each disk is an NBD export (src/nbd_export) that decrypts
  // authenticated chunks on demand; guest writes go to a LUKS-encrypted
  // qcow2 overlay. The VM boots before the image has arrived.
  kStream,
  // Each disk is decrypted into a local LUKS-encrypted qcow2 before boot.
  kCopy,
};
// "stream" / "copy"; the parser returns INVALID_ARGUMENT for anything else.
const char* LaunchModeName(LaunchMode mode);
StatusOr<LaunchMode> ParseLaunchMode(const std::string& name);

// A line of a VM's export events (events.jsonl of src/nbd_export), e.g.
// chunk_auth_failed: the guest got an I/O error for that chunk.
struct DiskEvent {
  std::string vm_name;
  std::string job_id;
  std::string disk_id;
  std::string event;   // "chunk_auth_failed", "prefetch_complete", ...
  std::string detail;  // the whole JSON line
};

struct HostAgentOptions {
  // Working directory for fetched packages (mode 0700). Required.
  std::string work_dir;
  // How encrypted packages are launched. Default kStream.
  LaunchMode launch_mode = LaunchMode::kStream;
  // Per-VM disk state: one directory per VM holding the exports (socket,
  // events, ciphertext cache), the encrypted overlays or copies and the
  // launch record (docs/host.md). Created mode 0700. Its path must leave
  // room for "/<16>/d15/nbd.sock" in a unix socket address. Required.
  std::string disk_dir;
  // nbdkit-vmseal-plugin.so. Required to run encrypted packages.
  std::string nbd_plugin_path;
  // nbdkit and qemu-img binaries (PATH lookup without '/').
  std::string nbdkit_path = "nbdkit";
  std::string qemu_img_path = "qemu-img";
  // Where an encrypted package's disks are read from. When portal_url is
  // set: "<portal_url>/v1/hosts/jobs/<job id>/package" by HTTPS Range
  // requests with the host's mTLS files (ca_file, cert_file, key_file), the
  // package never downloaded whole; only its metadata is read before the key
  // release. Empty: the package is fetched whole through PackageSource and
  // the exports read it in place (ciphertext, kept while the VM exists).
  std::string portal_url;
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // Empty encrypted qcow2 files kept ready (src/vm/overlay_pool.h, in
  // disk_dir/pool), so that no launch waits for qemu-img's LUKS PBKDF
  // benchmark: stream mode layers one per disk over the export, copy mode
  // converts each disk into one (qemu-img convert -n). 0 disables the pool
  // (every file is then made at launch). Default 3.
  size_t overlay_pool_target = 3;
  // Remote source: fill each disk's ciphertext cache in the background, so
  // that the VM stops needing the portal. Default true.
  bool prefetch = true;
  // SHA-256 PCRs quoted for attestation. Default: 0-7 (firmware and boot).
  std::vector<uint32_t> pcr_selection = {0, 1, 2, 3, 4, 5, 6, 7};
  // Provision packages without an EncryptionSection. Default false: the host
  // refuses them and the portal picks another host (or fails the job).
  bool allow_plain_images = false;
  // Called on every phase change of a job. Optional.
  std::function<void(const JobUpdate&)> on_update;
  Env* env = nullptr;  // default Env::Default()
};

using JobUpdateFn = std::function<void(const JobUpdate&)>;

// What the service loop asks of the agent (HostAgent; fakes in unit tests).
class JobRunner {
 public:
  virtual ~JobRunner() = default;
  virtual Status Enroll() = 0;
  virtual Status Reattest() = 0;
  // Runs `job`; phase changes go to `on_update` (if set) instead of the
  // agent's default callback.
  virtual StatusOr<vm::VmInfo> RunJob(const Job& job, const JobUpdateFn& on_update) = 0;
  // Stops VM `name` (OK when already stopped); its files stay. NOT_FOUND
  // when unknown. Default UNIMPLEMENTED.
  virtual Status StopVm(const std::string& name);
  // Stops VM `name` and removes it and every file of it. NOT_FOUND when
  // unknown. Default UNIMPLEMENTED.
  virtual Status DeleteVm(const std::string& name);
  // Every VM of this host (running or ended). Default UNIMPLEMENTED.
  virtual StatusOr<std::vector<vm::VmInfo>> ListVms();
  // Disk events not returned before (HostAgent::DiskEvents). Default none.
  virtual std::vector<DiskEvent> DiskEvents();
};

// RunJob is not reentrant (the service runs one job at a time per agent);
// DeleteVm, StopVm, ReattachVms and DiskEvents may be called from other
// threads.
class HostAgent final : public JobRunner {
 public:
  // All pointers must outlive the agent.
  static StatusOr<std::unique_ptr<HostAgent>> Create(const HostAgentOptions& options,
                                                     tpm::SecurityEngine* tpm,
                                                     vm::VmManager* vms, KmsApi* kms,
                                                     PackageSource* packages);

  // Leaves the exports of running VMs running (they outlive the agent).
  ~HostAgent() override;

  // Enrolls this host's TPM with the KMS (EK certificate, AK, credential
  // activation). Idempotent on the KMS side.
  Status Enroll() override;

  // Quotes the PCRs with a fresh nonce and sends the evidence to the KMS,
  // which records a verdict in the host's trust history.
  Status Reattest() override;

  // Runs a job to a running VM. On failure, reports kFailed with the reason,
  // removes every decrypted byte it wrote and returns the error.
  StatusOr<vm::VmInfo> RunJob(const Job& job);
  StatusOr<vm::VmInfo> RunJob(const Job& job, const JobUpdateFn& on_update) override;

  // Stops the VM (qemu), then its exports, and removes everything of it:
  // overlays or encrypted copies, ciphertext caches, the launch record, a
  // fetched package. NOT_FOUND when neither a VM nor disk state of that name
  // exists.
  Status DeleteVm(const std::string& name) override;
  StatusOr<std::vector<vm::VmInfo>> ListVms() override;

  // Stops the VM (qemu) and its exports; keeps the overlays, caches and the
  // launch record (a later start can serve the same disks again). OK when
  // already stopped; NOT_FOUND when unknown.
  Status StopVm(const std::string& name) override;

  // After an agent restart: for every launch record of a VM whose qemu
  // still runs in stream mode, unwraps the data key in the TPM and re-adopts
  // (or restarts, reusing the cache) each disk's export. Returns how many
  // VMs it re-attached; a VM that fails is logged in the returned status
  // only if none could be handled.
  StatusOr<int> ReattachVms();

  // The pool of ready encrypted overlays (both launch modes; never null).
  vm::OverlayPool* overlay_pool() const { return overlay_pool_.get(); }

  // Export events of every VM since the last call (each line once).
  std::vector<DiskEvent> DiskEvents() override;

  // At start-up, before ReattachVms: removes what a crash left of VMs that
  // no longer exist. A VM disk dir (disk_dir/<16 hex>/) with no launch
  // record, or whose record names a VM the VM manager does not know, is
  // swept: each export under it is stopped (Export::StopServing: only the
  // nbdkit its pid file names and whose command line serves that socket;
  // nothing is matched by name alone), then the dir with its overlays,
  // copies and caches is removed. Dirs of known VMs (running or stopped)
  // stay. Returns how many dirs went.
  StatusOr<int> SweepOrphans();

  // The export state directories of a VM's disks (tests), in disk order.
  std::vector<std::string> ExportDirsForTesting(const std::string& name);

  // Where the time of the last job went: (step, milliseconds) in the order
  // the steps ran (package metadata, attestation, release, unwrap, exports,
  // inspection, overlays, wraps, qemu, ...). Also logged at info level.
  // Empty before the first job. Thread-safe.
  std::vector<std::pair<std::string, double>> LastLaunchProfile();

 private:
  HostAgent(HostAgentOptions options, tpm::SecurityEngine* tpm, vm::VmManager* vms,
            KmsApi* kms, PackageSource* packages);
  // Times the steps of one job (LastLaunchProfile).
  class StepTimer;
  // The overlays taken for a job's disks while it attests and its exports
  // start (one per disk in VM order; a disk whose size could not be
  // predicted has no secret and size 0).
  struct EarlyOverlays {
    std::vector<SecretBytes> secrets;
    std::vector<uint64_t> sizes;
  };
  // Exports spawned before the key was released (Export::Spawn), in VM
  // disk order; destroying them before Unlock ends their nbdkit.
  using SpawnedExports = std::vector<std::unique_ptr<nbd_export::Export>>;
  StatusOr<vm::VmInfo> RunJobSteps(const Job& job, const std::string& vm_name,
                                   const std::string& package_path, const JobUpdateFn& report,
                                   StepTimer* steps);
  // `order`: indices into package.files() in the order the VM gets its
  // disks (the first boots), from the descriptor (DiskOrder).
  // `fetched_package`: the package in the VM's disk dir, or empty (remote).
  StatusOr<vm::VmInfo> LaunchEncrypted(const Job& job, const std::string& vm_name,
                                       const std::vector<size_t>& order,
                                       const std::string& package_path,
                                       const ovf::Package& package, const SecretBytes& data_key,
                                       const ReleasedKey& released, const vm::VmSpec& base,
                                       const JobUpdateFn& report, StepTimer* steps,
                                       std::future<EarlyOverlays>* early,
                                       SpawnedExports* spawned);
  std::string VmDiskDir(const std::string& vm_name) const;
  // Stops and forgets the exports of `name` (mu_ not held).
  void StopExports(const std::string& name);
  StatusOr<std::vector<std::unique_ptr<nbd_export::Export>>> StartExports(
      const std::string& vm_name, const std::string& job_id, const std::string& package_path,
      const std::vector<std::string>& disk_ids, const std::string& image_id,
      const std::string& tenant, const SecretBytes* data_key, bool exit_with_parent,
      bool reattach);
  static void Report(const JobUpdateFn& fn, const Job& job, JobPhase phase,
                     std::string reason = "", const vm::VmInfo* vm = nullptr);

  const HostAgentOptions options_;
  Env* const env_;
  std::unique_ptr<vm::OverlayPool> overlay_pool_;
  tpm::SecurityEngine* const tpm_;
  vm::VmManager* const vms_;
  KmsApi* const kms_;
  PackageSource* const packages_;

  std::mutex mu_;
  // The running exports of each VM (stream mode), in disk order.
  std::map<std::string, std::vector<std::unique_ptr<nbd_export::Export>>> exports_;
  // Per export state dir: event lines already returned by DiskEvents.
  std::map<std::string, size_t> events_seen_;
  // LastLaunchProfile; guarded by mu_.
  std::vector<std::pair<std::string, double>> last_profile_;
};

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_HOST_AGENT_H_
