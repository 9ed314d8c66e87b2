#include "host/host_agent.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <utility>

#include <spdlog/spdlog.h>

#include "attest/tpm_format.h"
#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "disk_format/disk_format.h"
#include "host/internal/launch_record.h"
#include "host/internal/virtual_hardware.h"
#include "json/json.h"
#include "nbd_export/nbd_file.h"
#include "nbd_export/remote_package.h"
#include "ovf/package.h"
#include "ovf/package_format.h"
#include "vm/encrypted_disk.h"

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

// The same through a disk's NBD export: the first bytes are read from the
// export (plaintext only in memory), before any qemu opens it.
StatusOr<disk_format::DiskInfo> InspectExport(const std::string& socket,
                                              const std::optional<vm::DiskFormat>& declared) {
  ASSIGN_OR_RETURN(auto file, nbd_export::OpenNbdFile(socket));
  ASSIGN_OR_RETURN(disk_format::DiskInfo info, disk_format::Inspect(*file));
  const vm::DiskFormat found =
      info.format == disk_format::Format::kQcow2 ? vm::DiskFormat::kQcow2 : vm::DiskFormat::kRaw;
  if (declared.has_value() && *declared != found) {
    return UnsafeDiskFormat(std::string("descriptor declares a ") +
                            vm::DiskFormatName(*declared) + " disk, the image is " +
                            vm::DiskFormatName(found));
  }
  return info;
}

vm::DiskFormat VmFormat(disk_format::Format f) {
  return f == disk_format::Format::kQcow2 ? vm::DiskFormat::kQcow2 : vm::DiskFormat::kRaw;
}

// RSA-OAEP-SHA256 to the TPM binding key's public half under `purpose`
// (docs/format/key-wrap.md, label = purpose || 0x00): only this host's TPM
// can unwrap it (SecurityEngine::Decrypt).
StatusOr<internal::TpmWrapped> WrapToBindingKey(tpm::SecurityEngine* tpm,
                                                const SecretBytes& secret,
                                                const std::string& purpose) {
  ASSIGN_OR_RETURN(TPMT_PUBLIC pub, attest::ParsePublic(tpm->BindingKeyPublic()));
  ASSIGN_OR_RETURN(crypto::EvpPkeyPtr pkey, attest::RsaPublicKey(pub));
  ASSIGN_OR_RETURN(crypto::PublicKey key, crypto::PublicKey::FromEvpPkey(pkey.get()));
  internal::TpmWrapped out;
  ASSIGN_OR_RETURN(out.wrapped, crypto::RsaOaepWrap(key, secret, purpose, crypto::OaepLabel::kTpm));
  out.label.assign(purpose.begin(), purpose.end());
  out.label.push_back(0);
  return out;
}

// The plaintext size of a sealed disk from its stored length and the chunk
// size in its header (docs/format/stream.md §5). Unauthenticated: only the
// size the launch grows a disk's overlay to before the disk is inspected;
// the inspected size decides (LaunchEncrypted).
StatusOr<uint64_t> PredictedDiskSize(const ovf::Package& package, const std::string& file_id) {
  ASSIGN_OR_RETURN(auto stored, package.OpenStoredFile(file_id));
  ASSIGN_OR_RETURN(const uint64_t sealed, stored->Size());
  uint8_t header[16];
  ASSIGN_OR_RETURN(const size_t got, stored->Read(0, header));
  if (got != sizeof header || sealed < 96) return DataLossError("sealed disk too short");
  const uint64_t chunk = (uint64_t{header[12]} << 24) | (uint64_t{header[13]} << 16) |
                         (uint64_t{header[14]} << 8) | header[15];
  if (chunk < 16 || chunk > (uint64_t{1} << 24)) return DataLossError("bad chunk size");
  const uint64_t body = sealed - 80;
  const uint64_t chunks = (body + chunk + 15) / (chunk + 16);
  if (body < 16 * chunks) return DataLossError("bad sealed length");
  return body - 16 * chunks;
}

