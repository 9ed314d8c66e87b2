#include "ovf/tar.h"

#include <gtest/gtest.h>

#include "ovf/ovf_test_helpers.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

using ::vmseal::ovf::testing::RawMember;
using ::vmseal::ovf::testing::RawTar;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

// Opens `bytes` as an archive and returns the reader's status/index.
class TarTest : public ::testing::Test {
 protected:
  Status OpenBytes(const std::string& bytes) {
    WriteFileOrDie(dir_.File("a.ova"), bytes);
    auto file = Env::Default()->NewRandomAccessFile(dir_.File("a.ova"));
    if (!file.ok()) return file.status();
    file_ = std::move(*file);
    auto reader = TarReader::Open(file_.get());
    if (!reader.ok()) return reader.status();
    reader_ = std::move(*reader);
    return OkStatus();
  }
  std::string WriteWithWriter(const std::vector<std::pair<std::string, std::string>>& members) {
    auto out = Env::Default()->NewWritableFile(dir_.File("w.ova"), 0644);
    EXPECT_OK(out);
    TarWriter writer(out->get());
    for (const auto& [name, data] : members) {
      EXPECT_OK(writer.AddMember(name, data.size(), [&](WritableFile* w) {
        return w->Append(std::span<const uint8_t>(
            reinterpret_cast<const uint8_t*>(data.data()), data.size()));
      }));
    }
    EXPECT_OK(writer.Finish());
    EXPECT_OK((*out)->Close());
    return ReadFileOrDie(dir_.File("w.ova"));
  }

  TempDir dir_;
  std::unique_ptr<RandomAccessFile> file_;
  std::unique_ptr<TarReader> reader_;
};

TEST_F(TarTest, WriterOutputReadsBackAtEverySizeAroundABlock) {
  std::vector<std::pair<std::string, std::string>> members;
  for (size_t size : {0, 1, 511, 512, 513, 2048}) {
    std::string name = "m";
    name.append(std::to_string(size));
    members.push_back({name, std::string(size, static_cast<char>('a' + size % 26))});
  }
  ASSERT_OK(OpenBytes(WriteWithWriter(members)));
  ASSERT_EQ(reader_->members().size(), members.size());
  for (size_t i = 0; i < members.size(); ++i) {
    SCOPED_TRACE(members[i].first);
    const TarMember& m = reader_->members()[i];
    EXPECT_EQ(m.name, members[i].first);
    EXPECT_EQ(m.size, members[i].second.size());
    auto slice = reader_->NewMemberFile(m);
    std::string got(m.size + 10, '\0');
    auto n = slice->Read(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(got.data()), got.size()));
    ASSERT_OK(n);
    EXPECT_EQ(got.substr(0, *n), members[i].second);
  }
}

TEST_F(TarTest, GnuTarListsWriterOutput) {
  WriteWithWriter({{"x.ovf", "<a/>"}, {"disk.raw", std::string(1000, 'z')}});
  std::string out;
  ASSERT_EQ(vmseal::testing::RunCommand({"tar", "tvf", dir_.File("w.ova")}, &out), 0) << out;
  EXPECT_NE(out.find("x.ovf"), std::string::npos);
  EXPECT_NE(out.find("1000"), std::string::npos);
}

TEST_F(TarTest, SliceReadsAtAnOffsetWithinTheMember) {
  ASSERT_OK(OpenBytes(WriteWithWriter({{"a", "0123456789"}})));
  auto slice = reader_->NewMemberFile(reader_->members()[0]);
  uint8_t buf[4];
  auto n = slice->Read(7, buf);
  ASSERT_OK(n);
  EXPECT_EQ(*n, 3u);
  EXPECT_EQ(std::string(reinterpret_cast<char*>(buf), 3), "789");
}

TEST_F(TarTest, WriterFailsWhenDataSizeDiffersFromAnnounced) {
  auto out = Env::Default()->NewWritableFile(dir_.File("bad.ova"), 0644);
  ASSERT_OK(out);
  TarWriter writer(out->get());
  EXPECT_STATUS(writer.AddMember("a", 5, [](WritableFile* w) {
    static const uint8_t k[3] = {1, 2, 3};
    return w->Append(k);
  }), StatusCode::kInternal, "announced 5");
}

