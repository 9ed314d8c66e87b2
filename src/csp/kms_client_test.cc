#include "csp/kms_client.h"

#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

HttpsKmsClientOptions Options(const TempDir& dir, const std::string& url) {
  HttpsKmsClientOptions o;
  o.url = url;
  o.ca_cert_file = dir.File("ca.pem");
  o.cert_file = dir.File("portal.pem");
  o.key_file = dir.File("portal-key.pem");
  return o;
}

TEST(HttpsKmsClientTest, PlainHttpUrlIsRejected) {
  TempDir dir;
  EXPECT_STATUS(NewHttpsKmsClient(Options(dir, "http://127.0.0.1:8443")),
                StatusCode::kInvalidArgument, "https://");
}

TEST(HttpsKmsClientTest, UrlWithoutPortIsRejected) {
  TempDir dir;
  EXPECT_STATUS(NewHttpsKmsClient(Options(dir, "https://kms.example")),
                StatusCode::kInvalidArgument, "host:port");
}

TEST(HttpsKmsClientTest, UrlWithBadPortIsRejected) {
  TempDir dir;
  for (const char* url : {"https://kms:0", "https://kms:65536", "https://kms:8x"}) {
    SCOPED_TRACE(url);
    EXPECT_STATUS(NewHttpsKmsClient(Options(dir, url)), StatusCode::kInvalidArgument, "port");
  }
}

TEST(HttpsKmsClientTest, MissingIdentityIsRejected) {
  TempDir dir;
  HttpsKmsClientOptions o = Options(dir, "https://127.0.0.1:8443");
  o.key_file.clear();
  EXPECT_STATUS(NewHttpsKmsClient(o), StatusCode::kInvalidArgument, "certificate and key");
}

TEST(HttpsKmsClientTest, UnreadableCaFileNamesTheFile) {
  TempDir dir;
  auto c = NewHttpsKmsClient(Options(dir, "https://127.0.0.1:8443"));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(dir.File("ca.pem")), std::string::npos)
      << c.status().message();
}

TEST(HttpsKmsClientTest, GarbageCertificatesAreRejected) {
  TempDir dir;
  WriteFileOrDie(dir.File("ca.pem"), "not a certificate");
  WriteFileOrDie(dir.File("portal.pem"), "not a certificate");
  WriteFileOrDie(dir.File("portal-key.pem"), "not a key");
  EXPECT_FALSE(NewHttpsKmsClient(Options(dir, "https://127.0.0.1:8443")).ok());
}

}  // namespace
}  // namespace vmseal::csp
