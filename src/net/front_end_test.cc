// Slow, idle and flooding clients against HttpsServer's event-driven front
// end (issue 16), over real TLS on loopback: the overall deadlines, the
// connection caps with places reserved for mTLS peers, and the bounded
// worker queue.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kms/internal/mini_ca.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "testing/test_util.h"

namespace vmseal::net {
namespace {

using kms::internal::CertAndKey;
using kms::internal::CreateRootCa;
using kms::internal::IssueLeaf;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Pki {
  CertAndKey ca;
  CertAndKey server;
  CertAndKey host;
};

const Pki& TestPki() {
  static const Pki* pki = [] {
    auto* p = new Pki;
    p->ca = *CreateRootCa("test ca", 30);
    p->server = *IssueLeaf(p->ca, {.common_name = "kms", .organizational_unit = "kms",
                                   .ip_addresses = {"127.0.0.1"}, .server = true});
    p->host = *IssueLeaf(p->ca, {.common_name = "host-1", .organizational_unit = "host"});
    return p;
  }();
  return *pki;
}

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A TCP connection to the server from `source` (a 127.x.y.z address).
class RawConnection {
 public:
  RawConnection(int port, const char* source = "127.0.0.1") {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in src{};
    src.sin_family = AF_INET;
    ::inet_pton(AF_INET, source, &src.sin_addr);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&src), sizeof src);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawConnection() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    if (ctx_ != nullptr) SSL_CTX_free(ctx_);
    ::close(fd_);
  }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  bool connected() const { return connected_; }

  // An anonymous TLS handshake (the server's certificate is not checked:
  // the attacker only wants a connection).
  bool Handshake() {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    return SSL_connect(ssl_) == 1;
  }

  // One byte: over TLS after Handshake(), raw before.
  bool SendByte(char b) {
    if (ssl_ != nullptr) return SSL_write(ssl_, &b, 1) == 1;
    return ::send(fd_, &b, 1, MSG_NOSIGNAL) == 1;
  }

  // True when the server closed (or reset) the connection: the socket reads
  // end-of-file or an error within `seconds`. Handshake records are read
  // and skipped.
  bool ClosedWithin(double seconds) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    char buf[4096];
    while (Clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      const int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count());
      if (::poll(&p, 1, std::max(1, left)) <= 0) continue;
      const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
      received_ += static_cast<size_t>(n);
    }
    return false;
  }
  size_t received() const { return received_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  size_t received_ = 0;
};

class FrontEndTest : public ::testing::Test {
 protected:
  // Starts the server with `configure` applied to its options.
  void StartServer(const std::function<void(HttpsServer::Options&)>& configure) {
    HttpsServer::Options options;
    options.cert_pem = TestPki().server.cert_pem;
    options.key_pem = TestPki().server.key_pem.Clone();
    options.client_ca_pem = TestPki().ca.cert_pem;
    options.anonymous_per_second = 0;
    configure(options);
    auto server = HttpsServer::Create(std::move(options));
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = *std::move(server);
    server_->Get("/ping", [](const Request& r) -> StatusOr<json> {
      return json{{"authenticated", r.peer.authenticated}};
    });
    server_->Post("/block", [this](const Request&) -> StatusOr<json> {
      entered_.fetch_add(1);
      released_.wait_for(std::chrono::seconds(10));  // bounded, should a test fail first
      return json{{"ok", true}};
    });
    auto port = server_->Start();
    ASSERT_TRUE(port.ok()) << port.status().ToString();
    port_ = *port;
  }

  void TearDown() override {
    if (!released_set_) release_.set_value();
  }

  void Release() {
    release_.set_value();
    released_set_ = true;
  }

  std::unique_ptr<HttpsClient> Client(bool mtls, int timeout_seconds = 5) {
    HttpsClient::Options options;
    options.port = port_;
    options.ca_pem = TestPki().ca.cert_pem;
    options.timeout_seconds = timeout_seconds;
    if (mtls) {
      options.cert_pem = TestPki().host.cert_pem;
      options.key_pem = TestPki().host.key_pem.Clone();
    }
    auto client = HttpsClient::Create(std::move(options));
    EXPECT_TRUE(client.ok());
    return client.ok() ? *std::move(client) : nullptr;
  }

  // Waits (bounded) until `done` holds.
  static bool Eventually(const std::function<bool()>& done, double seconds = 5) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return done();
  }

  std::unique_ptr<HttpsServer> server_;
  int port_ = 0;
  std::atomic<int> entered_{0};
  std::promise<void> release_;
  std::shared_future<void> released_ = release_.get_future().share();
  bool released_set_ = false;
};

