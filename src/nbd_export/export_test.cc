// The streamed-launch export through the real parts: nbdkit running the
// plugin, qemu-img and libnbd as clients, packages sealed with
// ovf::SealPackage, and for the remote source an HTTPS server with mutual
// TLS that serves the package with Range support.
#include <httplib.h>
#include <libnbd.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <string_view>
#include <thread>
#include <unordered_set>

#include "crypto/primitives.h"
#include "kms/internal/mini_ca.h"
#include "nbd_export/ciphertext_cache.h"
#include "nbd_export/disk_server.h"
#include "nbd_export/export.h"
#include "ovf/ovf_test_helpers.h"
#include "ovf/package.h"
#include "ovf/tar.h"
#include "testing/test_util.h"

namespace vmseal::nbd_export {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

constexpr uint32_t kChunkBytes = 64 << 10;
// Not a multiple of the chunk size; a multiple of 512 for qemu.
constexpr uint64_t kImageBytes = (uint64_t{6} << 20) + 3 * 4096;

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// Every 32-byte block of `plaintext` at a multiple of 32: a file that holds
// any 64-byte window of the plaintext holds one of them.
class PlaintextScanner {
 public:
  explicit PlaintextScanner(const std::string& plaintext) : plaintext_(plaintext) {
    for (size_t i = 0; i + 32 <= plaintext_.size(); i += 32) {
      blocks_.insert(std::string_view(plaintext_).substr(i, 32));
    }
  }
  // Offsets in `data` where a 32-byte plaintext block starts (first few).
  size_t CountHits(const std::string& data) const {
    size_t hits = 0;
    for (size_t i = 0; i + 32 <= data.size(); ++i) {
      if (blocks_.count(std::string_view(data).substr(i, 32))) ++hits;
    }
    return hits;
  }

 private:
  const std::string& plaintext_;
  std::unordered_set<std::string_view> blocks_;
};

// An HTTPS server that asks for a client certificate from `client_ca` and
// serves one file at /pkg with Range support (as the portal's package route).
class RangeServer {
 public:
  // `port` 0 picks a free one.
  RangeServer(const std::string& cert, const std::string& key, const std::string& client_ca,
              std::string file, int port = 0)
      : server_(cert.c_str(), key.c_str(), client_ca.c_str()), file_(std::move(file)) {
    server_.Get("/pkg", [this](const httplib::Request&, httplib::Response& res) {
      ++requests_;
      const uint64_t size = fs::file_size(file_);
      res.set_content_provider(
          size, "application/octet-stream",
          [this](size_t offset, size_t length, httplib::DataSink& sink) {
            std::ifstream in(file_, std::ios::binary);
            in.seekg(static_cast<std::streamoff>(offset));
            std::string buf(std::min<size_t>(length, 1 << 20), '\0');
            in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
            return sink.write(buf.data(), static_cast<size_t>(in.gcount()));
          });
    });
    port_ = port == 0 ? server_.bind_to_any_port("127.0.0.1")
                      : (server_.bind_to_port("127.0.0.1", port) ? port : -1);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~RangeServer() { Stop(); }
  void Stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  int requests() const { return requests_.load(); }

 private:
  httplib::SSLServer server_;
  const std::string file_;
  int port_ = 0;
  std::atomic<int> requests_{0};
  std::thread thread_;
};

// One libnbd connection.
class NbdClient {
 public:
  explicit NbdClient(const std::string& socket) : h_(nbd_create()) {
    if (h_ == nullptr || nbd_connect_unix(h_, socket.c_str()) != 0) {
      ADD_FAILURE() << "nbd connect: " << nbd_get_error();
    }
  }
  ~NbdClient() {
    if (h_ != nullptr) nbd_close(h_);
  }
  int64_t Size() { return nbd_get_size(h_); }
  nbd_handle* handle() { return h_; }
  // 0 or the errno of the failed read.
  int Pread(std::string* out, size_t n, uint64_t offset) {
    out->assign(n, '\0');
    if (nbd_pread(h_, out->data(), n, offset, 0) == 0) return 0;
    return nbd_get_errno() != 0 ? nbd_get_errno() : -1;
  }

 private:
  nbd_handle* h_;
};

class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    plaintext_ = RandomBytes(kImageBytes, 1234);
    WriteFileOrDie(dir_.File("disk.raw"), plaintext_);
    ovf::SealOptions so;
    so.inputs = {dir_.File("disk.raw")};
    so.recipient_pem = ovf::testing::TestKey().public_pem;
    so.image_id = "img-nbd-1";
    so.tenant = "tenant-a";
    so.chunk_size_bytes = kChunkBytes;
    so.created = "2026-01-01T00:00:00Z";
    ASSERT_OK(ovf::SealPackage(Env::Default(), so, Ova()));
    auto p = ovf::Package::Open(Env::Default(), Ova(), ovf::PackageOpenOptions());
    ASSERT_OK(p);
    auto key = (*p)->UnwrapDataKey(ovf::testing::TestKey().private_pem);
    ASSERT_OK(key);
    key_ = std::move(key).value();
    disk_id_ = (*p)->files()[0].id;
    href_ = (*p)->files()[0].href;
  }

  std::string Ova() const { return dir_.File("pkg.ova"); }
  // Short: the socket path must fit a sockaddr_un.
  std::string State(const std::string& name) const { return dir_.File(name); }

