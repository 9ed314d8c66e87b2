// The host agent's job pipeline against real parts: a swtpm per test, the
// real TPM security engine, real sealed OVF packages and qemu. The KMS side
// is an in-process double built from the real verification code (attest)
// and the real key wrapping (crypto), so every key crosses the same
// boundaries as in production: customer key -> KMS -> TPM binding key.
#include "host/host_agent.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include "crypto/keys.h"
#include "host/testing/in_process_kms.h"
#include "nbd_export/nbd_file.h"
#include "ovf/package.h"
#include "ovf/package_format.h"
#include "testing/test_util.h"
#include "tpm/testing/swtpm_harness.h"

namespace vmseal::host {
namespace {

using ::vmseal::host::testing::InProcessKms;
using ::vmseal::testing::ListDir;
using ::vmseal::testing::TempDir;

const std::vector<uint32_t> kPcrs = {0, 7};

// Serves packages from a map of image id -> local package path.
class MapPackageSource final : public PackageSource {
 public:
  Status Fetch(const Job& job, const std::string& dest_path) override {
    auto it = packages.find(job.image_id);
    if (it == packages.end()) return NotFoundError("no package for image " + job.image_id);
    ASSIGN_OR_RETURN(std::string data, ReadFileToString(Env::Default(), it->second));
    return WriteStringToFileAtomic(Env::Default(), dest_path, data, 0600);
  }
  std::map<std::string, std::string> packages;
};

class HostAgentTest : public ::testing::Test {
 protected:
  // What is left in the disk dir besides the overlay pool (vd/pool, the
  // host's, not a job's), which may only hold the pool's own overlays.
  // Pids of live nbdkit processes whose command line names a path under
  // `dir`.
  static std::vector<pid_t> NbdkitsUnder(const std::string& dir) {
    std::vector<pid_t> out;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string name = entry.path().filename().string();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream in(entry.path() / "cmdline", std::ios::binary);
      const std::string cmd((std::istreambuf_iterator<char>(in)),
                            std::istreambuf_iterator<char>());
      if (cmd.starts_with("nbdkit") && cmd.find(dir) != std::string::npos) {
        out.push_back(static_cast<pid_t>(std::stol(name)));
      }
    }
    return out;
  }
  std::vector<std::string> VmDiskDirs() { return vmseal::testing::ListJobDiskDirs(dir_.File("vd")); }

  void SetUp() override {
    auto tpm_or = tpm::testing::Swtpm::Start({.parent_dir = dir_.path()});
    ASSERT_OK(tpm_or);
    swtpm_ = std::move(tpm_or).value();
    auto engine = tpm::SecurityEngine::Create(
        {.tcti = swtpm_->tcti(), .state_dir = dir_.File("tpm-state")});
    ASSERT_OK(engine);
    engine_ = std::move(engine).value();
    auto vms = vm::VmManager::Create(
        {.state_dir = dir_.File("vms"), .accel = vm::Accel::kTcg});
    ASSERT_OK(vms);
    vms_ = std::move(vms).value();

    auto customer = crypto::PrivateKey::Generate(CustomerKeyType());
    ASSERT_OK(customer);
    customer_pub_pem_ = customer->Public().ToPem();
    kms_ = std::make_unique<InProcessKms>(swtpm_->ca_bundle_pem(), std::move(customer).value(),
                                          kPcrs);

    HostAgentOptions options;
    options.work_dir = dir_.File("work");
    options.disk_dir = dir_.File("vd");
    options.nbd_plugin_path = VMSEAL_NBD_PLUGIN_PATH;
    options.pcr_selection = kPcrs;
    options.on_update = [this](const JobUpdate& u) {
      phases_.push_back(JobPhaseName(u.phase));
      if (u.phase == JobPhase::kFailed) failure_ = u.reason;
    };
    auto agent = HostAgent::Create(options, engine_.get(), vms_.get(), kms_.get(), &source_);
    ASSERT_OK(agent);
    agent_ = std::move(agent).value();
  }