// A client that completes its handshake and then sends its request header
// one byte a second (each read well within any per-read timeout) is closed
// when the overall deadline passes, unanswered.
TEST_F(FrontEndTest, SlowHeaderIsClosedAtTheOverallDeadline) {
  StartServer([](HttpsServer::Options& o) { o.read_timeout_seconds = 2; });
  RawConnection slow(port_);
  ASSERT_TRUE(slow.connected());
  const auto start = Clock::now();
  ASSERT_TRUE(slow.Handshake());
  const std::string header = "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  bool closed = false;
  for (size_t i = 0; i < header.size() - 1 && !closed; ++i) {
    slow.SendByte(header[i]);
    closed = slow.ClosedWithin(1.0);
  }
  const double at = SecondsSince(start);
  EXPECT_TRUE(closed);
  EXPECT_GE(at, 1.5);
  EXPECT_LE(at, 3.5);
  // Counted by the server just after it closed the socket: wait (bounded).
  EXPECT_TRUE(Eventually([&] { return server_->stats().connections_timed_out == 1; }));
  // The server still answers others at once.
  ASSERT_OK(Client(true)->Get("/ping"));
}

// The same for a TLS ClientHello sent one byte a second: the handshake
// counts against the same deadline.
TEST_F(FrontEndTest, SlowHandshakeIsClosedAtTheOverallDeadline) {
  StartServer([](HttpsServer::Options& o) { o.read_timeout_seconds = 2; });
  static const unsigned char kHello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03};
  RawConnection slow(port_);
  ASSERT_TRUE(slow.connected());
  const auto start = Clock::now();
  bool closed = false;
  for (size_t i = 0; i < sizeof kHello && !closed; ++i) {
    slow.SendByte(static_cast<char>(kHello[i]));
    closed = slow.ClosedWithin(1.0);
  }
  const double at = SecondsSince(start);
  EXPECT_TRUE(closed);
  EXPECT_GE(at, 1.5);
  EXPECT_LE(at, 3.5);
  EXPECT_EQ(slow.received(), 0u);
}

// A body that trickles in below the minimum rate is cut off at its own
// deadline (header deadline + length / rate), and its handler never runs.
TEST_F(FrontEndTest, SlowBodyIsClosedAtItsDeadline) {
  StartServer([](HttpsServer::Options& o) {
    o.read_timeout_seconds = 1;
    o.min_body_bytes_per_second = 100;  // 100 bytes: 1 s more
  });
  RawConnection slow(port_);
  ASSERT_TRUE(slow.Handshake());
  const auto start = Clock::now();
  const std::string head = "POST /block HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n";
  for (char c : head) ASSERT_TRUE(slow.SendByte(c));
  bool closed = false;
  for (int i = 0; i < 10 && !closed; ++i) {
    slow.SendByte('[');
    closed = slow.ClosedWithin(0.5);
  }
  const double at = SecondsSince(start);
  EXPECT_TRUE(closed);
  EXPECT_GE(at, 1.5);
  EXPECT_LE(at, 3.5);
  EXPECT_EQ(entered_.load(), 0);
}

// 200 anonymous connections hold their places (half mid-handshake, half
// mid-header) against a server with room for 150 connections, 20 of them
// reserved: an mTLS host still connects and is answered within 1 s, each of
// 5 times on a new connection, and so is an anonymous caller.
TEST_F(FrontEndTest, SlowAnonymousConnectionsDoNotStarveAnMtlsHost) {
  StartServer([](HttpsServer::Options& o) {
    o.threads = 2;
    o.max_connections = 150;
    o.reserved_authenticated_connections = 20;
    o.max_connections_per_address = 1000;  // all from 127.0.0.1 here
  });
  std::vector<std::unique_ptr<RawConnection>> slow;
  for (int i = 0; i < 200; ++i) {
    auto c = std::make_unique<RawConnection>(port_);
    ASSERT_TRUE(c->connected());
    if (i % 2 == 1 && c->Handshake()) {
      c->SendByte('G');
    } else {
      c->SendByte(0x16);
    }
    slow.push_back(std::move(c));
  }
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_open >= 130; }));
  for (int i = 0; i < 5; ++i) {
    const auto start = Clock::now();
    auto result = Client(true)->Get("/ping");
    ASSERT_OK(result);
    EXPECT_EQ((*result)["authenticated"], true);
    EXPECT_LT(SecondsSince(start), 1.0) << i;
  }
  const auto start = Clock::now();
  ASSERT_OK(Client(false)->Get("/ping"));
  EXPECT_LT(SecondsSince(start), 1.0);
  const HttpsServer::Stats stats = server_->stats();
  EXPECT_GE(stats.connections_displaced, 200u - 130u);
  EXPECT_LE(stats.connections_open, 150u);
}

// Places taken by connections with a verified certificate are not given to
// a flood of anonymous ones.
TEST_F(FrontEndTest, AuthenticatedConnectionsKeepTheirPlacesUnderAFlood) {
  StartServer([](HttpsServer::Options& o) {
    o.max_connections = 10;
    o.reserved_authenticated_connections = 4;
    o.max_connections_per_address = 1000;
  });
  std::vector<std::unique_ptr<HttpsClient>> hosts;
  for (int i = 0; i < 4; ++i) {
    hosts.push_back(Client(true));
    ASSERT_OK(hosts.back()->Get("/ping"));  // keeps its connection
  }
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_authenticated == 4; }));
  std::vector<std::unique_ptr<RawConnection>> flood;
  for (int i = 0; i < 30; ++i) flood.push_back(std::make_unique<RawConnection>(port_));
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_displaced >= 24; }));
  EXPECT_EQ(server_->stats().connections_authenticated, 4u);
  EXPECT_LE(server_->stats().connections_open, 10u);
  for (auto& h : hosts) ASSERT_OK(h->Get("/ping"));
}