  ExportOptions Local(const std::string& state) const {
    ExportOptions o;
    o.plugin_path = VMSEAL_NBD_PLUGIN_PATH;
    o.state_dir = State(state);
    o.package_path = Ova();
    o.start_timeout_ms = 20000;
    return o;
  }

  // Certificates for the HTTPS server (127.0.0.1) and a host client.
  void MakeCerts() {
    auto ca = kms::internal::CreateRootCa("nbd-test-ca", 30);
    ASSERT_OK(ca);
    auto server = kms::internal::IssueLeaf(
        *ca, {.common_name = "portal", .organizational_unit = "portal",
              .ip_addresses = {"127.0.0.1"}, .server = true});
    ASSERT_OK(server);
    auto client = kms::internal::IssueLeaf(
        *ca, {.common_name = "host-1", .organizational_unit = "host"});
    ASSERT_OK(client);
    auto key_text = [](const SecretBytes& b) {
      return std::string(reinterpret_cast<const char*>(b.UnsafeData()), b.size());
    };
    WriteFileOrDie(dir_.File("ca.pem"), ca->cert_pem);
    WriteFileOrDie(dir_.File("server.pem"), server->cert_pem);
    WriteFileOrDie(dir_.File("server.key"), key_text(server->key_pem));
    WriteFileOrDie(dir_.File("client.pem"), client->cert_pem);
    WriteFileOrDie(dir_.File("client.key"), key_text(client->key_pem));
  }

  ExportOptions Remote(const std::string& state, int port) const {
    ExportOptions o = Local(state);
    o.package_path.clear();
    o.remote.url = "https://127.0.0.1:" + std::to_string(port) + "/pkg";
    o.remote.ca_file = dir_.File("ca.pem");
    o.remote.cert_file = dir_.File("client.pem");
    o.remote.key_file = dir_.File("client.key");
    o.readahead_bytes = 1 << 20;
    return o;
  }

  // The whole disk through qemu-img, compared byte for byte.
  void ExpectWholeDiskEqualsPlaintext(const Export& e, const std::string& out_name) {
    const std::string out = dir_.File(out_name);
    std::string log;
    ASSERT_EQ(RunCommand({"qemu-img", "convert", "-f", "raw", "-O", "raw", e.Uri(), out}, &log,
                         120),
              0)
        << log;
    EXPECT_TRUE(ReadFileOrDie(out) == plaintext_) << "qemu-img read differs from the plaintext";
    if (::testing::Test::HasFailure()) {
      for (const auto& entry : fs::directory_iterator(dir_.path())) {
        if (fs::exists(entry.path() / "nbdkit.log")) {
          std::cerr << entry.path() << "/nbdkit.log:\n"
                    << ReadFileOrDie((entry.path() / "nbdkit.log").string());
        }
      }
    }
    fs::remove(out);
  }

