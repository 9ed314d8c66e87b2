#include "csp/http_api.h"

#include <algorithm>
#include <atomic>
#include <ctime>
#include <cstdlib>
#include <limits>

#include <nlohmann/json.hpp>

#include "console/web_security.h"
#include "crypto/primitives.h"
#include "csp/customer_audit.h"
#include "csp/job_events.h"
#include "json/json.h"
#include "csp/signed_policy.h"
#include "csp/lifecycle.h"

namespace vmseal::csp {
namespace {

using json = nlohmann::json;

// The machine reason of an error the portal itself raises, for clients that
// act on it (CONTRACT.md: {"error": {code, reason, message}}); "" if none.
std::string ReasonFor(const Status& s) {
  const std::string& m = s.message();
  if (m.starts_with("KMS policy")) return "kms_policy";
  if (m.starts_with("overloaded:")) return "overloaded";
  if (m.starts_with("KMS: ")) {
    return s.code() == StatusCode::kUnavailable ? "kms_unavailable" : "kms_error";
  }
  if (m.starts_with("package rejected")) return "package_rejected";
  if (m.starts_with("tenant_mismatch:")) return "tenant_mismatch";
  if (m.starts_with("job cannot move")) return "bad_transition";
  if (m == "no such job on this host" || m == "no such vm on this host") return "not_assigned";
  if (m.starts_with("bad_state:")) return "bad_state";
  if (m.starts_with("store_unavailable:")) return "store_unavailable";
  if (m == "no such vm" || m == "no such job") return "not_found";
  if (m == "host is not registered") return "not_registered";
  if (m.find("digest") != std::string::npos && s.code() == StatusCode::kDataLoss) {
    return "digest_mismatch";
  }
  if (m.find("quota") != std::string::npos) return "quota";
  if (s.code() == StatusCode::kUnauthenticated) return "unauthenticated";
  // Every error carries a stable reason: at least its code, in lower case.
  std::string code(StatusCodeName(s.code()));
  for (char& c : code) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return code;
}

// The portal's error body: {"error": {code, reason, message}} with its own
// reasons (ReasonFor).
json PortalErrorBody(const Status& s) {
  json body = {{"error", {{"code", std::string(StatusCodeName(s.code()))}, {"message", s.message()}}}};
  if (std::string reason = ReasonFor(s); !reason.empty()) body["error"]["reason"] = reason;
  return body;
}

// The request's JSON object; an empty body is {}.
StatusOr<json> ParseBody(const net::Request& req) {
  if (req.body.is_null()) return json::object();
  if (!req.body.is_object()) return InvalidArgumentError("request body is not a JSON object");
  return req.body;
}

StatusOr<SecretBytes> BearerToken(const net::Request& req) {
  const std::string h = req.Header("Authorization");
  if (!h.starts_with("Bearer ") || h.size() <= 7) {
    return UnauthenticatedError("missing bearer token");
  }
  return SecretBytes(crypto::AsBytes(std::string_view(h).substr(7)));
}

json ToJson(const ReleasePolicy& p) {
  StatusOr<json> j = ParseJson(ReleasePolicyToJson(p));
  return j.ok() ? *std::move(j) : json::object();
}

json ToJson(const ImageInfo& i) {
  return {{"image_id", i.image_id},         {"name", i.name},
          {"size_bytes", i.size_bytes},     {"sha256", i.sha256_hex},
          {"policy", ToJson(i.policy)},     {"created_unix", i.created_unix},
          {"tagged_image_id", i.tagged_image_id}};
}

json ToJson(const UploadState& u) {
  return {{"upload_id", u.upload_id},
          {"offset_bytes", u.offset_bytes},
          {"max_size_bytes", u.max_size_bytes}};
}

json ToJson(const Placement& p) {
  json decisions = json::array();
  for (const auto& d : p.decisions) {
    decisions.push_back({{"host_id", d.host_id},
                         {"eligible", d.eligible},
                         {"chosen", d.chosen},
                         {"reasons", d.reasons},
                         {"kms_reason", d.kms_reason},
                         {"load", d.load},
                         {"capacity_slots", d.capacity_slots}});
  }
  return {{"chosen_host_id", p.chosen_host_id},
          {"decided_unix", p.decided_unix},
          {"decisions", decisions}};
}

json ToJson(const CustomerKey& k) {
  return {{"customer_id", k.customer_id}, {"key_id", k.key_id}, {"algorithm", k.algorithm},
          {"public_key_pem", k.public_key_pem}, {"cert_pem", k.cert_pem},
          {"created_unix", k.created_unix}, {"version", k.version},
          {"retired_unix", k.retired_unix}};
}

json ToJson(const SigningKey& k) {
  return {{"customer_id", k.customer_id}, {"key_id", k.key_id},
          {"public_key_pem", k.public_key_pem}, {"cert_pem", k.cert_pem}};
}

// The optional signing key fields of a request body (base64 proof).
Status SigningKeyFrom(const json& body, const char* pem_field, const char* proof_field,
                      std::string* pem, std::vector<uint8_t>* proof) {
  if (body.contains(pem_field)) {
    if (!body[pem_field].is_string()) return InvalidArgumentError(std::string(pem_field) + " must be a string");
    *pem = body[pem_field].get<std::string>();
  }
  if (body.contains(proof_field)) {
    if (!body[proof_field].is_string()) return InvalidArgumentError(std::string(proof_field) + " must be base64");
    auto raw = crypto::Base64Decode(body[proof_field].get<std::string>());
    if (!raw.ok()) return InvalidArgumentError(std::string(proof_field) + " must be base64");
    *proof = *std::move(raw);
  }
  return OkStatus();
}

json ToJson(const Job& j, bool for_host = false) {
  json attempts = json::array();
  for (const auto& a : j.attempts) {
    attempts.push_back({{"host_id", a.host_id}, {"refusal", a.refusal}, {"reason", a.reason}});
  }
  json out = {{"job_id", j.job_id},
              {"image_id", j.image_id},
              {"state", std::string(JobStateName(j.state))},
              {"host_id", j.host_id},
              {"attempts", attempts},
              {"failure_reason", j.failure_reason},
              {"last_placement", ToJson(j.last_placement)},
              {"vm_name", j.vm_name},
              {"serial_log_path", j.serial_log_path},
              {"wanted", std::string(VmWantedName(j.wanted))},
              {"end_reason", j.end_reason},
              {"end_text", j.end_text},
              {"ended_unix", j.ended_unix},
              {"runs", j.runs},
              {"disk_events", j.disk_events},
              {"trust_events", j.trust_events},
              {"created_unix", j.created_unix},
              {"updated_unix", j.updated_unix}};
  if (for_host) {
    // Which placement of the job this is: a started VM comes again as a new
    // attempt, which the host runs although it ran the job before.
    out["attempt"] = j.attempts.size();
    out["run"] = j.runs;  // named again in the VM's ended report
    out["vm_host_id"] = j.vm_host_id;
    out["customer_id"] = j.customer_id;
    out["object_key"] = j.object_key;
    out["package_path"] = "/v1/hosts/jobs/" + j.job_id + "/package";
    out["package_size_bytes"] = j.package_size_bytes;
    out["package_sha256"] = j.package_sha256_hex;
    out["tagged_image_id"] = j.tagged_image_id;
  }
  return out;
}

StatusOr<ReleasePolicy> PolicyFrom(const json& body) {
  if (!body.contains("policy")) return ReleasePolicy{};
  return ReleasePolicyFromJson(DumpJson(body["policy"]));
}

// The CN of the verified TLS client certificate, which must be a host
// identity (OU "host", as `vmseal kms issue-identity --role host` issues).
StatusOr<std::string> HostIdentity(const net::Request& req) {
  if (!req.peer.authenticated) return UnauthenticatedError("host routes need a verified TLS client certificate");
  if (req.peer.common_name.empty()) return UnauthenticatedError("client certificate has no CN");
  if (req.peer.organizational_unit != "host") {
    return PermissionDeniedError("client certificate is not a host identity (OU must be host)");
  }
  return req.peer.common_name;
}

// A file answer (Range and HEAD are the server's).
StatusOr<net::FileResponse> FileAnswer(std::shared_ptr<RandomAccessFile> file, std::string sha256_hex) {
  ASSIGN_OR_RETURN(uint64_t size, file->Size());
  net::FileResponse out;
  out.file = std::move(file);
  out.size_bytes = size;
  if (!sha256_hex.empty()) out.headers.emplace_back("X-Content-SHA256", std::move(sha256_hex));
  return out;
}

// An upload's PUT body, appended to the upload in the pieces the server
// hands over (each append is fsynced, so pieces are large).
class UploadSink : public net::BodySink {
 public:
  UploadSink(ImageService* images, Principal who, std::string upload_id, uint64_t offset,
             UploadHold hold)
      : images_(images), who_(std::move(who)), id_(std::move(upload_id)), offset_(offset),
        hold_(std::move(hold)) {}
  Status Write(std::string_view bytes) override {
    store::StringReader r(bytes);
    ASSIGN_OR_RETURN(UploadState s, images_->AppendUpload(who_, id_, offset_, r));
    offset_ = s.offset_bytes;
    return OkStatus();
  }
  StatusOr<json> Finish() override {
    ASSIGN_OR_RETURN(UploadState now, images_->GetUpload(who_, id_));
    return ToJson(now);
  }

