#include "host/portal_client.h"

#include <fcntl.h>
#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "json/json.h"
#include "net/https_client.h"
#include "net/internal/tls_util.h"

namespace vmseal::host {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxErrorBodyBytes = 64 * 1024;
constexpr size_t kFetchWriteBytes = size_t{4} << 20;

// Writes and hashes fetched bytes on a thread of its own, so that the TLS
// reads (and their decryption) go on meanwhile; at most two buffers wait.
class BackgroundAppender {
 public:
  BackgroundAppender(WritableFile* file, crypto::Sha256Hasher* hasher)
      : file_(file), hasher_(hasher), thread_([this] { Loop(); }) {}
  ~BackgroundAppender() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // Queues `bytes` (waits while two buffers are queued); false after a
  // write failed (Drain says why).
  bool Append(std::vector<uint8_t> bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return queue_.size() < 2 || !error_.ok(); });
    if (!error_.ok()) return false;
    queue_.push_back(std::move(bytes));
    cv_.notify_all();
    return true;
  }

  // Waits until every queued buffer is written and hashed; the first error.
  Status Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return (queue_.empty() && !busy_) || !error_.ok(); });
    return error_;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return done_ || !queue_.empty(); });
      if (queue_.empty()) return;  // done_
      std::vector<uint8_t> bytes = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lock.unlock();
      Status s = file_->Append(bytes);
      if (s.ok()) hasher_->Update(bytes);
      lock.lock();
      busy_ = false;
      if (!s.ok() && error_.ok()) error_ = s.WithPrefix("package fetch: write");
      cv_.notify_all();
    }
  }

  WritableFile* const file_;
  crypto::Sha256Hasher* const hasher_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<uint8_t>> queue_;
  bool busy_ = false;
  bool done_ = false;
  Status error_;
  std::thread thread_;  // last: starts after the members it uses
};

struct ParsedUrl {
  std::string host;
  int port = 443;
};

StatusOr<ParsedUrl> ParseHttpsUrl(const std::string& url) {
  constexpr std::string_view kScheme = "https://";
  if (!url.starts_with(kScheme)) {
    return InvalidArgumentError("portal url must start with https:// (got '" + url + "')");
  }
  std::string rest = url.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.empty() || rest.find('/') != std::string::npos) {
    return InvalidArgumentError("portal url must be https://host[:port]");
  }
  ParsedUrl out;
  size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    std::string port = rest.substr(colon + 1);
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (port.empty() || *end != '\0' || p <= 0 || p > 65535) {
      return InvalidArgumentError("portal url has a bad port");
    }
    out.port = static_cast<int>(p);
    rest.resize(colon);
  }
  if (rest.empty()) return InvalidArgumentError("portal url has no host");
  out.host = rest;
  return out;
}

// The Status an error answer of the portal stands for: the code named in
// {"error":{"code"}} (else the HTTP status's) and its message.
Status StatusFromErrorAnswer(int http_status, const std::string& body) {
  StatusCode code = CodeFromHttpStatus(http_status);
  std::string message = "HTTP " + std::to_string(http_status);
  auto parsed = ParseJson(body);
  json j = parsed.ok() ? *std::move(parsed) : json();
  if (j.is_object() && j.contains("error") && j["error"].is_object()) {
    const json& err = j["error"];
    if (err.contains("message") && err["message"].is_string()) message = err["message"];
    if (err.contains("code") && err["code"].is_string()) {
      const std::string name = err["code"];
      for (int c = 1; c <= 16; ++c) {
        auto candidate = static_cast<StatusCode>(c);
        std::string canonical(StatusCodeName(candidate));
        std::string lower = canonical;
        for (char& ch : lower) ch = static_cast<char>(std::tolower(ch));
        if (name == canonical || name == lower) code = candidate;
      }
    }
  }
  if (code == StatusCode::kOk) code = StatusCode::kUnknown;
  return Status(code, message);
}

// "bytes <first>-<last>/<total>" -> first and total (total 0 when "*").
bool ParseContentRange(const std::string& value, uint64_t* first, uint64_t* total) {
  unsigned long long a = 0, b = 0, t = 0;
  if (std::sscanf(value.c_str(), "bytes %llu-%llu/%llu", &a, &b, &t) == 3) {
    *first = a;
    *total = t;
    return true;
  }
  if (std::sscanf(value.c_str(), "bytes %llu-%llu/*", &a, &b) == 2) {
    *first = a;
    *total = 0;
    return true;
  }
  return false;
}