  void WaitForPrefetch(const Export& e) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (Clock::now() < deadline) {
      auto p = e.Progress();
      ASSERT_OK(p);
      if (p->complete) {
        EXPECT_GT(p->total_bytes, kImageBytes);
        EXPECT_EQ(p->cached_bytes, p->total_bytes);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    FAIL() << "prefetch did not complete";
  }

  static int PortOf(const ExportOptions& o) {
    return std::stoi(o.remote.url.substr(o.remote.url.rfind(':') + 1));
  }

  // Offset of the sealed disk's first byte in the OVA.
  uint64_t MemberOffset() {
    auto f = Env::Default()->NewRandomAccessFile(Ova());
    EXPECT_OK(f);
    auto tar = ovf::TarReader::Open(f->get());
    EXPECT_OK(tar);
    return (*tar)->Find(href_)->data_offset;
  }

  TempDir dir_;
  std::string plaintext_;
  SecretBytes key_;
  std::string disk_id_, href_;
};

TEST_F(ExportTest, LocalPackageServesThePlaintextToQemuImg) {
  auto e = Export::Start(Local("l"), key_);
  ASSERT_OK(e);
  EXPECT_EQ((*e)->QemuBlockdev()["server"]["path"], (*e)->socket_path());
  std::string info;
  ASSERT_EQ(RunCommand({"qemu-img", "info", "--output=json", (*e)->Uri()}, &info), 0) << info;
  EXPECT_NE(info.find("\"virtual-size\": " + std::to_string(kImageBytes)), std::string::npos)
      << info;
  ExpectWholeDiskEqualsPlaintext(**e, "out.raw");
}

TEST_F(ExportTest, RandomReadsEqualThePlaintext) {
  auto e = Export::Start(Local("l"), key_);
  ASSERT_OK(e);
  NbdClient c((*e)->socket_path());
  ASSERT_EQ(c.Size(), static_cast<int64_t>(kImageBytes));
  std::mt19937_64 rng(7);
  std::string got;
  for (int i = 0; i < 300; ++i) {
    const uint64_t off = rng() % kImageBytes;
    const size_t n = 1 + rng() % std::min<uint64_t>(3 * kChunkBytes, kImageBytes - off);
    SCOPED_TRACE("offset " + std::to_string(off) + " length " + std::to_string(n));
    ASSERT_EQ(c.Pread(&got, n, off), 0);
    ASSERT_TRUE(got == std::string_view(plaintext_).substr(off, n));
  }
  // The last byte and the final partial chunk.
  ASSERT_EQ(c.Pread(&got, 1, kImageBytes - 1), 0);
  EXPECT_EQ(got[0], plaintext_.back());
}

// What descriptor 3 of `pid` is ("socket:[N]", ...) once `pid` runs nbdkit
// with keyfd=3 (after its exec); empty on timeout.
std::string KeyFdOf(pid_t pid) {
  const std::string proc = "/proc/" + std::to_string(pid);
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < deadline) {
    std::ifstream in(proc + "/cmdline", std::ios::binary);
    const std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (cmd.find("keyfd=3") != std::string::npos) {
      std::error_code ec;
      return fs::read_symlink(proc + "/fd/3", ec).string();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return "";
}

TEST_F(ExportTest, TheKeyIsNotInNbdkitsArgvOrEnvironmentAndItsFdIsClosed) {
  auto e = Export::Spawn(Local("l"));
  ASSERT_OK(e);
  // The key channel as nbdkit inherited it (descriptor 3), before the key.
  const std::string key_channel = KeyFdOf((*e)->pid());
  ASSERT_TRUE(key_channel.starts_with("socket:")) << key_channel;
  ASSERT_OK((*e)->Unlock(key_));
  const std::string proc = "/proc/" + std::to_string((*e)->pid());
  auto read_proc = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  const std::string cmdline = read_proc(proc + "/cmdline");
  const std::string environ = read_proc(proc + "/environ");
  ASSERT_NE(cmdline.find("keyfd=3"), std::string::npos) << "not the nbdkit we started";
  const std::string raw(reinterpret_cast<const char*>(key_.UnsafeData()), key_.size());
  const std::string hex = crypto::HexEncode(key_.UnsafeSpan());
  std::string upper = hex;
  for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  for (const std::string* text : {&cmdline, &environ}) {
    EXPECT_EQ(text->find(raw), std::string::npos);
    EXPECT_EQ(text->find(hex), std::string::npos);
    EXPECT_EQ(text->find(upper), std::string::npos);
  }
  // The plugin closed the key channel after reading it: no descriptor of
  // nbdkit is it any more (3 may be reused for something else).
  std::error_code ec;
  for (const auto& fd : fs::directory_iterator(proc + "/fd", ec)) {
    std::error_code lec;
    EXPECT_NE(fs::read_symlink(fd.path(), lec).string(), key_channel) << fd.path();
  }
  EXPECT_FALSE(ec) << ec.message();
}

// Streamed launch starts the export before the key is released: the plugin
// opens the remote package (its metadata and the blocks the key check
// reads) and waits; nothing listens, nothing is served, until the key
// arrives. The key channel is then closed in nbdkit.
TEST_F(ExportTest, AnExportSpawnedBeforeItsKeyOpensThePackageButServesNothingUntilTheKey) {
  MakeCerts();
  RangeServer server(dir_.File("server.pem"), dir_.File("server.key"), dir_.File("ca.pem"),
                     Ova());
  ExportOptions o = Remote("r", server.port());
  o.prefetch = false;
  auto e = Export::Spawn(o);
  ASSERT_OK(e);
  EXPECT_TRUE((*e)->awaiting_key());
  const std::string key_channel = KeyFdOf((*e)->pid());
  ASSERT_TRUE(key_channel.starts_with("socket:")) << key_channel;
  // The package is opened without the key: progress.json is written at the
  // end of that open.
  const std::string progress = State("r") + "/progress.json";
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (!fs::exists(progress) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(fs::exists(progress)) << "the package was not opened before the key";
  EXPECT_GT(server.requests(), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE((*e)->Running());
  EXPECT_FALSE(fs::exists((*e)->socket_path())) << "listening before the key";
  EXPECT_FALSE(fs::exists(State("r") + "/nbdkit.pid"));
  // A second Unlock or one after the key is refused; the first works.
  ASSERT_OK((*e)->Unlock(key_));
  EXPECT_FALSE((*e)->awaiting_key());
  EXPECT_STATUS((*e)->Unlock(key_), StatusCode::kFailedPrecondition, "not waiting for a key");
  std::error_code ec;
  EXPECT_NE(fs::read_symlink("/proc/" + std::to_string((*e)->pid()) + "/fd/3", ec).string(),
            key_channel);
  NbdClient c((*e)->socket_path());
  std::string got;
  ASSERT_EQ(c.Pread(&got, 10000, 5 * kChunkBytes + 3), 0);
  EXPECT_TRUE(got == std::string_view(plaintext_).substr(5 * kChunkBytes + 3, 10000));
  ExpectWholeDiskEqualsPlaintext(**e, "out.raw");
}

// A job that fails before its key is released: the spawned export is
// dropped, its nbdkit reads end of file for the key and ends; nothing of it
// is left running or listening.
TEST_F(ExportTest, AnExportDroppedBeforeItsKeyEndsAndLeavesNothingRunning) {
  for (const bool explicit_stop : {true, false}) {
    SCOPED_TRACE(explicit_stop ? "Stop()" : "destroyed");
    auto e = Export::Spawn(Local("l"));
    ASSERT_OK(e);
    const pid_t pid = (*e)->pid();
    ASSERT_TRUE(KeyFdOf(pid).starts_with("socket:"));
    const auto start = Clock::now();
    if (explicit_stop) {
      ASSERT_OK((*e)->Stop());
      EXPECT_FALSE((*e)->Running());
      EXPECT_FALSE((*e)->awaiting_key());
      EXPECT_STATUS((*e)->Unlock(key_), StatusCode::kFailedPrecondition, "not waiting");
    }
    e->reset();
    // Well under Terminate's 5 s SIGTERM grace: nothing had to be killed.
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(4));
    EXPECT_NE(::kill(pid, 0), 0) << "nbdkit " << pid << " still exists";
    EXPECT_FALSE(fs::exists(State("l") + "/nbd.sock"));
    EXPECT_FALSE(fs::exists(State("l") + "/nbdkit.pid"));
  }
  // A key of the wrong size is never sent: the export is stopped.
  auto e = Export::Spawn(Local("l"));
  ASSERT_OK(e);
  const pid_t pid = (*e)->pid();
  EXPECT_STATUS((*e)->Unlock(SecretBytes::Random(31)), StatusCode::kInvalidArgument, "key size");
  EXPECT_NE(::kill(pid, 0), 0);
  // A wrong key arriving late fails as it does at once.
  auto w = Export::Spawn(Local("l"));
  ASSERT_OK(w);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_STATUS((*w)->Unlock(SecretBytes::Random(32)), StatusCode::kDataLoss,
                "decryption failed");
  EXPECT_FALSE((*w)->Running());
  EXPECT_FALSE(fs::exists(State("l") + "/nbd.sock"));
}

// The plugin itself, started by hand: the key must come by descriptor, and
// be exactly 32 bytes followed by end of file.
TEST_F(ExportTest, ThePluginRefusesAMissingOrMisSizedKey) {
  const std::string plugin = VMSEAL_NBD_PLUGIN_PATH;
  auto run = [&](const std::string& key_bytes, bool pass_fd) {
    WriteFileOrDie(dir_.File("k.bin"), key_bytes);
    std::string out;
    const std::string cmd = "nbdkit --readonly -U - " + plugin + " package=" + Ova() +
                            (pass_fd ? " keyfd=3 3<" + dir_.File("k.bin") : "") +
                            " --run 'qemu-img info \"$uri\"'";
    const int rc = RunCommand({"bash", "-c", cmd}, &out, 60);
    return std::make_pair(rc, out);
  };
  const std::string key(reinterpret_cast<const char*>(key_.UnsafeData()), key_.size());
  auto [rc_ok, out_ok] = run(key, true);
  EXPECT_EQ(rc_ok, 0) << out_ok;
  EXPECT_NE(out_ok.find("virtual size"), std::string::npos) << out_ok;
  auto [rc_long, out_long] = run(key + "x", true);
  EXPECT_NE(rc_long, 0);
  EXPECT_NE(out_long.find("exactly 32 bytes"), std::string::npos) << out_long;
  auto [rc_short, out_short] = run(key.substr(0, 31), true);
  EXPECT_NE(rc_short, 0);
  EXPECT_NE(out_short.find("exactly 32 bytes"), std::string::npos) << out_short;
  auto [rc_none, out_none] = run(key, false);
  EXPECT_NE(rc_none, 0);
  EXPECT_NE(out_none.find("keyfd=N is required"), std::string::npos) << out_none;
}

TEST_F(ExportTest, AWrongKeyFailsToStartWithDecryptionFailed) {
  auto e = Export::Start(Local("l"), SecretBytes::Random(32));
  EXPECT_STATUS(e, StatusCode::kDataLoss, "decryption failed");
  EXPECT_FALSE(fs::exists(State("l") + "/nbd.sock"));
}

TEST_F(ExportTest, ASwappedPackageIsRefusedByItsIdentity) {
  ExportOptions o = Local("l");
  o.expected_image_id = "another-image";
  EXPECT_STATUS(Export::Start(o, key_), StatusCode::kFailedPrecondition, "not the expected image");
}

TEST_F(ExportTest, ATamperedChunkIsAnIoErrorAndAnEventWhileOtherChunksServe) {
  constexpr uint64_t kBad = 17;  // chunk index
  {
    std::fstream f(Ova(), std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t at = MemberOffset() + 80 + kBad * (kChunkBytes + 16) + 100;
    f.seekg(static_cast<std::streamoff>(at));
    char b = 0;
    f.read(&b, 1);
    b ^= 0x01;
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&b, 1);
  }
  auto e = Export::Start(Local("l"), key_);  // lazy: chunk 17 not read yet
  ASSERT_OK(e);
  NbdClient c((*e)->socket_path());
  std::string got;
  EXPECT_EQ(c.Pread(&got, 4096, kBad * kChunkBytes + 8192), EIO);
  EXPECT_EQ(got, std::string(4096, '\0'));  // no unauthenticated bytes
  // Other chunks, before and after, still serve.
  ASSERT_EQ(c.Pread(&got, kChunkBytes, (kBad + 1) * kChunkBytes), 0);
  EXPECT_TRUE(got == std::string_view(plaintext_).substr((kBad + 1) * kChunkBytes, kChunkBytes));
  ASSERT_EQ(c.Pread(&got, 1000, 5), 0);
  EXPECT_TRUE(got == std::string_view(plaintext_).substr(5, 1000));
  // Sticky, whether read whole or in part, and across a range that spans it.
  EXPECT_EQ(c.Pread(&got, kChunkBytes, kBad * kChunkBytes), EIO);
  EXPECT_EQ(c.Pread(&got, 3 * kChunkBytes, (kBad - 1) * kChunkBytes), EIO);
  auto events = (*e)->Events();
  ASSERT_OK(events);
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].event, "chunk_auth_failed");
  EXPECT_EQ((*events)[0].fields["offset"], kBad * kChunkBytes);
  EXPECT_EQ((*events)[0].fields["length"], kChunkBytes);
  EXPECT_EQ((*events)[0].fields["disk"], disk_id_);
}

// Reads in flight at once on one connection (libnbd's asynchronous API), as
// qemu issues them: each gets its plaintext or its errno.
struct AsyncRead {
  uint64_t offset = 0;
  size_t length = 0;
  std::string buf;
  int64_t cookie = 0;
  int error = -1;  // 0 = read, else errno
};

void ReadAllInFlight(NbdClient& c, std::vector<AsyncRead>& reads) {
  for (AsyncRead& r : reads) {
    r.buf.assign(r.length, '\x5a');
    nbd_completion_callback none{};  // NBD_NULL_COMPLETION is a C compound literal
    r.cookie = nbd_aio_pread(c.handle(), r.buf.data(), r.length, r.offset, none, 0);
    ASSERT_GT(r.cookie, 0) << nbd_get_error();
  }
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (nbd_aio_in_flight(c.handle()) > 0) {
    ASSERT_LT(Clock::now(), deadline) << "reads still in flight";
    ASSERT_NE(nbd_poll(c.handle(), 1000), -1) << nbd_get_error();
  }
  for (AsyncRead& r : reads) {
    const int done = nbd_aio_command_completed(c.handle(), static_cast<uint64_t>(r.cookie));
    r.error = done == 1 ? 0 : (nbd_get_errno() != 0 ? nbd_get_errno() : -1);
  }
}

// The export decrypts on as many threads as there are cores, and a chunk
// that fails authentication leaves the stream reader refusing everything
// until the plugin replaces it. Many reads in flight at once around
// tampered chunks (whole chunks, partial ones, ranges across two) must
// still give every other chunk its exact plaintext, never mark a good
// chunk failed because it was read while another thread's failure was
// being handled, and record each tampered chunk once.
TEST_F(ExportTest, ParallelReadsAroundTamperedChunksFailOnlyThoseAndServeTheRest) {
  const uint64_t chunks = (kImageBytes + kChunkBytes - 1) / kChunkBytes;
  // Every fifth chunk from 3: many failures, each a moment in which the
  // stream reader refuses every chunk.
  auto bad = [](uint64_t i) { return i % 5 == 3; };
  {
    std::fstream f(Ova(), std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t i = 0; i < chunks; ++i) {
      if (!bad(i)) continue;
      const uint64_t at = MemberOffset() + 80 + i * (kChunkBytes + 16) + 100;
      f.seekg(static_cast<std::streamoff>(at));
      char b = 0;
      f.read(&b, 1);
      b ^= 0x01;
      f.seekp(static_cast<std::streamoff>(at));
      f.write(&b, 1);
    }
  }
  for (int threads : {0, 2, 8}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    ExportOptions o = Local("p" + std::to_string(threads));
    o.threads = threads;
    auto e = Export::Start(o, key_);
    ASSERT_OK(e);
    NbdClient c((*e)->socket_path());
    std::vector<AsyncRead> reads;
    std::mt19937_64 rng(99 + threads);
    for (int pass = 0; pass < 2; ++pass) {
      for (uint64_t i = 0; i < chunks; ++i) {
        const uint64_t start = i * kChunkBytes;
        const uint64_t len = std::min<uint64_t>(kChunkBytes, kImageBytes - start);
        reads.push_back({start, static_cast<size_t>(len)});                  // whole
        reads.push_back({start + 777, static_cast<size_t>(len / 3)});        // part
        if (start + len + 5000 <= kImageBytes) {
          reads.push_back({start + len - 5000, 10000});                      // across two
        }
      }
    }
    std::shuffle(reads.begin(), reads.end(), rng);
    ReadAllInFlight(c, reads);
    if (::testing::Test::HasFatalFailure()) return;
    int failed = 0;
    for (const AsyncRead& r : reads) {
      const bool touches_bad = bad(r.offset / kChunkBytes) ||
                               bad((r.offset + r.length - 1) / kChunkBytes);
      SCOPED_TRACE("offset " + std::to_string(r.offset) + " length " +
                   std::to_string(r.length));
      if (touches_bad) {
        EXPECT_EQ(r.error, EIO);
        ++failed;
      } else {
        ASSERT_EQ(r.error, 0);
        ASSERT_TRUE(r.buf == std::string_view(plaintext_).substr(r.offset, r.length));
      }
    }
    EXPECT_GT(failed, 0);
    // Afterwards every good chunk still reads (none was marked failed).
    std::string got;
    for (uint64_t i = 0; i < chunks; ++i) {
      const uint64_t start = i * kChunkBytes;
      const size_t len = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, kImageBytes - start));
      if (bad(i)) {
        EXPECT_EQ(c.Pread(&got, len, start), EIO) << "chunk " << i;
        continue;
      }
      ASSERT_EQ(c.Pread(&got, len, start), 0) << "chunk " << i;
      ASSERT_TRUE(got == std::string_view(plaintext_).substr(start, len)) << "chunk " << i;
    }
    // One event per tampered chunk, none for a good one.
    auto events = (*e)->Events();
    ASSERT_OK(events);
    std::set<uint64_t> offsets;
    for (const ExportEvent& ev : *events) {
      EXPECT_EQ(ev.event, "chunk_auth_failed");
      const uint64_t off = ev.fields["offset"].get<uint64_t>();
      EXPECT_TRUE(bad(off / kChunkBytes)) << "event for good chunk " << off / kChunkBytes;
      EXPECT_TRUE(offsets.insert(off).second) << "two events for chunk " << off / kChunkBytes;
    }
    EXPECT_EQ(offsets.size(), static_cast<size_t>((chunks + 1) / 5));
  }
}

