// `vmseal stream seal|open`, `sample-image` and `demo` as a user runs them:
// exit codes, one-line errors, no partial output, no key bytes in messages.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "testing/test_util.h"

namespace vmseal {
namespace {

using testing::ListDir;
using testing::ReadFileOrDie;
using testing::RunCommand;
using testing::TempDir;
using testing::VmsealBinary;
using testing::WriteFileOrDie;

constexpr char kKeyHex[] = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
constexpr char kOtherKeyHex[] =
    "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";

class StreamCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFileOrDie(dir_.File("key"), std::string(kKeyHex) + "\n");
    WriteFileOrDie(dir_.File("other.key"), kOtherKeyHex);
    std::string pt;
    for (int i = 0; i < 5000; ++i) pt += static_cast<char>(i * 7 + (i >> 5));
    WriteFileOrDie(dir_.File("pt"), pt);
  }

  int Vmseal(std::vector<std::string> args, std::string* out = nullptr) {
    args.insert(args.begin(), VmsealBinary());
    std::string local;
    int rc = RunCommand(args, out != nullptr ? out : &local);
    return rc;
  }

  int Seal(const std::string& in, const std::string& out, std::string* output = nullptr,
           const std::string& key = "key") {
    return Vmseal({"stream", "seal", "--key-file", dir_.File(key), "--image-id", "img-1",
                   "--tenant", "t", "--chunk-size", "256", "--quiet", dir_.File(in),
                   dir_.File(out)},
                  output);
  }
  int Open(const std::string& in, const std::string& out, std::string* output = nullptr,
           const std::string& key = "key", const std::string& image_id = "img-1") {
    return Vmseal({"stream", "open", "--key-file", dir_.File(key), "--image-id", image_id,
                   "--tenant", "t", "--quiet", dir_.File(in), dir_.File(out)},
                  output);
  }

  // Seals "pt" into "sealed" and returns its bytes.
  std::string Sealed() {
    EXPECT_EQ(Seal("pt", "sealed"), 0);
    return ReadFileOrDie(dir_.File("sealed"));
  }

  // Runs open on `bytes` and checks the exit code, the message, that no
  // output (or temp file) appeared and that no key hex leaked.
  void ExpectOpenFails(const std::string& bytes, int code, const std::string& message) {
    WriteFileOrDie(dir_.File("bad"), bytes);
    auto before = ListDir(dir_.path());
    std::string out;
    EXPECT_EQ(Open("bad", "out", &out), code) << out;
    EXPECT_NE(out.find(message), std::string::npos) << out;
    EXPECT_EQ(ListDir(dir_.path()), before);
    EXPECT_EQ(out.find(kKeyHex), std::string::npos);
    EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  }

  TempDir dir_;
};

TEST_F(StreamCliTest, RoundTrip) {
  ASSERT_EQ(Seal("pt", "sealed"), 0);
  ASSERT_EQ(Open("sealed", "out"), 0);
  EXPECT_EQ(ReadFileOrDie(dir_.File("out")), ReadFileOrDie(dir_.File("pt")));
}

TEST_F(StreamCliTest, RawKeyFileWorks) {
  std::string raw;
  for (int i = 0; i < 32; ++i) raw += static_cast<char>(i);
  WriteFileOrDie(dir_.File("raw.key"), raw);
  ASSERT_EQ(Seal("pt", "sealed", nullptr, "raw.key"), 0);
  EXPECT_EQ(Open("sealed", "out"), 0);  // same key, hex form
}

TEST_F(StreamCliTest, JsonPrintsOneObject) {
  std::string out;
  ASSERT_EQ(Vmseal({"stream", "seal", "--key-file", dir_.File("key"), "--json",
                    dir_.File("pt"), dir_.File("sealed")},
                   &out),
            0);
  EXPECT_EQ(out.front(), '{');
  EXPECT_EQ(out.back(), '\n');
  for (const char* k : {"\"seconds\"", "\"plaintext_bytes\":5000", "\"throughput_bytes_per_second\"",
                        "\"operation\":\"seal\""}) {
    EXPECT_NE(out.find(k), std::string::npos) << k << " in " << out;
  }
}

TEST_F(StreamCliTest, QuietPrintsNothing) {
  std::string out;
  ASSERT_EQ(Seal("pt", "sealed", &out), 0);
  EXPECT_EQ(out, "");
}

TEST_F(StreamCliTest, OpenToDevNull) {
  Sealed();
  EXPECT_EQ(Vmseal({"stream", "open", "--key-file", dir_.File("key"), "--image-id", "img-1",
                    "--tenant", "t", "--quiet", dir_.File("sealed"), "/dev/null"}),
            0);
}

