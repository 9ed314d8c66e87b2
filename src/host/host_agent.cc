#include "host/host_agent.h"

#include <sys/stat.h>

#include <optional>
#include <utility>

#include "disk_format/disk_format.h"
#include "host/internal/virtual_hardware.h"
#include "ovf/package.h"
#include "ovf/package_format.h"

namespace vmseal::host {
namespace {

Status UnsafeDiskFormat(const std::string& reason) {
  return InvalidArgumentError(std::string(disk_format::kRefusalPrefix) + reason);
}

// The format the descriptor declares for the boot disk (§7 of
// docs/format/package.md), before any key is released: a package whose disk
// is declared as anything but raw or qcow2 (a VMware vmdk, say) is never
// run. Empty when the descriptor declares none.
StatusOr<std::optional<vm::DiskFormat>> DeclaredFormat(const ovf::FileRef& disk) {
  const std::string& uri = disk.disk_format_uri;
  if (uri.empty()) return std::optional<vm::DiskFormat>();
  if (uri == ovf::kRawFormatUri) return std::optional(vm::DiskFormat::kRaw);
  if (uri == ovf::kQcow2FormatUri) return std::optional(vm::DiskFormat::kQcow2);
  return UnsafeDiskFormat("descriptor declares disk format '" + uri.substr(0, 128) +
                          "', not raw or qcow2");
}

// Runs the disk-format inspector (docs/format/disk-format.md) on the
// decrypted disk before any qemu sees it, and checks it against what the
// descriptor declared.
StatusOr<vm::DiskFormat> InspectDisk(Env* env, const std::string& path,
                                     const std::optional<vm::DiskFormat>& declared) {
  ASSIGN_OR_RETURN(auto file, env->NewRandomAccessFile(path));
  ASSIGN_OR_RETURN(disk_format::DiskInfo info, disk_format::Inspect(*file));
  const vm::DiskFormat found =
      info.format == disk_format::Format::kQcow2 ? vm::DiskFormat::kQcow2 : vm::DiskFormat::kRaw;
  if (declared.has_value() && *declared != found) {
    return UnsafeDiskFormat(std::string("descriptor declares a ") +
                            vm::DiskFormatName(*declared) + " disk, the image is " +
                            vm::DiskFormatName(found));
  }
  return found;
}

// VM names are the job id with characters outside [A-Za-z0-9._-] mapped to '-'.
std::string VmNameFor(const Job& job) {
  std::string name = "vm-" + job.job_id;
  for (char& c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) c = '-';
  }
  if (name.size() > 64) name.resize(64);
  return name;
}

}  // namespace

const char* JobPhaseName(JobPhase phase) {
  switch (phase) {
    case JobPhase::kFetching: return "fetching";
    case JobPhase::kAttesting: return "attesting";
    case JobPhase::kDecrypting: return "decrypting";
    case JobPhase::kLaunching: return "launching";
    case JobPhase::kRunning: return "running";
    case JobPhase::kFailed: return "failed";
  }
  return "failed";
}

StatusOr<std::unique_ptr<HostAgent>> HostAgent::Create(const HostAgentOptions& options,
                                                       tpm::SecurityEngine* tpm,
                                                       vm::VmManager* vms, KmsApi* kms,
                                                       PackageSource* packages) {
  if (options.work_dir.empty()) return InvalidArgumentError("host agent: work_dir is required");
  if (tpm == nullptr || vms == nullptr || kms == nullptr || packages == nullptr) {
    return InvalidArgumentError("host agent: missing dependency");
  }
  if (options.pcr_selection.empty()) {
    return InvalidArgumentError("host agent: empty PCR selection");
  }
  if (::mkdir(options.work_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "create", options.work_dir);
  }
  if (::chmod(options.work_dir.c_str(), 0700) != 0) {
    return ErrnoToStatus(errno, "chmod", options.work_dir);
  }
  return std::unique_ptr<HostAgent>(new HostAgent(options, tpm, vms, kms, packages));
}

