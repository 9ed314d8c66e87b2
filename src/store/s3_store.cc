#include "store/s3_store.h"

#include <curl/curl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "json/json.h"
#include "store/internal/quota_reader.h"
#include "store/internal/s3_xml.h"

namespace vmseal::store {
namespace {

constexpr char kShaPrefix[] = ".vmseal-sha256/";
constexpr char kStagingPrefix[] = ".vmseal-staging/";

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    xmlInitParser();
  });
}

std::string Escape(const std::string& s) {
  // RFC 3986 unreserved characters stay; everything else is %XX (uppercase),
  // which is also SigV4's canonical form.
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace

struct S3Response {
  long status = 0;
  std::string body;
  std::string etag;
  uint64_t content_length = 0;
};

struct S3Request {
  const char* method = "GET";
  std::string key;    // object key, may be empty for bucket requests
  std::string query;  // canonical (sorted, escaped), without '?'
  std::span<const uint8_t> body;
  std::string range;  // "bytes=a-b" or empty
  // Where a GET body goes; nullptr means S3Response::body.
  std::span<uint8_t>* into = nullptr;
};

class S3ObjectStore::Client {
 public:
  explicit Client(S3ObjectStore::Options options) : options_(std::move(options)) {}

  StatusOr<S3Response> Do(const S3Request& req) const;
  // Do, then maps a non-2xx answer to a Status naming `what`.
  StatusOr<S3Response> DoOk(const S3Request& req, const std::string& what) const;

  uint64_t part_size() const { return options_.part_size_bytes; }

 private:
  struct Transfer {
    std::span<const uint8_t> upload;
    size_t upload_pos = 0;
    S3Response* response = nullptr;
    std::span<uint8_t>* into = nullptr;
    size_t into_pos = 0;
    bool overflow = false;
  };
  static size_t ReadCb(char* buf, size_t size, size_t n, void* arg);
  static size_t WriteCb(char* buf, size_t size, size_t n, void* arg);
  static size_t HeaderCb(char* buf, size_t size, size_t n, void* arg);

  const S3ObjectStore::Options options_;
};

size_t S3ObjectStore::Client::ReadCb(char* buf, size_t size, size_t n, void* arg) {
  auto* t = static_cast<Transfer*>(arg);
  size_t len = std::min(size * n, t->upload.size() - t->upload_pos);
  std::memcpy(buf, t->upload.data() + t->upload_pos, len);
  t->upload_pos += len;
  return len;
}

size_t S3ObjectStore::Client::WriteCb(char* buf, size_t size, size_t n, void* arg) {
  auto* t = static_cast<Transfer*>(arg);
  size_t len = size * n;
  if (t->into != nullptr && t->response->status / 100 == 2) {
    if (len > t->into->size() - t->into_pos) {
      t->overflow = true;
      return 0;  // aborts the transfer
    }
    std::memcpy(t->into->data() + t->into_pos, buf, len);
    t->into_pos += len;
  } else {
    if (t->response->body.size() + len > (16u << 20)) return 0;  // bounded
    t->response->body.append(buf, len);
  }
  return len;
}

size_t S3ObjectStore::Client::HeaderCb(char* buf, size_t size, size_t n, void* arg) {
  auto* t = static_cast<Transfer*>(arg);
  std::string line(buf, size * n);
  if (line.starts_with("HTTP/")) {
    size_t sp = line.find(' ');
    if (sp != std::string::npos) t->response->status = std::atol(line.c_str() + sp + 1);
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon == std::string::npos) return size * n;
  std::string name = line.substr(0, colon);
  std::transform(name.begin(), name.end(), name.begin(), ::tolower);
  std::string value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ')) value.erase(0, 1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) {
    value.pop_back();
  }
  if (name == "etag") t->response->etag = value;
  if (name == "content-length") t->response->content_length = std::strtoull(value.c_str(), nullptr, 10);
  return size * n;
}

