#include "kms/kek.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

using testing::TempDir;

SecretBytes Secret(std::string_view s) { return SecretBytes(crypto::AsBytes(s)); }

std::unique_ptr<KeyEncryptionKey> TestKek() {
  auto kek = KekFromBytes(SecretBytes::Random(kKekBytes));
  EXPECT_OK(kek);
  return *std::move(kek);
}

TEST(Kek, WrapUnwrapRoundTrip) {
  auto kek = TestKek();
  auto aad = CustomerKeyAad("k1", "acme");
  auto wrapped = kek->Wrap(Secret("private key bytes"), aad);
  ASSERT_OK(wrapped);
  EXPECT_EQ(wrapped->size(), 1 + kWrapNonceBytes + 17 + kWrapTagBytes);
  auto plain = kek->Unwrap(*wrapped, aad);
  ASSERT_OK(plain);
  EXPECT_TRUE(plain->Equals(Secret("private key bytes")));
}

TEST(Kek, OtherKeyIdFailsToUnwrap) {
  auto kek = TestKek();
  auto wrapped = kek->Wrap(Secret("pk"), CustomerKeyAad("k1", "acme"));
  ASSERT_OK(wrapped);
  EXPECT_STATUS(kek->Unwrap(*wrapped, CustomerKeyAad("k2", "acme")), StatusCode::kUnauthenticated,
                "decryption failed");
}

TEST(Kek, OtherCustomerFailsToUnwrap) {
  auto kek = TestKek();
  auto wrapped = kek->Wrap(Secret("pk"), CustomerKeyAad("k1", "acme"));
  ASSERT_OK(wrapped);
  EXPECT_STATUS(kek->Unwrap(*wrapped, CustomerKeyAad("k1", "evil")), StatusCode::kUnauthenticated,
                "decryption failed");
}

TEST(Kek, AadIsLengthPrefixedSoFieldsCannotShift) {
  EXPECT_NE(CustomerKeyAad("ab", "c"), CustomerKeyAad("a", "bc"));
}

TEST(Kek, FlippedCiphertextBitFails) {
  auto kek = TestKek();
  auto aad = CustomerKeyAad("k1", "acme");
  auto wrapped = kek->Wrap(Secret("pk-material"), aad);
  ASSERT_OK(wrapped);
  for (size_t i = 1; i < wrapped->size(); ++i) {
    std::string bad = *wrapped;
    bad[i] ^= 0x01;
    EXPECT_STATUS(kek->Unwrap(bad, aad), StatusCode::kUnauthenticated, "decryption failed");
  }
}

TEST(Kek, WrongKekFails) {
  auto aad = CustomerKeyAad("k1", "acme");
  auto wrapped = TestKek()->Wrap(Secret("pk"), aad);
  ASSERT_OK(wrapped);
  EXPECT_STATUS(TestKek()->Unwrap(*wrapped, aad), StatusCode::kUnauthenticated,
                "decryption failed");
}

TEST(Kek, UnknownVersionRefused) {
  auto kek = TestKek();
  auto wrapped = kek->Wrap(Secret("pk"), "aad");
  ASSERT_OK(wrapped);
  (*wrapped)[0] = 0x02;
  EXPECT_STATUS(kek->Unwrap(*wrapped, "aad"), StatusCode::kInvalidArgument, "unknown version");
}

TEST(Kek, TruncatedRefused) {
  EXPECT_STATUS(TestKek()->Unwrap(std::string(20, '\x01'), "aad"), StatusCode::kInvalidArgument,
                "too short");
}

TEST(Kek, NoncesDiffer) {
  auto kek = TestKek();
  auto a = kek->Wrap(Secret("pk"), "aad");
  auto b = kek->Wrap(Secret("pk"), "aad");
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_NE(*a, *b);
}

TEST(FileKek, CreateThenLoadHasStableId) {
  TempDir dir;
  ASSERT_OK(CreateFileKek(Env::Default(), dir.File("kek")));
  struct stat st {};
  ASSERT_EQ(::stat(dir.File("kek").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto a = LoadFileKek(Env::Default(), dir.File("kek"));
  auto b = LoadFileKek(Env::Default(), dir.File("kek"));
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_EQ((*a)->id(), (*b)->id());
  EXPECT_EQ((*a)->id().rfind("file:", 0), 0u);
  auto wrapped = (*a)->Wrap(Secret("pk"), "aad");
  ASSERT_OK(wrapped);
  EXPECT_OK((*b)->Unwrap(*wrapped, "aad"));
}

TEST(FileKek, CreateRefusesExistingFile) {
  TempDir dir;
  ASSERT_OK(CreateFileKek(Env::Default(), dir.File("kek")));
  EXPECT_STATUS(CreateFileKek(Env::Default(), dir.File("kek")), StatusCode::kAlreadyExists, "");
}

TEST(FileKek, GroupReadableRefused) {
  TempDir dir;
  ASSERT_OK(CreateFileKek(Env::Default(), dir.File("kek")));
  ASSERT_EQ(::chmod(dir.File("kek").c_str(), 0640), 0);
  EXPECT_STATUS(LoadFileKek(Env::Default(), dir.File("kek")), StatusCode::kFailedPrecondition,
                "chmod 600");
}

TEST(FileKek, WorldReadableRefused) {
  TempDir dir;
  ASSERT_OK(CreateFileKek(Env::Default(), dir.File("kek")));
  ASSERT_EQ(::chmod(dir.File("kek").c_str(), 0604), 0);
  EXPECT_STATUS(LoadFileKek(Env::Default(), dir.File("kek")), StatusCode::kFailedPrecondition,
                "group or others");
}

TEST(FileKek, WrongSizeRefused) {
  TempDir dir;
  testing::WriteFileOrDie(dir.File("kek"), "short");
  ASSERT_EQ(::chmod(dir.File("kek").c_str(), 0600), 0);
  EXPECT_STATUS(LoadFileKek(Env::Default(), dir.File("kek")), StatusCode::kInvalidArgument,
                "32 bytes");
}

TEST(FileKek, MissingFileIsNotFound) {
  TempDir dir;
  EXPECT_STATUS(LoadFileKek(Env::Default(), dir.File("nope")), StatusCode::kNotFound, "nope");
}

}  // namespace
}  // namespace vmseal::kms
