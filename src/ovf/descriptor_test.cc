#include "ovf/descriptor.h"

#include <gtest/gtest.h>

#include "crypto/primitives.h"
#include "ovf/ovf_test_helpers.h"
#include "ovf/package_format.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

std::string Example() {
  return ReadFileOrDie(vmseal::testing::SourceDir() + "/tests/testdata/ovf/sealed-example.ovf");
}

std::string Generated() {
  return GenerateDescriptor(VirtualSystemSpec(),
                            {{"file1", "disk1.raw", 100, 100, std::string(kRawFormatUri)}});
}

EncryptionTag SampleTag() {
  EncryptionTag t;
  t.format = "vmseal-package";
  t.version = 1;
  t.key_wrap_algorithm = std::string(kRsaOaepUri);
  t.data_algorithm = std::string(kStreamAlgorithmUri);
  t.chunk_size_bytes = 65536;
  t.key_id = "sha256:00";
  t.image_id = "img-0001";
  t.tenant = "acme";
  t.key_version = 1;
  t.created = "2026-11-27T03:00:00Z";
  return t;
}

TEST(DescriptorTest, ExampleInTestdataValidatesAgainstSchema) {
  EXPECT_TRUE(testing::ValidatesAgainstSchema(vmseal::testing::SourceDir() +
                                              "/tests/testdata/ovf/sealed-example.ovf"));
}

TEST(DescriptorTest, GeneratedDescriptorValidatesAgainstSchema) {
  TempDir dir;
  GenerateDescriptor(VirtualSystemSpec(), {});
  std::vector<DiskSpec> disks = {{"file1", "disk1.raw", 100, 100, std::string(kRawFormatUri)},
                                 {"file2", "disk2.qcow2", 200, 1 << 30, std::string(kQcow2FormatUri)}};
  WriteFileOrDie(dir.File("g.ovf"), GenerateDescriptor({"web-1", 4, 8192}, disks));
  EXPECT_TRUE(testing::ValidatesAgainstSchema(dir.File("g.ovf")));
  std::string text = ReadFileOrDie(dir.File("g.ovf"));
  EXPECT_NE(text.find("<rasd:VirtualQuantity>4</rasd:VirtualQuantity>"), std::string::npos);
  EXPECT_NE(text.find("<rasd:VirtualQuantity>8192</rasd:VirtualQuantity>"), std::string::npos);
}

TEST(DescriptorTest, AddEncryptionProducesValidDescriptorAndReadsBack) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  WrappedKey key{std::string(kRsaOaepUri), OaepLabel(tag), std::vector<uint8_t>(256, 7)};
  ASSERT_OK(d->AddEncryption(tag, key, {{"file1", "disk1.raw.vmseal", 1234}}));
  TempDir dir;
  WriteFileOrDie(dir.File("s.ovf"), d->Serialize());
  EXPECT_TRUE(testing::ValidatesAgainstSchema(dir.File("s.ovf")));
  auto back = Descriptor::Parse(d->Serialize());
  ASSERT_OK(back);
  EncryptionTag t;
  WrappedKey k;
  ASSERT_OK(back->ReadEncryption(&t, &k));
  EXPECT_EQ(t.image_id, "img-0001");
  EXPECT_EQ(t.chunk_size_bytes, 65536u);
  EXPECT_EQ(k.ciphertext, key.ciphertext);
  ASSERT_EQ(back->Files().size(), 1u);
  EXPECT_EQ(back->Files()[0].href, "disk1.raw.vmseal");
  EXPECT_EQ(back->Files()[0].size, 1234u);
  EXPECT_EQ(back->Files()[0].encryption_algorithm, kStreamAlgorithmUri);
}

