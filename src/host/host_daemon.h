// `vmseal host serve` assembled from its config: the TPM security engine,
// the VM manager over the image store, the KMS and portal clients, the host
// agent and the service loop. The CLI only parses flags and calls this.
#ifndef VMSEAL_HOST_HOST_DAEMON_H_
#define VMSEAL_HOST_HOST_DAEMON_H_

#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "base/status.h"
#include "host/host_agent.h"
#include "host/host_config.h"
#include "host/host_service.h"
#include "host/kms_api.h"
#include "host/portal_client.h"
#include "tpm/security_engine.h"
#include "vm/vm_manager.h"

namespace vmseal::host {

// How to reach the KMS (mirrors HttpsKmsClientOptions).
struct KmsClientSettings {
  std::string url;
  std::string ca_cert_file;
  std::string cert_file;
  std::string key_file;
  std::string host_id;
};
using KmsFactory = std::function<StatusOr<std::unique_ptr<KmsApi>>(const KmsClientSettings&)>;

// nbdkit-vmseal-plugin.so beside the running binary (or in
// src/nbd_export/ under its directory: the build tree), else
// /usr/lib/vmseal/; "" when none exists.
std::string DefaultNbdPluginPath();

// The host id is the CN of the host certificate in `cert_file`.
StatusOr<std::string> HostIdFromCertificate(Env* env, const std::string& cert_file);

// Removes what a crash may have left in the image store and work dir:
// half-written (temp) disks, disks of no known VM, and fetched packages.
// Returns how many files it removed.
StatusOr<int> RemoveStaleFiles(vm::VmManager* vms, const std::string& image_store_dir,
                               const std::string& work_dir);

class HostDaemon {
 public:
  static StatusOr<std::unique_ptr<HostDaemon>> Create(const HostConfig& config,
                                                      const KmsFactory& kms_factory);
  ~HostDaemon();
  // Runs the service until Stop (see HostService::Run).
  Status Run() { return service_->Run(); }
  void Stop() { service_->Stop(); }
  HostService* service() { return service_.get(); }
  const std::string& host_id() const { return host_id_; }
  vm::VmManager* vms() { return vms_.get(); }
  HostAgent* agent() { return agent_.get(); }
  // Tests extend PCRs through it (a "tampered" host). Not thread-safe with a
  // running service: drive the service's *Once steps from the same thread.
  tpm::SecurityEngine* SecurityEngineForTesting() { return tpm_.get(); }

 private:
  HostDaemon() = default;
  // Where the VM manager's on_end goes: the service once it exists.
  struct EndSink {
    std::mutex mu;
    HostService* service = nullptr;
  };
  std::shared_ptr<EndSink> end_sink_ = std::make_shared<EndSink>();
  std::string host_id_;
  std::unique_ptr<tpm::SecurityEngine> tpm_;
  std::unique_ptr<vm::VmManager> vms_;
  std::unique_ptr<KmsApi> kms_;
  std::unique_ptr<PortalClient> portal_;
  std::unique_ptr<HostAgent> agent_;
  std::unique_ptr<HostService> service_;
};

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_HOST_DAEMON_H_
