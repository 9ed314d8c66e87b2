// The interop corpus (issue 18): one package per exporter dialect, written
// for the tests from each exporter's published format (descriptors in
// tests/testdata/ovf/corpus/, disks and manifests made here), sealed and
// unsealed through the real `vmseal` binary. Each entry must round-trip:
// sealed and unsealed descriptors validate against DSP8023 2.0.1 and every
// disk comes back byte-identical. Entries that a known gap refuses say so
// with the refusal they must give, and count as not round-tripping in the
// per-exporter share the test prints.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>

#include "crypto/primitives.h"
#include "ovf/descriptor.h"
#include "ovf/ovf_test_helpers.h"
#include "ovf/package.h"
#include "testing/test_util.h"

namespace vmseal::ovf {
namespace {

namespace fs = std::filesystem;
using ::vmseal::ovf::testing::TestKey;
using ::vmseal::ovf::testing::ValidatesAgainstSchema;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

// How an exporter writes its manifest lines.
enum class Manifest {
  kNone,
  kVboxSha1,       // "SHA1 (name) = hex"
  kVboxSha256,     // "SHA256 (name) = hex"
  kVboxSha1Crlf,   // the same with CRLF line ends (a Windows host)
  kVmwareSha1,     // "SHA1(name)= hex"
  kVmwareSha256,   // "SHA256(name)= hex"
  kVmwareSha512,   // "SHA512(name)= hex"
};

// How the package reaches `vmseal seal`.
enum class Packaging {
  kOvaUstar,
  kOvaPax,
  kOvaGnu,
  kOvaV7,
  kDirectory,
  kExplicitOvf,  // a folder with other files (a Vagrant box): the .ovf named
};

struct Entry {
  std::string exporter;
  std::string descriptor;          // file in tests/testdata/ovf/corpus
  std::string stem;                // package name
  std::vector<std::string> disks;  // hrefs, @D1@, @D2@ in the descriptor
  Manifest manifest;
  Packaging packaging;
  bool gzip = false;               // disks stored gzip-compressed
  uint64_t chunk_bytes = 0;        // disks stored in chunks of this size
  std::string refusal;             // non-empty: a known gap, refused so
  // The vmseal:Platform attributes the sealed descriptor must carry
  // (docs/format/package.md §2.4); empty: none (BIOS, no TPM).
  std::string platform;
};

const std::vector<Entry>& Corpus() {
  static const std::vector<Entry> corpus = {
      {"VirtualBox", "virtualbox-5-ovf1.0.ovf", "Debian 12", {"Debian 12-disk001.vmdk"},
       Manifest::kVboxSha1, Packaging::kOvaUstar},
      {"VirtualBox", "virtualbox-6-ovf1.0-efi.ovf", "win11",
       {"win11-disk001.vmdk", "win11-disk002.vmdk"}, Manifest::kVboxSha256, Packaging::kOvaGnu,
       false, 0, "", R"(firmware="efi" secureBoot="false" tpm="none")"},
      {"VirtualBox", "virtualbox-7-ovf2.0-efi-tpm.ovf", "Ubuntu 24.04",
       {"Ubuntu 24.04-disk001.vmdk"}, Manifest::kVboxSha256, Packaging::kOvaPax, false, 0, "",
       R"(firmware="efi" secureBoot="false" tpm="2.0")"},
      {"VirtualBox", "virtualbox-7-ovf1.0.ovf", "Fedora Ünïcode",
       {"Fedora Ünïcode-disk001.vmdk"}, Manifest::kVboxSha256, Packaging::kDirectory},
      {"VMware", "vmware-ovftool-ovf1.0.ovf", "appliance", {"appliance-disk1.vmdk"},
       Manifest::kVmwareSha256, Packaging::kOvaUstar, false, 0, "",
       R"(firmware="efi" secureBoot="true" tpm="none")"},
      {"VMware", "vmware-ovftool-chunked.ovf", "big", {"big-disk1.vmdk"}, Manifest::kVmwareSha1,
       Packaging::kDirectory, false, 65536},
      {"VMware", "vmware-vcenter-ovf1.0.ovf", "vc-vm", {"vc-vm-1.vmdk", "vc-vm-2.vmdk"},
       Manifest::kVmwareSha256, Packaging::kDirectory, false, 0, "",
       R"(firmware="efi" secureBoot="false" tpm="2.0")"},
      {"VMware", "vmware-vcloud-gzip.ovf", "vapp", {"vapp-disk1.vmdk"}, Manifest::kVmwareSha512,
       Packaging::kOvaUstar, true},
      {"VMware", "vmware-ovftool-ovf1.0.ovf", "packer-vmware", {"packer-vmware-disk1.vmdk"},
       Manifest::kVmwareSha256, Packaging::kOvaV7, false, 0, "",
       R"(firmware="efi" secureBoot="true" tpm="none")"},
      {"virt-v2v", "virt-v2v-ova-ovf2.0.ovf", "guest", {"guest-sda.vmdk"},
       Manifest::kVmwareSha256, Packaging::kOvaPax},
      // oVirt's dialect (§2.6): an export storage domain (-o rhv: generic
      // Sections by xsi:type, the volume at "image/volume" beside its .meta)
      // and the ovirt flavour (-o vdsm: named sections, a vTPM device).
      {"virt-v2v", "virt-v2v-rhv.ovf", "v2v",
       {"3c1e8a2b-4d5f-4a6b-9c7d-8e9f0a1b2c3d/5f2b8e3c-9d41-4c7a-8a0e-2c6d1b7f4e90"},
       Manifest::kNone, Packaging::kExplicitOvf, false, 0, "",
       R"(firmware="efi" secureBoot="false" tpm="none")"},
      {"virt-v2v", "virt-v2v-ovirt.ovf", "c0ffee00-1234-4abc-9def-0123456789ab",
       {"d1c2b3a4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"}, Manifest::kNone, Packaging::kDirectory, false,
       0, "", R"(firmware="efi" secureBoot="true" tpm="2.0")"},
      {"Proxmox", "proxmox-ovf1.0.ovf", "vm-100", {"vm-100-disk-0.vmdk", "vm-100-disk-1.vmdk"},
       Manifest::kVmwareSha256, Packaging::kOvaUstar},
      {"Vagrant/Packer", "vagrant-box-ovf1.0.ovf", "box", {"box-disk001.vmdk"},
       Manifest::kVboxSha1, Packaging::kExplicitOvf},
      {"Vagrant/Packer", "packer-virtualbox-ovf1.0.ovf", "packer-vm",
       {"packer-vm-disk001.vmdk"}, Manifest::kVboxSha1Crlf, Packaging::kDirectory, false, 0, "",
       R"(firmware="efi" secureBoot="false" tpm="none")"},
  };
  return corpus;
}

// The digest line of `name` (a file in `dir`) in the exporter's dialect.
std::string ManifestLine(Manifest m, const std::string& dir, const std::string& name) {
  const char* tool = "sha256sum";
  std::string alg = "SHA256";
  if (m == Manifest::kVboxSha1 || m == Manifest::kVboxSha1Crlf || m == Manifest::kVmwareSha1) {
    tool = "sha1sum";
    alg = "SHA1";
  } else if (m == Manifest::kVmwareSha512) {
    tool = "sha512sum";
    alg = "SHA512";
  }
  std::string out;
  EXPECT_EQ(RunCommand({tool, dir + "/" + name}, &out), 0) << out;
  const std::string hex = out.substr(0, out.find(' '));
  const bool vbox = m == Manifest::kVboxSha1 || m == Manifest::kVboxSha256 ||
                    m == Manifest::kVboxSha1Crlf;
  return vbox ? alg + " (" + name + ") = " + hex : alg + "(" + name + ")= " + hex;
}

void Replace(std::string* s, const std::string& from, const std::string& to) {
  for (size_t at = s->find(from); at != std::string::npos; at = s->find(from, at + to.size())) {
    s->replace(at, from.size(), to);
  }
}

class InteropCorpusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFileOrDie(dir_.File("key.pem"), TestKey().private_pem);
    WriteFileOrDie(dir_.File("pub.pem"), TestKey().public_pem);
  }