 private:
  ImageService* const images_;
  const Principal who_;
  const std::string id_;
  uint64_t offset_;
  // The upload is this request's until the sink goes: another replica's
  // append at the same instant is busy, not interleaved.
  UploadHold hold_;
};

// A JSON answer that sets cookies (TextResponse carries header fields).
net::TextResponse JsonWithCookie(const json& body, std::string set_cookie) {
  net::TextResponse out;
  out.body = DumpJson(body);
  out.content_type = "application/json";
  out.headers.emplace_back("Set-Cookie", std::move(set_cookie));
  out.headers.emplace_back("Cache-Control", "no-store");
  return out;
}

// Login from a page must be a JSON request: a cross-site HTML form can send
// neither this content type nor the CSRF header without a CORS preflight,
// which the portal never grants (so no login CSRF into another account).
Status RequireJsonContentType(const net::Request& req) {
  const std::string type = req.Header("Content-Type");
  if (!type.starts_with("application/json")) {
    return PermissionDeniedError("csrf: console calls must be application/json");
  }
  return OkStatus();
}

// A cookie value must be a plain token (the portal's "vst_" + hex, an
// operator credential of printable characters without ';' ',' or spaces).
bool CookieSafe(std::string_view v) {
  if (v.empty() || v.size() > 512) return false;
  for (char c : v) {
    if (c <= 0x20 || c >= 0x7f || c == ';' || c == ',' || c == '"' || c == '\\') return false;
  }
  return true;
}

template <typename OperatorCheck>
void RegisterConsoleSessionRoutes(net::HttpsServer& server, const PortalServices& svc,
                                  OperatorCheck operator_credential) {
  server.Text("POST", "/v1/console/login", [svc](const net::Request& req) -> StatusOr<net::TextResponse> {
    RETURN_IF_ERROR(RequireJsonContentType(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body["login_id"].is_string() || !body["password"].is_string()) {
      return InvalidArgumentError("login_id and password are required");
    }
    LoginRequest login{body["login_id"].get<std::string>(),
                       SecretBytes(crypto::AsBytes(body["password"].get_ref<const std::string&>()))};
    ASSIGN_OR_RETURN(LoginResponse r, svc.accounts->Login(login));
    const std::string_view token = crypto::AsStringView(r.token.UnsafeSpan());
    if (!CookieSafe(token)) return InternalError("session token is not cookie-safe");
    const int64_t max_age = std::max<int64_t>(1, r.expires_unix - static_cast<int64_t>(std::time(nullptr)));
    return JsonWithCookie({{"customer_id", r.customer_id},
                           {"expires_unix", r.expires_unix},
                           {"csrf_token", console::CsrfToken(r.token)}},
                          console::SetCookieValue(console::kSessionCookie, token, max_age));
  });
  server.Json("GET", "/v1/console/session", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(console::Credential c, console::RequestCredential(req, console::kSessionCookie));
    ASSIGN_OR_RETURN(Principal p, svc.accounts->Authenticate(c.token));
    return json{{"customer_id", p.customer_id}, {"csrf_token", console::CsrfToken(c.token)}};
  });
  server.Text("POST", "/v1/console/logout", [svc](const net::Request& req) -> StatusOr<net::TextResponse> {
    ASSIGN_OR_RETURN(console::Credential c, console::RequestCredential(req, console::kSessionCookie));
    RETURN_IF_ERROR(svc.accounts->Logout(c.token));
    return JsonWithCookie(json::object(), console::ClearCookieValue(console::kSessionCookie));
  });
  server.Text("POST", "/v1/console/operator/login",
              [operator_credential](const net::Request& req) -> StatusOr<net::TextResponse> {
    RETURN_IF_ERROR(RequireJsonContentType(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body["token"].is_string()) return InvalidArgumentError("token is required");
    SecretBytes token(crypto::AsBytes(body["token"].get_ref<const std::string&>()));
    RETURN_IF_ERROR(operator_credential(token));
    const std::string_view raw = crypto::AsStringView(token.UnsafeSpan());
    if (!CookieSafe(raw)) return InvalidArgumentError("operator credential cannot be held in a cookie");
    return JsonWithCookie({{"csrf_token", console::CsrfToken(token)}},
                          console::SetCookieValue(console::kOperatorCookie, raw, 8 * 3600));
  });
  server.Json("GET", "/v1/console/operator/session",
              [operator_credential](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(console::Credential c, console::RequestCredential(req, console::kOperatorCookie));
    RETURN_IF_ERROR(operator_credential(c.token));
    return json{{"csrf_token", console::CsrfToken(c.token)}};
  });
  server.Text("POST", "/v1/console/operator/logout", [](const net::Request&) -> StatusOr<net::TextResponse> {
    return JsonWithCookie(json::object(), console::ClearCookieValue(console::kOperatorCookie));
  });
}

}  // namespace

void RegisterPortalRoutes(net::HttpsServer& server, const PortalServices& svc) {
  server.SetErrorBody(PortalErrorBody);
  // A bearer token (CLI, host-side tools) or the console's session cookie,
  // which must come with the CSRF token on state-changing calls.
  auto who = [svc](const net::Request& req) -> StatusOr<Principal> {
    ASSIGN_OR_RETURN(console::Credential c, console::RequestCredential(req, console::kSessionCookie));
    return svc.accounts->Authenticate(c.token);
  };
  auto operator_credential = [svc](const SecretBytes& token) -> Status {
    if (svc.operator_token == nullptr || svc.operator_token->empty()) {
      return PermissionDeniedError("operator routes are disabled");
    }
    if (!token.Equals(*svc.operator_token)) return PermissionDeniedError("not the operator");
    return OkStatus();
  };
  auto is_operator = [operator_credential](const net::Request& req) -> Status {
    ASSIGN_OR_RETURN(console::Credential c, console::RequestCredential(req, console::kOperatorCookie));
    return operator_credential(c.token);
  };

  // --- accounts ---
  server.Json("POST", "/v1/register", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    RegisterRequest request;
    if (body.contains("key_algorithm")) {
      if (!body["key_algorithm"].is_string()) {
        return InvalidArgumentError("key_algorithm must be a string");
      }
      request.key_algorithm = body["key_algorithm"].get<std::string>();
    }
    RETURN_IF_ERROR(SigningKeyFrom(body, "signing_public_key_pem", "signing_key_proof",
                                   &request.signing_public_key_pem, &request.signing_key_proof));
    ASSIGN_OR_RETURN(RegisterResponse r, svc.accounts->Register(request));
    json out = {{"customer_id", r.customer_id},
                {"login_id", r.login_id},
                {"password", std::string(crypto::AsStringView(r.password.UnsafeSpan()))},
                {"key", ToJson(r.key)}};
    if (!r.signing_key.key_id.empty()) out["signing_key"] = ToJson(r.signing_key);
    return out;
  }, 201);
  server.Json("GET", "/v1/customer/key", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(CustomerKey k, svc.accounts->GetCustomerKey(p));
    // The newest version as the KMS has it, with every version
    // (kms/key_versions.h); the portal's record is the first.
    json versions = json::array();
    auto listed = svc.kms->ListCustomerKeys(p.customer_id);
    if (listed.ok() && !listed->empty()) {
      k = listed->back();
      for (const CustomerKey& v : *listed) {
        versions.push_back({{"version", v.version}, {"key_id", v.key_id}, {"retired_unix", v.retired_unix}});
      }
    } else if (!listed.ok() && listed.status().code() != StatusCode::kUnimplemented) {
      return listed.status();
    }
    json out = ToJson(k);
    if (!versions.empty()) out["versions"] = versions;
    out["kms_ca_cert_pem"] = svc.kms->CaCertificatePem();
    // The signing key as the KMS has it registered, if any.
    auto signing = svc.accounts->GetSigningKey(p);
    if (signing.ok()) {
      out["signing_key"] = ToJson(*signing);
    } else if (signing.status().code() != StatusCode::kNotFound &&
               signing.status().code() != StatusCode::kUnimplemented) {
      return signing.status();
    }
    return out;
  });
  // Key rotation and retirement (kms/key_versions.h): the KMS makes the new
  // key pair; the portal relays for the customer it authenticated.
  server.Json("POST", "/v1/customer/key/rotate", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    if (p.customer_id.empty()) return UnauthenticatedError("not logged in");
    ASSIGN_OR_RETURN(CustomerKey k, svc.kms->RotateCustomerKey(p.customer_id));
    return ToJson(k);
  }, 201);
  server.Json("POST", "/v1/customer/key/retire", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    if (p.customer_id.empty()) return UnauthenticatedError("not logged in");
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body.is_object() || !body.contains("version") || !body["version"].is_number_integer() ||
        body["version"].get<int64_t>() < 1) {
      return InvalidArgumentError("body must be {\"version\": N, \"document\": ..., \"signature\": ...} "
                                  "with N >= 1");
    }
    // The customer's signed request, relayed unchanged: the KMS retires on
    // the customer's signature, not on the portal's word.
    auto text = [&](const char* name) {
      return body.contains(name) && body[name].is_string() ? body[name].get<std::string>() : std::string();
    };
    ASSIGN_OR_RETURN(CustomerKey k, svc.kms->RetireCustomerKey(p.customer_id, body["version"].get<int64_t>(),
                                                               text("document"), text("signature")));
    return ToJson(k);
  });
  server.Json("POST", "/v1/customer/signing-key", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    std::string pem;
    std::vector<uint8_t> proof;
    RETURN_IF_ERROR(SigningKeyFrom(body, "public_key_pem", "proof", &pem, &proof));
    ASSIGN_OR_RETURN(SigningKey k, svc.accounts->RegisterSigningKey(p, pem, proof));
    return ToJson(k);
  }, 201);
  server.Json("GET", "/v1/kms/ca", [svc](const net::Request&) -> StatusOr<json> {
    return json{{"ca_cert_pem", svc.kms->CaCertificatePem()}};
  });

  // --- the agent binary (the running vmseal) ---
  server.Json("GET", "/v1/agent/sha256", [svc](const net::Request&) -> StatusOr<json> {
    if (!svc.agent_binary) return NotFoundError("no agent binary is served");
    return json{{"sha256", svc.agent_sha256_hex}, {"size_bytes", svc.agent_size_bytes}};
  });
  server.GetFile("/v1/agent", [svc](const net::Request&) -> StatusOr<net::FileResponse> {
    if (!svc.agent_binary) return NotFoundError("no agent binary is served");
    return FileAnswer(svc.agent_binary, svc.agent_sha256_hex);
  });
  server.Json("POST", "/v1/login", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body["login_id"].is_string() || !body["password"].is_string()) {
      return InvalidArgumentError("login_id and password are required");
    }
    LoginRequest login{body["login_id"].get<std::string>(),
                       SecretBytes(crypto::AsBytes(body["password"].get_ref<const std::string&>()))};
    ASSIGN_OR_RETURN(LoginResponse r, svc.accounts->Login(login));
    return json{{"token", std::string(crypto::AsStringView(r.token.UnsafeSpan()))},
                {"expires_unix", r.expires_unix},
                {"customer_id", r.customer_id}};
  });
  server.Json("POST", "/v1/logout", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(SecretBytes token, BearerToken(req));
    RETURN_IF_ERROR(svc.accounts->Logout(token));
    return json::object();
  });

  // --- the web console's session (docs/console.md) ---
  RegisterConsoleSessionRoutes(server, svc, operator_credential);

  // --- uploads ---
  server.Json("POST", "/v1/uploads", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(UploadState u, svc.images->BeginUpload(p, {}));
    return ToJson(u);
  }, 201);
  server.Json("GET", R"(/v1/uploads/([0-9a-f]{32}))", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(UploadState u, svc.images->GetUpload(p, req.path_params[0]));
    return ToJson(u);
  });
  // The body streams to the upload (its size is the upload's business, up
  // to the largest upload), in pieces the server hands over.
  server.Stream("PUT", R"(/v1/uploads/([0-9a-f]{32}))", [svc, who](const net::Request& req)
                    -> StatusOr<std::unique_ptr<net::BodySink>> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    const std::string off = req.QueryParam("offset");
    char* end = nullptr;
    const uint64_t offset = std::strtoull(off.c_str(), &end, 10);
    if (off.empty() || *end != '\0') return InvalidArgumentError("offset query parameter is required");
    // Checked before any byte is read: the upload is this customer's, and
    // no other replica is appending to it.
    ASSIGN_OR_RETURN(UploadHold hold, svc.images->HoldUpload(p, req.path_params[0]));
    return std::unique_ptr<net::BodySink>(
        new UploadSink(svc.images, p, req.path_params[0], offset, std::move(hold)));
  }, std::numeric_limits<uint64_t>::max());
  server.Json("POST", R"(/v1/uploads/([0-9a-f]{32})/commit)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    CommitUploadRequest c;
    c.upload_id = req.path_params[0];
    c.name = body.value("name", "");
    c.sha256_hex = body.value("sha256", "");
    ASSIGN_OR_RETURN(c.policy, PolicyFrom(body));
    if (body.contains("kms_policy")) {
      // The portal writes no release policy: the customer's is in its
      // signed package or a signed document.
      return InvalidArgumentError(
          "kms_policy is not accepted: seal the release policy into the package "
          "(vmseal seal --policy) or sign one (vmseal customer set-policy)");
    }
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->CommitUpload(p, c));
    if (!i.key_id.empty()) {
      // The KMS learns the tag's identity, owned by this
      // customer: grants and this image's policy need it.
      Status reg = svc.kms->RegisterImage(p.customer_id, i.tagged_image_id, i.key_id, i.signed_texts);
      if (!reg.ok()) {
        (void)svc.images->DeleteImage(p, i.image_id);
        return Status(reg.code(), "KMS image registration: " + reg.message());
      }
    }
    return ToJson(i);
  }, 201);

  // --- images ---
  server.Json("GET", "/v1/images", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(auto list, svc.images->ListImages(p));
    json images = json::array();
    for (const auto& i : list) images.push_back(ToJson(i));
    return json{{"images", images}};
  });
  server.Json("GET", R"(/v1/images/([A-Za-z0-9-]+))", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.path_params[0]));
    return ToJson(i);
  });
  server.Json("DELETE", R"(/v1/images/([A-Za-z0-9-]+))", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    RETURN_IF_ERROR(svc.images->DeleteImage(p, req.path_params[0]));
    return json::object();
  });
  // The customer's signed lifecycle requests, relayed to the KMS
  // (csp/lifecycle.h): revoke one image, close the account.
  auto signed_texts = [](const json& body, const char* name) {
    return body.contains(name) && body[name].is_string() ? body[name].get<std::string>() : std::string();
  };
  server.Json("POST", R"(/v1/images/([A-Za-z0-9-]+)/revoke)", [svc, who, signed_texts](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.path_params[0]));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    ASSIGN_OR_RETURN(LifecycleOutcome o, RevokeImage(svc.kms, svc.jobs, p, i, signed_texts(body, "document"),
                                                     signed_texts(body, "signature")));
    return LifecycleOutcomeJson(o);
  });
  server.Json("POST", "/v1/customer/close", [svc, who, signed_texts](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    ASSIGN_OR_RETURN(LifecycleOutcome o, CloseAccount(svc.kms, svc.jobs, p, signed_texts(body, "document"),
                                                      signed_texts(body, "signature")));
    return LifecycleOutcomeJson(o);
  });
  // The customer's signed policy documents, relayed to the KMS
  // (csp/signed_policy.h): the portal makes none of its own.
  server.Json("PUT", R"(/v1/images/([A-Za-z0-9-]+)/kms-policy)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.path_params[0]));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    auto text = [&](const char* name) {
      return body.contains(name) && body[name].is_string() ? body[name].get<std::string>()
                                                            : std::string();
    };
    ASSIGN_OR_RETURN(SignedPolicy sp,
                     RelaySignedPolicy(svc.kms, p, i, text("document"), text("signature")));
    return json{{"image_id", i.image_id}, {"kms_image_id", KmsImageId(i)}, {"version", sp.version}};
  });
  server.Json("GET", R"(/v1/images/([A-Za-z0-9-]+)/kms-policy)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.path_params[0]));
    ASSIGN_OR_RETURN(SignedPolicy sp, NewestSignedPolicy(svc.kms, p, i));
    return json{{"image_id", i.image_id}, {"kms_image_id", KmsImageId(i)},
                {"version", sp.version},
                {"document", crypto::Base64Encode(crypto::AsBytes(sp.document))},
                {"signature", sp.signature}};
  });
  // Issue 19: the customer's signed re-wrap authorization for one of its
  // images, relayed to the KMS unchanged (the KMS checks the signature).
  server.Json("POST", R"(/v1/images/([A-Za-z0-9-]+)/rewrap)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.path_params[0]));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body.is_object() || !body.contains("authorization") || !body["authorization"].is_object()) {
      return InvalidArgumentError("the body needs the customer's authorization");
    }
    const json& a = body["authorization"];
    if (a.value("tenant", "") != p.customer_id || a.value("image_id", "") != KmsImageId(i)) {
      return PermissionDeniedError("tenant_mismatch: the authorization is not for image " +
                                   KmsImageId(i) + " of " + p.customer_id);
    }
    return svc.kms->RelayRewrap(body);
  });
  // Issue 19: the customer's signed re-wrap of one of its images to its
  // newest key version (kms/key_rewrap.cc), relayed unchanged.
  server.Json("POST", R"(/v1/images/([A-Za-z0-9-]+)/key-rewrap)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.path_params[0]));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body.is_object() || !body.contains("authorization") || !body["authorization"].is_object()) {
      return InvalidArgumentError("the body needs the customer's authorization");
    }
    const json& a = body["authorization"];
    if (a.value("tenant", "") != p.customer_id || a.value("image_id", "") != KmsImageId(i)) {
      return PermissionDeniedError("tenant_mismatch: the authorization is not for image " +
                                   KmsImageId(i) + " of " + p.customer_id);
    }
    return svc.kms->RelayKeyRewrap(p.customer_id, body);
  });
  server.GetFile(R"(/v1/images/([A-Za-z0-9-]+)/package)", [svc, who](const net::Request& req)
                     -> StatusOr<net::FileResponse> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(auto f, svc.images->OpenImage(p, req.path_params[0]));
    return FileAnswer(std::shared_ptr<RandomAccessFile>(std::move(f)), "");
  });
  server.Json("GET", R"(/v1/images/([A-Za-z0-9-]+)/placement)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(Placement pl, svc.jobs->ExplainImagePlacement(p, req.path_params[0]));
    return ToJson(pl);
  });

  // The customer's audit of one image, relayed from the KMS (csp/customer_audit.h).
  server.Json("GET", R"(/v1/images/([A-Za-z0-9._:@-]{1,128})/audit)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(int64_t after, ParseAuditCount(req.QueryParam("after"), "after"));
    ASSIGN_OR_RETURN(int64_t old_size, ParseAuditCount(req.QueryParam("old"), "old"));
    return RelayCustomerAudit(*svc.images, *svc.kms, p, req.path_params[0], after, old_size);
  });

  // --- launches and jobs ---
  server.Json("POST", "/v1/launch", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->Launch(p, {body.value("image_id", "")}));
    return ToJson(j);
  }, 201);
  server.Json("GET", "/v1/jobs", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(auto list, svc.jobs->ListJobs(p));
    json jobs = json::array();
    for (const auto& j : list) jobs.push_back(ToJson(j));
    return json{{"jobs", jobs}};
  });
  server.Json("GET", R"(/v1/jobs/([A-Za-z0-9-]+))", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->GetJob(p, req.path_params[0]));
    return ToJson(j);
  });

  // The same, live: server-sent events (csp/job_events.h: no store read per
  // stream per poll; capped per customer and per replica). Authenticated by
  // the session cookie an EventSource sends (or a bearer header); nothing
  // secret in the URL. Not state-changing, so no CSRF token.
  auto hub = JobEventHub::Create({}, svc.jobs, svc.console_logs, svc.accounts);
  server.GetEvents(R"(/v1/jobs/([A-Za-z0-9-]+)/events)",
                   [who, hub](const net::Request& req) -> StatusOr<std::unique_ptr<net::EventStream>> {
    return hub->Open([who, req]() { return who(req); }, req.path_params[0],
                     [](const Job& j) { return DumpJson(ToJson(j)); });
  }, /*poll_ms=*/500, /*max_seconds=*/300);

  // --- the customer's VMs ({vm}: the job id or the VM name) ---
  server.Json("POST", R"(/v1/vms/([A-Za-z0-9._-]{1,128})/stop)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->StopVm(p, req.path_params[0]));
    return ToJson(j);
  }, 202);
  server.Json("POST", R"(/v1/vms/([A-Za-z0-9._-]{1,128})/start)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->StartVm(p, req.path_params[0]));
    return ToJson(j);
  }, 202);
  server.Json("DELETE", R"(/v1/vms/([A-Za-z0-9._-]{1,128}))", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->DeleteVm(p, req.path_params[0]));
    // The VM's console text goes with it (also from the store).
    if (svc.console_logs != nullptr) svc.console_logs->Erase(j.job_id);
    return ToJson(j);
  }, 202);

  // The VM's serial console as its host last relayed it (csp/console_logs.h).
  server.Json("GET", R"(/v1/vms/([A-Za-z0-9._-]{1,128})/console)", [svc, who](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(Principal p, who(req));
    if (svc.console_logs == nullptr) return UnimplementedError("console logs are not kept");
    ASSIGN_OR_RETURN(auto jobs, svc.jobs->ListJobs(p));
    for (const Job& j : jobs) {
      if (j.job_id != req.path_params[0] && (j.vm_name.empty() || j.vm_name != req.path_params[0])) continue;
      ASSIGN_OR_RETURN(ConsoleLogs::Entry e, svc.console_logs->Get(j.job_id));
      return json{{"job_id", j.job_id}, {"vm_name", j.vm_name}, {"text", e.text},
                  {"updated_unix", e.updated_unix}};
    }
    return NotFoundError("no such vm");
  });

  // --- hosts (mTLS) ---
  server.Json("POST", "/v1/hosts/register", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    HostRegistration r;
    r.host_id = host;
    if (body.contains("host_id") && body["host_id"] != host) {
      return PermissionDeniedError("host_id differs from the client certificate CN");
    }
    if (body.contains("capacity")) {
      const json& c = body["capacity"];
      if (!c.is_object() || !c["vcpus"].is_number_unsigned()) {
        return InvalidArgumentError("capacity.vcpus is required");
      }
      r.vcpus = c["vcpus"].get<uint32_t>();
      r.memory_mib = c.value("memory_mib", uint64_t{0});
      r.capacity_slots = r.vcpus;
      for (const char* slots : {"max_vms", "slots"}) {
        if (c.contains(slots) && c[slots].is_number_unsigned()) {
          r.capacity_slots = c[slots].get<uint32_t>();
        }
      }
    }
    if (body.contains("capacity_slots")) {
      if (!body["capacity_slots"].is_number_unsigned()) {
        return InvalidArgumentError("capacity_slots must be a positive integer");
      }
      r.capacity_slots = body["capacity_slots"].get<uint32_t>();
    }
    if (!body.contains("capacity") && !body.contains("capacity_slots")) {
      return InvalidArgumentError("capacity {vcpus, memory_mib} is required");
    }
    if (body.contains("tags")) {
      const json& t = body["tags"];
      if (t.is_array()) {
        for (const json& v : t) {
          std::string kv = v.is_string() ? v.get<std::string>() : "";
          size_t eq = kv.find('=');
          if (eq == std::string::npos || eq == 0) {
            return InvalidArgumentError("tags must be \"key=value\" strings");
          }
          r.tags[kv.substr(0, eq)] = kv.substr(eq + 1);
        }
      } else if (t.is_object()) {
        for (auto& [k, v] : t.items()) {
          if (!v.is_string()) return InvalidArgumentError("tag values must be strings");
          r.tags[k] = v.get<std::string>();
        }
      } else {
        return InvalidArgumentError("tags must be a list of \"key=value\" strings");
      }
    }
    RETURN_IF_ERROR(svc.hosts->Register(r));
    return json{{"host_id", host},
                {"capacity_slots", r.capacity_slots},
                {"heartbeat_timeout_seconds", svc.hosts->heartbeat_timeout_seconds()}};
  });
  server.Json("POST", "/v1/hosts/heartbeat", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    RETURN_IF_ERROR(svc.hosts->Heartbeat(host));
    return json{{"host_id", host},
                {"in_pool", true},
                {"heartbeat_timeout_seconds", svc.hosts->heartbeat_timeout_seconds()}};
  });
  server.Json("GET", "/v1/hosts/jobs", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    // A lease the portal could not renew is an error the host sees (503
    // store_unavailable), not a poll that looks fine.
    ASSIGN_OR_RETURN(std::vector<Job> pending, svc.jobs->PollJobs(host));
    json jobs = json::array();
    for (const auto& j : pending) jobs.push_back(ToJson(j, true));
    json vms = json::array();
    for (const HostVmCommand& c : svc.jobs->VmCommands(host)) {
      vms.push_back({{"job_id", c.job_id}, {"vm_name", c.vm_name}, {"action", c.action}});
    }
    return json{{"jobs", jobs}, {"vms", vms}};
  });
  server.Json("POST", R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/progress)", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    // "phase" (contract) or "state" (older hosts).
    std::string phase = body.value("phase", body.value("state", ""));
    if (phase == "failed") {
      // A host that gives up reports a refusal (launch failed).
      RefusalReport r{req.path_params[0], RefusalKind::kLaunchFailed,
                      body.value("reason", "") + (body.contains("message")
                          ? ": " + body.value("message", "") : "")};
      ASSIGN_OR_RETURN(Job j, svc.jobs->ReportRefusal(host, r));
      return ToJson(j, true);
    }
    ASSIGN_OR_RETURN(JobState s, JobStateFromName(phase));
    ProgressReport p{req.path_params[0], s, body.value("vm_name", ""),
                     body.value("serial_log_path", "")};
    ASSIGN_OR_RETURN(Job j, svc.jobs->ReportProgress(host, p));
    return ToJson(j, true);
  });
  server.Json("POST", R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/refusal)", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    // {reason, message} (contract) or {kind, detail} (older hosts).
    std::string kind = body.value("reason", body.value("kind", ""));
    RefusalReport r;
    r.job_id = req.path_params[0];
    r.detail = body.value("message", body.value("detail", ""));
    if (kind == "unencrypted_image") {
      r.kind = RefusalKind::kUnencryptedImage;
    } else if (kind == "attestation_denied") {
      r.kind = RefusalKind::kAttestationDenied;
    } else if (kind == "launch_failed") {
      r.kind = RefusalKind::kLaunchFailed;
    } else if (IsMachineReason(kind)) {
      // The host's own machine reason (pcr_policy, kms_unavailable,
      // package_rejected, decrypt_failed, fetch_failed, ...).
      r.reason = kind;
    } else {
      return InvalidArgumentError(
          "reason must be a machine reason matching [a-z][a-z0-9_]{0,63}");
    }
    ASSIGN_OR_RETURN(Job j, svc.jobs->ReportRefusal(host, r));
    return ToJson(j, true);
  });
  server.Json("POST", R"(/v1/hosts/vms/([A-Za-z0-9._-]{1,64})/ended)", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body["reason"].is_string()) return InvalidArgumentError("reason is required");
    if (body.contains("text") && !body["text"].is_string()) {
      return InvalidArgumentError("text must be a string");
    }
    VmEndedReport r{req.path_params[0], body["reason"].get<std::string>(),
                    body.value("text", "")};
    if (body.contains("run")) {
      if (!body["run"].is_number_integer() || body["run"].get<int64_t>() < 1) {
        return InvalidArgumentError("run must be a positive integer");
      }
      r.run = body["run"].get<int64_t>();
    }
    ASSIGN_OR_RETURN(Job j, svc.jobs->ReportVmEnded(host, r));
    return ToJson(j, true);
  });
  server.Json("POST", R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/events)", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body["event"].is_string() || (body.contains("text") && !body["text"].is_string())) {
      return InvalidArgumentError("event (string) is required; text is a string");
    }
    DiskEventReport r{req.path_params[0], body["event"].get<std::string>(), body.value("text", "")};
    ASSIGN_OR_RETURN(Job j, svc.jobs->ReportDiskEvent(host, r));
    return ToJson(j, true);
  });
  server.Json("POST", R"(/v1/hosts/vms/([A-Za-z0-9._-]{1,64})/console)", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    if (svc.console_logs == nullptr) return UnimplementedError("console logs are not kept");
    ASSIGN_OR_RETURN(json body, ParseBody(req));
    if (!body["text"].is_string()) return InvalidArgumentError("text (string) is required");
    // Only the host that runs the VM reports its console.
    ASSIGN_OR_RETURN(Job j, svc.jobs->GetHostVm(host, req.path_params[0]));
    RETURN_IF_ERROR(svc.console_logs->Put(j.job_id, body["text"].get<std::string>(),
                                          static_cast<int64_t>(std::time(nullptr))));
    return json{{"job_id", j.job_id}};
  });
  server.Json("POST", R"(/v1/hosts/vms/([A-Za-z0-9._-]{1,64})/deleted)", [svc](const net::Request& req) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->ReportVmDeleted(host, req.path_params[0]));
    return ToJson(j, true);
  });
  server.GetFile(R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/package)", [svc](const net::Request& req)
                     -> StatusOr<net::FileResponse> {
    ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
    auto job = svc.jobs->GetAnyJob(req.path_params[0]);
    if (!job.ok() || job->host_id != host) return NotFoundError("no such job on this host");
    ASSIGN_OR_RETURN(auto f, svc.store->Get(job->object_key));
    return FileAnswer(std::shared_ptr<RandomAccessFile>(std::move(f)), job->package_sha256_hex);
  });

  // --- operator ---
  // Read-only views of the KMS for the operator console (docs/console.md
  // "Operator"), made with the portal's own KMS identity: the flavor
  // definitions, and the newest audit records, each with its inclusion
  // proof against one signed checkpoint (the page verifies them).
  server.Json("GET", "/v1/operator/flavors", [svc, is_operator](const net::Request& req) -> StatusOr<json> {
    RETURN_IF_ERROR(is_operator(req));
    return svc.kms->ListFlavors();
  });
  // The KMS-wide audit log for the operator page (docs/console.md "Operator
  // views of the KMS"): the checkpoint with the log key, its endorsement by
  // the KMS CA and that CA; the inclusion proofs of one page of records
  // (after=N: records N+1..N+limit, oldest first; without after: the newest
  // `limit`); with old=M, the consistency proof from the tree of M records.
  server.Json("GET", "/v1/operator/audit", [svc, is_operator](const net::Request& req) -> StatusOr<json> {
    RETURN_IF_ERROR(is_operator(req));
    auto number = [&req](const char* name, long long dflt, long long lo, long long hi) -> StatusOr<long long> {
      const std::string text = req.QueryParam(name, std::to_string(dflt));
      char* end = nullptr;
      const long long v = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || v < lo || v > hi) {
        return InvalidArgumentError(std::string(name) + " must be " + std::to_string(lo) + ".." + std::to_string(hi));
      }
      return v;
    };
    ASSIGN_OR_RETURN(long long limit, number("limit", 20, 1, 50));
    ASSIGN_OR_RETURN(long long after, number("after", -1, -1, 1LL << 53));
    ASSIGN_OR_RETURN(long long old_size, number("old", 0, 0, 1LL << 53));
    ASSIGN_OR_RETURN(json cp, svc.kms->AuditCheckpoint());
    if (!cp.contains("checkpoint") || !cp["checkpoint"].is_string() || !cp.contains("log_key") ||
        !cp["log_key"].is_string()) {
      return DataLossError("KMS checkpoint answer is malformed");
    }
    // The tree size is the checkpoint's second line (audit-log.md §3); the
    // page checks the signature, so a wrong size only fails its proofs.
    const std::string note = cp["checkpoint"].get<std::string>();
    const size_t a = note.find('\n');
    const size_t b = a == std::string::npos ? a : note.find('\n', a + 1);
    const std::string size_text = b == std::string::npos ? "" : note.substr(a + 1, b - a - 1);
    char* end = nullptr;
    const long long size = std::strtoll(size_text.c_str(), &end, 10);
    if (size_text.empty() || *end != '\0' || size < 0) return DataLossError("KMS checkpoint has no tree size");
    const long long first = after < 0 ? std::max(1LL, size - limit + 1) : after + 1;
    const long long last = std::min(size, first + limit - 1);
    json proofs = json::array();
    for (long long seq = first; seq <= last; ++seq) {
      ASSIGN_OR_RETURN(std::string proof, svc.kms->AuditInclusionProof(seq, size));
      proofs.push_back(proof);
    }
    // A saved tree larger than this one is the page's to report (rolled
    // back); no proof exists for it.
    std::string consistency;
    if (old_size > 0 && old_size <= size) {
      ASSIGN_OR_RETURN(consistency, svc.kms->AuditConsistencyProof(old_size, size));
    }
    return json{{"checkpoint", note}, {"log_key", cp["log_key"]},
                {"log_key_endorsement", cp.value("log_key_endorsement", "")},
                {"kms_ca_cert_pem", svc.kms->CaCertificatePem()},
                {"proofs", proofs}, {"consistency", consistency},
                {"next_after", after >= 0 && last < size ? last : 0}};
  });
  server.Json("GET", "/v1/operator/jobs", [svc, is_operator](const net::Request& req) -> StatusOr<json> {
    RETURN_IF_ERROR(is_operator(req));
    json jobs = json::array();
    for (const auto& j : svc.jobs->ListAllJobs()) jobs.push_back(ToJson(j, true));
    return json{{"jobs", jobs}};
  });
  server.Json("GET", "/v1/operator/hosts", [svc, is_operator](const net::Request& req) -> StatusOr<json> {
    RETURN_IF_ERROR(is_operator(req));
    json hosts = json::array();
    for (const auto& h : svc.hosts->List()) {
      hosts.push_back({{"host_id", h.registration.host_id},
                       {"capacity_slots", h.registration.capacity_slots},
                       {"tags", h.registration.tags},
                       {"vcpus", h.registration.vcpus},
                       {"memory_mib", h.registration.memory_mib},
                       {"in_pool", h.in_pool},
                       {"last_heartbeat_unix", h.last_heartbeat_unix}});
    }
    return json{{"hosts", hosts}};
  });
  server.Json("GET", R"(/v1/operator/jobs/([A-Za-z0-9-]+)/placement)", [svc, is_operator](const net::Request& req) -> StatusOr<json> {
    RETURN_IF_ERROR(is_operator(req));
    ASSIGN_OR_RETURN(Job j, svc.jobs->GetAnyJob(req.path_params[0]));
    json all = json::array();
    for (const Placement& p : j.placements) all.push_back(ToJson(p));
    json out = ToJson(j.last_placement);
    out["job"] = ToJson(j, true);
    out["history"] = all;
    return out;
  });
  server.Json("GET", "/v1/operator/placement", [svc, is_operator](const net::Request& req) -> StatusOr<json> {
    RETURN_IF_ERROR(is_operator(req));
    const std::string customer = req.QueryParam("customer_id");
    const std::string image = req.QueryParam("image_id");
    if (customer.empty() || image.empty()) {
      return InvalidArgumentError("customer_id and image_id query parameters are required");
    }
    ASSIGN_OR_RETURN(Placement p, svc.jobs->ExplainImagePlacement(Principal{customer}, image));
    return ToJson(p);
  });
}

}  // namespace vmseal::csp
