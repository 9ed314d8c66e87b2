// `vmseal customer register|login|upload|images|launch|status`: the customer
// side of the portal API (docs/api/csp.yaml).
#include <httplib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "cli/commands.h"
#include "crypto/primitives.h"

namespace vmseal::cli {
namespace {

using json = nlohmann::json;
constexpr uint64_t kUploadChunkBytes = 16ull << 20;
constexpr int kUploadRetries = 5;

struct CommonFlags {
  std::string portal;   // http(s)://host:port
  std::string ca_cert;  // PEM CA for https
  std::string session_file;
};

std::string DefaultSessionFile() {
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : ".") + "/.vmseal-session.json";
}

StatusOr<std::unique_ptr<httplib::Client>> Connect(const CommonFlags& f) {
  if (f.portal.empty()) return InvalidArgumentError("--portal is required");
  if (!f.portal.starts_with("https://") && !f.portal.starts_with("http://")) {
    return InvalidArgumentError("--portal must be an http:// or https:// URL");
  }
  auto client = std::make_unique<httplib::Client>(f.portal);
  if (!client->is_valid()) return InvalidArgumentError("bad --portal URL");
  if (f.portal.starts_with("https://")) {
    if (f.ca_cert.empty()) return InvalidArgumentError("--ca-cert is required for https");
    client->set_ca_cert_path(f.ca_cert.c_str());
    client->enable_server_certificate_verification(true);
  }
  client->set_connection_timeout(10);
  client->set_read_timeout(300);
  client->set_write_timeout(300);
  return client;
}

// A 2xx JSON answer, or the portal's error as a Status.
StatusOr<json> Check(const httplib::Result& res, const std::string& what) {
  if (!res) return UnavailableError(what + ": " + httplib::to_string(res.error()));
  json body = json::parse(res->body, nullptr, false);
  if (res->status / 100 == 2) return body.is_discarded() ? json::object() : body;
  std::string message = "HTTP " + std::to_string(res->status);
  StatusCode code = CodeFromHttpStatus(res->status);
  if (body.is_object() && body.contains("error")) {
    message = body["error"].value("message", message);
  }
  return Status(code, what + ": " + message);
}

StatusOr<httplib::Headers> Auth(const CommonFlags& f) {
  std::string path = f.session_file.empty() ? DefaultSessionFile() : f.session_file;
  auto text = ReadFileToString(Env::Default(), path);
  if (!text.ok()) return UnauthenticatedError("not logged in (run vmseal customer login)");
  json s = json::parse(*text, nullptr, false);
  if (!s.is_object() || !s["token"].is_string()) return UnauthenticatedError("bad session file");
  return httplib::Headers{{"Authorization", "Bearer " + s["token"].get<std::string>()}};
}

Status Register(const CommonFlags& f) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(json r, Check(c->Post("/v1/register"), "register"));
  std::cout << "customer_id: " << r.value("customer_id", "") << "\n"
            << "login_id: " << r.value("login_id", "") << "\n"
            << "password: " << r.value("password", "") << "\n"
            << "(the password is shown only once)\n";
  return OkStatus();
}

Status Login(const CommonFlags& f, const std::string& login_id,
             const std::string& password_file) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  std::string password;
  if (!password_file.empty()) {
    ASSIGN_OR_RETURN(password, ReadFileToString(Env::Default(), password_file));
    while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) {
      password.pop_back();
    }
  } else if (const char* env = std::getenv("VMSEAL_PASSWORD")) {
    password = env;
  } else {
    return InvalidArgumentError("give --password-file or set VMSEAL_PASSWORD");
  }
  json body = {{"login_id", login_id}, {"password", password}};
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(password.data()), password.size()));
  ASSIGN_OR_RETURN(json r, Check(c->Post("/v1/login", body.dump(), "application/json"), "login"));
  json session = {{"portal", f.portal}, {"token", r["token"]}, {"expires_unix", r["expires_unix"]}};
  std::string path = f.session_file.empty() ? DefaultSessionFile() : f.session_file;
  RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), path, session.dump(), 0600));
  std::cout << "logged in as " << r.value("customer_id", "") << " until "
            << r.value("expires_unix", int64_t{0}) << "\n";
  return OkStatus();
}

