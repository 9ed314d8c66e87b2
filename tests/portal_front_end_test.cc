// Issue 16, through the real binaries: the portal (`vmseal csp serve`) on
// the event-driven front end. Slow clients (a header or body byte every
// second) cannot starve customers and are closed at their deadline; one
// address cannot hold more than its cap; uploads and Range downloads of a
// few MiB stay byte-identical; the front end's counts are on /metrics of the
// portal and the KMS; and a KMS that stops answering during a placement
// stalls neither other hosts' polls nor customers' status calls.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <random>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "internal/portal_fixture.h"

namespace vmseal::testing {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A TCP connection to 127.0.0.1:`port` from the loopback address `from`
// (so that many client addresses can be simulated); -1 on failure.
int ConnectFrom(const std::string& from, int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in src{};
  src.sin_family = AF_INET;
  ::inet_pton(AF_INET, from.c_str(), &src.sin_addr);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src)) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&dst), sizeof(dst)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True once the server closed `fd` (EOF or reset); drains what it sent.
bool ClosedByServer(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  char buf[4096];
  const ssize_t n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  return n <= 0;
}

// Slow clients: each sends `prefix` at once, then one byte of filler every
// second, until the server closes it (the time of which is recorded).
class SlowClients {
 public:
  struct Client {
    int fd = -1;
    Clock::time_point opened;
    double closed_after_seconds = -1;  // < 0: still open
  };
  SlowClients(int port, int count, const std::vector<std::string>& addresses, const std::string& prefix) {
    for (int i = 0; i < count; ++i) {
      Client c;
      c.fd = ConnectFrom(addresses[i % addresses.size()], port);
      c.opened = Clock::now();
      if (c.fd >= 0 && !prefix.empty()) (void)::send(c.fd, prefix.data(), prefix.size(), MSG_NOSIGNAL);
      clients_.push_back(c);
    }
    thread_ = std::thread([this] { Run(); });
  }
  ~SlowClients() {
    stop_ = true;
    thread_.join();
    for (auto& c : clients_) {
      if (c.fd >= 0) ::close(c.fd);
    }
  }
  // Waits until every client is closed or `seconds` pass; returns them.
  std::vector<Client> WaitClosed(double seconds) {
    const auto until = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < until && open() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::lock_guard<std::mutex> lock(mu_);
    return clients_;
  }
  int open() {
    std::lock_guard<std::mutex> lock(mu_);
    int n = 0;
    for (const auto& c : clients_) n += c.fd >= 0 && c.closed_after_seconds < 0;
    return n;
  }
  int connected() const {
    int n = 0;
    for (const auto& c : clients_) n += c.fd >= 0;
    return n;
  }

