#include "base/status.h"

#include <gtest/gtest.h>

#include <memory>

#include "testing/test_util.h"

namespace vmseal {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0) return InvalidArgumentError("odd");
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(h, Half(h));
  return h;
}

Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x));
  return OkStatus();
}

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.ToString(), "OK");
}

TEST(StatusTest, ErrorCarriesCodeAndMessage) {
  Status s = NotFoundError("no such key");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.ToString(), "NOT_FOUND: no such key");
  EXPECT_EQ(s.WithPrefix("kms").message(), "kms: no such key");
}

TEST(StatusTest, AssignOrReturnPropagatesFirstError) {
  EXPECT_EQ(*Quarter(8), 2);
  EXPECT_STATUS(Quarter(6), StatusCode::kInvalidArgument, "odd");
  EXPECT_OK(CheckEven(4));
  EXPECT_STATUS(CheckEven(3), StatusCode::kInvalidArgument, "odd");
}

TEST(StatusTest, StatusOrHoldsMoveOnlyValues) {
  StatusOr<std::unique_ptr<int>> p = std::make_unique<int>(7);
  ASSERT_TRUE(p.ok());
  std::unique_ptr<int> v = std::move(p).value();
  EXPECT_EQ(*v, 7);
}

TEST(StatusTest, HttpMappingRoundTripsCommonCodes) {
  for (StatusCode c : {StatusCode::kInvalidArgument, StatusCode::kNotFound,
                       StatusCode::kPermissionDenied, StatusCode::kUnauthenticated,
                       StatusCode::kUnavailable, StatusCode::kFailedPrecondition}) {
    EXPECT_EQ(CodeFromHttpStatus(HttpStatusFromCode(c)), c) << StatusCodeName(c);
  }
  EXPECT_EQ(HttpStatusFromCode(StatusCode::kResourceExhausted), 429);
}

}  // namespace
}  // namespace vmseal
