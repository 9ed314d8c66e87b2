#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "kms/internal/mini_ca.h"
#include "net/https_client.h"
#include "net/https_server.h"
#include "json/json.h"
#include "testing/test_util.h"

namespace vmseal::net {
namespace {

using kms::internal::CertAndKey;
using kms::internal::CreateRootCa;
using kms::internal::IssueLeaf;
using kms::internal::LeafOptions;
using nlohmann::json;

struct Pki {
  CertAndKey ca;
  CertAndKey server;
  CertAndKey portal;
  CertAndKey other_ca;
  CertAndKey stranger;  // issued by other_ca
};

const Pki& TestPki() {
  static const Pki* pki = [] {
    auto* p = new Pki;
    p->ca = *CreateRootCa("test ca", 30);
    LeafOptions server{.common_name = "kms", .organizational_unit = "kms",
                       .ip_addresses = {"127.0.0.1"}, .server = true};
    p->server = *IssueLeaf(p->ca, server);
    p->portal = *IssueLeaf(p->ca, {.common_name = "portal-1", .organizational_unit = "portal"});
    p->other_ca = *CreateRootCa("other ca", 30);
    p->stranger = *IssueLeaf(p->other_ca, {.common_name = "evil", .organizational_unit = "portal"});
    return p;
  }();
  return *pki;
}

class HttpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    HttpsServer::Options options;
    options.cert_pem = TestPki().server.cert_pem;
    options.key_pem = TestPki().server.key_pem.Clone();
    options.client_ca_pem = TestPki().ca.cert_pem;
    options.max_body_bytes = 4096;  // >= the 1000-deep JSON test
    options.keep_alive_timeout_seconds = keep_alive_timeout_seconds_;
    if (anonymous_per_second_ >= 0) {
      options.anonymous_per_second = anonymous_per_second_;
      options.anonymous_burst = 3;
    }
    auto server = HttpsServer::Create(std::move(options));
    ASSERT_OK(server);
    server_ = *std::move(server);
    server_->Post("/echo", [](const Request& r) -> StatusOr<json> {
      return json{{"body", r.body}, {"authenticated", r.peer.authenticated},
                  {"cn", r.peer.common_name}, {"ou", r.peer.organizational_unit},
                  {"fingerprint", r.peer.fingerprint_sha256}};
    });
    server_->Get(R"(/items/([a-z0-9]+))", [](const Request& r) -> StatusOr<json> {
      if (r.path_params[0] == "missing") return NotFoundError("no item missing");
      return json{{"id", r.path_params[0]}};
    });
    server_->Delete(R"(/items/([a-z0-9]+))", [](const Request& r) -> StatusOr<json> {
      return json{{"deleted", r.path_params[0]}};
    });
    server_->Post("/typed", [](const Request& r) -> StatusOr<json> {
      return json{{"n", r.body.at("n").get<int>()}};
    });
    server_->GetText("/metrics", [](const Request&) -> StatusOr<TextResponse> {
      return TextResponse{"m 1\n"};
    });
    server_->Post("/count", [this](const Request&) -> StatusOr<json> {
      return json{{"n", ++posts_}};
    });
    auto port = server_->Start();
    ASSERT_OK(port);
    port_ = *port;
  }

  std::unique_ptr<HttpsClient> Client(const CertAndKey* identity,
                                      const std::string& ca_pem = TestPki().ca.cert_pem) {
    HttpsClient::Options options;
    options.port = port_;
    options.ca_pem = ca_pem;
    options.timeout_seconds = 5;
    if (identity != nullptr) {
      options.cert_pem = identity->cert_pem;
      options.key_pem = identity->key_pem.Clone();
    }
    auto client = HttpsClient::Create(std::move(options));
    EXPECT_OK(client);
    return client.ok() ? *std::move(client) : nullptr;
  }

  int keep_alive_timeout_seconds_ = 5;
  double anonymous_per_second_ = -1;  // < 0: the server's default
  std::unique_ptr<HttpsServer> server_;
  int port_ = 0;
  std::atomic<int> posts_{0};
};

// The server drops idle keep-alive connections after 1 s.
class HttpsKeepAliveTest : public HttpsTest {
 protected:
  HttpsKeepAliveTest() { keep_alive_timeout_seconds_ = 1; }
};

// Anonymous callers: 3 at once, then 1 per 10 s.
class HttpsAnonymousLimitTest : public HttpsTest {
 protected:
  HttpsAnonymousLimitTest() { anonymous_per_second_ = 0.1; }
};

