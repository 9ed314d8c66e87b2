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

TEST_F(TarTest, PaxPathAndSizeApplyToTheNextMemberOnly) {
  ASSERT_OK(OpenBytes(RawTar({{"PaxHeader/x", "31 path=Debian 12-disk001.vmdk\n", 'x'},
                              {"Debian 12-disk00", "disk"},
                              {"b.ovf", "ovf"}})));
  ASSERT_EQ(reader_->members().size(), 2u);
  EXPECT_EQ(reader_->members()[0].name, "Debian 12-disk001.vmdk");
  EXPECT_EQ(reader_->members()[0].size, 4u);
  EXPECT_EQ(reader_->members()[1].name, "b.ovf");
}

TEST_F(TarTest, PaxRecordsOtherThanPathAndSizeAreSkipped) {
  ASSERT_OK(OpenBytes(RawTar({{"g", "20 comment=anything\n", 'g'},
                              {"x", "20 mtime=1700000000\n17 SCHILY.dev=64\n", 'x'},
                              {"a.ovf", "ovf"}})));
  ASSERT_EQ(reader_->members().size(), 1u);
  EXPECT_EQ(reader_->members()[0].name, "a.ovf");
}

TEST_F(TarTest, RejectsMalformedPaxRecords) {
  for (const std::string& bad : {std::string("8 path=x\n"),     // length too short
                                 std::string("99 path=x\n"),    // past the data
                                 std::string("8 pathx\n"),      // no '='
                                 std::string("x path=a\n"),     // no length
                                 std::string("11 size=1a\n")}) {  // size not decimal
    SCOPED_TRACE(bad);
    EXPECT_STATUS(OpenBytes(RawTar({{"x", bad, 'x'}, {"a", "1"}})), StatusCode::kInvalidArgument,
                  "pax");
  }
}

TEST_F(TarTest, RejectsPaxPathThatEscapesAndGlobalPath) {
  EXPECT_STATUS(OpenBytes(RawTar({{"x", "18 path=../../etc\n", 'x'}, {"a", "1"}})),
                StatusCode::kInvalidArgument, "'..' not allowed");
  EXPECT_STATUS(OpenBytes(RawTar({{"x", "15 path=/etc/x\n", 'x'}, {"a", "1"}})),
                StatusCode::kInvalidArgument, "absolute path");
  EXPECT_STATUS(OpenBytes(RawTar({{"g", "10 path=a\n", 'g'}, {"b", "1"}})),
                StatusCode::kInvalidArgument, "global header sets path");
}

TEST_F(TarTest, RejectsPaxSizePastTheEndAndHeaderWithoutMember) {
  EXPECT_STATUS(OpenBytes(RawTar({{"x", "15 size=999999\n", 'x'}, {"a", "1"}})),
                StatusCode::kInvalidArgument, "past the end");
  EXPECT_STATUS(OpenBytes(RawTar({{"x", "10 path=a\n", 'x'}})), StatusCode::kInvalidArgument,
                "ends after an extended header");
  EXPECT_STATUS(OpenBytes(RawTar({{"x", std::string(70000, '\n'), 'x'}, {"a", "1"}})),
                StatusCode::kInvalidArgument, "larger than 64 KiB");
}

TEST_F(TarTest, GnuLongNameAppliesToTheNextMember) {
  const std::string long_name = std::string(150, 'n') + ".vmdk";
  ASSERT_OK(OpenBytes(RawTar({{"././@LongLink", long_name + std::string(1, '\0'), 'L'},
                              {long_name.substr(0, 100), "disk"}})));
  ASSERT_EQ(reader_->members().size(), 1u);
  EXPECT_EQ(reader_->members()[0].name, long_name);
}

TEST_F(TarTest, RejectsSparseAndOtherGnuTypes) {
  EXPECT_STATUS(OpenBytes(RawTar({{"s", "1", 'S'}})), StatusCode::kInvalidArgument,
                "unsupported tar type 'S'");
  EXPECT_STATUS(OpenBytes(RawTar({{"K", "target", 'K'}, {"l", "", '2', "target"}})),
                StatusCode::kInvalidArgument, "is a link");
}

