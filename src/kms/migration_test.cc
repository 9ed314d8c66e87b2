#include "kms/migration.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "testing/test_util.h"

namespace vmseal::kms {
namespace {

using ::testing::HasSubstr;

RewrapAuthorization VectorAuthorization() {
  RewrapAuthorization a;
  a.tenant = "acme";
  a.image_id = "img-0001";
  a.key_version = 1;
  a.destination_cert_sha256 = crypto::HexEncode(crypto::Sha256(std::string_view("destination")));
  const std::string label("vmseal-package-key-v1\0dest", 26);
  a.destination_label.assign(label.begin(), label.end());
  crypto::Bytes n(32);
  for (size_t i = 0; i < n.size(); ++i) n[i] = static_cast<uint8_t>(i);
  a.nonce = crypto::HexEncode(n);
  a.expires_unix = 1764201600;
  return a;
}

// docs/format/rewrap-authorization.md §5 (computed independently in Python
// from §2).
TEST(RewrapAuthorizationTest, MessageBytesAreTheSpecifiedVector) {
  const crypto::Bytes m = RewrapAuthorizationMessage(VectorAuthorization());
  EXPECT_EQ(m.size(), 233u);
  EXPECT_EQ(crypto::HexEncode(m),
            "766d7365616c2d7265777261702d617574686f72697a6174696f6e2d7631000000000461636d65000000"
            "08696d672d30303031000000000000000100000040623563373535616161623130333862336435363237"
            "626264653766343763613830633566356330343831633664333366303431333964303761613135333065"
            "370000001a766d7365616c2d7061636b6167652d6b65792d76310064657374000000403030303130323033"
            "303430353036303730383039306130623063306430653066313031313132313331343135313631373138"
            "31393161316231633164316531660000000069279480");
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(m)),
            "add3b16eb82c16dbb63d73e2d7fe24fbbc4436e006308dc8657cc92125f1e079");
}

TEST(RewrapAuthorizationTest, JsonRoundTripsAndMalformedFieldsAreNamed) {
  const RewrapAuthorization a = VectorAuthorization();
  auto back = RewrapAuthorizationFromJson(RewrapAuthorizationToJson(a));
  ASSERT_OK(back);
  EXPECT_EQ(RewrapAuthorizationMessage(*back), RewrapAuthorizationMessage(a));
  for (const char* field : {"tenant", "image_id", "key_version", "destination_cert_sha256",
                            "destination_label", "nonce", "expires_unix"}) {
    nlohmann::json j = RewrapAuthorizationToJson(a);
    j.erase(field);
    EXPECT_STATUS(RewrapAuthorizationFromJson(j).status(), StatusCode::kInvalidArgument,
                  std::string("malformed_authorization: ") + field);
  }
  nlohmann::json j = RewrapAuthorizationToJson(a);
  j["nonce"] = "00";
  EXPECT_STATUS(RewrapAuthorizationFromJson(j).status(), StatusCode::kInvalidArgument, "nonce");
  j = RewrapAuthorizationToJson(a);
  j["tenant"] = "a/b";
  EXPECT_STATUS(RewrapAuthorizationFromJson(j).status(), StatusCode::kInvalidArgument, "tenant");
  j = RewrapAuthorizationToJson(a);
  j["key_version"] = 0;
  EXPECT_STATUS(RewrapAuthorizationFromJson(j).status(), StatusCode::kInvalidArgument, "key_version");
}

TEST(RewrapAuthorizationTest, CheckRefusesAnotherSignerAnExpiryAndAnotherDestination) {
  auto signer = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(signer);
  auto ca = crypto::CreateSelfSignedCa({"dest ca"});
  ASSERT_OK(ca);
  auto dest = crypto::PrivateKey::Generate(crypto::KeyType::kX25519);
  ASSERT_OK(dest);
  crypto::IssueOptions io;
  io.common_name = dest->KeyId();
  auto cert = crypto::IssueCertificate(*ca, dest->Public(), io);
  ASSERT_OK(cert);
  const int64_t now = 1764201000;
  RewrapRequest r;
  r.authorization = VectorAuthorization();
  r.authorization.destination_cert_sha256 = crypto::HexEncode(crypto::Sha256(cert->ToDer()));
  r.destination_cert_pem = cert->ToPem();
  auto sig = crypto::Sign(*signer, crypto::SignatureDigest::kSha256,
                          RewrapAuthorizationMessage(r.authorization));
  ASSERT_OK(sig);
  r.signature = *sig;
  auto key = CheckRewrapAuthorization(r, signer->Public(), now);
  ASSERT_OK(key);
  EXPECT_EQ(key->KeyId(), dest->KeyId());

  auto other = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(other);
  EXPECT_STATUS(CheckRewrapAuthorization(r, other->Public(), now).status(),
                StatusCode::kPermissionDenied, "bad_authorization");
  RewrapRequest changed = r;
  changed.authorization.key_version = 2;  // any signed field changed
  EXPECT_STATUS(CheckRewrapAuthorization(changed, signer->Public(), now).status(),
                StatusCode::kPermissionDenied, "bad_authorization");
  EXPECT_STATUS(CheckRewrapAuthorization(r, signer->Public(), 1764201600).status(),
                StatusCode::kPermissionDenied, "authorization_expired");
  EXPECT_STATUS(CheckRewrapAuthorization(r, signer->Public(), 1764201600 - 3601).status(),
                StatusCode::kPermissionDenied, "authorization_expired");
  RewrapRequest swapped = r;
  auto cert2 = crypto::IssueCertificate(*ca, other->Public(), io);
  ASSERT_OK(cert2);
  swapped.destination_cert_pem = cert2->ToPem();
  EXPECT_STATUS(CheckRewrapAuthorization(swapped, signer->Public(), now).status(),
                StatusCode::kPermissionDenied, "destination_mismatch");
}

}  // namespace
}  // namespace vmseal::kms