HostAgent::HostAgent(HostAgentOptions options, tpm::SecurityEngine* tpm, vm::VmManager* vms,
                     KmsApi* kms, PackageSource* packages)
    : options_(std::move(options)),
      env_(options_.env != nullptr ? options_.env : Env::Default()),
      tpm_(tpm), vms_(vms), kms_(kms), packages_(packages) {}

Status HostAgent::Enroll() {
  ASSIGN_OR_RETURN(attest::EnrollmentRequest request, tpm_->EnrollmentRequest());
  ASSIGN_OR_RETURN(attest::CredentialChallenge challenge, kms_->BeginEnrollment(request));
  ASSIGN_OR_RETURN(SecretBytes secret, tpm_->ActivateCredential(challenge));
  return kms_->CompleteEnrollment(secret);
}

Status HostAgent::Reattest() {
  ASSIGN_OR_RETURN(crypto::Bytes nonce, kms_->Nonce());
  ASSIGN_OR_RETURN(attest::Evidence evidence, tpm_->Attest(nonce, options_.pcr_selection));
  return kms_->Attest(evidence);
}

void HostAgent::Report(const JobUpdateFn& fn, const Job& job, JobPhase phase,
                       std::string reason, const vm::VmInfo* vm) {
  if (!fn) return;
  JobUpdate update;
  update.job_id = job.job_id;
  update.phase = phase;
  update.reason = std::move(reason);
  if (vm != nullptr) {
    update.vm_name = vm->name;
    update.serial_log_path = vm->serial_log_path;
  }
  fn(update);
}

StatusOr<vm::VmInfo> HostAgent::RunJob(const Job& job) {
  return RunJob(job, options_.on_update);
}

StatusOr<vm::VmInfo> HostAgent::RunJob(const Job& job, const JobUpdateFn& on_update) {
  const JobUpdateFn& report = on_update ? on_update : options_.on_update;
  const std::string vm_name = VmNameFor(job);
  const std::string package_path = options_.work_dir + "/" + vm_name + ".pkg";
  StatusOr<vm::VmInfo> result = RunJobSteps(job, vm_name, package_path, report);
  // The sealed package is not needed once the disk is decrypted (or failed).
  if (env_->FileExists(package_path)) (void)env_->RemoveFile(package_path);
  if (!result.ok()) {
    // No decrypted data stays behind: stop the VM if it started, remove its disk.
    (void)vms_->Delete(vm_name);
    auto disk = vms_->DiskPath(vm_name);
    if (disk.ok() && env_->FileExists(*disk)) (void)env_->RemoveFile(*disk);
    Report(report, job, JobPhase::kFailed, result.status().message());
  }
  return result;
}