std::string ToLower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

using ClientPtr = std::unique_ptr<httplib::SSLClient>;
using ClientFactory = std::function<StatusOr<ClientPtr>()>;

// "bytes <first>-<last>/<total>" with a known total.
bool ParseFullContentRange(const std::string& value, uint64_t* first, uint64_t* last,
                           uint64_t* total) {
  unsigned long long a = 0, b = 0, t = 0;
  char tail = 0;
  if (std::sscanf(value.c_str(), "bytes %llu-%llu/%llu%c", &a, &b, &t, &tail) != 3) return false;
  *first = a;
  *last = b;
  *total = t;
  return a <= b && b < t;
}

// pwrite of all of `data` at `offset`.
Status WriteAt(int fd, const char* data, size_t n, uint64_t offset) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, data, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "write", "fetched package");
    }
    data += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return OkStatus();
}

// One ranged GET on `client`: bytes [first, last] of `path`, written to
// `fd` at their own offsets as they arrive (from first + *got; *got counts
// what reached the file, also when the transfer breaks). The answer must be
// 206 for exactly that range of a `total`-byte object announcing `digest`.
// UNAVAILABLE (a broken connection, a 5xx) may be retried from *got; any
// other error may not. `stage` gathers httplib's 4 KiB reads into writes of
// its capacity: small enough to be written while still in the CPU cache,
// large enough to spare a syscall per TLS read.
Status GetRange(httplib::SSLClient& client, const std::string& path, uint64_t first,
                uint64_t last, uint64_t total, const std::string& digest, int fd,
                std::vector<uint8_t>* stage, size_t* got) {
  httplib::Headers headers = {
      {"Range", "bytes=" + std::to_string(first + *got) + "-" + std::to_string(last)}};
  int http_status = 0;
  std::string error_body;
  Status stop;
  const size_t len = static_cast<size_t>(last - first + 1);
  size_t staged = 0;
  auto flush = [&]() -> Status {
    if (staged == 0) return OkStatus();
    RETURN_IF_ERROR(WriteAt(fd, reinterpret_cast<const char*>(stage->data()), staged,
                            first + *got));
    *got += staged;
    staged = 0;
    return OkStatus();
  };
  auto result = client.Get(
      path, headers,
      [&](const httplib::Response& r) {
        http_status = r.status;
        if (r.status != 206) return r.status != 200;  // 200: the whole body, refused
        uint64_t a = 0, b = 0, t = 0;
        if (!ParseFullContentRange(r.get_header_value("Content-Range"), &a, &b, &t) ||
            a != first + *got || b != last || t != total) {
          stop = DataLossError("package fetch: a range answer does not match its request");
          return false;
        }
        if (ToLower(r.get_header_value("X-Content-SHA256")) != digest) {
          stop = DataLossError("package fetch: the package changed during the download");
          return false;
        }
        return true;
      },
      [&](const char* data, size_t n) {
        if (http_status != 206) {
          if (error_body.size() < kMaxErrorBodyBytes) error_body.append(data, n);
          return true;
        }
        if (n > len - *got - staged) {
          stop = DataLossError("package fetch: a range answer is longer than its range");
          return false;
        }
        while (n > 0) {
          const size_t take = std::min(n, stage->size() - staged);
          std::memcpy(stage->data() + staged, data, take);
          staged += take;
          data += take;
          n -= take;
          if (staged == stage->size()) {
            if (Status w = flush(); !w.ok()) {
              stop = w;
              return false;
            }
          }
        }
        return true;
      });
  // What arrived before a break is kept: a resume starts after it.
  if (Status w = flush(); !w.ok() && stop.ok()) stop = w;
  if (!stop.ok()) return stop;
  if (http_status == 200) {
    return DataLossError("package fetch: the portal stopped answering ranges");
  }
  if (!result) {
    return UnavailableError("package fetch: " + httplib::to_string(result.error()) + " after " +
                            std::to_string(first + *got) + " bytes");
  }
  if (http_status != 206) {
    Status s = StatusFromErrorAnswer(http_status, error_body).WithPrefix("package fetch");
    return http_status >= 500 ? UnavailableError(s.message()) : s;
  }
  if (*got != len) return UnavailableError("package fetch: transfer ended early");
  return OkStatus();
}

