// What the host agent keeps about a launched VM so that a restarted agent
// can serve its disks again (docs/host.md "Launch records"). Internal.
//
// Secrets are kept only wrapped to the host TPM's binding key: the data key
// as the KMS re-wrapped it, the VM's disk secret RSA-OAEP-wrapped by the
// agent to the binding key's public half. Neither is ever stored in clear.
#ifndef VMSEAL_HOST_INTERNAL_LAUNCH_RECORD_H_
#define VMSEAL_HOST_INTERNAL_LAUNCH_RECORD_H_

#include <string>
#include <vector>

#include "base/status.h"
#include "crypto/primitives.h"

namespace vmseal::host::internal {

inline constexpr int kLaunchRecordVersion = 1;

// A secret wrapped to the TPM binding key: SecurityEngine::Decrypt(wrapped,
// label) returns it.
struct TpmWrapped {
  crypto::Bytes wrapped;
  crypto::Bytes label;  // ends with a zero byte
};

struct LaunchedDisk {
  std::string id;          // ovf:id
  std::string export_dir;  // the export's state dir (stream mode)
  std::string format;      // "raw" / "qcow2"
  std::string file;        // overlay (stream) or encrypted copy (copy)
};

struct LaunchRecord {
  std::string vm_name;
  std::string job_id;
  std::string mode;  // "stream" or "copy"
  // The export source: a URL (with the host's TLS files from its config) or
  // a local package path.
  std::string url;
  std::string package_path;
  std::string image_id;
  std::string tenant;
  TpmWrapped data_key;     // stream mode only
  // The disk secrets in VmDisk::secret_slot order: one per overlay in
  // stream mode (each from the overlay pool), one for every copy in copy
  // mode. At least one.
  std::vector<TpmWrapped> disk_secrets;
  std::vector<LaunchedDisk> disks;
};

std::string SerializeLaunchRecord(const LaunchRecord& record);
// DATA_LOSS "launch record: ..." when malformed.
StatusOr<LaunchRecord> ParseLaunchRecord(const std::string& text);

}  // namespace vmseal::host::internal

#endif  // VMSEAL_HOST_INTERNAL_LAUNCH_RECORD_H_
