#include "crypto/x509.h"

#include <gtest/gtest.h>

#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

CertificateAuthority NewCa(const std::string& cn = "vmseal test CA") {
  CaOptions options;
  options.common_name = cn;
  auto ca = CreateSelfSignedCa(options);
  EXPECT_OK(ca);
  return std::move(ca).value();
}

PublicKey NewKey(KeyType type) { return PrivateKey::Generate(type)->Public(); }

TEST(X509Test, SelfSignedCaVerifiesAgainstItself) {
  CertificateAuthority ca = NewCa();
  EXPECT_EQ(ca.cert.SubjectCommonName(), "vmseal test CA");
  EXPECT_EQ(ca.key.type(), KeyType::kEcP256);
  EXPECT_OK(VerifyCertificateChain(ca.cert, {ca.cert}));
}

TEST(X509Test, CaWithoutCommonNameIsRejected) {
  EXPECT_STATUS(CreateSelfSignedCa(CaOptions{}), StatusCode::kInvalidArgument,
                "common name must not be empty");
}

class CustomerKeyCertTest : public ::testing::TestWithParam<KeyType> {};

TEST_P(CustomerKeyCertTest, IssuedCertificateChainsAndCarriesTheKey) {
  CertificateAuthority ca = NewCa();
  PublicKey key = NewKey(GetParam());
  IssueOptions options;
  options.common_name = "customer acme key 1";
  options.serial = 4242;
  auto cert = IssueCertificate(ca, key, options);
  ASSERT_OK(cert);
  EXPECT_OK(VerifyCertificateChain(*cert, {ca.cert}));
  EXPECT_EQ(cert->SubjectCommonName(), "customer acme key 1");
  EXPECT_EQ(cert->SerialHex(), "1092");
  auto got = cert->GetPublicKey();
  ASSERT_OK(got);
  EXPECT_EQ(got->KeyId(), key.KeyId());
  EXPECT_EQ(got->type(), GetParam());
}

INSTANTIATE_TEST_SUITE_P(KeyTypes, CustomerKeyCertTest,
                         ::testing::Values(KeyType::kRsa3072, KeyType::kX25519),
                         [](const auto& p) { return std::string(KeyTypeName(p.param)); });

TEST(X509Test, OpensslCliVerifiesIssuedX25519Certificate) {
  TempDir tmp;
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "x25519 customer";
  auto cert = IssueCertificate(ca, NewKey(KeyType::kX25519), options);
  ASSERT_OK(cert);
  WriteFileOrDie(tmp.File("ca.pem"), ca.cert.ToPem());
  WriteFileOrDie(tmp.File("leaf.pem"), cert->ToPem());
  std::string out;
  EXPECT_EQ(RunCommand({"openssl", "verify", "-CAfile", tmp.File("ca.pem"), tmp.File("leaf.pem")},
                       &out), 0) << out;
}

TEST(X509Test, ValidityIsAsRequested) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "c";
  options.not_before = 1700000000;
  options.validity_seconds = 3600;
  auto cert = IssueCertificate(ca, NewKey(KeyType::kX25519), options);
  ASSERT_OK(cert);
  EXPECT_EQ(cert->NotBefore(), 1700000000);
  EXPECT_EQ(cert->NotAfter(), 1700003600);
}

TEST(X509Test, ExpiredCertificateFailsVerification) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "c";
  options.validity_seconds = 3600;
  auto cert = IssueCertificate(ca, NewKey(KeyType::kX25519), options);
  ASSERT_OK(cert);
  VerifyOptions verify;
  verify.at_time = cert->NotAfter() + 10;
  EXPECT_STATUS(VerifyCertificateChain(*cert, {ca.cert}, verify),
                StatusCode::kUnauthenticated, "certificate has expired");
}

TEST(X509Test, CertificateFromAnotherCaFails) {
  CertificateAuthority ca = NewCa();
  CertificateAuthority other = NewCa("other CA");
  IssueOptions options;
  options.common_name = "c";
  auto cert = IssueCertificate(ca, NewKey(KeyType::kX25519), options);
  ASSERT_OK(cert);
  EXPECT_STATUS(VerifyCertificateChain(*cert, {other.cert}), StatusCode::kUnauthenticated,
                "certificate verification failed");
}