  // The type of the customer key packages are sealed to.
  virtual crypto::KeyType CustomerKeyType() const { return crypto::KeyType::kRsa3072; }

  // Seals a 1 MiB "disk" of random bytes into an OVA for `image_id`.
  std::string SealImage(const std::string& image_id, bool encrypted = true) {
    std::string disk = dir_.File(image_id + ".raw");
    crypto::Bytes content = crypto::RandomBytes(1 << 20);
    vmseal::testing::WriteFileOrDie(disk, std::string(content.begin(), content.end()));
    disk_sha_[image_id] = crypto::HexEncode(crypto::Sha256(content));
    std::string out = dir_.File(image_id + ".ova");
    ovf::SealOptions seal;
    seal.inputs = {disk};
    seal.recipient_pem = customer_pub_pem_;
    seal.image_id = image_id;
    seal.tenant = "tenant-a";
    seal.vm.cpus = 1;
    seal.vm.memory_mib = 64;
    if (encrypted) {
      EXPECT_OK(ovf::SealPackage(Env::Default(), seal, out));
    } else {
      return disk;  // not a package at all; see the plain-image test
    }
    source_.packages[image_id] = out;
    return out;
  }

  // The whole disk as qemu reads it: through the VM's export.
  static std::string ReadThroughExport(const vm::VmInfo& vm) {
    EXPECT_EQ(vm.disks.size(), 1u);
    EXPECT_EQ(vm.disks[0].source, vm::DiskSource::kNbd);
    auto file = nbd_export::OpenNbdFile(vm.disks[0].path);
    EXPECT_OK(file);
    if (!file.ok()) return "";
    auto size = (*file)->Size();
    EXPECT_OK(size);
    std::string out(size.ok() ? *size : 0, '\0');
    auto n = (*file)->Read(0, {reinterpret_cast<uint8_t*>(out.data()), out.size()});
    EXPECT_OK(n);
    return out;
  }

  // PCR 7 as this TPM reports it now, as an allowed flavor value.
  void TrustCurrentState() {
    auto pcrs = engine_->ReadPcrs({7});
    ASSERT_OK(pcrs);
    kms_->allowed_pcr7.insert(crypto::HexEncode((*pcrs)[0]));
  }

  TempDir dir_;
  std::unique_ptr<tpm::testing::Swtpm> swtpm_;
  std::unique_ptr<tpm::SecurityEngine> engine_;
  std::unique_ptr<vm::VmManager> vms_;
  std::unique_ptr<InProcessKms> kms_;
  MapPackageSource source_;
  std::unique_ptr<HostAgent> agent_;
  std::string customer_pub_pem_;
  std::map<std::string, std::string> disk_sha_;
  std::vector<std::string> phases_;
  std::string failure_;
};

TEST_F(HostAgentTest, TrustedHostDecryptsAndLaunchesTheImage) {
  ASSERT_OK(agent_->Enroll());
  TrustCurrentState();
  SealImage("img-1");
  auto vm = agent_->RunJob({.job_id = "job-1", .image_id = "img-1", .tenant = "tenant-a"});
  ASSERT_OK(vm);
  EXPECT_EQ(vm->cpus, 1u);
  EXPECT_EQ(vm->memory_mib, 64u);
  EXPECT_EQ(phases_, (std::vector<std::string>{"fetching", "attesting", "decrypting",
                                               "launching", "running"}));
  // qemu reads the customer's plaintext through the export; no decrypted
  // disk file exists, guest writes go to an encrypted overlay (0600).
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(ReadThroughExport(*vm))), disk_sha_["img-1"]);
  EXPECT_TRUE(ListDir(dir_.File("vms") + "/disks").empty());
  struct stat st;
  ASSERT_EQ(::stat(vm->disks[0].overlay_path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  // No sealed package or key file lingers in the work dir.
  EXPECT_TRUE(ListDir(dir_.File("work")).empty());
  ASSERT_OK(agent_->DeleteVm(vm->name));
  EXPECT_FALSE(Env::Default()->FileExists(vm->disks[0].overlay_path));
  EXPECT_FALSE(Env::Default()->FileExists(vm->disks[0].path));  // export stopped
  EXPECT_TRUE(VmDiskDirs().empty());
}

// Packages sealed to an X25519 customer key: the KMS opens the X25519 wrap
// and the TPM the re-wrapped key, as for RSA.
class HostAgentX25519Test : public HostAgentTest {
 protected:
  crypto::KeyType CustomerKeyType() const override { return crypto::KeyType::kX25519; }
};

TEST_F(HostAgentX25519Test, TrustedHostDecryptsAnImageSealedToAnX25519Key) {
  ASSERT_OK(agent_->Enroll());
  TrustCurrentState();
  std::string pkg = SealImage("img-x");
  {
    auto p = ovf::Package::Open(Env::Default(), pkg, ovf::PackageOpenOptions());
    ASSERT_OK(p);
    ASSERT_EQ((*p)->tag().key_wrap_algorithm, ovf::kX25519WrapUri);
  }
  auto vm = agent_->RunJob({.job_id = "job-x", .image_id = "img-x", .tenant = "tenant-a"});
  ASSERT_OK(vm);
  EXPECT_EQ(kms_->release_calls, 1);
  EXPECT_EQ(phases_, (std::vector<std::string>{"fetching", "attesting", "decrypting",
                                               "launching", "running"}));
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(ReadThroughExport(*vm))), disk_sha_["img-x"]);
  ASSERT_OK(agent_->DeleteVm(vm->name));
}