TEST(DescriptorTest, ReleasePolicyIsAnEncryptionPropertyThatValidatesAndReadsBack) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  WrappedKey key{std::string(kRsaOaepUri), OaepLabel(tag), std::vector<uint8_t>(256, 7)};
  EXPECT_STATUS(d->AddReleasePolicy("{}"), StatusCode::kFailedPrecondition, "no encryption tag");
  ASSERT_OK(d->AddEncryption(tag, key, {{"file1", "disk1.raw.vmseal", 1234}}));
  auto none = d->ReadReleasePolicy();
  ASSERT_OK(none);
  EXPECT_FALSE(none->has_value());
  const std::string policy = R"({"flavors":{"anyOf":["good"]},"required_tags":["a<b&c"]})";
  ASSERT_OK(d->AddReleasePolicy(policy));
  EXPECT_STATUS(d->AddReleasePolicy(policy), StatusCode::kFailedPrecondition, "already");
  TempDir dir;
  WriteFileOrDie(dir.File("p.ovf"), d->Serialize());
  EXPECT_TRUE(testing::ValidatesAgainstSchema(dir.File("p.ovf")));
  EXPECT_NE(d->Serialize().find("Id=\"vmseal-policy\""), std::string::npos);
  auto back = Descriptor::Parse(d->Serialize());
  ASSERT_OK(back);
  auto read = back->ReadReleasePolicy();
  ASSERT_OK(read);
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ(**read, policy);
  // The tag still reads: the policy property does not hide it.
  EncryptionTag t;
  WrappedKey k;
  ASSERT_OK(back->ReadEncryption(&t, &k));
  EXPECT_EQ(t.image_id, tag.image_id);
}

// A package moved to another cloud (docs/protocol.md §7): the EncryptedKey
// and the tag's tenant and keyId replaced, streamTenant naming the source
// tenant; the result validates against DSP8023 and reads back exactly.
TEST(DescriptorTest, ReplacedEncryptedKeyWithStreamTenantValidatesAndReadsBack) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  WrappedKey key{std::string(kRsaOaepUri), OaepLabel(tag), std::vector<uint8_t>(256, 7)};
  ASSERT_OK(d->AddEncryption(tag, key, {{"file1", "disk1.raw.vmseal", 1234}}));
  EncryptionTag moved = tag;
  moved.tenant = "tenant-at-b";
  moved.key_id = "sha256:" + std::string(64, 'b');
  moved.stream_tenant = tag.tenant;
  WrappedKey moved_key{std::string(kRsaOaepUri), OaepLabel(moved), std::vector<uint8_t>(256, 9)};
  ASSERT_OK(d->ReplaceEncryptedKey(moved, moved_key));
  TempDir dir;
  WriteFileOrDie(dir.File("m.ovf"), d->Serialize());
  EXPECT_TRUE(testing::ValidatesAgainstSchema(dir.File("m.ovf")));
  auto back = Descriptor::Parse(d->Serialize());
  ASSERT_OK(back);
  EncryptionTag t;
  WrappedKey k;
  ASSERT_OK(back->ReadEncryption(&t, &k));
  EXPECT_EQ(t.tenant, "tenant-at-b");
  EXPECT_EQ(t.stream_tenant, tag.tenant);
  EXPECT_EQ(t.key_id, moved.key_id);
  EXPECT_EQ(t.image_id, tag.image_id);
  EXPECT_EQ(k.ciphertext, moved_key.ciphertext);
  EXPECT_EQ(k.oaep_label, OaepLabel(moved));
  // Another algorithm, or a streamTenant outside the identity alphabet:
  // refused, and the descriptor is unchanged.
  const std::string before = d->Serialize();
  WrappedKey x{std::string(kX25519WrapUri), {}, std::vector<uint8_t>(93, 1)};
  EXPECT_STATUS(d->ReplaceEncryptedKey(moved, x), StatusCode::kInvalidArgument, "algorithms");
  EncryptionTag bad = moved;
  bad.stream_tenant = "a/b";
  EXPECT_STATUS(d->ReplaceEncryptedKey(bad, moved_key), StatusCode::kInvalidArgument, "streamTenant");
  EXPECT_EQ(d->Serialize(), before);
}

