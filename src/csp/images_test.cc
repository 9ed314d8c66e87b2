#include "csp/images.h"

#include <cstring>
#include <filesystem>
#include <map>

#include "crypto/keys.h"

#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/internal/test_doubles.h"
#include "csp/sqlite_db.h"
#include "store/fs_store.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::vmseal::store::StringReader;
using ::vmseal::testing::TempDir;

using ::vmseal::csp::testing::FakeVerifier;
using ::vmseal::csp::testing::kSealedMagic;

class BrokenReader final : public store::Reader {
 public:
  BrokenReader(std::string_view data, size_t fail_after) : data_(data), left_(fail_after) {}
  StatusOr<size_t> Read(std::span<uint8_t> out) override {
    if (left_ == 0) return UnavailableError("connection reset");
    size_t n = std::min({out.size(), left_, data_.size()});
    std::memcpy(out.data(), data_.data(), n);
    data_.remove_prefix(n);
    left_ -= n;
    return n;
  }

 private:
  std::string_view data_;
  size_t left_;
};

std::string Sealed(size_t extra) { return kSealedMagic + std::string(extra, 'x'); }

class ImagesTest : public ::testing::Test {
 protected:
  void SetUp() override { Init({}); }
  void Init(const ImageService::Options& options) {
    auto db = SqlitePortalDb::Open(":memory:");
    ASSERT_OK(db);
    db_ = std::move(db).value();
    auto st = store::FsObjectStore::Create({dir_.File("objects"), nullptr});
    ASSERT_OK(st);
    store_ = std::move(st).value();
    auto up = store::UploadSessions::Create({dir_.File("staging")}, store_.get());
    ASSERT_OK(up);
    uploads_ = std::move(up).value();
    ImageService::Options with_kms = options;
    with_kms.signing_keys = &kms_;
    auto svc = ImageService::Create(with_kms, db_.get(), store_.get(), uploads_.get(), &verifier_,
                                    &clock_);
    ASSERT_OK(svc);
    images_ = std::move(svc).value();
    Accounts::Options ao;
    ao.argon2_t_cost = 1;
    ao.argon2_m_cost_kib = 64;
    auto acc = Accounts::Create(ao, db_.get(), &clock_, &kms_);
    ASSERT_OK(acc);
    accounts_ = std::move(acc).value();
    alice_ = NewCustomer();
    bob_ = NewCustomer();
  }
  // A customer with a package-signing key (made here, as on the customer's
  // machine; the fake KMS certifies it).
  Principal NewCustomer() {
    auto signing = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
    EXPECT_OK(signing);
    RegisterRequest req;
    req.signing_public_key_pem = signing->Public().ToPem();
    req.signing_key_proof = {1};  // the fake KMS does not check it
    auto r = accounts_->Register(req);
    EXPECT_OK(r);
    signer_of_[r->customer_id] = signing->KeyId();
    auto login = accounts_->Login({r->login_id, r->password.Clone()});
    EXPECT_OK(login);
    auto who = accounts_->Authenticate(login->token);
    EXPECT_OK(who);
    return *who;
  }
  StatusOr<ImageInfo> UploadAs(const Principal& who, const std::string& data,
                               const std::string& name = "web") {
    StringReader r(data);
    CommitUploadRequest req;
    req.name = name;
    req.policy.required_tags["region"] = "eu";
    return images_->Upload(who, req, r);
  }

  TempDir dir_;
  FakeClock clock_;
  FakeVerifier verifier_;
  testing::FakeKmsClient kms_;
  std::unique_ptr<SqlitePortalDb> db_;
  std::unique_ptr<store::FsObjectStore> store_;
  std::unique_ptr<store::UploadSessions> uploads_;
  std::unique_ptr<ImageService> images_;
  std::unique_ptr<Accounts> accounts_;
  Principal alice_, bob_;
  std::map<std::string, std::string> signer_of_;  // customer id -> signing key id
};

