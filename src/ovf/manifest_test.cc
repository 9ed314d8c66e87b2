#include "ovf/manifest.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

const std::string kSha256Abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(ManifestTest, FormatUsesOvfSpelling) {
  auto digest = crypto::HexDecode(kSha256Abc);
  ASSERT_OK(digest);
  EXPECT_EQ(FormatManifest({{DigestAlgorithm::kSha256, "a.ovf", *digest}}),
            "SHA256(a.ovf)= " + kSha256Abc + "\n");
}

TEST(ManifestTest, ParsesSha1Sha256Sha512AndCrlf) {
  std::string text = "SHA1(a.ovf)= " + std::string(40, 'a') + "\r\n" +
                     "SHA256(b.vmdk)= " + std::string(64, 'B') + "\n" +
                     "SHA512(c.iso)= " + std::string(128, '0');
  auto entries = ParseManifest(text);
  ASSERT_OK(entries);
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].algorithm, DigestAlgorithm::kSha1);
  EXPECT_EQ((*entries)[1].name, "b.vmdk");
  EXPECT_EQ((*entries)[1].digest.size(), 32u);
  EXPECT_EQ((*entries)[2].digest.size(), 64u);
}

// VirtualBox 5-7 write `SHA1 (name) = hex` (spaces around the parentheses
// and the '='), with names that hold spaces; ovftool writes `SHA256(name)= hex`.
TEST(ManifestTest, ParsesVirtualBoxSpellingWithSpacedNames) {
  const std::string text = "SHA1 (Debian 12.ovf) = " + std::string(40, 'a') + "\r\n" +
                           "SHA256 (Debian 12-disk001.vmdk) = " + kSha256Abc + "\r\n" +
                           "SHA256(disk (1).vmdk)=" + kSha256Abc + "\n";
  auto entries = ParseManifest(text);
  ASSERT_OK(entries);
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[0].algorithm, DigestAlgorithm::kSha1);
  EXPECT_EQ((*entries)[0].name, "Debian 12.ovf");
  EXPECT_EQ((*entries)[1].name, "Debian 12-disk001.vmdk");
  EXPECT_EQ(crypto::HexEncode((*entries)[1].digest), kSha256Abc);
  EXPECT_EQ((*entries)[2].name, "disk (1).vmdk");
}

TEST(ManifestTest, RejectsLinesThatOnlyLookLikeEntries) {
  for (const std::string& bad : {"SHA256 a.ovf = " + kSha256Abc,       // no parentheses
                                 "SHA256(a.ovf) " + kSha256Abc,        // no '='
                                 "SHA256(a.ovf) x= " + kSha256Abc,     // text after ')'
                                 "SHA256() = " + kSha256Abc}) {        // no name
    EXPECT_FALSE(ParseManifest(bad + "\n").ok()) << bad;
  }
  EXPECT_STATUS(ParseManifest("MD5 (a.ovf) = " + std::string(32, 'a') + "\n"),
                StatusCode::kInvalidArgument, "unsupported digest algorithm 'MD5'");
}

TEST(ManifestTest, RejectsOpensslSpelling) {
  EXPECT_STATUS(ParseManifest("SHA2-256(a.ovf)= " + kSha256Abc + "\n"),
                StatusCode::kInvalidArgument, "unsupported digest algorithm");
}

TEST(ManifestTest, RejectsWrongDigestLength) {
  EXPECT_STATUS(ParseManifest("SHA256(a.ovf)= abcd\n"), StatusCode::kInvalidArgument,
                "bad digest");
}

TEST(ManifestTest, RejectsMalformedLine) {
  EXPECT_STATUS(ParseManifest("hello\n"), StatusCode::kInvalidArgument, "expected ALG(name)= hex");
}

TEST(ManifestTest, RejectsDuplicateName) {
  std::string line = "SHA256(a.ovf)= " + kSha256Abc + "\n";
  EXPECT_STATUS(ParseManifest(line + line), StatusCode::kInvalidArgument, "twice");
}

TEST(ManifestTest, RejectsTraversalName) {
  EXPECT_STATUS(ParseManifest("SHA256(../a)= " + kSha256Abc + "\n"),
                StatusCode::kInvalidArgument, "'..'");
}

TEST(ManifestTest, RoundTrips) {
  auto digest = crypto::HexDecode(kSha256Abc);
  ASSERT_OK(digest);
  std::vector<ManifestEntry> in = {{DigestAlgorithm::kSha256, "a.ovf", *digest},
                                   {DigestAlgorithm::kSha256, "b.raw.vmseal", *digest}};
  auto out = ParseManifest(FormatManifest(in));
  ASSERT_OK(out);
  ASSERT_EQ(out->size(), 2u);
  EXPECT_EQ((*out)[1].name, "b.raw.vmseal");
  EXPECT_EQ((*out)[1].digest, *digest);
}

TEST(ManifestTest, StreamingDigestMatchesKnownAnswer) {
  StreamingDigest d(DigestAlgorithm::kSha256);
  d.Update(crypto::AsBytes("ab"));
  d.Update(crypto::AsBytes("c"));
  EXPECT_EQ(crypto::HexEncode(d.Finish()), kSha256Abc);
}

}  // namespace
}  // namespace vmseal::ovf
