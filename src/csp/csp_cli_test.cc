// Process-level: the real `vmseal` binary as KMS (`kms serve`), as portal
// (`csp serve`) and as the customer CLI against them.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/internal/process_harness.h"
#include "testing/test_util.h"

namespace vmseal::csp {
namespace {

using json = nlohmann::json;
using ::vmseal::csp::testing::KmsInstance;
using ::vmseal::csp::testing::ServerProcess;
using ::vmseal::csp::testing::StartKms;
using ::vmseal::testing::ReadFileOrDie;
using ::vmseal::testing::RunCommand;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::VmsealBinary;
using ::vmseal::testing::WriteFileOrDie;

// A TCP relay to `target_port` that breaks its first connection after
// `cut_after` bytes from the client (an upload dying mid-PUT); later
// connections pass through.
class UploadCuttingRelay {
 public:
  UploadCuttingRelay(int target_port, uint64_t cut_after)
      : target_port_(target_port), cut_after_(cut_after) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t len = sizeof(a);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~UploadCuttingRelay() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    accept_thread_.join();
    for (auto& t : workers_) t.join();
  }
  int port() const { return port_; }
  int connections() const { return connections_; }
  bool cut() const { return cut_done_; }

 private:
  void AcceptLoop() {
    while (!stopping_) {
      int client = ::accept(listen_fd_, nullptr, nullptr);
      if (client < 0) return;
      int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(static_cast<uint16_t>(target_port_));
      if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      const bool cut = connections_.fetch_add(1) == 0;
      workers_.emplace_back([this, client, server, cut] { Pump(client, server, cut); });
    }
  }
  void Pump(int client, int server, bool cut) {
    uint64_t up = 0;
    char buf[16384];
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    bool done = false;
    while (!stopping_ && !done) {
      int r = ::poll(fds, 2, 200);
      if (r < 0) break;
      for (int i = 0; i < 2 && !done; ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
        if (n <= 0) {
          done = true;
          break;
        }
        size_t len = static_cast<size_t>(n);
        if (i == 0 && cut && up + len >= cut_after_) {
          len = static_cast<size_t>(cut_after_ - up);
          done = true;
          cut_done_ = true;
        }
        if (len > 0 && ::write(fds[1 - i].fd, buf, len) != static_cast<ssize_t>(len)) done = true;
        if (i == 0) up += len;
      }
    }
    // A reset, as a dying link looks to both ends.
    linger l{1, 0};
    ::setsockopt(client, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    ::setsockopt(server, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    ::close(client);
    ::close(server);
  }

  const int target_port_;
  const uint64_t cut_after_;
  std::atomic<int> connections_{0};
  std::atomic<bool> cut_done_{false};
  std::atomic<bool> stopping_{false};
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  std::vector<std::thread> workers_;
};

class CspCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kms = StartKms(dir_.File("kms"));
    ASSERT_OK(kms);
    kms_ = std::move(kms).value();
    WriteFileOrDie(dir_.File("op-token"), "operator-secret\n");
    auto portal = ServerProcess::Start(
        {VmsealBinary(), "csp", "serve", "--data-dir", dir_.File("data"), "--port", "0",
         "--port-file", dir_.File("port"), "--kms-url", kms_.url(), "--kms-ca", kms_.ca(),
         "--kms-cert", kms_.portal_cert(), "--kms-key", kms_.portal_key(),
         "--operator-token-file", dir_.File("op-token"), "--accept-unverified-packages"},
        dir_.File("portal.log"), dir_.File("port"));
    ASSERT_OK(portal);
    portal_ = std::move(portal).value();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(portal_->port()); }

