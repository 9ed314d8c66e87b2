// Against a real SoftHSM2 token initialised in a temp dir (SOFTHSM2_CONF).
#include "kms/pkcs11_kek.h"

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstdlib>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

constexpr const char* kModule = "/usr/lib/softhsm/libsofthsm2.so";

SecretBytes Secret(std::string_view s) { return SecretBytes(crypto::AsBytes(s)); }

class Pkcs11KekTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tokens = dir_.File("tokens");
    ASSERT_EQ(::mkdir(tokens.c_str(), 0700), 0);
    std::string conf = "directories.tokendir = ";
    conf += tokens;
    conf += "\nobjectstore.backend = file\nlog.level = ERROR\n";
    testing::WriteFileOrDie(dir_.File("softhsm2.conf"), conf);
    ::setenv("SOFTHSM2_CONF", dir_.File("softhsm2.conf").c_str(), 1);
    std::string out;
    ASSERT_EQ(testing::RunCommand({"/usr/bin/softhsm2-util", "--init-token", "--free", "--label",
                                   "vmseal-test", "--so-pin", "5678", "--pin", "1234"},
                                  &out),
              0)
        << out;
  }

  Pkcs11KekOptions Options(bool create, const std::string& pin = "1234") {
    Pkcs11KekOptions o;
    o.module_path = kModule;
    o.token_label = "vmseal-test";
    o.pin = Secret(pin);
    o.create_if_missing = create;
    return o;
  }

  testing::TempDir dir_;
};

// All cases in one process share the module's global state, so each test
// opens and closes its own KEK objects in sequence.
TEST_F(Pkcs11KekTest, TokenWrapsAndUnwrapsWithAad) {
  auto kek = OpenPkcs11Kek(Options(true));
  ASSERT_OK(kek);
  EXPECT_EQ((*kek)->id(), "pkcs11:vmseal-test/vmseal-kms-kek");
  std::string aad = CustomerKeyAad("k1", "acme");
  auto wrapped = (*kek)->Wrap(Secret("customer private key"), aad);
  ASSERT_OK(wrapped);
  EXPECT_EQ(wrapped->size(), 1 + kWrapNonceBytes + 20 + kWrapTagBytes);
  auto plain = (*kek)->Unwrap(*wrapped, aad);
  ASSERT_OK(plain);
  EXPECT_TRUE(plain->Equals(Secret("customer private key")));
  EXPECT_STATUS((*kek)->Unwrap(*wrapped, CustomerKeyAad("k1", "evil")), StatusCode::kUnauthenticated,
                "decryption failed");
  std::string bad = *wrapped;
  bad[bad.size() - 1] ^= 1;
  EXPECT_STATUS((*kek)->Unwrap(bad, aad), StatusCode::kUnauthenticated, "decryption failed");
}

TEST_F(Pkcs11KekTest, KeyPersistsInTokenAcrossSessions) {
  std::string aad = CustomerKeyAad("k1", "acme");
  std::string wrapped;
  {
    auto kek = OpenPkcs11Kek(Options(true));
    ASSERT_OK(kek);
    auto w = (*kek)->Wrap(Secret("pk"), aad);
    ASSERT_OK(w);
    wrapped = *w;
  }
  auto again = OpenPkcs11Kek(Options(false));
  ASSERT_OK(again);
  EXPECT_OK((*again)->Unwrap(wrapped, aad));
}

TEST_F(Pkcs11KekTest, MissingKeyWithoutCreateIsNotFound) {
  EXPECT_STATUS(OpenPkcs11Kek(Options(false)), StatusCode::kNotFound, "no AES key");
}

TEST_F(Pkcs11KekTest, WrongPinRefused) {
  EXPECT_STATUS(OpenPkcs11Kek(Options(true, "0000")), StatusCode::kPermissionDenied, "PIN refused");
}

TEST_F(Pkcs11KekTest, UnknownTokenIsNotFound) {
  auto o = Options(true);
  o.token_label = "nope";
  EXPECT_STATUS(OpenPkcs11Kek(o), StatusCode::kNotFound, "no token labelled");
}

TEST(Pkcs11Kek, MissingModuleIsNotFound) {
  Pkcs11KekOptions o{.module_path = "/nonexistent/libpkcs11.so", .token_label = "x"};
  EXPECT_STATUS(OpenPkcs11Kek(o), StatusCode::kNotFound, "cannot load module");
}

}  // namespace
}  // namespace vmseal::kms