TEST_F(HostAgentTest, TamperedHostGetsNoKeyAndLeavesNothing) {
  ASSERT_OK(agent_->Enroll());
  TrustCurrentState();
  // Measure something unexpected into PCR 7 after the flavor was taken.
  crypto::Sha256Digest evil = crypto::Sha256("unsigned bootloader");
  ASSERT_OK(engine_->PcrExtend(7, evil));
  SealImage("img-2");
  auto vm = agent_->RunJob({.job_id = "job-2", .image_id = "img-2", .tenant = "tenant-a"});
  EXPECT_STATUS(vm, StatusCode::kPermissionDenied, "pcr_policy");
  EXPECT_EQ(phases_.back(), "failed");
  EXPECT_NE(failure_.find("pcr_policy"), std::string::npos);
  auto listed = vms_->List();
  ASSERT_OK(listed);
  EXPECT_TRUE(listed->empty());
  EXPECT_TRUE(ListDir(dir_.File("vms") + "/disks").empty());
  EXPECT_TRUE(ListDir(dir_.File("work")).empty());
  // The disk's export had started (it opens the package while the host
  // attests) and was waiting for a key that never came: it ended with the
  // job, and its state dir went.
  bool spawned = false;
  for (const auto& [step, ms] : agent_->LastLaunchProfile()) spawned |= step == "exports_spawn";
  EXPECT_TRUE(spawned) << "the export did not start before the key release";
  EXPECT_TRUE(NbdkitsUnder(dir_.path()).empty());
  EXPECT_TRUE(VmDiskDirs().empty());
}

TEST_F(HostAgentTest, UnenrolledHostIsRefused) {
  TrustCurrentState();
  SealImage("img-3");
  auto vm = agent_->RunJob({.job_id = "job-3", .image_id = "img-3", .tenant = "tenant-a"});
  EXPECT_STATUS(vm, StatusCode::kPermissionDenied, "not_enrolled");
}

TEST_F(HostAgentTest, PackageTamperedInTransitIsRefusedBeforeAttestation) {
  ASSERT_OK(agent_->Enroll());
  TrustCurrentState();
  std::string pkg = SealImage("img-4");
  // Flip one byte near the end of the OVA (inside the sealed disk).
  std::string data = vmseal::testing::ReadFileOrDie(pkg);
  data[data.size() - 2048] ^= 0x01;
  vmseal::testing::WriteFileOrDie(pkg, data);
  auto vm = agent_->RunJob({.job_id = "job-4", .image_id = "img-4", .tenant = "tenant-a"});
  EXPECT_FALSE(vm.ok());
  EXPECT_EQ(kms_->release_calls, 0);
  EXPECT_TRUE(ListDir(dir_.File("vms") + "/disks").empty());
}

