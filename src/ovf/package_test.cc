#include "ovf/package.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <tuple>

#include "crypto/key_wrap.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "ovf/internal/disk_cipher.h"
#include "ovf/manifest.h"
#include "ovf/ovf_test_helpers.h"
#include "ovf/package_format.h"
#include "ovf/tar.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

namespace fs = std::filesystem;
using ::vmseal::ovf::testing::OtherTestKey;
using ::vmseal::ovf::testing::RawMember;
using ::vmseal::ovf::testing::RawTar;
using ::vmseal::ovf::testing::TestKey;
using ::vmseal::ovf::testing::ValidatesAgainstSchema;
using ::vmseal::testing::ListDir;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

std::string RandomData(size_t n) {
  crypto::Bytes b = crypto::RandomBytes(n);
  return std::string(b.begin(), b.end());
}

void ReplaceAll(std::string* s, const std::string& from, const std::string& to) {
  for (size_t pos = 0; (pos = s->find(from, pos)) != std::string::npos; pos += to.size()) {
    s->replace(pos, from.size(), to);
  }
}

std::string PemText(const crypto::PrivateKey& key) {
  auto pem = key.ToPem();
  EXPECT_OK(pem);
  return pem.ok() ? std::string(crypto::AsStringView(pem->UnsafeSpan())) : "";
}

// X25519 recipients (the RSA ones are testing::TestKey() and OtherTestKey()).
struct X25519KeyPem {
  std::string private_pem;
  std::string public_pem;
};
X25519KeyPem NewX25519Key() {
  auto key = crypto::PrivateKey::Generate(crypto::KeyType::kX25519);
  EXPECT_OK(key);
  if (!key.ok()) return {};
  return {PemText(*key), key->Public().ToPem()};
}
const X25519KeyPem& X25519Key() {
  static const X25519KeyPem* key = new X25519KeyPem(NewX25519Key());
  return *key;
}

// The text between <xenc:CipherValue> and </xenc:CipherValue>.
std::string CipherValueOf(const std::string& descriptor) {
  const std::string open = "<xenc:CipherValue>";
  size_t b = descriptor.find(open);
  size_t e = descriptor.find("</xenc:CipherValue>");
  if (b == std::string::npos || e == std::string::npos) return "";
  return descriptor.substr(b + open.size(), e - b - open.size());
}

class PackageTest : public ::testing::Test {
 protected:
  SealOptions Options(std::vector<std::string> inputs, bool compat = true) {
    SealOptions o;
    o.inputs = std::move(inputs);
    o.recipient_pem = TestKey().public_pem;
    o.image_id = "img-0001";
    o.tenant = "acme";
    o.created = "2026-11-27T03:00:00Z";
    o.xmlenc_compat = compat;
    return o;
  }
  std::string MakeRaw(const std::string& name, size_t size) {
    std::string path = dir_.File(name);
    WriteFileOrDie(path, RandomData(size));
    return path;
  }
  // Seals `inputs` into dir_/name and returns its path.
  std::string Seal(std::vector<std::string> inputs, const std::string& name = "sealed.ova",
                   bool compat = true) {
    SealOptions o = Options(std::move(inputs), compat);
    o.ova = name.ends_with(".ova");
    std::string out = dir_.File(name);
    EXPECT_OK(SealPackage(Env::Default(), o, out));
    // Every package a test produces must validate against DSP8023 2.0.1.
    EXPECT_TRUE(DescriptorValidates(out));
    return out;
  }
  // Writes the package's descriptor to a file and validates it.
  ::testing::AssertionResult DescriptorValidates(const std::string& package) {
    PackageOpenOptions po;
    po.require_encrypted = false;
    auto p = Package::Open(Env::Default(), package, po);
    if (!p.ok()) return ::testing::AssertionFailure() << p.status().ToString();
    std::string path = dir_.File("check-" + std::to_string(checks_++) + ".ovf");
    std::string keep = dir_.File("schema-checks");
    fs::create_directories(keep);
    path = keep + "/" + fs::path(path).filename().string();
    WriteFileOrDie(path, (*p)->descriptor_text());
    return ValidatesAgainstSchema(path);
  }
  std::vector<RawMember> Members(const std::string& ova) {
    auto file = Env::Default()->NewRandomAccessFile(ova);
    EXPECT_OK(file);
    auto reader = TarReader::Open(file->get());
    EXPECT_OK(reader);
    std::vector<RawMember> out;
    std::string bytes = ReadFileOrDie(ova);
    for (const TarMember& m : (*reader)->members()) {
      out.push_back({m.name, bytes.substr(m.data_offset, m.size)});
    }
    return out;
  }
  // Rebuilds `ova` at dir_/name after `mutate`, recomputing the manifest
  // over the result when `fix_manifest`.
  std::string Rewrite(const std::string& ova, const std::string& name,
                      const std::function<void(std::vector<RawMember>*)>& mutate,
                      bool fix_manifest) {
    std::vector<RawMember> members = Members(ova);
    mutate(&members);
    if (fix_manifest) {
      for (RawMember& mf : members) {
        if (!mf.name.ends_with(".mf")) continue;
        std::vector<ManifestEntry> entries;
        for (const RawMember& m : members) {
          if (&m == &mf) continue;
          crypto::Sha256Digest d = crypto::Sha256(m.data);
          entries.push_back({DigestAlgorithm::kSha256, m.name, {d.begin(), d.end()}});
        }
        mf.data = FormatManifest(entries);
      }
    }
    std::string out = dir_.File(name);
    WriteFileOrDie(out, RawTar(members));
    return out;
  }
  std::string& DescriptorOf(std::vector<RawMember>* members) { return (*members)[0].data; }

  // Unseals (with the RSA test key unless `private_pem` is given) and
  // expects failure with no output and no temp left beside it.
  void ExpectUnsealFails(const std::string& package, StatusCode code, const std::string& substr,
                         const std::string& private_pem = TestKey().private_pem) {
    std::string out = dir_.File("unsealed");
    auto before = ListDir(dir_.path());
    EXPECT_STATUS(UnsealPackage(Env::Default(), package, private_pem, out), code, substr);
    EXPECT_FALSE(fs::exists(out));
    EXPECT_EQ(ListDir(dir_.path()).size(), before.size());
  }

  TempDir dir_;
  int checks_ = 0;
};

TEST_F(PackageTest, RawImageOvaRoundTripsThroughUnseal) {
  std::string disk = MakeRaw("disk.img", 300000);
  std::string ova = Seal({disk});
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.raw"), ReadFileOrDie(disk));
  EXPECT_TRUE(ValidatesAgainstSchema(out + "/sealed.ovf"));
  std::string mf = ReadFileOrDie(out + "/sealed.mf");
  EXPECT_NE(mf.find("SHA256(disk1.raw)= "), std::string::npos);
  EXPECT_EQ(ReadFileOrDie(out + "/sealed.ovf").find("EncryptionSection"), std::string::npos);
}

TEST_F(PackageTest, SealedDescriptorValidatesAgainstSchema) {
  std::string ova = Seal({MakeRaw("disk.img", 1000)});
  EXPECT_TRUE(DescriptorValidates(ova));
}

TEST_F(PackageTest, OvaMemberOrderIsDescriptorFilesManifest) {
  std::string ova = Seal({MakeRaw("a.img", 10), MakeRaw("b.img", 20)});
  std::vector<RawMember> m = Members(ova);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].name, "sealed.ovf");
  EXPECT_EQ(m[1].name, "disk1.raw.vmseal");
  EXPECT_EQ(m[2].name, "disk2.raw.vmseal");
  EXPECT_EQ(m[3].name, "sealed.mf");
}

TEST_F(PackageTest, TagRecordsIdentityAndAlgorithms) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  const EncryptionTag& t = (*p)->tag();
  EXPECT_EQ(t.format, "vmseal-package");
  EXPECT_EQ(t.version, 1u);
  EXPECT_EQ(t.image_id, "img-0001");
  EXPECT_EQ(t.tenant, "acme");
  EXPECT_EQ(t.created, "2026-11-27T03:00:00Z");
  EXPECT_EQ(t.data_algorithm, kAes256GcmUri);
  EXPECT_EQ(t.key_wrap_algorithm, kRsaOaepMgf1pUri);
  EXPECT_TRUE(t.key_id.starts_with("sha256:"));
  EXPECT_EQ((*p)->wrapped_key().oaep_label, OaepLabel(t));
}

TEST_F(PackageTest, Qcow2DiskRecordsFormatAndVirtualSize) {
  std::string qcow = dir_.File("disk.qcow2");
  std::string log;
  ASSERT_EQ(RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", qcow, "64M"}, &log), 0) << log;
  std::string ova = Seal({qcow});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  EXPECT_NE((*p)->descriptor_text().find(std::string(kQcow2FormatUri)), std::string::npos);
  EXPECT_NE((*p)->descriptor_text().find("ovf:capacity=\"67108864\""), std::string::npos);
  EXPECT_TRUE(DescriptorValidates(ova));
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.qcow2"), ReadFileOrDie(qcow));
  ASSERT_EQ(RunCommand({"qemu-img", "check", out + "/disk1.qcow2"}, &log), 0) << log;
}

TEST_F(PackageTest, DirectoryFormatRoundTrips) {
  std::string disk = MakeRaw("disk.img", 5000);
  std::string pkg = Seal({disk}, "pkgdir");
  EXPECT_TRUE(fs::is_directory(pkg));
  EXPECT_TRUE(DescriptorValidates(pkg));
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), pkg, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.raw"), ReadFileOrDie(disk));
}