  int Customer(const std::string& session, std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {VmsealBinary(), "customer", "--portal", url(), "--session",
                                     dir_.File(session)};
    argv.insert(argv.end(), args.begin(), args.end());
    // Each customer's signing key of its own: the sessions share a
    // directory, where the default signing-key.pem would be one file.
    for (size_t i = 0; i < argv.size(); ++i) {
      if (argv[i] == "register" || argv[i] == "fetch-cert") {
        argv.insert(argv.begin() + static_cast<long>(i) + 1,
                    {"--signing-key", dir_.File(session + ".signing-key.pem")});
        break;
      }
    }
    return RunCommand(argv, out, 60);
  }
  // JSON output of a customer command that must succeed.
  json CustomerJson(const std::string& session, std::vector<std::string> args) {
    args.insert(args.begin(), "--json");
    std::string out;
    EXPECT_EQ(Customer(session, args, &out), 0) << out;
    json j = json::parse(out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << out;
    return j;
  }
  // Registers and logs in a customer whose session goes to `session`.
  json SignUp(const std::string& session) {
    json reg = CustomerJson(session, {"register", "--password-out", dir_.File(session + ".pw")});
    CustomerJson(session, {"login", "--login-id", reg.value("login_id", ""), "--password-file",
                           dir_.File(session + ".pw")});
    return reg;
  }
  std::string UploadAs(const std::string& session, const std::string& data) {
    WriteFileOrDie(dir_.File(session + ".pkg"), data);
    json img = CustomerJson(session, {"upload", dir_.File(session + ".pkg"), "--name", "web"});
    return img.value("image_id", "");
  }

  TempDir dir_;
  KmsInstance kms_;
  std::unique_ptr<ServerProcess> portal_;
};

TEST_F(CspCliTest, CustomerRegistersUploadsListsAndLaunches) {
  json reg = SignUp("alice");
  EXPECT_FALSE(reg.contains("password"));  // went to the file
  EXPECT_EQ(ReadFileOrDie(dir_.File("alice.pw")).size(), 25u);
  std::string pkg(3 << 20, 'p');
  std::string image_id = UploadAs("alice", pkg);
  ASSERT_TRUE(image_id.starts_with("img-")) << image_id;
  json images = CustomerJson("alice", {"images"});
  ASSERT_EQ(images["images"].size(), 1u);
  EXPECT_EQ(images["images"][0]["sha256"].get<std::string>(), crypto::HexEncode(crypto::Sha256(pkg)));
  json job = CustomerJson("alice", {"launch", image_id});
  EXPECT_EQ(job["state"], "queued");  // no hosts registered
  json status = CustomerJson("alice", {"status", job["job_id"]});
  EXPECT_EQ(status["job_id"], job["job_id"]);
  json vms = CustomerJson("alice", {"vms"});
  ASSERT_EQ(vms["vms"].size(), 1u);
  EXPECT_EQ(vms["vms"][0]["image_id"], image_id);
}

// The upload keeps one connection for begin, PUT and commit; when that
// connection dies mid-PUT, the CLI asks the portal where to resume, sends
// the rest on a new connection and commits the whole file.
TEST_F(CspCliTest, UploadWhoseConnectionDiesMidPutResumesAndCommitsTheWholeFile) {
  SignUp("alice");
  std::string pkg;
  for (int i = 0; i < 9; ++i) {
    crypto::Bytes r = crypto::RandomBytes(1 << 20);
    pkg.append(r.begin(), r.end());
  }
  WriteFileOrDie(dir_.File("alice.pkg"), pkg);
  // Past the portal's first 4 MiB piece (kept), inside the second.
  UploadCuttingRelay relay(portal_->port(), 6 << 20);
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "customer", "--portal",
                        "http://127.0.0.1:" + std::to_string(relay.port()), "--session",
                        dir_.File("alice"), "--json", "upload", dir_.File("alice.pkg"), "--name",
                        "web"},
                       &out, 60),
            0)
      << out;
  EXPECT_TRUE(relay.cut());
  EXPECT_GE(relay.connections(), 2);
  EXPECT_NE(out.find("resuming at byte"), std::string::npos) << out;
  json images = CustomerJson("alice", {"images"});
  ASSERT_EQ(images["images"].size(), 1u);
  EXPECT_EQ(images["images"][0]["sha256"].get<std::string>(), crypto::HexEncode(crypto::Sha256(pkg)));
  EXPECT_EQ(images["images"][0]["size_bytes"], pkg.size());
}

TEST_F(CspCliTest, RegistrationCreatesAKmsKeyWhoseCertificateVerifies) {
  json reg = SignUp("alice");
  json out = CustomerJson("alice", {"fetch-cert", "--kms-ca", kms_.ca(), "--out",
                                    dir_.File("alice.crt")});
  EXPECT_EQ(out["verified"], true);
  EXPECT_EQ(out["key_id"], reg["key"]["key_id"]);
  auto cert = crypto::Certificate::FromPem(ReadFileOrDie(dir_.File("alice.crt")));
  ASSERT_OK(cert);
  auto ca = crypto::Certificate::FromPem(ReadFileOrDie(kms_.ca()));
  ASSERT_OK(ca);
  EXPECT_OK(crypto::VerifyCertificateChain(*cert, {*ca}));
  EXPECT_EQ(cert->SubjectCommonName(), reg["key"]["key_id"].get<std::string>());
}