 private:
  void Run() {
    auto next_byte = Clock::now() + std::chrono::seconds(1);
    while (!stop_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        const bool send_now = Clock::now() >= next_byte;
        for (auto& c : clients_) {
          if (c.fd < 0 || c.closed_after_seconds >= 0) continue;
          if (ClosedByServer(c.fd)) {
            c.closed_after_seconds = SecondsSince(c.opened);
          } else if (send_now) {
            (void)::send(c.fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
          }
        }
        if (send_now) next_byte += std::chrono::seconds(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::mutex mu_;
  std::vector<Client> clients_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::vector<std::string> LoopbackAddresses(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("127.0.0." + std::to_string(10 + i));
  return out;
}

// The value of the metric line `name` (with labels) in `text`, or -1.
double Metric(const std::string& text, const std::string& name) {
  size_t at = 0;
  while ((at = text.find(name + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + name.size() + 1));
    at += name.size();
  }
  return -1;
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

class PortalFrontEndTest : public PortalFixture {
 protected:
  // Uploads `data` in PUTs of `piece` bytes, commits it; the image id.
  std::string UploadBytes(const httplib::Headers& auth, const std::string& data, size_t piece) {
    httplib::Client c = Portal();
    auto begin = c.Post("/v1/uploads", auth, "", "application/json");
    EXPECT_TRUE(begin && begin->status == 201);
    const std::string id = Json(begin).value("upload_id", "");
    for (size_t off = 0; off < data.size(); off += piece) {
      auto put = c.Put("/v1/uploads/" + id + "?offset=" + std::to_string(off), auth, data.substr(off, piece),
                       "application/octet-stream");
      EXPECT_TRUE(put && put->status == 200) << (put ? put->body : "no answer");
      EXPECT_EQ(Json(put).value("offset_bytes", uint64_t{0}), std::min(data.size(), off + piece));
    }
    auto commit = c.Post("/v1/uploads/" + id + "/commit", auth, "{\"name\":\"big\"}", "application/json");
    EXPECT_TRUE(commit && commit->status == 201) << (commit ? commit->body : "no answer");
    return Json(commit).value("image_id", "");
  }
  std::string Metrics() {
    auto m = Portal().Get("/metrics");
    EXPECT_TRUE(m && m->status == 200);
    return m ? m->body : "";
  }
};

TEST_F(PortalFrontEndTest, SlowHeadersAndBodiesDoNotStarveCustomersAndAreClosedAtTheirDeadline) {
  StartServers({"--front-end", "read_timeout_seconds=3"});
  const httplib::Headers alice = Customer();
  const std::string image = UploadBytes(alice, RandomBytes(64 << 10, 1), 64 << 10);
  // 64 slow connections from 8 addresses (8 each, under the per-address
  // cap): 32 trickle a request header, 32 a body after a complete header.
  const auto addresses = LoopbackAddresses(8);
  SlowClients headers(portal_->port(), 32, addresses, "G");
  SlowClients bodies(portal_->port(), 32, addresses,
                     "POST /v1/login HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
                     "Content-Length: 65536\r\n\r\n{");
  ASSERT_EQ(headers.connected(), 32);
  ASSERT_EQ(bodies.connected(), 32);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  // A customer lists, uploads 3 MiB and downloads it while they trickle.
  const std::string data = RandomBytes(3 << 20, 2);
  auto t = Clock::now();
  auto list = Portal().Get("/v1/images", alice);
  ASSERT_TRUE(list);
  EXPECT_EQ(list->status, 200);
  EXPECT_LT(SecondsSince(t), 1.0) << "list under 64 slow connections";
  t = Clock::now();
  const std::string big = UploadBytes(alice, data, 2 << 20);
  EXPECT_LT(SecondsSince(t), 5.0) << "3 MiB upload under 64 slow connections";
  t = Clock::now();
  auto down = Portal().Get("/v1/images/" + big + "/package", alice);
  ASSERT_TRUE(down);
  EXPECT_EQ(down->status, 200);
  EXPECT_TRUE(down->body == data) << "download differs";
  EXPECT_LT(SecondsSince(t), 5.0) << "3 MiB download under 64 slow connections";
  EXPECT_GT(headers.open() + bodies.open(), 0) << "the slow connections were closed too early to matter";

  // Header: 3 s overall. Body: 3 s + 65536 B / 64 KiB/s = 4 s.
  for (const auto& c : headers.WaitClosed(8)) {
    EXPECT_GE(c.closed_after_seconds, 2.5);
    EXPECT_LE(c.closed_after_seconds, 5.0);
  }
  for (const auto& c : bodies.WaitClosed(8)) {
    EXPECT_GE(c.closed_after_seconds, 3.5);
    EXPECT_LE(c.closed_after_seconds, 6.5);
  }
  const std::string m = Metrics();
  EXPECT_GE(Metric(m, "vmseal_portal_front_end_connections_timed_out_total{stage=\"header\"}"), 32) << m;
  EXPECT_GE(Metric(m, "vmseal_portal_front_end_connections_timed_out_total{stage=\"body\"}"), 32) << m;
  // The slow bodies never reached the login handler (no failed login).
  EXPECT_EQ(Metric(m, "vmseal_portal_front_end_requests_refused_queue_full_total"), 0) << m;
}

TEST_F(PortalFrontEndTest, ConnectionsOverThePerAddressCapDisplaceTheOldestAndCustomersStillGetIn) {
  StartServers({"--front-end", "max_connections_per_address=4"});
  const httplib::Headers alice = Customer();
  SlowClients hog(portal_->port(), 12, {"127.0.0.20"}, "");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_LE(hog.open(), 4) << "one address holds more than its cap";
  auto list = Portal().Get("/v1/images", alice);
  ASSERT_TRUE(list);
  EXPECT_EQ(list->status, 200);
  const std::string m = Metrics();
  EXPECT_GE(Metric(m, "vmseal_portal_front_end_connections_displaced_total{cap=\"per_address\"}"), 8) << m;
  EXPECT_GE(Metric(m, "vmseal_portal_front_end_connections_open"), 1) << m;
}

TEST_F(PortalFrontEndTest, UploadAndRangeDownloadsOfSeveralMiBAreByteIdentical) {
  StartServers();
  const httplib::Headers alice = Customer();
  const std::string data = RandomBytes((5 << 20) + 12345, 3);
  const std::string image = UploadBytes(alice, data, 3 << 20);
  httplib::Client c = Portal();
  auto whole = c.Get("/v1/images/" + image + "/package", alice);
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->status, 200);
  EXPECT_TRUE(whole->body == data);
  struct Case {
    std::string range;
    uint64_t first, length;
  };
  const uint64_t size = data.size();
  for (const Case& k : {Case{"bytes=1048570-4194310", 1048570, 3145741}, Case{"bytes=0-0", 0, 1},
                        Case{"bytes=-1000", size - 1000, 1000}, Case{"bytes=5000000-", 5000000, size - 5000000},
                        Case{"bytes=5000000-999999999", 5000000, size - 5000000}}) {
    SCOPED_TRACE(k.range);
    httplib::Headers h = alice;
    h.emplace("Range", k.range);
    auto part = c.Get("/v1/images/" + image + "/package", h);
    ASSERT_TRUE(part);
    EXPECT_EQ(part->status, 206);
    EXPECT_TRUE(part->body == data.substr(k.first, k.length));
    EXPECT_EQ(part->get_header_value("Content-Range"), "bytes " + std::to_string(k.first) + "-" +
                                                           std::to_string(k.first + k.length - 1) + "/" +
                                                           std::to_string(size));
  }
  httplib::Headers past = alice;
  past.emplace("Range", "bytes=" + std::to_string(size) + "-");
  auto unsatisfiable = c.Get("/v1/images/" + image + "/package", past);
  ASSERT_TRUE(unsatisfiable);
  EXPECT_EQ(unsatisfiable->status, 416);
  EXPECT_EQ(unsatisfiable->get_header_value("Content-Range"), "bytes */" + std::to_string(size));
  auto head = c.Head("/v1/images/" + image + "/package", alice);
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->get_header_value("Content-Length"), std::to_string(size));
  EXPECT_EQ(head->get_header_value("Accept-Ranges"), "bytes");
  // Another customer gets nothing of it.
  auto bob = c.Get("/v1/images/" + image + "/package", Customer());
  ASSERT_TRUE(bob);
  EXPECT_EQ(bob->status, 404);
}

TEST_F(PortalFrontEndTest, UploadToAnotherCustomersUploadIsRefusedBeforeItsBodyIsRead) {
  StartServers();
  const httplib::Headers alice = Customer(), mallory = Customer();
  httplib::Client c = Portal();
  auto begin = c.Post("/v1/uploads", alice, "", "application/json");
  ASSERT_TRUE(begin && begin->status == 201);
  const std::string id = Json(begin).value("upload_id", "");
  auto put = c.Put("/v1/uploads/" + id + "?offset=0", mallory, std::string(1 << 20, 'm'),
                   "application/octet-stream");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 404) << put->body;
  auto state = c.Get("/v1/uploads/" + id, alice);
  ASSERT_TRUE(state);
  EXPECT_EQ(Json(state).value("offset_bytes", uint64_t{99}), 0u) << "mallory's bytes reached alice's upload";
}

// One worker and one queue place: of 24 logins sent at once (each runs
// Argon2id on the worker), those beyond the queue are answered 503 with
// Retry-After at once, nothing else fails, /metrics counts exactly those,
// and the portal serves again once the queue has drained.
TEST_F(PortalFrontEndTest, FullWorkerQueueIsAnswered503WithRetryAfterAndServesAgain) {
  StartServers({"--front-end", "threads=1", "--front-end", "max_queued_requests=1", "--front-end",
                "max_queued_anonymous_requests=1"});
  const json who = Register();
  const std::string login = who.value("login_id", ""), password = who.value("password", "");
  struct Answer {
    int status = 0;
    std::string retry_after;
    double seconds = 0;
  };
  std::vector<std::future<Answer>> calls;
  for (int i = 0; i < 24; ++i) {
    calls.push_back(std::async(std::launch::async, [&] {
      const auto t = Clock::now();
      auto r = Login(login, password);
      Answer a;
      a.seconds = SecondsSince(t);
      if (r) {
        a.status = r->status;
        a.retry_after = r->get_header_value("Retry-After");
      }
      return a;
    }));
  }
  int ok = 0, full = 0;
  for (auto& f : calls) {
    const Answer a = f.get();
    if (a.status == 200) {
      ++ok;
    } else {
      EXPECT_EQ(a.status, 503) << "only a full queue may refuse a good login";
      ++full;
      EXPECT_FALSE(a.retry_after.empty()) << "503 without Retry-After";
      EXPECT_LT(a.seconds, 2.0) << "a refusal waited for the queue";
    }
  }
  EXPECT_GE(ok, 2) << "the worker and its queue place served nobody";
  EXPECT_GE(full, 1) << "24 logins at once never filled one worker and one queue place";
  EXPECT_EQ(Metric(Metrics(), "vmseal_portal_front_end_requests_refused_queue_full_total"), full);
  auto again = Login(login, password);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200) << again->body;
}

// The KMS's front end reports on its /metrics too.
TEST(KmsFrontEndMetricsTest, HeaderTimeoutsAndPerAddressDisplacementsAreCounted) {
  TempDir dir;
  std::string out;
  ASSERT_EQ(RunCommand({VmsealBinary(), "kms", "init", "--dir", dir.File("kms")}, &out, 60), 0) << out;
  json config = json::parse(ReadFileOrDie(dir.File("kms/kms.json")));
  config["read_timeout_seconds"] = 2;
  config["max_connections_per_address"] = 3;
  WriteFileOrDie(dir.File("kms/kms.json"), config.dump());
  auto kms = csp::testing::ServerProcess::Start({VmsealBinary(), "kms", "serve", "--config", dir.File("kms/kms.json"),
                                                 "--port", "0", "--port-file", dir.File("kms/port")},
                                                dir.File("kms/serve.log"), dir.File("kms/port"));
  ASSERT_OK(kms);
  // Three silent connections from one address (no TLS ClientHello): closed
  // at the 2 s deadline. Then six more from another: three displaced.
  SlowClients silent((*kms)->port(), 3, {"127.0.0.30"}, "");
  for (const auto& c : silent.WaitClosed(6)) {
    EXPECT_GE(c.closed_after_seconds, 1.5);
    EXPECT_LE(c.closed_after_seconds, 4.0);
  }
  SlowClients crowd((*kms)->port(), 6, {"127.0.0.31"}, "");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_LE(crowd.open(), 3);
  httplib::SSLClient client("127.0.0.1", (*kms)->port());
  client.set_ca_cert_path(dir.File("kms/ca.pem"));
  client.enable_server_certificate_verification(false);
  auto m = client.Get("/metrics");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200) << m->body;
  EXPECT_GE(Metric(m->body, "vmseal_kms_front_end_connections_timed_out_total{stage=\"header\"}"), 3) << m->body;
  EXPECT_GE(Metric(m->body, "vmseal_kms_front_end_connections_displaced_total{cap=\"per_address\"}"), 3) << m->body;
  EXPECT_GE(Metric(m->body, "vmseal_kms_front_end_connections_open"), 1) << m->body;
  EXPECT_EQ(Metric(m->body, "vmseal_kms_front_end_requests_queued"), 0) << m->body;
}

// The portal over TLS with host identities from the KMS's CA.
class PortalPlacementTest : public PortalFixture {
 protected:
  void StartTls() {
    tls_ = true;
    StartServers();
  }
  std::unique_ptr<httplib::SSLClient> Client(const std::string& host_identity = "") {
    std::unique_ptr<httplib::SSLClient> c;
    if (host_identity.empty()) {
      c = std::make_unique<httplib::SSLClient>("127.0.0.1", portal_->port());
    } else {
      c = std::make_unique<httplib::SSLClient>("127.0.0.1", portal_->port(), kms_.dir + "/" + host_identity + ".pem",
                                               kms_.dir + "/" + host_identity + "-key.pem");
    }
    c->enable_server_certificate_verification(false);  // the portal's identity has no IP SAN
    c->set_read_timeout(60, 0);
    return c;
  }
  httplib::Headers TlsCustomer() {
    auto reg = Client()->Post("/v1/register", "{}", "application/json");
    EXPECT_TRUE(reg && reg->status == 201);
    json r = Json(reg);
    json login = {{"login_id", r["login_id"]}, {"password", r["password"]}};
    auto in = Client()->Post("/v1/login", login.dump(), "application/json");
    EXPECT_TRUE(in && in->status == 200);
    return {{"Authorization", "Bearer " + Json(in).value("token", "")}};
  }
};

TEST_F(PortalPlacementTest, KmsStoppedDuringAPlacementStallsNeitherHostPollsNorCustomerStatus) {
  StartTls();
  ASSERT_OK(kms_.IssueIdentity("host", "host-a"));
  ASSERT_OK(kms_.IssueIdentity("host", "host-b"));
  for (const char* h : {"host-a", "host-b"}) {
    auto reg = Client(h)->Post("/v1/hosts/register", "{\"capacity\":{\"vcpus\":2}}", "application/json");
    ASSERT_TRUE(reg);
    ASSERT_EQ(reg->status, 200) << reg->body;
  }
  const httplib::Headers alice = TlsCustomer();
  auto begin = Client()->Post("/v1/uploads", alice, "", "application/json");
  ASSERT_TRUE(begin && begin->status == 201);
  const std::string upload = Json(begin).value("upload_id", "");
  auto put = Client()->Put("/v1/uploads/" + upload + "?offset=0", alice, std::string(4096, 'p'),
                           "application/octet-stream");
  ASSERT_TRUE(put && put->status == 200);
  auto commit = Client()->Post("/v1/uploads/" + upload + "/commit", alice, "{\"name\":\"web\"}", "application/json");
  ASSERT_TRUE(commit && commit->status == 201) << (commit ? commit->body : "");
  const std::string image = Json(commit).value("image_id", "");
  auto first = Client()->Post("/v1/launch", alice, json{{"image_id", image}}.dump(), "application/json");
  ASSERT_TRUE(first && first->status == 201) << (first ? first->body : "");
  const std::string first_job = Json(first).value("job_id", "");

  // The KMS stops answering; a launch now waits on its placement check.
  ASSERT_EQ(::kill(kms_.process->pid(), SIGSTOP), 0);
  auto launching = std::async(std::launch::async, [&] {
    return Client()->Post("/v1/launch", alice, json{{"image_id", image}}.dump(), "application/json");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_EQ(launching.wait_for(std::chrono::seconds(0)), std::future_status::timeout)
      << "the launch did not wait on the stopped KMS";
  auto t = Clock::now();
  auto poll = Client("host-b")->Get("/v1/hosts/jobs");
  const double poll_seconds = SecondsSince(t);
  t = Clock::now();
  auto status = Client()->Get("/v1/jobs/" + first_job, alice);
  const double status_seconds = SecondsSince(t);
  ASSERT_EQ(::kill(kms_.process->pid(), SIGCONT), 0);
  ASSERT_TRUE(poll);
  EXPECT_EQ(poll->status, 200) << poll->body;
  EXPECT_LT(poll_seconds, 2.0) << "another host's poll waited on the KMS";
  ASSERT_TRUE(status);
  EXPECT_EQ(status->status, 200) << status->body;
  EXPECT_LT(status_seconds, 2.0) << "a customer's status call waited on the KMS";

  auto second = launching.get();
  ASSERT_TRUE(second);
  EXPECT_EQ(second->status, 201) << second->body;
  // Each job is there once, with at most one placement attempt.
  auto jobs = Client()->Get("/v1/jobs", alice);
  ASSERT_TRUE(jobs && jobs->status == 200);
  const json list = Json(jobs)["jobs"];
  ASSERT_EQ(list.size(), 2u) << list.dump();
  for (const json& j : list) EXPECT_LE(j["attempts"].size(), 1u) << j.dump();
}

}  // namespace
}  // namespace vmseal::testing