TEST_F(PackageTest, MultiDiskRoundTrips) {
  std::string a = MakeRaw("a.img", 4096), b = MakeRaw("b.img", 1), c = MakeRaw("c.img", 0);
  std::string ova = Seal({a, b, c});
  EXPECT_TRUE(DescriptorValidates(ova));
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.raw"), ReadFileOrDie(a));
  EXPECT_EQ(ReadFileOrDie(out + "/disk2.raw"), ReadFileOrDie(b));
  EXPECT_EQ(ReadFileOrDie(out + "/disk3.raw"), ReadFileOrDie(c));
}

// A package re-wrapped to a newer key version (`vmseal customer rewrap`,
// package.md §4 streamKeyVersion): the disk ciphertext is kept byte for
// byte, and it opens only because the stream context keeps the version the
// streams were sealed under.
TEST_F(PackageTest, RewrappedToANewerKeyVersionOpensWithTheStreamKeyVersionOnly) {
  std::string disk = MakeRaw("disk.img", 70000);
  std::string ova = Seal({disk}, "v1.ova", /*compat=*/false);
  auto v1 = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(v1);
  ASSERT_EQ((*v1)->tag().key_version, 1u);
  auto data_key = (*v1)->UnwrapDataKey(TestKey().private_pem);
  ASSERT_OK(data_key);
  auto ca = crypto::CreateSelfSignedCa({"test CA"});
  ASSERT_OK(ca);
  auto signer = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(signer);
  crypto::IssueOptions io;
  io.common_name = "acme";
  io.usage = crypto::CertUsage::kPackageSigning;
  auto signer_cert = crypto::IssueCertificate(*ca, signer->Public(), io);
  ASSERT_OK(signer_cert);
  auto v2_key = crypto::PublicKey::FromPem(OtherTestKey().public_pem);
  ASSERT_OK(v2_key);
  auto rewrap = [&](uint64_t stream_key_version, const std::string& name) -> Status {
    EncryptionTag tag = (*v1)->tag();
    tag.key_id = "sha256:" + v2_key->KeyId();
    tag.key_version = 2;
    tag.stream_key_version = stream_key_version;
    std::vector<uint8_t> label = OaepLabel(tag);
    ASSIGN_OR_RETURN(crypto::Bytes wrapped, crypto::WrapKey(*v2_key, *data_key, crypto::AsStringView(label)));
    return RewrapPackage(Env::Default(), **v1, tag, wrapped, *signer, signer_cert->ToPem(), dir_.File(name));
  };
  ASSERT_OK(rewrap(1, "v2.ova"));
  auto v2 = Package::Open(Env::Default(), dir_.File("v2.ova"), PackageOpenOptions());
  ASSERT_OK(v2);
  EXPECT_EQ((*v2)->tag().key_version, 2u);
  EXPECT_EQ((*v2)->tag().stream_key_version, 1u);
  EXPECT_EQ((*v2)->tag().key_id, "sha256:" + v2_key->KeyId());
  EXPECT_TRUE((*v2)->is_signed());
  // The sealed file is the same ciphertext.
  auto members_v1 = Members(ova);
  auto members_v2 = Members(dir_.File("v2.ova"));
  ASSERT_EQ(members_v1.size() + 1, members_v2.size());  // + the .cert
  EXPECT_EQ(members_v1[1].name, members_v2[1].name);
  EXPECT_EQ(members_v1[1].data, members_v2[1].data);
  // The old key no longer opens it; the new one does, byte-exact.
  EXPECT_FALSE((*v2)->UnwrapDataKey(TestKey().private_pem).ok());
  ASSERT_OK(UnsealPackage(Env::Default(), dir_.File("v2.ova"), OtherTestKey().private_pem,
                          dir_.File("plain")));
  EXPECT_EQ(ReadFileOrDie(dir_.File("plain/disk1.raw")), ReadFileOrDie(disk));
  // Without streamKeyVersion the streams' context names version 2: the key
  // opens, every stream fails, and nothing is written.
  ASSERT_OK(rewrap(0, "no-stream-version.ova"));
  EXPECT_STATUS(UnsealPackage(Env::Default(), dir_.File("no-stream-version.ova"),
                              OtherTestKey().private_pem, dir_.File("plain2")),
                StatusCode::kDataLoss, "decryption failed");
  EXPECT_FALSE(fs::exists(dir_.File("plain2")));
}

// Customer-held escrow (§4.2): a package sealed with an escrow key opens
// offline with it, byte-exact, RSA or X25519; without one nothing changes;
// the escrow EncryptedKey is covered by the signature; a re-wrap keeps it
// valid.
TEST_F(PackageTest, EscrowCopyOpensOfflineIsSignedAndSurvivesARewrap) {
  std::string disk = MakeRaw("disk.img", 70000);
  auto ca = crypto::CreateSelfSignedCa({"test CA"});
  ASSERT_OK(ca);
  auto signer = crypto::PrivateKey::Generate(crypto::KeyType::kEcP256);
  ASSERT_OK(signer);
  crypto::IssueOptions io;
  io.common_name = "acme";
  io.usage = crypto::CertUsage::kPackageSigning;
  auto signer_cert = crypto::IssueCertificate(*ca, signer->Public(), io);
  ASSERT_OK(signer_cert);
  auto seal = [&](const std::string& escrow_pem, const std::string& name) {
    SealOptions o = Options({disk}, /*compat=*/false);
    o.escrow_pem = escrow_pem;
    o.signing_key = &*signer;
    o.signing_chain_pem = signer_cert->ToPem();
    return SealPackage(Env::Default(), o, dir_.File(name));
  };
  // Without escrow: no second EncryptedKey, and unseal --escrow-key says so.
  ASSERT_OK(seal("", "plain.ova"));
  auto plain = Package::Open(Env::Default(), dir_.File("plain.ova"), PackageOpenOptions());
  ASSERT_OK(plain);
  EXPECT_FALSE((*plain)->escrow_key().has_value());
  EXPECT_EQ((*plain)->descriptor_text().find(kEscrowKeyId), std::string::npos);
  EXPECT_STATUS(UnsealPackageWithEscrowKey(Env::Default(), dir_.File("plain.ova"), OtherTestKey().private_pem,
                                           dir_.File("none")),
                StatusCode::kFailedPrecondition, "no_escrow_key");
  EXPECT_FALSE(fs::exists(dir_.File("none")));
  // The escrow key must not be the KMS recipient's.
  EXPECT_STATUS(seal(TestKey().public_pem, "same.ova"), StatusCode::kInvalidArgument, "escrow");
  EXPECT_FALSE(fs::exists(dir_.File("same.ova")));
  // RSA and X25519 escrow keys: offline, byte-exact; the descriptor stays valid.
  for (const auto& [pub, priv, name] :
       {std::tuple{OtherTestKey().public_pem, OtherTestKey().private_pem, std::string("rsa")},
        std::tuple{X25519Key().public_pem, X25519Key().private_pem, std::string("x25519")}}) {
    ASSERT_OK(seal(pub, name + ".ova"));
    EXPECT_TRUE(DescriptorValidates(dir_.File(name + ".ova"))) << name;
    auto p = Package::Open(Env::Default(), dir_.File(name + ".ova"), PackageOpenOptions());
    ASSERT_OK(p);
    ASSERT_TRUE((*p)->escrow_key().has_value());
    ASSERT_OK(UnsealPackageWithEscrowKey(Env::Default(), dir_.File(name + ".ova"), priv, dir_.File(name)));
    EXPECT_EQ(ReadFileOrDie(dir_.File(name + "/disk1.raw")), ReadFileOrDie(disk)) << name;
    // The KMS recipient's key is not the escrow key, nor the reverse.
    EXPECT_STATUS(UnsealPackageWithEscrowKey(Env::Default(), dir_.File(name + ".ova"), TestKey().private_pem,
                                             dir_.File(name + "-wrong")),
                  StatusCode::kFailedPrecondition, "no_escrow_key");
    EXPECT_FALSE(fs::exists(dir_.File(name + "-wrong")));
  }
  // An escrow CipherValue altered (the manifest recomputed, the .cert kept):
  // the signature no longer verifies, so the package does not open.
  std::string altered = Rewrite(dir_.File("rsa.ova"), "altered.ova", [](std::vector<RawMember>* m) {
    std::string& d = (*m)[0].data;
    const std::string before = crypto::HexEncode(crypto::Sha256(d));
    const size_t at = d.find(std::string(kEscrowKeyId));
    const size_t cv = d.find("<xenc:CipherValue>", at);
    ASSERT_NE(cv, std::string::npos);
    char& c = d[cv + std::string("<xenc:CipherValue>").size() + 3];
    c = c == 'A' ? 'B' : 'A';
    // The manifest digests the altered descriptor; the .cert stays.
    for (RawMember& mf : *m) {
      if (mf.name.ends_with(".mf")) ReplaceAll(&mf.data, before, crypto::HexEncode(crypto::Sha256(d)));
    }
  }, /*fix_manifest=*/false);
  EXPECT_STATUS(Package::Open(Env::Default(), altered, PackageOpenOptions()).status(),
                StatusCode::kUnauthenticated, "bad_signature");
  EXPECT_STATUS(UnsealPackageWithEscrowKey(Env::Default(), altered, OtherTestKey().private_pem,
                                           dir_.File("altered")),
                StatusCode::kUnauthenticated, "bad_signature");
  EXPECT_FALSE(fs::exists(dir_.File("altered")));
  // A re-wrap to a newer key version keeps the escrow copy valid (its label
  // is the streams' identity).
  auto rsa = Package::Open(Env::Default(), dir_.File("rsa.ova"), PackageOpenOptions());
  ASSERT_OK(rsa);
  auto data_key = (*rsa)->UnwrapDataKey(TestKey().private_pem);
  ASSERT_OK(data_key);
  auto kms_v2 = crypto::PrivateKey::Generate(crypto::KeyType::kRsa3072);
  ASSERT_OK(kms_v2);
  EncryptionTag tag = (*rsa)->tag();
  tag.key_id = "sha256:" + kms_v2->Public().KeyId();
  tag.key_version = 2;
  tag.stream_key_version = 1;
  std::vector<uint8_t> label = OaepLabel(tag);
  auto wrapped = crypto::WrapKey(kms_v2->Public(), *data_key, crypto::AsStringView(label));
  ASSERT_OK(wrapped);
  ASSERT_OK(RewrapPackage(Env::Default(), **rsa, tag, *wrapped, *signer, signer_cert->ToPem(),
                          dir_.File("rsa-v2.ova")));
  ASSERT_OK(UnsealPackageWithEscrowKey(Env::Default(), dir_.File("rsa-v2.ova"), OtherTestKey().private_pem,
                                       dir_.File("rsa-v2")));
  EXPECT_EQ(ReadFileOrDie(dir_.File("rsa-v2/disk1.raw")), ReadFileOrDie(disk));
}

