#include "csp/portal_server.h"

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <limits>
#include <thread>

#include "base/env.h"
#include "console/console_routes.h"
#include "console/web_security.h"
#include "crypto/primitives.h"
#include "csp/abuse_guard.h"
#include "csp/accounts.h"
#include "csp/http_api.h"
#include "csp/images.h"
#include "csp/jobs.h"
#include "csp/lifecycle.h"
#include "csp/scheduler.h"
#include "csp/sqlite_db.h"
#include "json/json.h"
#include "net/https_server.h"
#include "store/fs_store.h"
#include "store/s3_store.h"
#include "store/upload_sessions.h"

namespace vmseal::csp {

constexpr uint64_t kMaxJsonBodyBytes = 1 << 20;

struct PortalServer::Impl {
  Options options;
  std::unique_ptr<PortalStore> db;
  std::unique_ptr<store::ObjectStore> store;
  std::unique_ptr<store::UploadSessions> uploads;
  std::unique_ptr<Accounts> accounts;
  std::unique_ptr<ImageService> images;
  std::unique_ptr<HostRegistry> hosts;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<JobManager> jobs;
  // Loss of trust in running VMs' hosts (csp/lifecycle.h); null without a KMS.
  std::unique_ptr<TrustWatch> trust;
  std::unique_ptr<ConsoleLogs> console_logs;
  std::unique_ptr<AbuseGuard> guard;
  std::unique_ptr<net::HttpsServer> http;
  int port = 0;
  bool started = false;
  std::thread tick_thread;
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;
};

namespace {

// Rate limits, from the request line and headers only (before the body is
// read, for uploads, and before Argon2id or the KMS run). Runs on a worker.
// The CLI's login and the console's: both feed the per-address back-off.
bool IsLoginPath(const std::string& path) {
  return path == "/v1/login" || path == "/v1/console/login";
}

Status AdmitRequest(AbuseGuard& guard, Accounts& accounts, JobManager& job_manager,
                    const net::Request& req) {
  if (req.method != "POST") return OkStatus();
  if (req.path == "/v1/register") return guard.AdmitRegistration(req.remote_address);
  if (IsLoginPath(req.path)) return guard.AdmitLogin(req.remote_address);
  if (req.path != "/v1/launch") return OkStatus();
  auto credential = console::RequestCredential(req, console::kSessionCookie);
  if (!credential.ok()) return OkStatus();  // the route answers 401 or 403
  auto who = accounts.Authenticate(credential->token);
  if (!who.ok()) return OkStatus();
  auto jobs = job_manager.ListJobs(*who);
  if (!jobs.ok()) return OkStatus();
  int64_t in_progress = 0;
  for (const Job& j : *jobs) {
    if (j.state != JobState::kRunning && j.state != JobState::kFailed) ++in_progress;
  }
  return guard.AdmitJob(who->customer_id, in_progress);
}

std::string ReadPem(const std::string& path, Status* error) {
  auto text = ReadFileToString(Env::Default(), path);
  if (!text.ok()) {
    *error = InvalidArgumentError("cannot read " + path + ": " + text.status().message());
    return "";
  }
  return *std::move(text);
}

}  // namespace

net::HttpsServer::Options PortalFrontEndDefaults() {
  net::HttpsServer::Options o;
  o.threads = 64;
  o.anonymous_per_second = 0;
  return o;
}

Status SetFrontEndLimit(net::HttpsServer::Options* o, const std::string& name, const std::string& value) {
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || end != value.data() + value.size() || v > (1u << 30)) {
    return InvalidArgumentError("front-end limit " + name + " wants a decimal number up to 2^30");
  }
  const int i = static_cast<int>(v);
  if (name == "threads") {
    o->threads = i;
  } else if (name == "read_timeout_seconds") {
    o->read_timeout_seconds = i;
  } else if (name == "min_body_bytes_per_second") {
    o->min_body_bytes_per_second = v;
  } else if (name == "max_connections") {
    o->max_connections = v;
  } else if (name == "max_connections_per_address") {
    o->max_connections_per_address = v;
  } else if (name == "reserved_authenticated_connections") {
    o->reserved_authenticated_connections = v;
  } else if (name == "max_queued_requests") {
    o->max_queued_requests = v;
  } else if (name == "max_queued_anonymous_requests") {
    o->max_queued_anonymous_requests = v;
  } else if (name == "keep_alive_timeout_seconds") {
    o->keep_alive_timeout_seconds = i;
  } else if (name == "anonymous_per_second") {
    o->anonymous_per_second = static_cast<double>(v);
  } else if (name == "anonymous_burst") {
    o->anonymous_burst = static_cast<double>(v);
  } else {
    return InvalidArgumentError("unknown front-end limit " + name);
  }
  return OkStatus();
}

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
  // SQLite in the data directory, or the PostgreSQL that replicas share.
  ASSIGN_OR_RETURN(impl->db, OpenPortalStore(options.store_url, options.data_dir + "/portal.db"));
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
    const std::string root =
        options.objects_dir.empty() ? options.data_dir + "/objects" : options.objects_dir;
    ASSIGN_OR_RETURN(auto fs, store::FsObjectStore::Create({root, nullptr}));
    impl->store = std::move(fs);
  }
  // Upload stagings live in the object store (shared by replicas); the
  // local directory is only scratch for checking an S3 staging.
  ASSIGN_OR_RETURN(impl->uploads, store::UploadSessions::Create({options.data_dir + "/staging"},
                                                                impl->store.get()));
  impl->guard = std::make_unique<AbuseGuard>(options.limits);
  Accounts::Options ao;
  ao.argon2_m_cost_kib = options.argon2_m_cost_kib;
  ao.login_failures = impl->guard->login_id_failures();
  ao.password_hashing = impl->guard->password_hashing();
  ao.password_hash_wait_seconds = impl->guard->limits().password_hash_wait_seconds;
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
  jo.lease_seconds = options.lease_seconds;
  impl->jobs = std::make_unique<JobManager>(jo, impl->images.get(),
                                            impl->hosts.get(), impl->scheduler.get(),
                                            Clock::Real());
  if (kms != nullptr && options.trust_check_interval_seconds > 0) {
    impl->trust = std::make_unique<TrustWatch>(
        TrustWatch::Options{options.trust_check_interval_seconds, options.trust_stop_timeout_seconds},
        kms, impl->jobs.get(), Clock::Real());
  }
  // Hosts and jobs live in the portal database and survive a restart.
  RETURN_IF_ERROR(impl->hosts->AttachStore(impl->db.get()));
  RETURN_IF_ERROR(impl->jobs->AttachStore(impl->db.get()));
  net::HttpsServer::Options no = std::move(options.front_end);
  no.bind_address = options.bind_address;
  no.port = options.port;
  no.max_body_bytes = kMaxJsonBodyBytes;
  no.plain_http = !use_tls;
  if (use_tls) {
    Status read;
    no.cert_pem = ReadPem(options.tls_cert_file, &read);
    std::string key = read.ok() ? ReadPem(options.tls_key_file, &read) : "";
    no.key_pem = SecretBytes(crypto::AsBytes(key));
    WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(key.data()), key.size()));
    // Customers have no certificate; hosts must present a valid one
    // (checked per route by HostIdentity).
    if (read.ok() && !options.client_ca_file.empty()) no.client_ca_pem = ReadPem(options.client_ca_file, &read);
    RETURN_IF_ERROR(read);
  }
  auto http = net::HttpsServer::Create(std::move(no));
  if (!http.ok()) return InvalidArgumentError("cannot load the TLS certificate or key: " + http.status().message());
  impl->http = *std::move(http);
  impl->http->SetAdmission([i = impl.get()](const net::Request& req) {
    return AdmitRequest(*i->guard, *i->accounts, *i->jobs, req);
  });
  // Login outcomes feed the per-address back-off (a 429 from the
  // per-login-id back-off in Accounts is not an outcome).
  impl->http->SetCompletion([i = impl.get()](const net::Request& req, int http_status) {
    if (req.method == "POST" && IsLoginPath(req.path) && http_status != 429) {
      i->guard->RecordLogin(req.remote_address, http_status == 200);
    }
  });
  impl->http->GetText("/metrics", [i = impl.get()](const net::Request&) -> StatusOr<net::TextResponse> {
    return net::TextResponse{
        i->guard->RenderMetrics() +
        "# HELP vmseal_portal_lease_renewal_failures_total Job lease renewals whose store "
        "write failed twice.\n"
        "# TYPE vmseal_portal_lease_renewal_failures_total counter\n"
        "vmseal_portal_lease_renewal_failures_total " +
        std::to_string(i->jobs->LeaseRenewalFailures()) + "\n" +
        net::RenderFrontEndMetrics(i->http->stats(), "vmseal_portal")};
  });
  impl->options = std::move(options);
  PortalServices svc;
  svc.accounts = impl->accounts.get();
  svc.images = impl->images.get();
  svc.jobs = impl->jobs.get();
  svc.hosts = impl->hosts.get();
  svc.store = impl->store.get();
  svc.operator_token = &impl->options.operator_token;
  // The relayed serial consoles live beside the images (console_logs.h).
  impl->console_logs = std::make_unique<ConsoleLogs>(impl->store.get());
  svc.console_logs = impl->console_logs.get();
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
  // The web console's pages, and the security header fields of every answer.
  console::RegisterConsoleRoutes(*impl->http);
  return std::unique_ptr<PortalServer>(new PortalServer(std::move(impl)));
}