// The package's files in the order the VM gets them: the descriptor's disk
// order (the boot disk first), then files no disk Item names, in
// References order.
StatusOr<std::vector<size_t>> DiskOrder(const ovf::Package& package,
                                        const internal::VirtualHardware& hardware) {
  std::vector<size_t> order;
  std::vector<bool> taken(package.files().size(), false);
  for (const std::string& id : hardware.disk_file_ids) {
    size_t k = 0;
    while (k < package.files().size() && package.files()[k].id != id) ++k;
    if (k == package.files().size()) {
      return InvalidArgumentError("descriptor: disk file '" + id + "' is not in the package");
    }
    order.push_back(k);
    taken[k] = true;
  }
  for (size_t k = 0; k < taken.size(); ++k) {
    if (!taken[k]) order.push_back(k);
  }
  return order;
}

std::string DiskSecretPurpose(const std::string& vm_name) {
  return "vmseal disk secret v1 " + vm_name;
}

Status MakePrivateDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return InternalError("create " + dir + ": " + ec.message());
  if (::chmod(dir.c_str(), 0700) != 0) return ErrnoToStatus(errno, "chmod", dir);
  return OkStatus();
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

const char* LaunchModeName(LaunchMode mode) {
  return mode == LaunchMode::kCopy ? "copy" : "stream";
}

StatusOr<LaunchMode> ParseLaunchMode(const std::string& name) {
  if (name == "stream") return LaunchMode::kStream;
  if (name == "copy") return LaunchMode::kCopy;
  return InvalidArgumentError("unknown launch mode \"" + name + "\" (want stream or copy)");
}

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
  if (options.disk_dir.empty()) return InvalidArgumentError("host agent: disk_dir is required");
  RETURN_IF_ERROR(MakePrivateDir(options.disk_dir));
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
  std::unique_ptr<HostAgent> agent(new HostAgent(options, tpm, vms, kms, packages));
  // Both modes: stream layers the pool's overlays over the exports, copy
  // converts each disk into one.
  vm::OverlayPoolOptions po;
  po.dir = options.disk_dir + "/pool";
  po.target = options.overlay_pool_target;
  po.qemu_img.binary = options.qemu_img_path;
  ASSIGN_OR_RETURN(agent->overlay_pool_, vm::OverlayPool::Create(po));
  return agent;
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

class HostAgent::StepTimer {
 public:
  // Ends the step running since the last Lap (or construction) as `name`.
  void Lap(const std::string& name) {
    const auto now = std::chrono::steady_clock::now();
    steps_.emplace_back(name, std::chrono::duration<double, std::milli>(now - last_).count());
    last_ = now;
  }
  std::vector<std::pair<std::string, double>> steps() const { return steps_; }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, double>> steps_;
};

std::vector<std::pair<std::string, double>> HostAgent::LastLaunchProfile() {
  std::lock_guard<std::mutex> lock(mu_);
  return last_profile_;
}

StatusOr<vm::VmInfo> HostAgent::RunJob(const Job& job, const JobUpdateFn& on_update) {
  const JobUpdateFn& report = on_update ? on_update : options_.on_update;
  const std::string vm_name = VmNameFor(job);
  const std::string package_path = options_.work_dir + "/" + vm_name + ".pkg";
  StepTimer steps;
  StatusOr<vm::VmInfo> result = RunJobSteps(job, vm_name, package_path, report, &steps);
  {
    std::string line;
    double total = 0;
    for (const auto& [name, ms] : steps.steps()) {
      line += " " + name + "=" + std::to_string(static_cast<int64_t>(ms)) + "ms";
      total += ms;
    }
    spdlog::info("job {} launch profile ({}, {} ms):{}", job.job_id,
                 result.ok() ? "ok" : "failed", static_cast<int64_t>(total), line);
    std::lock_guard<std::mutex> lock(mu_);
    last_profile_ = steps.steps();
  }
  // A package the exports still read was moved into the VM's disk dir.
  if (env_->FileExists(package_path)) (void)env_->RemoveFile(package_path);
  if (!result.ok()) {
    // Nothing of the job stays behind: stop the VM if it started, its
    // exports, and remove its disk, overlays, caches and record.
    (void)vms_->Delete(vm_name);
    StopExports(vm_name);
    std::error_code ec;
    std::filesystem::remove_all(VmDiskDir(vm_name), ec);
    auto disk = vms_->DiskPath(vm_name);
    if (disk.ok() && env_->FileExists(*disk)) (void)env_->RemoveFile(*disk);
    vms_->ReleaseUser(vm_name);
    Report(report, job, JobPhase::kFailed, result.status().message());
  }
  return result;
}