TEST(X509Test, CaWithSameNameButOtherKeyFails) {
  CertificateAuthority ca = NewCa("same");
  CertificateAuthority impostor = NewCa("same");
  IssueOptions options;
  options.common_name = "c";
  auto cert = IssueCertificate(impostor, NewKey(KeyType::kEcP256), options);
  ASSERT_OK(cert);
  EXPECT_STATUS(VerifyCertificateChain(*cert, {ca.cert}), StatusCode::kUnauthenticated,
                "certificate verification failed");
}

TEST(X509Test, NoRootsIsInvalidArgument) {
  CertificateAuthority ca = NewCa();
  EXPECT_STATUS(VerifyCertificateChain(ca.cert, {}), StatusCode::kInvalidArgument,
                "no trusted CA");
}

TEST(X509Test, ServerCertificateVerifiesForServerAuthOnly) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "kms.internal";
  options.usage = CertUsage::kServerAuth;
  options.dns_names = {"kms.internal", "localhost"};
  options.ip_addresses = {"127.0.0.1", "::1"};
  auto cert = IssueCertificate(ca, NewKey(KeyType::kEcP256), options);
  ASSERT_OK(cert);
  VerifyOptions server;
  server.purpose = VerifyPurpose::kServerAuth;
  EXPECT_OK(VerifyCertificateChain(*cert, {ca.cert}, server));
  VerifyOptions client;
  client.purpose = VerifyPurpose::kClientAuth;
  EXPECT_STATUS(VerifyCertificateChain(*cert, {ca.cert}, client), StatusCode::kUnauthenticated,
                "unsuitable certificate purpose");
}

TEST(X509Test, ClientCertificateVerifiesForClientAuth) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "host-17";
  options.usage = CertUsage::kClientAuth;
  auto cert = IssueCertificate(ca, NewKey(KeyType::kRsa2048), options);
  ASSERT_OK(cert);
  VerifyOptions client;
  client.purpose = VerifyPurpose::kClientAuth;
  EXPECT_OK(VerifyCertificateChain(*cert, {ca.cert}, client));
}

TEST(X509Test, OpensslCliSeesSubjectAltNames) {
  TempDir tmp;
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "kms";
  options.usage = CertUsage::kServerAndClient;
  options.dns_names = {"kms.example"};
  options.ip_addresses = {"10.0.0.7"};
  auto cert = IssueCertificate(ca, NewKey(KeyType::kEcP256), options);
  ASSERT_OK(cert);
  WriteFileOrDie(tmp.File("c.pem"), cert->ToPem());
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "x509", "-in", tmp.File("c.pem"), "-noout", "-ext",
                        "subjectAltName,extendedKeyUsage"}, &out), 0) << out;
  EXPECT_NE(out.find("DNS:kms.example"), std::string::npos) << out;
  EXPECT_NE(out.find("IP Address:10.0.0.7"), std::string::npos) << out;
  EXPECT_NE(out.find("TLS Web Server Authentication, TLS Web Client Authentication"),
            std::string::npos) << out;
}

TEST(X509Test, TlsCertificateForX25519KeyIsRejected) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "x";
  options.usage = CertUsage::kServerAuth;
  EXPECT_STATUS(IssueCertificate(ca, NewKey(KeyType::kX25519), options),
                StatusCode::kInvalidArgument, "needs a signing key");
}

TEST(X509Test, BadIpAddressIsRejected) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "x";
  options.usage = CertUsage::kServerAuth;
  options.ip_addresses = {"300.1.1.1"};
  EXPECT_STATUS(IssueCertificate(ca, NewKey(KeyType::kEcP256), options),
                StatusCode::kInvalidArgument, "bad IP address in SAN: 300.1.1.1");
}

TEST(X509Test, DnsNameWithCommaIsRejected) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "x";
  options.usage = CertUsage::kServerAuth;
  options.dns_names = {"a.example,IP:1.2.3.4"};
  EXPECT_STATUS(IssueCertificate(ca, NewKey(KeyType::kEcP256), options),
                StatusCode::kInvalidArgument, "bad DNS name in SAN");
}