StatusOr<S3Response> S3ObjectStore::Client::Do(const S3Request& req) const {
  CurlPtr curl(curl_easy_init());
  if (curl == nullptr) return InternalError("curl_easy_init failed");
  CURL* c = curl.get();
  std::string url = options_.endpoint + "/" + options_.bucket + "/";
  // Keys passed ValidateKey (or are companion keys built from one), so they
  // need no escaping; '/' separates path segments as S3 expects.
  url += req.key;
  if (!req.query.empty()) url += "?" + req.query;

  S3Response response;
  Transfer t;
  t.upload = req.body;
  t.response = &response;
  t.into = req.into;

  curl_slist* raw = nullptr;
  // The payload hash is signed (S3 checks it against the body).
  std::string payload_sha = crypto::HexEncode(crypto::Sha256(req.body));
  raw = curl_slist_append(raw, ("x-amz-content-sha256: " + payload_sha).c_str());
  raw = curl_slist_append(raw, "Expect:");
  if (!req.range.empty()) raw = curl_slist_append(raw, ("Range: " + req.range).c_str());
  SlistPtr headers(raw);

  // "key:secret" for libcurl, which copies it; our copy is wiped.
  SecretBytes userpwd(options_.access_key_id.size() + 1 + options_.secret_access_key.size() + 1);
  {
    uint8_t* p = userpwd.UnsafeMutableData();
    std::memcpy(p, options_.access_key_id.data(), options_.access_key_id.size());
    p += options_.access_key_id.size();
    *p++ = ':';
    std::memcpy(p, options_.secret_access_key.UnsafeData(), options_.secret_access_key.size());
  }
  std::string sigv4 = "aws:amz:" + options_.region + ":s3";

  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4.c_str());
  curl_easy_setopt(c, CURLOPT_USERPWD, reinterpret_cast<const char*>(userpwd.UnsafeData()));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, options_.timeout_seconds);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &Client::WriteCb);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &Client::HeaderCb);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  if (!options_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options_.ca_file.c_str());

  std::string_view method = req.method;
  if (method == "PUT") {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, &Client::ReadCb);
    curl_easy_setopt(c, CURLOPT_READDATA, &t);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
  } else if (method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, reinterpret_cast<const char*>(req.body.data()));
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
  } else if (method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (method == "DELETE") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "DELETE");
  }

  CURLcode rc = curl_easy_perform(c);
  if (t.overflow) return DataLossError("S3 returned more bytes than requested");
  if (rc != CURLE_OK) {
    return UnavailableError(std::string("S3 request failed: ") + curl_easy_strerror(rc));
  }
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  response.status = code;
  if (req.into != nullptr) *req.into = req.into->subspan(0, t.into_pos);
  return response;
}

StatusOr<S3Response> S3ObjectStore::Client::DoOk(const S3Request& req,
                                                 const std::string& what) const {
  ASSIGN_OR_RETURN(S3Response r, Do(req));
  if (r.status / 100 == 2) {
    // CompleteMultipartUpload may report an error inside a 200 answer.
    if (r.body.find("<Error>") == std::string::npos) return r;
  }
  std::string s3code;
  size_t a = r.body.find("<Code>");
  size_t b = r.body.find("</Code>");
  if (a != std::string::npos && b != std::string::npos && b > a) {
    s3code = r.body.substr(a + 6, std::min<size_t>(b - a - 6, 64));
  }
  std::string msg = what + ": S3 status " + std::to_string(r.status) +
                    (s3code.empty() ? "" : " " + s3code);
  switch (r.status) {
    case 404: return NotFoundError(msg);
    case 403: return PermissionDeniedError(msg);
    case 400: return InvalidArgumentError(msg);
    default: return r.status >= 500 ? UnavailableError(msg) : UnknownError(msg);
  }
}

namespace {

// A ranged-GET view of one object. The size is fixed at open; S3 objects are
// immutable, and a replacing Put shows up as a short or failed read.
class S3File final : public RandomAccessFile {
 public:
  S3File(const S3ObjectStore::Client* client, std::string key, uint64_t size)
      : client_(client), key_(std::move(key)), size_(size) {}

  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= size_ || out.empty()) return size_t{0};
    uint64_t len = std::min<uint64_t>(out.size(), size_ - offset);
    S3Request req;
    req.key = key_;
    req.range = "bytes=" + std::to_string(offset) + "-" + std::to_string(offset + len - 1);
    std::span<uint8_t> into = out.subspan(0, len);
    req.into = &into;
    ASSIGN_OR_RETURN(S3Response r, client_->DoOk(req, "get " + key_));
    if (into.size() != len) return DataLossError("short ranged read of " + key_);
    return static_cast<size_t>(len);
  }
  StatusOr<uint64_t> Size() const override { return size_; }

 private:
  const S3ObjectStore::Client* const client_;
  const std::string key_;
  const uint64_t size_;
};

