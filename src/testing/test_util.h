// Helpers for hermetic tests: temp dirs, the vmseal binary, status matchers.
#ifndef VMSEAL_TESTING_TEST_UTIL_H_
#define VMSEAL_TESTING_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::testing {

// A fresh directory under $TMPDIR, removed with its content on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The source tree (VMSEAL_SOURCE_DIR, set by CTest) and the built binary
// (VMSEAL_BINARY).
std::string SourceDir();
std::string VmsealBinary();

// Runs argv (no shell) and returns its exit code; stdout+stderr go to
// *output when given. Aborts the test after `timeout_seconds`.
int RunCommand(const std::vector<std::string>& argv, std::string* output = nullptr,
               int timeout_seconds = 300);

// Writes `data` to `path` (test setup only).
void WriteFileOrDie(const std::string& path, const std::string& data);
std::string ReadFileOrDie(const std::string& path);

// Names of the entries in `dir` (no "." or "..").
std::vector<std::string> ListDir(const std::string& dir);

// What a host's disk directory `vd` holds for jobs: its entries except the
// overlay pool (vd/pool, the host's, not a job's; vm/overlay_pool.h), plus
// anything in the pool that is not one of the pool's own overlays ("o-*"),
// as "pool/<name>".
std::vector<std::string> ListJobDiskDirs(const std::string& vd);

// Opens `n` TCP connections to 127.0.0.1:`port` back to back (then closes
// them) and returns how many connections the kernel dropped meanwhile for a
// full listen queue (TcpExt ListenOverflows of this network namespace), or
// -1 if the counter or a connection is unavailable.
int64_t ListenDropsInConnectBurst(int port, int n);

}  // namespace vmseal::testing

// EXPECT_OK(status_or_statusor) / ASSERT_OK(...)
#define EXPECT_OK(expr) EXPECT_TRUE(::vmseal::internal::AsStatus(expr).ok()) \
    << ::vmseal::internal::AsStatus(expr).ToString()
#define ASSERT_OK(expr) ASSERT_TRUE(::vmseal::internal::AsStatus(expr).ok()) \
    << ::vmseal::internal::AsStatus(expr).ToString()
// Checks the code and that the message contains `substr`.
#define EXPECT_STATUS(expr, expected_code, substr)                                  \
  do {                                                                              \
    ::vmseal::Status vmseal_s_ = ::vmseal::internal::AsStatus(expr);                 \
    EXPECT_EQ(vmseal_s_.code(), expected_code) << vmseal_s_.ToString();             \
    EXPECT_NE(vmseal_s_.message().find(substr), std::string::npos)                  \
        << vmseal_s_.ToString();                                                    \
  } while (0)

#endif  // VMSEAL_TESTING_TEST_UTIL_H_
