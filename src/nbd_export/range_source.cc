#include "nbd_export/range_source.h"

#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/err.h>

#include <charconv>
#include <cstring>
#include <mutex>
#include <vector>

#include "base/env.h"
#include "net/internal/tls_util.h"

namespace vmseal::nbd_export {
namespace {

struct ParsedUrl {
  std::string host;
  int port = 443;
  std::string path;
};

StatusOr<ParsedUrl> ParseHttpsUrl(const std::string& url) {
  constexpr std::string_view kScheme = "https://";
  if (!url.starts_with(kScheme)) return InvalidArgumentError("url must start with https://");
  std::string rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  if (slash == std::string::npos) return InvalidArgumentError("url has no path");
  ParsedUrl out;
  out.path = rest.substr(slash);
  std::string authority = rest.substr(0, slash);
  const size_t colon = authority.rfind(':');
  if (colon != std::string::npos) {
    const std::string port = authority.substr(colon + 1);
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), out.port);
    if (ec != std::errc() || p != port.data() + port.size() || out.port <= 0 ||
        out.port > 65535) {
      return InvalidArgumentError("url has a bad port");
    }
    authority.resize(colon);
  }
  if (authority.empty()) return InvalidArgumentError("url has no host");
  out.host = authority;
  return out;
}

// "bytes FIRST-LAST/TOTAL".
bool ParseContentRange(const std::string& v, uint64_t* first, uint64_t* last, uint64_t* total) {
  unsigned long long a = 0, b = 0, t = 0;
  char tail = 0;
  if (std::sscanf(v.c_str(), "bytes %llu-%llu/%llu%c", &a, &b, &t, &tail) != 3) return false;
  *first = a;
  *last = b;
  *total = t;
  return a <= b && b < t;
}

// The TLS credentials, parsed once and shared by every connection.
struct Credentials {
  std::vector<crypto::X509Ptr> ca;
  std::vector<crypto::X509Ptr> chain;  // empty: no client certificate
  crypto::EvpPkeyPtr key;
};

// The text of `path`, or an error naming `what` (the path is the agent's,
// never a secret).
StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  auto text = ReadFileToString(Env::Default(), path);
  if (!text.ok()) return text.status().WithPrefix(std::string("https source: ") + what);
  return text;
}

StatusOr<Credentials> LoadCredentials(const HttpsRangeSourceOptions& o) {
  Credentials c;
  std::string ca = o.ca_pem;
  if (ca.empty()) {
    ASSIGN_OR_RETURN(ca, ReadPem(o.ca_file, "CA file"));
  }
  ASSIGN_OR_RETURN(c.ca, net::internal::ParseCertChainPem(ca, "https source CA"));
  std::string cert = o.cert_pem;
  if (cert.empty() && !o.cert_file.empty()) {
    ASSIGN_OR_RETURN(cert, ReadPem(o.cert_file, "client certificate"));
  }
  if (!cert.empty()) {
    ASSIGN_OR_RETURN(c.chain,
                     net::internal::ParseCertChainPem(cert, "https source client certificate"));
  }
  if (o.key_pem != nullptr && !o.key_pem->empty()) {
    ASSIGN_OR_RETURN(c.key, net::internal::ParsePrivateKeyPem(*o.key_pem));
  } else if (!o.key_file.empty()) {
    ASSIGN_OR_RETURN(std::string text, ReadPem(o.key_file, "client key"));
    SecretBytes pem(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()),
                                             text.size()));
    OPENSSL_cleanse(text.data(), text.size());
    ASSIGN_OR_RETURN(c.key, net::internal::ParsePrivateKeyPem(pem));
  }
  if (c.chain.empty() != (c.key == nullptr)) {
    return InvalidArgumentError("https source: client certificate and key go together");
  }
  return c;
}