  // Builds, seals and unseals `e`; returns "" when it round-trips, else why
  // not (and fails the test unless that is the entry's known refusal).
  std::string RoundTrip(const Entry& e, size_t index) {
    const std::string work = dir_.File("e" + std::to_string(index));
    const std::string src = work + "/" + e.stem;
    fs::create_directories(src);
    std::string text = ReadFileOrDie(vmseal::testing::SourceDir() +
                                     "/tests/testdata/ovf/corpus/" + e.descriptor);
    std::vector<std::string> plain;  // each disk's bytes
    std::vector<std::string> stored;  // names as stored, for manifest and tar
    for (size_t i = 0; i < e.disks.size(); ++i) {
      // A stand-in VMDK (magic + random bytes): sealed as it is.
      crypto::Bytes r = crypto::RandomBytes(150000 + 4096 * i);
      std::string bytes = "KDMV" + std::string(r.begin(), r.end());
      plain.push_back(bytes);
      const std::string href = e.disks[i];
      Replace(&text, "@D" + std::to_string(i + 1) + "@", href);
      if (e.gzip) {
        WriteFileOrDie(work + "/raw", bytes);
        std::string out;
        EXPECT_EQ(RunCommand({"sh", "-c", "gzip -9nc '" + work + "/raw' > '" + src + "/" + href +
                                              "'"},
                             &out),
                  0)
            << out;
        Replace(&text, "@S" + std::to_string(i + 1) + "@",
                std::to_string(fs::file_size(src + "/" + href)));
        stored.push_back(href);
      } else if (e.chunk_bytes > 0) {
        for (uint64_t off = 0, n = 0; off < bytes.size(); off += e.chunk_bytes, ++n) {
          char suffix[16];
          std::snprintf(suffix, sizeof suffix, ".%09llu", static_cast<unsigned long long>(n));
          WriteFileOrDie(src + "/" + href + suffix, bytes.substr(off, e.chunk_bytes));
          stored.push_back(href + suffix);
        }
        Replace(&text, "@S" + std::to_string(i + 1) + "@", std::to_string(bytes.size()));
      } else {
        if (href.find('/') != std::string::npos) {
          // An export storage domain's "image/volume", with virt-v2v's
          // volume metadata beside it (not part of the OVF package).
          fs::create_directories(fs::path(src + "/" + href).parent_path());
          WriteFileOrDie(src + "/" + href + ".meta", "VOLTYPE=LEAF\nFORMAT=RAW\nEOF\n");
        }
        WriteFileOrDie(src + "/" + href, bytes);
        Replace(&text, "@S" + std::to_string(i + 1) + "@", std::to_string(bytes.size()));
        stored.push_back(href);
      }
    }
    const std::string ovf = e.stem + ".ovf";
    WriteFileOrDie(src + "/" + ovf, text);
    std::vector<std::string> members = {ovf};
    if (e.manifest != Manifest::kNone) {
      const std::string eol = e.manifest == Manifest::kVboxSha1Crlf ? "\r\n" : "\n";
      std::string mf = ManifestLine(e.manifest, src, ovf) + eol;
      for (const std::string& s : stored) mf += ManifestLine(e.manifest, src, s) + eol;
      WriteFileOrDie(src + "/" + e.stem + ".mf", mf);
      members.push_back(e.stem + ".mf");
    }
    members.insert(members.end(), stored.begin(), stored.end());
    std::string input = src;
    std::string log;
    switch (e.packaging) {
      case Packaging::kDirectory:
        break;
      case Packaging::kExplicitOvf:
        WriteFileOrDie(src + "/Vagrantfile", "Vagrant.configure(\"2\") { |c| }\n");
        WriteFileOrDie(src + "/metadata.json", "{\"provider\": \"virtualbox\"}\n");
        input = src + "/" + ovf;
        break;
      default: {
        const char* format = e.packaging == Packaging::kOvaPax   ? "--format=posix"
                             : e.packaging == Packaging::kOvaGnu ? "--format=gnu"
                             : e.packaging == Packaging::kOvaV7  ? "--format=v7"
                                                                 : "--format=ustar";
        input = work + "/" + e.stem + ".ova";
        std::vector<std::string> argv = {"tar", "-C", src, format, "-cf", input};
        argv.insert(argv.end(), members.begin(), members.end());
        EXPECT_EQ(RunCommand(argv, &log), 0) << log;
      }
    }
    const std::string sealed = work + "/sealed.ova";
    int rc = RunCommand({VmsealBinary(), "seal", input, "--pubkey", dir_.File("pub.pem"),
                         "--tenant", "acme", "--unsigned", "--keep-disk-format", "-o", sealed},
                        &log);
    if (!e.refusal.empty()) {
      EXPECT_NE(rc, 0) << e.descriptor << ": a known gap now seals; update the corpus";
      EXPECT_NE(log.find(e.refusal), std::string::npos) << log;
      EXPECT_FALSE(fs::exists(sealed));
      const size_t at = log.find("error: ");
      return "refused: " + (at == std::string::npos ? log : log.substr(at, log.find('\n', at) - at));
    }
    if (rc != 0) {
      ADD_FAILURE() << e.descriptor << " does not seal: " << log;
      return "seal failed: " + log;
    }
    auto package = Package::Open(Env::Default(), sealed, PackageOpenOptions());
    EXPECT_OK(package);
    if (!package.ok()) return "sealed package does not open";
    WriteFileOrDie(work + "/sealed.ovf", (*package)->descriptor_text());
    EXPECT_TRUE(ValidatesAgainstSchema(work + "/sealed.ovf")) << e.descriptor;
    const std::string& sealed_text = (*package)->descriptor_text();
    if (e.platform.empty()) {
      EXPECT_EQ(sealed_text.find("vmseal:Platform"), std::string::npos) << e.descriptor;
    } else {
      EXPECT_NE(sealed_text.find(e.platform), std::string::npos) << e.descriptor << sealed_text;
    }
    const std::string out = work + "/plain";
    rc = RunCommand({VmsealBinary(), "unseal", sealed, "--key", dir_.File("key.pem"), "-o", out},
                    &log);
    if (rc != 0) {
      ADD_FAILURE() << e.descriptor << " does not unseal: " << log;
      return "unseal failed";
    }
    std::string unsealed_ovf;
    for (const auto& f : fs::directory_iterator(out)) {
      if (f.path().extension() == ".ovf") unsealed_ovf = f.path().string();
    }
    EXPECT_TRUE(ValidatesAgainstSchema(unsealed_ovf)) << e.descriptor;
    auto d = Descriptor::Parse(ReadFileOrDie(unsealed_ovf));
    EXPECT_OK(d);
    if (!d.ok()) return "unsealed descriptor does not parse";
    const std::vector<FileRef> files = d->Files();
    EXPECT_EQ(files.size(), plain.size());
    std::string why;
    for (size_t i = 0; i < files.size() && i < plain.size(); ++i) {
      if (ReadFileOrDie(out + "/" + files[i].href) != plain[i]) {
        ADD_FAILURE() << e.descriptor << ": disk " << i << " differs after unseal";
        why = "disk differs";
      }
    }
    return why;
  }

