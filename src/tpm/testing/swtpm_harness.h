// A software TPM (swtpm 0.7) for tests and the demo: one `swtpm socket
// --tpm2` child process per instance on unix sockets in its own temp dir,
// optionally manufactured with an EK certificate and a platform certificate
// issued by a private local CA (swtpm_localca), which plays the TPM
// manufacturer's CA. Not thread-safe.
#ifndef VMSEAL_TPM_TESTING_SWTPM_HARNESS_H_
#define VMSEAL_TPM_TESTING_SWTPM_HARNESS_H_

#include <sys/types.h>

#include <memory>
#include <string>

#include "base/status.h"

namespace vmseal::tpm::testing {

struct SwtpmOptions {
  // Run swtpm_setup first: EK (RSA + ECC) and platform certificates in NV,
  // signed by a fresh local CA in the instance's dir. Default true.
  bool create_certificates = true;
  // Bounded wait for the TPM to answer after start. Default 5 s.
  int ready_timeout_ms = 5000;
  // Where to create the instance dir; empty = $TMPDIR or /tmp.
  std::string parent_dir;
};

class Swtpm {
 public:
  // Creates the dir, manufactures the TPM if asked, starts swtpm and waits
  // until it answers. UNAVAILABLE if swtpm does not come up in time.
  static StatusOr<std::unique_ptr<Swtpm>> Start(const SwtpmOptions& options = {});

  // Stops the process (if running) and removes the dir.
  ~Swtpm();
  Swtpm(const Swtpm&) = delete;
  Swtpm& operator=(const Swtpm&) = delete;

  // Stops via the control socket (swtpm_ioctl -s), waits for the child,
  // SIGKILL after 2 s. State stays in the dir.
  Status Stop();
  // Starts the process again on the same state (PCRs reset, keys and NV kept).
  Status Restart();

  // ESAPI TCTI configuration: "swtpm:path=<dir>/tpm.sock".
  std::string tcti() const { return "swtpm:path=" + dir_ + "/tpm.sock"; }
  // PEM bundle of the local CA (root + issuing certificate); empty when the
  // TPM was manufactured without certificates.
  const std::string& ca_bundle_pem() const { return ca_bundle_pem_; }
  // The instance's directory (TPM state lives in dir()/state).
  const std::string& dir() const { return dir_; }
  pid_t pid() const { return pid_; }

 private:
  Swtpm(std::string dir, int ready_timeout_ms)
      : dir_(std::move(dir)), ready_timeout_ms_(ready_timeout_ms) {}
  Status Manufacture();
  Status Launch();

  const std::string dir_;
  const int ready_timeout_ms_;
  std::string ca_bundle_pem_;
  pid_t pid_ = -1;
};

}  // namespace vmseal::tpm::testing

#endif  // VMSEAL_TPM_TESTING_SWTPM_HARNESS_H_