TEST(DescriptorTest, ReplacedEncryptedKeyAtANewerVersionKeepsTheStreamKeyVersion) {
  // docs/format/package.md §4 streamKeyVersion, §5 (the label at the new
  // version), §6 (the stream context keeps the old version).
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  WrappedKey key{std::string(kRsaOaepUri), OaepLabel(tag), std::vector<uint8_t>(256, 7)};
  ASSERT_OK(d->AddEncryption(tag, key, {{"file1", "disk1.raw.vmseal", 1234}}));
  EncryptionTag rewrapped = tag;
  rewrapped.key_id = "sha256:" + std::string(64, 'c');
  rewrapped.key_version = 2;
  rewrapped.stream_key_version = 1;
  WrappedKey new_key{std::string(kRsaOaepUri), OaepLabel(rewrapped), std::vector<uint8_t>(256, 9)};
  ASSERT_OK(d->ReplaceEncryptedKey(rewrapped, new_key));
  TempDir dir;
  WriteFileOrDie(dir.File("r.ovf"), d->Serialize());
  EXPECT_TRUE(testing::ValidatesAgainstSchema(dir.File("r.ovf")));
  EXPECT_NE(d->Serialize().find(" keyVersion=\"2\""), std::string::npos) << d->Serialize();
  EXPECT_NE(d->Serialize().find(" streamKeyVersion=\"1\""), std::string::npos) << d->Serialize();
  auto back = Descriptor::Parse(d->Serialize());
  ASSERT_OK(back);
  EncryptionTag t;
  WrappedKey k;
  ASSERT_OK(back->ReadEncryption(&t, &k));
  EXPECT_EQ(t.key_version, 2u);
  EXPECT_EQ(t.stream_key_version, 1u);
  EXPECT_EQ(t.key_id, rewrapped.key_id);
  EXPECT_EQ(k.oaep_label, OaepLabel(rewrapped));
  // The new label is §5's at keyVersion 2 (package.md's second vector).
  EXPECT_EQ(crypto::HexEncode(k.oaep_label),
            "766d7365616c2d7061636b6167652d6b65792d76310000000008696d672d303030310000"
            "000461636d6500000000000000020000001475726e3a766d7365616c3a73747265616d3a"
            "7631");
  // streamKeyVersion equal to keyVersion, or 0 in the text: refused.
  const std::string before = d->Serialize();
  EncryptionTag same = rewrapped;
  same.stream_key_version = 2;
  EXPECT_STATUS(d->ReplaceEncryptedKey(same, new_key), StatusCode::kInvalidArgument, "streamKeyVersion");
  EXPECT_EQ(d->Serialize(), before);
  for (const char* bad : {"0", "2", "x", "-1"}) {
    std::string text = before;
    const std::string attr = "streamKeyVersion=\"1\"";
    text.replace(text.find(attr), attr.size(), "streamKeyVersion=\"" + std::string(bad) + "\"");
    SCOPED_TRACE(bad);
    auto parsed = Descriptor::Parse(text);
    ASSERT_OK(parsed);
    EXPECT_STATUS(parsed->ReadEncryption(&t, &k), StatusCode::kInvalidArgument, "streamKeyVersion");
  }
  // Back at the stream's own version, the attribute goes away.
  EncryptionTag home = tag;
  ASSERT_OK(d->ReplaceEncryptedKey(home, key));
  EXPECT_EQ(d->Serialize().find("streamKeyVersion"), std::string::npos);
}

TEST(DescriptorTest, ReleasePolicyOutOfBoundsOrTwiceIsRefused) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  ASSERT_OK(d->AddEncryption(tag, {std::string(kRsaOaepUri), OaepLabel(tag), {1}},
                             {{"file1", "disk1.raw.vmseal", 1}}));
  EXPECT_STATUS(d->AddReleasePolicy(""), StatusCode::kInvalidArgument, "bytes");
  EXPECT_STATUS(d->AddReleasePolicy(std::string(kMaxReleasePolicyBytes + 1, ' ')),
                StatusCode::kInvalidArgument, "bytes");
  ASSERT_OK(d->AddReleasePolicy("{}"));
  // A second ReleasePolicy element added by hand.
  std::string text = d->Serialize();
  const std::string element = "<vmseal:ReleasePolicy>{}</vmseal:ReleasePolicy>";
  const size_t at = text.find(element);
  ASSERT_NE(at, std::string::npos);
  text.insert(at, element);
  auto twice = Descriptor::Parse(text);
  ASSERT_OK(twice);
  EXPECT_STATUS(twice->ReadReleasePolicy(), StatusCode::kInvalidArgument, "more than one");
}