TEST_F(ImagesTest, VerifiedUploadIsListedWithItsDigestAndPolicy) {
  std::string data = Sealed(1000);
  auto img = UploadAs(alice_, data);
  ASSERT_OK(img);
  EXPECT_EQ(img->size_bytes, data.size());
  EXPECT_EQ(img->sha256_hex, crypto::HexEncode(crypto::Sha256(data)));
  auto list = images_->ListImages(alice_);
  ASSERT_OK(list);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].image_id, img->image_id);
  EXPECT_EQ((*list)[0].policy.required_tags.at("region"), "eu");
}

TEST_F(ImagesTest, UnencryptedPackageIsRejectedAndNeverStored) {
  EXPECT_STATUS(UploadAs(alice_, "plain disk"), StatusCode::kFailedPrecondition, "not encrypted");
  auto list = images_->ListImages(alice_);
  ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
  auto objects = store_->List("");
  ASSERT_OK(objects);
  EXPECT_TRUE(objects->empty());
}

// A package whose tag names `tenant` and `key_id` (the FakeVerifier reads
// them from the content).
std::string SealedFor(const std::string& tenant, const std::string& key_id,
                      const std::string& signer = "") {
  return std::string(kSealedMagic) + "disk\nTENANT=" + tenant + "\nKEYID=" + key_id + "\n" +
         (signer.empty() ? "" : "SIGNER=" + signer + "\n");
}

TEST_F(ImagesTest, PackageOfTheUploaderIsListedWithItsTagKeyId) {
  auto key = accounts_->GetCustomerKey(alice_);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  auto img = UploadAs(alice_, SealedFor(alice_.customer_id, "sha256:" + *spki,
                                        signer_of_[alice_.customer_id]));
  ASSERT_OK(img);
  EXPECT_EQ(img->key_id, "sha256:" + *spki);
}

TEST_F(ImagesTest, UnsignedPackageIsRefusedAndNothingIsStored) {
  auto key = accounts_->GetCustomerKey(alice_);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  EXPECT_STATUS(UploadAs(alice_, SealedFor(alice_.customer_id, "sha256:" + *spki)),
                StatusCode::kPermissionDenied, "unsigned_package");
  auto objects = store_->List("");
  ASSERT_OK(objects);
  EXPECT_TRUE(objects->empty());
}

TEST_F(ImagesTest, PackageSignedByAnotherKeyIsSignerMismatch) {
  auto key = accounts_->GetCustomerKey(alice_);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  // Sealed to Alice's key, for Alice's tenant, but signed by Bob's key (or
  // a self-made one): not Alice's registered signing key.
  auto img = UploadAs(alice_, SealedFor(alice_.customer_id, "sha256:" + *spki,
                                        signer_of_[bob_.customer_id]));
  EXPECT_STATUS(img, StatusCode::kPermissionDenied, "signer_mismatch");
  EXPECT_STATUS(img, StatusCode::kPermissionDenied, signer_of_[alice_.customer_id]);
  auto objects = store_->List("");
  ASSERT_OK(objects);
  EXPECT_TRUE(objects->empty());
}

TEST_F(ImagesTest, SigningCertificateTheKmsCaDidNotIssueIsNotTrusted) {
  auto key = accounts_->GetCustomerKey(alice_);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  // What the portal hears as Alice's signing key is certified by some other
  // CA: the portal checks it against the KMS CA and refuses.
  auto other_ca = crypto::CreateSelfSignedCa({"not the KMS"});
  ASSERT_OK(other_ca);
  auto forged = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(forged);
  crypto::IssueOptions io;
  io.common_name = alice_.customer_id;
  io.usage = crypto::CertUsage::kPackageSigning;
  auto cert = crypto::IssueCertificate(*other_ca, forged->Public(), io);
  ASSERT_OK(cert);
  kms_.SetSigningKeyForTesting({alice_.customer_id, forged->KeyId(), forged->Public().ToPem(),
                                cert->ToPem()});
  EXPECT_STATUS(UploadAs(alice_, SealedFor(alice_.customer_id, "sha256:" + *spki, forged->KeyId())),
                StatusCode::kDataLoss, "does not verify against the KMS CA");
}