StatusOr<vm::VmInfo> HostAgent::RunJobSteps(const Job& job, const std::string& vm_name,
                                            const std::string& package_path,
                                            const JobUpdateFn& report) {
  Report(report, job, JobPhase::kFetching);
  RETURN_IF_ERROR(packages_->Fetch(job, package_path).WithPrefix("fetch"));

  ovf::PackageOpenOptions open_options;
  open_options.require_encrypted = !options_.allow_plain_images;
  auto package_or = ovf::Package::Open(env_, package_path, open_options);
  if (!package_or.ok()) {
    if (!options_.allow_plain_images &&
        package_or.status().message().find("not encrypted") != std::string::npos) {
      return FailedPreconditionError("unencrypted_image: host policy requires an encrypted "
                                     "package");
    }
    return package_or.status().WithPrefix("package");
  }
  std::unique_ptr<ovf::Package> package = std::move(package_or).value();
  const ovf::EncryptionTag& tag = package->tag();
  if (package->encrypted() && !job.expected_tag_image_id.empty() &&
      tag.image_id != job.expected_tag_image_id) {
    return FailedPreconditionError("image_mismatch: package is for image '" + tag.image_id +
                                   "', job names '" + job.expected_tag_image_id + "'");
  }
  ASSIGN_OR_RETURN(internal::VirtualHardware hardware,
                   internal::ReadVirtualHardware(package->descriptor_text()));
  if (package->files().empty()) return InvalidArgumentError("package: no disk file");
  // The first file of References is the boot disk.
  const ovf::FileRef& boot = package->files().front();
  ASSIGN_OR_RETURN(std::optional<vm::DiskFormat> declared_format,
                   DeclaredFormat(boot));
  ASSIGN_OR_RETURN(std::string disk_path, vms_->DiskPath(vm_name));

  {
    ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(env_, disk_path, 0600));
    if (package->encrypted()) {
      Report(report, job, JobPhase::kAttesting);
      // The job is the portal's for one tenant: a package sealed for another
      // tenant is not run for it (the KMS's grant check refuses it too).
      if (!job.tenant.empty() && tag.tenant != job.tenant) {
        return FailedPreconditionError("tenant_mismatch: package is sealed for tenant '" +
                                       tag.tenant + "', job is of tenant '" + job.tenant + "'");
      }
      ReleaseRequest request;
      request.job_id = job.job_id;
      request.image_id = tag.image_id;
      request.tenant = tag.tenant;
      request.key_id = tag.key_id;
      request.key_version = tag.key_version;
      request.wrap_algorithm = package->wrapped_key().algorithm;
      request.oaep_label = package->wrapped_key().oaep_label;
      request.wrapped_key = package->wrapped_key().ciphertext;
      request.descriptor_name = package->descriptor_name();
      request.descriptor = package->descriptor_text();
      request.manifest = package->manifest_text();
      request.package_cert = package->certificate_text();
      ASSIGN_OR_RETURN(crypto::Bytes nonce, kms_->Nonce());
      ASSIGN_OR_RETURN(request.evidence, tpm_->Attest(nonce, options_.pcr_selection));
      ASSIGN_OR_RETURN(ReleasedKey released, kms_->Release(request));

      Report(report, job, JobPhase::kDecrypting);
      ASSIGN_OR_RETURN(SecretBytes data_key,
                       tpm_->Decrypt(released.rewrapped_key, released.label));
      RETURN_IF_ERROR(package->DecryptFile(boot.id, data_key, out->file()).WithPrefix("decrypt"));
    } else {
      Report(report, job, JobPhase::kDecrypting);
      ASSIGN_OR_RETURN(auto stored, package->OpenStoredFile(boot.id));
      ASSIGN_OR_RETURN(uint64_t size, stored->Size());
      std::vector<uint8_t> buf(1 << 20);
      for (uint64_t off = 0; off < size;) {
        ASSIGN_OR_RETURN(size_t n, stored->Read(off, buf));
        if (n == 0) return DataLossError("package: disk shorter than its size");
        RETURN_IF_ERROR(out->file()->Append({buf.data(), n}));
        off += n;
      }
    }
    RETURN_IF_ERROR(out->Commit());
  }
  // Before any qemu process starts; a refusal removes the disk (RunJob).
  ASSIGN_OR_RETURN(vm::DiskFormat disk_format, InspectDisk(env_, disk_path, declared_format));

  Report(report, job, JobPhase::kLaunching);
  vm::VmSpec spec;
  spec.name = vm_name;
  spec.disk_path = disk_path;
  spec.disk_format = disk_format;
  spec.cpus = hardware.cpus;
  spec.memory_mib = hardware.memory_mib;
  ASSIGN_OR_RETURN(vm::VmInfo info, vms_->Launch(spec));
  Report(report, job, JobPhase::kRunning, "", &info);
  return info;
}

Status JobRunner::StopVm(const std::string&) { return UnimplementedError("StopVm"); }
Status JobRunner::DeleteVm(const std::string&) { return UnimplementedError("DeleteVm"); }
StatusOr<std::vector<vm::VmInfo>> JobRunner::ListVms() { return UnimplementedError("ListVms"); }

Status HostAgent::StopVm(const std::string& name) { return vms_->Stop(name); }

Status HostAgent::DeleteVm(const std::string& name) { return vms_->Delete(name); }

StatusOr<std::vector<vm::VmInfo>> HostAgent::ListVms() { return vms_->List(); }

}  // namespace vmseal::host
