// The host's portal client against the real portal server (src/csp) in
// process on loopback, over TLS 1.3 with a host client certificate. A small
// TCP relay between them cuts connections to exercise resumed downloads.
#include "host/portal_client.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include <nlohmann/json.hpp>

#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "csp/portal_server.h"
#include "kms/internal/mini_ca.h"
#include "testing/test_util.h"

namespace vmseal::host {
namespace {

using json = nlohmann::json;
using ::vmseal::testing::TempDir;
using ::vmseal::testing::WriteFileOrDie;

// The portal lists any package (the OVF verifier is not what is tested here).
class AcceptAllVerifier final : public csp::PackageVerifier {
 public:
  StatusOr<csp::VerifiedPackage> Verify(const RandomAccessFile&,
                                        const std::string&) const override {
    return csp::VerifiedPackage{"img", "key-1", 1};
  }
};

// The portal's view of the KMS: customer keys from a test CA, every host
// eligible.
class EveryHostEligibleKms final : public csp::KmsClient {
 public:
  EveryHostEligibleKms() {
    auto ca = crypto::CreateSelfSignedCa({"fake KMS CA"});
    EXPECT_OK(ca);
    ca_pem_ = ca.ok() ? ca->cert.ToPem() : "";
  }
  StatusOr<csp::CustomerKey> CreateCustomerKey(const std::string& customer_id,
                                               const std::string& /*algorithm*/) override {
    ASSIGN_OR_RETURN(auto key, crypto::PrivateKey::Generate(crypto::KeyType::kEcP256));
    csp::CustomerKey out;
    out.key_id = "key-" + customer_id;
    out.customer_id = customer_id;
    out.algorithm = "P-256";
    out.public_key_pem = key.Public().ToPem();
    return out;
  }
  StatusOr<std::vector<csp::HostEligibility>> CheckPlacement(
      const std::string&, const std::string&, const std::vector<std::string>& hosts) override {
    std::vector<csp::HostEligibility> out;
    for (const auto& h : hosts) out.push_back({h, true, "ok"});
    return out;
  }
  Status RegisterImage(const std::string&, const std::string&, const std::string&,
                       const ovf::SignedPackageTexts&) override {
    return OkStatus();
  }
  Status CreateGrant(const csp::LaunchGrant&) override { return OkStatus(); }
  std::string CaCertificatePem() const override { return ca_pem_; }

 private:
  std::string ca_pem_;
};

// Relays TCP connections from a loopback port to `target_port`. The first
// `cuts` connections are closed after `cut_after` bytes from the server.
class CuttingRelay {
 public:
  CuttingRelay(int target_port, int cuts, uint64_t cut_after)
      : target_port_(target_port), cuts_left_(cuts), cut_after_(cut_after) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t len = sizeof(a);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }
  ~CuttingRelay() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    ::close(listen_fd_);
    accept_thread_.join();
    for (auto& t : workers_) t.join();
  }
  int port() const { return port_; }
  int cuts_done() const { return cuts_done_; }

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
      bool cut = cuts_left_.fetch_sub(1) > 0;
      workers_.emplace_back([this, client, server, cut] { Pump(client, server, cut); });
    }
  }
  void Pump(int client, int server, bool cut) {
    uint64_t down = 0;
    char buf[16384];
    pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
    while (!stopping_) {
      int r = ::poll(fds, 2, 200);
      if (r < 0) break;
      if (r == 0) continue;
      bool done = false;
      for (int i = 0; i < 2 && !done; ++i) {
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
        if (n <= 0) {
          done = true;
          break;
        }
        size_t len = static_cast<size_t>(n);
        if (i == 1 && cut && down + len >= cut_after_) {
          len = static_cast<size_t>(cut_after_ - down);
          done = true;
          ++cuts_done_;
        }
        if (len > 0 && ::write(fds[1 - i].fd, buf, len) != static_cast<ssize_t>(len)) done = true;
        if (i == 1) down += len;
      }
      if (done) break;
    }
    ::close(client);
    ::close(server);
  }

  const int target_port_;
  std::atomic<int> cuts_left_;
  const uint64_t cut_after_;
  std::atomic<int> cuts_done_{0};
  std::atomic<bool> stopping_{false};
  int listen_fd_ = -1;
  int port_ = 0;
  std::thread accept_thread_;
  std::vector<std::thread> workers_;
};

class PortalClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Identities as `vmseal kms issue-identity` makes them (OU = role).
    auto ca = kms::internal::CreateRootCa("vmseal test CA", 1);
    ASSERT_OK(ca);
    ca_ = *std::move(ca);
    WriteFileOrDie(dir_.File("ca.pem"), ca_.cert_pem);
    Issue("127.0.0.1", "portal", "server", true);
    Issue("host-a", "host", "host-a", false);
    Issue("host-b", "host", "host-b", false);
    Issue("host-c", "operator", "not-a-host", false);

    csp::PortalServer::Options o;
    o.data_dir = dir_.File("portal");
    o.argon2_m_cost_kib = 64;
    o.tls_cert_file = dir_.File("server.crt");
    o.tls_key_file = dir_.File("server.key");
    o.client_ca_file = dir_.File("ca.pem");
    o.operator_token = SecretBytes(crypto::AsBytes(std::string_view("op")));
    auto s = csp::PortalServer::Create(std::move(o), &verifier_, &trust_);
    ASSERT_OK(s);
    portal_ = std::move(s).value();
    ASSERT_OK(portal_->Start());
    customer_ = std::make_unique<httplib::SSLClient>("127.0.0.1", portal_->port());
    customer_->set_ca_cert_path(dir_.File("ca.pem").c_str());
    customer_->enable_server_certificate_verification(true);
    // PortalServer::Start returns before cpp-httplib's accept loop runs, and
    // a Stop in that window is lost (the loop then never ends): wait until
    // the portal answers.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline && !customer_->Get("/v1/kms/ca")) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  void TearDown() override { portal_->Stop(); }

  void Issue(const std::string& cn, const std::string& role, const std::string& name,
             bool server) {
    kms::internal::LeafOptions lo{.common_name = cn, .organizational_unit = role};
    if (server) {
      lo.ip_addresses = {"127.0.0.1"};
      lo.server = true;
    }
    auto id = kms::internal::IssueLeaf(ca_, lo);
    ASSERT_OK(id);
    WriteFileOrDie(dir_.File(name + ".crt"), id->cert_pem);
    ASSERT_OK(WriteStringToFileAtomic(
        Env::Default(), dir_.File(name + ".key"),
        std::string(reinterpret_cast<const char*>(id->key_pem.UnsafeData()), id->key_pem.size()),
        0600));
  }

  std::unique_ptr<PortalClient> Client(const std::string& identity, int port = 0,
                                       uint64_t range_bytes = 0, int connections = 0) {
    PortalClientOptions o;
    if (range_bytes != 0) o.fetch_range_bytes = range_bytes;
    if (connections != 0) o.fetch_connections = connections;
    o.url = "https://127.0.0.1:" + std::to_string(port != 0 ? port : portal_->port());
    o.ca_cert_file = dir_.File("ca.pem");
    o.cert_file = dir_.File(identity + ".crt");
    o.key_file = dir_.File(identity + ".key");
    o.timeout_seconds = 10;
    o.resume_delay_ms = 10;
    auto c = PortalClient::Create(o);
    EXPECT_OK(c);
    return c.ok() ? std::move(c).value() : nullptr;
  }

  // A customer uploads `package` and launches it; returns the job id.
  std::string LaunchPackage(const std::string& package) {
    auto reg = customer_->Post("/v1/register");
    EXPECT_TRUE(reg) << httplib::to_string(reg.error());
    json r = json::parse(reg->body);
    json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
    auto res = customer_->Post("/v1/login", login.dump(), "application/json");
    auth_ = {{"Authorization", "Bearer " + json::parse(res->body)["token"].get<std::string>()}};
    auto begin = customer_->Post("/v1/uploads", auth_, "", "application/json");
    std::string id = json::parse(begin->body)["upload_id"];
    EXPECT_EQ(customer_->Put("/v1/uploads/" + id + "?offset=0", auth_, package,
                             "application/octet-stream")->status, 200);
    auto img = customer_->Post("/v1/uploads/" + id + "/commit", auth_, R"({"name":"vm"})",
                               "application/json");
    EXPECT_EQ(img->status, 201) << img->body;
    json body = {{"image_id", json::parse(img->body)["image_id"]}};
    auto launch = customer_->Post("/v1/launch", auth_, body.dump(), "application/json");
    EXPECT_EQ(launch->status, 201) << launch->body;
    json job = json::parse(launch->body);
    EXPECT_EQ(job["state"], "placed") << job.dump();
    return job["job_id"];
  }

  json CustomerJob(const std::string& job_id) {
    auto res = customer_->Get("/v1/jobs/" + job_id, auth_);
    EXPECT_TRUE(res);
    return json::parse(res->body);
  }

  std::string RandomPackage(size_t size) {
    crypto::Bytes b = crypto::RandomBytes(size);
    return std::string(b.begin(), b.end());
  }

  TempDir dir_;
  kms::internal::CertAndKey ca_;
  AcceptAllVerifier verifier_;
  EveryHostEligibleKms trust_;
  std::unique_ptr<csp::PortalServer> portal_;
  std::unique_ptr<httplib::SSLClient> customer_;
  httplib::Headers auth_;
};