TEST_F(HttpsAnonymousLimitTest, AnonymousCallersAreRateLimitedAuthenticatedOnesAreNot) {
  auto anonymous = Client(nullptr);
  for (int i = 0; i < 3; ++i) ASSERT_OK(anonymous->Post("/count", json::object())) << i;
  const int before = posts_.load();
  EXPECT_EQ(before, 3);
  EXPECT_STATUS(anonymous->Post("/count", json::object()), StatusCode::kResourceExhausted,
                "rate_limited: too many requests without a client certificate; retry in 10 s");
  EXPECT_EQ(posts_.load(), before);  // the handler never ran
  // The answer carries Retry-After.
  httplib::SSLClient raw("127.0.0.1", port_);
  raw.enable_server_certificate_verification(false);
  auto r = raw.Post("/count", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "10");
  // mTLS callers are not limited.
  auto portal = Client(&TestPki().portal);
  for (int i = 0; i < 20; ++i) ASSERT_OK(portal->Post("/count", json::object())) << i;
  EXPECT_EQ(posts_.load(), 23);
}

TEST(HttpsServerCreate, RejectsNegativeAnonymousLimit) {
  HttpsServer::Options options;
  options.cert_pem = TestPki().server.cert_pem;
  options.key_pem = TestPki().server.key_pem.Clone();
  options.anonymous_per_second = -1;
  EXPECT_STATUS(HttpsServer::Create(std::move(options)), StatusCode::kInvalidArgument,
                "must not be negative");
}

TEST_F(HttpsTest, BindsAnEphemeralPort) {
  EXPECT_GT(port_, 0);
  EXPECT_EQ(server_->port(), port_);
}

TEST_F(HttpsTest, MutualTlsExposesVerifiedPeer) {
  auto client = Client(&TestPki().portal);
  auto result = client->Post("/echo", json{{"x", 1}});
  ASSERT_OK(result);
  EXPECT_EQ((*result)["authenticated"], true);
  EXPECT_EQ((*result)["cn"], "portal-1");
  EXPECT_EQ((*result)["ou"], "portal");
  EXPECT_EQ((*result)["fingerprint"].get<std::string>().size(), 64u);
  EXPECT_EQ((*result)["body"]["x"], 1);
}

TEST_F(HttpsTest, AnonymousClientIsNotAuthenticated) {
  auto client = Client(nullptr);
  auto result = client->Post("/echo", json::object());
  ASSERT_OK(result);
  EXPECT_EQ((*result)["authenticated"], false);
  EXPECT_EQ((*result)["cn"], "");
}

TEST_F(HttpsTest, ClientCertFromOtherCaIsRejectedInHandshake) {
  auto client = Client(&TestPki().stranger);
  EXPECT_STATUS(client->Post("/echo", json::object()), StatusCode::kUnavailable,
                "request failed");
}

TEST_F(HttpsTest, ServerFromUnpinnedCaIsRejected) {
  auto client = Client(&TestPki().portal, TestPki().other_ca.cert_pem);
  EXPECT_STATUS(client->Get("/items/a1"), StatusCode::kUnavailable, "request failed");
}

// Sets an environment variable for one scope and restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = ::getenv(name);
    if (old != nullptr) old_ = old;
    had_ = old != nullptr;
    if (value != nullptr) {
      ::setenv(name, value, 1);
    } else {
      ::unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_, old_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

// The server's CA is in the system trust store (OpenSSL's default paths,
// here SSL_CERT_FILE) but the client pins another CA: only the pinned CA
// counts.
TEST_F(HttpsTest, SystemTrustStoreIsNeverConsulted) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.File("system.pem"), TestPki().ca.cert_pem);
  ScopedEnv file("SSL_CERT_FILE", dir.File("system.pem").c_str());
  ScopedEnv path("SSL_CERT_DIR", dir.path().c_str());
  auto client = Client(&TestPki().portal, TestPki().other_ca.cert_pem);
  EXPECT_STATUS(client->Get("/items/a1"), StatusCode::kUnavailable, "request failed");
  // The same environment with the right pin connects.
  ASSERT_OK(Client(&TestPki().portal)->Get("/items/a1"));
}