// The fixture's disk is VirtualBox's descriptor with a stand-in disk (the
// VMDK magic and random bytes, not a VMDK qemu-img can read): these tests
// are about descriptors, names, manifests and archives, so they seal disks
// as they are (convert_disks = false). Conversion: DiskConversionTest.
class ImportTest : public PackageTest {
 protected:
  SealOptions Options(std::vector<std::string> inputs, bool compat = true) {
    SealOptions o = PackageTest::Options(std::move(inputs), compat);
    o.convert_disks = false;
    return o;
  }
  std::string Seal(std::vector<std::string> inputs, const std::string& name = "sealed.ova") {
    SealOptions o = Options(std::move(inputs));
    o.ova = name.ends_with(".ova");
    std::string out = dir_.File(name);
    EXPECT_OK(SealPackage(Env::Default(), o, out));
    EXPECT_TRUE(DescriptorValidates(out));
    return out;
  }
  void SetUp() override {
    src_ = dir_.File("vbox");
    fs::create_directories(src_);
    std::string testdata = vmseal::testing::SourceDir() + "/tests/testdata/ovf/";
    fs::copy_file(testdata + "vbox-1.0.ovf", src_ + "/vbox.ovf");
    fs::copy_file(testdata + "vbox-disk001.vmdk", src_ + "/vbox-disk001.vmdk");
  }
  std::string src_;
};

TEST_F(ImportTest, VirtualBoxOvf1DirectoryIsUpgradedAndRoundTrips) {
  std::string ova = Seal({src_ + "/vbox.ovf"});
  EXPECT_TRUE(DescriptorValidates(ova));
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  const std::string& text = (*p)->descriptor_text();
  EXPECT_EQ(text.find(std::string(kOvf1Namespace)), std::string::npos);
  EXPECT_NE(text.find("Debian_64"), std::string::npos);  // the rest is kept
  // vbox:Machine may not stay directly in the VirtualSystem in OVF 2; it is
  // kept inside the VirtualHardwareSection, non-required (§2.2).
  const size_t hw = text.find("<VirtualHardwareSection");
  const size_t hw_end = text.find("</VirtualHardwareSection>");
  const size_t machine = text.find("<vbox:Machine");
  ASSERT_NE(machine, std::string::npos) << text;
  EXPECT_GT(machine, hw);
  EXPECT_LT(machine, hw_end);
  EXPECT_EQ(text.find("<vbox:Machine", machine + 1), std::string::npos);
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/vbox-disk001.vmdk"), ReadFileOrDie(src_ + "/vbox-disk001.vmdk"));
  EXPECT_TRUE(ValidatesAgainstSchema(out + "/sealed.ovf"));
}

TEST_F(ImportTest, PlainOvaIsSealedFromArchiveMembers) {
  std::string plain_ova = dir_.File("plain-in.ova");
  WriteFileOrDie(plain_ova, RawTar({{"vbox.ovf", ReadFileOrDie(src_ + "/vbox.ovf")},
                                    {"vbox-disk001.vmdk", ReadFileOrDie(src_ + "/vbox-disk001.vmdk")}}));
  std::string ova = Seal({plain_ova});
  EXPECT_TRUE(DescriptorValidates(ova));
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/vbox-disk001.vmdk"), ReadFileOrDie(src_ + "/vbox-disk001.vmdk"));
}

// A VirtualBox 7 export as it comes: names with spaces ("Debian 12.ovf",
// "Debian 12-disk001.vmdk"), the manifest in VirtualBox's spelling
// `SHA1 (name) = hex` with CRLF, packed by GNU tar in the pax format that
// tar --format=posix and Python's tarfile write. It seals, the sealed
// descriptor validates, and the disk comes back byte for byte.
TEST_F(ImportTest, VirtualBoxExportWithSpacedNamesAndItsManifestRoundTrips) {
  const std::string vbox = dir_.File("vbox7");
  fs::create_directories(vbox);
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, "vbox-disk001.vmdk", "Debian 12-disk001.vmdk");
  WriteFileOrDie(vbox + "/Debian 12.ovf", text);
  fs::copy_file(src_ + "/vbox-disk001.vmdk", vbox + "/Debian 12-disk001.vmdk");
  auto sha1 = [](const std::string& data) {
    StreamingDigest d(DigestAlgorithm::kSha1);
    d.Update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()));
    return crypto::HexEncode(d.Finish());
  };
  WriteFileOrDie(vbox + "/Debian 12.mf",
                 "SHA1 (Debian 12.ovf) = " + sha1(text) + "\r\n" +
                     "SHA1 (Debian 12-disk001.vmdk) = " +
                     sha1(ReadFileOrDie(vbox + "/Debian 12-disk001.vmdk")) + "\r\n");
  const std::string plain_ova = dir_.File("Debian 12.ova");
  std::string out;
  ASSERT_EQ(vmseal::testing::RunCommand({"tar", "-C", vbox, "--format=posix", "-cf", plain_ova,
                                         "Debian 12.ovf", "Debian 12-disk001.vmdk",
                                         "Debian 12.mf"},
                                        &out),
            0)
      << out;
  // The input's manifest is checked: the export opens with it verified.
  PackageOpenOptions po;
  po.require_encrypted = false;
  ASSERT_OK(Package::Open(Env::Default(), plain_ova, po).status());
  int n = 0;
  for (const std::string& input : {plain_ova, vbox + "/Debian 12.ovf"}) {
    SCOPED_TRACE(input);
    const std::string stem = "sealed" + std::to_string(++n);
    const std::string ova = Seal({input}, stem + ".ova");
    std::string plain = dir_.File("plain-" + stem);
    ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, plain));
    EXPECT_EQ(ReadFileOrDie(plain + "/Debian 12-disk001.vmdk"),
              ReadFileOrDie(vbox + "/Debian 12-disk001.vmdk"));
    EXPECT_TRUE(ValidatesAgainstSchema(plain + "/" + stem + ".ovf"));
  }
  // A wrong digest in that spelling is still caught.
  WriteFileOrDie(vbox + "/Debian 12.mf",
                 "SHA1 (Debian 12.ovf) = " + sha1(text) + "\r\n" +
                     "SHA1 (Debian 12-disk001.vmdk) = " + std::string(40, '0') + "\r\n");
  EXPECT_STATUS(Package::Open(Env::Default(), vbox + "/Debian 12.ovf", po).status(),
                StatusCode::kDataLoss, "manifest mismatch for Debian 12-disk001.vmdk");
}

TEST_F(ImportTest, RequiredForeignExtensionIsRefused) {
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, "<vbox:Machine ovf:required=\"false\"", "<vbox:Machine");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  SealOptions o = Options({src_ + "/vbox.ovf"});
  EXPECT_STATUS(SealPackage(Env::Default(), o, dir_.File("x.ova")), StatusCode::kUnimplemented,
                "required extension element vbox:Machine cannot be carried into OVF 2");
  EXPECT_FALSE(fs::exists(dir_.File("x.ova")));
}