TEST_F(TarTest, WriterRefusesUnsafeName) {
  auto out = Env::Default()->NewWritableFile(dir_.File("bad.ova"), 0644);
  ASSERT_OK(out);
  TarWriter writer(out->get());
  EXPECT_STATUS(writer.AddMember("../x", 0, [](WritableFile*) { return OkStatus(); }),
                StatusCode::kInvalidArgument, "'..'");
}

TEST_F(TarTest, RejectsAbsolutePath) {
  EXPECT_STATUS(OpenBytes(RawTar({{"/etc/passwd", "x"}})), StatusCode::kInvalidArgument,
                "absolute path");
}

TEST_F(TarTest, RejectsDotDot) {
  EXPECT_STATUS(OpenBytes(RawTar({{"../evil", "x"}})), StatusCode::kInvalidArgument, "'..'");
}

TEST_F(TarTest, RejectsSymlink) {
  EXPECT_STATUS(OpenBytes(RawTar({{"link", "", '2', "/etc/shadow"}})),
                StatusCode::kInvalidArgument, "is a link");
}

TEST_F(TarTest, RejectsHardLink) {
  EXPECT_STATUS(OpenBytes(RawTar({{"a", "x"}, {"b", "", '1', "a"}})),
                StatusCode::kInvalidArgument, "is a link");
}

TEST_F(TarTest, RejectsCharacterDevice) {
  EXPECT_STATUS(OpenBytes(RawTar({{"null", "", '3'}})), StatusCode::kInvalidArgument,
                "is a device");
}

TEST_F(TarTest, RejectsDirectory) {
  EXPECT_STATUS(OpenBytes(RawTar({{"d", "", '5'}})), StatusCode::kInvalidArgument,
                "is a directory");
}

TEST_F(TarTest, RejectsPaxExtension) {
  EXPECT_STATUS(OpenBytes(RawTar({{"pax", "30 path=x\n", 'x'}})), StatusCode::kInvalidArgument,
                "unsupported tar type 'x'");
}

TEST_F(TarTest, RejectsDuplicateNames) {
  EXPECT_STATUS(OpenBytes(RawTar({{"a", "1"}, {"a", "2"}})), StatusCode::kInvalidArgument,
                "duplicate OVA member: a");
}

TEST_F(TarTest, RejectsBadChecksum) {
  std::string bytes = RawTar({{"a", "1"}});
  bytes[0] = 'b';
  EXPECT_STATUS(OpenBytes(bytes), StatusCode::kInvalidArgument, "checksum mismatch");
}

TEST_F(TarTest, RejectsMemberPastEndOfArchive) {
  std::string bytes = RawTar({{"a", std::string(2000, 'x')}});
  bytes.resize(1024);
  EXPECT_STATUS(OpenBytes(bytes), StatusCode::kInvalidArgument, "past the end");
}

TEST_F(TarTest, RejectsArchiveWithoutEndMarker) {
  std::string bytes = RawTar({{"a", "1"}});
  bytes.resize(1024);
  EXPECT_STATUS(OpenBytes(bytes), StatusCode::kInvalidArgument, "truncated");
}

TEST_F(TarTest, RejectsNonUstar) {
  EXPECT_STATUS(OpenBytes(std::string(1024, 'A') + std::string(1024, '\0')),
                StatusCode::kInvalidArgument, "not a USTAR archive");
}

TEST(ValidateFileNameTest, AcceptsPlainNames) {
  EXPECT_OK(ValidateFileName("disk1.raw.vmseal"));
  EXPECT_OK(ValidateFileName("VM-1_disk+2.vmdk"));
}

TEST(ValidateFileNameTest, RejectsSubdirectory) {
  EXPECT_STATUS(ValidateFileName("a/b"), StatusCode::kInvalidArgument, "subdirectories");
}

TEST(ValidateFileNameTest, RejectsOddCharacters) {
  EXPECT_STATUS(ValidateFileName("a b"), StatusCode::kInvalidArgument, "invalid character");
  EXPECT_STATUS(ValidateFileName(std::string("a\0b", 3)), StatusCode::kInvalidArgument,
                "invalid character");
}

TEST(ValidateFileNameTest, RejectsLongName) {
  EXPECT_STATUS(ValidateFileName(std::string(101, 'a')), StatusCode::kInvalidArgument,
                "longer than 100");
}

}  // namespace
}  // namespace vmseal::ovf
