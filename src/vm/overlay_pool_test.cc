// The overlay pool with the real qemu-img and qemu-io: overlays made in the
// background open only with their own secret, a take grows one without the
// slow path, the pool refills, and files whose secrets are gone are shredded.
#include "vm/overlay_pool.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "testing/test_util.h"
#include "vm/encrypted_disk.h"

namespace vmseal::vm {
namespace {

namespace fs = std::filesystem;
using vmseal::testing::RunCommand;
using vmseal::testing::TempDir;

// qemu-img at nice 19 on a loaded host: generous.
constexpr int64_t kFillTimeoutMs = 180000;

std::string Hex(const SecretBytes& secret) {
  SecretBytes text = DiskSecretPassphrase(secret);
  return std::string(reinterpret_cast<const char*>(text.UnsafeData()), text.size());
}

// The qcow2 inside the encrypted disk file `path`, opened with secret s0.
std::string InnerImageOpts(const std::string& path) {
  return "driver=qcow2,file.driver=luks,file.key-secret=s0,file.file.filename=" + path;
}

// qemu-io on the encrypted overlay `path` with `secret`; returns its exit
// code, output in *out. (The secret is on qemu-io's command line: test only.)
int QemuIo(const std::string& path, const SecretBytes& secret, const std::string& command,
           std::string* out) {
  return RunCommand({"qemu-io", "--object", "secret,id=s0,data=" + Hex(secret), "--image-opts",
                     InnerImageOpts(path), "-c", command},
                    out, 60);
}

// qemu-img info of the file itself (the LUKS container: no secret needed).
nlohmann::json ContainerInfo(const std::string& path) {
  std::string out;
  EXPECT_EQ(RunCommand({"qemu-img", "info", "--output=json", path}, &out, 60), 0) << out;
  return nlohmann::json::parse(out, nullptr, false);
}

// qemu-img info of the qcow2 inside it, opened with `secret`.
nlohmann::json ImageInfo(const std::string& path, const SecretBytes& secret) {
  std::string out;
  EXPECT_EQ(RunCommand({"qemu-img", "info", "--output=json", "--object",
                        "secret,id=s0,data=" + Hex(secret), "--image-opts", InnerImageOpts(path)},
                       &out, 60),
            0)
      << out;
  return nlohmann::json::parse(out, nullptr, false);
}

// The container is LUKS1, AES-256-XTS, one key slot, PBKDF2 at the fixed
// iteration count (no benchmark ran).
void ExpectContainer(const std::string& path) {
  nlohmann::json info = ContainerInfo(path);
  EXPECT_EQ(info["format"], "luks") << info.dump();
  EXPECT_EQ(info["encrypted"], true) << info.dump();
  const nlohmann::json& luks = info["format-specific"]["data"];
  EXPECT_EQ(luks["cipher-alg"], "aes-256") << info.dump();
  EXPECT_EQ(luks["cipher-mode"], "xts") << info.dump();
  EXPECT_EQ(luks["hash-alg"], "sha256") << info.dump();
  EXPECT_EQ(luks["master-key-iters"], kLuksPbkdfIterations) << info.dump();
  ASSERT_TRUE(luks["slots"].is_array()) << info.dump();
  int active = 0;
  for (const auto& slot : luks["slots"]) {
    if (slot["active"] != true) continue;
    ++active;
    EXPECT_EQ(slot["iters"], kLuksPbkdfIterations) << info.dump();
  }
  EXPECT_EQ(active, 1) << info.dump();
}

std::vector<std::string> Files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().string());
  return out;
}

