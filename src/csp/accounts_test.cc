#include "csp/accounts.h"

#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/internal/test_doubles.h"
#include "csp/sqlite_db.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

SecretBytes Secret(std::string_view s) { return SecretBytes(crypto::AsBytes(s)); }
std::string Str(const SecretBytes& s) { return std::string(crypto::AsStringView(s.UnsafeSpan())); }

class AccountsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto db = SqlitePortalDb::Open(":memory:");
    ASSERT_OK(db);
    db_ = std::move(db).value();
    Accounts::Options o;
    o.argon2_t_cost = 1;  // cheap for tests; production uses the defaults
    o.argon2_m_cost_kib = 256;
    o.session_ttl_seconds = 600;
    auto a = Accounts::Create(o, db_.get(), &clock_, &kms_);
    ASSERT_OK(a);
    accounts_ = std::move(a).value();
  }
  StatusOr<LoginResponse> LoginAs(const RegisterResponse& r) {
    return accounts_->Login({r.login_id, r.password.Clone()});
  }

  FakeClock clock_;
  testing::FakeKmsClient kms_;
  std::unique_ptr<SqlitePortalDb> db_;
  std::unique_ptr<Accounts> accounts_;
};

TEST_F(AccountsTest, RegisterStoresTheKmsCertificateOfTheCustomer) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  EXPECT_EQ(r->key.customer_id, r->customer_id);
  auto key = accounts_->GetCustomerKey({r->customer_id});
  ASSERT_OK(key);
  EXPECT_EQ(key->key_id, r->key.key_id);
  EXPECT_EQ(key->cert_pem, r->key.cert_pem);
  auto cert = crypto::Certificate::FromPem(key->cert_pem);
  ASSERT_OK(cert);
  auto ca = crypto::Certificate::FromPem(kms_.CaCertificatePem());
  ASSERT_OK(ca);
  EXPECT_OK(crypto::VerifyCertificateChain(*cert, {*ca}));
}

TEST_F(AccountsTest, RegisterAsksTheKmsForAnRsa3072KeyByDefault) {
  ASSERT_OK(accounts_->Register({}));
  EXPECT_EQ(kms_.last_key_algorithm(), "RSA-3072");
  ASSERT_OK(accounts_->Register({"rsa3072"}));
  EXPECT_EQ(kms_.last_key_algorithm(), "RSA-3072");
}

TEST_F(AccountsTest, RegisterWithX25519StoresTheKmsX25519Key) {
  auto r = accounts_->Register({"x25519"});
  ASSERT_OK(r);
  EXPECT_EQ(kms_.last_key_algorithm(), "X25519");
  EXPECT_EQ(r->key.algorithm, "X25519");
  auto key = accounts_->GetCustomerKey({r->customer_id});
  ASSERT_OK(key);
  EXPECT_EQ(key->algorithm, "X25519");
  auto pub = crypto::PublicKey::FromPem(key->public_key_pem);
  ASSERT_OK(pub);
  EXPECT_EQ(pub->type(), crypto::KeyType::kX25519);
  auto cert = crypto::Certificate::FromPem(key->cert_pem);
  ASSERT_OK(cert);
  auto certified = cert->GetPublicKey();
  ASSERT_OK(certified);
  EXPECT_EQ(certified->KeyId(), pub->KeyId());
}

TEST_F(AccountsTest, RegisterRefusesAnUnknownKeyAlgorithmBeforeAskingTheKms) {
  EXPECT_STATUS(accounts_->Register({"RSA-3072"}), StatusCode::kInvalidArgument,
                "key_algorithm must be rsa3072 or x25519");
  EXPECT_STATUS(accounts_->Register({"p256"}), StatusCode::kInvalidArgument,
                "key_algorithm must be rsa3072 or x25519");
  EXPECT_EQ(kms_.last_key_algorithm(), "");
}

TEST_F(AccountsTest, RegisterWithUnreachableKmsFailsAndCreatesNothing) {
  kms_.SetUnavailable(true);
  auto r = accounts_->Register({});
  EXPECT_STATUS(r, StatusCode::kUnavailable, "KMS: ");
  kms_.SetUnavailable(false);
  ASSERT_OK(accounts_->Register({}));
}

TEST_F(AccountsTest, CustomerKeyOfAnotherCustomerIsNotReturned) {
  auto a = accounts_->Register({});
  ASSERT_OK(a);
  auto b = accounts_->Register({});
  ASSERT_OK(b);
  auto key = accounts_->GetCustomerKey({b->customer_id});
  ASSERT_OK(key);
  EXPECT_NE(key->key_id, a->key.key_id);
  EXPECT_STATUS(accounts_->GetCustomerKey({"cust-nobody"}), StatusCode::kNotFound, "");
}

