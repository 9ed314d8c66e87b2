// Process-level tests: the vmseal binary and Debian's xmlsec1 as an
// independent XML Encryption implementation.
#include <gtest/gtest.h>

#include <filesystem>

#include "crypto/primitives.h"
#include "ovf/ovf_test_helpers.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

namespace fs = std::filesystem;
using ::vmseal::ovf::testing::TestKey;
using ::vmseal::ovf::testing::ValidatesAgainstSchema;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

class InteropTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFileOrDie(dir_.File("key.pem"), TestKey().private_pem);
    WriteFileOrDie(dir_.File("pub.pem"), TestKey().public_pem);
    crypto::Bytes b = crypto::RandomBytes(200000);
    WriteFileOrDie(dir_.File("disk.img"), std::string(b.begin(), b.end()));
  }
  int Vmseal(std::vector<std::string> args, std::string* out) {
    args.insert(args.begin(), VmsealBinary());
    return RunCommand(args, out);
  }
  TempDir dir_;
};

TEST_F(InteropTest, Xmlsec1DecryptsCompatPackageByteForByte) {
  std::string out;
  ASSERT_EQ(Vmseal({"seal", dir_.File("disk.img"), "--pubkey", dir_.File("pub.pem"), "--unsigned",
                    "--xmlenc-compat", "--format", "dir", "--image-id", "img-1", "-o",
                    dir_.File("pkg")},
                   &out),
            0)
      << out;
  // xmlsec1 resolves the relative CipherReference against the current
  // directory, so it runs from inside the package.
  std::string script = "cd '" + dir_.File("pkg") +
                       "' && exec xmlsec1 --decrypt --privkey-pem '" + dir_.File("key.pem") +
                       "' --id-attr:Id 'http://www.w3.org/2001/04/xmlenc#:EncryptedKey'"
                       " --enabled-cipher-reference-uris local,remote --output '" +
                       dir_.File("xmlsec.img") + "' pkg.ovf";
  ASSERT_EQ(RunCommand({"sh", "-c", script}, &out), 0) << out;
  EXPECT_EQ(ReadFileOrDie(dir_.File("xmlsec.img")), ReadFileOrDie(dir_.File("disk.img")));
}

TEST_F(InteropTest, Xmlsec1FailsOnTamperedCompatPackage) {
  std::string out;
  ASSERT_EQ(Vmseal({"seal", dir_.File("disk.img"), "--pubkey", dir_.File("pub.pem"), "--unsigned",
                    "--xmlenc-compat", "--format", "dir", "-o", dir_.File("pkg")},
                   &out),
            0)
      << out;
  std::string disk = ReadFileOrDie(dir_.File("pkg/disk1.raw.vmseal"));
  disk[1000] ^= 1;
  WriteFileOrDie(dir_.File("pkg/disk1.raw.vmseal"), disk);
  std::string script = "cd '" + dir_.File("pkg") +
                       "' && exec xmlsec1 --decrypt --privkey-pem '" + dir_.File("key.pem") +
                       "' --id-attr:Id 'http://www.w3.org/2001/04/xmlenc#:EncryptedKey'"
                       " --enabled-cipher-reference-uris local,remote --output '" +
                       dir_.File("xmlsec.img") + "' pkg.ovf";
  EXPECT_NE(RunCommand({"sh", "-c", script}, &out), 0) << out;
}

TEST_F(InteropTest, CliSealInspectUnsealRoundTrip) {
  std::string out;
  ASSERT_EQ(Vmseal({"seal", dir_.File("disk.img"), "--pubkey", dir_.File("pub.pem"), "--unsigned",
                    "--xmlenc-compat", "--tenant", "acme", "--cpus", "4", "--memory-mib", "4096",
                    "-o", dir_.File("p.ova")},
                   &out),
            0)
      << out;
  ASSERT_EQ(Vmseal({"inspect", dir_.File("p.ova"), "--json"}, &out), 0) << out;
  EXPECT_NE(out.find("\"tenant\": \"acme\""), std::string::npos) << out;
  ASSERT_EQ(Vmseal({"unseal", dir_.File("p.ova"), "--key", dir_.File("key.pem"), "-o",
                    dir_.File("plain")},
                   &out),
            0)
      << out;
  EXPECT_EQ(ReadFileOrDie(dir_.File("plain/disk1.raw")), ReadFileOrDie(dir_.File("disk.img")));
  EXPECT_TRUE(ValidatesAgainstSchema(dir_.File("plain/p.ovf")));
  EXPECT_NE(ReadFileOrDie(dir_.File("plain/p.ovf")).find("<rasd:VirtualQuantity>4096<"),
            std::string::npos);
}

TEST_F(InteropTest, CliUnsealOfUntrustedPackageFailsWithOneLineAndExitCode) {
  WriteFileOrDie(dir_.File("bad.ova"), testing::RawTar({{"../evil.ovf", "<x/>"}}));
  std::string out;
  int rc = Vmseal({"unseal", dir_.File("bad.ova"), "--key", dir_.File("key.pem"), "-o",
                   dir_.File("plain")},
                  &out);
  EXPECT_EQ(rc, 3) << out;
  EXPECT_NE(out.find("'..'"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_.File("plain")));
}

TEST_F(InteropTest, CliSealRequiresExactlyOneRecipient) {
  std::string out;
  EXPECT_NE(Vmseal({"seal", dir_.File("disk.img"), "-o", dir_.File("p.ova")}, &out), 0);
  EXPECT_NE(out.find("exactly one of --cert and --pubkey"), std::string::npos) << out;
}

TEST_F(InteropTest, CliSealAcceptsCertificate) {
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "req", "-x509", "-new", "-key", dir_.File("key.pem"), "-subj",
                        "/CN=customer", "-days", "1", "-out", dir_.File("cert.pem")},
                       &out),
            0)
      << out;
  ASSERT_EQ(Vmseal({"seal", dir_.File("disk.img"), "--cert", dir_.File("cert.pem"), "--unsigned",
                    "--xmlenc-compat", "-o", dir_.File("p.ova")},
                   &out),
            0)
      << out;
  ASSERT_EQ(Vmseal({"unseal", dir_.File("p.ova"), "--key", dir_.File("key.pem"), "-o",
                    dir_.File("plain")},
                   &out),
            0)
      << out;
}

TEST_F(InteropTest, CliDefaultStreamFormatRoundTrip) {
  std::string out;
  ASSERT_EQ(Vmseal({"seal", dir_.File("disk.img"), "--pubkey", dir_.File("pub.pem"), "--unsigned",
                    "--image-id", "img-7", "-o", dir_.File("p.ova")},
                   &out),
            0)
      << out;
  ASSERT_EQ(Vmseal({"inspect", dir_.File("p.ova")}, &out), 0) << out;
  EXPECT_NE(out.find("urn:vmseal:stream:v1"), std::string::npos) << out;
  EXPECT_NE(out.find("http://www.w3.org/2009/xmlenc11#rsa-oaep"), std::string::npos) << out;
  ASSERT_EQ(Vmseal({"unseal", dir_.File("p.ova"), "--key", dir_.File("key.pem"), "-o",
                    dir_.File("plain")},
                   &out),
            0)
      << out;
  EXPECT_EQ(ReadFileOrDie(dir_.File("plain/disk1.raw")), ReadFileOrDie(dir_.File("disk.img")));
}

}  // namespace
}  // namespace vmseal::ovf