// DSP0243 §5.2 lets a package store a file gzip-compressed
// (ovf:compression="gzip": the href names the compressed bytes, ovf:size is
// their size) and/or split into chunks (ovf:chunkSize: href.000000000,
// href.000000001, ...). Seal reads them back into the plain file and seals
// that; the sealed descriptor has neither attribute (§2.3).
class StoredFileCodingTest : public ImportTest {
 protected:
  // Rewrites the fixture's File element with `attributes` added and its
  // ovf:size set to `size`.
  void SetFileAttributes(const std::string& attributes, uint64_t size) {
    std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
    ASSERT_EQ(text.find("ovf:size="), std::string::npos);
    ReplaceAll(&text, "ovf:href=\"vbox-disk001.vmdk\"",
               "ovf:href=\"vbox-disk001.vmdk\" " + attributes + " ovf:size=\"" +
                   std::to_string(size) + "\"");
    WriteFileOrDie(src_ + "/vbox.ovf", text);
  }
  std::string Gzip(const std::string& data) {
    const std::string in = dir_.File("gz-in"), out = in + ".gz";
    WriteFileOrDie(in, data);
    std::string log;
    EXPECT_EQ(RunCommand({"gzip", "-n", "-f", in}, &log), 0) << log;
    std::string z = ReadFileOrDie(out);
    fs::remove(out);
    return z;
  }
  // Splits `data` into src_/vbox-disk001.vmdk.00000000N of `chunk` bytes.
  void WriteChunks(const std::string& data, size_t chunk) {
    fs::remove(src_ + "/vbox-disk001.vmdk");
    for (size_t i = 0, off = 0; off < data.size(); ++i, off += chunk) {
      char suffix[16];
      std::snprintf(suffix, sizeof(suffix), ".%09zu", i);
      WriteFileOrDie(src_ + "/vbox-disk001.vmdk" + suffix, data.substr(off, chunk));
    }
  }
  // Seals the fixture, checks the sealed descriptor, unseals, and returns
  // the disk that comes back.
  std::string SealAndUnseal() {
    std::string ova = Seal({src_ + "/vbox.ovf"});
    auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
    EXPECT_OK(p);
    if (!p.ok()) return "";
    const std::string& text = (*p)->descriptor_text();
    EXPECT_EQ(text.find("ovf:compression="), std::string::npos) << text;
    EXPECT_EQ(text.find("ovf:chunkSize="), std::string::npos) << text;
    std::string out = dir_.File("plain");
    EXPECT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
    return ReadFileOrDie(out + "/vbox-disk001.vmdk");
  }
  // No output and no staging directory is left beside `out` after a refusal.
  void ExpectSealFails(StatusCode code, const std::string& substr) {
    auto before = ListDir(dir_.path());
    EXPECT_STATUS(SealPackage(Env::Default(), Options({src_ + "/vbox.ovf"}), dir_.File("x.ova")),
                  code, substr);
    EXPECT_EQ(ListDir(dir_.path()), before);
  }
};

TEST_F(StoredFileCodingTest, GzipCompressedFileIsSealedAsItsPlainBytes) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  const std::string z = Gzip(disk);
  ASSERT_NE(z, disk);
  WriteFileOrDie(src_ + "/vbox-disk001.vmdk", z);
  SetFileAttributes("ovf:compression=\"gzip\"", z.size());
  EXPECT_EQ(SealAndUnseal(), disk);
}

TEST_F(StoredFileCodingTest, GzipOfSeveralMembersIsReadWhole) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  const std::string z = Gzip(disk.substr(0, 1000)) + Gzip(disk.substr(1000));
  WriteFileOrDie(src_ + "/vbox-disk001.vmdk", z);
  SetFileAttributes("ovf:compression=\"gzip\"", z.size());
  EXPECT_EQ(SealAndUnseal(), disk);
}

TEST_F(StoredFileCodingTest, ChunkedFileIsReassembled) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  WriteChunks(disk, 20000);  // 3 full chunks and one of 5536 bytes
  SetFileAttributes("ovf:chunkSize=\"20000\"", disk.size());
  EXPECT_EQ(SealAndUnseal(), disk);
}

TEST_F(StoredFileCodingTest, ChunkedGzipIsReassembledThenDecompressed) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  const std::string z = Gzip(disk);
  WriteChunks(z, 7000);
  SetFileAttributes("ovf:compression=\"gzip\" ovf:chunkSize=\"7000\"", z.size());
  EXPECT_EQ(SealAndUnseal(), disk);
}

TEST_F(StoredFileCodingTest, ChunkedFileInAnOvaWithItsManifestIsReassembled) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  WriteChunks(disk, 30000);
  SetFileAttributes("ovf:chunkSize=\"30000\"", disk.size());
  std::vector<RawMember> members = {{"vbox.ovf", ReadFileOrDie(src_ + "/vbox.ovf")}};
  for (const char* n : {".000000000", ".000000001", ".000000002"}) {
    members.push_back({std::string("vbox-disk001.vmdk") + n,
                       ReadFileOrDie(src_ + "/vbox-disk001.vmdk" + n)});
  }
  std::vector<ManifestEntry> entries;
  for (const RawMember& m : members) {
    crypto::Sha256Digest d = crypto::Sha256(m.data);
    entries.push_back({DigestAlgorithm::kSha256, m.name, {d.begin(), d.end()}});
  }
  members.push_back({"vbox.mf", FormatManifest(entries)});
  const std::string plain_ova = dir_.File("chunked.ova");
  WriteFileOrDie(plain_ova, RawTar(members));
  std::string ova = Seal({plain_ova}, "sealed-chunked.ova");
  std::string out = dir_.File("plain-chunked");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/vbox-disk001.vmdk"), disk);
  // A chunk changed after the manifest was made is caught by name.
  members[2].data[5] ^= 1;
  WriteFileOrDie(plain_ova, RawTar(members));
  EXPECT_STATUS(SealPackage(Env::Default(), Options({plain_ova}), dir_.File("y.ova")),
                StatusCode::kDataLoss, "manifest mismatch for vbox-disk001.vmdk.000000001");
}

TEST_F(StoredFileCodingTest, ShortChunkBeforeTheLastIsRefused) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  WriteChunks(disk, 30000);
  WriteFileOrDie(src_ + "/vbox-disk001.vmdk.000000000", disk.substr(0, 29999));
  SetFileAttributes("ovf:chunkSize=\"30000\"", disk.size() - 1);
  ExpectSealFails(StatusCode::kInvalidArgument,
                  "chunk vbox-disk001.vmdk.000000000 has 29999 bytes; ovf:chunkSize is 30000");
}

TEST_F(StoredFileCodingTest, MissingMiddleChunkIsRefused) {
  const std::string disk = ReadFileOrDie(src_ + "/vbox-disk001.vmdk");
  WriteChunks(disk, 20000);
  fs::remove(src_ + "/vbox-disk001.vmdk.000000001");
  SetFileAttributes("ovf:chunkSize=\"20000\"", disk.size());
  // The package is the directory: the chunks after the gap are extra files.
  auto before = ListDir(dir_.path());
  EXPECT_STATUS(SealPackage(Env::Default(), Options({src_}), dir_.File("x.ova")),
                StatusCode::kInvalidArgument, "extra file in package: vbox-disk001.vmdk.00000000");
  // Named by its descriptor, the file is short of its ovf:size.
  ExpectSealFails(StatusCode::kInvalidArgument,
                  "size of vbox-disk001.vmdk is 20000 bytes; its ovf:size says 65536");
}

TEST_F(StoredFileCodingTest, NoChunkAtAllIsRefused) {
  SetFileAttributes("ovf:chunkSize=\"20000\"", 65536);
  ExpectSealFails(StatusCode::kInvalidArgument,
                  "missing file: vbox-disk001.vmdk.000000000 (the first chunk of vbox-disk001.vmdk)");
}

TEST_F(StoredFileCodingTest, ZeroChunkSizeIsRefused) {
  SetFileAttributes("ovf:chunkSize=\"0\"", 65536);
  ExpectSealFails(StatusCode::kInvalidArgument, "invalid ovf:chunkSize");
}

TEST_F(StoredFileCodingTest, CorruptGzipIsDataLossAndLeavesNothing) {
  const std::string z = Gzip(ReadFileOrDie(src_ + "/vbox-disk001.vmdk"));
  std::string bad = z;
  bad[bad.size() / 2] ^= 0x55;
  WriteFileOrDie(src_ + "/vbox-disk001.vmdk", bad);
  SetFileAttributes("ovf:compression=\"gzip\"", bad.size());
  ExpectSealFails(StatusCode::kDataLoss, "file vbox-disk001.vmdk: gzip:");
}

TEST_F(StoredFileCodingTest, TruncatedGzipIsDataLoss) {
  const std::string z = Gzip(ReadFileOrDie(src_ + "/vbox-disk001.vmdk"));
  WriteFileOrDie(src_ + "/vbox-disk001.vmdk", z.substr(0, z.size() - 20));
  SetFileAttributes("ovf:compression=\"gzip\"", z.size() - 20);
  ExpectSealFails(StatusCode::kDataLoss, "gzip: the data ends in the middle of a member");
}

TEST_F(StoredFileCodingTest, GzipFollowedByGarbageIsDataLoss) {
  const std::string z = Gzip(ReadFileOrDie(src_ + "/vbox-disk001.vmdk")) + "trailing bytes";
  WriteFileOrDie(src_ + "/vbox-disk001.vmdk", z);
  SetFileAttributes("ovf:compression=\"gzip\"", z.size());
  ExpectSealFails(StatusCode::kDataLoss, "gzip: corrupt data");
}

TEST_F(StoredFileCodingTest, DeclaredGzipThatIsNotGzipIsDataLoss) {
  SetFileAttributes("ovf:compression=\"gzip\"", 65536);
  ExpectSealFails(StatusCode::kDataLoss, "gzip: corrupt data");
}

TEST_F(StoredFileCodingTest, OtherCompressionIsRefusedByName) {
  SetFileAttributes("ovf:compression=\"bzip2\"", 65536);
  ExpectSealFails(StatusCode::kUnimplemented,
                  "file vbox-disk001.vmdk: ovf:compression=\"bzip2\" is not supported (gzip is)");
}