// Fills `buf` from `source`; returns the count, smaller only at end.
StatusOr<size_t> ReadFull(Reader& source, std::span<uint8_t> buf) {
  size_t got = 0;
  while (got < buf.size()) {
    ASSIGN_OR_RETURN(size_t n, source.Read(buf.subspan(got)));
    if (n == 0) break;
    got += n;
  }
  return got;
}

}  // namespace

StatusOr<std::unique_ptr<S3ObjectStore>> S3ObjectStore::Create(Options options) {
  if (options.endpoint.empty() || options.bucket.empty()) {
    return InvalidArgumentError("S3 endpoint and bucket are required");
  }
  if (!options.endpoint.starts_with("http://") && !options.endpoint.starts_with("https://")) {
    return InvalidArgumentError("S3 endpoint must start with http:// or https://");
  }
  while (options.endpoint.ends_with("/")) options.endpoint.pop_back();
  if (options.access_key_id.empty() || options.secret_access_key.empty()) {
    return InvalidArgumentError("S3 access key id and secret are required");
  }
  if (options.part_size_bytes < kS3MinPartSizeBytes || options.part_size_bytes > (1ull << 32)) {
    return InvalidArgumentError("S3 part size must be between 5 MiB and 4 GiB");
  }
  GlobalInit();
  return std::unique_ptr<S3ObjectStore>(
      new S3ObjectStore(std::make_unique<Client>(std::move(options))));
}

S3ObjectStore::S3ObjectStore(std::unique_ptr<Client> client) : client_(std::move(client)) {}
S3ObjectStore::~S3ObjectStore() = default;

StatusOr<ObjectInfo> S3ObjectStore::Put(const std::string& key, Reader& source,
                                        const PutOptions& options) {
  RETURN_IF_ERROR(ValidateKey(key));
  const uint64_t part = client_->part_size();
  std::vector<uint8_t> buf(part);
  crypto::Sha256Hasher hasher;
  internal::QuotaReader limited(source, 0, options.max_size_bytes, "object");
  ASSIGN_OR_RETURN(size_t first, ReadFull(limited, buf));
  hasher.Update(std::span<const uint8_t>(buf.data(), first));

  if (first < part) {
    S3Request req;
    req.method = "PUT";
    req.key = key;
    req.body = std::span<const uint8_t>(buf.data(), first);
    RETURN_IF_ERROR(client_->DoOk(req, "put " + key).status());
  } else {
    S3Request init;
    init.method = "POST";
    init.key = key;
    init.query = "uploads=";
    ASSIGN_OR_RETURN(S3Response ir, client_->DoOk(init, "initiate upload of " + key));
    ASSIGN_OR_RETURN(const std::string upload_id, internal::ParseInitiateUpload(ir.body));

    // Everything from here on aborts the upload on failure.
    auto upload_parts = [&]() -> StatusOr<std::string> {
      std::string complete = "<CompleteMultipartUpload>";
      size_t len = first;
      for (int number = 1; len > 0; ++number) {
        if (number > 10000) return ResourceExhaustedError("object needs more than 10000 parts");
        S3Request preq;
        preq.method = "PUT";
        preq.key = key;
        preq.query = "partNumber=" + std::to_string(number) + "&uploadId=" + Escape(upload_id);
        preq.body = std::span<const uint8_t>(buf.data(), len);
        ASSIGN_OR_RETURN(S3Response pr,
                         client_->DoOk(preq, "upload part " + std::to_string(number)));
        if (pr.etag.empty()) return UnavailableError("S3 upload part: no ETag");
        complete += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" +
                    pr.etag + "</ETag></Part>";
        ASSIGN_OR_RETURN(len, ReadFull(limited, buf));
        hasher.Update(std::span<const uint8_t>(buf.data(), len));
      }
      complete += "</CompleteMultipartUpload>";
      return complete;
    };
    auto complete = upload_parts();
    Status done = complete.status();
    if (done.ok()) {
      S3Request creq;
      creq.method = "POST";
      creq.key = key;
      creq.query = "uploadId=" + Escape(upload_id);
      creq.body = crypto::AsBytes(*complete);
      done = client_->DoOk(creq, "complete upload of " + key).status();
    }
    if (!done.ok()) {
      S3Request abort;
      abort.method = "DELETE";
      abort.key = key;
      abort.query = "uploadId=" + Escape(upload_id);
      (void)client_->Do(abort);
      return done;
    }
  }

  ObjectInfo info{key, limited.total_bytes(), crypto::HexEncode(hasher.Finish())};
  S3Request side;
  side.method = "PUT";
  side.key = kShaPrefix + key;
  side.body = crypto::AsBytes(info.sha256_hex);
  RETURN_IF_ERROR(client_->DoOk(side, "put digest of " + key).status());
  return info;
}

