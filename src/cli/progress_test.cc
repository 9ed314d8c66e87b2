#include "cli/progress.h"

#include <gtest/gtest.h>

#include <cstdio>

namespace vmseal::cli {
namespace {

TEST(FormatBytesTest, Units) {
  EXPECT_EQ(FormatBytes(17), "17 B");
  EXPECT_EQ(FormatBytes(1536), "1.50 KiB");
  EXPECT_EQ(FormatBytes(uint64_t{3} << 30), "3.00 GiB");
}

TEST(FormatDurationTest, MinutesAndHours) {
  EXPECT_EQ(FormatDuration(63), "01:03");
  EXPECT_EQ(FormatDuration(3723), "1:02:03");
}

TEST(ParseByteSizeTest, AcceptsSuffixes) {
  uint64_t v = 0;
  ASSERT_TRUE(ParseByteSize("1048576", &v));
  EXPECT_EQ(v, 1048576u);
  ASSERT_TRUE(ParseByteSize("256K", &v));
  EXPECT_EQ(v, 256u << 10);
  ASSERT_TRUE(ParseByteSize("4GiB", &v));
  EXPECT_EQ(v, uint64_t{4} << 30);
}

TEST(ParseByteSizeTest, RejectsJunkAndOverflow) {
  uint64_t v = 0;
  EXPECT_FALSE(ParseByteSize("", &v));
  EXPECT_FALSE(ParseByteSize("12Q", &v));
  EXPECT_FALSE(ParseByteSize("-1", &v));
  EXPECT_FALSE(ParseByteSize("99999999999999999999", &v));
  EXPECT_FALSE(ParseByteSize("17179869184T", &v));
}

TEST(ProgressBarTest, RenderShowsPercentRateAndEta) {
  std::string s = ProgressBar::Render("sealing", uint64_t{1} << 30, uint64_t{2} << 30, 1.0, 10);
  EXPECT_EQ(s, "sealing [#####-----]  50%  1.00 GiB / 2.00 GiB  1.00 GiB/s  ETA 00:01");
}

TEST(ProgressBarTest, RenderWhenDone) {
  std::string s = ProgressBar::Render("opening", 100, 100, 2.0, 4);
  EXPECT_EQ(s, "opening [####] 100%  100 B / 100 B  50 B/s  in 00:02");
}

TEST(ProgressBarTest, DisabledWritesNothing) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar bar("x", false, f);
    bar.Update(1, 2);
    bar.Finish();
  }
  EXPECT_EQ(std::ftell(f), 0);
  std::fclose(f);
}

TEST(ProgressBarTest, EnabledEndsWithNewline) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressBar bar("x", true, f);
    bar.Update(1, 2);
    bar.Update(2, 2);  // within 100 ms: recorded, drawn by Finish
    bar.Finish();
  }
  std::rewind(f);
  char buf[256] = {};
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  ASSERT_GT(n, 0u);
  EXPECT_EQ(buf[n - 1], '\n');
  EXPECT_NE(std::string(buf).find("100%"), std::string::npos);
  std::fclose(f);
}

}  // namespace
}  // namespace vmseal::cli
