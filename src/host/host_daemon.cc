#include "host/host_daemon.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "crypto/primitives.h"
#include "crypto/x509.h"

namespace vmseal::host {
namespace {

Status MakePrivateDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return InternalError("create " + dir + ": " + ec.message());
  if (::chmod(dir.c_str(), 0700) != 0) return ErrnoToStatus(errno, "chmod", dir);
  return OkStatus();
}

// Retries a call that failed with UNAVAILABLE once: the HTTPS client keeps
// connections alive and the KMS closes idle ones, so the first call after a
// pause (a job after minutes of quiet) would otherwise fail on a stale socket.
// Release is not retried: it consumes its nonce; the Nonce call before it has
// already refreshed the connection.
class RetryOnceKms final : public KmsApi {
 public:
  explicit RetryOnceKms(std::unique_ptr<KmsApi> inner) : inner_(std::move(inner)) {}
  StatusOr<attest::CredentialChallenge> BeginEnrollment(
      const attest::EnrollmentRequest& request) override {
    return Retry([&] { return inner_->BeginEnrollment(request); });
  }
  Status CompleteEnrollment(const SecretBytes& secret) override {
    return Retry([&] { return inner_->CompleteEnrollment(secret); });
  }
  StatusOr<crypto::Bytes> Nonce() override {
    return Retry([&] { return inner_->Nonce(); });
  }
  Status Attest(const attest::Evidence& evidence) override {
    return Retry([&] { return inner_->Attest(evidence); });
  }
  StatusOr<ReleasedKey> Release(const ReleaseRequest& request) override {
    return inner_->Release(request);
  }

 private:
  template <typename F>
  static auto Retry(F&& call) -> decltype(call()) {
    auto result = call();
    if (::vmseal::internal::AsStatus(result).code() != StatusCode::kUnavailable) return result;
    return call();
  }
  std::unique_ptr<KmsApi> inner_;
};

}  // namespace

HostDaemon::~HostDaemon() {
  // The VM manager's watcher outlives the service: stop forwarding first.
  std::lock_guard<std::mutex> lock(end_sink_->mu);
  end_sink_->service = nullptr;
}

std::string DefaultNbdPluginPath() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::string name = "nbdkit-vmseal-plugin.so";
  std::vector<std::filesystem::path> candidates;
  if (!ec) {
    candidates.push_back(exe.parent_path() / name);
    candidates.push_back(exe.parent_path() / "src/nbd_export" / name);
  }
  candidates.push_back(std::filesystem::path("/usr/lib/vmseal") / name);
  for (const auto& c : candidates) {
    if (std::filesystem::is_regular_file(c, ec)) return c.string();
  }
  return "";
}

StatusOr<std::string> HostIdFromCertificate(Env* env, const std::string& cert_file) {
  ASSIGN_OR_RETURN(std::string pem, ReadFileToString(env, cert_file));
  ASSIGN_OR_RETURN(crypto::Certificate cert, crypto::Certificate::FromPem(pem));
  std::string cn = cert.SubjectCommonName();
  if (cn.empty()) return InvalidArgumentError(cert_file + ": the host certificate has no CN");
  return cn;
}

StatusOr<int> RemoveStaleFiles(vm::VmManager* vms, const std::string& image_store_dir,
                               const std::string& work_dir) {
  int removed = 0;
  auto sweep = [&](const std::string& dir, auto&& is_stale) -> Status {
    std::error_code ec;
    if (!std::filesystem::is_directory(dir, ec)) return OkStatus();  // nothing yet
    std::filesystem::directory_iterator it(dir, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      std::error_code rm;
      if (is_stale(name) && std::filesystem::remove(it->path(), rm)) ++removed;
      if (rm) return InternalError("remove " + it->path().string() + ": " + rm.message());
    }
    if (ec) return InternalError("list " + dir + ": " + ec.message());
    return OkStatus();
  };
  RETURN_IF_ERROR(sweep(image_store_dir + "/disks", [&](const std::string& name) {
    if (name.starts_with(".") && name.find(".tmp-") != std::string::npos) return true;
    if (!name.ends_with(".img")) return false;
    auto vm = vms->Get(name.substr(0, name.size() - 4));
    return !vm.ok() && vm.status().code() == StatusCode::kNotFound;
  }));
  RETURN_IF_ERROR(sweep(work_dir, [](const std::string&) { return true; }));
  return removed;
}

