#include "crypto/keys.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <sys/stat.h>

#include "testing/test_util.h"

namespace vmseal::crypto {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::SourceDir;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

std::string TestData(const std::string& name) {
  return SourceDir() + "/tests/testdata/wrap/" + name;
}

SecretBytes Secret(const std::string& s) { return SecretBytes(AsBytes(s)); }

class KeyTypeTest : public ::testing::TestWithParam<KeyType> {};

TEST_P(KeyTypeTest, GeneratedKeyRoundTripsThroughPem) {
  auto key = PrivateKey::Generate(GetParam());
  ASSERT_OK(key);
  EXPECT_EQ(key->type(), GetParam());
  auto pem = key->ToPem();
  ASSERT_OK(pem);
  EXPECT_NE(AsStringView(pem->UnsafeSpan()).find("BEGIN PRIVATE KEY"), std::string::npos);
  auto again = PrivateKey::FromPem(*pem);
  ASSERT_OK(again);
  EXPECT_EQ(again->type(), GetParam());
  EXPECT_EQ(again->KeyId(), key->KeyId());
  auto pub = PublicKey::FromPem(key->Public().ToPem());
  ASSERT_OK(pub);
  EXPECT_EQ(pub->KeyId(), key->KeyId());
  auto id = KeyIdOfPem(key->Public().ToPem());
  ASSERT_OK(id);
  EXPECT_EQ(*id, key->KeyId());
}

INSTANTIATE_TEST_SUITE_P(AllTypes, KeyTypeTest,
                         ::testing::Values(KeyType::kRsa2048, KeyType::kRsa3072,
                                           KeyType::kX25519, KeyType::kEcP256),
                         [](const auto& p) { return std::string(KeyTypeName(p.param)); });

TEST(KeysTest, KeyIdIsSha256OfSpkiDerAsComputedByOpensslCli) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "pkey", "-pubin", "-in", TestData("rsa3072.pub.pem"),
                        "-outform", "DER", "-out", tmp.File("pub.der")}, &out), 0) << out;
  ASSERT_EQ(RunCommand({"openssl", "dgst", "-sha256", "-r", tmp.File("pub.der")}, &out), 0);
  auto pub = PublicKey::FromPem(ReadFileOrDie(TestData("rsa3072.pub.pem")));
  ASSERT_OK(pub);
  EXPECT_EQ(pub->KeyId().size(), 64u);
  EXPECT_EQ(out.substr(0, 64), pub->KeyId());
}

TEST(KeysTest, KeyIdOfPemTakesOnlyPublicKeyPems) {
  EXPECT_EQ(*KeyIdOfPem(ReadFileOrDie(TestData("rsa3072.pub.pem"))),
            PublicKey::FromPem(ReadFileOrDie(TestData("rsa3072.pub.pem")))->KeyId());
  EXPECT_STATUS(KeyIdOfPem(ReadFileOrDie(TestData("rsa3072.pem"))), StatusCode::kInvalidArgument,
                "BEGIN PUBLIC KEY");
  EXPECT_STATUS(KeyIdOfPem("not a pem"), StatusCode::kInvalidArgument, "BEGIN PUBLIC KEY");
  EXPECT_STATUS(KeyIdOfPem(""), StatusCode::kInvalidArgument, "BEGIN PUBLIC KEY");
}

TEST(KeysTest, PrivateAndPublicKeyShareKeyId) {
  auto priv = PrivateKey::FromPem(Secret(ReadFileOrDie(TestData("rsa3072.pem"))));
  ASSERT_OK(priv);
  auto pub = PublicKey::FromPem(ReadFileOrDie(TestData("rsa3072.pub.pem")));
  ASSERT_OK(pub);
  EXPECT_EQ(priv->KeyId(), pub->KeyId());
  EXPECT_EQ(priv->type(), KeyType::kRsa3072);
}

TEST(KeysTest, PublicKeyFromPemRejectsGarbage) {
  EXPECT_STATUS(PublicKey::FromPem("hello"), StatusCode::kInvalidArgument,
                "not a PEM public key");
}

TEST(KeysTest, PrivateKeyFromPemRejectsGarbage) {
  EXPECT_STATUS(PrivateKey::FromPem(Secret("-----BEGIN PRIVATE KEY-----\nAAAA\n")),
                StatusCode::kInvalidArgument, "not an unencrypted PEM private key");
}

TEST(KeysTest, PrivateKeyFromPemRejectsEncryptedPem) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "pkey", "-in", TestData("rsa3072.pem"), "-aes256", "-passout",
                        "pass:secret", "-out", tmp.File("enc.pem")}, &out), 0) << out;
  EXPECT_STATUS(PrivateKey::FromPem(Secret(ReadFileOrDie(tmp.File("enc.pem")))),
                StatusCode::kInvalidArgument, "unencrypted");
}

TEST(KeysTest, Rsa1024IsRejected) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                        "rsa_keygen_bits:1024", "-out", tmp.File("k.pem")}, &out), 0) << out;
  EXPECT_STATUS(PrivateKey::FromPem(Secret(ReadFileOrDie(tmp.File("k.pem")))),
                StatusCode::kInvalidArgument, "unsupported RSA key size 1024");
}

TEST(KeysTest, Ed25519IsRejected) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({"openssl", "genpkey", "-algorithm", "ED25519", "-out", tmp.File("k.pem")},
                       &out), 0) << out;
  EXPECT_STATUS(PrivateKey::FromPem(Secret(ReadFileOrDie(tmp.File("k.pem")))),
                StatusCode::kInvalidArgument, "unsupported key type");
}