  TempDir dir_;
};

TEST_F(InteropCorpusTest, EveryExporterDialectRoundTripsOrIsAKnownGap) {
  std::map<std::string, std::pair<int, int>> share;  // exporter -> (ok, total)
  std::vector<std::string> gaps;
  for (size_t i = 0; i < Corpus().size(); ++i) {
    const Entry& e = Corpus()[i];
    SCOPED_TRACE(e.exporter + " " + e.descriptor);
    const std::string why = RoundTrip(e, i);
    auto& [ok, total] = share[e.exporter];
    ++total;
    if (why.empty()) {
      ++ok;
    } else {
      gaps.push_back(e.exporter + " " + e.descriptor + ": " + why);
    }
  }
  int all_ok = 0, all = 0;
  std::printf("[ corpus ] share of the interop corpus that round-trips, per exporter:\n");
  for (const auto& [exporter, counts] : share) {
    std::printf("[ corpus ]   %-15s %d/%d\n", exporter.c_str(), counts.first, counts.second);
    all_ok += counts.first;
    all += counts.second;
  }
  std::printf("[ corpus ]   %-15s %d/%d\n", "all", all_ok, all);
  for (const std::string& g : gaps) std::printf("[ corpus ]   gap: %s\n", g.c_str());
  EXPECT_EQ(all, static_cast<int>(Corpus().size()));
}