std::string HostAgent::VmDiskDir(const std::string& vm_name) const {
  // 16 hex digits of FNV-1a 64 over the name keep socket paths short; the
  // launch record inside names the VM.
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : vm_name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return options_.disk_dir + "/" + buf;
}

StatusOr<vm::VmInfo> HostAgent::RunJobSteps(const Job& job, const std::string& vm_name,
                                            const std::string& package_path,
                                            const JobUpdateFn& report, StepTimer* steps) {
  Report(report, job, JobPhase::kFetching);
  ovf::PackageOpenOptions open_options;
  open_options.require_encrypted = !options_.allow_plain_images;
  bool remote = !options_.portal_url.empty();
  nbd_export::RemotePackage remote_package;
  StatusOr<std::unique_ptr<ovf::Package>> package_or = UnknownError("not opened");
  if (remote) {
    // Only the package's metadata is read now; the disks stream later.
    RETURN_IF_ERROR(MakePrivateDir(VmDiskDir(vm_name)));
    nbd_export::HttpsRangeSourceOptions ro;
    ro.url = options_.portal_url + "/v1/hosts/jobs/" + job.job_id + "/package";
    ro.ca_file = options_.ca_file;
    ro.cert_file = options_.cert_file;
    ro.key_file = options_.key_file;
    auto opened = nbd_export::OpenRemotePackage(ro, VmDiskDir(vm_name) + "/meta", open_options);
    if (opened.ok()) {
      remote_package = *std::move(opened);
      package_or = std::move(remote_package.package);
    } else {
      package_or = opened.status();
    }
    // A source that cannot serve byte ranges (the transfer itself failed,
    // not the package): the package is fetched whole and read in place.
    if (!package_or.ok() && (package_or.status().code() == StatusCode::kUnavailable ||
                             package_or.status().code() == StatusCode::kDataLoss)) {
      remote = false;
      std::error_code ec;
      std::filesystem::remove_all(VmDiskDir(vm_name) + "/meta", ec);
    }
  }
  // A fetched package (ciphertext) is read in place from the VM's disk dir
  // (the exports read it there; moved before it is opened, so every reader
  // sees one path).
  std::string local_package;
  if (!remote) {
    RETURN_IF_ERROR(packages_->Fetch(job, package_path).WithPrefix("fetch"));
    RETURN_IF_ERROR(MakePrivateDir(VmDiskDir(vm_name)));
    local_package = VmDiskDir(vm_name) + "/package";
    RETURN_IF_ERROR(env_->RenameFile(package_path, local_package));
    package_or = ovf::Package::Open(env_, local_package, open_options);
  }
  if (!package_or.ok()) {
    if (!options_.allow_plain_images &&
        package_or.status().message().find("not encrypted") != std::string::npos) {
      return FailedPreconditionError("unencrypted_image: host policy requires an encrypted "
                                     "package");
    }
    return package_or.status().WithPrefix(remote ? "package fetch" : "package");
  }
  std::unique_ptr<ovf::Package> package = std::move(package_or).value();
  steps->Lap(remote ? "package_metadata" : "package_fetch");
  const ovf::EncryptionTag& tag = package->tag();
  if (package->encrypted() && !job.expected_tag_image_id.empty() &&
      tag.image_id != job.expected_tag_image_id) {
    return FailedPreconditionError("image_mismatch: package is for image '" + tag.image_id +
                                   "', job names '" + job.expected_tag_image_id + "'");
  }
  ASSIGN_OR_RETURN(internal::VirtualHardware hardware,
                   internal::ReadVirtualHardware(package->descriptor_text()));
  if (package->files().empty()) return InvalidArgumentError("package: no disk file");
  if (package->files().size() > 16) return InvalidArgumentError("package: more than 16 disks");
  // Every declared format is checked before any key is released.
  for (const ovf::FileRef& f : package->files()) {
    ASSIGN_OR_RETURN(std::optional<vm::DiskFormat> declared, DeclaredFormat(f));
    (void)declared;
  }
  ASSIGN_OR_RETURN(const std::vector<size_t> order, DiskOrder(*package, hardware));
  vm::VmSpec spec;
  spec.name = vm_name;
  spec.run = job.run;
  spec.cpus = hardware.cpus;
  spec.memory_mib = hardware.memory_mib;
  spec.firmware = hardware.efi ? vm::Firmware::kEfi : vm::Firmware::kBios;
  spec.secure_boot = hardware.secure_boot;
  spec.tpm = hardware.tpm;

  if (package->encrypted()) {
    Report(report, job, JobPhase::kAttesting);
    // The job is the portal's for one tenant: a package sealed for another
    // tenant is not run for it (the KMS's grant check refuses it too).
    if (!job.tenant.empty() && tag.tenant != job.tenant) {
      return FailedPreconditionError("tenant_mismatch: package is sealed for tenant '" +
                                     tag.tenant + "', job is of tenant '" + job.tenant + "'");
    }
    // While the host attests, the key is released and unwrapped and the
    // exports start, each disk's encrypted file is taken from the pool and
    // grown to the disk's predicted size (they hold nothing yet; a failed
    // job removes them with its dir, after this future is joined).
    const std::string dir = VmDiskDir(vm_name);
    RETURN_IF_ERROR(MakePrivateDir(dir));
    std::vector<std::string> early_ids;
    for (size_t k : order) early_ids.push_back(package->files()[k].id);
    // Each disk's export starts now and opens the package while the host
    // attests and the key is released and unwrapped; it gets the key
    // (Export::Unlock) in LaunchEncrypted and serves nothing before. An
    // error until then destroys these: each nbdkit reads end of file for its
    // key and ends.
    ASSIGN_OR_RETURN(std::vector<std::unique_ptr<nbd_export::Export>> exports,
                     StartExports(vm_name, job.job_id, local_package, early_ids, tag.image_id,
                                  tag.tenant, /*data_key=*/nullptr, /*exit_with_parent=*/false,
                                  /*reattach=*/false));
    steps->Lap("exports_spawn");
    std::future<EarlyOverlays> early =
        std::async(std::launch::async, [this, &package, early_ids, dir] {
          EarlyOverlays out;
          for (size_t i = 0; i < early_ids.size(); ++i) {
            auto size = PredictedDiskSize(*package, early_ids[i]);
            auto secret = size.ok() && *size > 0
                              ? overlay_pool_->Take(dir + "/d" + std::to_string(i) + ".qcow2",
                                                    *size)
                              : StatusOr<SecretBytes>(UnknownError("no size"));
            out.sizes.push_back(secret.ok() ? *size : 0);
            out.secrets.push_back(secret.ok() ? *std::move(secret) : SecretBytes());
          }
          return out;
        });
    ReleaseRequest request;
    request.job_id = job.job_id;
    request.attempt = job.attempt;
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
    steps->Lap("checks");
    ASSIGN_OR_RETURN(crypto::Bytes nonce, kms_->Nonce());
    ASSIGN_OR_RETURN(request.evidence, tpm_->Attest(nonce, options_.pcr_selection));
    steps->Lap("attest");
    ASSIGN_OR_RETURN(ReleasedKey released, kms_->Release(request));
    steps->Lap("release");

    Report(report, job, JobPhase::kDecrypting);
    ASSIGN_OR_RETURN(SecretBytes data_key,
                     tpm_->Decrypt(released.rewrapped_key, released.label));
    steps->Lap("unwrap");
    return LaunchEncrypted(job, vm_name, order, local_package, *package, data_key, released,
                           spec, report, steps, &early, &exports);
  }

  // A plain package (allow_plain_images): the customer stored it in clear;
  // its boot disk is copied out as it is.
  const ovf::FileRef& boot = package->files()[order.front()];
  ASSIGN_OR_RETURN(std::optional<vm::DiskFormat> declared_format, DeclaredFormat(boot));
  ASSIGN_OR_RETURN(std::string disk_path, vms_->DiskPath(vm_name));
  {
    ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(env_, disk_path, 0600));
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
    RETURN_IF_ERROR(out->Commit());
  }
  if (!local_package.empty()) {
    (void)env_->RemoveFile(local_package);
    (void)::rmdir(VmDiskDir(vm_name).c_str());  // only when nothing else is in it
  }
  // Before any qemu process starts; a refusal removes the disk (RunJob).
  ASSIGN_OR_RETURN(vm::DiskFormat disk_format, InspectDisk(env_, disk_path, declared_format));
  Report(report, job, JobPhase::kLaunching);
  spec.disk_path = disk_path;
  spec.disk_format = disk_format;
  ASSIGN_OR_RETURN(vm::VmInfo info, vms_->Launch(spec));
  Report(report, job, JobPhase::kRunning, "", &info);
  return info;
}