TEST_F(StreamCliTest, WrongKeyExits4WithoutOutputOrKeyBytes) {
  Sealed();
  std::string out;
  EXPECT_EQ(Open("sealed", "out", &out, "other.key"), 4);
  EXPECT_EQ(out, "vmseal: error: decryption failed\n");
  EXPECT_FALSE(std::filesystem::exists(dir_.File("out")));
}

TEST_F(StreamCliTest, WrongContextExits4) {
  Sealed();
  std::string out;
  EXPECT_EQ(Open("sealed", "out", &out, "key", "img-2"), 4);
  EXPECT_NE(out.find("decryption failed"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("out")));
}

TEST_F(StreamCliTest, TruncatedAtChunkBoundaryExits4) {
  std::string s = Sealed();
  ExpectOpenFails(s.substr(0, 80 + 2 * (256 + 16)), 4, "decryption failed");
}

TEST_F(StreamCliTest, TruncatedMidChunkExits3) {
  std::string s = Sealed();
  ExpectOpenFails(s.substr(0, 80 + 2 * (256 + 16) + 7), 3, "invalid stream length");
}

TEST_F(StreamCliTest, ExtendedExits4) {
  std::string s = Sealed();
  ExpectOpenFails(s + std::string(100, 'x'), 4, "decryption failed");
}

TEST_F(StreamCliTest, ReorderedExits4) {
  std::string s = Sealed();
  const size_t b = 256 + 16;
  std::string t = s.substr(0, 80) + s.substr(80 + b, b) + s.substr(80, b) + s.substr(80 + 2 * b);
  ExpectOpenFails(t, 4, "decryption failed");
}

TEST_F(StreamCliTest, FlippedTagExits4) {
  std::string s = Sealed();
  s[80 + 256 + 3] ^= 1;
  ExpectOpenFails(s, 4, "decryption failed");
}

TEST_F(StreamCliTest, FlippedHeaderExits4) {
  std::string s = Sealed();
  s[20] ^= 1;  // salt
  ExpectOpenFails(s, 4, "decryption failed");
}

TEST_F(StreamCliTest, NotAStreamExits3) {
  ExpectOpenFails(std::string(4000, 'z'), 3, "not a vmseal stream");
}

TEST_F(StreamCliTest, ZeroLengthFileExits3) {
  ExpectOpenFails("", 3, "input is empty");
}

TEST_F(StreamCliTest, HeaderOnlyExits3) {
  ExpectOpenFails(Sealed().substr(0, 80), 3, "truncated stream");
}

TEST_F(StreamCliTest, MissingInputExits5) {
  std::string out;
  EXPECT_EQ(Seal("nope", "sealed", &out), 5);
  EXPECT_NE(out.find("nope"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("sealed")));
}

TEST_F(StreamCliTest, DirectoryInputExits3) {
  std::filesystem::create_directory(dir_.File("d"));
  std::string out;
  EXPECT_EQ(Seal("d", "sealed", &out), 3);
  EXPECT_NE(out.find("is a directory"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("sealed")));
}

TEST_F(StreamCliTest, FullDeviceExits5) {
  std::string out;
  EXPECT_EQ(Vmseal({"stream", "seal", "--key-file", dir_.File("key"), "--quiet",
                    dir_.File("pt"), "/dev/full"},
                   &out),
            5);
  EXPECT_NE(out.find("No space left on device"), std::string::npos) << out;
}

TEST_F(StreamCliTest, BadKeyFileExits3WithoutKeyBytes) {
  WriteFileOrDie(dir_.File("short.key"), std::string(kKeyHex).substr(0, 40));
  std::string out;
  EXPECT_EQ(Seal("pt", "sealed", &out, "short.key"), 3);
  EXPECT_NE(out.find("must hold 32 raw bytes or 64 hex characters"), std::string::npos);
  EXPECT_EQ(out.find(std::string(kKeyHex).substr(0, 16)), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("sealed")));
}

TEST_F(StreamCliTest, NonHexKeyFileExits3) {
  std::string k(kKeyHex);
  k[10] = 'g';
  WriteFileOrDie(dir_.File("nonhex.key"), k);
  std::string out;
  EXPECT_EQ(Seal("pt", "sealed", &out, "nonhex.key"), 3);
  EXPECT_EQ(out.find(k.substr(0, 10)), std::string::npos) << out;
}