// An X25519 customer: the KMS creates an X25519 key, and the certificate
// fetched for it seals packages with the X25519 key wrap.
TEST_F(CspCliTest, X25519RegistrationGivesACertificateThatSealsPackages) {
  json reg = CustomerJson("alice", {"register", "--key-algorithm", "x25519", "--password-out",
                                    dir_.File("alice.pw")});
  EXPECT_EQ(reg["key"]["algorithm"], "X25519");
  CustomerJson("alice", {"login", "--login-id", reg.value("login_id", ""), "--password-file",
                         dir_.File("alice.pw")});
  json fetched = CustomerJson("alice", {"fetch-cert", "--kms-ca", kms_.ca(), "--out",
                                        dir_.File("alice.crt")});
  EXPECT_EQ(fetched["algorithm"], "X25519");
  auto cert = crypto::Certificate::FromPem(ReadFileOrDie(dir_.File("alice.crt")));
  ASSERT_OK(cert);
  auto pub = cert->GetPublicKey();
  ASSERT_OK(pub);
  ASSERT_EQ(pub->type(), crypto::KeyType::kX25519);

  WriteFileOrDie(dir_.File("disk.img"), std::string(100000, 'd'));
  const std::string tenant = reg.value("customer_id", "");
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "seal", "--cert", dir_.File("alice.crt"), "--image-id",
                        "img-x", "--tenant", tenant, "--signing-key",
                        dir_.File("alice.signing-key.pem"), "-o", dir_.File("x.ova"),
                        dir_.File("disk.img")},
                       &out, 120),
            0)
      << out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "inspect", "--json", dir_.File("x.ova")}, &out, 60), 0)
      << out;
  json info = json::parse(out, nullptr, false);
  ASSERT_TRUE(info.is_object()) << out;
  EXPECT_EQ(info["tag"]["keyWrapAlgorithm"],
            "https://vmseal.dev/ns/wrap/x25519-hkdf-sha256-aes256gcm-v1");
  EXPECT_EQ(info["tag"]["keyId"], "sha256:" + pub->KeyId());
  EXPECT_EQ(info["tag"]["tenant"], tenant);

  // XML Encryption has no X25519 key wrap: one clear line, invalid input.
  EXPECT_EQ(RunCommand({VmsealBinary(), "seal", "--xmlenc-compat", "--cert", dir_.File("alice.crt"),
                        "--signing-key", dir_.File("alice.signing-key.pem"), "-o",
                        dir_.File("compat.ova"), dir_.File("disk.img")},
                       &out, 120),
            3)
      << out;
  EXPECT_NE(out.find("--xmlenc-compat needs an RSA recipient key"), std::string::npos) << out;
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("compat.ova")));
}

TEST_F(CspCliTest, RegisterRefusesAnUnknownKeyAlgorithm) {
  std::string out;
  EXPECT_EQ(Customer("alice", {"register", "--key-algorithm", "rsa1024"}, &out), 2) << out;
  EXPECT_NE(out.find("--key-algorithm"), std::string::npos) << out;
}

TEST_F(CspCliTest, FetchCertAgainstAnotherCaFailsAndWritesNothing) {
  SignUp("alice");
  auto rogue = crypto::CreateSelfSignedCa({"rogue CA"});
  ASSERT_OK(rogue);
  WriteFileOrDie(dir_.File("rogue.pem"), rogue->cert.ToPem());
  std::string out;
  EXPECT_NE(Customer("alice", {"fetch-cert", "--kms-ca", dir_.File("rogue.pem"), "--out",
                               dir_.File("alice.crt")},
                     &out),
            0);
  EXPECT_NE(out.find("does not chain to the KMS CA"), std::string::npos) << out;
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("alice.crt")));
  for (const std::string& name : ::vmseal::testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("alice.crt"), std::string::npos) << name;  // no temp file either
  }
}

TEST_F(CspCliTest, FetchAgentWritesTheRunningBinaryAfterCheckingItsDigest) {
  const std::string binary = ReadFileOrDie(VmsealBinary());
  const std::string sha = crypto::HexEncode(crypto::Sha256(binary));
  json out = CustomerJson("nobody", {"fetch-agent", "--out", dir_.File("agent"),
                                     "--expect-sha256", sha});
  EXPECT_EQ(out["sha256"], sha);
  EXPECT_EQ(ReadFileOrDie(dir_.File("agent")), binary);
  std::string version;
  EXPECT_EQ(RunCommand({dir_.File("agent"), "--help"}, &version, 30), 0) << version;
}

