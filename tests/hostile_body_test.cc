// Attacker test (issue 16): bodies built to crash or exhaust a JSON parser —
// nested 200,000 deep, nested one level past the limit, and larger than the
// body limit — sent to every JSON route of the real portal and the real KMS
// processes. Each must be refused with 400 (413 for the oversized body) and
// both servers must stay up and keep serving. The nested body once killed the
// portal: nlohmann's dump() recursed once per level.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "testing/test_util.h"
#include "internal/portal_fixture.h"

namespace vmseal {
namespace {

using json = nlohmann::json;

std::string Nested(size_t depth) {
  return "{\"policy\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
}

struct Hostile {
  const char* what;
  std::string body;
  int want_status;
};

std::vector<Hostile> HostileBodies() {
  return {
      {"nested 200,000 deep (the portal crash)", Nested(200000), 400},
      {"nested 65 deep (one past the limit)", Nested(64), 400},
      {"2 MiB (over the 1 MiB body limit)", "{\"a\":\"" + std::string(2 << 20, 'a') + "\"}", 413},
  };
}

// The status of `method path` with `body`, or -1 when no answer came.
int Send(httplib::Client& c, const std::string& method, const std::string& path,
         const std::string& body, const httplib::Headers& headers = {}) {
  httplib::Result r = method == "PUT"
                          ? c.Put(path, headers, body, "application/json")
                          : c.Post(path, headers, body, "application/json");
  return r ? r->status : -1;
}

// The status line's code of the answer to `method path` with only headers
// announcing `content_length` bytes sent (no body): a server that refuses
// from the headers answers without reading; -1 when no answer came.
int SendHeadersOnly(int port, const std::string& method, const std::string& path,
                    const httplib::Headers& headers, size_t content_length) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                    "Content-Type: application/json\r\nContent-Length: " +
                    std::to_string(content_length) + "\r\n";
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  req += "\r\n";
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return -1;
  }
  char buf[64] = {};
  ssize_t n = ::recv(fd, buf, sizeof(buf) - 1, 0);
  ::close(fd);
  if (n < 12 || std::string_view(buf, 9) != "HTTP/1.1 ") return -1;
  return std::atoi(buf + 9);
}

class HostileBodyTest : public ::vmseal::testing::PortalFixture {
 protected:
  void SetUp() override {
    StartServers();
    ASSERT_OK(kms_.IssueIdentity("host", "host-a"));
  }
  // A KMS client: anonymous TLS when `identity` is empty, else mTLS as it.
  std::unique_ptr<httplib::SSLClient> Kms(const std::string& identity) {
    std::unique_ptr<httplib::SSLClient> c;
    if (identity.empty()) {
      c = std::make_unique<httplib::SSLClient>("127.0.0.1", kms_.process->port());
    } else {
      c = std::make_unique<httplib::SSLClient>("127.0.0.1", kms_.process->port(),
                                               kms_.dir + "/" + identity + ".pem",
                                               kms_.dir + "/" + identity + "-key.pem");
    }
    c->set_ca_cert_path(kms_.ca());
    c->enable_server_certificate_verification(true);
    c->set_read_timeout(60, 0);
    c->set_write_timeout(60, 0);
    return c;
  }
  void ExpectBothServersServe() {
    httplib::Client c = Portal();
    auto ca = c.Get("/v1/kms/ca");
    ASSERT_TRUE(ca) << "portal died; log:\n" << portal_->Log();
    EXPECT_EQ(ca->status, 200);
    auto k = Kms("");
    auto health = k->Get("/healthz");
    ASSERT_TRUE(health) << "KMS died; log:\n" << kms_.process->Log();
    EXPECT_EQ(health->status, 200);
  }
};