StatusOr<ObjectInfo> S3ObjectStore::Stat(const std::string& key) {
  RETURN_IF_ERROR(ValidateKey(key));
  S3Request side;
  side.key = kShaPrefix + key;
  auto sr = client_->DoOk(side, "stat " + key);
  if (!sr.ok()) {
    if (sr.status().code() == StatusCode::kNotFound) return NotFoundError("no object " + key);
    return sr.status();
  }
  if (sr->body.size() != 64) return DataLossError("corrupt digest of " + key);
  S3Request head;
  head.method = "HEAD";
  head.key = key;
  auto hr = client_->DoOk(head, "stat " + key);
  if (!hr.ok()) {
    if (hr.status().code() == StatusCode::kNotFound) return NotFoundError("no object " + key);
    return hr.status();
  }
  return ObjectInfo{key, hr->content_length, sr->body};
}

StatusOr<std::unique_ptr<RandomAccessFile>> S3ObjectStore::Get(const std::string& key) {
  ASSIGN_OR_RETURN(ObjectInfo info, Stat(key));
  return std::unique_ptr<RandomAccessFile>(new S3File(client_.get(), key, info.size_bytes));
}

namespace {

// One ListObjectsV2 walk; returns key -> size.
StatusOr<std::vector<ObjectInfo>> ListAll(const S3ObjectStore::Client& client,
                                          const std::string& prefix) {
  std::vector<ObjectInfo> out;
  std::string token;
  for (int page = 0; page < 100000; ++page) {
    S3Request req;
    // Parameters in SigV4 canonical (sorted) order.
    if (!token.empty()) req.query = "continuation-token=" + Escape(token) + "&";
    req.query += "list-type=2&prefix=" + Escape(prefix);
    ASSIGN_OR_RETURN(S3Response r, client.DoOk(req, "list"));
    ASSIGN_OR_RETURN(internal::ListPage listed, internal::ParseListPage(r.body));
    for (ObjectInfo& info : listed.objects) out.push_back(std::move(info));
    const bool truncated = listed.truncated;
    token = std::move(listed.next_token);
    if (!truncated) return out;
    if (token.empty()) return UnavailableError("S3 list: truncated without a token");
  }
  return UnavailableError("S3 list: too many pages");
}

}  // namespace

