// Process-level tests of `vmseal keygen` (runs the built binary).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "base/secret_bytes.h"
#include "crypto/keys.h"
#include "testing/test_util.h"

namespace vmseal::cli {
namespace {

using ::vmseal::testing::ListDir;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

mode_t ModeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 0777;
}

class KeygenTypeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(KeygenTypeTest, WritesKeyPairAndPrintsKeyIdAsJson) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "keygen", "--type", GetParam(), "--out", tmp.File("k"),
                        "--json"}, &out), 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["type"], GetParam());
  EXPECT_EQ(ModeOf(tmp.File("k.pem")), 0600u);
  auto priv = crypto::LoadPrivateKeyFile(tmp.File("k.pem"));
  ASSERT_OK(priv);
  EXPECT_EQ(crypto::KeyTypeName(priv->type()), GetParam());
  auto pub = crypto::PublicKey::FromPem(ReadFileOrDie(tmp.File("k.pub.pem")));
  ASSERT_OK(pub);
  EXPECT_EQ(j["key_id"], pub->KeyId());
  EXPECT_EQ(priv->KeyId(), pub->KeyId());
}

INSTANTIATE_TEST_SUITE_P(Types, KeygenTypeTest,
                         ::testing::Values("rsa3072", "rsa2048", "x25519"));

TEST(KeygenTest, DefaultIsRsa3072AndTextOutputNamesKeyId) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "keygen", "--out", tmp.File("k")}, &out), 0) << out;
  auto pub = crypto::PublicKey::FromPem(ReadFileOrDie(tmp.File("k.pub.pem")));
  ASSERT_OK(pub);
  EXPECT_EQ(pub->type(), crypto::KeyType::kRsa3072);
  EXPECT_NE(out.find("key id: " + pub->KeyId()), std::string::npos) << out;
}

TEST(KeygenTest, OpensslCliReadsTheKeyPair) {
  TempDir tmp;
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "keygen", "--type", "x25519", "--out", tmp.File("k")},
                       &out), 0) << out;
  ASSERT_EQ(RunCommand({"openssl", "pkey", "-in", tmp.File("k.pem"), "-pubout", "-out",
                        tmp.File("derived.pub.pem")}, &out), 0) << out;
  EXPECT_EQ(ReadFileOrDie(tmp.File("derived.pub.pem")), ReadFileOrDie(tmp.File("k.pub.pem")));
}

TEST(KeygenTest, RefusesToOverwritePrivateKey) {
  TempDir tmp;
  WriteFileOrDie(tmp.File("k.pem"), "precious");
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "keygen", "--type", "x25519", "--out", tmp.File("k")},
                       &out), 5) << out;
  EXPECT_NE(out.find("k.pem exists; not overwriting it"), std::string::npos) << out;
  EXPECT_EQ(ReadFileOrDie(tmp.File("k.pem")), "precious");
  EXPECT_EQ(ListDir(tmp.path()).size(), 1u);
}

TEST(KeygenTest, RefusesToOverwritePublicKey) {
  TempDir tmp;
  WriteFileOrDie(tmp.File("k.pub.pem"), "precious");
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "keygen", "--type", "x25519", "--out", tmp.File("k")},
                       &out), 5) << out;
  EXPECT_NE(out.find("k.pub.pem exists"), std::string::npos) << out;
  EXPECT_EQ(ListDir(tmp.path()).size(), 1u);
}

TEST(KeygenTest, UnknownTypeIsUsageError) {
  TempDir tmp;
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "keygen", "--type", "rsa1024", "--out", tmp.File("k")},
                       &out), 2) << out;
  EXPECT_TRUE(ListDir(tmp.path()).empty());
}

TEST(KeygenTest, MissingDirectoryIsIoErrorWithoutPartialFiles) {
  TempDir tmp;
  std::string out;
  EXPECT_EQ(RunCommand({VmsealBinary(), "keygen", "--type", "x25519", "--out",
                        tmp.File("no/such/dir/k")}, &out), 5) << out;
  EXPECT_NE(out.find("vmseal: error:"), std::string::npos) << out;
  EXPECT_TRUE(ListDir(tmp.path()).empty());
}

}  // namespace
}  // namespace vmseal::cli
