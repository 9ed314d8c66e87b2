// HttpsServer's streamed bodies, file answers with Range, hooks and plain
// HTTP mode (issue 16: what the portal needs of the front end), over real
// sockets on loopback.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "base/env.h"
#include "net/https_server.h"
#include "testing/test_util.h"

namespace vmseal::net {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string RandomBytes(size_t n) {
  std::mt19937 rng(7);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// Records what a streamed route received.
struct Received {
  std::mutex mu;
  std::string bytes;
  std::vector<size_t> pieces;
  int sinks = 0;
};

class RecordingSink : public BodySink {
 public:
  RecordingSink(Received* r, int64_t fail_after_bytes) : r_(r), fail_after_(fail_after_bytes) {}
  Status Write(std::string_view bytes) override {
    std::lock_guard<std::mutex> lock(r_->mu);
    if (fail_after_ >= 0 && static_cast<int64_t>(r_->bytes.size()) >= fail_after_) {
      return FailedPreconditionError("stale offset");
    }
    r_->bytes.append(bytes);
    r_->pieces.push_back(bytes.size());
    return OkStatus();
  }
  StatusOr<json> Finish() override {
    std::lock_guard<std::mutex> lock(r_->mu);
    return json{{"received", r_->bytes.size()}};
  }

 private:
  Received* const r_;
  const int64_t fail_after_;
};

class HttpsStreamTest : public ::testing::Test {
 protected:
  void Start(int threads = 4) {
    // The server may close while a refused body is still being written.
    ::signal(SIGPIPE, SIG_IGN);
    HttpsServer::Options o;
    o.plain_http = true;
    o.threads = threads;
    o.max_body_bytes = 1024;
    o.read_timeout_seconds = 5;
    auto s = HttpsServer::Create(std::move(o));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    server_ = *std::move(s);
    testing::WriteFileOrDie(dir_.File("file"), data_);
    server_->GetFile("/file", [this](const Request&) -> StatusOr<FileResponse> {
      ASSIGN_OR_RETURN(auto f, Env::Default()->NewRandomAccessFile(dir_.File("file")));
      FileResponse r;
      r.size_bytes = data_.size();
      r.file = std::shared_ptr<RandomAccessFile>(std::move(f));
      r.headers.emplace_back("X-Content-SHA256", "abc");
      return r;
    });
    server_->Stream("PUT", "/upload/(ok|refuse|fail)", [this](const Request& r) -> StatusOr<std::unique_ptr<BodySink>> {
      if (r.path_params[0] == "refuse") return PermissionDeniedError("not yours");
      std::lock_guard<std::mutex> lock(received_.mu);
      ++received_.sinks;
      return std::unique_ptr<BodySink>(new RecordingSink(&received_, r.path_params[0] == "fail" ? 1 : -1));
    }, 16 << 20);
    server_->Stream("PUT", "/small", [this](const Request&) -> StatusOr<std::unique_ptr<BodySink>> {
      std::lock_guard<std::mutex> lock(received_.mu);
      ++received_.sinks;
      return std::unique_ptr<BodySink>(new RecordingSink(&received_, -1));
    }, 1 << 20);
    server_->Json("POST", "/accepted", [](const Request& r) -> StatusOr<json> {
      return json{{"who", r.remote_address}, {"auth", r.Header("authorization")}};
    }, 202);
    server_->Json("POST", "/missing", [](const Request&) -> StatusOr<json> { return NotFoundError("no such thing"); });
    server_->SetErrorBody([](const Status& status) { return json{{"custom", status.message()}}; });
    server_->SetAdmission([](const Request& r) -> Status {
      if (r.Header("X-Flood") == "1") return ResourceExhaustedError("rate_limited: slow down; retry in 7 s");
      return OkStatus();
    });
    server_->SetCompletion([this](const Request& r, int status) {
      std::lock_guard<std::mutex> lock(received_.mu);
      completions_.push_back(r.path + " " + std::to_string(status));
    });
    auto port = server_->Start();
    ASSERT_TRUE(port.ok());
    client_ = std::make_unique<httplib::Client>("127.0.0.1", *port);
    client_->set_read_timeout(20, 0);
  }

