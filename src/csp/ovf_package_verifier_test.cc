#include "csp/ovf_package_verifier.h"

#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "ovf/package.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

class OvfPackageVerifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto key = crypto::PrivateKey::Generate(crypto::KeyType::kRsa2048);
    ASSERT_OK(key);
    key_ = std::make_unique<crypto::PrivateKey>(*std::move(key));
    std::string disk(128 << 10, '\0');
    for (size_t i = 0; i < disk.size(); ++i) disk[i] = static_cast<char>(i * 7 % 253);
    WriteFileOrDie(dir_.File("disk.raw"), disk);
    ovf::SealOptions so;
    so.inputs = {dir_.File("disk.raw")};
    so.recipient_pem = key_->Public().ToPem();
    so.image_id = "tagged-1";
    so.tenant = "cust-1";
    ASSERT_OK(ovf::SealPackage(Env::Default(), so, dir_.File("sealed.ova")));
  }
  // The verifier reads `path`; `content` only stands in for the staged bytes.
  StatusOr<VerifiedPackage> Verify(const std::string& path, const std::string& content = "") {
    ASSIGN_OR_RETURN(auto file,
                     Env::Default()->NewRandomAccessFile(content.empty() ? path : content));
    return verifier_.Verify(*file, path);
  }

  TempDir dir_;
  std::unique_ptr<crypto::PrivateKey> key_;
  OvfPackageVerifier verifier_;
};

TEST_F(OvfPackageVerifierTest, SealedPackageIsAcceptedWithItsTag) {
  auto v = Verify(dir_.File("sealed.ova"));
  ASSERT_OK(v);
  EXPECT_EQ(v->tagged_image_id, "tagged-1");
  EXPECT_TRUE(v->key_id.starts_with("sha256:")) << v->key_id;
  EXPECT_GE(v->disk_count, 1u);
}

TEST_F(OvfPackageVerifierTest, FlippedByteInTheDiskIsAManifestMismatch) {
  std::string bytes = ReadFileOrDie(dir_.File("sealed.ova"));
  bytes[bytes.size() / 2] ^= 0x01;
  WriteFileOrDie(dir_.File("staged.part"), bytes);
  auto v = Verify(dir_.File("staged.part"));
  EXPECT_STATUS(v, StatusCode::kDataLoss, "manifest");
  // The staging path is not shown to the customer.
  EXPECT_EQ(v.status().message().find(dir_.path()), std::string::npos) << v.status().message();
}

TEST_F(OvfPackageVerifierTest, PlainPackageIsNotEncrypted) {
  auto pem = key_->ToPem();
  ASSERT_OK(pem);
  ASSERT_OK(ovf::UnsealPackage(Env::Default(), dir_.File("sealed.ova"),
                               crypto::AsStringView(pem->UnsafeSpan()), dir_.File("plain")));
  EXPECT_STATUS(Verify(dir_.File("plain"), dir_.File("sealed.ova")),
                StatusCode::kFailedPrecondition, "not encrypted");
}

TEST_F(OvfPackageVerifierTest, ArbitraryBytesAreRejected) {
  WriteFileOrDie(dir_.File("junk.part"), std::string(4096, 'x'));
  auto v = Verify(dir_.File("junk.part"));
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("package rejected"), std::string::npos);
}

}  // namespace
}  // namespace vmseal::csp