TEST(OverlayPoolTest, TakeGrowsAReadyOverlayWithoutTheSlowPathAndThePoolRefills) {
  TempDir dir;
  auto pool = OverlayPool::Create({.dir = dir.File("pool"), .target = 1});
  ASSERT_OK(pool);
  ASSERT_TRUE((*pool)->WaitUntilFull(kFillTimeoutMs));
  const std::string path = dir.File("d0.qcow2");
  const uint64_t size = 12 << 20;
  const auto start = std::chrono::steady_clock::now();
  auto secret = (*pool)->Take(path, size);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_OK(secret);
  EXPECT_EQ(secret->size(), kDiskSecretBytes);
  OverlayPool::Stats stats = (*pool)->GetStats();
  EXPECT_EQ(stats.taken_from_pool, 1u);
  EXPECT_EQ(stats.made_on_slow_path, 0u);
  // Growing runs no PBKDF benchmark (that alone is > 1 s of CPU).
  EXPECT_LT(seconds, 1.0);
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  ExpectContainer(path);
  nlohmann::json info = ImageInfo(path, *secret);
  EXPECT_EQ(info["format"], "qcow2") << info.dump();
  EXPECT_EQ(info["virtual-size"], size) << info.dump();
  EXPECT_FALSE(info.contains("backing-filename")) << info.dump();
  // No qcow2 metadata in the clear: the file starts with the LUKS header
  // and the qcow2 magic is nowhere in it.
  const std::string raw = vmseal::testing::ReadFileOrDie(path);
  EXPECT_EQ(raw.rfind("LUKS\xba\xbe", 0), 0u);
  EXPECT_EQ(raw.find("QFI\xfb"), std::string::npos);

  // Its own secret opens it, up to the new end; writes land encrypted.
  std::string out;
  ASSERT_EQ(QemuIo(path, *secret, "write -P 0x5a 11M 1M", &out), 0) << out;
  ASSERT_EQ(QemuIo(path, *secret, "read -P 0x5a 11M 1M", &out), 0) << out;
  EXPECT_EQ(out.find("Pattern verification failed"), std::string::npos) << out;
  const std::string bytes = vmseal::testing::ReadFileOrDie(path);
  EXPECT_EQ(bytes.find(std::string(64, '\x5a')), std::string::npos);
  // Another secret does not.
  SecretBytes other = NewDiskSecret();
  EXPECT_NE(QemuIo(path, other, "read 0 512", &out), 0) << out;

  // The pool makes another in the background; the taken one is not in it.
  ASSERT_TRUE((*pool)->WaitUntilFull(kFillTimeoutMs));
  stats = (*pool)->GetStats();
  EXPECT_EQ(stats.made_in_background, 2u);
  EXPECT_EQ(stats.ready, 1u);
  ASSERT_EQ(Files((*pool)->dir()).size(), 1u);
  EXPECT_NE(Files((*pool)->dir())[0], path);
}

TEST(OverlayPoolTest, EveryOverlayHasItsOwnSecret) {
  TempDir dir;
  auto pool = OverlayPool::Create({.dir = dir.File("pool"), .target = 2});
  ASSERT_OK(pool);
  ASSERT_TRUE((*pool)->WaitUntilFull(kFillTimeoutMs));
  auto a = (*pool)->Take(dir.File("a.qcow2"), 1 << 20);
  auto b = (*pool)->Take(dir.File("b.qcow2"), 1 << 20);
  ASSERT_OK(a);
  ASSERT_OK(b);
  EXPECT_FALSE(a->Equals(*b));
  std::string out;
  EXPECT_EQ(QemuIo(dir.File("a.qcow2"), *a, "read 0 512", &out), 0) << out;
  EXPECT_NE(QemuIo(dir.File("a.qcow2"), *b, "read 0 512", &out), 0) << out;
  EXPECT_NE(QemuIo(dir.File("b.qcow2"), *a, "read 0 512", &out), 0) << out;
}