  testing::TempDir dir_;
  const std::string data_ = RandomBytes((3 << 20) + 77);
  Received received_;
  std::vector<std::string> completions_;
  std::unique_ptr<HttpsServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(HttpsStreamTest, PlainHttpServesJsonWithItsStatusHeadersAndAddress) {
  Start();
  auto r = client_->Post("/accepted", {{"Authorization", "Bearer t"}}, "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 202);
  EXPECT_EQ(json::parse(r->body)["who"], "127.0.0.1");
  EXPECT_EQ(json::parse(r->body)["auth"], "Bearer t");
}

TEST_F(HttpsStreamTest, ErrorsUseTheConfiguredErrorBody) {
  Start();
  auto r = client_->Post("/missing", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["custom"], "no such thing");
}

TEST_F(HttpsStreamTest, AdmissionRefusalIsTheAnswerWithRetryAfterAndCompletionSeesIt) {
  Start();
  auto r = client_->Post("/accepted", {{"X-Flood", "1"}}, "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 429);
  EXPECT_EQ(r->get_header_value("Retry-After"), "7");
  std::lock_guard<std::mutex> lock(received_.mu);
  ASSERT_EQ(completions_.size(), 1u);
  EXPECT_EQ(completions_[0], "/accepted 429");
}

TEST_F(HttpsStreamTest, FileRouteServesWholeRangedSuffixAndHead) {
  Start();
  const uint64_t size = data_.size();
  auto whole = client_->Get("/file");
  ASSERT_TRUE(whole);
  EXPECT_EQ(whole->status, 200);
  EXPECT_TRUE(whole->body == data_);
  EXPECT_EQ(whole->get_header_value("X-Content-SHA256"), "abc");
  struct Case {
    std::string header;
    int status;
    uint64_t first, length;
  };
  for (const Case& k : {Case{"bytes=0-0", 206, 0, 1}, Case{"bytes=10-1048586", 206, 10, 1048577},
                        Case{"bytes=-5", 206, size - 5, 5}, Case{"bytes=3145728-", 206, 3145728, size - 3145728},
                        Case{"bytes=100-" + std::to_string(size + 9), 206, 100, size - 100},
                        Case{"bytes=0-1,5-6", 200, 0, size}, Case{"lines=1-2", 200, 0, size},
                        Case{"bytes=9-3", 200, 0, size}}) {
    SCOPED_TRACE(k.header);
    auto r = client_->Get("/file", {{"Range", k.header}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, k.status);
    EXPECT_TRUE(r->body == data_.substr(k.first, k.length));
  }
  auto past = client_->Get("/file", {{"Range", "bytes=" + std::to_string(size) + "-"}});
  ASSERT_TRUE(past);
  EXPECT_EQ(past->status, 416);
  EXPECT_EQ(past->get_header_value("Content-Range"), "bytes */" + std::to_string(size));
  auto head = client_->Head("/file");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->get_header_value("Content-Length"), std::to_string(size));
  EXPECT_TRUE(head->body.empty());
  // The connection stays usable after a file answer (keep-alive).
  auto again = client_->Post("/accepted", "{}", "application/json");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 202);
}

TEST_F(HttpsStreamTest, StreamedBodyReachesTheSinkInOrderInBoundedPieces) {
  Start();
  const std::string body = RandomBytes((9 << 20) + 3);
  auto r = client_->Put("/upload/ok", body, "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(r->body)["received"], body.size());
  std::lock_guard<std::mutex> lock(received_.mu);
  EXPECT_TRUE(received_.bytes == body);
  ASSERT_GE(received_.pieces.size(), 3u);
  for (size_t p : received_.pieces) EXPECT_LE(p, size_t{4} << 20);
}

TEST_F(HttpsStreamTest, EmptyStreamedBodyIsFinishedAtOnce) {
  Start();
  auto r = client_->Put("/upload/ok", "", "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["received"], 0);
}

TEST_F(HttpsStreamTest, RefusedStreamIsAnsweredBeforeItsBodyIsRead) {
  Start();
  auto r = client_->Put("/upload/refuse", std::string(8 << 20, 'x'), "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(json::parse(r->body)["custom"], "not yours");
  std::lock_guard<std::mutex> lock(received_.mu);
  EXPECT_EQ(received_.sinks, 0);
  EXPECT_TRUE(received_.bytes.empty());
}

TEST_F(HttpsStreamTest, SinkErrorEndsTheRequestWithIt) {
  Start();
  auto r = client_->Put("/upload/fail", std::string(10 << 20, 'x'), "application/octet-stream");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 412);
  EXPECT_EQ(json::parse(r->body)["custom"], "stale offset");
  std::lock_guard<std::mutex> lock(received_.mu);
  EXPECT_EQ(received_.pieces.size(), 1u);  // the second piece was refused, the rest never read
}

TEST_F(HttpsStreamTest, StreamedBodyOverItsRouteLimitIs413AndJsonOverTheServerLimitToo) {
  Start();
  auto big = client_->Put("/small", std::string((1 << 20) + 1, 'x'), "application/octet-stream");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  auto json_big = client_->Post("/accepted", std::string(2048, ' '), "application/json");
  ASSERT_TRUE(json_big);
  EXPECT_EQ(json_big->status, 413);
  std::lock_guard<std::mutex> lock(received_.mu);
  EXPECT_EQ(received_.sinks, 0);
}

// A client that asks for a file and never reads it holds a socket, not the
// only worker: another request is answered at once.
TEST_F(HttpsStreamTest, ClientThatDoesNotReadAFileHoldsNoWorker) {
  Start(/*threads=*/1);
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  int small = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(server_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  const std::string get = "GET /file HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(::send(fd, get.data(), get.size(), MSG_NOSIGNAL), static_cast<ssize_t>(get.size()));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto t = Clock::now();
  auto r = client_->Post("/accepted", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 202);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t).count(), 1.0);
  ::close(fd);
}

}  // namespace
}  // namespace vmseal::net