// A Vagrant box folder: the descriptor sits beside a Vagrantfile, a
// metadata.json and a subfolder. The folder is not a package; the .ovf
// named on its own is, with exactly the files it references (§2.3).
TEST_F(ImportTest, ExplicitDescriptorIgnoresTheOtherFilesOfItsFolder) {
  WriteFileOrDie(src_ + "/Vagrantfile", "Vagrant.configure(\"2\") do |config| end\n");
  WriteFileOrDie(src_ + "/metadata.json", "{\"provider\":\"virtualbox\"}\n");
  fs::create_directories(src_ + "/include");
  fs::create_symlink("/etc/hostname", src_ + "/link");
  auto before = ListDir(dir_.path());
  EXPECT_STATUS(SealPackage(Env::Default(), Options({src_}), dir_.File("x.ova")),
                StatusCode::kInvalidArgument, "package directory " + src_);
  EXPECT_EQ(ListDir(dir_.path()), before);
  std::string ova = Seal({src_ + "/vbox.ovf"});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  ASSERT_EQ((*p)->files().size(), 1u);
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/vbox-disk001.vmdk"), ReadFileOrDie(src_ + "/vbox-disk001.vmdk"));
  EXPECT_FALSE(fs::exists(out + "/Vagrantfile"));
}

// Exporters may put disks in a subfolder (href="disks/a.vmdk"). Seal reads
// them, confined to the package, and the sealed package is flat (§2.3).
TEST_F(ImportTest, HrefIntoASubfolderIsSealedUnderAFlatName) {
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, "ovf:href=\"vbox-disk001.vmdk\"", "ovf:href=\"disks/vbox-disk001.vmdk\"");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  fs::create_directories(src_ + "/disks");
  fs::rename(src_ + "/vbox-disk001.vmdk", src_ + "/disks/vbox-disk001.vmdk");
  const std::string disk = ReadFileOrDie(src_ + "/disks/vbox-disk001.vmdk");
  int n = 0;
  // As a folder, as the .ovf, and as an OVA with a folder member.
  const std::string plain_ova = dir_.File("sub.ova");
  WriteFileOrDie(plain_ova, RawTar({{"vbox.ovf", text},
                                    {"disks/", "", '5'},
                                    {"disks/vbox-disk001.vmdk", disk}}));
  for (const std::string& input : {src_, src_ + "/vbox.ovf", plain_ova}) {
    SCOPED_TRACE(input);
    const std::string stem = "flat" + std::to_string(++n);
    const std::string ova = Seal({input}, stem + ".ova");
    auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
    ASSERT_OK(p);
    EXPECT_EQ((*p)->files()[0].href, "disks-vbox-disk001.vmdk.vmseal");
    const std::string out = dir_.File("plain-" + stem);
    ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
    EXPECT_EQ(ReadFileOrDie(out + "/disks-vbox-disk001.vmdk"), disk);
  }
}

TEST_F(ImportTest, FlatNameThatIsTakenGetsANumber) {
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, "<File ovf:id=\"file1\" ovf:href=\"vbox-disk001.vmdk\"/>",
             "<File ovf:id=\"file1\" ovf:href=\"a/b.vmdk\"/><File ovf:id=\"file2\" "
             "ovf:href=\"a-b.vmdk\"/>");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  fs::create_directories(src_ + "/a");
  WriteFileOrDie(src_ + "/a/b.vmdk", "in the folder");
  WriteFileOrDie(src_ + "/a-b.vmdk", "beside it");
  const std::string ova = Seal({src_ + "/vbox.ovf"});
  const std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/a-b-2.vmdk"), "in the folder");
  EXPECT_EQ(ReadFileOrDie(out + "/a-b.vmdk"), "beside it");
}

TEST_F(ImportTest, HrefsThatLeaveThePackageAreRefused) {
  const std::string original = ReadFileOrDie(src_ + "/vbox.ovf");
  for (const std::string& href : {std::string("../vbox-disk001.vmdk"),
                                  std::string("disks/../../x.vmdk"), std::string("/etc/passwd"),
                                  std::string("a//b.vmdk"), std::string("a/b/c/d/e/f/g/h/i.vmdk"),
                                  std::string("disks/")}) {
    SCOPED_TRACE(href);
    std::string text = original;
    ReplaceAll(&text, "ovf:href=\"vbox-disk001.vmdk\"", "ovf:href=\"" + href + "\"");
    WriteFileOrDie(src_ + "/vbox.ovf", text);
    auto before = ListDir(dir_.path());
    EXPECT_STATUS(SealPackage(Env::Default(), Options({src_ + "/vbox.ovf"}), dir_.File("x.ova")),
                  StatusCode::kInvalidArgument, "File href");
    EXPECT_EQ(ListDir(dir_.path()), before);
  }
}

TEST_F(ImportTest, SubfolderThatIsALinkIsRefused) {
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, "ovf:href=\"vbox-disk001.vmdk\"", "ovf:href=\"disks/vbox-disk001.vmdk\"");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  const std::string elsewhere = dir_.File("elsewhere");
  fs::create_directories(elsewhere);
  fs::rename(src_ + "/vbox-disk001.vmdk", elsewhere + "/vbox-disk001.vmdk");
  fs::create_directory_symlink(elsewhere, src_ + "/disks");
  EXPECT_STATUS(SealPackage(Env::Default(), Options({src_ + "/vbox.ovf"}), dir_.File("x.ova")),
                StatusCode::kInvalidArgument, "disks/vbox-disk001.vmdk");
  EXPECT_FALSE(fs::exists(dir_.File("x.ova")));
  EXPECT_STATUS(SealPackage(Env::Default(), Options({src_}), dir_.File("x.ova")),
                StatusCode::kInvalidArgument, "non-regular file: disks");
}

// What the host and unseal read stays flat: a sealed package whose file
// sits in a folder is refused.
TEST_F(PackageTest, SealedPackageWithAFolderIsRefused) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string moved = Rewrite(ova, "moved.ova", [](std::vector<RawMember>* m) {
    for (RawMember& r : *m) {
      if (r.name == "disk1.raw.vmseal") r.name = "d/disk1.raw.vmseal";
    }
    ReplaceAll(&(*m)[0].data, "\"disk1.raw.vmseal\"", "\"d/disk1.raw.vmseal\"");
  }, /*fix_manifest=*/true);
  EXPECT_STATUS(Package::Open(Env::Default(), moved, PackageOpenOptions()).status(),
                StatusCode::kInvalidArgument, "OVA member");
  ExpectUnsealFails(moved, StatusCode::kInvalidArgument, "OVA member");
}

// An OVF 2.0 input may carry vbox:Machine directly in its VirtualSystem
// (VirtualBox 7 does); the sealed descriptor must still validate (issue 18).
TEST_F(ImportTest, Ovf2InputWithAVendorElementIsMadeValidAndSaysSo) {
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, std::string(kOvf1Namespace), std::string(kOvf2Namespace));
  ReplaceAll(&text, "ovf:version=\"1.0\"", "ovf:version=\"2.0\"");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  std::vector<std::string> notes;
  SealOptions o = Options({src_ + "/vbox.ovf"});
  o.notes = &notes;
  const std::string ova = dir_.File("v2.ova");
  ASSERT_OK(SealPackage(Env::Default(), o, ova));
  EXPECT_TRUE(DescriptorValidates(ova));
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0], "kept vbox:Machine inside the VirtualHardwareSection as a non-required "
                      "extension");
}

// VMware writes vmw:BootOrderSection required by default; it no longer
// blocks the export, is kept (non-required) and named in a note. An
// element only the Envelope held is dropped and named.
TEST_F(ImportTest, VmwareBootOrderIsKeptAndAnEnvelopeExtensionIsDroppedWithNotes) {
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  ReplaceAll(&text, "xmlns:vbox=", "xmlns:vmw=\"http://www.vmware.com/schema/ovf\" xmlns:vbox=");
  ReplaceAll(&text, "<vbox:Machine ",
             "<vmw:BootOrderSection vmw:type=\"disk\"><Info>Boot order</Info>"
             "</vmw:BootOrderSection><vbox:Machine ");
  ReplaceAll(&text, "<References>",
             "<vbox:Note ovf:required=\"false\">exported by a test</vbox:Note><References>");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  std::vector<std::string> notes;
  SealOptions o = Options({src_ + "/vbox.ovf"});
  o.notes = &notes;
  const std::string ova = dir_.File("vmw.ova");
  ASSERT_OK(SealPackage(Env::Default(), o, ova));
  EXPECT_TRUE(DescriptorValidates(ova));
  EXPECT_EQ(notes, (std::vector<std::string>{
                       "dropped vbox:Note: OVF 2 has no place for it there",
                       "kept vmw:BootOrderSection inside the VirtualHardwareSection as a "
                       "non-required extension (it was required)",
                       "kept vbox:Machine inside the VirtualHardwareSection as a non-required "
                       "extension"}));
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  EXPECT_NE((*p)->descriptor_text().find("<vmw:BootOrderSection"), std::string::npos);
}

// Firmware, Secure Boot and TPM (§2.4): what each exporter writes is mapped
// into one vmseal:Platform in the sealed descriptor, which validates.
class PlatformImportTest : public ImportTest {
 protected:
  // The VirtualBox export with `hardware` inside vbox:Machine's Hardware and
  // `vmw` (VMware elements) at the end of the VirtualHardwareSection.
  void Write(const std::string& hardware, const std::string& vmw = "") {
    std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
    ReplaceAll(&text, "xmlns:vbox=", "xmlns:vmw=\"http://www.vmware.com/schema/ovf\" xmlns:vbox=");
    ReplaceAll(&text, "<Memory RAMSize=\"1024\"/>", "<Memory RAMSize=\"1024\"/>" + hardware);
    ReplaceAll(&text, "</VirtualHardwareSection>", vmw + "</VirtualHardwareSection>");
    WriteFileOrDie(src_ + "/vbox.ovf", text);
  }
  // Seals, checks the descriptor validates, and returns the sealed text.
  std::string SealedDescriptor(std::vector<std::string>* notes = nullptr) {
    SealOptions o = Options({src_ + "/vbox.ovf"});
    o.notes = notes;
    const std::string ova = dir_.File("platform.ova");
    fs::remove(ova);
    EXPECT_OK(SealPackage(Env::Default(), o, ova));
    EXPECT_TRUE(DescriptorValidates(ova));
    auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
    EXPECT_OK(p);
    return p.ok() ? (*p)->descriptor_text() : "";
  }
  Status SealStatus() {
    const std::string ova = dir_.File("refused.ova");
    Status s = SealPackage(Env::Default(), Options({src_ + "/vbox.ovf"}), ova);
    EXPECT_FALSE(fs::exists(ova));
    return s;
  }
};