// A whole-object download by parallel Range requests: `connections`
// workers each take the next `range_bytes` range and write its bytes to
// `fd` at their offsets as they arrive (no ordering between workers, no
// large buffers); a broken range is resumed from where it stopped, against
// one budget of resumes for the whole download. A hashing thread follows:
// it reads each range back in order once it is complete (from the page
// cache) into the SHA-256.
class RangedDownload {
 public:
  struct Options {
    std::string path;
    uint64_t total = 0;
    std::string digest;  // announced; every answer must repeat it
    uint64_t range_bytes = 0;
    int connections = 1;
    int max_resumes = 0;
    int64_t resume_delay_ms = 0;
  };

  RangedDownload(Options o, ClientFactory new_client, int fd, crypto::Sha256Hasher* hasher)
      : o_(std::move(o)), new_client_(std::move(new_client)), fd_(fd), hasher_(hasher) {
    ranges_ = (o_.total + o_.range_bytes - 1) / o_.range_bytes;
    done_.assign(static_cast<size_t>(ranges_), false);
  }

  // `first` is a connection already open (the probe's), used by worker 0.
  Status Run(ClientPtr first) {
    const int workers = static_cast<int>(
        std::max<uint64_t>(1, std::min<uint64_t>(ranges_, static_cast<uint64_t>(o_.connections))));
    std::thread hashing([this] { Hash(); });
    std::vector<std::thread> threads;
    for (int i = 1; i < workers; ++i) threads.emplace_back([this] { Work(nullptr); });
    Work(std::move(first));
    for (auto& t : threads) t.join();
    hashing.join();
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_.ok()) return error_;
    if (hashed_ != o_.total) return InternalError("package fetch: ranges left unhashed");
    return OkStatus();
  }

  int resumes() const { return resumes_; }
  int ranges() const { return ranges_done_; }
  int connections() const { return max_open_; }

 private:
  void Fail(Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = std::move(s);
    cv_.notify_all();
  }

  void Work(ClientPtr client) {
    if (client != nullptr) CountOpen();
    std::vector<uint8_t> stage;
    for (;;) {
      uint64_t index = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_.ok() || next_claim_ >= ranges_) return;
        index = next_claim_++;
      }
      const uint64_t offset = index * o_.range_bytes;
      const uint64_t len = std::min(o_.range_bytes, o_.total - offset);
      if (stage.empty()) stage.resize(kStageBytes);
      size_t got = 0;
      for (;;) {
        Status s;
        if (client == nullptr) {
          auto c = new_client_();
          if (c.ok()) {
            client = std::move(c).value();
            CountOpen();
          } else {
            s = c.status();
          }
        }
        if (s.ok()) {
          s = GetRange(*client, o_.path, offset, offset + len - 1, o_.total, o_.digest, fd_,
                       &stage, &got);
        }
        if (s.ok()) break;
        // A connection that failed is not used again.
        client.reset();
        if (s.code() != StatusCode::kUnavailable || !TakeResume()) return Fail(s);
        std::this_thread::sleep_for(std::chrono::milliseconds(o_.resume_delay_ms));
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_.ok()) return;
      }
      std::lock_guard<std::mutex> lock(mu_);
      done_[static_cast<size_t>(index)] = true;
      ++ranges_done_;
      cv_.notify_all();
    }
  }

  // Reads the ranges back in order as they complete, into the SHA-256.
  void Hash() {
    constexpr size_t kPiece = size_t{1} << 20;
    std::unique_ptr<uint8_t[]> buf(new uint8_t[kPiece]);
    for (uint64_t index = 0; index < ranges_; ++index) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return done_[static_cast<size_t>(index)] || !error_.ok(); });
        if (!error_.ok()) return;
      }
      const uint64_t end = std::min(o_.total, (index + 1) * o_.range_bytes);
      for (uint64_t at = index * o_.range_bytes; at < end;) {
        const size_t want = static_cast<size_t>(std::min<uint64_t>(kPiece, end - at));
        const ssize_t n = ::pread(fd_, buf.get(), want, static_cast<off_t>(at));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          return Fail(n < 0 ? ErrnoToStatus(errno, "read back", "fetched package")
                            : DataLossError("package fetch: the file is shorter than written"));
        }
        hasher_->Update({buf.get(), static_cast<size_t>(n)});
        at += static_cast<uint64_t>(n);
        std::lock_guard<std::mutex> lock(mu_);
        hashed_ = at;
      }
    }
  }

  bool TakeResume() {
    std::lock_guard<std::mutex> lock(mu_);
    if (resumes_ >= o_.max_resumes) return false;
    ++resumes_;
    return true;
  }

  void CountOpen() {
    std::lock_guard<std::mutex> lock(mu_);
    max_open_ = std::max(max_open_, ++open_);
  }

  // Per connection: TLS reads gathered into writes of this size.
  static constexpr size_t kStageBytes = size_t{256} << 10;
  const Options o_;
  const ClientFactory new_client_;
  const int fd_;
  crypto::Sha256Hasher* const hasher_;
  uint64_t ranges_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> done_;  // per range: every byte written
  uint64_t next_claim_ = 0;
  uint64_t hashed_ = 0;
  int resumes_ = 0;
  int ranges_done_ = 0;
  int open_ = 0;  // connections opened so far (a failed one is replaced)
  int max_open_ = 0;
  Status error_;
};