TEST_F(ImagesTest, CustomerWithoutASigningKeyCannotUploadATaggedPackage) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  auto login = accounts_->Login({r->login_id, r->password.Clone()});
  ASSERT_OK(login);
  auto carol = accounts_->Authenticate(login->token);
  ASSERT_OK(carol);
  auto key = accounts_->GetCustomerKey(*carol);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  EXPECT_STATUS(UploadAs(*carol, SealedFor(carol->customer_id, "sha256:" + *spki, "ab12")),
                StatusCode::kPermissionDenied, "has no registered signing key");
}

TEST_F(ImagesTest, AnotherCustomersPackageIsRefusedAndNothingIsStored) {
  auto key = accounts_->GetCustomerKey(alice_);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  // Bob uploads a package sealed for Alice (her tenant, her key).
  const std::string package =
      SealedFor(alice_.customer_id, "sha256:" + *spki, signer_of_[alice_.customer_id]);
  StringReader r(package);
  auto state = images_->BeginUpload(bob_, {});
  ASSERT_OK(state);
  ASSERT_OK(images_->AppendUpload(bob_, state->upload_id, 0, r));
  CommitUploadRequest commit;
  commit.upload_id = state->upload_id;
  commit.name = "stolen";
  auto img = images_->CommitUpload(bob_, commit);
  EXPECT_STATUS(img, StatusCode::kPermissionDenied, "tenant_mismatch");
  EXPECT_STATUS(img, StatusCode::kPermissionDenied, "'" + alice_.customer_id + "'");
  EXPECT_STATUS(img, StatusCode::kPermissionDenied, "'" + bob_.customer_id + "'");
  auto list = images_->ListImages(bob_);
  ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
  auto objects = store_->List("");
  ASSERT_OK(objects);
  EXPECT_TRUE(objects->empty());
  // No half-written upload is left to resume or commit.
  EXPECT_STATUS(images_->GetUpload(bob_, state->upload_id), StatusCode::kNotFound, "no upload");
  EXPECT_TRUE(std::filesystem::is_empty(dir_.File("staging")));
}

TEST_F(ImagesTest, OwnTenantWithAnotherCustomersKeyIsRefused) {
  auto key = accounts_->GetCustomerKey(alice_);
  ASSERT_OK(key);
  auto spki = crypto::KeyIdOfPem(key->public_key_pem);
  ASSERT_OK(spki);
  EXPECT_STATUS(UploadAs(bob_, SealedFor(bob_.customer_id, "sha256:" + *spki,
                                        signer_of_[bob_.customer_id])),
                StatusCode::kPermissionDenied, "tenant_mismatch");
  EXPECT_STATUS(UploadAs(bob_, SealedFor(alice_.customer_id, "key-1", signer_of_[bob_.customer_id])),
                StatusCode::kPermissionDenied, "tenant_mismatch");
  auto objects = store_->List("");
  ASSERT_OK(objects);
  EXPECT_TRUE(objects->empty());
}

TEST_F(ImagesTest, ManifestMismatchIsRejected) {
  EXPECT_STATUS(UploadAs(alice_, Sealed(10) + "BAD-DIGEST"), StatusCode::kDataLoss, "manifest");
}

TEST_F(ImagesTest, UploadResumesAfterABrokenConnection) {
  std::string data = Sealed(200000);
  auto state = images_->BeginUpload(alice_, {});
  ASSERT_OK(state);
  BrokenReader broken(data, 70000);
  EXPECT_STATUS(images_->AppendUpload(alice_, state->upload_id, 0, broken),
                StatusCode::kUnavailable, "connection reset");
  auto resumed = images_->GetUpload(alice_, state->upload_id);
  ASSERT_OK(resumed);
  EXPECT_EQ(resumed->offset_bytes, 70000u);
  StringReader rest(std::string_view(data).substr(70000));
  ASSERT_OK(images_->AppendUpload(alice_, state->upload_id, 70000, rest));
  CommitUploadRequest commit;
  commit.upload_id = state->upload_id;
  commit.name = "resumed";
  commit.sha256_hex = crypto::HexEncode(crypto::Sha256(data));
  auto img = images_->CommitUpload(alice_, commit);
  ASSERT_OK(img);
  auto f = images_->OpenImage(alice_, img->image_id);
  ASSERT_OK(f);
  std::string back(data.size(), '\0');
  auto n = (*f)->Read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(back.data()), back.size()));
  ASSERT_OK(n);
  EXPECT_EQ(back, data);
}