// The export holds the data key and decrypted chunks in memory, and runs as
// its VM's user, the same uid as that VM's qemu. A process of that uid
// (qemu after a guest escape) must not read its memory, and a crash must
// not write it to a core file: the plugin makes nbdkit non-dumpable.
TEST_F(ExportTest, AProcessOfTheExportsOwnUidCannotReadItsMemory) {
  if (geteuid() != 0) GTEST_SKIP() << "run_as_uid needs root";
  constexpr uid_t kVmUid = 61727;
  // The VM user reaches the package and the plugin (copies in a directory
  // it may enter, as the host daemon arranges for them: the checkout may
  // lie below directories it cannot enter; nothing secret in this test's
  // data).
  const std::string pub = dir_.File("pub");
  ASSERT_EQ(mkdir(pub.c_str(), 0755), 0);
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  fs::copy_file(Ova(), pub + "/pkg.ova");
  ASSERT_EQ(chmod((pub + "/pkg.ova").c_str(), 0644), 0);
  ExportOptions o = Local("u");
  fs::copy_file(o.plugin_path, pub + "/plugin.so");
  ASSERT_EQ(chmod((pub + "/plugin.so").c_str(), 0755), 0);
  o.plugin_path = pub + "/plugin.so";
  o.package_path = pub + "/pkg.ova";
  o.run_as_uid = kVmUid;
  auto e = Export::Start(o, key_);
  ASSERT_OK(e);
  const pid_t pid = (*e)->pid();
  const std::string status = ReadFileOrDie("/proc/" + std::to_string(pid) + "/status");
  ASSERT_NE(status.find("Uid:\t" + std::to_string(kVmUid) + "\t"), std::string::npos) << status;
  // It serves (the key is in its memory now).
  NbdClient c((*e)->socket_path());
  std::string got;
  ASSERT_EQ(c.Pread(&got, 4096, 0), 0);
  ASSERT_TRUE(got == std::string_view(plaintext_).substr(0, 4096));
  // A child with the same uid tries what an attacker would: read the
  // export's memory directly, attach with ptrace, open /proc/<pid>/mem.
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(pipe_fds[0]);
    int results[3] = {0, 0, 0};
    if (setgroups(0, nullptr) != 0 || setresgid(kVmUid, kVmUid, kVmUid) != 0 ||
        setresuid(kVmUid, kVmUid, kVmUid) != 0) {
      _exit(2);
    }
    char buf[64];
    iovec local{buf, sizeof(buf)};
    // The permission check comes before the address: with access, an
    // unmapped address is EFAULT (what main's plugin gave), without EPERM.
    iovec remote{reinterpret_cast<void*>(0x1000), sizeof(buf)};
    results[0] = process_vm_readv(pid, &local, 1, &remote, 1, 0) < 0 ? errno : 0;
    results[1] = ptrace(PTRACE_ATTACH, pid, nullptr, nullptr) != 0 ? errno : 0;
    const std::string mem = "/proc/" + std::to_string(pid) + "/mem";
    const int fd = open(mem.c_str(), O_RDONLY);
    results[2] = fd < 0 ? errno : 0;
    if (write(pipe_fds[1], results, sizeof(results)) != sizeof(results)) _exit(3);
    _exit(0);
  }
  close(pipe_fds[1]);
  int results[3] = {-1, -1, -1};
  const ssize_t n = read(pipe_fds[0], results, sizeof(results));
  close(pipe_fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << wstatus;
  ASSERT_EQ(n, static_cast<ssize_t>(sizeof(results)));
  EXPECT_EQ(results[0], EPERM) << "process_vm_readv";
  EXPECT_EQ(results[1], EPERM) << "ptrace attach";
  EXPECT_EQ(results[2], EACCES) << "open /proc/<pid>/mem";
  ASSERT_OK((*e)->Stop());
}

