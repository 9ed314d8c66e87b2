// RSA-OAEP with a TPM label against a real (software) TPM 2.0: we wrap to a
// binding key created inside swtpm, and the TPM decrypts with
// tpm2_rsadecrypt (which appends the label's zero byte itself).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "crypto/key_wrap.h"
#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

class TpmOaepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = dir_.File("tpm.sock");
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      // swtpm prints a line per client connection: keep it out of the test log.
      if (std::freopen(dir_.File("swtpm.out").c_str(), "w", stdout) == nullptr) ::_exit(126);
      ::dup2(1, 2);
      std::string state = "dir=" + dir_.path();
      std::string server = "type=unixio,path=" + socket_;
      std::string ctrl = "type=unixio,path=" + socket_ + ".ctrl";
      ::execlp("swtpm", "swtpm", "socket", "--tpm2", "--tpmstate", state.c_str(), "--server",
               server.c_str(), "--ctrl", ctrl.c_str(), "--flags", "not-need-init,startup-clear",
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::setenv("TPM2TOOLS_TCTI", ("swtpm:path=" + socket_).c_str(), 1);
    for (int i = 0; i < 200; ++i) {  // bounded: 10 s
      if (RunCommand({"tpm2_getrandom", "1"}, nullptr, 10) == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "swtpm did not become ready";
  }
  void TearDown() override {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  // Runs a tpm2-tools command and flushes transient objects (no resource
  // manager in front of swtpm).
  void Tpm(const std::vector<std::string>& argv) {
    std::string out;
    ASSERT_EQ(RunCommand(argv, &out, 60), 0) << argv[0] << ": " << out;
    RunCommand({"tpm2_flushcontext", "-t"}, &out, 10);
  }
  // Creates a decrypt-only RSA-2048 key with scheme OAEP-SHA256 and loads it.
  void CreateBindingKey() {
    Tpm({"tpm2_createprimary", "-C", "o", "-c", dir_.File("primary.ctx")});
    Tpm({"tpm2_create", "-C", dir_.File("primary.ctx"), "-G", "rsa2048:oaep-sha256:null", "-a",
         "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|decrypt", "-u",
         dir_.File("key.pub"), "-r", dir_.File("key.priv")});
    Tpm({"tpm2_load", "-C", dir_.File("primary.ctx"), "-u", dir_.File("key.pub"), "-r",
         dir_.File("key.priv"), "-c", dir_.File("key.ctx")});
    Tpm({"tpm2_readpublic", "-c", dir_.File("key.ctx"), "-f", "pem", "-o",
         dir_.File("key.pem")});
  }
  // Asks the TPM to decrypt `wrapped` with `label`; returns its exit code.
  int TpmDecrypt(const Bytes& wrapped, const std::string& label, std::string* plain) {
    WriteFileOrDie(dir_.File("wrapped.bin"), std::string(AsStringView(wrapped)));
    std::string out;
    int rc = RunCommand({"tpm2_rsadecrypt", "-c", dir_.File("key.ctx"), "-s", "oaep", "-l",
                         label, "-o", dir_.File("plain.bin"), dir_.File("wrapped.bin")},
                        &out, 60);
    RunCommand({"tpm2_flushcontext", "-t"}, &out, 10);
    if (rc == 0) *plain = ReadFileOrDie(dir_.File("plain.bin"));
    return rc;
  }

  TempDir dir_;
  std::string socket_;
  pid_t pid_ = -1;
};

TEST_F(TpmOaepTest, TpmDecryptsKeyWrappedWithTpmLabel) {
  CreateBindingKey();
  auto pub = PublicKey::FromPem(ReadFileOrDie(dir_.File("key.pem")));
  ASSERT_OK(pub);
  EXPECT_EQ(pub->type(), KeyType::kRsa2048);
  SecretBytes data_key = SecretBytes::Random(kDataKeyBytes);
  auto wrapped = RsaOaepWrap(*pub, data_key, "vmkey", OaepLabel::kTpm);
  ASSERT_OK(wrapped);
  std::string plain;
  ASSERT_EQ(TpmDecrypt(*wrapped, "vmkey", &plain), 0);
  EXPECT_EQ(HexEncode(AsBytes(plain)), HexEncode(data_key.UnsafeSpan()));
}

TEST_F(TpmOaepTest, TpmRejectsKeyWrappedWithPlainLabel) {
  CreateBindingKey();
  auto pub = PublicKey::FromPem(ReadFileOrDie(dir_.File("key.pem")));
  ASSERT_OK(pub);
  auto wrapped = RsaOaepWrap(*pub, SecretBytes::Random(kDataKeyBytes), "vmkey");
  ASSERT_OK(wrapped);
  std::string plain;
  EXPECT_NE(TpmDecrypt(*wrapped, "vmkey", &plain), 0);
}

TEST_F(TpmOaepTest, TpmRejectsKeyWrappedForAnotherLabel) {
  CreateBindingKey();
  auto pub = PublicKey::FromPem(ReadFileOrDie(dir_.File("key.pem")));
  ASSERT_OK(pub);
  auto wrapped =
      RsaOaepWrap(*pub, SecretBytes::Random(kDataKeyBytes), "image:a", OaepLabel::kTpm);
  ASSERT_OK(wrapped);
  std::string plain;
  EXPECT_NE(TpmDecrypt(*wrapped, "image:b", &plain), 0);
}

}  // namespace
}  // namespace vmseal::crypto