Status Upload(const CommonFlags& f, const std::string& file, const std::string& name,
              const std::string& policy_json) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(std::shared_ptr<RandomAccessFile> in, Env::Default()->NewRandomAccessFile(file));
  ASSIGN_OR_RETURN(uint64_t size, in->Size());
  // Digest first, so the portal can check what it received.
  crypto::Sha256Hasher hasher;
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t off = 0; off < size;) {
    ASSIGN_OR_RETURN(size_t n, in->Read(off, buf));
    if (n == 0) return DataLossError("file shrank while reading");
    hasher.Update(std::span<const uint8_t>(buf.data(), n));
    off += n;
  }
  const std::string sha = crypto::HexEncode(hasher.Finish());

  ASSIGN_OR_RETURN(json begin, Check(c->Post("/v1/uploads", auth, "", "application/json"),
                                     "start upload"));
  const std::string id = begin.value("upload_id", "");
  uint64_t offset = 0;
  int failures = 0;
  while (offset < size) {
    uint64_t len = std::min(kUploadChunkBytes, size - offset);
    const uint64_t base = offset;
    auto res = c->Put("/v1/uploads/" + id + "?offset=" + std::to_string(base), auth, len,
                      [in, base](size_t o, size_t l, httplib::DataSink& sink) {
                        std::vector<uint8_t> b(std::min<size_t>(l, 1 << 20));
                        auto n = in->Read(base + o, b);
                        if (!n.ok() || *n == 0) return false;
                        return sink.write(reinterpret_cast<const char*>(b.data()), *n);
                      },
                      "application/octet-stream");
    auto put = Check(res, "upload");
    if (put.ok()) {
      offset = (*put)["offset_bytes"].get<uint64_t>();
      failures = 0;
      continue;
    }
    if (put.status().code() != StatusCode::kUnavailable || ++failures > kUploadRetries) {
      return put.status();
    }
    // Broken connection: ask where to resume.
    ASSIGN_OR_RETURN(json state, Check(c->Get("/v1/uploads/" + id, auth), "upload state"));
    offset = state["offset_bytes"].get<uint64_t>();
    std::cerr << "connection lost; resuming at byte " << offset << "\n";
  }
  json commit = {{"name", name}, {"sha256", sha}};
  if (!policy_json.empty()) {
    json p = json::parse(policy_json, nullptr, false);
    if (!p.is_object()) return InvalidArgumentError("--policy is not a JSON object");
    commit["policy"] = p;
  }
  ASSIGN_OR_RETURN(json image, Check(c->Post("/v1/uploads/" + id + "/commit", auth, commit.dump(),
                                             "application/json"),
                                     "commit upload"));
  std::cout << image.value("image_id", "") << "\n";
  return OkStatus();
}

Status Images(const CommonFlags& f) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json r, Check(c->Get("/v1/images", auth), "list images"));
  for (const auto& i : r["images"]) {
    std::cout << i.value("image_id", "") << "  " << i.value("size_bytes", uint64_t{0}) << "  "
              << i.value("sha256", "") << "  " << i.value("name", "") << "\n";
  }
  return OkStatus();
}

Status Launch(const CommonFlags& f, const std::string& image_id) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  json body = {{"image_id", image_id}};
  ASSIGN_OR_RETURN(json j, Check(c->Post("/v1/launch", auth, body.dump(), "application/json"),
                                 "launch"));
  std::cout << j.value("job_id", "") << " " << j.value("state", "") << "\n";
  return OkStatus();
}

Status JobStatus(const CommonFlags& f, const std::string& job_id) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json j, Check(c->Get("/v1/jobs/" + job_id, auth), "job status"));
  std::cout << "job " << j.value("job_id", "") << ": " << j.value("state", "");
  if (!j.value("host_id", "").empty()) std::cout << " on " << j.value("host_id", "");
  std::cout << "\n";
  if (!j.value("failure_reason", "").empty()) {
    std::cout << "reason: " << j.value("failure_reason", "") << "\n";
  }
  for (const auto& d : j["last_placement"]["decisions"]) {
    std::cout << "  " << d.value("host_id", "") << ":";
    for (const auto& r : d["reasons"]) std::cout << " " << r.get<std::string>() << ";";
    std::cout << "\n";
  }
  return OkStatus();
}

}  // namespace

void AddCustomerCommands(CLI::App& app, const CommandSink& sink) {
  CLI::App* cust = app.add_subcommand("customer", "Talk to the cloud portal as a customer");
  cust->require_subcommand(1);
  auto f = std::make_shared<CommonFlags>();
  cust->add_option("--portal", f->portal, "Portal URL, e.g. https://portal:8443")->required();
  cust->add_option("--ca-cert", f->ca_cert, "PEM CA the portal certificate must chain to");
  cust->add_option("--session", f->session_file, "Session file (default ~/.vmseal-session.json)");

  cust->add_subcommand("register", "Create an account; prints the password once")
      ->callback([f, sink] { sink(Register(*f)); });

  auto login_id = std::make_shared<std::string>();
  auto password_file = std::make_shared<std::string>();
  CLI::App* login = cust->add_subcommand("login", "Log in and keep the session token");
  login->add_option("--login-id", *login_id, "Login id from register")->required();
  login->add_option("--password-file", *password_file, "File with the password "
                    "(or VMSEAL_PASSWORD)");
  login->callback([f, login_id, password_file, sink] {
    sink(Login(*f, *login_id, *password_file));
  });

  auto file = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  auto policy = std::make_shared<std::string>();
  CLI::App* upload = cust->add_subcommand("upload", "Upload a sealed package (resumable)");
  upload->add_option("package", *file, "Sealed package file")->required();
  upload->add_option("--name", *name, "Image name")->required();
  upload->add_option("--policy", *policy, "Release policy JSON (docs/api/csp.yaml)");
  upload->callback([f, file, name, policy, sink] { sink(Upload(*f, *file, *name, *policy)); });

  cust->add_subcommand("images", "List your images")->callback([f, sink] { sink(Images(*f)); });

  auto image = std::make_shared<std::string>();
  CLI::App* launch = cust->add_subcommand("launch", "Launch an image; prints the job id");
  launch->add_option("image_id", *image, "Image id")->required();
  launch->callback([f, image, sink] { sink(Launch(*f, *image)); });

  auto job = std::make_shared<std::string>();
  CLI::App* status = cust->add_subcommand("status", "Show a job and its placement reasons");
  status->add_option("job_id", *job, "Job id")->required();
  status->callback([f, job, sink] { sink(JobStatus(*f, *job)); });
}

}  // namespace vmseal::cli
