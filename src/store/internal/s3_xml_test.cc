#include "store/internal/s3_xml.h"

#include <gtest/gtest.h>

#include <string>

namespace vmseal::store::internal {
namespace {

TEST(S3XmlTest, InitiateUploadId) {
  auto id = ParseInitiateUpload(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
      "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
      "<Bucket>b</Bucket><Key>k</Key><UploadId>abc-123</UploadId>"
      "</InitiateMultipartUploadResult>");
  ASSERT_TRUE(id.ok()) << id.status().ToString();
  EXPECT_EQ(*id, "abc-123");
}

TEST(S3XmlTest, InitiateUploadRefusesMalformedOrMissingId) {
  EXPECT_EQ(ParseInitiateUpload("<Initiate><UploadId>x</Initiate>").status().code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(ParseInitiateUpload("<InitiateMultipartUploadResult/>").status().code(),
            StatusCode::kUnavailable);
  EXPECT_EQ(ParseInitiateUpload("").status().code(), StatusCode::kUnavailable);
}

TEST(S3XmlTest, ListPage) {
  auto page = ParseListPage(
      "<ListBucketResult><Name>b</Name>"
      "<Contents><Key>a/1</Key><Size>42</Size></Contents>"
      "<Contents><Key>a/2</Key><Size>18446744073709551615</Size></Contents>"
      "<IsTruncated>true</IsTruncated><NextContinuationToken>t0k</NextContinuationToken>"
      "</ListBucketResult>");
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  ASSERT_EQ(page->objects.size(), 2u);
  EXPECT_EQ(page->objects[0].key, "a/1");
  EXPECT_EQ(page->objects[0].size_bytes, 42u);
  EXPECT_EQ(page->objects[1].size_bytes, UINT64_MAX);
  EXPECT_TRUE(page->truncated);
  EXPECT_EQ(page->next_token, "t0k");
}

TEST(S3XmlTest, ListPageRefusesMalformed) {
  EXPECT_EQ(ParseListPage("<ListBucketResult><Contents>").status().code(),
            StatusCode::kUnavailable);
  // An external entity is not fetched or expanded (no network, no files).
  auto page = ParseListPage(
      "<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>"
      "<ListBucketResult><Contents><Key>&x;</Key></Contents></ListBucketResult>");
  if (page.ok()) {
    ASSERT_EQ(page->objects.size(), 1u);
    EXPECT_EQ(page->objects[0].key.find("root:"), std::string::npos);
  }
}

}  // namespace
}  // namespace vmseal::store::internal