PortalServer::PortalServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PortalServer::~PortalServer() { Stop(); }

Status PortalServer::Start() {
  Impl& i = *impl_;
  {
    std::lock_guard<std::mutex> lock(i.mu);
    if (i.stopping) return FailedPreconditionError("portal server was stopped");
    if (i.started) return FailedPreconditionError("portal server already started");
    i.started = true;
  }
  auto port = i.http->Start();
  if (!port.ok()) {
    return UnavailableError("cannot listen on " + i.options.bind_address + ":" +
                            std::to_string(i.options.port));
  }
  i.port = *port;
  i.tick_thread = std::thread([&i] {
    std::unique_lock<std::mutex> lock(i.mu);
    while (!i.cv.wait_for(lock, std::chrono::seconds(1), [&i] { return i.stopping; })) {
      lock.unlock();  // placements ask the KMS: not under the portal's lock
      i.jobs->Tick();
      if (i.trust) i.trust->Tick();
      lock.lock();
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
  if (i.http) i.http->Stop();
  if (i.tick_thread.joinable()) i.tick_thread.join();
}

net::HttpsServer::Stats PortalServer::front_end_stats() const { return impl_->http->stats(); }

int PortalServer::port() const { return impl_->port; }
bool PortalServer::tls() const { return !impl_->options.tls_cert_file.empty(); }

}  // namespace vmseal::csp