TEST_F(HostileBodyTest, EveryPortalJsonRouteRefusesAndThePortalStaysUp) {
  httplib::Headers auth = Customer();
  const std::string upload = std::string(32, '0');
  const std::string image = UploadImage(auth);
  // Anonymous routes, then the customer's routes (authenticated, so the
  // body is what is refused, not the caller).
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"POST", "/v1/register"},
      {"POST", "/v1/login"},
      {"POST", "/v1/uploads/" + upload + "/commit"},
      {"PUT", "/v1/images/" + image + "/kms-policy"},
      {"POST", "/v1/launch"},
  };
  for (const Hostile& h : HostileBodies()) {
    for (const auto& [method, path] : routes) {
      if (h.want_status == 413) {
        // Refused from its headers: the body is never read (sending it
        // would race the server's close of the connection).
        EXPECT_EQ(SendHeadersOnly(portal_->port(), method, path, auth, h.body.size()), 413)
            << method << " " << path << " with " << h.what;
        continue;
      }
      httplib::Client c = Portal();
      EXPECT_EQ(Send(c, method, path, h.body, auth), h.want_status)
          << method << " " << path << " with " << h.what;
    }
    ExpectBothServersServe();
  }
  // The customer's session still works: nothing was half-applied.
  httplib::Client c = Portal();
  auto images = c.Get("/v1/images", auth);
  ASSERT_TRUE(images);
  EXPECT_EQ(images->status, 200);
  json listed = json::parse(images->body, nullptr, false);
  ASSERT_EQ(listed["images"].size(), 1u);
  EXPECT_EQ(listed["images"][0]["image_id"], image);
}

// RFC 9112 §6.3: a POST without Content-Length has no body. `curl -X POST`
// sends none; the portal used to answer it 411.
TEST_F(HostileBodyTest, CurlPostWithoutABodyIsServed) {
  httplib::Headers auth = Customer();
  std::string out;
  ASSERT_EQ(vmseal::testing::RunCommand(
                {"curl", "-sS", "-X", "POST", "-o", "-", "-w", "\nHTTP %{http_code}\n", "-H",
                 auth.begin()->first + ": " + auth.begin()->second,
                 "http://127.0.0.1:" + std::to_string(portal_->port()) + "/v1/uploads"},
                &out, 30),
            0)
      << out;
  EXPECT_NE(out.find("HTTP 201"), std::string::npos) << out;
  EXPECT_NE(out.find("\"upload_id\""), std::string::npos) << out;
}

TEST_F(HostileBodyTest, EveryKmsJsonRouteRefusesAndTheKmsStaysUp) {
  // The KMS parses the body before any route looks at the caller, so an
  // anonymous TLS client reaches the parser; so do the portal and a host.
  const std::vector<std::pair<std::string, std::string>> routes = {
      {"POST", "/v1/customers/alice/keys"},
      {"POST", "/v1/hosts/host-a/nonces"},
      {"POST", "/v1/hosts/host-a/enroll"},
      {"POST", "/v1/hosts/host-a/activate"},
      {"POST", "/v1/hosts/host-a/attestations"},
      {"POST", "/v1/hosts/host-a/releases"},
      {"PUT", "/v1/hosts/host-a/tags"},
      {"POST", "/v1/placement-check"},
      {"PUT", "/v1/flavors/good"},
      {"POST", "/v1/flavors/good/from-host/host-a"},
      {"PUT", "/v1/policies/_default"},
      {"PUT", "/v1/policies/alice/img-1"},
  };
  for (const std::string identity : {"", "portal", "host-a"}) {
    for (const Hostile& h : HostileBodies()) {
      for (const auto& [method, path] : routes) {
        auto k = Kms(identity);
        httplib::Result r = method == "PUT" ? k->Put(path, h.body, "application/json")
                                            : k->Post(path, h.body, "application/json");
        ASSERT_TRUE(r) << method << " " << path << " as '" << identity << "' with " << h.what
                       << ": no answer; KMS log:\n"
                       << kms_.process->Log();
        EXPECT_EQ(r->status, h.want_status)
            << method << " " << path << " as '" << identity << "' with " << h.what;
      }
      ExpectBothServersServe();
    }
  }
  // Nothing was written: the audit log holds no record of a refused body.
  auto k = Kms("operator");
  auto verify = k->Get("/v1/audit/verify");
  ASSERT_TRUE(verify);
  EXPECT_EQ(verify->status, 200) << verify->body;
}

}  // namespace
}  // namespace vmseal