json TagsAsArray(const std::vector<std::string>& tags) { return tags; }

json TagsAsObject(const std::vector<std::string>& tags) {
  json out = json::object();
  for (const auto& t : tags) {
    size_t eq = t.find('=');
    out[t.substr(0, eq)] = eq == std::string::npos ? "" : t.substr(eq + 1);
  }
  return out;
}

// The portal's refusal "kind" for a machine reason (older portals take the
// kind; the contract's field is "reason").
const char* RefusalKindFor(const std::string& reason) {
  if (reason == "unencrypted_image") return "unencrypted_image";
  // The tenant's image itself is refused: the portal records the machine
  // reason as is (docs/format/disk-format.md).
  if (reason == "unsafe_disk_format") return "unsafe_disk_format";
  static const char* const kAttestation[] = {
      "not_enrolled", "nonce_unknown", "nonce_used", "nonce_expired", "bad_signature",
      "nonce_mismatch", "pcr_digest_mismatch", "pcr_selection_mismatch",
      "binding_key_not_certified", "binding_key_attributes", "pcr_policy", "tags",
      "evidence_age", "history", "no_policy", "label_mismatch", "unknown_key",
      "malformed_evidence", "attestation_failed", "kms_unavailable", "release_denied"};
  for (const char* r : kAttestation) {
    if (reason == r) return "attestation_denied";
  }
  return "launch_failed";
}

// Runs `call`; a connection error (UNAVAILABLE) is retried once on a new
// connection. The shared HTTPS client keeps connections alive, and a server
// closes idle ones: the first request after a pause then fails on the stale
// socket before the server saw it. Every host route tolerates a repeat (a
// repeated report is refused by the portal as out of order, harmlessly).
template <typename F>
auto RetryOnce(F&& call) -> decltype(call()) {
  auto result = call();
  if (::vmseal::internal::AsStatus(result).code() != StatusCode::kUnavailable) return result;
  return call();
}

}  // namespace

HostCapacity DetectCapacity() {
  HostCapacity c;
  long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  long pages = ::sysconf(_SC_PHYS_PAGES);
  long page_size = ::sysconf(_SC_PAGESIZE);
  if (cpus > 0) c.vcpus = static_cast<uint32_t>(cpus);
  if (pages > 0 && page_size > 0) {
    c.memory_mib = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) >> 20;
  }
  c.slots = c.vcpus;
  return c;
}

struct PortalClient::Impl {
  PortalClientOptions options;
  ParsedUrl url;
  Env* env = nullptr;
  std::unique_ptr<net::HttpsClient> api;
  mutable std::mutex mu;  // guards last_fetch
  FetchStats last_fetch;
  bool tags_as_object = false;  // learned from the portal's answer
  // The portal answered "unknown job state" to "launching" (its state
  // machine goes from decrypting to running): not sent again.
  std::atomic<bool> launching_unknown{false};
};

PortalClient::PortalClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PortalClient::~PortalClient() = default;