// Error messages of the real binary (issue 18): each names what it is about
// (the directory scanned, the expected and actual sizes, the allowed
// file-name characters) and nothing is written.
class SealErrorMessageTest : public InteropCorpusTest {
 protected:
  // A VirtualBox export in a folder `name` (descriptor box.ovf).
  std::string Export(const std::string& name) {
    const std::string src = dir_.File(name);
    fs::create_directories(src);
    const std::string testdata = vmseal::testing::SourceDir() + "/tests/testdata/ovf/";
    fs::copy_file(testdata + "vbox-1.0.ovf", src + "/box.ovf");
    fs::copy_file(testdata + "vbox-disk001.vmdk", src + "/vbox-disk001.vmdk");
    return src;
  }
  // Runs `vmseal seal input`; returns its output, expecting failure and no
  // output package.
  std::string SealFails(const std::string& input) {
    std::string log;
    const std::string out = dir_.File("out.ova");
    EXPECT_NE(RunCommand({VmsealBinary(), "seal", input, "--pubkey", dir_.File("pub.pem"),
                          "--tenant", "acme", "--unsigned", "--keep-disk-format", "-o", out},
                         &log),
              0);
    EXPECT_FALSE(fs::exists(out));
    return log;
  }
};

TEST_F(SealErrorMessageTest, AnExtraFileNamesTheDirectoryScanned) {
  const std::string src = Export("box");
  WriteFileOrDie(src + "/notes.txt", "hi");
  const std::string log = SealFails(src);
  EXPECT_NE(log.find("extra file in package: notes.txt (in the package directory " + src +
                     "; name the .ovf to seal only the files it references)"),
            std::string::npos)
      << log;
}