Status JobRunner::StopVm(const std::string&) { return UnimplementedError("StopVm"); }
Status JobRunner::DeleteVm(const std::string&) { return UnimplementedError("DeleteVm"); }
StatusOr<std::vector<vm::VmInfo>> JobRunner::ListVms() { return UnimplementedError("ListVms"); }
std::vector<DiskEvent> JobRunner::DiskEvents() { return {}; }

StatusOr<std::vector<std::unique_ptr<nbd_export::Export>>> HostAgent::StartExports(
    const std::string& vm_name, const std::string& job_id, const std::string& package_path,
    const std::vector<std::string>& disk_ids, const std::string& image_id,
    const std::string& tenant, const SecretBytes* data_key, bool exit_with_parent,
    bool reattach) {
  if (options_.nbd_plugin_path.empty()) {
    return FailedPreconditionError("host agent: no nbd_plugin_path: cannot serve encrypted disks");
  }
  // Each export runs as the VM's own user (the one its qemu runs as): a
  // compromised nbdkit reaches its VM's files, not the agent's or another
  // VM's. Its state dir (socket, cache, log) becomes that user's; a fetched
  // package it reads too (ciphertext).
  ASSIGN_OR_RETURN(const uint32_t uid, vms_->UserFor(vm_name));
  if (uid != 0 && !package_path.empty()) {
    RETURN_IF_ERROR(vms_->GrantAccess(vm_name, package_path));
  }
  std::vector<std::unique_ptr<nbd_export::Export>> out;
  for (size_t i = 0; i < disk_ids.size(); ++i) {
    nbd_export::ExportOptions eo;
    eo.nbdkit_path = options_.nbdkit_path;
    eo.plugin_path = options_.nbd_plugin_path;
    eo.state_dir = VmDiskDir(vm_name) + "/d" + std::to_string(i);
    if (uid != 0) {
      RETURN_IF_ERROR(MakePrivateDir(eo.state_dir));
      RETURN_IF_ERROR(vms_->GrantAccess(vm_name, eo.state_dir));
      eo.run_as_uid = uid;
      eo.run_as_groups = vms_->UserGroups();
    }
    if (!package_path.empty()) {
      eo.package_path = package_path;
    } else {
      eo.remote.url = options_.portal_url + "/v1/hosts/jobs/" + job_id + "/package";
      eo.remote.ca_file = options_.ca_file;
      eo.remote.cert_file = options_.cert_file;
      eo.remote.key_file = options_.key_file;
    }
    eo.disk_id = disk_ids[i];
    eo.expected_image_id = image_id;
    eo.expected_tenant = tenant;
    eo.prefetch = options_.prefetch;
    eo.exit_with_parent = exit_with_parent;
    auto e = data_key == nullptr ? nbd_export::Export::Spawn(eo)
             : reattach          ? nbd_export::Export::Reattach(eo, *data_key)
                                 : nbd_export::Export::Start(eo, *data_key);
    if (!e.ok()) return e.status().WithPrefix("disk " + disk_ids[i]);
    out.push_back(*std::move(e));
  }
  return out;
}