TEST_F(PlatformImportTest, VirtualBoxEfiAndTpmBecomeVmsealPlatformWithANote) {
  Write(R"(<Firmware type="EFI"/><TrustedPlatformModule type="v2_0"/>)");
  std::vector<std::string> notes;
  const std::string text = SealedDescriptor(&notes);
  EXPECT_NE(text.find(R"(firmware="efi" secureBoot="false" tpm="2.0")"), std::string::npos)
      << text;
  const size_t platform = text.find("<vmseal:Platform");
  EXPECT_GT(platform, text.find("<VirtualHardwareSection"));
  EXPECT_LT(platform, text.find("</VirtualHardwareSection>"));
  EXPECT_EQ(notes.back(),
            "platform: firmware efi, Secure Boot off, TPM 2.0 (firmware from vbox:Machine "
            "Hardware/Firmware type=\"EFI\"; TPM from vbox:Machine "
            "Hardware/TrustedPlatformModule type=\"v2_0\")");
}

TEST_F(PlatformImportTest, VmwareFirmwareAndSecureBootConfigBecomeVmsealPlatform) {
  Write("", R"(<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>)"
            R"(<vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" )"
            R"(vmw:value="true"/>)");
  const std::string text = SealedDescriptor();
  EXPECT_NE(text.find(R"(firmware="efi" secureBoot="true" tpm="none")"), std::string::npos)
      << text;
  // The exporter's own elements stay, for tools that read them after unseal.
  EXPECT_NE(text.find(R"(vmw:key="firmware")"), std::string::npos);
}

TEST_F(PlatformImportTest, VmwareVtpmItemAsksForATpm) {
  // Items come first in the schema's order: the vTPM Item goes before the
  // CPU Item, as a VMware export lists it among the others.
  std::string text = ReadFileOrDie(src_ + "/vbox.ovf");
  text.insert(text.find("<Item>"),
              R"(<Item ovf:required="false"><rasd:ElementName>Virtual TPM</rasd:ElementName>)"
              R"(<rasd:InstanceID>9</rasd:InstanceID><rasd:ResourceSubType>vmware.vtpm)"
              R"(</rasd:ResourceSubType><rasd:ResourceType>1</rasd:ResourceType></Item>)");
  WriteFileOrDie(src_ + "/vbox.ovf", text);
  const std::string sealed = SealedDescriptor();
  EXPECT_NE(sealed.find(R"(firmware="bios" secureBoot="false" tpm="2.0")"), std::string::npos)
      << sealed;
}

TEST_F(PlatformImportTest, BiosExportGetsNoPlatformElement) {
  Write(R"(<Firmware type="BIOS"/>)");
  EXPECT_EQ(SealedDescriptor().find("Platform"), std::string::npos);
}

TEST_F(PlatformImportTest, ConflictingFirmwareIsRefusedNamingBothElements) {
  Write(R"(<Firmware type="EFI"/>)",
        R"(<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>)");
  EXPECT_STATUS(SealStatus(), StatusCode::kInvalidArgument,
                "descriptor asks for conflicting firmware: vmw:Config firmware=\"bios\" against "
                "vbox:Machine Hardware/Firmware type=\"EFI\"");
}

TEST_F(PlatformImportTest, SecureBootWithoutEfiIsRefused) {
  Write("", R"(<vmw:Config ovf:required="false" vmw:key="uefi.secureBoot.enabled" )"
            R"(vmw:value="true"/>)");
  EXPECT_STATUS(SealStatus(), StatusCode::kInvalidArgument,
                "vmw:Config uefi.secureBoot.enabled=\"true\" asks for Secure Boot without EFI "
                "firmware");
}

TEST_F(PlatformImportTest, WhatTheHostCannotGiveIsRefusedWithTheReason) {
  Write(R"(<Firmware type="EFI32"/>)");
  EXPECT_STATUS(SealStatus(), StatusCode::kUnimplemented,
                "vbox:Machine Hardware/Firmware type=\"EFI32\" asks for 32-bit EFI firmware");
  fs::remove(src_ + "/vbox.ovf");
  fs::copy_file(vmseal::testing::SourceDir() + "/tests/testdata/ovf/vbox-1.0.ovf",
                src_ + "/vbox.ovf");
  Write(R"(<TrustedPlatformModule type="v1_2"/>)");
  EXPECT_STATUS(SealStatus(), StatusCode::kUnimplemented, "asks for a TPM 1.2");
  fs::remove(src_ + "/vbox.ovf");
  fs::copy_file(vmseal::testing::SourceDir() + "/tests/testdata/ovf/vbox-1.0.ovf",
                src_ + "/vbox.ovf");
  Write("", R"(<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="uefi"/>)");
  EXPECT_STATUS(SealStatus(), StatusCode::kInvalidArgument,
                "vmw:Config firmware=\"uefi\" is not bios or efi");
}

// A generated descriptor (image inputs) carries the platform asked for.
TEST_F(PackageTest, GeneratedDescriptorCarriesTheRequestedPlatform) {
  SealOptions o = Options({MakeRaw("disk.img", 10)});
  o.vm.platform = {.efi = true, .secure_boot = true, .tpm = true};
  const std::string ova = dir_.File("efi.ova");
  ASSERT_OK(SealPackage(Env::Default(), o, ova));
  EXPECT_TRUE(DescriptorValidates(ova));
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  EXPECT_NE((*p)->descriptor_text().find(R"(firmware="efi" secureBoot="true" tpm="2.0")"),
            std::string::npos);
}

TEST_F(ImportTest, ExplicitDescriptorStillRefusesAReferencedLink) {
  fs::rename(src_ + "/vbox-disk001.vmdk", dir_.File("elsewhere.vmdk"));
  fs::create_symlink(dir_.File("elsewhere.vmdk"), src_ + "/vbox-disk001.vmdk");
  EXPECT_STATUS(SealPackage(Env::Default(), Options({src_ + "/vbox.ovf"}), dir_.File("x.ova")),
                StatusCode::kInvalidArgument, "not a regular file: vbox-disk001.vmdk");
}

TEST_F(PackageTest, AlreadySealedInputIsRefused) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  EXPECT_STATUS(SealPackage(Env::Default(), Options({ova}), dir_.File("again.ova")),
                StatusCode::kFailedPrecondition, "already sealed");
}

TEST_F(PackageTest, ExistingOutputIsRefused) {
  std::string disk = MakeRaw("disk.img", 10);
  WriteFileOrDie(dir_.File("taken.ova"), "x");
  EXPECT_STATUS(SealPackage(Env::Default(), Options({disk}), dir_.File("taken.ova")),
                StatusCode::kAlreadyExists, "output exists");
  EXPECT_EQ(ReadFileOrDie(dir_.File("taken.ova")), "x");
}

TEST_F(PackageTest, DiskAboveGcmSingleMessageLimitIsRefused) {
  std::string big = dir_.File("big.img");
  { std::ofstream f(big); }
  fs::resize_file(big, kMaxGcmMessageBytes + 1);  // sparse
  EXPECT_STATUS(SealPackage(Env::Default(), Options({big}), dir_.File("big.ova")),
                StatusCode::kOutOfRange, "single-message limit");
  EXPECT_FALSE(fs::exists(dir_.File("big.ova")));
}

TEST_F(PackageTest, InvalidImageIdIsRefused) {
  SealOptions o = Options({MakeRaw("disk.img", 10)});
  o.image_id = "bad id";
  EXPECT_STATUS(SealPackage(Env::Default(), o, dir_.File("x.ova")), StatusCode::kInvalidArgument,
                "image id has a character");
}

TEST_F(PackageTest, HostApiDecryptsWithUnwrappedKey) {
  std::string disk = MakeRaw("disk.img", 70000);
  std::string ova = Seal({disk});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  auto key = (*p)->UnwrapDataKey(TestKey().private_pem);
  ASSERT_OK(key);
  auto out = AtomicOutputFile::Create(Env::Default(), dir_.File("disk.out"), 0600);
  ASSERT_OK(out);
  ASSERT_OK((*p)->DecryptFile("file1", *key, (*out)->file()));
  ASSERT_OK((*out)->Commit());
  EXPECT_EQ(ReadFileOrDie(dir_.File("disk.out")), ReadFileOrDie(disk));
}

TEST_F(PackageTest, GcmPackageHasNoRandomAccessReader) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  auto key = (*p)->UnwrapDataKey(TestKey().private_pem);
  ASSERT_OK(key);
  EXPECT_STATUS((*p)->NewDiskReader("file1", *key).status(), StatusCode::kFailedPrecondition,
                "random access needs the stream format");
}

TEST_F(PackageTest, WrongPrivateKeyIsRefused) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string out = dir_.File("plain");
  EXPECT_STATUS(UnsealPackage(Env::Default(), ova, OtherTestKey().private_pem, out),
                StatusCode::kFailedPrecondition, "not the package's recipient");
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(PackageTest, InspectJsonShowsTagWithoutKey) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  auto text = InspectPackage(Env::Default(), ova, /*json=*/true);
  ASSERT_OK(text);
  EXPECT_NE(text->find("\"imageId\": \"img-0001\""), std::string::npos);
  EXPECT_NE(text->find("\"manifest\": \"verified\""), std::string::npos);
}

