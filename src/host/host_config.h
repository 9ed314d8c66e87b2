// The host agent's configuration file (`vmseal host serve --config FILE`),
// a JSON object. Unknown keys are refused so that a typo does not silently
// fall back to a default. `vmseal host init` writes a skeleton.
#ifndef VMSEAL_HOST_HOST_CONFIG_H_
#define VMSEAL_HOST_HOST_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/status.h"
#include "host/portal_client.h"

namespace vmseal::host {

struct HostConfig {
  // "https://host:port" of the portal and of the KMS. Required.
  std::string portal_url;
  std::string kms_url;
  // PEM files: the vmseal CA (KMS CA: it signs the portal, KMS and host
  // certificates) and this host's client certificate and key (OU host,
  // CN = host id). Required.
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  // tpm2-tss TCTI string: "device:/dev/tpmrm0" on a real host,
  // "swtpm:path=/run/swtpm/tpm.sock" with a software TPM. Required.
  std::string tpm_tcti;
  // Agent state (TPM key blobs, enrollment marker, package downloads);
  // created mode 0700. Required.
  std::string state_dir;
  // The image store: decrypted disks (0600), VM state and serial logs;
  // created mode 0700. Required.
  std::string image_store_dir;
  // SHA-256 PCRs quoted for attestation. Default 0-7.
  std::vector<uint32_t> pcr_selection = {0, 1, 2, 3, 4, 5, 6, 7};
  // Periods, seconds. Defaults 10, 60, 2.
  double heartbeat_interval_seconds = 10;
  double reattest_interval_seconds = 60;
  double poll_interval_seconds = 2;
  // Provision packages without encryption. Default false (refused, the
  // portal moves the job).
  bool allow_plain_images = false;
  // What the host offers; missing: this machine's CPUs and memory.
  std::optional<HostCapacity> capacity;
  // Placement tags, "key=value".
  std::vector<std::string> tags;
  // "auto", "kvm" or "tcg". Default "auto".
  std::string accel = "auto";
  // qemu binary. Default "qemu-system-x86_64".
  std::string qemu_binary = "qemu-system-x86_64";
  // "stream" (default: each disk an NBD export decrypting on demand, guest
  // writes in a LUKS overlay) or "copy" (each disk decrypted into a local
  // LUKS qcow2 before boot). Neither writes plaintext to host storage.
  std::string launch_mode = "stream";
  // true: download the whole package before launch and serve the disks from
  // it; false (default): read it by HTTPS Range from the portal as the
  // guest and the background prefetch need it.
  bool fetch_whole_package = false;
  // nbdkit-vmseal-plugin.so; empty: beside the vmseal binary (also
  // src/nbd_export/ under it, the build tree) or /usr/lib/vmseal/.
  std::string nbd_plugin;
  // Empty encrypted overlays kept ready, so that a launch (stream or copy)
  // does not wait for qemu-img's LUKS benchmark (docs/vm.md "Overlay pool").
  // 0..16; 0 disables. Default 3.
  uint32_t overlay_pool = 3;
  // nbdkit and qemu-img binaries. Defaults "nbdkit", "qemu-img".
  std::string nbdkit_binary = "nbdkit";
  std::string qemu_img_binary = "qemu-img";
  // Unprivileged VMs (docs/host.md "VM users"): when the agent runs as
  // root, VM i's qemu runs as uid = gid = one id of
  // vm_user_first_id+1 .. vm_user_first_id+vm_user_count-1 (no passwd entry
  // needed) and vm_user_first_id is the group that may traverse the agent's
  // directories to the VM's own files. The range must not hold ids of
  // anything else on the host. vm_user_count 0 turns VM users off (qemu
  // then runs as the agent, as it does when the agent is not root).
  // Defaults 0x7A000000 (2046820352) and 4096.
  uint32_t vm_user_first_id = 0x7A000000u;
  uint32_t vm_user_count = 4096;
};

// Parses and validates a config. INVALID_ARGUMENT naming the key at fault.
StatusOr<HostConfig> ParseHostConfig(std::string_view json_text);
StatusOr<HostConfig> LoadHostConfig(Env* env, const std::string& path);

// A config skeleton with every key, its default and a placeholder for each
// required value, rooted at `state_root` (e.g. /var/lib/vmseal-host).
std::string HostConfigSkeleton(const std::string& state_root);

}  // namespace vmseal::host

#endif  // VMSEAL_HOST_HOST_CONFIG_H_
