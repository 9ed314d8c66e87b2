// Process-level: `vmseal csp serve` and the customer commands against it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

// Runs `vmseal csp serve` on a free loopback port; stops it by pid.
class Portal {
 public:
  explicit Portal(const TempDir& dir) {
    const std::string port_file = dir.File("port");
    pid_ = ::fork();
    if (pid_ == 0) {
      std::string log = dir.File("serve.log");
      FILE* out = std::freopen(log.c_str(), "w", stderr);
      (void)out;
      ::execl(VmsealBinary().c_str(), "vmseal", "csp", "serve", "--data-dir",
              dir.File("data").c_str(), "--port", "0", "--port-file", port_file.c_str(),
              "--accept-unverified-packages", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    for (int i = 0; i < 200 && port_.empty(); ++i) {
      std::ifstream in(port_file);
      std::getline(in, port_);
      if (port_.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~Portal() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  std::string url() const { return "http://127.0.0.1:" + port_; }
  bool up() const { return !port_.empty(); }

 private:
  pid_t pid_ = -1;
  std::string port_;
};

std::string Field(const std::string& text, const std::string& name) {
  size_t at = text.find(name + ": ");
  if (at == std::string::npos) return "";
  size_t start = at + name.size() + 2;
  return text.substr(start, text.find('\n', start) - start);
}

class CspCliTest : public ::testing::Test {
 protected:
  int Customer(const std::string& session, std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", portal_.url(),
                                     "--session", dir_.File(session)};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out, 60);
  }
  // Registers and logs in a customer whose session goes to `session`.
  void SignUp(const std::string& session) {
    std::string out;
    ASSERT_EQ(Customer(session, {"register"}, &out), 0) << out;
    WriteFileOrDie(dir_.File(session + ".pw"), Field(out, "password") + "\n");
    ASSERT_EQ(Customer(session, {"login", "--login-id", Field(out, "login_id"),
                                 "--password-file", dir_.File(session + ".pw")},
                       &out),
              0)
        << out;
  }

  TempDir dir_;
  Portal portal_{dir_};
};

TEST_F(CspCliTest, CustomerRegistersUploadsListsAndLaunches) {
  ASSERT_TRUE(portal_.up());
  SignUp("alice");
  std::string pkg(3 << 20, 'p');
  WriteFileOrDie(dir_.File("pkg.bin"), pkg);
  std::string out;
  ASSERT_EQ(Customer("alice", {"upload", dir_.File("pkg.bin"), "--name", "web"}, &out), 0) << out;
  std::string image_id = out.substr(0, out.find('\n'));
  ASSERT_TRUE(image_id.starts_with("img-")) << out;
  ASSERT_EQ(Customer("alice", {"images"}, &out), 0) << out;
  EXPECT_NE(out.find(crypto::HexEncode(crypto::Sha256(pkg))), std::string::npos) << out;
  ASSERT_EQ(Customer("alice", {"launch", image_id}, &out), 0) << out;
  std::string job_id = out.substr(0, out.find(' '));
  ASSERT_EQ(Customer("alice", {"status", job_id}, &out), 0) << out;
  EXPECT_NE(out.find("queued"), std::string::npos) << out;
}

TEST_F(CspCliTest, OtherCustomerCannotLaunchTheImage) {
  ASSERT_TRUE(portal_.up());
  SignUp("alice");
  SignUp("bob");
  WriteFileOrDie(dir_.File("pkg.bin"), "sealed");
  std::string out;
  ASSERT_EQ(Customer("alice", {"upload", dir_.File("pkg.bin"), "--name", "web"}, &out), 0) << out;
  std::string image_id = out.substr(0, out.find('\n'));
  EXPECT_EQ(Customer("bob", {"launch", image_id}, &out), 5) << out;  // kExitIo for NOT_FOUND
  EXPECT_NE(out.find("no such image"), std::string::npos) << out;
  ASSERT_EQ(Customer("bob", {"images"}, &out), 0);
  EXPECT_EQ(out.find(image_id), std::string::npos) << out;
}

TEST_F(CspCliTest, CommandsWithoutLoginFailClearly) {
  ASSERT_TRUE(portal_.up());
  std::string out;
  EXPECT_NE(Customer("nobody", {"images"}, &out), 0);
  EXPECT_NE(out.find("not logged in"), std::string::npos) << out;
}

TEST(CspServeTest, ServeWithoutAVerifierRefusesToStart) {
  TempDir dir;
  std::string out;
  EXPECT_NE(RunCommand({VmsealBinary(), "csp", "serve", "--data-dir", dir.File("d"), "--port",
                        "0"},
                       &out, 30),
            0);
  EXPECT_NE(out.find("no package verifier"), std::string::npos) << out;
}

}  // namespace
}  // namespace vmseal::csp