TEST_F(PackageTest, SealedReleasePolicyIsInTheDescriptorAndInspectShowsIt) {
  SealOptions o = Options({MakeRaw("disk.img", 10)}, true);
  o.release_policy_json = R"({"flavors":{"anyOf":["good"]},"required_tags":["tier=gold"]})";
  const std::string ova = dir_.File("policy.ova");
  ASSERT_OK(SealPackage(Env::Default(), o, ova));
  EXPECT_TRUE(DescriptorValidates(ova));
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  auto d = Descriptor::Parse((*p)->descriptor_text());
  ASSERT_OK(d);
  auto policy = d->ReadReleasePolicy();
  ASSERT_OK(policy);
  ASSERT_TRUE(policy->has_value());
  EXPECT_EQ(**policy, o.release_policy_json);
  auto json_text = InspectPackage(Env::Default(), ova, /*json=*/true);
  ASSERT_OK(json_text);
  EXPECT_NE(json_text->find("\"tier=gold\""), std::string::npos) << *json_text;
  auto text = InspectPackage(Env::Default(), ova, /*json=*/false);
  ASSERT_OK(text);
  EXPECT_NE(text->find("release policy:     {\"flavors\""), std::string::npos) << *text;
  // Without --policy: none.
  auto plain = InspectPackage(Env::Default(), Seal({MakeRaw("disk2.img", 10)}), /*json=*/false);
  ASSERT_OK(plain);
  EXPECT_NE(plain->find("release policy:     none"), std::string::npos) << *plain;
}

// --- Untrusted packages: each its own error, no output. ---

TEST_F(PackageTest, UnsealRejectsAbsolutePathMember) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->push_back({"/etc/cron.d/x", "x"}); },
                            false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "absolute path");
}

TEST_F(PackageTest, UnsealRejectsDotDotMember) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->push_back({"../x", "x"}); }, false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "'..'");
}

TEST_F(PackageTest, UnsealRejectsSymlinkMember) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova",
                            [](auto* m) { m->push_back({"l", "", '2', "/etc/shadow"}); }, false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "is a link");
}

TEST_F(PackageTest, UnsealRejectsDeviceMember) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->push_back({"sda", "", '4'}); }, false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "is a device");
}

TEST_F(PackageTest, UnsealRejectsDuplicateMember) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->push_back((*m)[1]); }, false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "duplicate OVA member");
}

TEST_F(PackageTest, UnsealRejectsOversizedDescriptor) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    DescriptorOf(m) += "<!--" + std::string(kMaxDescriptorBytes, 'x') + "-->";
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "descriptor larger than");
}

TEST_F(PackageTest, UnsealRejectsDoctypeWithExternalEntity) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    std::string& d = DescriptorOf(m);
    d.insert(d.find("<Envelope"),
             "<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\n");
    ReplaceAll(&d, "<Info>Virtual disks</Info>", "<Info>&xxe;</Info>");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "DOCTYPE");
}

TEST_F(PackageTest, UnsealRejectsManifestMismatch) {
  std::string ova = Seal({MakeRaw("disk.img", 100)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { (*m)[1].data[20] ^= 1; }, false);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "manifest mismatch for disk1.raw.vmseal");
}

TEST_F(PackageTest, UnsealRejectsMissingFile) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->erase(m->begin() + 1); }, false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "missing file: disk1.raw.vmseal");
}

TEST_F(PackageTest, UnsealRejectsExtraFile) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->push_back({"notes.txt", "hi"}); },
                            false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "extra file in package: notes.txt");
}

TEST_F(PackageTest, UnsealRejectsMissingManifest) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { m->pop_back(); }, false);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "package has no manifest");
}

TEST_F(PackageTest, UnsealRejectsUnknownAlgorithmInTag) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), std::string(kAes256GcmUri), "urn:example:rot13");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "unknown data algorithm in tag");
}

TEST_F(PackageTest, UnsealRejectsUnknownTagVersion) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), "format=\"vmseal-package\" version=\"1\"",
               "format=\"vmseal-package\" version=\"9\"");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "unsupported tag version");
}

TEST_F(PackageTest, UnsealRejectsUnencryptedPackage) {
  std::string disk = MakeRaw("disk.img", 10);
  VirtualSystemSpec vm;
  std::string text = GenerateDescriptor(vm, {{"file1", "disk1.raw", 10, 10, std::string(kRawFormatUri)}});
  crypto::Sha256Digest d1 = crypto::Sha256(text);
  crypto::Sha256Digest d2 = crypto::Sha256(ReadFileOrDie(disk));
  std::string mf = FormatManifest({{DigestAlgorithm::kSha256, "p.ovf", {d1.begin(), d1.end()}},
                                   {DigestAlgorithm::kSha256, "disk1.raw", {d2.begin(), d2.end()}}});
  std::string plain = dir_.File("plain.ova");
  WriteFileOrDie(plain, RawTar({{"p.ovf", text}, {"disk1.raw", ReadFileOrDie(disk)}, {"p.mf", mf}}));
  ExpectUnsealFails(plain, StatusCode::kFailedPrecondition, "package is not encrypted");
}

TEST_F(PackageTest, UnsealRejectsChangedIdentityViaLabelCheck) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), "imageId=\"img-0001\"", "imageId=\"img-0002\"");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "OAEP label does not match");
}

TEST_F(PackageTest, UnsealFailsDecryptionWhenIdentityAndLabelAreBothChanged) {
  std::string ova = Seal({MakeRaw("disk.img", 10)});
  EncryptionTag old_tag;
  {
    auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
    ASSERT_OK(p);
    old_tag = (*p)->tag();
  }
  EncryptionTag new_tag = old_tag;
  new_tag.image_id = "img-0002";
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    std::string& d = DescriptorOf(m);
    ReplaceAll(&d, "imageId=\"img-0001\"", "imageId=\"img-0002\"");
    ReplaceAll(&d, crypto::Base64Encode(OaepLabel(old_tag)), crypto::Base64Encode(OaepLabel(new_tag)));
  }, true);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "decryption failed");
}

TEST_F(PackageTest, UnsealFailsOnTamperedCiphertextWithoutPartialOutput) {
  std::string ova = Seal({MakeRaw("disk.img", 3000000)});
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { (*m)[1].data[2000000] ^= 0x40; }, true);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "decryption failed");
}

// --- The default stream format (needs the stream component). ---

class StreamPackageTest : public PackageTest {
 protected:
  void SetUp() override {
    if (!internal::StreamFormatAvailable()) GTEST_SKIP() << "stream component not linked yet";
  }
};

TEST_F(StreamPackageTest, DefaultFormatRoundTripsAndValidates) {
  std::string disk = MakeRaw("disk.img", 1 << 20);
  std::string ova = Seal({disk}, "sealed.ova", /*compat=*/false);
  EXPECT_TRUE(DescriptorValidates(ova));
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, TestKey().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.raw"), ReadFileOrDie(disk));
}

TEST_F(StreamPackageTest, DiskReaderReadsARangeFromTheOva) {
  std::string disk = MakeRaw("disk.img", 300000);
  std::string ova = Seal({disk}, "sealed.ova", /*compat=*/false);
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  EXPECT_EQ((*p)->tag().data_algorithm, kStreamAlgorithmUri);
  EXPECT_EQ((*p)->tag().key_wrap_algorithm, kRsaOaepUri);
  auto key = (*p)->UnwrapDataKey(TestKey().private_pem);
  ASSERT_OK(key);
  auto reader = (*p)->NewDiskReader("file1", *key);
  ASSERT_OK(reader);
  EXPECT_EQ((*reader)->plaintext_size(), 300000u);
  std::string buf(1000, '\0');
  auto n = (*reader)->ReadAt(123456, std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), 1000));
  ASSERT_OK(n);
  EXPECT_EQ(buf, ReadFileOrDie(disk).substr(123456, 1000));
}

TEST_F(StreamPackageTest, SwappedDisksFailToDecrypt) {
  std::string ova = Seal({MakeRaw("a.img", 5000), MakeRaw("b.img", 5000)}, "sealed.ova", false);
  std::string bad = Rewrite(ova, "bad.ova", [](auto* m) { std::swap((*m)[1].data, (*m)[2].data); },
                            true);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "decryption failed");
}

// --- X25519 recipients (standard profile only). ---

class X25519PackageTest : public StreamPackageTest {
 protected:
  // Seals `inputs` to the X25519 test key into dir_/name.
  std::string SealX25519(std::vector<std::string> inputs, const std::string& name = "x.ova") {
    SealOptions o = Options(std::move(inputs), /*compat=*/false);
    o.recipient_pem = X25519Key().public_pem;
    o.ova = name.ends_with(".ova");
    std::string out = dir_.File(name);
    EXPECT_OK(SealPackage(Env::Default(), o, out));
    EXPECT_TRUE(DescriptorValidates(out));
    return out;
  }
};

TEST_F(X25519PackageTest, RoundTripsThroughUnseal) {
  std::string disk = MakeRaw("disk.img", 300000);
  std::string ova = SealX25519({disk});
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), ova, X25519Key().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.raw"), ReadFileOrDie(disk));
  EXPECT_TRUE(ValidatesAgainstSchema(out + "/x.ovf"));
}