StatusOr<vm::VmInfo> HostAgent::LaunchEncrypted(const Job& job, const std::string& vm_name,
                                                const std::vector<size_t>& order,
                                                const std::string& fetched_package,
                                                const ovf::Package& package,
                                                const SecretBytes& data_key,
                                                const ReleasedKey& released,
                                                const vm::VmSpec& base,
                                                const JobUpdateFn& report, StepTimer* steps,
                                                std::future<EarlyOverlays>* early,
                                                SpawnedExports* spawned) {
  // Made by RunJobSteps before the exports were spawned; not chmod'ed again
  // here: the exports (as the VM's user) are still opening it.
  const std::string dir = VmDiskDir(vm_name);
  const bool stream = options_.launch_mode == LaunchMode::kStream;
  // A fetched package (ciphertext) stays beside the exports while they read it.
  const std::string package_path = fetched_package;
  internal::LaunchRecord record;
  record.vm_name = vm_name;
  record.job_id = job.job_id;
  record.mode = LaunchModeName(options_.launch_mode);
  record.package_path = package_path;
  if (package_path.empty()) {
    record.url = options_.portal_url + "/v1/hosts/jobs/" + job.job_id + "/package";
  }
  record.image_id = package.tag().image_id;
  record.tenant = package.tag().tenant;
  std::vector<std::string> ids;
  for (size_t k : order) ids.push_back(package.files()[k].id);

  // The exports started while the job attested get the key now. Copy mode
  // needs them only while it converts.
  if (spawned->size() != ids.size()) return InternalError("exports: one per disk expected");
  for (size_t i = 0; i < ids.size(); ++i) {
    RETURN_IF_ERROR((*spawned)[i]->Unlock(data_key).WithPrefix("disk " + ids[i]));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    exports_[vm_name] = std::move(*spawned);
  }
  steps->Lap("exports");
  std::vector<std::string> sockets;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : exports_[vm_name]) sockets.push_back(e->socket_path());
  }
  // Every disk is inspected through its export before any qemu opens it.
  std::vector<disk_format::DiskInfo> infos;
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSIGN_OR_RETURN(std::optional<vm::DiskFormat> declared,
                     DeclaredFormat(package.files()[order[i]]));
    ASSIGN_OR_RETURN(disk_format::DiskInfo info, InspectExport(sockets[i], declared));
    infos.push_back(info);
  }
  steps->Lap("inspect");

  // Each disk's encrypted file (stream: the overlay over the export; copy:
  // the whole disk) comes from the pool with its own secret (slot i), so no
  // launch runs qemu-img's LUKS benchmark.
  std::vector<SecretBytes> disk_secrets;
  if (stream) record.data_key = {released.rewrapped_key, released.label};

  vm::QemuImgOptions qo;
  qo.binary = options_.qemu_img_path;
  EarlyOverlays taken = early->get();
  steps->Lap("overlays_wait");
  vm::VmSpec spec = base;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string file = dir + "/d" + std::to_string(i) + ".qcow2";
    vm::VmDisk disk;
    // The first in the descriptor's order boots (DiskOrder).
    disk.boot = i == 0;
    if (taken.sizes[i] == infos[i].virtual_size && taken.sizes[i] != 0) {
      disk_secrets.push_back(std::move(taken.secrets[i]));
    } else {
      // The disk is not the size its sealed length gave (a qcow2 image, or
      // no prediction): a file of the inspected size instead.
      if (taken.sizes[i] != 0) RETURN_IF_ERROR(vm::ShredFile(file));
      auto secret = overlay_pool_->Take(file, infos[i].virtual_size);
      if (!secret.ok()) return secret.status().WithPrefix(stream ? "overlay" : "copy");
      disk_secrets.push_back(*std::move(secret));
    }
    disk.secret_slot = static_cast<uint32_t>(i);
    if (stream) {
      disk.path = sockets[i];
      disk.source = vm::DiskSource::kNbd;
      disk.format = VmFormat(infos[i].format);
      disk.overlay_path = file;
    } else {
      // Into the pool's overlay, grown to the disk's size (convert -n): a
      // failure leaves ciphertext only, removed with the VM's dir (RunJob).
      RETURN_IF_ERROR(vm::ConvertIntoEncrypted(qo, sockets[i], VmFormat(infos[i].format), file,
                                               disk_secrets[i])
                          .WithPrefix("copy"));
      disk.path = file;
      disk.format = vm::DiskFormat::kQcow2;
      disk.encrypted = true;
    }
    record.disks.push_back({ids[i], dir + "/d" + std::to_string(i),
                            vm::DiskFormatName(disk.format), file});
    spec.disks.push_back(disk);
  }
  steps->Lap(stream ? "overlays" : "copy");
  if (!stream) {
    // The copies are complete: the exports, their caches and the package go.
    StopExports(vm_name);
    std::error_code ec;
    for (size_t i = 0; i < ids.size(); ++i) {
      std::filesystem::remove_all(dir + "/d" + std::to_string(i), ec);
    }
    std::filesystem::remove_all(dir + "/meta", ec);
    if (!package_path.empty()) (void)env_->RemoveFile(package_path);
    record.package_path.clear();
  }
  // Each disk's secret, wrapped to this host's TPM binding key, is kept
  // in the launch record (disk_secrets, in slot order).
  std::vector<const SecretBytes*> secret_ptrs;
  for (size_t k = 0; k < disk_secrets.size(); ++k) {
    ASSIGN_OR_RETURN(internal::TpmWrapped wrapped,
                     WrapToBindingKey(tpm_, disk_secrets[k],
                                      DiskSecretPurpose(vm_name) + "/" + std::to_string(k)));
    record.disk_secrets.push_back(std::move(wrapped));
    secret_ptrs.push_back(&disk_secrets[k]);
  }
  RETURN_IF_ERROR(WriteStringToFileAtomic(env_, dir + "/launch.json",
                                          internal::SerializeLaunchRecord(record), 0600));
  steps->Lap("wraps_record");

  Report(report, job, JobPhase::kLaunching);
  ASSIGN_OR_RETURN(vm::VmInfo info, vms_->Launch(spec, secret_ptrs));
  steps->Lap("qemu");
  Report(report, job, JobPhase::kRunning, "", &info);
  return info;
}