// Archives as real tools write them: GNU tar's posix (pax), gnu, ustar and
// v7 formats, and Python's tarfile (pax by default), each with a name that
// needs pax or GNU long names and a "./" prefix where tar adds one.
TEST_F(TarTest, ReadsWhatGnuTarAndPythonWriteInEveryFormat) {
  const std::string src = dir_.File("src");
  ASSERT_EQ(vmseal::testing::RunCommand({"mkdir", "-p", src}, nullptr), 0);
  const std::string utf8 = "Debian 12 caf\xc3\xa9-disk001.vmdk";
  const std::string long_name = std::string(120, 'l') + ".vmdk";
  WriteFileOrDie(src + "/a.ovf", "<Envelope/>");
  WriteFileOrDie(src + "/" + utf8, std::string(1500, 'd'));
  WriteFileOrDie(src + "/" + long_name, std::string(700, 'e'));
  struct Case {
    std::string format;
    std::vector<std::string> names;  // what the archive holds
  };
  const std::vector<Case> cases = {
      {"posix", {"a.ovf", utf8, long_name}},
      {"gnu", {"a.ovf", utf8, long_name}},
      {"ustar", {"a.ovf", utf8}},  // ustar cannot hold a 125-byte name without '/'
      {"v7", {"a.ovf", "./a.ovf"}},
  };
  for (const Case& c : cases) {
    std::string out;
    std::vector<std::string> argv = {"tar", "-C", src, "--format=" + c.format, "-cf",
                                     dir_.File(c.format + ".ova")};
    if (c.format == "v7") {
      argv.push_back("./a.ovf");
    } else {
      argv.insert(argv.end(), c.names.begin(), c.names.end());
    }
    ASSERT_EQ(vmseal::testing::RunCommand(argv, &out), 0) << c.format << ": " << out;
    ASSERT_OK(OpenBytes(ReadFileOrDie(dir_.File(c.format + ".ova")))) << c.format;
    std::vector<std::string> got;
    for (const TarMember& m : reader_->members()) got.push_back(m.name);
    const std::vector<std::string> want =
        c.format == "v7" ? std::vector<std::string>{"a.ovf"} : c.names;
    EXPECT_EQ(got, want) << c.format;
  }
  std::string out;
  const std::string py =
      "import tarfile,sys\n"
      "with tarfile.open(sys.argv[1], 'w') as t:\n"
      "  for n in sys.argv[3:]: t.add(sys.argv[2] + '/' + n, arcname=n)\n";
  ASSERT_EQ(vmseal::testing::RunCommand({"python3", "-c", py, dir_.File("py.ova"), src, "a.ovf",
                                         utf8, long_name},
                                        &out),
            0)
      << out;
  ASSERT_OK(OpenBytes(ReadFileOrDie(dir_.File("py.ova"))));
  ASSERT_EQ(reader_->members().size(), 3u);
  EXPECT_EQ(reader_->members()[1].name, utf8);
  EXPECT_EQ(reader_->members()[2].name, long_name);
  EXPECT_EQ(reader_->members()[2].size, 700u);
}

TEST_F(TarTest, WriterPutsLongAndUtf8NamesInPaxHeadersThatTarReads) {
  const std::string utf8 = "Debian 12 caf\xc3\xa9-disk001.vmdk";
  const std::string long_name = std::string(180, 'x') + ".vmdk";
  const std::string bytes = WriteWithWriter({{"a.ovf", "o"}, {utf8, "u"}, {long_name, "l"}});
  ASSERT_OK(OpenBytes(bytes));
  ASSERT_EQ(reader_->members().size(), 3u);
  EXPECT_EQ(reader_->members()[1].name, utf8);
  EXPECT_EQ(reader_->members()[2].name, long_name);
  std::string out;
  ASSERT_EQ(vmseal::testing::RunCommand({"tar", "tf", dir_.File("w.ova")}, &out), 0) << out;
  EXPECT_EQ(out, "a.ovf\n" + utf8 + "\n" + long_name + "\n");
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
                StatusCode::kInvalidArgument, "not a tar archive");
}

TEST(ValidateFileNameTest, AcceptsPlainNames) {
  EXPECT_OK(ValidateFileName("disk1.raw.vmseal"));
  EXPECT_OK(ValidateFileName("VM-1_disk+2.vmdk"));
}

TEST(ValidateFileNameTest, RejectsSubdirectory) {
  EXPECT_STATUS(ValidateFileName("a/b"), StatusCode::kInvalidArgument, "subdirectories");
}

TEST(ValidateFileNameTest, AcceptsSpacesAndUtf8AsExportersWriteThem) {
  EXPECT_OK(ValidateFileName("Debian 12-disk001.vmdk"));
  EXPECT_OK(ValidateFileName("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x92\xbe.vmdk"));
  EXPECT_OK(ValidateFileName("disk (1).vmdk"));
}

TEST(ValidateFileNameTest, RejectsOddCharacters) {
  for (const std::string& bad :
       {std::string("a\0b", 3), std::string("a\nb"), std::string("a\x7f"), std::string("a\\b"),
        std::string("nbd:x"), std::string("a*"), std::string("a?"), std::string("a\"b"),
        std::string("a<b"), std::string("a|b")}) {
    SCOPED_TRACE(bad);
    EXPECT_STATUS(ValidateFileName(bad), StatusCode::kInvalidArgument, "invalid character");
  }
  EXPECT_STATUS(ValidateFileName(" a"), StatusCode::kInvalidArgument, "space");
  EXPECT_STATUS(ValidateFileName("a "), StatusCode::kInvalidArgument, "space");
}

TEST(ValidateFileNameTest, RejectsInvalidUtf8) {
  for (const std::string& bad : {std::string("\xc3"), std::string("\xc0\xaf"),  // truncated, overlong '/'
                                 std::string("\xe0\x80\xaf"), std::string("\xed\xa0\x80"),  // overlong, surrogate
                                 std::string("\xf4\x90\x80\x80"), std::string("\xff")}) {
    EXPECT_STATUS(ValidateFileName("a" + bad), StatusCode::kInvalidArgument, "not UTF-8");
  }
}

TEST(ValidateFileNameTest, RejectsLongName) {
  EXPECT_OK(ValidateFileName(std::string(240, 'a')));
  EXPECT_STATUS(ValidateFileName(std::string(241, 'a')), StatusCode::kInvalidArgument,
                "longer than 240");
}

}  // namespace
}  // namespace vmseal::ovf