// More than max_connections_per_address anonymous connections from one
// address: the oldest is closed, the others (and other addresses') stay.
TEST_F(FrontEndTest, PerAddressCapClosesThatAddressesOldestConnection) {
  StartServer([](HttpsServer::Options& o) { o.max_connections_per_address = 4; });
  RawConnection other(port_, "127.0.0.3");
  std::vector<std::unique_ptr<RawConnection>> conns;
  for (int i = 0; i < 4; ++i) conns.push_back(std::make_unique<RawConnection>(port_, "127.0.0.2"));
  ASSERT_TRUE(Eventually([&] { return server_->stats().connections_open == 5; }));
  EXPECT_FALSE(conns[0]->ClosedWithin(0.2));
  conns.push_back(std::make_unique<RawConnection>(port_, "127.0.0.2"));
  EXPECT_TRUE(conns[0]->ClosedWithin(2.0));
  for (size_t i = 1; i < conns.size(); ++i) EXPECT_FALSE(conns[i]->ClosedWithin(0.1)) << i;
  EXPECT_FALSE(other.ClosedWithin(0.1));
  EXPECT_EQ(server_->stats().connections_displaced, 1u);
  EXPECT_EQ(server_->stats().connections_open, 5u);
}

// One worker, one queue place: a third request is answered 503 with
// Retry-After at once (not after the blocked ones), and nothing is lost.
TEST_F(FrontEndTest, FullQueueIsAnswered503WithRetryAfterAtOnce) {
  StartServer([](HttpsServer::Options& o) {
    o.threads = 1;
    o.max_queued_requests = 1;
  });
  auto running = std::async(std::launch::async, [&] { return Client(true, 10)->Post("/block", json::object()); });
  ASSERT_TRUE(Eventually([&] { return entered_.load() == 1; }));
  auto queued = std::async(std::launch::async, [&] { return Client(true, 10)->Post("/block", json::object()); });
  ASSERT_TRUE(Eventually([&] { return server_->stats().requests_queued == 1; }));

  httplib::SSLClient raw("127.0.0.1", port_);  // anonymous: the queue is full for everyone
  raw.enable_server_certificate_verification(false);
  const auto start = Clock::now();
  auto r = raw.Post("/block", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_LT(SecondsSince(start), 1.0);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_NE(r->body.find("\"reason\":\"overloaded\""), std::string::npos) << r->body;
  EXPECT_EQ(server_->stats().requests_refused_queue_full, 1u);

  Release();
  ASSERT_OK(running.get());
  ASSERT_OK(queued.get());
  EXPECT_EQ(entered_.load(), 2);
}

// Anonymous callers may fill only their share of the queue: with it full,
// an mTLS caller's request still queues and is served.
TEST_F(FrontEndTest, AnonymousRequestsCannotFillTheQueueForMtlsCallers) {
  StartServer([](HttpsServer::Options& o) {
    o.threads = 1;
    o.max_queued_requests = 2;
    o.max_queued_anonymous_requests = 1;
  });
  auto running = std::async(std::launch::async, [&] { return Client(true, 10)->Post("/block", json::object()); });
  ASSERT_TRUE(Eventually([&] { return entered_.load() == 1; }));
  auto anonymous = std::async(std::launch::async, [&] { return Client(false, 10)->Post("/block", json::object()); });
  ASSERT_TRUE(Eventually([&] { return server_->stats().requests_queued == 1; }));
  EXPECT_STATUS(Client(false)->Post("/block", json::object()), StatusCode::kUnavailable, "overloaded");
  auto host = std::async(std::launch::async, [&] { return Client(true, 10)->Post("/block", json::object()); });
  ASSERT_TRUE(Eventually([&] { return server_->stats().requests_queued == 2; }));
  Release();
  ASSERT_OK(running.get());
  ASSERT_OK(anonymous.get());
  ASSERT_OK(host.get());
  EXPECT_EQ(server_->stats().requests_refused_queue_full, 1u);
}

TEST(FrontEndOptions, RejectsReserveNotBelowTheCap) {
  HttpsServer::Options options;
  options.cert_pem = TestPki().server.cert_pem;
  options.key_pem = TestPki().server.key_pem.Clone();
  options.max_connections = 10;
  options.reserved_authenticated_connections = 10;
  EXPECT_STATUS(HttpsServer::Create(std::move(options)), StatusCode::kInvalidArgument, "reserved");
}

}  // namespace
}  // namespace vmseal::net
