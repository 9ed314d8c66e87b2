// Large-file tests (label large): a 1 GiB sparse-ish image through SealFile
// and OpenFile with the default chunk size, checking content and that peak
// memory stays bounded (the pipeline never holds more than its ring).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <vector>

#include "crypto/primitives.h"
#include "stream/stream.h"
#include "testing/test_util.h"

namespace vmseal::stream {
namespace {

constexpr uint64_t kImageBytes = uint64_t{1} << 30;
constexpr size_t kBlock = 1 << 20;

crypto::Sha256Digest HashFile(const std::string& path) {
  auto in = Env::Default()->NewRandomAccessFile(path);
  EXPECT_TRUE(in.ok());
  crypto::Sha256Hasher h;
  std::vector<uint8_t> buf(kBlock);
  for (uint64_t off = 0;; off += kBlock) {
    auto n = (*in)->Read(off, buf);
    EXPECT_TRUE(n.ok());
    if (!n.ok() || *n == 0) break;
    h.Update({buf.data(), *n});
  }
  return h.Finish();
}

long MaxRssKib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

TEST(StreamLargeTest, OneGibRoundTripInBoundedMemory) {
  vmseal::testing::TempDir dir;
  const std::string image = dir.File("disk.raw");
  {
    auto out = Env::Default()->NewWritableFile(image, 0600);
    ASSERT_OK(out);
    for (uint64_t off = 0, i = 0; off < kImageBytes; off += kBlock, ++i) {
      if (i % 2 == 0) {
        crypto::Bytes data = crypto::RandomBytes(kBlock);
        ASSERT_OK((*out)->Append(data));
      } else {
        ASSERT_OK((*out)->Skip(kBlock));
      }
    }
    ASSERT_OK((*out)->Close());
  }
  const long rss_before = MaxRssKib();
  SecretBytes key = SecretBytes::Random(kDataKeyBytes);
  StreamContext ctx{"large", "t", 1};
  ASSERT_OK(SealFile(Env::Default(), image, dir.File("disk.sealed"), key, ctx, SealOptions{}));
  ASSERT_OK(OpenFile(Env::Default(), dir.File("disk.sealed"), dir.File("disk.out"), key, ctx,
                     OpenOptions{}));
  const long rss_after = MaxRssKib();
  EXPECT_LT(rss_after, 64 * 1024) << "peak RSS KiB before " << rss_before;
  EXPECT_EQ(HashFile(image), HashFile(dir.File("disk.out")));
  struct stat st;
  ASSERT_EQ(::stat(dir.File("disk.out").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kImageBytes);
  EXPECT_LT(static_cast<uint64_t>(st.st_blocks) * 512, kImageBytes * 3 / 4);
}

}  // namespace
}  // namespace vmseal::stream
