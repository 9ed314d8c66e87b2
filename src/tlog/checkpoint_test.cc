#include "tlog/checkpoint.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "testing/test_util.h"
#include "tlog/note.h"

namespace vmseal::tlog {
namespace {

// c2sp.org/tlog-checkpoint's example text.
constexpr std::string_view kSpecCheckpoint =
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

TEST(Checkpoint, SpecExampleParsesAndFormatsBack) {
  auto c = ParseCheckpoint(kSpecCheckpoint);
  ASSERT_OK(c);
  EXPECT_EQ(c->origin, "example.com/behind-the-sofa");
  EXPECT_EQ(c->size, 20852163u);
  EXPECT_EQ(crypto::Base64Encode(c->root), "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=");
  EXPECT_TRUE(c->extensions.empty());
  auto text = FormatCheckpoint(*c);
  ASSERT_OK(text);
  EXPECT_EQ(*text, kSpecCheckpoint);
}

TEST(Checkpoint, ExtensionLinesRoundTrip) {
  Checkpoint c{"o", 0, EmptyRoot(), {"ext one", "ext two"}};
  auto text = FormatCheckpoint(c);
  ASSERT_OK(text);
  EXPECT_EQ(*text, "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\next one\next two\n");
  auto back = ParseCheckpoint(*text);
  ASSERT_OK(back);
  EXPECT_EQ(back->extensions, c.extensions);
  EXPECT_EQ(back->root, EmptyRoot());
}

TEST(Checkpoint, MalformedTextIsRefused) {
  const std::string root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
  const struct {
    std::string text;
    const char* error;
  } cases[] = {
      {"o\n1\n" + root, "end in a newline"},
      {"o\n1\n", "needs origin, size and root"},
      {"\n1\n" + root + "\n", "empty line"},
      {"o\n01\n" + root + "\n", "leading zero"},
      {"o\n+1\n" + root + "\n", "not a decimal"},
      {"o\n-1\n" + root + "\n", "not a decimal"},
      {"o\n99999999999999999999\n" + root + "\n", "not a decimal number in range"},
      {"o\n4611686018427387905\n" + root + "\n", "exceeds the maximum"},
      {"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n", "root hash"},
      {"o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2J=\n", "root hash"},
      {"o\n1\nAAAA\n", "root hash"},
      {"o\n1\n" + root + "\n\n", "empty line"},
      {"o\n1\n" + root + "\nx\ty\n", "control character"},
      {"o\r\n1\n" + root + "\n", "control character"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_STATUS(ParseCheckpoint(c.text), StatusCode::kInvalidArgument, c.error);
  }
  std::string many = "o\n1\n" + root + "\n";
  for (int i = 0; i < 9; ++i) many += "e\n";
  EXPECT_STATUS(ParseCheckpoint(many), StatusCode::kInvalidArgument, "more than 8 extension lines");
}

TEST(Checkpoint, FormatRefusesWhatCannotBeParsedBack) {
  EXPECT_STATUS(FormatCheckpoint({"", 1, EmptyRoot(), {}}), StatusCode::kInvalidArgument, "origin");
  EXPECT_STATUS(FormatCheckpoint({"a\nb", 1, EmptyRoot(), {}}), StatusCode::kInvalidArgument, "origin");
  EXPECT_STATUS(FormatCheckpoint({"o", 1, EmptyRoot(), {""}}), StatusCode::kInvalidArgument, "extension");
}

TEST(Checkpoint, SignedCheckpointOpensWithTheLogKey) {
  auto signer = NoteSigner::Create("vmseal.test/log", SecretBytes::Random(32));
  ASSERT_OK(signer);
  auto text = FormatCheckpoint({"vmseal.test/log", 5, LeafHash("x"), {}});
  ASSERT_OK(text);
  auto note = (*signer)->Sign(*text);
  ASSERT_OK(note);
  auto verifier = NoteVerifier::Create((*signer)->VerifierKey());
  ASSERT_OK(verifier);
  auto opened = (*verifier)->Open(*note);
  ASSERT_OK(opened);
  auto c = ParseCheckpoint(*opened);
  ASSERT_OK(c);
  EXPECT_EQ(c->size, 5u);
  EXPECT_EQ(c->root, LeafHash("x"));
}

TEST(ProofText, InclusionProofRoundTripsInTheC2spForm) {
  InclusionProofText p{"", 3, {LeafHash("a"), LeafHash("b")}, "o\n4\nroot\n\n\xE2\x80\x94 o sig\n"};
  const std::string text = FormatInclusionProof(p);
  EXPECT_EQ(text.substr(0, 31), "c2sp.org/tlog-proof@v1\nindex 3\n");
  auto back = ParseInclusionProof(text);
  ASSERT_OK(back);
  EXPECT_EQ(back->index, 3u);
  EXPECT_EQ(back->hashes, p.hashes);
  EXPECT_EQ(back->checkpoint, p.checkpoint);
  p.extra = "record 4";
  back = ParseInclusionProof(FormatInclusionProof(p));
  ASSERT_OK(back);
  EXPECT_EQ(back->extra, "record 4");
}

TEST(ProofText, ConsistencyProofRoundTrips) {
  ConsistencyProofText p{6, {LeafHash("a")}, "o\n8\nroot\n\n\xE2\x80\x94 o sig\n"};
  auto back = ParseConsistencyProof(FormatConsistencyProof(p));
  ASSERT_OK(back);
  EXPECT_EQ(back->old_size, 6u);
  EXPECT_EQ(back->hashes, p.hashes);
  EXPECT_EQ(back->checkpoint, p.checkpoint);
}

TEST(ProofText, MalformedProofsAreRefused) {
  const std::string h = crypto::Base64Encode(LeafHash("a"));
  const struct {
    std::string text;
    const char* error;
  } cases[] = {
      {"c2sp.org/tlog-proof@v2\nindex 1\n\ncp\n", "first line"},
      {"c2sp.org/tlog-proof@v1\n", "no index line"},
      {"c2sp.org/tlog-proof@v1\nindex  1\n\ncp\n", "index"},
      {"c2sp.org/tlog-proof@v1\nindex 01\n\ncp\n", "leading zero"},
      {"c2sp.org/tlog-proof@v1\nextra !!\nindex 1\n\ncp\n", "extra"},
      {"c2sp.org/tlog-proof@v1\nindex 1\n" + h + "\n", "no blank line"},
      {"c2sp.org/tlog-proof@v1\nindex 1\n" + h + "\n\n", "no checkpoint"},
      {"c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\ncp\n", "hash line 1"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    EXPECT_STATUS(ParseInclusionProof(c.text), StatusCode::kInvalidArgument, c.error);
  }
  std::string many = "c2sp.org/tlog-proof@v1\nindex 1\n";
  for (int i = 0; i < 65; ++i) many += h + "\n";
  EXPECT_STATUS(ParseInclusionProof(many + "\ncp\n"), StatusCode::kInvalidArgument, "more than 64 hashes");
  EXPECT_STATUS(ParseConsistencyProof("vmseal.dev/tlog-consistency@v1\nnew 1\n\ncp\n"),
                StatusCode::kInvalidArgument, "old size");
}

}  // namespace
}  // namespace vmseal::tlog