TEST(OverlayPoolTest, AnEmptyPoolCreatesOnTheSlowPathAndCountsIt) {
  TempDir dir;
  auto pool = OverlayPool::Create({.dir = dir.File("pool"), .target = 0});
  ASSERT_OK(pool);
  auto secret = (*pool)->Take(dir.File("d0.qcow2"), 4 << 20);
  ASSERT_OK(secret);
  EXPECT_EQ((*pool)->GetStats().made_on_slow_path, 1u);
  EXPECT_EQ((*pool)->GetStats().taken_from_pool, 0u);
  EXPECT_EQ(ImageInfo(dir.File("d0.qcow2"), *secret)["virtual-size"], 4 << 20);
  ExpectContainer(dir.File("d0.qcow2"));
  // An existing path is never overwritten.
  EXPECT_FALSE((*pool)->Take(dir.File("d0.qcow2"), 4 << 20).ok());
}

TEST(OverlayPoolTest, OverlaysWhoseSecretsAreGoneAreShreddedAtTheNextStart) {
  TempDir dir;
  const std::string pool_dir = dir.File("pool");
  std::string orphan_copy;
  {
    auto pool = OverlayPool::Create({.dir = pool_dir, .target = 1});
    ASSERT_OK(pool);
    ASSERT_TRUE((*pool)->WaitUntilFull(kFillTimeoutMs));
    // What a crashed agent leaves: a pool file nobody has the secret of.
    const auto files = Files(pool_dir);
    ASSERT_EQ(files.size(), 1u);
    orphan_copy = pool_dir + "/o-crashed.qcow2";
    fs::copy_file(files[0], orphan_copy);
    // A stray link must be removed, not followed.
    vmseal::testing::WriteFileOrDie(dir.File("victim"), "keep me");
    fs::create_symlink(dir.File("victim"), pool_dir + "/link");
  }
  // The pool's own ready overlay went with it; the orphans stay until the
  // next pool starts.
  ASSERT_EQ(Files(pool_dir).size(), 2u);
  auto next = OverlayPool::Create({.dir = pool_dir, .target = 0});
  ASSERT_OK(next);
  EXPECT_EQ((*next)->GetStats().orphans_shredded, 2u);
  EXPECT_TRUE(Files(pool_dir).empty());
  EXPECT_EQ(vmseal::testing::ReadFileOrDie(dir.File("victim")), "keep me");
}

TEST(OverlayPoolTest, StoppingThePoolCancelsARunningFillAndLeavesNothing) {
  TempDir dir;
  const std::string pool_dir = dir.File("pool");
  // A qemu-img that hangs: the fill is still running when the pool stops.
  const std::string slow = dir.File("slow-qemu-img");
  vmseal::testing::WriteFileOrDie(slow, "#!/bin/sh\nexec sleep 60\n");
  ASSERT_EQ(::chmod(slow.c_str(), 0700), 0);
  const auto start = std::chrono::steady_clock::now();
  {
    auto pool = OverlayPool::Create(
        {.dir = pool_dir, .target = 1, .qemu_img = {.binary = slow, .nice_value = 19}});
    ASSERT_OK(pool);
    // The fill has claimed its file (the LUKS header is written before
    // qemu-img runs) and waits for the hanging qemu-img.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (Files(pool_dir).empty() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_FALSE(Files(pool_dir).empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    EXPECT_EQ((*pool)->GetStats().ready, 0u);
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 12.0);
  EXPECT_TRUE(Files(pool_dir).empty());
}

TEST(OverlayPoolTest, ShredFileZeroesTheBytesBeforeUnlinking) {
  TempDir dir;
  const std::string path = dir.File("f");
  vmseal::testing::WriteFileOrDie(path, std::string(3 << 20, 'k'));
  // A second name for the same inode shows what was left on disk.
  ASSERT_EQ(::link(path.c_str(), dir.File("g").c_str()), 0);
  ASSERT_OK(ShredFile(path));
  EXPECT_FALSE(fs::exists(path));
  EXPECT_EQ(vmseal::testing::ReadFileOrDie(dir.File("g")), std::string(3 << 20, '\0'));
  EXPECT_OK(ShredFile(path));  // nothing there: OK
}