void HostAgent::StopExports(const std::string& name) {
  std::vector<std::unique_ptr<nbd_export::Export>> exports;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = exports_.find(name);
    if (it != exports_.end()) {
      exports = std::move(it->second);
      exports_.erase(it);
    }
  }
  for (auto& e : exports) (void)e->Stop();
  // Exports this process does not hold (an earlier agent's).
  std::error_code ec;
  const std::string dir = VmDiskDir(name);
  if (!std::filesystem::is_directory(dir, ec)) return;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const std::string sub = entry.path().filename().string();
    if (sub.size() >= 2 && sub[0] == 'd' && entry.is_directory()) {
      (void)nbd_export::Export::StopServing(entry.path().string());
    }
  }
}

Status HostAgent::StopVm(const std::string& name) {
  auto vm = vms_->Get(name);
  const bool has_disks = std::filesystem::exists(VmDiskDir(name) + "/launch.json");
  if (!vm.ok() && !has_disks) return vm.status();
  if (vm.ok()) RETURN_IF_ERROR(vms_->Stop(name));
  StopExports(name);
  return OkStatus();
}

Status HostAgent::DeleteVm(const std::string& name) {
  auto vm = vms_->Get(name);
  std::error_code ec;
  const bool has_disks = std::filesystem::exists(VmDiskDir(name), ec);
  if (!vm.ok() && !has_disks) return vm.status();
  if (vm.ok()) RETURN_IF_ERROR(vms_->Delete(name));
  StopExports(name);
  std::filesystem::remove_all(VmDiskDir(name), ec);
  if (ec) return InternalError("remove " + VmDiskDir(name) + ": " + ec.message());
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = events_seen_.begin(); it != events_seen_.end();) {
      it = it->first.starts_with(VmDiskDir(name) + "/") ? events_seen_.erase(it) : std::next(it);
    }
  }
  return OkStatus();
}

