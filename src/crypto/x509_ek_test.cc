// Verifies a real TPM EK certificate: swtpm_setup manufactures a software
// TPM whose EK certificate is issued by swtpm_localca from a private local CA
// (root + intermediate) in a temp dir, as a TPM vendor's CA would.
#include <gtest/gtest.h>

#include <fstream>

#include "crypto/x509.h"
#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

class EkCertTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const TempDir& d = *dir_;
    ASSERT_EQ(RunCommand({"mkdir", "-p", d.File("ca"), d.File("tpm"), d.File("out")}), 0);
    WriteFileOrDie(d.File("localca.conf"),
                   "statedir = " + d.File("ca") + "\nsigningkey = " + d.File("ca/signkey.pem") +
                       "\nissuercert = " + d.File("ca/issuercert.pem") +
                       "\ncertserial = " + d.File("ca/certserial") + "\n");
    WriteFileOrDie(d.File("localca.options"), "--tpm-manufacturer vmseal\n");
    WriteFileOrDie(d.File("setup.conf"),
                   "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = " +
                       d.File("localca.conf") + "\ncreate_certs_tool_options = " +
                       d.File("localca.options") + "\nactive_pcr_banks = sha256\n");
    // --write-ek-cert-files fails in swtpm 0.7.1 together with
    // --create-platform-cert ("Error getting next filename"), so only the EK
    // certificates are created here.
    std::string out;
    int rc = RunCommand({"swtpm_setup", "--tpm2", "--tpmstate", d.File("tpm"), "--config",
                         d.File("setup.conf"), "--create-ek-cert", "--lock-nvram", "--overwrite",
                         "--pcr-banks", "sha256", "--write-ek-cert-files", d.File("out")},
                        &out, 60);
    ASSERT_EQ(rc, 0) << out;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static Certificate Load(const std::string& pem_or_der_file, bool der) {
    std::string data = ReadFileOrDie(dir_->File(pem_or_der_file));
    auto c = der ? Certificate::FromDer(AsBytes(data)) : Certificate::FromPem(data);
    EXPECT_OK(c);
    return std::move(c).value();
  }
  static Certificate Ek() { return Load("out/ek-rsa2048.crt", true); }
  static Certificate Root() { return Load("ca/swtpm-localca-rootca-cert.pem", false); }
  static Certificate Intermediate() { return Load("ca/issuercert.pem", false); }
  static TempDir* dir_;
};
TempDir* EkCertTest::dir_ = nullptr;

TEST_F(EkCertTest, EkCertificateChainsToLocalCaViaIntermediate) {
  EXPECT_OK(VerifyEkCertificate(Ek(), {Root()}, {Intermediate()}));
}

TEST_F(EkCertTest, EccEkCertificateAlsoVerifies) {
  Certificate ecc = Load("out/ek-secp384r1.crt", true);
  EXPECT_OK(VerifyEkCertificate(ecc, {Root()}, {Intermediate()}));
}

TEST_F(EkCertTest, EkCertificateWithoutIntermediateFails) {
  EXPECT_STATUS(VerifyEkCertificate(Ek(), {Root()}), StatusCode::kUnauthenticated,
                "unable to get local issuer certificate");
}

TEST_F(EkCertTest, IntermediateAloneIsNotATrustAnchor) {
  // Partial chains are off: trusting only the intermediate is not enough.
  EXPECT_STATUS(VerifyEkCertificate(Ek(), {Intermediate()}), StatusCode::kUnauthenticated,
                "certificate verification failed");
}

TEST_F(EkCertTest, EkCertificateFromAnotherManufacturerFails) {
  CaOptions options;
  options.common_name = "other vendor";
  auto other = CreateSelfSignedCa(options);
  ASSERT_OK(other);
  EXPECT_STATUS(VerifyEkCertificate(Ek(), {other->cert}, {Intermediate()}),
                StatusCode::kUnauthenticated, "certificate verification failed");
}

TEST_F(EkCertTest, EkPublicKeyIsRsa2048) {
  auto key = Ek().GetPublicKey();
  ASSERT_OK(key);
  EXPECT_EQ(key->type(), KeyType::kRsa2048);
}

}  // namespace
}  // namespace vmseal::crypto