// A server whose certificate chains to the pinned CA but names another
// host ("kms.example", no IP address) is refused; the same client reaches
// the server whose certificate names 127.0.0.1.
TEST_F(HttpsTest, ServerCertificateMustNameTheHost) {
  auto misnamed = IssueLeaf(TestPki().ca, {.common_name = "127.0.0.1", .organizational_unit = "kms",
                                           .dns_names = {"kms.example"}, .server = true});
  ASSERT_OK(misnamed);
  HttpsServer::Options options;
  options.cert_pem = misnamed->cert_pem;
  options.key_pem = misnamed->key_pem.Clone();
  auto server = HttpsServer::Create(std::move(options));
  ASSERT_OK(server);
  (*server)->Get("/ping", [](const Request&) -> StatusOr<json> { return json{{"ok", true}}; });
  auto port = (*server)->Start();
  ASSERT_OK(port);
  HttpsClient::Options o;
  o.port = *port;
  o.ca_pem = TestPki().ca.cert_pem;
  o.timeout_seconds = 5;
  auto client = HttpsClient::Create(std::move(o));
  ASSERT_OK(client);
  EXPECT_STATUS((*client)->Get("/ping"), StatusCode::kUnavailable, "request failed");
  ASSERT_OK(Client(nullptr)->Get("/items/a1"));
}

TEST_F(HttpsTest, PathParamsReachHandler) {
  auto result = Client(nullptr)->Get("/items/abc9");
  ASSERT_OK(result);
  EXPECT_EQ((*result)["id"], "abc9");
}

// Routes are matched against their regex only when the path has the
// pattern's literal prefix and suffix: patterns whose literals are escaped,
// quantified, alternated or anchored must still match exactly what the
// regex matches.
TEST(HttpsRoutes, PatternsMatchExactlyWhatTheirRegexMatches) {
  HttpsServer::Options options;
  options.cert_pem = TestPki().server.cert_pem;
  options.key_pem = TestPki().server.key_pem.Clone();
  options.client_ca_pem = TestPki().ca.cert_pem;
  auto server = HttpsServer::Create(std::move(options));
  ASSERT_OK(server);
  const std::vector<std::string> patterns = {
      "/lit",          R"(/num/\d+)",      R"(/dot\.json)",      "/ab+c",
      "/x(y|z)/end",   "/p|/q",           "^/anch/[a-z]{1,3}$", "/opt/?",
      "/same/same",    R"(/esc/\w)",        "/many/(a|b)(/c)?"};
  for (size_t i = 0; i < patterns.size(); ++i) {
    (*server)->Get(patterns[i], [i](const Request&) -> StatusOr<json> { return json{{"route", i}}; });
  }
  auto port = (*server)->Start();
  ASSERT_OK(port);
  HttpsClient::Options co;
  co.port = *port;
  co.ca_pem = TestPki().ca.cert_pem;
  co.timeout_seconds = 5;
  auto client = HttpsClient::Create(std::move(co));
  ASSERT_OK(client);
  const std::vector<std::pair<std::string, int>> cases = {
      {"/lit", 0},       {"/lit/", -1},     {"/num/42", 1},     {"/num/", -1},     {"/num/4a", -1},
      {"/dot.json", 2},  {"/dotxjson", -1}, {"/abbbc", 3},      {"/ac", -1},       {"/xy/end", 4},
      {"/xz/end", 4},    {"/x/end", -1},    {"/p", 5},          {"/q", 5},         {"/anch/ab", 6},
      {"/anch/abcd", -1}, {"/opt", 7},      {"/opt/", 7},       {"/same/same", 8}, {"/same", -1},
      {"/esc/w", 9},     {"/esc/_", 9},     {"/esc/-", -1},     {"/many/a", 10},    {"/many/b/c", 10}, {"/many/c", -1}};
  for (const auto& [path, route] : cases) {
    SCOPED_TRACE(path);
    auto got = (*client)->Get(path);
    if (route < 0) {
      EXPECT_STATUS(got, StatusCode::kNotFound, "no such route");
    } else {
      ASSERT_OK(got);
      EXPECT_EQ((*got)["route"], route) << path;
    }
  }
  (*server)->Stop();
}

TEST_F(HttpsTest, HandlerErrorBecomesStatusAndErrorBody) {
  EXPECT_STATUS(Client(nullptr)->Get("/items/missing"), StatusCode::kNotFound, "no item missing");
}

TEST_F(HttpsTest, UnknownRouteIs404WithErrorBody) {
  EXPECT_STATUS(Client(nullptr)->Get("/nope"), StatusCode::kNotFound, "no such route");
}

TEST_F(HttpsTest, MalformedJsonIs400) {
  EXPECT_STATUS(Client(nullptr)->PostRaw("/echo", "{\"x\":", "application/json"),
                StatusCode::kInvalidArgument, "malformed JSON");
}

TEST_F(HttpsTest, DeeplyNestedJsonIs400) {
  std::string deep(1000, '[');
  EXPECT_STATUS(Client(nullptr)->PostRaw("/echo", deep, "application/json"),
                StatusCode::kInvalidArgument, "nested too deeply");
}