TEST_F(StreamCliTest, MissingKeyFileExits5) {
  std::string out;
  EXPECT_EQ(Seal("pt", "sealed", &out, "absent.key"), 5);
}

TEST_F(StreamCliTest, MissingKeyFlagIsUsageError) {
  EXPECT_EQ(Vmseal({"stream", "seal", dir_.File("pt"), dir_.File("sealed")}), 2);
}

TEST_F(StreamCliTest, BadChunkSizeExits3) {
  std::string out;
  EXPECT_EQ(Vmseal({"stream", "seal", "--key-file", dir_.File("key"), "--chunk-size", "8",
                    dir_.File("pt"), dir_.File("sealed")},
                   &out),
            3);
  EXPECT_NE(out.find("invalid chunk size"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("sealed")));
}

// Runs `args` under script(1) so that stderr is a terminal.
int VmsealOnTerminal(const std::string& args, std::string* out) {
  if (::access("/usr/bin/script", X_OK) != 0) return -1;
  return RunCommand({"/usr/bin/script", "-qefc", VmsealBinary() + " " + args, "/dev/null"}, out);
}

TEST_F(StreamCliTest, ProgressBarOnATerminal) {
  std::string out;
  int rc = VmsealOnTerminal("stream seal --key-file " + dir_.File("key") + " " +
                                dir_.File("pt") + " " + dir_.File("sealed"),
                            &out);
  if (rc == -1) GTEST_SKIP() << "no /usr/bin/script";
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("sealing ["), std::string::npos) << out;
  EXPECT_NE(out.find("100%"), std::string::npos) << out;
  EXPECT_NE(out.find("B/s"), std::string::npos) << out;
}

TEST_F(StreamCliTest, QuietHidesTheProgressBarOnATerminal) {
  std::string out;
  int rc = VmsealOnTerminal("stream seal --quiet --key-file " + dir_.File("key") + " " +
                                dir_.File("pt") + " " + dir_.File("sealed"),
                            &out);
  if (rc == -1) GTEST_SKIP() << "no /usr/bin/script";
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out.find("sealing"), std::string::npos) << out;
}

TEST_F(StreamCliTest, HelpListsExitCodes) {
  std::string out;
  EXPECT_EQ(Vmseal({"stream", "seal", "--help"}, &out), 0);
  EXPECT_NE(out.find("Exit codes:"), std::string::npos);
  EXPECT_NE(out.find("--threads"), std::string::npos);
}

TEST_F(StreamCliTest, SampleImageIsSparseAndSized) {
  ASSERT_EQ(Vmseal({"sample-image", dir_.File("img"), "--size", "8M"}), 0);
  struct stat st;
  ASSERT_EQ(::stat(dir_.File("img").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 8 << 20);
  EXPECT_LE(static_cast<int64_t>(st.st_blocks) * 512, (4 << 20) + (64 << 10));
}

TEST_F(StreamCliTest, SampleImageBadSizeExits3) {
  std::string out;
  EXPECT_EQ(Vmseal({"sample-image", dir_.File("img"), "--size", "lots"}, &out), 3);
  EXPECT_FALSE(std::filesystem::exists(dir_.File("img")));
}

// Issue 17: every command takes --json. The demo group: sample-image and
// the stream-only demo print one JSON object and no narration.
TEST_F(StreamCliTest, SampleImageAndDemoPrintJsonWithJson) {
  std::string out;
  ASSERT_EQ(Vmseal({"sample-image", dir_.File("img"), "--size", "2M", "--json"}, &out), 0) << out;
  auto image = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(image.is_object()) << out;
  EXPECT_EQ(image["path"], dir_.File("img"));
  EXPECT_EQ(image["size_bytes"], 2 << 20);
  ASSERT_EQ(Vmseal({"demo", "--stream-only", "--size", "4M", "--json"}, &out), 0) << out;
  auto demo = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(demo.is_object()) << out;
  EXPECT_EQ(demo["ok"], true);
  EXPECT_EQ(demo["mode"], "stream-only");
  EXPECT_EQ(demo["size_bytes"], 4 << 20);
  EXPECT_EQ(demo["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(out.find("OK: the image survived"), std::string::npos) << out;
}

TEST_F(StreamCliTest, DemoSucceeds) {
  std::string out;
  EXPECT_EQ(Vmseal({"demo", "--stream-only", "--size", "8M"}, &out), 0) << out;
  EXPECT_NE(out.find("OK: the image survived"), std::string::npos) << out;
}

}  // namespace
}  // namespace vmseal