StatusOr<std::vector<ObjectInfo>> S3ObjectStore::List(const std::string& prefix) {
  ASSIGN_OR_RETURN(auto objects, ListAll(*client_, prefix));
  ASSIGN_OR_RETURN(auto digests, ListAll(*client_, kShaPrefix + prefix));
  std::vector<std::string> complete;
  for (auto& d : digests) complete.push_back(d.key.substr(sizeof(kShaPrefix) - 1));
  std::sort(complete.begin(), complete.end());
  std::vector<ObjectInfo> out;
  for (auto& o : objects) {
    if (o.key.starts_with(kShaPrefix)) continue;
    if (std::binary_search(complete.begin(), complete.end(), o.key)) out.push_back(std::move(o));
  }
  std::sort(out.begin(), out.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

Status S3ObjectStore::CreateBucket() {
  S3Request req;
  req.method = "PUT";
  auto r = client_->Do(req);
  if (!r.ok()) return r.status();
  if (r->status / 100 == 2 || r->body.find("BucketAlreadyOwnedByYou") != std::string::npos) {
    return OkStatus();
  }
  return client_->DoOk(req, "create bucket").status();
}

Status S3ObjectStore::Delete(const std::string& key) {
  RETURN_IF_ERROR(Stat(key).status());
  // The digest goes first: that makes the object invisible at once.
  S3Request side;
  side.method = "DELETE";
  side.key = kShaPrefix + key;
  RETURN_IF_ERROR(client_->DoOk(side, "delete " + key).status());
  S3Request obj;
  obj.method = "DELETE";
  obj.key = key;
  return client_->DoOk(obj, "delete " + key).status();
}

struct S3ObjectStore::Staging {
  struct Part {
    int number = 0;
    std::string etag;
    uint64_t size_bytes = 0;
  };
  StagedInfo info;          // size_bytes = the parts + the tail
  std::string upload;       // multipart upload id; empty before the first part
  std::vector<Part> parts;  // uploaded and recorded, numbered from 1
  uint64_t tail_bytes = 0;  // bytes in the tail object
  bool sealed = false;
};

namespace {

std::string StagingKey(const std::string& id, const char* ext) {
  return std::string(kStagingPrefix) + id + ext;
}

}  // namespace

StatusOr<S3ObjectStore::Staging> S3ObjectStore::ReadStaging(const std::string& id) {
  RETURN_IF_ERROR(ValidateStageId(id));
  S3Request req;
  req.key = StagingKey(id, ".json");
  auto r = client_->DoOk(req, "read upload session");
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kNotFound) return NotFoundError("no upload session");
    return r.status();
  }
  auto parsed = ParseJson(r->body);
  nlohmann::json j = parsed.ok() ? *std::move(parsed) : nlohmann::json();
  if (!j.is_object() || !j["key"].is_string() || !j["meta"].is_string() ||
      !j["upload"].is_string() || !j["parts"].is_array() || !j["tail"].is_number_unsigned() ||
      !j["sealed"].is_boolean()) {
    return DataLossError("corrupt upload session");
  }
  Staging s;
  s.info.key = j["key"].get<std::string>();
  s.info.meta = j["meta"].get<std::string>();
  s.upload = j["upload"].get<std::string>();
  s.tail_bytes = j["tail"].get<uint64_t>();
  s.sealed = j["sealed"].get<bool>();
  RETURN_IF_ERROR(ValidateKey(s.info.key).WithPrefix("corrupt upload session"));
  if (s.tail_bytes > client_->part_size()) return DataLossError("corrupt upload session");
  uint64_t size = s.tail_bytes;
  const size_t count = j["parts"].size();
  for (const auto& p : j["parts"]) {
    // Every part is whole but the last of a sealed staging (the tail).
    const bool may_be_short = s.sealed && s.parts.size() + 1 == count;
    if (!p.is_object() || !p["n"].is_number_unsigned() || !p["etag"].is_string() ||
        !p["size"].is_number_unsigned() || p["n"].get<uint64_t>() != s.parts.size() + 1 ||
        (!may_be_short && p["size"].get<uint64_t>() < kS3MinPartSizeBytes)) {
      return DataLossError("corrupt upload session");
    }
    s.parts.push_back({static_cast<int>(s.parts.size() + 1), p["etag"].get<std::string>(),
                       p["size"].get<uint64_t>()});
    size += s.parts.back().size_bytes;
  }
  s.info.size_bytes = size;
  return s;
}

Status S3ObjectStore::WriteStaging(const std::string& id, const Staging& s) {
  nlohmann::json parts = nlohmann::json::array();
  for (const auto& p : s.parts) {
    parts.push_back({{"n", p.number}, {"etag", p.etag}, {"size", p.size_bytes}});
  }
  nlohmann::json j = {{"key", s.info.key}, {"meta", s.info.meta},  {"upload", s.upload},
                      {"parts", parts},    {"tail", s.tail_bytes}, {"sealed", s.sealed}};
  const std::string text = DumpJson(j);
  S3Request req;
  req.method = "PUT";
  req.key = StagingKey(id, ".json");
  req.body = crypto::AsBytes(text);
  return client_->DoOk(req, "write upload session").status();
}