TEST_F(HttpsTest, WrongFieldTypeIs400) {
  EXPECT_STATUS(Client(nullptr)->Post("/typed", json{{"n", "seven"}}),
                StatusCode::kInvalidArgument, "wrong type");
}

TEST_F(HttpsTest, OversizedBodyIs413AndServerKeepsServing) {
  auto client = Client(nullptr);
  std::string big = "\"" + std::string(8000, 'a') + "\"";
  EXPECT_STATUS(client->PostRaw("/echo", big, "application/json"),
                StatusCode::kResourceExhausted, "too large");
  auto fresh = Client(nullptr);
  EXPECT_OK(fresh->Get("/items/ok"));
}

// What a raw TLS client got for `request`: the answer's bytes, and whether
// the server then closed the connection (rather than the 3 s receive
// timeout running out first).
struct RawAnswer {
  std::string text;
  bool closed = false;
};
RawAnswer SendRaw(int port, const std::string& request) {
  RawAnswer out;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return out;
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  timeval tv{3, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ADD_FAILURE() << "connect failed";
    return out;
  }
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);  // the test only reads the answer
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  if (SSL_connect(ssl.get()) != 1) {
    ADD_FAILURE() << "TLS handshake failed";
    return out;
  }
  if (SSL_write(ssl.get(), request.data(), static_cast<int>(request.size())) <= 0) {
    ADD_FAILURE() << "TLS write failed";
    return out;
  }
  char buf[4096];
  while (true) {
    const int n = SSL_read(ssl.get(), buf, sizeof buf);
    if (n > 0) {
      out.text.append(buf, static_cast<size_t>(n));
      continue;
    }
    const int err = SSL_get_error(ssl.get(), n);
    // The receive timeout shows as EAGAIN; anything else ended the
    // connection (close_notify, or a plain close: "unexpected eof").
    const bool timed_out = errno == EAGAIN || errno == EWOULDBLOCK;
    out.closed = !timed_out && (err == SSL_ERROR_ZERO_RETURN || err == SSL_ERROR_SYSCALL || err == SSL_ERROR_SSL);
    return out;
  }
}