TEST_F(HostAgentTest, JobForAnotherImageIsRefused) {
  ASSERT_OK(agent_->Enroll());
  TrustCurrentState();
  SealImage("img-5");
  source_.packages["img-6"] = source_.packages["img-5"];
  auto vm = agent_->RunJob({.job_id = "job-6", .image_id = "img-6", .tenant = "tenant-a",
                            .expected_tag_image_id = "img-6"});
  EXPECT_STATUS(vm, StatusCode::kFailedPrecondition, "image_mismatch");
  EXPECT_EQ(kms_->release_calls, 0);
}

TEST_F(HostAgentTest, TpmRestartBetweenAttestationsStillDecrypts) {
  ASSERT_OK(agent_->Enroll());
  ASSERT_OK(swtpm_->Restart());  // PCRs reset; keys reload from their blobs
  TrustCurrentState();
  SealImage("img-7");
  auto vm = agent_->RunJob({.job_id = "job-7", .image_id = "img-7", .tenant = "tenant-a"});
  ASSERT_OK(vm);
  ASSERT_OK(agent_->DeleteVm(vm->name));
}

TEST_F(HostAgentTest, MissingPackageFailsWithFetchReason) {
  ASSERT_OK(agent_->Enroll());
  auto vm = agent_->RunJob({.job_id = "job-8", .image_id = "nope", .tenant = "tenant-a"});
  EXPECT_STATUS(vm, StatusCode::kNotFound, "fetch");
  EXPECT_EQ(phases_, (std::vector<std::string>{"fetching", "failed"}));
}

// A qcow2 whose backing file names a host file (a stand-in for the host's
// private key): the agent decrypts it, the inspector refuses it before
// qemu, and the decrypted disk is removed.
TEST_F(HostAgentTest, QcowBackingFileNamingAHostFileIsRefusedBeforeQemu) {
  ASSERT_OK(agent_->Enroll());
  TrustCurrentState();
  const std::string secret = dir_.File("host-secret.pem");
  vmseal::testing::WriteFileOrDie(secret, "-----BEGIN PRIVATE KEY-----\nhost\n");
  const std::string evil = dir_.File("evil.qcow2");
  std::string out;
  ASSERT_EQ(vmseal::testing::RunCommand({"qemu-img", "create", "-q", "-f", "qcow2", "-b", secret,
                                         "-F", "raw", evil}, &out, 60), 0) << out;
  const std::string pkg = dir_.File("evil.ova");
  ovf::SealOptions seal;
  seal.inputs = {evil};
  seal.recipient_pem = customer_pub_pem_;
  seal.image_id = "img-evil";
  seal.tenant = "tenant-a";
  seal.vm.cpus = 1;
  seal.vm.memory_mib = 64;
  ASSERT_OK(ovf::SealPackage(Env::Default(), seal, pkg));
  source_.packages["img-evil"] = pkg;

  auto vm = agent_->RunJob({.job_id = "job-evil", .image_id = "img-evil", .tenant = "tenant-a"});
  EXPECT_STATUS(vm, StatusCode::kInvalidArgument,
                "unsafe_disk_format: qcow2 names a backing file");
  EXPECT_EQ(failure_, "unsafe_disk_format: qcow2 names a backing file");
  // Refused after decryption and before launching.
  EXPECT_EQ(phases_, (std::vector<std::string>{"fetching", "attesting", "decrypting", "failed"}));
  auto listed = vms_->List();
  ASSERT_OK(listed);
  EXPECT_TRUE(listed->empty());
  EXPECT_TRUE(ListDir(dir_.File("vms") + "/disks").empty());
  EXPECT_TRUE(ListDir(dir_.File("vms") + "/run").empty());  // no qemu log: no qemu ran
  EXPECT_TRUE(ListDir(dir_.File("work")).empty());
  EXPECT_TRUE(VmDiskDirs().empty());  // exports stopped, nothing left
}

}  // namespace
}  // namespace vmseal::host