StatusOr<int> HostAgent::SweepOrphans() {
  int swept = 0;
  std::error_code ec;
  if (!std::filesystem::is_directory(options_.disk_dir, ec)) return 0;
  std::vector<std::string> dirs;
  for (const auto& entry : std::filesystem::directory_iterator(options_.disk_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.size() != 16 ||
        name.find_first_not_of("0123456789abcdef") != std::string::npos) {
      continue;  // not a VM disk dir of ours
    }
    dirs.push_back(entry.path().string());
  }
  if (ec) return InternalError("list " + options_.disk_dir + ": " + ec.message());
  for (const std::string& dir : dirs) {
    bool orphan = true;
    auto text = ReadFileToString(env_, dir + "/launch.json");
    if (text.ok()) {
      auto record = internal::ParseLaunchRecord(*text);
      if (record.ok() && VmDiskDir(record->vm_name) == dir) {
        auto vm = vms_->Get(record->vm_name);
        orphan = !vm.ok() && vm.status().code() == StatusCode::kNotFound;
      }
    }
    if (!orphan) continue;
    std::error_code sub_ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, sub_ec)) {
      const std::string sub = entry.path().filename().string();
      if (sub.size() >= 2 && sub[0] == 'd' && entry.is_directory()) {
        (void)nbd_export::Export::StopServing(entry.path().string());
      }
    }
    std::filesystem::remove_all(dir, sub_ec);
    if (sub_ec) return InternalError("remove " + dir + ": " + sub_ec.message());
    ++swept;
  }
  return swept;
}