TEST_F(AccountsTest, RegisterGeneratesLoginAndStrongPassword) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  EXPECT_TRUE(r->login_id.starts_with("u-"));
  EXPECT_TRUE(r->customer_id.starts_with("cust-"));
  EXPECT_EQ(r->password.size(), 24u);
  auto r2 = accounts_->Register({});
  ASSERT_OK(r2);
  EXPECT_NE(r->login_id, r2->login_id);
  EXPECT_FALSE(r->password.Equals(r2->password));
}

TEST_F(AccountsTest, PasswordIsStoredAsArgon2idHashOnly) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  auto rec = db_->FindCustomerByLogin(r->login_id);
  ASSERT_OK(rec);
  EXPECT_TRUE(rec->password_hash.starts_with("$argon2id$v=19$m=256,t=1,p=1$"))
      << rec->password_hash;
  EXPECT_EQ(rec->password_hash.find(Str(r->password)), std::string::npos);
}

TEST_F(AccountsTest, LoginWithTheGeneratedPasswordReturnsAWorkingToken) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  auto login = LoginAs(*r);
  ASSERT_OK(login);
  EXPECT_EQ(login->expires_unix, clock_.NowUnixSeconds() + 600);
  auto who = accounts_->Authenticate(login->token);
  ASSERT_OK(who);
  EXPECT_EQ(who->customer_id, r->customer_id);
}

TEST_F(AccountsTest, WrongPasswordIsUnauthenticated) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  EXPECT_STATUS(accounts_->Login({r->login_id, Secret("not-the-password")}),
                StatusCode::kUnauthenticated, "invalid login id or password");
}

TEST_F(AccountsTest, UnknownLoginGivesTheSameErrorAsAWrongPassword) {
  EXPECT_STATUS(accounts_->Login({"u-nobody", Secret("whatever")}), StatusCode::kUnauthenticated,
                "invalid login id or password");
}

TEST_F(AccountsTest, TokenIsStoredOnlyAsItsHash) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  auto login = LoginAs(*r);
  ASSERT_OK(login);
  EXPECT_STATUS(db_->FindSession(Str(login->token)), StatusCode::kNotFound, "no such session");
  EXPECT_OK(db_->FindSession(crypto::HexEncode(crypto::Sha256(login->token.UnsafeSpan()))));
}

TEST_F(AccountsTest, ExpiredTokenIsRejected) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  auto login = LoginAs(*r);
  ASSERT_OK(login);
  clock_.AdvanceSeconds(600);
  EXPECT_STATUS(accounts_->Authenticate(login->token), StatusCode::kUnauthenticated,
                "session expired");
}

TEST_F(AccountsTest, UnknownTokenIsRejected) {
  EXPECT_STATUS(accounts_->Authenticate(Secret("vst_forged")), StatusCode::kUnauthenticated,
                "invalid session token");
}

TEST_F(AccountsTest, LogoutEndsTheSession) {
  auto r = accounts_->Register({});
  ASSERT_OK(r);
  auto login = LoginAs(*r);
  ASSERT_OK(login);
  ASSERT_OK(accounts_->Logout(login->token));
  EXPECT_STATUS(accounts_->Authenticate(login->token), StatusCode::kUnauthenticated,
                "invalid session token");
}

TEST_F(AccountsTest, TokensOfTwoCustomersMapToTheirOwnPrincipal) {
  auto a = accounts_->Register({});
  auto b = accounts_->Register({});
  ASSERT_OK(a);
  ASSERT_OK(b);
  auto la = LoginAs(*a);
  auto lb = LoginAs(*b);
  ASSERT_OK(la);
  ASSERT_OK(lb);
  EXPECT_EQ(accounts_->Authenticate(la->token)->customer_id, a->customer_id);
  EXPECT_EQ(accounts_->Authenticate(lb->token)->customer_id, b->customer_id);
  // A's password does not open B's login.
  EXPECT_STATUS(accounts_->Login({b->login_id, a->password.Clone()}),
                StatusCode::kUnauthenticated, "invalid login id or password");
}

TEST(AccountsCreateTest, RejectsZeroIterations) {
  auto db = SqlitePortalDb::Open(":memory:");
  ASSERT_OK(db);
  FakeClock clock;
  Accounts::Options o;
  o.argon2_t_cost = 0;
  testing::FakeKmsClient kms;
  EXPECT_STATUS(Accounts::Create(o, db->get(), &clock, &kms), StatusCode::kInvalidArgument,
                "Argon2id");
}

}  // namespace
}  // namespace vmseal::csp