TEST(DescriptorTest, X25519WrapHasNoOaepParametersAndReadsBackTheLabel) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  tag.key_wrap_algorithm = std::string(kX25519WrapUri);
  WrappedKey key{std::string(kX25519WrapUri), OaepLabel(tag), std::vector<uint8_t>(93, 7)};
  ASSERT_OK(d->AddEncryption(tag, key, {{"file1", "disk1.raw.vmseal", 1234}}));
  const std::string text = d->Serialize();
  EXPECT_EQ(text.find("OAEPparams"), std::string::npos);
  EXPECT_EQ(text.find("DigestMethod"), std::string::npos);
  EXPECT_EQ(text.find("xenc11"), std::string::npos);
  TempDir dir;
  WriteFileOrDie(dir.File("s.ovf"), text);
  EXPECT_TRUE(testing::ValidatesAgainstSchema(dir.File("s.ovf")));
  auto back = Descriptor::Parse(text);
  ASSERT_OK(back);
  EncryptionTag t;
  WrappedKey k;
  ASSERT_OK(back->ReadEncryption(&t, &k));
  EXPECT_EQ(t.key_wrap_algorithm, kX25519WrapUri);
  EXPECT_EQ(k.algorithm, kX25519WrapUri);
  EXPECT_EQ(k.oaep_label, OaepLabel(tag));
  EXPECT_EQ(k.ciphertext, key.ciphertext);
}

TEST(DescriptorTest, X25519WrapWithGcmFilesIsAnUnsupportedCombination) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  tag.key_wrap_algorithm = std::string(kX25519WrapUri);
  tag.data_algorithm = std::string(kAes256GcmUri);
  tag.chunk_size_bytes = 0;
  ASSERT_OK(d->AddEncryption(tag, {std::string(kX25519WrapUri), OaepLabel(tag),
                                   std::vector<uint8_t>(93, 7)},
                             {{"file1", "disk1.raw.vmseal", 1234}}));
  auto back = Descriptor::Parse(d->Serialize());
  ASSERT_OK(back);
  EncryptionTag t;
  WrappedKey k;
  EXPECT_STATUS(back->ReadEncryption(&t, &k), StatusCode::kInvalidArgument,
                "unsupported algorithm combination");
}

TEST(DescriptorTest, RemoveEncryptionRestoresPlainFiles) {
  auto d = Descriptor::Parse(Generated());
  ASSERT_OK(d);
  EncryptionTag tag = SampleTag();
  ASSERT_OK(d->AddEncryption(tag, {std::string(kRsaOaepUri), OaepLabel(tag), {1}},
                             {{"file1", "disk1.raw.vmseal", 1234}}));
  ASSERT_OK(d->RemoveEncryption({{"file1", "disk1.raw", 100}}));
  std::string text = d->Serialize();
  EXPECT_EQ(text.find("EncryptionSection"), std::string::npos);
  EXPECT_EQ(text.find("EncryptedData"), std::string::npos);
  EXPECT_NE(text.find("ovf:href=\"disk1.raw\" ovf:size=\"100\""), std::string::npos);
}

TEST(DescriptorTest, OaepLabelBytesAreSpecified) {
  // docs/format/package.md §5 test vector.
  EncryptionTag t = SampleTag();
  std::vector<uint8_t> label = OaepLabel(t);
  std::string expected = std::string("vmseal-package-key-v1") + '\0' +
                         std::string("\0\0\0\x08img-0001", 12) + std::string("\0\0\0\x04" "acme", 8) +
                         std::string("\0\0\0\0\0\0\0\x01", 8) +
                         std::string("\0\0\0\x14urn:vmseal:stream:v1", 24);
  EXPECT_EQ(std::string(label.begin(), label.end()), expected);
}

TEST(DescriptorTest, RejectsDoctype) {
  std::string x = "<?xml version=\"1.0\"?><!DOCTYPE Envelope SYSTEM \"http://example.com/x.dtd\">" +
                  Generated().substr(Generated().find("<Envelope"));
  EXPECT_STATUS(Descriptor::Parse(x).status(), StatusCode::kInvalidArgument, "DOCTYPE");
}

TEST(DescriptorTest, RejectsEntityExpansionBomb) {
  std::string x = "<!DOCTYPE l [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]><l>&b;</l>";
  EXPECT_STATUS(Descriptor::Parse(x).status(), StatusCode::kInvalidArgument, "DOCTYPE");
}

TEST(DescriptorTest, RejectsOversizedInput) {
  std::string x = Generated() + "<!--" + std::string(kMaxDescriptorBytes, ' ') + "-->";
  EXPECT_STATUS(Descriptor::Parse(x).status(), StatusCode::kInvalidArgument,
                "descriptor larger than");
}

TEST(DescriptorTest, RejectsMalformedXml) {
  EXPECT_STATUS(Descriptor::Parse("<Envelope><References>").status(),
                StatusCode::kInvalidArgument, "not well-formed");
}