class HttpsRangeSource final : public RangeSource {
 public:
  HttpsRangeSource(HttpsRangeSourceOptions options, ParsedUrl url, Credentials credentials)
      : options_(std::move(options)),
        url_(std::move(url)),
        credentials_(std::move(credentials)) {}

  Status Init() {
    // One byte tells the size and the digest the server announces.
    uint8_t b = 0;
    RETURN_IF_ERROR(FetchImpl(0, {&b, 1}, /*learn=*/true));
    return OkStatus();
  }

  uint64_t size() const override { return size_; }
  std::string identity() const override {
    // The announced digest names the content wherever it is served from, so
    // a cache survives a change of portal address; without one, the URL.
    return digest_.empty() ? options_.url : "sha256:" + digest_;
  }

  Status Fetch(uint64_t offset, std::span<uint8_t> out) override {
    if (out.empty()) return OkStatus();
    if (offset > size_ || out.size() > size_ - offset) {
      return OutOfRangeError("range beyond the end of the remote object");
    }
    return FetchImpl(offset, out, /*learn=*/false);
  }

 private:
  using ClientPtr = std::unique_ptr<httplib::SSLClient>;

  StatusOr<ClientPtr> NewClient() {
    auto c = std::make_unique<httplib::SSLClient>(url_.host, url_.port);
    if (!c->is_valid()) return InternalError("https source: cannot create a TLS context");
    SSL_CTX* ctx = c->ssl_context();
    RETURN_IF_ERROR(net::internal::ApplyTlsPolicy(ctx));
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    for (const auto& ca : credentials_.ca) {
      if (store == nullptr || X509_STORE_add_cert(store, ca.get()) != 1) {
        ERR_clear_error();
        return InvalidArgumentError("https source: cannot use the CA certificate");
      }
    }
    if (!credentials_.chain.empty()) {
      bool ok = SSL_CTX_use_certificate(ctx, credentials_.chain[0].get()) == 1;
      for (size_t i = 1; ok && i < credentials_.chain.size(); ++i) {
        ok = SSL_CTX_add1_chain_cert(ctx, credentials_.chain[i].get()) == 1;
      }
      ok = ok && SSL_CTX_use_PrivateKey(ctx, credentials_.key.get()) == 1 &&
           SSL_CTX_check_private_key(ctx) == 1;
      if (!ok) {
        ERR_clear_error();
        return InvalidArgumentError("https source: bad client certificate or key");
      }
    }
    // OpenSSL checks chain and name in the handshake; httplib's own check
    // would add the system store.
    c->enable_server_certificate_verification(false);
    RETURN_IF_ERROR(net::internal::VerifyServerInHandshake(ctx, url_.host));
    c->set_connection_timeout(options_.timeout_seconds, 0);
    c->set_read_timeout(options_.timeout_seconds, 0);
    c->set_write_timeout(options_.timeout_seconds, 0);
    c->set_keep_alive(true);
    return c;
  }