TEST(X509Test, RandomSerialsDiffer) {
  CertificateAuthority ca = NewCa();
  IssueOptions options;
  options.common_name = "c";
  PublicKey key = NewKey(KeyType::kX25519);
  auto a = IssueCertificate(ca, key, options);
  auto b = IssueCertificate(ca, key, options);
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_NE(a->SerialHex(), b->SerialHex());
  EXPECT_GE(a->SerialHex().size(), 30u);
}

TEST(X509Test, PemRoundTripAndFingerprintMatchOpensslCli) {
  TempDir tmp;
  CertificateAuthority ca = NewCa();
  auto parsed = Certificate::FromPem(ca.cert.ToPem());
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->Fingerprint(), ca.cert.Fingerprint());
  WriteFileOrDie(tmp.File("ca.pem"), ca.cert.ToPem());
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "x509", "-in", tmp.File("ca.pem"), "-noout", "-fingerprint",
                        "-sha256"}, &out), 0) << out;
  std::string hex;
  for (char c : out.substr(out.find('=') + 1)) {
    if (std::isxdigit(static_cast<unsigned char>(c))) {
      hex += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  EXPECT_EQ(hex, ca.cert.Fingerprint());
}

TEST(X509Test, PemBundleParsesEveryCertificate) {
  CertificateAuthority a = NewCa("a");
  CertificateAuthority b = NewCa("b");
  auto bundle = Certificate::ParsePemBundle(a.cert.ToPem() + b.cert.ToPem());
  ASSERT_OK(bundle);
  ASSERT_EQ(bundle->size(), 2u);
  EXPECT_EQ((*bundle)[1].SubjectCommonName(), "b");
}

TEST(X509Test, FromPemRejectsBundleOfTwo) {
  CertificateAuthority a = NewCa("a");
  EXPECT_STATUS(Certificate::FromPem(a.cert.ToPem() + a.cert.ToPem()),
                StatusCode::kInvalidArgument, "exactly one");
}

TEST(X509Test, GarbageIsNotACertificate) {
  EXPECT_STATUS(Certificate::FromPem("-----BEGIN CERTIFICATE-----\nAAAA\n"),
                StatusCode::kInvalidArgument, "no PEM certificate");
  EXPECT_STATUS(Certificate::FromDer(AsBytes("xyz")), StatusCode::kInvalidArgument,
                "not a DER certificate");
}

// A certificate with a critical extension OpenSSL does not know, made by the
// openssl command line: rejected by VerifyCertificateChain, accepted by
// VerifyEkCertificate (TPM vendors use such extensions).
TEST(X509Test, UnknownCriticalExtensionOnlyPassesEkVerification) {
  TempDir tmp;
  CertificateAuthority ca = NewCa();
  ASSERT_OK(WritePrivateKeyFile(Env::Default(), tmp.File("ca.key"), ca.key));
  WriteFileOrDie(tmp.File("ca.pem"), ca.cert.ToPem());
  WriteFileOrDie(tmp.File("ext.cnf"),
                 "[e]\nbasicConstraints=critical,CA:FALSE\n2.23.133.99.1=critical,DER:0500\n");
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        tmp.File("ek.key"), "-subj", "/CN=ek", "-out", tmp.File("ek.csr")}, &out),
            0) << out;
  ASSERT_EQ(RunCommand({"openssl", "x509", "-req", "-in", tmp.File("ek.csr"), "-CA",
                        tmp.File("ca.pem"), "-CAkey", tmp.File("ca.key"), "-set_serial", "7",
                        "-days", "30", "-extfile", tmp.File("ext.cnf"), "-extensions", "e",
                        "-out", tmp.File("ek.pem")}, &out), 0) << out;
  auto ek = Certificate::FromPem(ReadFileOrDie(tmp.File("ek.pem")));
  ASSERT_OK(ek);
  EXPECT_STATUS(VerifyCertificateChain(*ek, {ca.cert}), StatusCode::kUnauthenticated,
                "unhandled critical extension");
  EXPECT_OK(VerifyEkCertificate(*ek, {ca.cert}));
  CertificateAuthority other = NewCa("other");
  EXPECT_STATUS(VerifyEkCertificate(*ek, {other.cert}), StatusCode::kUnauthenticated,
                "certificate verification failed");
}

}  // namespace
}  // namespace vmseal::crypto
