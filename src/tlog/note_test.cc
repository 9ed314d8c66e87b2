// C2SP signed-note: the Ed25519 example of golang.org/x/mod/sumdb/note (the
// reference implementation of the spec), docs/format/audit-log.md §7.3.
#include "tlog/note.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "testing/test_util.h"

namespace vmseal::tlog {
namespace {

constexpr std::string_view kPeterVerifierKey =
    "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
// The signer key's base64 part: 0x01 || the 32-byte Ed25519 seed.
constexpr std::string_view kPeterSignerKeyB64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
constexpr std::string_view kPeterText =
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n";
constexpr std::string_view kPeterNote =
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\xE2\x80\x94 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

SecretBytes PeterSeed() {
  auto blob = crypto::Base64Decode(kPeterSignerKeyB64);
  EXPECT_TRUE(blob.ok() && blob->size() == 33 && (*blob)[0] == 0x01);
  return SecretBytes(std::span<const uint8_t>(*blob).subspan(1));
}

TEST(Note, VectorKeyIdIsDerivedFromNameAndKey) {
  auto v = NoteVerifier::Create(kPeterVerifierKey);
  ASSERT_OK(v);
  EXPECT_EQ((*v)->key_name(), "PeterNeumann");
  EXPECT_EQ((*v)->key_id(), 0xc74f20a3u);
}

TEST(Note, VectorOpens) {
  auto v = NoteVerifier::Create(kPeterVerifierKey);
  ASSERT_OK(v);
  auto text = (*v)->Open(kPeterNote);
  ASSERT_OK(text);
  EXPECT_EQ(*text, kPeterText);
}

TEST(Note, SigningTheVectorTextReproducesTheVectorNote) {
  auto s = NoteSigner::Create("PeterNeumann", PeterSeed());
  ASSERT_OK(s);
  EXPECT_EQ((*s)->VerifierKey(), kPeterVerifierKey);
  auto note = (*s)->Sign(kPeterText);
  ASSERT_OK(note);
  EXPECT_EQ(*note, kPeterNote);  // Ed25519 is deterministic
}

TEST(Note, ChangedTextFailsNamingTheKey) {
  auto v = NoteVerifier::Create(kPeterVerifierKey);
  ASSERT_OK(v);
  std::string forged(kPeterNote);
  forged.replace(forged.find("cryptography"), 12, "cryptographY");
  EXPECT_STATUS((*v)->Open(forged), StatusCode::kUnauthenticated,
                "the signature of PeterNeumann does not verify");
}

TEST(Note, OtherKeysSignaturesAreIgnoredAndOneOfOursIsRequired) {
  auto mine = NoteSigner::Create("example.com/log", SecretBytes::Random(32));
  ASSERT_OK(mine);
  auto v = NoteVerifier::Create((*mine)->VerifierKey());
  ASSERT_OK(v);
  EXPECT_STATUS((*v)->Open(kPeterNote), StatusCode::kUnauthenticated, "no signature of example.com/log+");
  // Our signature beside Peter's verifies.
  auto signed_text = (*mine)->Sign(kPeterText);
  ASSERT_OK(signed_text);
  auto ours = ParseNote(*signed_text);
  auto both = ParseNote(kPeterNote);
  ASSERT_OK(ours);
  ASSERT_OK(both);
  both->signatures.push_back(ours->signatures[0]);
  EXPECT_OK((*v)->Open(FormatNote(*both)));
}

TEST(Note, SameNameOtherKeyIsUnknown) {
  auto a = NoteSigner::Create("log", SecretBytes::Random(32));
  auto b = NoteSigner::Create("log", SecretBytes::Random(32));
  ASSERT_OK(a);
  ASSERT_OK(b);
  auto v = NoteVerifier::Create((*a)->VerifierKey());
  ASSERT_OK(v);
  EXPECT_STATUS((*v)->Open(*(*b)->Sign("hello\n")), StatusCode::kUnauthenticated, "no signature of log+");
}

TEST(Note, SpecExampleParses) {
  // c2sp.org/signed-note's example: text with a blank line in it.
  const std::string note =
      "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \xC3\xA8 subito sera.\n\n"
      "\xE2\x80\x94 quasimodo.example/salvatore "
      "NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n";
  auto parsed = ParseNote(note);
  ASSERT_OK(parsed);
  EXPECT_EQ(parsed->text,
            "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \xC3\xA8 subito sera.\n");
  ASSERT_EQ(parsed->signatures.size(), 1u);
  EXPECT_EQ(parsed->signatures[0].key_name, "quasimodo.example/salvatore");
  EXPECT_EQ(parsed->signatures[0].key_id, 0x367ba04bu);
  EXPECT_EQ(parsed->signatures[0].signature.size(), 64u);
  EXPECT_EQ(FormatNote(*parsed), note);
}

TEST(Note, MalformedNotesAreRefused) {
  const std::string sig = "\xE2\x80\x94 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";
  const struct {
    std::string note;
    const char* error;
  } cases[] = {
      {"text\n" + sig + "\n", "no blank line"},
      {"text\n\n", "no signature lines"},
      {"text\n\n" + sig, "does not end in a newline"},
      {"text\n\n- PeterNeumann AAAAAAA=\n", "em dash"},
      {"text\n\n" + sig + "\n" + sig + "\n\n", "no signature lines"},
      {"te\txt\n\n" + sig + "\n", "control character"},
      {"te\xFFxt\n\n" + sig + "\n", "UTF-8"},
      {"te\xC0\x80xt\n\n" + sig + "\n", "UTF-8"},  // overlong NUL
      {"text\n\n\xE2\x80\x94 Peter+Neumann AAAAAAA=\n", "invalid key name"},
      {"text\n\n\xE2\x80\x94  AAAAAAA=\n", "invalid key name"},
      {"text\n\n\xE2\x80\x94 PeterNeumann\n", "no signature"},
      {"text\n\n\xE2\x80\x94 PeterNeumann AAAA\n", "too short"},
      {"text\n\n\xE2\x80\x94 PeterNeumann AAAAAAB=\n", "canonical base64"},
      {"text\n\n\xE2\x80\x94 PeterNeumann  AAAAAAA=\n", "canonical base64"},
      {std::string(kMaxNoteBytes + 1, 'a'), "larger than 64 KiB"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.note.substr(0, 60));
    EXPECT_STATUS(ParseNote(c.note), StatusCode::kInvalidArgument, c.error);
  }
  std::string many = "text\n\n";
  for (int i = 0; i < 17; ++i) many += sig + "\n";
  EXPECT_STATUS(ParseNote(many), StatusCode::kInvalidArgument, "more than 16 signatures");
}

TEST(Note, MalformedVerifierKeysAreRefused) {
  const std::string good(kPeterVerifierKey);
  for (size_t cut = 1; cut < good.size(); cut += 7) {
    EXPECT_FALSE(NoteVerifier::Create(good.substr(0, cut)).ok()) << cut;
  }
  EXPECT_STATUS(NoteVerifier::Create("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
                StatusCode::kInvalidArgument, "key id does not match");
  EXPECT_STATUS(NoteVerifier::Create("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
                StatusCode::kInvalidArgument, "lowercase hex");
  // Unknown algorithm byte.
  EXPECT_STATUS(NoteVerifier::Create("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
                StatusCode::kInvalidArgument, "0x01");
}

TEST(Note, SignerRefusesTextItCouldNotParseBack) {
  auto s = NoteSigner::Create("log", SecretBytes::Random(32));
  ASSERT_OK(s);
  EXPECT_STATUS((*s)->Sign("no newline"), StatusCode::kInvalidArgument, "end in a newline");
  EXPECT_STATUS((*s)->Sign("blank\n\n"), StatusCode::kInvalidArgument, "blank line");
  EXPECT_STATUS((*s)->Sign("nul\x01\n"), StatusCode::kInvalidArgument, "control character");
  EXPECT_STATUS(NoteSigner::Create("a b", SecretBytes::Random(32)), StatusCode::kInvalidArgument, "key name");
  EXPECT_STATUS(NoteSigner::Create("log", SecretBytes::Random(31)), StatusCode::kInvalidArgument, "32 bytes");
}

}  // namespace
}  // namespace vmseal::tlog