StatusOr<std::unique_ptr<PortalClient>> PortalClient::Create(const PortalClientOptions& options) {
  ASSIGN_OR_RETURN(ParsedUrl url, ParseHttpsUrl(options.url));
  if (options.ca_cert_file.empty() || options.cert_file.empty() || options.key_file.empty()) {
    return InvalidArgumentError("portal client: CA, certificate and key files are required");
  }
  if (options.timeout_seconds <= 0 || options.max_resumes < 0 || options.resume_delay_ms < 0) {
    return InvalidArgumentError("portal client: bad timeout or resume settings");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->url = url;
  impl->env = options.env != nullptr ? options.env : Env::Default();
  net::HttpsClient::Options o;
  o.host = url.host;
  o.port = url.port;
  o.timeout_seconds = options.timeout_seconds;
  ASSIGN_OR_RETURN(o.ca_pem, ReadFileToString(impl->env, options.ca_cert_file));
  ASSIGN_OR_RETURN(o.cert_pem, ReadFileToString(impl->env, options.cert_file));
  {
    ASSIGN_OR_RETURN(std::string key, ReadFileToString(impl->env, options.key_file));
    o.key_pem = SecretBytes(crypto::AsBytes(key));
    OPENSSL_cleanse(key.data(), key.size());
  }
  ASSIGN_OR_RETURN(impl->api, net::HttpsClient::Create(std::move(o)));
  return std::unique_ptr<PortalClient>(new PortalClient(std::move(impl)));
}

Status PortalClient::Register(const HostRegistrationInfo& info) {
  if (info.capacity.slots == 0 || info.capacity.vcpus == 0) {
    return InvalidArgumentError("register: capacity must be at least one slot and one vCPU");
  }
  for (const auto& t : info.tags) {
    if (t.empty() || t.front() == '=') return InvalidArgumentError("register: bad tag '" + t + "'");
  }
  auto body = [&](bool tags_as_object) {
    json b = {{"capacity", {{"vcpus", info.capacity.vcpus},
                            {"memory_mib", info.capacity.memory_mib},
                            {"slots", info.capacity.slots}}},
              {"capacity_slots", info.capacity.slots}};
    b["tags"] = tags_as_object ? TagsAsObject(info.tags) : TagsAsArray(info.tags);
    return b;
  };
  auto r = RetryOnce([&] { return impl_->api->Post("/v1/hosts/register", body(impl_->tags_as_object)); });
  if (!r.ok() && !impl_->tags_as_object && r.status().code() == StatusCode::kInvalidArgument &&
      r.status().message().find("tags must be an object") != std::string::npos) {
    // A portal predating the wire contract takes tags as {"key": "value"}.
    impl_->tags_as_object = true;
    r = impl_->api->Post("/v1/hosts/register", body(true));
  }
  return r.status().WithPrefix("portal register");
}

Status PortalClient::Heartbeat() {
  return RetryOnce([&] { return impl_->api->Post("/v1/hosts/heartbeat", json::object()); })
      .status()
      .WithPrefix("portal heartbeat");
}

StatusOr<PortalPoll> PortalApi::Poll() {
  ASSIGN_OR_RETURN(std::vector<PortalJob> jobs, PollJobs());
  return PortalPoll{std::move(jobs), {}};
}

Status PortalApi::ReportDiskEvent(const std::string&, const std::string&, const std::string&) {
  return UnimplementedError("this portal client does not report disk events");
}

Status PortalApi::ReportVmEnded(const std::string&, const std::string&, const std::string&,
                                int64_t) {
  return UnimplementedError("this portal client does not report VM ends");
}

Status PortalApi::ReportConsole(const std::string&, const std::string&) {
  return UnimplementedError("this portal client does not relay serial consoles");
}

Status PortalApi::ReportVmDeleted(const std::string&) {
  return UnimplementedError("this portal client does not report deleted VMs");
}

StatusOr<std::vector<PortalJob>> PortalClient::PollJobs() {
  ASSIGN_OR_RETURN(PortalPoll poll, Poll());
  return std::move(poll.jobs);
}

StatusOr<PortalPoll> PortalClient::Poll() {
  auto r = RetryOnce([&] { return impl_->api->Get("/v1/hosts/jobs"); });
  if (!r.ok()) return r.status().WithPrefix("portal jobs");
  PortalPoll out;
  if (!r->is_object() || !(*r)["jobs"].is_array()) {
    return DataLossError("portal jobs: answer has no jobs array");
  }
  for (const json& j : (*r)["jobs"]) {
    if (!j.is_object() || !j["job_id"].is_string() || !j["image_id"].is_string()) {
      return DataLossError("portal jobs: a job lacks job_id or image_id");
    }
    PortalJob job;
    job.job_id = j["job_id"];
    job.image_id = j["image_id"];
    job.customer_id = j.value("customer_id", "");
    job.tagged_image_id = j.value("tagged_image_id", "");
    job.package_sha256_hex = ToLower(j.value("package_sha256", ""));
    job.vm_name = j.value("vm_name", "");
    if (j.contains("attempt") && j["attempt"].is_number_unsigned()) {
      job.attempt = j["attempt"].get<uint64_t>();
    }
    if (j.contains("run") && j["run"].is_number_integer() && j["run"].get<int64_t>() > 0) {
      job.run = j["run"].get<int64_t>();
    }
    out.jobs.push_back(std::move(job));
  }
  // Portals before the VM lifecycle send no "vms".
  if (r->contains("vms")) {
    if (!(*r)["vms"].is_array()) return DataLossError("portal jobs: vms is not an array");
    for (const json& v : (*r)["vms"]) {
      if (!v.is_object() || !v["vm_name"].is_string() || !v["action"].is_string()) {
        return DataLossError("portal jobs: a vm lacks vm_name or action");
      }
      PortalVmCommand c;
      c.job_id = v.value("job_id", "");
      c.vm_name = v["vm_name"];
      const std::string action = v["action"];
      if (action == "run") {
        c.action = PortalVmCommand::Action::kRun;
      } else if (action == "stop") {
        c.action = PortalVmCommand::Action::kStop;
      } else if (action == "delete") {
        c.action = PortalVmCommand::Action::kDelete;
      } else {
        continue;  // an action of a newer portal: not ours to guess
      }
      out.vms.push_back(std::move(c));
    }
  }
  return out;
}

Status PortalClient::ReportConsole(const std::string& vm_name, const std::string& text) {
  json body = {{"text", text}};
  return impl_->api->Post("/v1/hosts/vms/" + vm_name + "/console", body).status().WithPrefix("portal console");
}

Status PortalClient::ReportDiskEvent(const std::string& job_id, const std::string& event,
                                     const std::string& text) {
  json body = {{"event", event}, {"text", text}};
  return RetryOnce([&] { return impl_->api->Post("/v1/hosts/jobs/" + job_id + "/events", body); })
      .status()
      .WithPrefix("portal disk event");
}

Status PortalClient::ReportVmEnded(const std::string& vm_name, const std::string& reason,
                                   const std::string& text, int64_t run) {
  json body = {{"reason", reason}, {"text", text}};
  if (run > 0) body["run"] = run;
  return RetryOnce([&] { return impl_->api->Post("/v1/hosts/vms/" + vm_name + "/ended", body); })
      .status()
      .WithPrefix("portal vm ended");
}

Status PortalClient::ReportVmDeleted(const std::string& vm_name) {
  return RetryOnce([&] {
           return impl_->api->Post("/v1/hosts/vms/" + vm_name + "/deleted", json::object());
         })
      .status()
      .WithPrefix("portal vm deleted");
}

Status PortalClient::ReportProgress(const JobUpdate& update) {
  if (update.phase == JobPhase::kLaunching && impl_->launching_unknown) return OkStatus();
  const std::string phase = JobPhaseName(update.phase);
  // "state" for portals predating the contract's "phase".
  json body = {{"phase", phase}, {"state", phase}};
  if (!update.reason.empty()) body["reason"] = update.reason;
  if (!update.vm_name.empty()) body["vm_name"] = update.vm_name;
  if (!update.serial_log_path.empty()) body["serial_log_path"] = update.serial_log_path;
  Status s = RetryOnce([&] {
               return impl_->api->Post("/v1/hosts/jobs/" + update.job_id + "/progress", body);
             }).status();
  if (update.phase == JobPhase::kLaunching && s.code() == StatusCode::kInvalidArgument &&
      s.message().find("unknown job state") != std::string::npos) {
    impl_->launching_unknown = true;
    return OkStatus();
  }
  return s.WithPrefix("portal progress");
}

Status PortalClient::ReportRefusal(const std::string& job_id, const std::string& reason,
                                   const std::string& message) {
  // The portal takes its refusal kind as "reason" ("kind" for the session-1
  // portal); the machine reason leads the message it records.
  const std::string kind = RefusalKindFor(reason);
  std::string detail = message.starts_with(reason + ":") ? message : reason + ": " + message;
  // A machine reason sent as the kind leads the portal's record already.
  if (kind == reason) detail = detail.substr(std::min(detail.size(), reason.size() + 2));
  json body = {{"reason", kind}, {"message", detail}, {"kind", kind}, {"detail", detail}};
  return RetryOnce([&] { return impl_->api->Post("/v1/hosts/jobs/" + job_id + "/refusal", body); })
      .status()
      .WithPrefix("portal refusal");
}

FetchStats PortalClient::last_fetch() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_fetch;
}