TEST_F(PortalClientTest, RegistersWithCapacityAndTagsAndHeartbeats) {
  auto host = Client("host-a");
  ASSERT_NE(host, nullptr);
  EXPECT_STATUS(host->Heartbeat(), StatusCode::kNotFound, "portal heartbeat");
  HostRegistrationInfo info;
  info.capacity = {.vcpus = 4, .memory_mib = 8192, .slots = 3};
  info.tags = {"region=eu-west", "tier=gold"};
  ASSERT_OK(host->Register(info));
  ASSERT_OK(host->Heartbeat());
  auto res = customer_->Get("/v1/operator/hosts", {{"Authorization", "Bearer op"}});
  ASSERT_TRUE(res);
  json hosts = json::parse(res->body)["hosts"];
  ASSERT_EQ(hosts.size(), 1u);
  EXPECT_EQ(hosts[0]["host_id"], "host-a");  // from the certificate, not the body
  EXPECT_EQ(hosts[0]["capacity_slots"], 3);
  EXPECT_NE(hosts[0]["tags"].dump().find("eu-west"), std::string::npos) << hosts.dump();
}

TEST_F(PortalClientTest, CertificateWithoutTheHostRoleIsRefused) {
  auto impostor = Client("not-a-host");
  ASSERT_NE(impostor, nullptr);
  EXPECT_STATUS(impostor->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}),
                StatusCode::kPermissionDenied, "OU must be host");
}

TEST_F(PortalClientTest, DetectCapacityReportsThisMachine) {
  HostCapacity c = DetectCapacity();
  EXPECT_EQ(c.vcpus, static_cast<uint32_t>(::sysconf(_SC_NPROCESSORS_ONLN)));
  EXPECT_GT(c.memory_mib, 0u);
  EXPECT_EQ(c.slots, c.vcpus);
}