// The control for the cases below: the raw client reads a whole answer and
// sees the connection end.
TEST_F(HttpsTest, RawClientGetsAnAnswer) {
  const RawAnswer a = SendRaw(port_, "GET /items/ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(a.text.rfind("HTTP/1.1 200", 0), 0u) << a.text;
  EXPECT_TRUE(a.closed);
}

// A body the server would have to read without a bound, or past its limit,
// is refused from the headers alone: answered at once, never read, and the
// connection closed. The client sends no (or a partial) body and keeps its
// side open, so a server that waited for the body would not answer before
// the client's 3 s timeout.
TEST_F(HttpsTest, UnboundedOrOversizedBodyIsRefusedUnread) {
  const std::string head = "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
  const struct {
    std::string request, status, text;
  } cases[] = {
      {head + "Content-Length: 1073741824\r\n\r\n", "413", "too large"},
      {head + "Transfer-Encoding: chunked\r\n\r\n1000\r\n", "411", "length_required"},
      {head + "Content-Length: 12x\r\n\r\n", "400", "not a number"},
      {head + "Content-Length: -1\r\n\r\n", "400", "not a number"},
      {head + "Content-Length: 1, 1\r\n\r\n", "400", "not a number"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.request);
    const RawAnswer a = SendRaw(port_, c.request);
    EXPECT_EQ(a.text.rfind("HTTP/1.1 " + c.status, 0), 0u) << a.text;
    EXPECT_NE(a.text.find(c.text), std::string::npos) << a.text;
    EXPECT_TRUE(a.closed);
  }
  EXPECT_OK(Client(nullptr)->Get("/items/ok"));
}

// RFC 9112 §6.3: a request with neither Content-Length nor Transfer-Encoding
// has no body; a DELETE so sent (as curl and httplib send it) is served.
TEST_F(HttpsTest, DeleteWithoutContentLengthHasNoBody) {
  const RawAnswer a = SendRaw(port_, "DELETE /items/ok HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(a.text.rfind("HTTP/1.1 200", 0), 0u) << a.text;
  EXPECT_NE(a.text.find("\"deleted\":\"ok\""), std::string::npos) << a.text;
  EXPECT_TRUE(a.closed);
}

// The same for a POST (`curl -X POST URL`): served with no body; bytes after
// the header are the next request, not a body read until the peer closes.
TEST_F(HttpsTest, PostWithoutContentLengthHasNoBody) {
  const RawAnswer a = SendRaw(
      port_, "POST /count HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(a.text.rfind("HTTP/1.1 200", 0), 0u) << a.text;
  EXPECT_NE(a.text.find("\"n\":1"), std::string::npos) << a.text;
  EXPECT_TRUE(a.closed);
  const RawAnswer b =
      SendRaw(port_, "POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n{\"x\":");
  EXPECT_EQ(b.text.rfind("HTTP/1.1 200", 0), 0u) << b.text;
  EXPECT_NE(b.text.find("\"body\":null"), std::string::npos) << b.text;
}

TEST_F(HttpsTest, GetWithoutBodyAndDeleteFromTheClientAreServed) {
  EXPECT_OK(Client(nullptr)->Get("/items/ok"));
  auto deleted = Client(nullptr)->Delete("/items/ok");
  ASSERT_OK(deleted);
  EXPECT_EQ((*deleted)["deleted"], "ok");
}

// Hosts reconnect together (after a KMS restart, at boot): a burst of
// connections must queue, not be dropped (a dropped SYN is retried only
// after a second).
TEST_F(HttpsTest, BurstOfConnectionsIsQueuedNotDropped) {
  EXPECT_EQ(testing::ListenDropsInConnectBurst(port_, 200), 0);
  EXPECT_OK(Client(nullptr)->Get("/items/ok"));
}

TEST_F(HttpsTest, TextRoute) {
  auto text = Client(nullptr)->GetText("/metrics");
  ASSERT_OK(text);
  EXPECT_EQ(*text, "m 1\n");
}

TEST_F(HttpsTest, ConcurrentClients) {
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto client = Client(&TestPki().portal);
      for (int j = 0; j < 10; ++j) {
        if (client->Post("/echo", json{{"i", i}}).ok()) ++ok;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 80);
}

// The first request after the server closed the idle connection used to fail
// (the client wrote into the dead keep-alive socket).
TEST_F(HttpsKeepAliveTest, GetAfterServerClosedIdleConnectionSucceeds) {
  auto client = Client(&TestPki().portal);
  ASSERT_OK(client->Get("/items/a1"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto again = client->Get("/items/a2");
  ASSERT_OK(again);
  EXPECT_EQ((*again)["id"], "a2");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto text = client->GetText("/metrics");
  ASSERT_OK(text);
  EXPECT_EQ(*text, "m 1\n");
}

// A POST after the pause reaches the server exactly once.
TEST_F(HttpsKeepAliveTest, PostAfterServerClosedIdleConnectionRunsOnce) {
  auto client = Client(&TestPki().portal);
  auto first = client->Post("/count", json::object());
  ASSERT_OK(first);
  EXPECT_EQ((*first)["n"], 1);
  for (int round = 2; round <= 3; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    auto next = client->Post("/count", json::object());
    ASSERT_OK(next);
    EXPECT_EQ((*next)["n"], round);
  }
  EXPECT_EQ(posts_.load(), 3);
}

// Back-to-back requests keep using one connection and still work.
TEST_F(HttpsKeepAliveTest, BackToBackRequestsSucceed) {
  auto client = Client(nullptr);
  for (int i = 0; i < 12; ++i) {
    ASSERT_OK(client->Post("/count", json::object()));
    ASSERT_OK(client->Get("/items/x" + std::to_string(i)));
  }
  EXPECT_EQ(posts_.load(), 12);
}

TEST(HttpsServerCreate, RejectsMismatchedKey) {
  HttpsServer::Options options;
  options.cert_pem = TestPki().server.cert_pem;
  options.key_pem = TestPki().portal.key_pem.Clone();
  EXPECT_STATUS(HttpsServer::Create(std::move(options)), StatusCode::kInvalidArgument,
                "do not match");
}

TEST(HttpsServerCreate, RejectsGarbageCert) {
  HttpsServer::Options options;
  options.cert_pem = "not pem";
  options.key_pem = TestPki().server.key_pem.Clone();
  EXPECT_STATUS(HttpsServer::Create(std::move(options)), StatusCode::kInvalidArgument,
                "no PEM certificate");
}

TEST(HttpsClientCreate, RequiresPinnedCa) {
  HttpsClient::Options options;
  options.port = 1;
  EXPECT_STATUS(HttpsClient::Create(std::move(options)), StatusCode::kInvalidArgument,
                "CA to pin");
}

TEST(HttpsClient, ConnectionRefusedIsUnavailable) {
  HttpsClient::Options options;
  options.port = 1;
  options.ca_pem = TestPki().ca.cert_pem;
  options.timeout_seconds = 2;
  auto client = HttpsClient::Create(std::move(options));
  ASSERT_OK(client);
  EXPECT_STATUS((*client)->Get("/"), StatusCode::kUnavailable, "request failed");
}

}  // namespace
}  // namespace vmseal::net
