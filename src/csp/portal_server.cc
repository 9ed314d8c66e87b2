#include "csp/portal_server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <limits>
#include <thread>

#include "base/env.h"
#include "crypto/primitives.h"
#include "csp/abuse_guard.h"
#include "csp/accounts.h"
#include "csp/http_api.h"
#include "csp/images.h"
#include "csp/jobs.h"
#include "csp/scheduler.h"
#include "csp/sqlite_db.h"
#include "json/json.h"
#include "net/https_server.h"
#include "net/internal/body_limit.h"
#include "net/internal/listen.h"
#include "store/fs_store.h"
#include "store/s3_store.h"
#include "store/upload_sessions.h"

namespace vmseal::csp {

constexpr uint64_t kMaxJsonBodyBytes = 1 << 20;

struct PortalServer::Impl {
  Options options;
  std::unique_ptr<SqlitePortalDb> db;
  std::unique_ptr<store::ObjectStore> store;
  std::unique_ptr<store::UploadSessions> uploads;
  std::unique_ptr<Accounts> accounts;
  std::unique_ptr<ImageService> images;
  std::unique_ptr<HostRegistry> hosts;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<JobManager> jobs;
  std::unique_ptr<AbuseGuard> guard;
  std::unique_ptr<httplib::Server> http;
  std::atomic<int> listen_fd{-1};  // set when httplib creates the listening socket
  int port = 0;
  std::thread serve_thread, tick_thread;
  // Set by the serve thread when listen_after_bind returns.
  std::atomic<bool> serve_done{true};
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
};

namespace {

void SendLimited(httplib::Response& res, const Status& status) {
  res.status = HttpStatusFromCode(status.code());
  if (int64_t after = rate_limit::RetryAfterOf(status.message()); after > 0) {
    res.set_header("Retry-After", std::to_string(after));
  }
  res.set_content(DumpJson(net::ErrorBody(status)), "application/json");
}

// Rate limits, from the request line and headers only (before the body is
// read and before Argon2id or the KMS run).
httplib::Server::HandlerResponse AdmitRequest(AbuseGuard& guard, Accounts& accounts,
                                              JobManager& job_manager,
                                              const httplib::Request& req,
                                              httplib::Response& res) {
  using httplib::Server;
  if (req.method != "POST") return Server::HandlerResponse::Unhandled;
  Status admitted;
  if (req.path == "/v1/register") {
    admitted = guard.AdmitRegistration(req.remote_addr);
  } else if (req.path == "/v1/login") {
    admitted = guard.AdmitLogin(req.remote_addr);
  } else if (req.path == "/v1/launch") {
    const std::string& h = req.get_header_value("Authorization");
    if (!h.starts_with("Bearer ") || h.size() <= 7) return Server::HandlerResponse::Unhandled;
    SecretBytes token(crypto::AsBytes(std::string_view(h).substr(7)));
    auto who = accounts.Authenticate(token);
    if (!who.ok()) return Server::HandlerResponse::Unhandled;  // the route answers 401
    auto jobs = job_manager.ListJobs(*who);
    if (!jobs.ok()) return Server::HandlerResponse::Unhandled;
    int64_t in_progress = 0;
    for (const Job& j : *jobs) {
      if (j.state != JobState::kRunning && j.state != JobState::kFailed) ++in_progress;
    }
    admitted = guard.AdmitJob(who->customer_id, in_progress);
  }
  if (admitted.ok()) return Server::HandlerResponse::Unhandled;
  SendLimited(res, admitted);
  return Server::HandlerResponse::Handled;
}

// Login outcomes feed the per-address back-off; a 429 from a route (the
// per-login-id back-off in Accounts) gets its Retry-After.
void AfterRequest(AbuseGuard& guard, const httplib::Request& req, httplib::Response& res) {
  if (req.method == "POST" && req.path == "/v1/login" && res.status != 429) {
    guard.RecordLogin(req.remote_addr, res.status == 200);
  }
  if (res.status == 429 && !res.has_header("Retry-After")) {
    auto body = ParseJson(res.body);
    if (body.ok() && body->is_object() && (*body)["error"].is_object() &&
        (*body)["error"]["message"].is_string()) {
      int64_t after = rate_limit::RetryAfterOf((*body)["error"]["message"].get<std::string>());
      if (after > 0) res.set_header("Retry-After", std::to_string(after));
    }
  }
}

}  // namespace

StatusOr<std::unique_ptr<PortalServer>> PortalServer::Create(Options options,
                                                             const PackageVerifier* verifier,
                                                             KmsClient* kms) {
  if (options.data_dir.empty()) return InvalidArgumentError("--data-dir is required");
  if (verifier == nullptr || kms == nullptr) {
    return InvalidArgumentError("portal needs a package verifier and a KMS client");
  }
  const bool use_tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (!use_tls && options.bind_address != "127.0.0.1" && options.bind_address != "::1") {
    return InvalidArgumentError("plain HTTP is allowed only on a loopback address; give a TLS "
                                "certificate and key");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) return InternalError("create " + options.data_dir + ": " + ec.message());
  std::filesystem::permissions(options.data_dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  auto impl = std::make_unique<Impl>();
  ASSIGN_OR_RETURN(impl->db, SqlitePortalDb::Open(options.data_dir + "/portal.db"));
  if (!options.s3_endpoint.empty()) {
    store::S3ObjectStore::Options s3;
    s3.endpoint = options.s3_endpoint;
    s3.bucket = options.s3_bucket;
    s3.region = options.s3_region;
    s3.access_key_id = options.s3_access_key_id;
    s3.secret_access_key = options.s3_secret_access_key.Clone();
    ASSIGN_OR_RETURN(auto s3store, store::S3ObjectStore::Create(std::move(s3)));
    impl->store = std::move(s3store);
  } else {
    ASSIGN_OR_RETURN(auto fs, store::FsObjectStore::Create({options.data_dir + "/objects", nullptr}));
    impl->store = std::move(fs);
  }
  ASSIGN_OR_RETURN(impl->uploads, store::UploadSessions::Create({options.data_dir + "/staging"},
                                                                impl->store.get()));
  impl->guard = std::make_unique<AbuseGuard>(options.limits);
  Accounts::Options ao;
  ao.argon2_m_cost_kib = options.argon2_m_cost_kib;
  ao.login_failures = impl->guard->login_id_failures();
  ASSIGN_OR_RETURN(impl->accounts, Accounts::Create(ao, impl->db.get(), Clock::Real(), kms));
  ImageService::Options io;
  io.signing_keys = kms;
  ASSIGN_OR_RETURN(impl->images, ImageService::Create(io, impl->db.get(), impl->store.get(),
                                                      impl->uploads.get(), verifier, Clock::Real()));
  impl->hosts = std::make_unique<HostRegistry>(
      HostRegistry::Options{options.heartbeat_timeout_seconds}, Clock::Real());
  impl->scheduler = std::make_unique<Scheduler>(impl->hosts.get(), kms, Clock::Real());
  JobManager::Options jo;
  jo.max_attempts = options.max_attempts;
  jo.grant_ttl_seconds = options.grant_ttl_seconds;
  impl->jobs = std::make_unique<JobManager>(jo, impl->images.get(),
                                            impl->hosts.get(), impl->scheduler.get(),
                                            Clock::Real());
  if (use_tls) {
    auto ssl = std::make_unique<httplib::SSLServer>(
        options.tls_cert_file.c_str(), options.tls_key_file.c_str(),
        options.client_ca_file.empty() ? nullptr : options.client_ca_file.c_str());
    if (!ssl->is_valid()) return InvalidArgumentError("cannot load the TLS certificate or key");
    SSL_CTX_set_min_proto_version(ssl->ssl_context(), TLS1_3_VERSION);
    if (!options.client_ca_file.empty()) {
      // Customers have no certificate; hosts must present a valid one
      // (checked per route by HostIdentity).
      SSL_CTX_set_verify(ssl->ssl_context(), SSL_VERIFY_PEER, nullptr);
    }
    impl->http = std::move(ssl);
  } else {
    impl->http = std::make_unique<httplib::Server>();
  }
  net::internal::UseListenSocketOptions(impl->http.get(), &impl->listen_fd);
  // JSON bodies up to 1 MiB; an upload's PUT streams its bytes to the store
  // (its size is the upload's business), but must still declare it.
  net::internal::LimitBodies(
      impl->http.get(),
      [](const httplib::Request& req) -> uint64_t {
        const bool upload = req.method == "PUT" && req.path.rfind("/v1/uploads/", 0) == 0;
        return upload ? std::numeric_limits<uint64_t>::max() : kMaxJsonBodyBytes;
      },
      [i = impl.get()](const httplib::Request& req, httplib::Response& res) {
        return AdmitRequest(*i->guard, *i->accounts, *i->jobs, req, res);
      });
  impl->http->set_post_routing_handler(
      [i = impl.get()](const httplib::Request& req, httplib::Response& res) {
        AfterRequest(*i->guard, req, res);
      });
  impl->http->Get("/metrics", [i = impl.get()](const httplib::Request&, httplib::Response& res) {
    res.set_content(i->guard->RenderMetrics(), "text/plain; version=0.0.4");
  });
  impl->options = std::move(options);
  PortalServices svc;
  svc.accounts = impl->accounts.get();
  svc.images = impl->images.get();
  svc.jobs = impl->jobs.get();
  svc.hosts = impl->hosts.get();
  svc.store = impl->store.get();
  svc.operator_token = &impl->options.operator_token;
  svc.kms = kms;
  if (!impl->options.agent_binary_path.empty()) {
    // Opened once: a later replacement of the file on disk does not change
    // what is served (the open file keeps the original).
    ASSIGN_OR_RETURN(svc.agent_binary,
                     Env::Default()->NewRandomAccessFile(impl->options.agent_binary_path));
    ASSIGN_OR_RETURN(svc.agent_size_bytes, svc.agent_binary->Size());
    crypto::Sha256Hasher hasher;
    std::vector<uint8_t> buf(1 << 20);
    for (uint64_t off = 0; off < svc.agent_size_bytes;) {
      ASSIGN_OR_RETURN(size_t n, svc.agent_binary->Read(off, buf));
      if (n == 0) return DataLossError("agent binary shrank while hashing");
      hasher.Update(std::span<const uint8_t>(buf.data(), n));
      off += n;
    }
    svc.agent_sha256_hex = crypto::HexEncode(hasher.Finish());
  }
  RegisterPortalRoutes(*impl->http, svc);
  return std::unique_ptr<PortalServer>(new PortalServer(std::move(impl)));
}

PortalServer::PortalServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PortalServer::~PortalServer() { Stop(); }

Status PortalServer::Start() {
  Impl& i = *impl_;
  {
    std::lock_guard<std::mutex> lock(i.mu);
    if (i.stopping) return FailedPreconditionError("portal server was stopped");
    if (i.serve_thread.joinable()) return FailedPreconditionError("portal server already started");
  }
  if (i.options.port == 0) {
    i.port = i.http->bind_to_any_port(i.options.bind_address);
  } else {
    i.port = i.http->bind_to_port(i.options.bind_address, i.options.port) ? i.options.port : -1;
  }
  if (i.port <= 0) {
    return UnavailableError("cannot listen on " + i.options.bind_address + ":" +
                            std::to_string(i.options.port));
  }
  RETURN_IF_ERROR(net::internal::WidenListenBacklog(i.listen_fd, i.options.bind_address));
  i.serve_done = false;
  i.serve_thread = std::thread([&i] {
    i.http->listen_after_bind();
    i.serve_done = true;
  });
  // httplib's stop() is a no-op until the accept loop runs: return only once
  // it does (bounded), so that a Stop right after Start is never lost.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!i.http->is_running() && !i.serve_done && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!i.http->is_running()) {
    Stop();
    return InternalError("portal server did not start accepting connections");
  }
  i.tick_thread = std::thread([&i] {
    std::unique_lock<std::mutex> lock(i.mu);
    while (!i.cv.wait_for(lock, std::chrono::seconds(1), [&i] { return i.stopping; })) {
      i.jobs->Tick();
    }
  });
  return OkStatus();
}

void PortalServer::Stop() {
  Impl& i = *impl_;
  {
    std::lock_guard<std::mutex> lock(i.mu);
    i.stopping = true;
  }
  i.cv.notify_all();
  if (i.serve_thread.joinable()) {
    // httplib's stop() does nothing before the accept loop runs: call it
    // once the loop is running, then wait for listen_after_bind to return.
    bool stop_sent = false;
    while (!i.serve_done) {
      if (!stop_sent && i.http->is_running()) {
        i.http->stop();
        stop_sent = true;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    i.serve_thread.join();
  }
  if (i.tick_thread.joinable()) i.tick_thread.join();
}

int PortalServer::port() const { return impl_->port; }
bool PortalServer::tls() const { return !impl_->options.tls_cert_file.empty(); }

}  // namespace vmseal::csp