TEST(DescriptorTest, RejectsNonOvfRoot) {
  EXPECT_STATUS(Descriptor::Parse("<html/>").status(), StatusCode::kInvalidArgument,
                "not an OVF 1.x or 2.x Envelope");
}

TEST(DescriptorTest, RejectsTraversalInFileHref) {
  std::string x = Generated();
  x.replace(x.find("ovf:href=\"disk1.raw\""), 20, "ovf:href=\"../../x\"");
  EXPECT_STATUS(Descriptor::Parse(x).status(), StatusCode::kInvalidArgument, "'..'");
}

TEST(DescriptorTest, RejectsDuplicateFileIds) {
  std::string x = GenerateDescriptor(VirtualSystemSpec(),
                                     {{"file1", "a.raw", 1, 1, std::string(kRawFormatUri)},
                                      {"file1", "b.raw", 1, 1, std::string(kRawFormatUri)}});
  EXPECT_STATUS(Descriptor::Parse(x).status(), StatusCode::kInvalidArgument, "duplicate File id");
}

TEST(DescriptorTest, UpgradesOvf1NamespaceToOvf2) {
  auto d = Descriptor::Parse(
      ReadFileOrDie(vmseal::testing::SourceDir() + "/tests/testdata/ovf/vbox-1.0.ovf"));
  ASSERT_OK(d);
  EXPECT_EQ(d->major_version(), 1);
  ASSERT_OK(d->UpgradeToOvf2());
  EXPECT_EQ(d->major_version(), 2);
  std::string text = d->Serialize();
  EXPECT_EQ(text.find(std::string(kOvf1Namespace)), std::string::npos);
  EXPECT_NE(text.find("ovf:version=\"2.0\""), std::string::npos);
}

TEST(DescriptorTest, ExampleTagReadsBack) {
  auto d = Descriptor::Parse(Example());
  ASSERT_OK(d);
  EncryptionTag t;
  WrappedKey k;
  ASSERT_OK(d->ReadEncryption(&t, &k));
  EXPECT_EQ(t.image_id, "img-0001");
  EXPECT_EQ(t.tenant, "acme");
  EXPECT_EQ(k.oaep_label, OaepLabel(SampleTag()));
}

// The DiskSection's ovf:format of each file, which the host checks against
// the disk it decrypts (OVF 2 and OVF 1 descriptors).
TEST(DescriptorDiskFormat, FilesCarryTheFormatTheirDiskDeclares) {
  std::vector<DiskSpec> disks = {
      {"file1", "disk1.raw", 512, 512, std::string(kRawFormatUri)},
      {"file2", "disk2.qcow2", 1024, 1 << 20, std::string(kQcow2FormatUri)}};
  auto d = Descriptor::Parse(GenerateDescriptor(VirtualSystemSpec(), disks));
  ASSERT_OK(d);
  std::vector<FileRef> files = d->Files();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].disk_format_uri, kRawFormatUri);
  EXPECT_EQ(files[1].disk_format_uri, kQcow2FormatUri);
}

TEST(DescriptorDiskFormat, ReadsAnOvf1VmdkDeclaration) {
  auto d = Descriptor::Parse(R"(<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
  <References><File ovf:id="file1" ovf:href="disk.vmdk"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="1024"
          ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
</Envelope>)");
  ASSERT_OK(d);
  ASSERT_EQ(d->Files().size(), 1u);
  EXPECT_EQ(d->Files()[0].disk_format_uri,
            "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized");
}

TEST(DescriptorDiskFormat, OnlyADiskOfTheDiskSectionCounts) {
  auto d = Descriptor::Parse(R"(<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/2"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/2">
  <References><File ovf:id="file1" ovf:href="disk.raw"/><File ovf:id="file2" ovf:href="b.raw"/></References>
  <VirtualSystem ovf:id="vm"><Info>x</Info><Disk ovf:fileRef="file1" ovf:format="x"/></VirtualSystem>
</Envelope>)");
  ASSERT_OK(d);
  ASSERT_EQ(d->Files().size(), 2u);
  EXPECT_EQ(d->Files()[0].disk_format_uri, "");
  EXPECT_EQ(d->Files()[1].disk_format_uri, "");
}

}  // namespace
}  // namespace vmseal::ovf