TEST_F(ImagesTest, ImageLargerThanTheImageQuotaIsRejected) {
  ImageService::Options o;
  o.max_image_bytes = 100;
  Init(o);
  EXPECT_STATUS(UploadAs(alice_, Sealed(200)), StatusCode::kResourceExhausted, "quota");
  EXPECT_OK(UploadAs(alice_, Sealed(50)));
}

TEST_F(ImagesTest, CustomerQuotaCoversAllImages) {
  ImageService::Options o;
  o.max_customer_bytes = 150;
  Init(o);
  ASSERT_OK(UploadAs(alice_, Sealed(86)));  // 100 bytes
  EXPECT_STATUS(UploadAs(alice_, Sealed(86)), StatusCode::kResourceExhausted, "quota");
  EXPECT_OK(UploadAs(bob_, Sealed(86)));  // Bob's quota is his own
}

TEST_F(ImagesTest, DeleteRemovesTheImageAndItsPackage) {
  auto img = UploadAs(alice_, Sealed(10));
  ASSERT_OK(img);
  ASSERT_OK(images_->DeleteImage(alice_, img->image_id));
  EXPECT_STATUS(images_->GetImage(alice_, img->image_id), StatusCode::kNotFound, "no such image");
  EXPECT_STATUS(store_->Stat(img->object_key), StatusCode::kNotFound, "no object");
}

TEST_F(ImagesTest, BadNameIsRejected) {
  EXPECT_STATUS(UploadAs(alice_, Sealed(1), ""), StatusCode::kInvalidArgument, "image name");
  EXPECT_STATUS(UploadAs(alice_, Sealed(1), "a\nb"), StatusCode::kInvalidArgument, "image name");
}

TEST_F(ImagesTest, AnonymousCallerIsUnauthenticated) {
  EXPECT_STATUS(images_->ListImages(Principal{}), StatusCode::kUnauthenticated, "not logged in");
}

// Cross-tenant isolation: Bob can neither see, download nor delete Alice's
// image, nor touch her upload, and every refusal looks like "not found".
TEST_F(ImagesTest, OtherCustomerCannotListAlicesImages) {
  ASSERT_OK(UploadAs(alice_, Sealed(10)));
  auto list = images_->ListImages(bob_);
  ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
}

TEST_F(ImagesTest, OtherCustomerCannotGetOrDownloadAlicesImage) {
  auto img = UploadAs(alice_, Sealed(10));
  ASSERT_OK(img);
  EXPECT_STATUS(images_->GetImage(bob_, img->image_id), StatusCode::kNotFound, "no such image");
  EXPECT_STATUS(images_->OpenImage(bob_, img->image_id), StatusCode::kNotFound, "no such image");
}

TEST_F(ImagesTest, OtherCustomerCannotDeleteAlicesImage) {
  auto img = UploadAs(alice_, Sealed(10));
  ASSERT_OK(img);
  EXPECT_STATUS(images_->DeleteImage(bob_, img->image_id), StatusCode::kNotFound,
                "no such image");
  EXPECT_OK(images_->GetImage(alice_, img->image_id));
  EXPECT_OK(store_->Stat(img->object_key));
}

TEST_F(ImagesTest, OtherCustomerCannotTouchAlicesUpload) {
  auto state = images_->BeginUpload(alice_, {});
  ASSERT_OK(state);
  StringReader r(Sealed(5));
  EXPECT_STATUS(images_->AppendUpload(bob_, state->upload_id, 0, r), StatusCode::kNotFound,
                "no upload session");
  EXPECT_STATUS(images_->GetUpload(bob_, state->upload_id), StatusCode::kNotFound,
                "no upload session");
  CommitUploadRequest commit;
  commit.upload_id = state->upload_id;
  commit.name = "stolen";
  EXPECT_STATUS(images_->CommitUpload(bob_, commit), StatusCode::kNotFound, "no upload session");
}

}  // namespace
}  // namespace vmseal::csp