TEST_F(PortalClientTest, PollsOnlyItsOwnJobsAndFetchesThePackage) {
  auto host = Client("host-a");
  ASSERT_OK(host->Register({.capacity = {.vcpus = 2, .memory_mib = 1024, .slots = 2}}));
  const std::string package = RandomPackage(3 << 20);
  const std::string job_id = LaunchPackage(package);

  auto jobs = host->PollJobs();
  ASSERT_OK(jobs);
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].job_id, job_id);
  EXPECT_FALSE((*jobs)[0].customer_id.empty());

  auto other = Client("host-b");
  auto none = other->PollJobs();
  ASSERT_OK(none);
  EXPECT_TRUE(none->empty());
  EXPECT_STATUS(other->Fetch({.job_id = job_id}, dir_.File("stolen.pkg")), StatusCode::kNotFound,
                "no such job");
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("stolen.pkg")));

  const std::string dest = dir_.File("job.pkg");
  EXPECT_EQ((*jobs)[0].package_sha256_hex, crypto::HexEncode(crypto::Sha256(package)));
  ASSERT_OK(host->Fetch({.job_id = job_id, .image_id = (*jobs)[0].image_id}, dest));
  EXPECT_EQ(testing::ReadFileOrDie(dest), package);
  EXPECT_TRUE(host->last_fetch().digest_checked);
  struct stat st;
  ASSERT_EQ(::stat(dest.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(host->last_fetch().bytes, package.size());
  EXPECT_EQ(host->last_fetch().resumes, 0);
}

TEST_F(PortalClientTest, BrokenDownloadResumesWithRange) {
  auto direct = Client("host-a");
  ASSERT_OK(direct->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  const std::string package = RandomPackage(4 << 20);
  const std::string job_id = LaunchPackage(package);
  // Two connections die mid-transfer (after ~1 MiB of TLS records each).
  CuttingRelay relay(portal_->port(), 2, 1 << 20);
  auto host = Client("host-a", relay.port());
  const std::string dest = dir_.File("job.pkg");
  ASSERT_OK(host->Fetch({.job_id = job_id}, dest));
  EXPECT_EQ(relay.cuts_done(), 2);
  EXPECT_EQ(host->last_fetch().resumes, 2);
  EXPECT_EQ(host->last_fetch().bytes, package.size());
  EXPECT_EQ(crypto::HexEncode(crypto::Sha256(testing::ReadFileOrDie(dest))),
            crypto::HexEncode(crypto::Sha256(package)));
  // Only the final file is left: no temp file beside it.
  for (const auto& name : testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("job.pkg."), std::string::npos) << name;
  }
}

TEST_F(PortalClientTest, DownloadThatKeepsBreakingFailsAndLeavesNoFile) {
  auto direct = Client("host-a");
  ASSERT_OK(direct->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  const std::string job_id = LaunchPackage(RandomPackage(2 << 20));
  CuttingRelay relay(portal_->port(), 100, 256 << 10);
  auto host = Client("host-a", relay.port());
  const std::string dest = dir_.File("job.pkg");
  EXPECT_STATUS(host->Fetch({.job_id = job_id}, dest), StatusCode::kUnavailable,
                "package fetch");
  EXPECT_FALSE(Env::Default()->FileExists(dest));
  for (const auto& name : testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("job.pkg"), std::string::npos) << name;
  }
}

TEST_F(PortalClientTest, ProgressAndRefusalMoveTheJobOnThePortal) {
  auto host = Client("host-a");
  ASSERT_OK(host->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  const std::string job_id = LaunchPackage(RandomPackage(1024));
  ASSERT_OK(host->ReportProgress({.job_id = job_id, .phase = JobPhase::kFetching}));
  EXPECT_EQ(CustomerJob(job_id)["state"], "fetching");
  ASSERT_OK(host->ReportProgress({.job_id = job_id, .phase = JobPhase::kAttesting}));
  EXPECT_EQ(CustomerJob(job_id)["state"], "attesting");
  ASSERT_OK(host->ReportRefusal(job_id, "pcr_policy", "PCR 7 matches no flavor"));
  json job = CustomerJob(job_id);
  // The only host refused: the job leaves it, with the reason on record.
  EXPECT_NE(job["state"], "attesting");
  EXPECT_NE(job.dump().find("pcr_policy"), std::string::npos) << job.dump();
  // The host cannot report on a job that is no longer its own.
  EXPECT_FALSE(host->ReportProgress({.job_id = job_id, .phase = JobPhase::kDecrypting}).ok());
}

TEST_F(PortalClientTest, RunningReportCarriesTheVm) {
  auto host = Client("host-a");
  ASSERT_OK(host->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  const std::string job_id = LaunchPackage(RandomPackage(1024));
  for (JobPhase p : {JobPhase::kFetching, JobPhase::kAttesting, JobPhase::kDecrypting,
                     JobPhase::kLaunching}) {
    ASSERT_OK(host->ReportProgress({.job_id = job_id, .phase = p}));
  }
  ASSERT_OK(host->ReportProgress({.job_id = job_id, .phase = JobPhase::kRunning,
                                  .vm_name = "vm-1", .serial_log_path = "/x/serial.log"}));
  EXPECT_EQ(CustomerJob(job_id)["state"], "running");
}

// A server that announces the package digest (as the contract asks): a
// correct digest is checked, a wrong one is DATA_LOSS with no file left.
class DigestServer {
 public:
  DigestServer(const std::string& cert, const std::string& key, std::string body,
               std::string sha)
      : server_(cert.c_str(), key.c_str()), body_(std::move(body)), sha_(std::move(sha)) {
    server_.Get(R"(/v1/hosts/jobs/([a-z0-9-]+)/package)",
                [this](const httplib::Request&, httplib::Response& res) {
                  if (!sha_.empty()) res.set_header("X-Content-SHA256", sha_);
                  res.set_content(body_, "application/octet-stream");
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~DigestServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }

 private:
  httplib::SSLServer server_;
  const std::string body_, sha_;
  int port_ = 0;
  std::thread thread_;
};

TEST_F(PortalClientTest, AnnouncedDigestIsChecked) {
  const std::string package = RandomPackage(100000);
  DigestServer good(dir_.File("server.crt"), dir_.File("server.key"), package,
                    crypto::HexEncode(crypto::Sha256(package)));
  auto host = Client("host-a", good.port());
  ASSERT_OK(host->Fetch({.job_id = "j1"}, dir_.File("good.pkg")));
  EXPECT_TRUE(host->last_fetch().digest_checked);
  EXPECT_EQ(testing::ReadFileOrDie(dir_.File("good.pkg")), package);
}

TEST_F(PortalClientTest, DigestAnnouncedWithTheJobIsChecked) {
  const std::string package = RandomPackage(100000);
  DigestServer server(dir_.File("server.crt"), dir_.File("server.key"), package, "");
  auto host = Client("host-a", server.port());
  EXPECT_STATUS(host->Fetch({.job_id = "j1", .package_sha256_hex =
                                                 crypto::HexEncode(crypto::Sha256("other"))},
                            dir_.File("bad.pkg")),
                StatusCode::kDataLoss, "SHA-256 mismatch");
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("bad.pkg")));
  ASSERT_OK(host->Fetch({.job_id = "j1", .package_sha256_hex =
                                             crypto::HexEncode(crypto::Sha256(package))},
                        dir_.File("good.pkg")));
  EXPECT_TRUE(host->last_fetch().digest_checked);
}

TEST_F(PortalClientTest, WrongDigestIsDataLossAndLeavesNoFile) {
  const std::string package = RandomPackage(100000);
  DigestServer bad(dir_.File("server.crt"), dir_.File("server.key"), package,
                   crypto::HexEncode(crypto::Sha256("something else")));
  auto host = Client("host-a", bad.port());
  EXPECT_STATUS(host->Fetch({.job_id = "j1"}, dir_.File("bad.pkg")), StatusCode::kDataLoss,
                "SHA-256 mismatch");
  EXPECT_FALSE(Env::Default()->FileExists(dir_.File("bad.pkg")));
}

TEST_F(PortalClientTest, LargePackageArrivesByParallelRangesEachWrittenAtItsOffset) {
  auto host = Client("host-a", 0, 1 << 20, 3);
  ASSERT_OK(host->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  const std::string package = RandomPackage((7 << 20) + 12345);
  const std::string job_id = LaunchPackage(package);
  const std::string dest = dir_.File("job.pkg");
  ASSERT_OK(host->Fetch({.job_id = job_id}, dest));
  EXPECT_EQ(testing::ReadFileOrDie(dest), package);
  EXPECT_TRUE(host->last_fetch().digest_checked);
  EXPECT_EQ(host->last_fetch().bytes, package.size());
  EXPECT_EQ(host->last_fetch().ranges, 8);
  EXPECT_EQ(host->last_fetch().connections, 3);
  EXPECT_EQ(host->last_fetch().resumes, 0);
  struct stat st;
  ASSERT_EQ(::stat(dest.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  for (const auto& name : testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("job.pkg."), std::string::npos) << name;
  }
}

TEST_F(PortalClientTest, ParallelRangesCutMidTransferEachResumeFromWhereTheyStopped) {
  auto direct = Client("host-a");
  ASSERT_OK(direct->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  const std::string package = RandomPackage(5 << 20);
  const std::string job_id = LaunchPackage(package);
  // The first three connections (the probe's, which carries the first
  // range, and the two other workers') die inside their first range.
  CuttingRelay relay(portal_->port(), 3, 600 << 10);
  auto host = Client("host-a", relay.port(), 1 << 20, 3);
  const std::string dest = dir_.File("job.pkg");
  ASSERT_OK(host->Fetch({.job_id = job_id}, dest));
  EXPECT_EQ(relay.cuts_done(), 3);
  EXPECT_EQ(host->last_fetch().resumes, 3);
  EXPECT_EQ(host->last_fetch().ranges, 5);
  EXPECT_EQ(testing::ReadFileOrDie(dest), package);
  for (const auto& name : testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("job.pkg."), std::string::npos) << name;
  }
}

// A server that answers ranges (cpp-httplib serves Range for set_content)
// and, from its `swap_after`-th request on, serves other bytes: announced
// as another digest (`honest`), or under the first one's digest.
class SwappingServer {
 public:
  SwappingServer(const std::string& cert, const std::string& key, std::string first,
                 std::string second, int swap_after, bool honest)
      : server_(cert.c_str(), key.c_str()),
        first_(std::move(first)),
        second_(std::move(second)),
        swap_after_(swap_after),
        honest_(honest) {
    server_.Get(R"(/v1/hosts/jobs/([a-z0-9-]+)/package)",
                [this](const httplib::Request&, httplib::Response& res) {
                  const bool swapped = requests_.fetch_add(1) >= swap_after_;
                  const std::string& body = swapped ? second_ : first_;
                  const std::string& named = swapped && honest_ ? second_ : first_;
                  res.set_header("X-Content-SHA256", crypto::HexEncode(crypto::Sha256(named)));
                  res.set_content(body, "application/octet-stream");
                });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~SwappingServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  int requests() const { return requests_; }

 private:
  httplib::SSLServer server_;
  const std::string first_, second_;
  const int swap_after_;
  const bool honest_;
  std::atomic<int> requests_{0};
  int port_ = 0;
  std::thread thread_;
};

TEST_F(PortalClientTest, PackageSwappedBetweenRangesIsDataLossAndLeavesNoFile) {
  const std::string a = RandomPackage(300000), b = RandomPackage(300000);
  // Probe and first range see `a`; the second range is `b`'s.
  SwappingServer server(dir_.File("server.crt"), dir_.File("server.key"), a, b, 2, true);
  auto host = Client("host-a", server.port(), 64 << 10, 1);
  EXPECT_STATUS(host->Fetch({.job_id = "j1"}, dir_.File("swapped.pkg")), StatusCode::kDataLoss,
                "changed during the download");
  EXPECT_GE(server.requests(), 3);
  for (const auto& name : testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("swapped.pkg"), std::string::npos) << name;
  }
}

TEST_F(PortalClientTest, RangesWhoseBytesAreNotTheAnnouncedPackageAreDataLoss) {
  const std::string a = RandomPackage(300000), b = RandomPackage(300000);
  // Every answer names `a`'s digest; from the third range on it sends `b`'s
  // bytes, over three connections.
  SwappingServer server(dir_.File("server.crt"), dir_.File("server.key"), a, b, 3, false);
  auto host = Client("host-a", server.port(), 64 << 10, 3);
  EXPECT_STATUS(host->Fetch({.job_id = "j1"}, dir_.File("mixed.pkg")), StatusCode::kDataLoss,
                "SHA-256 mismatch");
  EXPECT_EQ(host->last_fetch().ranges, 5);
  for (const auto& name : testing::ListDir(dir_.path())) {
    EXPECT_EQ(name.find("mixed.pkg"), std::string::npos) << name;
  }
}

TEST_F(PortalClientTest, ConnectionThePortalClosedWhileIdleIsReopened) {
  auto host = Client("host-a");
  ASSERT_OK(host->Register({.capacity = {.vcpus = 1, .memory_mib = 512, .slots = 1}}));
  // cpp-httplib servers close keep-alive connections idle for 5 s.
  std::this_thread::sleep_for(std::chrono::milliseconds(5500));
  ASSERT_OK(host->Heartbeat());
  EXPECT_OK(host->PollJobs());
}

TEST_F(PortalClientTest, PlainHttpUrlIsRefused) {
  PortalClientOptions o;
  o.url = "http://127.0.0.1:1";
  o.ca_cert_file = dir_.File("ca.pem");
  o.cert_file = dir_.File("host-a.crt");
  o.key_file = dir_.File("host-a.key");
  EXPECT_STATUS(PortalClient::Create(o), StatusCode::kInvalidArgument, "https://");
}

TEST_F(PortalClientTest, UnreachablePortalIsUnavailable) {
  portal_->Stop();
  auto host = Client("host-a");
  EXPECT_EQ(host->Heartbeat().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace vmseal::host