TEST_F(CspCliTest, FetchAgentWithAnotherExpectedDigestFailsAndWritesNothing) {
  std::string out;
  EXPECT_NE(Customer("nobody", {"fetch-agent", "--out", dir_.File("agent"), "--expect-sha256",
                                std::string(64, '0')},
                     &out),
            0);
  EXPECT_NE(out.find("not the expected"), std::string::npos) << out;
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("agent")));
}

TEST_F(CspCliTest, RegisterFailsCleanlyWhenTheKmsIsDown) {
  kms_.process->Stop();
  std::string out;
  EXPECT_NE(Customer("alice", {"register"}, &out), 0);
  EXPECT_NE(out.find("KMS"), std::string::npos) << out;
  EXPECT_EQ(out.find("password"), std::string::npos) << out;
}

TEST_F(CspCliTest, OtherCustomerCannotLaunchTheImage) {
  SignUp("alice");
  SignUp("bob");
  std::string image_id = UploadAs("alice", "sealed");
  std::string out;
  EXPECT_EQ(Customer("bob", {"launch", image_id}, &out), 5) << out;  // kExitIo for NOT_FOUND
  EXPECT_NE(out.find("no such image"), std::string::npos) << out;
  json images = CustomerJson("bob", {"images"});
  EXPECT_TRUE(images["images"].empty());
}

TEST_F(CspCliTest, CommandsWithoutLoginFailClearly) {
  std::string out;
  EXPECT_NE(Customer("nobody", {"images"}, &out), 0);
  EXPECT_NE(out.find("not logged in"), std::string::npos) << out;
}

TEST_F(CspCliTest, OperatorExplainsPlacementOfAnImageAndAJob) {
  json reg = SignUp("alice");
  std::string image_id = UploadAs("alice", "sealed");
  json job = CustomerJson("alice", {"launch", image_id});
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "csp", "explain-placement", "--portal", url(),
                        "--operator-token-file", dir_.File("op-token"), "--json",
                        job["job_id"].get<std::string>()},
                       &out, 60),
            0)
      << out;
  json p = json::parse(out, nullptr, false);
  ASSERT_FALSE(p.is_discarded()) << out;
  EXPECT_EQ(p["job"]["job_id"], job["job_id"]);
  EXPECT_GE(p["history"].size(), 1u);
  ASSERT_EQ(RunCommand({VmsealBinary(), "csp", "explain-placement", "--portal", url(),
                        "--operator-token-file", dir_.File("op-token"), "--image", image_id,
                        "--customer", reg["customer_id"].get<std::string>()},
                       &out, 60),
            0)
      << out;
  EXPECT_NE(out.find("no host chosen"), std::string::npos) << out;
  WriteFileOrDie(dir_.File("bad-token"), "nope\n");
  EXPECT_NE(RunCommand({VmsealBinary(), "csp", "explain-placement", "--portal", url(),
                        "--operator-token-file", dir_.File("bad-token"), "x"},
                       &out, 60),
            0);
  EXPECT_NE(out.find("not the operator"), std::string::npos) << out;
}

TEST(CspServeTest, ServeWithUnreadableKmsIdentityRefusesToStart) {
  TempDir dir;
  std::string out;
  EXPECT_NE(RunCommand({VmsealBinary(), "csp", "serve", "--data-dir", dir.File("d"), "--port",
                        "0", "--kms-url", "https://127.0.0.1:1", "--kms-ca", dir.File("ca"),
                        "--kms-cert", dir.File("c"), "--kms-key", dir.File("k")},
                       &out, 30),
            0);
  EXPECT_NE(out.find(dir.File("ca")), std::string::npos) << out;
}

TEST(CspServeTest, ServeWithABadKmsUrlRefusesToStart) {
  TempDir dir;
  std::string out;
  EXPECT_NE(RunCommand({VmsealBinary(), "csp", "serve", "--data-dir", dir.File("d"), "--port",
                        "0", "--kms-url", "http://127.0.0.1:1", "--kms-ca", dir.File("ca"),
                        "--kms-cert", dir.File("c"), "--kms-key", dir.File("k")},
                       &out, 30),
            0);
  EXPECT_NE(out.find("https://"), std::string::npos) << out;
}

}  // namespace
}  // namespace vmseal::csp
