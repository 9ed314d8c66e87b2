// Starts the s3rver S3-compatible test server (tools/s3, installed by
// scripts/setup.sh) on 127.0.0.1 with a free port and a temp data directory,
// and stops it by pid. s3rver parses SigV4 Authorization headers and checks
// the access key id (kS3AccessKeyId) but does not verify V4 signatures.
#ifndef VMSEAL_TESTING_S3_HARNESS_H_
#define VMSEAL_TESTING_S3_HARNESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "testing/test_util.h"

namespace vmseal::testing {

inline constexpr char kS3AccessKeyId[] = "S3RVER";
inline constexpr char kS3SecretAccessKey[] = "S3RVER";

class S3Server {
 public:
  // Starts the server with `buckets` created, waiting at most
  // `ready_timeout_seconds` for it to accept connections. FAILED_PRECONDITION
  // if s3rver is not installed (run scripts/setup.sh).
  static StatusOr<std::unique_ptr<S3Server>> Start(const std::vector<std::string>& buckets,
                                                   int ready_timeout_seconds = 30);
  // Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its data.
  ~S3Server();
  S3Server(const S3Server&) = delete;
  S3Server& operator=(const S3Server&) = delete;

  // "http://127.0.0.1:<port>".
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }

 private:
  S3Server(pid_t pid, int port, std::unique_ptr<TempDir> dir)
      : pid_(pid), port_(port), dir_(std::move(dir)) {}
  pid_t pid_;
  int port_;
  std::unique_ptr<TempDir> dir_;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
StatusOr<int> PickFreeLoopbackPort();

}  // namespace vmseal::testing

#endif  // VMSEAL_TESTING_S3_HARNESS_H_
