#include "store/s3_store.h"

#include <httplib.h>

#include <mutex>
#include <regex>
#include <thread>

#include "crypto/primitives.h"
#include "store/internal/object_store_suite.h"
#include "testing/s3_harness.h"
#include "testing/test_util.h"

namespace vmseal::store {
namespace {

using ::vmseal::store::testing::BrokenReader;
using ::vmseal::store::testing::ObjectStoreTest;
using ::vmseal::store::testing::Pattern;
using ::vmseal::store::testing::StoreFactory;
using ::vmseal::testing::S3Server;

// One s3rver per test binary, started on first use and stopped (by pid) at
// exit; every test gets a fresh bucket.
StatusOr<S3Server*> Server() {
  static StatusOr<std::unique_ptr<S3Server>>* server =
      new StatusOr<std::unique_ptr<S3Server>>(S3Server::Start({}));
  static const int registered = std::atexit([] { delete server; });
  (void)registered;
  if (!server->ok()) return server->status();
  return server->value().get();
}

S3ObjectStore::Options BaseOptions(const std::string& endpoint, const std::string& bucket) {
  S3ObjectStore::Options o;
  o.endpoint = endpoint;
  o.bucket = bucket;
  o.access_key_id = ::vmseal::testing::kS3AccessKeyId;
  o.secret_access_key = SecretBytes(crypto::AsBytes(::vmseal::testing::kS3SecretAccessKey));
  o.part_size_bytes = kS3MinPartSizeBytes;
  return o;
}

StatusOr<std::unique_ptr<S3ObjectStore>> FreshStore(std::string* bucket_out = nullptr) {
  ASSIGN_OR_RETURN(S3Server * server, Server());
  std::string bucket = "t" + crypto::HexEncode(crypto::RandomBytes(8));
  if (bucket_out != nullptr) *bucket_out = bucket;
  ASSIGN_OR_RETURN(auto store, S3ObjectStore::Create(BaseOptions(server->endpoint(), bucket)));
  RETURN_IF_ERROR(store->CreateBucket());
  return store;
}

// The bucket of the suite's last fresh store (tests run one at a time).
std::string& LastBucket() {
  static std::string* bucket = new std::string();
  return *bucket;
}

INSTANTIATE_TEST_SUITE_P(
    S3, ObjectStoreTest,
    ::testing::Values(StoreFactory{
        "s3",
        [](const std::string&) -> StatusOr<std::unique_ptr<ObjectStore>> {
          ASSIGN_OR_RETURN(auto s, FreshStore(&LastBucket()));
          return std::unique_ptr<ObjectStore>(std::move(s));
        },
        kS3MinPartSizeBytes,
        [](const std::string&) -> StatusOr<std::unique_ptr<ObjectStore>> {
          ASSIGN_OR_RETURN(S3Server * server, Server());
          ASSIGN_OR_RETURN(auto s,
                           S3ObjectStore::Create(BaseOptions(server->endpoint(), LastBucket())));
          return std::unique_ptr<ObjectStore>(std::move(s));
        }}),
    [](const auto& param_info) { return param_info.param.name; });

// s3rver parses the SigV4 Authorization header and checks the access key id
// (it does not verify V4 signatures; the header test below pins those).
TEST(S3ObjectStoreTest, UnknownAccessKeyIsRejectedByTheServer) {
  std::string bucket;
  auto good = FreshStore(&bucket);
  ASSERT_OK(good);
  S3ObjectStore::Options o = BaseOptions((*Server())->endpoint(), bucket);
  o.access_key_id = "NOT-A-KNOWN-KEY";
  auto store = S3ObjectStore::Create(std::move(o));
  ASSERT_OK(store);
  StringReader r("x");
  EXPECT_STATUS((*store)->Put("k", r, {}), StatusCode::kPermissionDenied, "InvalidAccessKeyId");
}

TEST(S3ObjectStoreTest, FailedMultipartUploadIsAbortedAndInvisible) {
  auto store = FreshStore();
  ASSERT_OK(store);
  std::string data = Pattern(3 * kS3MinPartSizeBytes);
  BrokenReader broken(data, 2 * kS3MinPartSizeBytes + 100);
  EXPECT_STATUS((*store)->Put("big", broken, {}), StatusCode::kUnavailable, "connection reset");
  auto list = (*store)->List("");
  ASSERT_OK(list);
  EXPECT_TRUE(list->empty());
}

TEST(S3ObjectStoreTest, UnreachableEndpointIsUnavailable) {
  auto port = ::vmseal::testing::PickFreeLoopbackPort();
  ASSERT_OK(port);
  auto store = S3ObjectStore::Create(
      BaseOptions("http://127.0.0.1:" + std::to_string(*port), "b"));
  ASSERT_OK(store);
  EXPECT_STATUS((*store)->Stat("k"), StatusCode::kUnavailable, "S3 request failed");
}

TEST(S3ObjectStoreTest, SmallPartSizeIsRejected) {
  S3ObjectStore::Options o = BaseOptions("http://127.0.0.1:1", "b");
  o.part_size_bytes = kS3MinPartSizeBytes - 1;
  EXPECT_STATUS(S3ObjectStore::Create(std::move(o)), StatusCode::kInvalidArgument, "part size");
}

// s3rver checks signatures, but this pins the scheme independently of it: a
// local server records the Authorization header libcurl sends.
TEST(S3ObjectStoreTest, RequestsCarryAwsSigV4AuthorizationWithCredentialScope) {
  httplib::Server http;
  std::mutex mu;
  std::vector<std::string> auths, sha_headers;
  http.Put(".*", [&](const httplib::Request& req, httplib::Response& res) {
    std::lock_guard<std::mutex> lock(mu);
    auths.push_back(req.get_header_value("Authorization"));
    sha_headers.push_back(req.get_header_value("x-amz-content-sha256"));
    res.status = 200;
  });
  int port = http.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread t([&] { http.listen_after_bind(); });
  S3ObjectStore::Options o = BaseOptions("http://127.0.0.1:" + std::to_string(port), "bkt");
  o.access_key_id = "AKIDEXAMPLE";
  o.region = "eu-west-3";
  auto store = S3ObjectStore::Create(std::move(o));
  ASSERT_OK(store);
  StringReader r("payload");
  auto put = (*store)->Put("k", r, {});
  http.stop();
  t.join();
  ASSERT_OK(put);
  ASSERT_EQ(auths.size(), 2u);  // the object and its digest companion
  std::regex re(
      "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/[0-9]{8}/eu-west-3/s3/aws4_request, "
      "SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}");
  EXPECT_TRUE(std::regex_match(auths[0], re)) << auths[0];
  EXPECT_NE(auths[0].find("x-amz-content-sha256"), std::string::npos) << auths[0];
  EXPECT_NE(auths[0].find("x-amz-date"), std::string::npos) << auths[0];
  EXPECT_EQ(sha_headers[0], crypto::HexEncode(crypto::Sha256(std::string_view("payload"))));
}

}  // namespace
}  // namespace vmseal::store