Status S3ObjectStore::StageCreate(const std::string& id, const std::string& key,
                                  const std::string& meta) {
  RETURN_IF_ERROR(ValidateStageId(id).WithPrefix("bad staging id"));
  RETURN_IF_ERROR(ValidateKey(key));
  if (meta.size() > 4096) return InvalidArgumentError("staging meta is over 4 KiB");
  auto existing = ReadStaging(id);
  if (existing.ok()) return AlreadyExistsError("upload session exists");
  if (existing.status().code() != StatusCode::kNotFound) return existing.status();
  auto object = Stat(key);
  if (object.ok()) return AlreadyExistsError("object " + key + " exists");
  if (object.status().code() != StatusCode::kNotFound) return object.status();
  Staging s;
  s.info.key = key;
  s.info.meta = meta;
  return WriteStaging(id, s);
}

StatusOr<StagedInfo> S3ObjectStore::StageStat(const std::string& id) {
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  return s.info;
}

StatusOr<uint64_t> S3ObjectStore::StageAppend(const std::string& id, uint64_t offset_bytes,
                                              Reader& source, uint64_t max_size_bytes,
                                              const StagedBytesObserver& observe) {
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (s.sealed) return FailedPreconditionError("upload is being committed");
  if (offset_bytes != s.info.size_bytes) {
    return FailedPreconditionError("upload offset " + std::to_string(offset_bytes) +
                                   " does not match the session offset " +
                                   std::to_string(s.info.size_bytes));
  }
  const uint64_t part = client_->part_size();
  std::vector<uint8_t> buf(part);
  size_t fill = 0;
  if (s.tail_bytes > 0) {
    S3Request get;
    get.key = StagingKey(id, ".tail");
    std::span<uint8_t> into(buf.data(), s.tail_bytes);
    get.into = &into;
    RETURN_IF_ERROR(client_->DoOk(get, "read upload tail").status());
    if (into.size() != s.tail_bytes) return DataLossError("upload session lost its data");
    fill = s.tail_bytes;
  }
  const Staging before = s;
  uint64_t size = s.info.size_bytes;
  // Uploads the full buffer as the next part of the multipart upload.
  auto flush_part = [&]() -> Status {
    if (s.parts.size() >= 10000) return ResourceExhaustedError("upload needs more than 10000 parts");
    if (s.upload.empty()) {
      S3Request init;
      init.method = "POST";
      init.key = s.info.key;
      init.query = "uploads=";
      ASSIGN_OR_RETURN(S3Response ir, client_->DoOk(init, "initiate upload"));
      ASSIGN_OR_RETURN(s.upload, internal::ParseInitiateUpload(ir.body));
    }
    const int number = static_cast<int>(s.parts.size()) + 1;
    S3Request preq;
    preq.method = "PUT";
    preq.key = s.info.key;
    preq.query = "partNumber=" + std::to_string(number) + "&uploadId=" + Escape(s.upload);
    preq.body = std::span<const uint8_t>(buf.data(), fill);
    ASSIGN_OR_RETURN(S3Response pr, client_->DoOk(preq, "upload part " + std::to_string(number)));
    if (pr.etag.empty()) return UnavailableError("S3 upload part: no ETag");
    s.parts.push_back({number, pr.etag, fill});
    fill = 0;
    return OkStatus();
  };
  internal::QuotaReader limited(source, size, max_size_bytes, "upload");
  Status result;
  for (;;) {
    if (fill == part) {
      result = flush_part();
      if (!result.ok()) break;
    }
    auto n = limited.Read(std::span<uint8_t>(buf).subspan(fill));
    if (!n.ok()) {
      result = n.status();
      break;
    }
    if (*n == 0) break;
    if (observe) observe(std::span<const uint8_t>(buf.data() + fill, *n));
    fill += *n;
    size += *n;
  }
  // What was read is kept: the remainder becomes the tail, then the JSON
  // records the parts and the tail (the durable state).
  if (s.parts.size() != before.parts.size() || fill != before.tail_bytes ||
      s.upload != before.upload) {
    if (fill > 0) {
      S3Request put;
      put.method = "PUT";
      put.key = StagingKey(id, ".tail");
      put.body = std::span<const uint8_t>(buf.data(), fill);
      RETURN_IF_ERROR(client_->DoOk(put, "write upload tail").status());
    }
    s.tail_bytes = fill;
    RETURN_IF_ERROR(WriteStaging(id, s));
  }
  if (!result.ok()) return result;
  return size;
}

