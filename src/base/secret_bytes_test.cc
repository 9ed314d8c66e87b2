#include "base/secret_bytes.h"

#include <gtest/gtest.h>

#include <type_traits>
#include <utility>

namespace vmseal {
namespace {

static_assert(!std::is_copy_constructible_v<SecretBytes>);
static_assert(std::is_nothrow_move_constructible_v<SecretBytes>);

TEST(SecretBytesTest, RandomHasRequestedSizeAndDiffers) {
  SecretBytes a = SecretBytes::Random(32);
  SecretBytes b = SecretBytes::Random(32);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_FALSE(a.Equals(b));
}

TEST(SecretBytesTest, CloneIsEqualAndIndependent) {
  SecretBytes a = SecretBytes::Random(16);
  SecretBytes b = a.Clone();
  EXPECT_TRUE(a.Equals(b));
  b.UnsafeMutableData()[0] ^= 1;
  EXPECT_FALSE(a.Equals(b));
}

TEST(SecretBytesTest, MoveEmptiesSource) {
  SecretBytes a = SecretBytes::Random(16);
  SecretBytes b = std::move(a);
  EXPECT_EQ(b.size(), 16u);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move)
}

TEST(SecretBytesTest, ClearEmpties) {
  SecretBytes a = SecretBytes::Random(8);
  a.Clear();
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(a.UnsafeData(), nullptr);
}

TEST(SecretBytesTest, DifferentLengthsAreNotEqual) {
  EXPECT_FALSE(SecretBytes(3).Equals(SecretBytes(4)));
  EXPECT_TRUE(SecretBytes(4).Equals(SecretBytes(4)));
}

}  // namespace
}  // namespace vmseal