TEST_F(X25519PackageTest, TagAndEncryptedKeyNameTheX25519WrapWithoutOaepParameters) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  EXPECT_EQ((*p)->tag().key_wrap_algorithm, kX25519WrapUri);
  EXPECT_EQ((*p)->tag().data_algorithm, kStreamAlgorithmUri);
  EXPECT_EQ((*p)->wrapped_key().algorithm, kX25519WrapUri);
  EXPECT_EQ((*p)->wrapped_key().ciphertext.size(), crypto::kX25519WrappedBytes);
  // The reader recomputes the label the host sends to the KMS.
  EXPECT_EQ((*p)->wrapped_key().oaep_label, OaepLabel((*p)->tag()));
  const std::string& text = (*p)->descriptor_text();
  EXPECT_NE(text.find("<xenc:EncryptionMethod Algorithm=\"" + std::string(kX25519WrapUri) + "\"/>"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("OAEPparams"), std::string::npos);
  EXPECT_EQ(text.find("DigestMethod"), std::string::npos);
}

TEST_F(X25519PackageTest, WrapUsesTheWholePackageLabelAsAssociatedData) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  auto key = crypto::PrivateKey::FromPem(SecretBytes(crypto::AsBytes(X25519Key().private_pem)));
  ASSERT_OK(key);
  const std::vector<uint8_t> label = OaepLabel((*p)->tag());
  auto data_key = crypto::X25519Unwrap(*key, (*p)->wrapped_key().ciphertext,
                                       crypto::AsStringView(label));
  ASSERT_OK(data_key);
  auto via_package = (*p)->UnwrapDataKey(X25519Key().private_pem);
  ASSERT_OK(via_package);
  EXPECT_TRUE(data_key->Equals(*via_package));
  // The label holds zero bytes: the associated data is not cut at the first.
  const size_t zero = std::find(label.begin(), label.end(), 0) - label.begin();
  ASSERT_LT(zero, label.size());
  EXPECT_STATUS(crypto::X25519Unwrap(*key, (*p)->wrapped_key().ciphertext,
                                     crypto::AsStringView(std::span(label).first(zero))),
                StatusCode::kDataLoss, "decryption failed");
}

TEST_F(X25519PackageTest, CertificateRecipientIsAccepted) {
  auto ca = crypto::CreateSelfSignedCa({"test CA"});
  ASSERT_OK(ca);
  auto pub = crypto::PublicKey::FromPem(X25519Key().public_pem);
  ASSERT_OK(pub);
  crypto::IssueOptions io;
  io.common_name = "customer-key";
  auto cert = crypto::IssueCertificate(*ca, *pub, io);
  ASSERT_OK(cert);
  std::string disk = MakeRaw("disk.img", 5000);
  SealOptions o = Options({disk}, /*compat=*/false);
  o.recipient_pem = cert->ToPem();
  ASSERT_OK(SealPackage(Env::Default(), o, dir_.File("c.ova")));
  auto p = Package::Open(Env::Default(), dir_.File("c.ova"), PackageOpenOptions());
  ASSERT_OK(p);
  EXPECT_EQ((*p)->tag().key_wrap_algorithm, kX25519WrapUri);
  EXPECT_EQ((*p)->tag().key_id, "sha256:" + pub->KeyId());
  std::string out = dir_.File("plain");
  ASSERT_OK(UnsealPackage(Env::Default(), dir_.File("c.ova"), X25519Key().private_pem, out));
  EXPECT_EQ(ReadFileOrDie(out + "/disk1.raw"), ReadFileOrDie(disk));
}

TEST_F(X25519PackageTest, OtherX25519KeyIsRefused) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  ExpectUnsealFails(ova, StatusCode::kFailedPrecondition, "not the package's recipient",
                    NewX25519Key().private_pem);
}

TEST_F(X25519PackageTest, RsaKeyIsRefused) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  ExpectUnsealFails(ova, StatusCode::kFailedPrecondition, "not the package's recipient");
}

TEST_F(X25519PackageTest, ChangedIdentityFailsDecryption) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), "imageId=\"img-0001\"", "imageId=\"img-0002\"");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "decryption failed", X25519Key().private_pem);
}

TEST_F(X25519PackageTest, ChangedKeyVersionFailsDecryption) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), "keyVersion=\"1\"", "keyVersion=\"2\"");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "decryption failed", X25519Key().private_pem);
}

TEST_F(X25519PackageTest, TamperedWrappedKeyFailsDecryption) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    std::string& d = DescriptorOf(m);
    const std::string b64 = CipherValueOf(d);
    auto wrapped = crypto::Base64Decode(b64);
    ASSERT_OK(wrapped);
    ASSERT_EQ(wrapped->size(), crypto::kX25519WrappedBytes);
    (*wrapped)[60] ^= 0x01;  // inside the encrypted data key
    ReplaceAll(&d, b64, crypto::Base64Encode(*wrapped));
  }, true);
  ExpectUnsealFails(bad, StatusCode::kDataLoss, "decryption failed", X25519Key().private_pem);
}

TEST_F(X25519PackageTest, WrappedKeyOfAnotherLengthIsRejectedBeforeUse) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    std::string& d = DescriptorOf(m);
    const std::string b64 = CipherValueOf(d);
    auto wrapped = crypto::Base64Decode(b64);
    ASSERT_OK(wrapped);
    wrapped->push_back(0);
    ReplaceAll(&d, b64, crypto::Base64Encode(*wrapped));
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "x25519 wrapped key must be 93 bytes",
                    X25519Key().private_pem);
}

TEST_F(X25519PackageTest, OaepParametersOnTheX25519WrapAreRejected) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m),
               "<xenc:EncryptionMethod Algorithm=\"" + std::string(kX25519WrapUri) + "\"/>",
               "<xenc:EncryptionMethod Algorithm=\"" + std::string(kX25519WrapUri) +
                   "\"><xenc:OAEPparams>AA==</xenc:OAEPparams></xenc:EncryptionMethod>");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "takes no EncryptionMethod parameters",
                    X25519Key().private_pem);
}

TEST_F(X25519PackageTest, UnknownKeyWrapAlgorithmIsRejected) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), std::string(kX25519WrapUri),
               "https://vmseal.dev/ns/wrap/x448-hkdf-sha512-aes256gcm-v1");
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "unknown key wrap algorithm in tag",
                    X25519Key().private_pem);
}

TEST_F(X25519PackageTest, RsaTagOnAnX25519PackageIsRejected) {
  std::string ova = SealX25519({MakeRaw("disk.img", 10)});
  std::string bad = Rewrite(ova, "bad.ova", [&](auto* m) {
    ReplaceAll(&DescriptorOf(m), std::string(kX25519WrapUri), std::string(kRsaOaepUri));
  }, true);
  ExpectUnsealFails(bad, StatusCode::kInvalidArgument, "rsa-oaep key wrap must use SHA-256",
                    X25519Key().private_pem);
}

TEST_F(X25519PackageTest, XmlencCompatRefusesAnX25519Recipient) {
  SealOptions o = Options({MakeRaw("disk.img", 10)}, /*compat=*/true);
  o.recipient_pem = X25519Key().public_pem;
  EXPECT_STATUS(SealPackage(Env::Default(), o, dir_.File("x.ova")), StatusCode::kInvalidArgument,
                "--xmlenc-compat needs an RSA recipient key");
  EXPECT_FALSE(fs::exists(dir_.File("x.ova")));
}

TEST_F(X25519PackageTest, DiskReaderReadsARangeWithTheUnwrappedKey) {
  std::string disk = MakeRaw("disk.img", 200000);
  std::string ova = SealX25519({disk});
  auto p = Package::Open(Env::Default(), ova, PackageOpenOptions());
  ASSERT_OK(p);
  auto key = (*p)->UnwrapDataKey(X25519Key().private_pem);
  ASSERT_OK(key);
  auto reader = (*p)->NewDiskReader("file1", *key);
  ASSERT_OK(reader);
  std::string buf(500, '\0');
  auto n = (*reader)->ReadAt(150000,
                             std::span<uint8_t>(reinterpret_cast<uint8_t*>(buf.data()), 500));
  ASSERT_OK(n);
  EXPECT_EQ(buf, ReadFileOrDie(disk).substr(150000, 500));
}

TEST_F(PackageTest, FailedSealLeavesNoOutput) {
  std::string disk = MakeRaw("disk.img", 10);
  EXPECT_STATUS(SealPackage(Env::Default(), Options({disk, dir_.File("absent.img")}),
                            dir_.File("x.ova")),
                StatusCode::kNotFound, "absent.img");
  EXPECT_FALSE(fs::exists(dir_.File("x.ova")));
  EXPECT_EQ(ListDir(dir_.path()).size(), 1u);
}

TEST_F(PackageTest, DirectoryPackageWithSymlinkIsRejected) {
  std::string pkg = Seal({MakeRaw("disk.img", 10)}, "pkgdir");
  fs::create_symlink("/etc/passwd", pkg + "/passwd");
  ExpectUnsealFails(pkg, StatusCode::kInvalidArgument, "non-regular file: passwd");
}

TEST_F(PackageTest, SealedDirectoryFileTamperingIsCaughtByManifest) {
  std::string pkg = Seal({MakeRaw("disk.img", 100)}, "pkgdir");
  std::string d = ReadFileOrDie(pkg + "/disk1.raw.vmseal");
  d[50] ^= 1;
  WriteFileOrDie(pkg + "/disk1.raw.vmseal", d);
  ExpectUnsealFails(pkg, StatusCode::kDataLoss, "manifest mismatch for disk1.raw.vmseal");
}

}  // namespace
}  // namespace vmseal::ovf