StatusOr<int> HostAgent::ReattachVms() {
  int reattached = 0;
  Status first_error;
  std::error_code ec;
  if (!std::filesystem::is_directory(options_.disk_dir, ec)) return 0;
  for (const auto& entry : std::filesystem::directory_iterator(options_.disk_dir, ec)) {
    const std::string path = entry.path().string() + "/launch.json";
    if (!env_->FileExists(path)) continue;
    auto text = ReadFileToString(env_, path);
    if (!text.ok()) continue;
    auto record = internal::ParseLaunchRecord(*text);
    if (!record.ok() || record->mode != "stream" || record->data_key.wrapped.empty()) continue;
    if (VmDiskDir(record->vm_name) != entry.path().string()) continue;
    auto vm = vms_->Get(record->vm_name);
    if (!vm.ok() || vm->state != vm::VmRunState::kRunning) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (exports_.count(record->vm_name)) continue;
    }
    Status s = [&]() -> Status {
      ASSIGN_OR_RETURN(SecretBytes data_key,
                       tpm_->Decrypt(record->data_key.wrapped, record->data_key.label));
      std::vector<std::string> ids;
      for (const auto& d : record->disks) ids.push_back(d.id);
      ASSIGN_OR_RETURN(auto exports,
                       StartExports(record->vm_name, record->job_id, record->package_path, ids,
                                    record->image_id, record->tenant, &data_key,
                                    /*exit_with_parent=*/false, /*reattach=*/true));
      // A new nbdkit made a new socket (and Export::Start narrowed its
      // directory): the VM's user must reach it again to reconnect.
      for (const auto& e : exports) {
        RETURN_IF_ERROR(vms_->GrantAccess(record->vm_name, e->socket_path()));
      }
      std::lock_guard<std::mutex> lock(mu_);
      exports_[record->vm_name] = std::move(exports);
      return OkStatus();
    }();
    if (s.ok()) {
      ++reattached;
    } else if (first_error.ok()) {
      first_error = s.WithPrefix("reattach " + record->vm_name);
    }
  }
  if (reattached == 0 && !first_error.ok()) return first_error;
  return reattached;
}

std::vector<DiskEvent> HostAgent::DiskEvents() {
  std::vector<DiskEvent> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [name, exports] : exports_) {
    auto text = ReadFileToString(env_, VmDiskDir(name) + "/launch.json");
    std::string job_id;
    if (text.ok()) {
      auto record = internal::ParseLaunchRecord(*text);
      if (record.ok()) job_id = record->job_id;
    }
    for (size_t i = 0; i < exports.size(); ++i) {
      auto events = exports[i]->Events();
      if (!events.ok()) continue;
      const std::string key = VmDiskDir(name) + "/d" + std::to_string(i);
      size_t& seen = events_seen_[key];
      for (size_t k = seen; k < events->size(); ++k) {
        const auto& e = (*events)[k];
        out.push_back({name, job_id, e.fields.value("disk", ""), e.event, DumpJson(e.fields)});
      }
      seen = events->size();
    }
  }
  return out;
}

std::vector<std::string> HostAgent::ExportDirsForTesting(const std::string& name) {
  std::vector<std::string> out;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = exports_.find(name);
  if (it == exports_.end()) return out;
  for (size_t i = 0; i < it->second.size(); ++i) {
    out.push_back(VmDiskDir(name) + "/d" + std::to_string(i));
  }
  return out;
}

HostAgent::~HostAgent() {
  // The exports serve running VMs, which outlive the agent: leave them.
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [name, exports] : exports_) {
    for (auto& e : exports) e->Detach();
  }
}

StatusOr<std::vector<vm::VmInfo>> HostAgent::ListVms() { return vms_->List(); }

}  // namespace vmseal::host