Status PortalClient::Fetch(const Job& job, const std::string& dest_path) {
  const PortalClientOptions& opt = impl_->options;
  const std::string path = "/v1/hosts/jobs/" + job.job_id + "/package";
  ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(impl_->env, dest_path, 0600));
  crypto::Sha256Hasher hasher;
  FetchStats stats;
  uint64_t written = 0;
  std::optional<uint64_t> total;
  std::string announced;  // lowercase hex, from the first answer
  Status last_error = UnavailableError("no attempt");
  bool complete = false;
  // A fresh connection per attempt: the previous one may be half-dead.
  ClientFactory new_client = [&]() -> StatusOr<ClientPtr> {
    auto client = std::make_unique<httplib::SSLClient>(impl_->url.host, impl_->url.port,
                                                       opt.cert_file, opt.key_file);
    if (!client->is_valid()) return InvalidArgumentError("package fetch: bad client certificate");
    SSL_CTX* ctx = client->ssl_context();
    RETURN_IF_ERROR(net::internal::ApplyTlsPolicy(ctx));
    // The portal's CA only (never the system store), checked by OpenSSL in
    // the handshake (see VerifyServerInHandshake).
    if (SSL_CTX_load_verify_locations(ctx, opt.ca_cert_file.c_str(), nullptr) != 1) {
      ERR_clear_error();
      return InvalidArgumentError("package fetch: cannot load the CA file " + opt.ca_cert_file);
    }
    client->enable_server_certificate_verification(false);
    RETURN_IF_ERROR(net::internal::VerifyServerInHandshake(ctx, impl_->url.host));
    client->set_connection_timeout(opt.timeout_seconds, 0);
    client->set_read_timeout(opt.timeout_seconds, 0);
    client->set_write_timeout(opt.timeout_seconds, 0);
    client->set_keep_alive(true);
    return client;
  };

  // Probe: the first byte tells whether the portal answers ranges, the
  // package's size and its announced digest. Anything but a well-formed
  // 206 (a portal ignoring Range, an error, an empty package, a broken
  // connection) leaves the download to the one-connection path below,
  // which reports errors as before.
  {
    ASSIGN_OR_RETURN(ClientPtr probe, new_client());
    int http_status = 0;
    uint64_t size = 0;
    std::string digest;
    auto result = probe->Get(path, {{"Range", "bytes=0-0"}},
                             [&](const httplib::Response& r) {
                               http_status = r.status;
                               uint64_t a = 0, b = 0;
                               if (r.status != 206 ||
                                   !ParseFullContentRange(r.get_header_value("Content-Range"),
                                                          &a, &b, &size) ||
                                   a != 0 || b != 0) {
                                 http_status = 0;
                                 return false;
                               }
                               digest = ToLower(r.get_header_value("X-Content-SHA256"));
                               return true;
                             },
                             [](const char*, size_t) { return true; });
    // Ranges are written at their offsets through a descriptor of this
    // process's own: only with the real file system (an Env for tests
    // takes the one-request path).
    if (result && http_status == 206 && opt.fetch_connections >= 1 &&
        opt.fetch_range_bytes >= 1 && impl_->env == Env::Default()) {
      // Positional writes need a descriptor of their own on the temp file
      // (the AtomicOutputFile's appends nothing; it still renames or
      // removes the file).
      const int fd = ::open(out->temp_path().c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
      if (fd < 0) return ErrnoToStatus(errno, "open", out->temp_path());
      RangedDownload ranged({.path = path,
                             .total = size,
                             .digest = digest,
                             .range_bytes = opt.fetch_range_bytes,
                             .connections = opt.fetch_connections,
                             .max_resumes = opt.max_resumes,
                             .resume_delay_ms = opt.resume_delay_ms},
                            new_client, fd, &hasher);
      Status s = ranged.Run(std::move(probe));
      if (::close(fd) != 0 && s.ok()) s = ErrnoToStatus(errno, "close", out->temp_path());
      stats.resumes = ranged.resumes();
      stats.ranges = ranged.ranges();
      stats.connections = ranged.connections();
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(impl_->mu);
        impl_->last_fetch = stats;
        return s;
      }
      written = size;
      total = size;
      announced = digest;
      complete = true;
    }
  }
  if (!complete) stats.connections = 1;

  // Received bytes not yet written and hashed (in order, so a resume after
  // a broken connection starts right after them).
  // Written and hashed on the appender's thread; `written` counts what it
  // was handed (a resume waits for it: Drain).
  BackgroundAppender appender(out->file(), &hasher);
  std::vector<uint8_t> pending;
  pending.reserve(kFetchWriteBytes + (64 << 10));
  auto hand_over = [&]() -> Status {
    if (pending.empty()) return OkStatus();
    const size_t n = pending.size();
    std::vector<uint8_t> next;
    next.reserve(kFetchWriteBytes + (64 << 10));
    if (!appender.Append(std::exchange(pending, std::move(next)))) return appender.Drain();
    written += n;
    return OkStatus();
  };
  auto flush = [&]() -> Status {
    RETURN_IF_ERROR(hand_over());
    return appender.Drain();
  };

  for (int attempt = 0; attempt <= opt.max_resumes && !complete; ++attempt) {
    if (attempt > 0) {
      ++stats.resumes;
      std::this_thread::sleep_for(std::chrono::milliseconds(opt.resume_delay_ms));
    }
    ASSIGN_OR_RETURN(ClientPtr client_ptr, new_client());
    httplib::SSLClient& client = *client_ptr;
    httplib::Headers headers;
    if (written > 0) headers.emplace("Range", "bytes=" + std::to_string(written) + "-");

    int http_status = 0;
    std::string error_body;
    uint64_t skip = 0;  // bytes to drop when a server ignored our Range
    Status stop;        // why we cancelled the transfer ourselves
    auto result = client.Get(
        path, headers,
        [&](const httplib::Response& r) {
          http_status = r.status;
          if (r.status != 200 && r.status != 206) return true;  // error body follows
          std::string sha = ToLower(r.get_header_value("X-Content-SHA256"));
          if (!announced.empty() && sha != announced) {
            stop = DataLossError("package fetch: the package changed during the download");
            return false;
          }
          announced = sha;
          if (r.status == 206) {
            uint64_t first = 0, size = 0;
            if (!ParseContentRange(r.get_header_value("Content-Range"), &first, &size) ||
                first != written) {
              stop = DataLossError("package fetch: bad Content-Range in a resumed download");
              return false;
            }
            if (size > 0) total = size;
          } else {
            skip = written;
            if (r.has_header("Content-Length")) {
              total = std::strtoull(r.get_header_value("Content-Length").c_str(), nullptr, 10);
            }
          }
          return true;
        },
        [&](const char* data, size_t len) {
          if (http_status != 200 && http_status != 206) {
            if (error_body.size() < kMaxErrorBodyBytes) error_body.append(data, len);
            return true;
          }
          if (skip > 0) {
            size_t n = static_cast<size_t>(std::min<uint64_t>(skip, len));
            skip -= n;
            data += n;
            len -= n;
            if (len == 0) return true;
          }
          // httplib hands over a TLS record (16 KiB) at a time: gathered
          // into large writes, one syscall and one hash call per 4 MiB.
          pending.insert(pending.end(), data, data + len);
          if (pending.size() >= kFetchWriteBytes) {
            Status s = hand_over();
            if (!s.ok()) {
              stop = s;
              return false;
            }
          }
          return true;
        });
    if (Status s = flush(); !s.ok() && stop.ok()) stop = s;
    if (!stop.ok()) return stop;
    if (result) {
      if (http_status == 200 || http_status == 206) {
        if (!total.has_value() || written == *total) {
          complete = true;
          break;
        }
        last_error = UnavailableError("package fetch: transfer ended early");
        continue;
      }
      Status s = StatusFromErrorAnswer(http_status, error_body).WithPrefix("package fetch");
      if (http_status < 500) return s;  // not transient
      last_error = s;
      continue;
    }
    last_error = UnavailableError("package fetch: " + httplib::to_string(result.error()) +
                                  " after " + std::to_string(written) + " bytes");
  }
  stats.bytes = written;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->last_fetch = stats;
  }
  if (!complete) return last_error;
  const std::string from_job = ToLower(job.package_sha256_hex);
  if (!from_job.empty()) {
    if (!announced.empty() && announced != from_job) {
      return DataLossError("package fetch: the portal announced two different SHA-256 values");
    }
    announced = from_job;
  }
  if (announced.empty()) {
    if (opt.require_package_digest) {
      return FailedPreconditionError("package fetch: the portal announced no X-Content-SHA256");
    }
  } else {
    std::string got = crypto::HexEncode(hasher.Finish());
    if (got != announced) {
      return DataLossError("package fetch: SHA-256 mismatch (the package was altered in "
                           "transit or in storage)");
    }
    stats.digest_checked = true;
  }
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->last_fetch = stats;
  }
  // Not fsynced (as curl -o does not): ciphertext checked chunk by chunk
  // when read, and useless after a power loss (its VM is gone then too).
  return out->CommitWithoutSync();
}

}  // namespace vmseal::host