StatusOr<StagedContent> S3ObjectStore::StageSeal(const std::string& id) {
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (!s.sealed) {
    std::vector<uint8_t> tail(s.tail_bytes);
    if (s.tail_bytes > 0) {
      S3Request get;
      get.key = StagingKey(id, ".tail");
      std::span<uint8_t> into(tail);
      get.into = &into;
      RETURN_IF_ERROR(client_->DoOk(get, "read upload tail").status());
      if (into.size() != s.tail_bytes) return DataLossError("upload session lost its data");
    }
    if (s.parts.empty()) {
      // Less than one part: one PUT of the tail.
      S3Request put;
      put.method = "PUT";
      put.key = s.info.key;
      put.body = tail;
      RETURN_IF_ERROR(client_->DoOk(put, "put " + s.info.key).status());
    } else {
      if (!tail.empty()) {
        const int number = static_cast<int>(s.parts.size()) + 1;
        S3Request preq;
        preq.method = "PUT";
        preq.key = s.info.key;
        preq.query = "partNumber=" + std::to_string(number) + "&uploadId=" + Escape(s.upload);
        preq.body = tail;
        ASSIGN_OR_RETURN(S3Response pr,
                         client_->DoOk(preq, "upload part " + std::to_string(number)));
        if (pr.etag.empty()) return UnavailableError("S3 upload part: no ETag");
        s.parts.push_back({number, pr.etag, tail.size()});
      }
      std::string complete = "<CompleteMultipartUpload>";
      for (const auto& p : s.parts) {
        complete += "<Part><PartNumber>" + std::to_string(p.number) + "</PartNumber><ETag>" +
                    p.etag + "</ETag></Part>";
      }
      complete += "</CompleteMultipartUpload>";
      S3Request creq;
      creq.method = "POST";
      creq.key = s.info.key;
      creq.query = "uploadId=" + Escape(s.upload);
      creq.body = crypto::AsBytes(complete);
      auto done = client_->DoOk(creq, "complete upload of " + s.info.key);
      if (!done.ok()) {
        // Completed by an earlier seal that crashed before recording it?
        S3Request head;
        head.method = "HEAD";
        head.key = s.info.key;
        auto hr = client_->DoOk(head, "stat " + s.info.key);
        if (!hr.ok() || hr->content_length != s.info.size_bytes) return done.status();
      }
      s.tail_bytes = 0;
    }
    s.sealed = true;
    RETURN_IF_ERROR(WriteStaging(id, s));
  }
  StagedContent content;
  content.file = std::make_unique<S3File>(client_.get(), s.info.key, s.info.size_bytes);
  return content;
}

StatusOr<ObjectInfo> S3ObjectStore::StagePublish(const std::string& id,
                                                 const std::string& sha256_hex) {
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (!s.sealed) return FailedPreconditionError("upload was not sealed before publishing");
  if (sha256_hex.size() != 64) return InvalidArgumentError("publish needs the SHA-256");
  S3Request side;
  side.method = "PUT";
  side.key = kShaPrefix + s.info.key;
  side.body = crypto::AsBytes(sha256_hex);
  RETURN_IF_ERROR(client_->DoOk(side, "put digest of " + s.info.key).status());
  for (const char* ext : {".json", ".tail"}) {
    S3Request del;
    del.method = "DELETE";
    del.key = StagingKey(id, ext);
    (void)client_->Do(del);
  }
  return ObjectInfo{s.info.key, s.info.size_bytes, sha256_hex};
}

Status S3ObjectStore::StageRemove(const std::string& id) {
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (s.sealed) {
    S3Request obj;
    obj.method = "DELETE";
    obj.key = s.info.key;
    RETURN_IF_ERROR(client_->DoOk(obj, "delete staged " + s.info.key).status());
  } else if (!s.upload.empty()) {
    S3Request abort;
    abort.method = "DELETE";
    abort.key = s.info.key;
    abort.query = "uploadId=" + Escape(s.upload);
    (void)client_->Do(abort);
  }
  S3Request del;
  del.method = "DELETE";
  del.key = StagingKey(id, ".json");
  RETURN_IF_ERROR(client_->DoOk(del, "remove upload session").status());
  del.key = StagingKey(id, ".tail");
  (void)client_->Do(del);
  return OkStatus();
}

}  // namespace vmseal::store