TEST_F(SealErrorMessageTest, TwoDescriptorsNameTheDirectoryAndBothFiles) {
  const std::string src = Export("two");
  fs::copy_file(src + "/box.ovf", src + "/copy.ovf");
  const std::string log = SealFails(src);
  EXPECT_NE(log.find("package directory " + src + " holds more than one .ovf (box.ovf, copy.ovf; "
                     "name the .ovf to seal)"),
            std::string::npos)
      << log;
}

TEST_F(SealErrorMessageTest, ASizeMismatchGivesTheExpectedAndActualSizes) {
  const std::string src = Export("size");
  std::string text = ReadFileOrDie(src + "/box.ovf");
  Replace(&text, R"(ovf:href="vbox-disk001.vmdk")", R"(ovf:href="vbox-disk001.vmdk" ovf:size="12345")");
  WriteFileOrDie(src + "/box.ovf", text);
  const std::string log = SealFails(src + "/box.ovf");
  EXPECT_NE(log.find("size of vbox-disk001.vmdk is " +
                     std::to_string(fs::file_size(src + "/vbox-disk001.vmdk")) +
                     " bytes; its ovf:size says 12345"),
            std::string::npos)
      << log;
}

TEST_F(SealErrorMessageTest, ABadFileNameListsTheAllowedCharacters) {
  const std::string src = Export("chars");
  std::string text = ReadFileOrDie(src + "/box.ovf");
  Replace(&text, "vbox-disk001.vmdk", "disk|001.vmdk");
  WriteFileOrDie(src + "/box.ovf", text);
  fs::rename(src + "/vbox-disk001.vmdk", src + "/disk|001.vmdk");
  const std::string log = SealFails(src + "/box.ovf");
  EXPECT_NE(log.find("invalid character in file name (allowed: letters, digits, spaces and any "
                     "UTF-8 text except control characters and \\ : * ? \" < > | /): disk|001.vmdk"),
            std::string::npos)
      << log;
}

TEST_F(SealErrorMessageTest, ARequiredVendorElementIsNamedWithItsPrefix) {
  const std::string src = Export("vendor");
  std::string text = ReadFileOrDie(src + "/box.ovf");
  Replace(&text, R"(<vbox:Machine ovf:required="false")", R"(<vbox:Machine)");
  WriteFileOrDie(src + "/box.ovf", text);
  const std::string log = SealFails(src + "/box.ovf");
  EXPECT_NE(log.find("required extension element vbox:Machine cannot be carried into OVF 2"),
            std::string::npos)
      << log;
}

}  // namespace
}  // namespace vmseal::ovf