TEST(KeysTest, RsaPublicKeyFromModulusAndExponentMatchesTheKey) {
  auto priv = PrivateKey::Generate(KeyType::kRsa2048);
  ASSERT_OK(priv);
  BIGNUM* n = nullptr;
  ASSERT_EQ(EVP_PKEY_get_bn_param(priv->pkey(), OSSL_PKEY_PARAM_RSA_N, &n), 1);
  BignumPtr owned(n);
  Bytes modulus(static_cast<size_t>(BN_num_bytes(n)));
  BN_bn2bin(n, modulus.data());
  auto pub = PublicKey::FromRsaModulus(modulus, 65537);
  ASSERT_OK(pub);
  EXPECT_EQ(pub->type(), KeyType::kRsa2048);
  EXPECT_EQ(pub->KeyId(), priv->KeyId());
}

TEST(KeysTest, RsaPublicKeyFromShortModulusIsRejected) {
  Bytes modulus(128, 0xc5);
  EXPECT_STATUS(PublicKey::FromRsaModulus(modulus, 65537), StatusCode::kInvalidArgument,
                "2048 or 3072 bits");
}

TEST(KeysTest, RsaPublicKeyWithEvenExponentIsRejected) {
  Bytes modulus(256, 0xc5);
  EXPECT_STATUS(PublicKey::FromRsaModulus(modulus, 65536), StatusCode::kInvalidArgument,
                "exponent");
}

TEST(KeysTest, WrittenPrivateKeyFileIsMode0600AndLoadsBack) {
  TempDir tmp;
  auto key = PrivateKey::Generate(KeyType::kX25519);
  ASSERT_OK(key);
  ASSERT_OK(WritePrivateKeyFile(Env::Default(), tmp.File("k.pem"), *key));
  struct stat st;
  ASSERT_EQ(::stat(tmp.File("k.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto loaded = LoadPrivateKeyFile(tmp.File("k.pem"));
  ASSERT_OK(loaded);
  EXPECT_EQ(loaded->KeyId(), key->KeyId());
}

class KeyFileModeTest : public ::testing::TestWithParam<mode_t> {};

TEST_P(KeyFileModeTest, LoadRefusesFileAccessibleByOthers) {
  TempDir tmp;
  auto key = PrivateKey::Generate(KeyType::kX25519);
  ASSERT_OK(key);
  ASSERT_OK(WritePrivateKeyFile(Env::Default(), tmp.File("k.pem"), *key));
  ASSERT_EQ(::chmod(tmp.File("k.pem").c_str(), GetParam()), 0);
  EXPECT_STATUS(LoadPrivateKeyFile(tmp.File("k.pem")), StatusCode::kPermissionDenied,
                "is accessible by group or others");
}

INSTANTIATE_TEST_SUITE_P(Modes, KeyFileModeTest,
                         ::testing::Values(0640, 0604, 0644, 0660, 0602, 0620));

TEST(KeysTest, LoadRefusalNamesFileAndMode) {
  TempDir tmp;
  WriteFileOrDie(tmp.File("k.pem"), "x");
  ASSERT_EQ(::chmod(tmp.File("k.pem").c_str(), 0644), 0);
  EXPECT_STATUS(LoadPrivateKeyFile(tmp.File("k.pem")), StatusCode::kPermissionDenied,
                tmp.File("k.pem") + " is accessible by group or others (mode 0644)");
}

TEST(KeysTest, LoadMissingFileIsNotFound) {
  TempDir tmp;
  EXPECT_STATUS(LoadPrivateKeyFile(tmp.File("nope.pem")), StatusCode::kNotFound, "nope.pem");
}

TEST(KeysTest, LoadDirectoryIsRejected) {
  TempDir tmp;
  ASSERT_EQ(::chmod(tmp.path().c_str(), 0700), 0);
  EXPECT_STATUS(LoadPrivateKeyFile(tmp.path()), StatusCode::kInvalidArgument,
                "not a regular file");
}

TEST(KeysTest, LoadNonKeyFileNamesTheFile) {
  TempDir tmp;
  WriteFileOrDie(tmp.File("k.pem"), "not a key");
  ASSERT_EQ(::chmod(tmp.File("k.pem").c_str(), 0600), 0);
  EXPECT_STATUS(LoadPrivateKeyFile(tmp.File("k.pem")), StatusCode::kInvalidArgument,
                "k.pem: not an unencrypted PEM private key");
}

TEST(KeysTest, ParseKeyTypeAcceptsNamesAndRejectsOthers) {
  auto t = ParseKeyType("rsa3072");
  ASSERT_OK(t);
  EXPECT_EQ(*t, KeyType::kRsa3072);
  EXPECT_STATUS(ParseKeyType("rsa4096"), StatusCode::kInvalidArgument, "unknown key type");
}

TEST(KeysTest, X25519RawPublicKeyIs32Bytes) {
  auto key = PrivateKey::Generate(KeyType::kX25519);
  ASSERT_OK(key);
  EXPECT_EQ(key->Public().RawX25519().size(), 32u);
  auto rsa = PublicKey::FromPem(ReadFileOrDie(TestData("rsa3072.pub.pem")));
  ASSERT_OK(rsa);
  EXPECT_TRUE(rsa->RawX25519().empty());
}

TEST(KeysTest, X25519RawPublicFromThePrivateKeyMatchesThePublicHalf) {
  auto key = PrivateKey::Generate(KeyType::kX25519);
  ASSERT_OK(key);
  EXPECT_EQ(key->RawX25519Public(), key->Public().RawX25519());
  EXPECT_EQ(key->RawX25519Public().size(), 32u);
  auto rsa = PrivateKey::Generate(KeyType::kRsa2048);
  ASSERT_OK(rsa);
  EXPECT_TRUE(rsa->RawX25519Public().empty());
}

}  // namespace
}  // namespace vmseal::crypto