// The nbdkit the export starts runs ExportThreads workers: one per CPU (2
// to 16; a remote source at least 4) unless asked otherwise.
TEST_F(ExportTest, NbdkitRunsOneWorkerThreadPerCpuUnlessTold) {
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  ExportOptions o = Local("t");
  EXPECT_EQ(ExportThreads(o), static_cast<int>(std::clamp<long>(cpus, 2, 16)));
  EXPECT_EQ(ExportThreads(Remote("t", 443)), static_cast<int>(std::clamp<long>(cpus, 4, 16)));
  o.threads = 5;
  EXPECT_EQ(ExportThreads(o), 5);
  for (int threads : {0, 3}) {
    o.threads = threads;
    o.state_dir = State("t" + std::to_string(threads));
    auto e = Export::Start(o, key_);
    ASSERT_OK(e);
    std::ifstream in("/proc/" + std::to_string((*e)->pid()) + "/cmdline", std::ios::binary);
    const std::string cmd((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string want = std::string("--threads") + '\0' +
                             std::to_string(ExportThreads(o)) + '\0';
    EXPECT_NE(cmd.find(want), std::string::npos) << "threads " << threads;
    ASSERT_OK((*e)->Stop());
  }
}

TEST_F(ExportTest, RemoteSourceKeepsServingAfterPrefetchWhenTheServerIsGone) {
  MakeCerts();
  auto server = std::make_unique<RangeServer>(dir_.File("server.pem"), dir_.File("server.key"),
                                              dir_.File("ca.pem"), Ova());
  auto e = Export::Start(Remote("r", server->port()), key_);
  ASSERT_OK(e);
  WaitForPrefetch(**e);
  server->Stop();
  ExpectWholeDiskEqualsPlaintext(**e, "out.raw");
  auto events = (*e)->Events();
  ASSERT_OK(events);
  ASSERT_FALSE(events->empty());
  EXPECT_EQ(events->back().event, "prefetch_complete");
}

// Whoever can write the host's disk can change the cache: that must turn
// into an I/O error, never into bytes the customer did not seal.
TEST_F(ExportTest, ATamperedCacheFileIsAnIoErrorNotOtherBytes) {
  MakeCerts();
  RangeServer server(dir_.File("server.pem"), dir_.File("server.key"), dir_.File("ca.pem"),
                     Ova());
  const ExportOptions o = Remote("r", server.port());
  constexpr uint64_t kBad = 40;
  {
    auto e = Export::Start(o, key_);
    ASSERT_OK(e);
    WaitForPrefetch(**e);
  }
  {
    std::fstream f(State("r") + "/cache.data", std::ios::in | std::ios::out | std::ios::binary);
    const uint64_t at = MemberOffset() + 80 + kBad * (kChunkBytes + 16) + 9;
    f.seekg(static_cast<std::streamoff>(at));
    char b = 0;
    f.read(&b, 1);
    b ^= 0x40;
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&b, 1);
  }
  auto e = Export::Start(o, key_);
  ASSERT_OK(e);
  NbdClient c((*e)->socket_path());
  std::string got;
  EXPECT_EQ(c.Pread(&got, kChunkBytes, kBad * kChunkBytes), EIO);
  ASSERT_EQ(c.Pread(&got, kChunkBytes, (kBad + 1) * kChunkBytes), 0);
  EXPECT_TRUE(got == std::string_view(plaintext_).substr((kBad + 1) * kChunkBytes, kChunkBytes));
  auto events = (*e)->Events();
  ASSERT_OK(events);
  bool found = false;
  for (const ExportEvent& ev : *events) {
    if (ev.event == "chunk_auth_failed" && ev.fields["offset"] == kBad * kChunkBytes) found = true;
  }
  EXPECT_TRUE(found);
}

TEST_F(ExportTest, RemoteSourceReadsLazilyWithoutPrefetch) {
  MakeCerts();
  RangeServer server(dir_.File("server.pem"), dir_.File("server.key"), dir_.File("ca.pem"),
                     Ova());
  ExportOptions o = Remote("r", server.port());
  o.prefetch = false;
  auto e = Export::Start(o, key_);
  ASSERT_OK(e);
  NbdClient c((*e)->socket_path());
  std::string got;
  ASSERT_EQ(c.Pread(&got, 10000, 3 * kChunkBytes + 77), 0);
  EXPECT_TRUE(got == std::string_view(plaintext_).substr(3 * kChunkBytes + 77, 10000));
  auto p = (*e)->Progress();
  ASSERT_OK(p);
  EXPECT_FALSE(p->complete);
  ExpectWholeDiskEqualsPlaintext(**e, "out.raw");
}

TEST_F(ExportTest, AClientWithoutTheHostCertificateCannotStartARemoteExport) {
  MakeCerts();
  RangeServer server(dir_.File("server.pem"), dir_.File("server.key"), dir_.File("ca.pem"),
                     Ova());
  ExportOptions o = Remote("r", server.port());
  o.remote.cert_file.clear();
  o.remote.key_file.clear();
  auto e = Export::Start(o, key_);
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(server.requests(), 0);
}

TEST_F(ExportTest, NoFileTheExportWroteHoldsPlaintext) {
  MakeCerts();
  RangeServer server(dir_.File("server.pem"), dir_.File("server.key"), dir_.File("ca.pem"),
                     Ova());
  {
    auto e = Export::Start(Remote("r", server.port()), key_);
    ASSERT_OK(e);
    WaitForPrefetch(**e);
    ExpectWholeDiskEqualsPlaintext(**e, "out.raw");
    auto l = Export::Start(Local("l"), key_);
    ASSERT_OK(l);
    ExpectWholeDiskEqualsPlaintext(**l, "out2.raw");
  }
  PlaintextScanner scanner(plaintext_);
  // The scan finds plaintext where there is some.
  ASSERT_GT(scanner.CountHits(plaintext_.substr(1000, 200)), 0u);
  int files = 0;
  for (const std::string& state : {State("r"), State("l")}) {
    for (const auto& entry : fs::recursive_directory_iterator(state)) {
      if (!entry.is_regular_file()) continue;
      ++files;
      SCOPED_TRACE(entry.path().string());
      EXPECT_EQ(scanner.CountHits(ReadFileOrDie(entry.path().string())), 0u);
    }
  }
  EXPECT_TRUE(fs::exists(State("r") + "/cache.data"));
  EXPECT_GE(files, 5);
}

TEST_F(ExportTest, KillNineThenReattachServesFromThePersistedCache) {
  MakeCerts();
  auto server = std::make_unique<RangeServer>(dir_.File("server.pem"), dir_.File("server.key"),
                                              dir_.File("ca.pem"), Ova());
  const ExportOptions o = Remote("r", server->port());
  auto e = Export::Start(o, key_);
  ASSERT_OK(e);
  WaitForPrefetch(**e);
  // Reattach to a live export adopts it.
  {
    auto again = Export::Reattach(o, key_);
    ASSERT_OK(again);
    EXPECT_TRUE((*again)->reused());
    EXPECT_EQ((*again)->pid(), (*e)->pid());
    (*again)->Detach();
  }
  server->Stop();  // from now on only the cache can serve
  const pid_t old_pid = (*e)->pid();
  ASSERT_EQ(kill(old_pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(old_pid, nullptr, 0), old_pid);
  (*e)->Detach();
  // A restarted export asks the server for the object's size (one range);
  // the data comes from the cache.
  auto server2 = std::make_unique<RangeServer>(dir_.File("server.pem"),
                                               dir_.File("server.key"), dir_.File("ca.pem"),
                                               Ova(), o.remote.url.empty() ? 0 : PortOf(o));
  ASSERT_GT(server2->port(), 0);
  auto r = Export::Reattach(o, key_);
  ASSERT_OK(r);
  EXPECT_FALSE((*r)->reused());
  EXPECT_NE((*r)->pid(), old_pid);
  WaitForPrefetch(**r);
  const int requests_at_start = server2->requests();
  server2->Stop();
  ExpectWholeDiskEqualsPlaintext(**r, "out.raw");
  // Only the size probe reached the server: no disk data.
  EXPECT_EQ(requests_at_start, 1);
}

// The cache on its own: coalesced fetches, reuse across opens, and a cache
// of another object is discarded.
class CountingSource final : public RangeSource {
 public:
  explicit CountingSource(std::string data, std::string id = "obj")
      : data_(std::move(data)), id_(std::move(id)) {}
  uint64_t size() const override { return data_.size(); }
  std::string identity() const override { return id_; }
  Status Fetch(uint64_t offset, std::span<uint8_t> out) override {
    ++fetches;
    bytes += out.size();
    std::memcpy(out.data(), data_.data() + offset, out.size());
    return OkStatus();
  }
  std::atomic<int> fetches{0};
  std::atomic<uint64_t> bytes{0};

 private:
  const std::string data_;
  const std::string id_;
};

TEST(CiphertextCacheTest, SequentialReadsAreCoalescedAndTheCacheIsReused) {
  TempDir dir;
  const std::string data = RandomBytes((10 << 20) + 123, 9);
  CiphertextCacheOptions co;
  co.dir = dir.File("c");
  co.block_bytes = 1 << 20;
  co.readahead_bytes = 4 << 20;
  co.sync = false;
  {
    auto src = std::make_unique<CountingSource>(data);
    CountingSource* s = src.get();
    auto cache = CiphertextCache::Open(std::move(src), co);
    ASSERT_OK(cache);
    std::string got(64 << 10, '\0');
    for (uint64_t off = 0; off < (8u << 20); off += got.size()) {
      auto n = (*cache)->Read(off, {reinterpret_cast<uint8_t*>(got.data()), got.size()});
      ASSERT_OK(n);
      ASSERT_TRUE(got == std::string_view(data).substr(off, got.size()));
    }
    EXPECT_EQ(s->fetches.load(), 2);  // 128 reads of 64 KiB -> two 4 MiB ranges
    EXPECT_EQ((*cache)->CachedBytesIn(0, data.size()), uint64_t{8} << 20);
  }
  {
    auto src = std::make_unique<CountingSource>(data);
    CountingSource* s = src.get();
    auto cache = CiphertextCache::Open(std::move(src), co);
    ASSERT_OK(cache);
    EXPECT_EQ((*cache)->CachedBytesIn(0, data.size()), uint64_t{8} << 20);
    ASSERT_OK((*cache)->Fill(0, data.size(), nullptr));
    EXPECT_EQ(s->bytes.load(), data.size() - (8u << 20));  // only the rest
    std::string all(data.size(), '\0');
    auto n = (*cache)->Read(0, {reinterpret_cast<uint8_t*>(all.data()), all.size()});
    ASSERT_OK(n);
    EXPECT_EQ(*n, data.size());
    EXPECT_TRUE(all == data);
  }
  {
    // Another object in the same directory: nothing of the old one is used.
    auto src = std::make_unique<CountingSource>(RandomBytes(data.size(), 10), "other");
    auto cache = CiphertextCache::Open(std::move(src), co);
    ASSERT_OK(cache);
    EXPECT_EQ((*cache)->CachedBytesIn(0, data.size()), 0u);
  }
}

TEST(CiphertextCacheTest, AFailedFetchIsReportedAndRetriedLater) {
  class FlakySource final : public RangeSource {
   public:
    uint64_t size() const override { return 4 << 20; }
    std::string identity() const override { return "flaky"; }
    Status Fetch(uint64_t, std::span<uint8_t> out) override {
      if (fail) return UnavailableError("down");
      std::memset(out.data(), 0x5a, out.size());
      return OkStatus();
    }
    std::atomic<bool> fail{true};
  };
  TempDir dir;
  auto src = std::make_unique<FlakySource>();
  FlakySource* s = src.get();
  auto cache = CiphertextCache::Open(std::move(src), {.dir = dir.File("c"), .sync = false});
  ASSERT_OK(cache);
  uint8_t b[16];
  EXPECT_STATUS((*cache)->Read(100, b), StatusCode::kUnavailable, "down");
  EXPECT_EQ((*cache)->CachedBytesIn(0, 4 << 20), 0u);
  s->fail = false;
  auto n = (*cache)->Read(100, b);
  ASSERT_OK(n);
  EXPECT_EQ(b[0], 0x5a);
}

}  // namespace
}  // namespace vmseal::nbd_export