  StatusOr<ClientPtr> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!pool_.empty()) {
        ClientPtr c = std::move(pool_.back());
        pool_.pop_back();
        return c;
      }
    }
    return NewClient();
  }

  void Release(ClientPtr c) {
    std::lock_guard<std::mutex> lock(mu_);
    if (pool_.size() < 8) pool_.push_back(std::move(c));
  }

  Status FetchImpl(uint64_t offset, std::span<uint8_t> out, bool learn) {
    Status last = UnavailableError("https source: no attempt");
    const int attempts = std::max(1, options_.attempts);
    for (int attempt = 0; attempt < attempts; ++attempt) {
      ClientPtr client;
      if (attempt == 0) {
        ASSIGN_OR_RETURN(client, Acquire());
      } else {
        ASSIGN_OR_RETURN(client, NewClient());
      }
      const uint64_t last_byte = offset + out.size() - 1;
      httplib::Headers headers = {
          {"Range", "bytes=" + std::to_string(offset) + "-" + std::to_string(last_byte)}};
      Status answer = OkStatus();
      size_t got = 0;
      auto result = client->Get(
          url_.path, headers,
          [&](const httplib::Response& r) {
            if (r.status != 206) {
              answer = r.status == 200
                           ? DataLossError("https source: the server ignored the Range header")
                           : Status(CodeFromHttpStatus(r.status),
                                    "https source: HTTP " + std::to_string(r.status));
              return false;
            }
            uint64_t first = 0, last_b = 0, total = 0;
            if (!ParseContentRange(r.get_header_value("Content-Range"), &first, &last_b,
                                   &total) ||
                first != offset || last_b != last_byte) {
              answer = DataLossError("https source: bad Content-Range");
              return false;
            }
            const std::string digest = r.get_header_value("X-Content-SHA256");
            if (learn) {
              size_ = total;
              digest_ = digest;
            } else if (total != size_ || digest != digest_) {
              answer = DataLossError("https source: the remote object changed");
              return false;
            }
            return true;
          },
          [&](const char* data, size_t n) {
            if (n > out.size() - got) {
              answer = DataLossError("https source: longer answer than the range");
              return false;
            }
            std::memcpy(out.data() + got, data, n);
            got += n;
            return true;
          });
      if (!answer.ok()) {
        if (answer.code() != StatusCode::kUnavailable) return answer;
        last = answer;
        continue;
      }
      if (!result) {
        last = UnavailableError("https source: " + httplib::to_string(result.error()));
        continue;
      }
      if (got != out.size()) {
        last = UnavailableError("https source: transfer ended early");
        continue;
      }
      Release(std::move(client));
      return OkStatus();
    }
    return last;
  }

  const HttpsRangeSourceOptions options_;
  const ParsedUrl url_;
  const Credentials credentials_;
  uint64_t size_ = 0;    // set by Init, then constant
  std::string digest_;   // set by Init, then constant
  std::mutex mu_;
  std::vector<ClientPtr> pool_;
};

class FileRangeSource final : public RangeSource {
 public:
  FileRangeSource(std::string path, std::unique_ptr<RandomAccessFile> file, uint64_t size)
      : path_(std::move(path)), file_(std::move(file)), size_(size) {}
  uint64_t size() const override { return size_; }
  std::string identity() const override { return "file://" + path_; }
  Status Fetch(uint64_t offset, std::span<uint8_t> out) override {
    if (offset > size_ || out.size() > size_ - offset) {
      return OutOfRangeError("range beyond the end of " + path_);
    }
    ASSIGN_OR_RETURN(size_t n, file_->Read(offset, out));
    if (n != out.size()) return DataLossError("short read of " + path_);
    return OkStatus();
  }

 private:
  const std::string path_;
  const std::unique_ptr<RandomAccessFile> file_;
  const uint64_t size_;
};

}  // namespace

StatusOr<std::unique_ptr<RangeSource>> NewHttpsRangeSource(
    const HttpsRangeSourceOptions& options) {
  ASSIGN_OR_RETURN(ParsedUrl url, ParseHttpsUrl(options.url));
  if (options.ca_file.empty() && options.ca_pem.empty()) {
    return InvalidArgumentError("https source: a CA file is required");
  }
  if (options.cert_file.empty() != options.key_file.empty()) {
    return InvalidArgumentError("https source: client certificate and key go together");
  }
  ASSIGN_OR_RETURN(Credentials credentials, LoadCredentials(options));
  auto source =
      std::make_unique<HttpsRangeSource>(options, std::move(url), std::move(credentials));
  RETURN_IF_ERROR(source->Init());
  return std::unique_ptr<RangeSource>(std::move(source));
}

StatusOr<std::unique_ptr<RangeSource>> NewFileRangeSource(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, Env::Default()->NewRandomAccessFile(path));
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  return std::unique_ptr<RangeSource>(new FileRangeSource(path, std::move(file), size));
}

}  // namespace vmseal::nbd_export
