// The host agent's core: enrollment, attestation and the provisioning job
// pipeline (fetch -> check tag -> attest + release -> unwrap in the TPM ->
// decrypt -> launch). A plain class: the HTTP service (`vmseal host serve`)
// is a thin adapter over it.
#ifndef VMSEAL_HOST_HOST_AGENT_H_
#define VMSEAL_HOST_HOST_AGENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "host/kms_api.h"
#include "tpm/security_engine.h"
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

struct HostAgentOptions {
  // Working directory for fetched packages (mode 0700). Required.
  std::string work_dir;
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
};

// Not thread-safe: the service runs one job at a time per agent.
class HostAgent final : public JobRunner {
 public:
  // All pointers must outlive the agent.
  static StatusOr<std::unique_ptr<HostAgent>> Create(const HostAgentOptions& options,
                                                     tpm::SecurityEngine* tpm,
                                                     vm::VmManager* vms, KmsApi* kms,
                                                     PackageSource* packages);

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

  Status StopVm(const std::string& name) override;
  // Stops the VM and removes its decrypted disk.
  Status DeleteVm(const std::string& name) override;
  StatusOr<std::vector<vm::VmInfo>> ListVms() override;

 private:
  HostAgent(HostAgentOptions options, tpm::SecurityEngine* tpm, vm::VmManager* vms,
            KmsApi* kms, PackageSource* packages);
  StatusOr<vm::VmInfo> RunJobSteps(const Job& job, const std::string& vm_name,
                                   const std::string& package_path, const JobUpdateFn& report);
  static void Report(const JobUpdateFn& fn, const Job& job, JobPhase phase,
                     std::string reason = "", const vm::VmInfo* vm = nullptr);

  const HostAgentOptions options_;
  Env* const env_;
  tpm::SecurityEngine* const tpm_;
  vm::VmManager* const vms_;
  KmsApi* const kms_;
  PackageSource* const packages_;
};

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_HOST_AGENT_H_