// Copy mode: a taken overlay receives the whole disk from an NBD export
// (qemu-img convert -n into it), encrypted, with no qemu-img create.
TEST(OverlayPoolTest, ATakenOverlayReceivesACopyOfAnNbdDiskEncryptedWithoutTheSlowPath) {
  TempDir dir;
  const uint64_t size = 6 << 20;
  std::string plain;
  for (uint64_t i = 0; plain.size() < size; ++i) {
    plain += "vmseal-copy-mode-plaintext-" + std::to_string(i * 2654435761u) + "|";
  }
  plain.resize(size);
  vmseal::testing::WriteFileOrDie(dir.File("disk.raw"), plain);
  const std::string sock = dir.File("nbd.sock"), pid_file = dir.File("nbdkit.pid");
  std::string out;
  ASSERT_EQ(RunCommand({"nbdkit", "--readonly", "-U", sock, "-P", pid_file, "file",
                        dir.File("disk.raw")},
                       &out, 60),
            0)
      << out;
  struct Stop {
    std::string pid_file;
    ~Stop() {
      const pid_t pid = std::atoi(vmseal::testing::ReadFileOrDie(pid_file).c_str());
      if (pid > 1) ::kill(pid, SIGTERM);
    }
  } stop{pid_file};
  for (int i = 0; i < 500 && !fs::exists(sock); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  auto pool = OverlayPool::Create({.dir = dir.File("pool"), .target = 1});
  ASSERT_OK(pool);
  ASSERT_TRUE((*pool)->WaitUntilFull(kFillTimeoutMs));
  const std::string path = dir.File("d0.qcow2");
  auto secret = (*pool)->Take(path, size);
  ASSERT_OK(secret);
  ASSERT_OK(ConvertIntoEncrypted({}, sock, DiskFormat::kRaw, path, *secret));
  EXPECT_EQ((*pool)->GetStats().made_on_slow_path, 0u);
  EXPECT_EQ((*pool)->GetStats().taken_from_pool, 1u);

  // The copy reads back as the disk, with its secret only.
  const nlohmann::json plain_node = {{"driver", "raw"},
                                     {"file", {{"driver", "file"}, {"filename", dir.File("disk.raw")}}}};
  const nlohmann::json copy_node = EncryptedImageNode(path, "s0");
  EXPECT_EQ(RunCommand({"qemu-img", "compare", "--object", "secret,id=s0,data=" + Hex(*secret),
                        "json:" + plain_node.dump(), "json:" + copy_node.dump()},
                       &out, 60),
            0)
      << out;
  EXPECT_NE(out.find("identical"), std::string::npos) << out;
  nlohmann::json info = ImageInfo(path, *secret);
  EXPECT_EQ(info["virtual-size"], size) << info.dump();
  ExpectContainer(path);
  // No plaintext in the file (the text repeats with a counter: any 64
  // bytes of it would show).
  const std::string file = vmseal::testing::ReadFileOrDie(path);
  for (uint64_t off = 0; off + 64 <= size; off += size / 16) {
    EXPECT_EQ(file.find(plain.substr(off, 64)), std::string::npos) << "plaintext at " << off;
  }
  // Another secret cannot write into it.
  const std::string other = dir.File("other.qcow2");
  ASSERT_OK(CreateEncryptedOverlay({}, other, size, NewDiskSecret()));
  Status wrong = ConvertIntoEncrypted({}, sock, DiskFormat::kRaw, other, *secret);
  EXPECT_EQ(wrong.code(), StatusCode::kInternal) << wrong.ToString();
  // Nor is a missing target created.
  Status missing = ConvertIntoEncrypted({}, sock, DiskFormat::kRaw, dir.File("none"), *secret);
  EXPECT_FALSE(missing.ok());
  EXPECT_FALSE(fs::exists(dir.File("none")));
}

}  // namespace
}  // namespace vmseal::vm