StatusOr<std::unique_ptr<HostDaemon>> HostDaemon::Create(const HostConfig& config,
                                                         const KmsFactory& kms_factory) {
  if (!kms_factory) return InvalidArgumentError("host: no KMS client");
  std::unique_ptr<HostDaemon> d(new HostDaemon());
  Env* env = Env::Default();
  ASSIGN_OR_RETURN(d->host_id_, HostIdFromCertificate(env, config.cert_file));
  RETURN_IF_ERROR(MakePrivateDir(config.state_dir));
  RETURN_IF_ERROR(MakePrivateDir(config.image_store_dir));

  ASSIGN_OR_RETURN(d->tpm_, tpm::SecurityEngine::Create(
                                {.tcti = config.tpm_tcti, .state_dir = config.state_dir + "/tpm"}));
  vm::VmManagerOptions vo;
  vo.state_dir = config.image_store_dir;
  vo.qemu_binary = config.qemu_binary;
  ASSIGN_OR_RETURN(vo.accel, vm::ParseAccel(config.accel));
  if (config.vm_user_count > 0 && ::geteuid() == 0) {
    vo.vm_users = {config.vm_user_first_id, config.vm_user_count};
    spdlog::info("vm users: each VM's qemu runs as its own uid in {}..{} (group {} traverses)",
                 config.vm_user_first_id + 1,
                 config.vm_user_first_id + config.vm_user_count - 1, config.vm_user_first_id);
  } else if (config.vm_user_count > 0) {
    spdlog::warn("vm users off: the agent is not root (uid {}), so qemu runs as the agent's "
                 "user and can read what the agent can", ::geteuid());
  } else {
    spdlog::warn("vm users off (vm_user_ids.count 0): qemu runs as the agent's user");
  }
  // VM ends go to the service (created below) and on to the portal at once.
  vo.on_end = [sink = d->end_sink_](const std::string& name, const vm::VmEnd& end) {
    std::lock_guard<std::mutex> lock(sink->mu);
    if (sink->service != nullptr) sink->service->OnVmEnded(name, end);
  };
  ASSIGN_OR_RETURN(d->vms_, vm::VmManager::Create(vo));
  const std::string work_dir = config.state_dir + "/work";
  ASSIGN_OR_RETURN(int removed, RemoveStaleFiles(d->vms_.get(), config.image_store_dir, work_dir));
  if (removed > 0) spdlog::info("removed {} stale file(s) left by an earlier run", removed);

  KmsClientSettings ks{config.kms_url, config.ca_file, config.cert_file, config.key_file,
                       d->host_id_};
  ASSIGN_OR_RETURN(auto kms, kms_factory(ks));
  d->kms_ = std::make_unique<RetryOnceKms>(std::move(kms));
  PortalClientOptions po;
  po.url = config.portal_url;
  po.ca_cert_file = config.ca_file;
  po.cert_file = config.cert_file;
  po.key_file = config.key_file;
  ASSIGN_OR_RETURN(d->portal_, PortalClient::Create(po));

  HostAgentOptions ao;
  ao.work_dir = work_dir;
  ao.pcr_selection = config.pcr_selection;
  ao.allow_plain_images = config.allow_plain_images;
  ASSIGN_OR_RETURN(ao.launch_mode, ParseLaunchMode(config.launch_mode));
  ao.disk_dir = config.image_store_dir + "/vd";
  ao.nbd_plugin_path = config.nbd_plugin.empty() ? DefaultNbdPluginPath() : config.nbd_plugin;
  // Each export's nbdkit runs as its VM's user and loads the plugin by path:
  // a checkout under a private directory (/root, mktemp -d) must let them
  // through, or every streamed launch fails inside nbdkit.
  // A plugin that is not there fails the encrypted launches, with its path.
  if (Status s = d->vms_->LetVmUsersRead(ao.nbd_plugin_path); s.code() == StatusCode::kNotFound) {
    spdlog::warn("nbd_plugin {} not found: encrypted images cannot launch", ao.nbd_plugin_path);
  } else {
    RETURN_IF_ERROR(s.WithPrefix("nbd_plugin"));
  }
  ao.nbdkit_path = config.nbdkit_binary;
  ao.qemu_img_path = config.qemu_img_binary;
  ao.overlay_pool_target = config.overlay_pool;
  if (!config.fetch_whole_package) {
    ao.portal_url = config.portal_url;
    ao.ca_file = config.ca_file;
    ao.cert_file = config.cert_file;
    ao.key_file = config.key_file;
  }
  ASSIGN_OR_RETURN(d->agent_, HostAgent::Create(ao, d->tpm_.get(), d->vms_.get(), d->kms_.get(),
                                                d->portal_.get()));
  // What a crash left of VMs that are gone: their exports and overlays.
  ASSIGN_OR_RETURN(int swept, d->agent_->SweepOrphans());
  if (swept > 0) spdlog::info("removed the exports and disks of {} VM(s) that no longer exist", swept);
  // VMs an earlier agent launched in stream mode get their exports back.
  auto reattached = d->agent_->ReattachVms();
  if (!reattached.ok()) {
    spdlog::warn("re-attaching the disks of running VMs: {}", reattached.status().ToString());
  } else if (*reattached > 0) {
    spdlog::info("re-attached the disks of {} running VM(s)", *reattached);
  }

  HostServiceOptions so;
  so.registration.capacity = config.capacity.value_or(DetectCapacity());
  so.registration.tags = config.tags;
  so.heartbeat_interval_ms = static_cast<int64_t>(config.heartbeat_interval_seconds * 1000);
  so.reattest_interval_ms = static_cast<int64_t>(config.reattest_interval_seconds * 1000);
  so.poll_interval_ms = static_cast<int64_t>(config.poll_interval_seconds * 1000);
  so.enrollment_marker_path = config.state_dir + "/enrolled";
  // The enrollment holds for this KMS, this host id and this AK.
  crypto::Sha256Hasher h;
  h.Update(config.kms_url + "\n" + d->host_id_ + "\n");
  h.Update(d->tpm_->AkPublic());
  so.enrollment_id = crypto::HexEncode(h.Finish()) + "\n";
  ASSIGN_OR_RETURN(d->service_, HostService::Create(so, d->agent_.get(), d->portal_.get()));
  {
    std::lock_guard<std::mutex> lock(d->end_sink_->mu);
    d->end_sink_->service = d->service_.get();
  }
  spdlog::info("host {} ready: portal {}, KMS {}, TPM {}, image store {}", d->host_id_,
               config.portal_url, config.kms_url, config.tpm_tcti, config.image_store_dir);
  return d;
}

}  // namespace vmseal::host
