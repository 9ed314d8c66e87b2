#include "csp/http_api.h"

#include <httplib.h>
#include <openssl/x509.h>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "csp/customer_audit.h"
#include "json/json.h"
#include "csp/signed_policy.h"

namespace vmseal::csp {
namespace {

using json = nlohmann::json;
constexpr size_t kAppendBufferBytes = 4 << 20;

// The machine reason of an error the portal itself raises, for clients that
// act on it (CONTRACT.md: {"error": {code, reason, message}}); "" if none.
std::string ReasonFor(const Status& s) {
  const std::string& m = s.message();
  if (m.starts_with("KMS policy")) return "kms_policy";
  if (m.starts_with("KMS: ")) {
    return s.code() == StatusCode::kUnavailable ? "kms_unavailable" : "kms_error";
  }
  if (m.starts_with("package rejected")) return "package_rejected";
  if (m.starts_with("tenant_mismatch:")) return "tenant_mismatch";
  if (m.starts_with("job cannot move")) return "bad_transition";
  if (m == "no such job on this host" || m == "no such vm on this host") return "not_assigned";
  if (m.starts_with("bad_state:")) return "bad_state";
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

void SendError(httplib::Response& res, const Status& s) {
  res.status = HttpStatusFromCode(s.code());
  json body = {{"error", {{"code", std::string(StatusCodeName(s.code()))}, {"message", s.message()}}}};
  if (std::string reason = ReasonFor(s); !reason.empty()) body["error"]["reason"] = reason;
  res.set_content(DumpJson(body), "application/json");
}

void SendJson(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(DumpJson(body), "application/json");
}

// Runs `fn` and sends its JSON or its error.
template <typename Fn>
void Reply(httplib::Response& res, Fn&& fn, int ok_status = 200) {
  StatusOr<json> out = fn();
  if (!out.ok()) return SendError(res, out.status());
  SendJson(res, *out, ok_status);
}

StatusOr<json> ParseBody(const httplib::Request& req) {
  if (req.body.empty()) return json::object();
  return ParseJsonObject(req.body, "request body");
}

StatusOr<SecretBytes> BearerToken(const httplib::Request& req) {
  const std::string& h = req.get_header_value("Authorization");
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
          {"created_unix", k.created_unix}};
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
StatusOr<std::string> HostIdentity(const httplib::Request& req) {
  if (req.ssl == nullptr) return UnauthenticatedError("host routes need a TLS client certificate");
  X509* cert = SSL_get1_peer_certificate(req.ssl);
  if (cert == nullptr || SSL_get_verify_result(req.ssl) != X509_V_OK) {
    X509_free(cert);
    return UnauthenticatedError("no verified client certificate");
  }
  char cn[256] = {0};
  char ou[64] = {0};
  int n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
  int m = X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_organizationalUnitName, ou,
                                    sizeof(ou));
  X509_free(cert);
  if (n <= 0) return UnauthenticatedError("client certificate has no CN");
  if (m <= 0 || std::string_view(ou, static_cast<size_t>(m)) != "host") {
    return PermissionDeniedError("client certificate is not a host identity (OU must be host)");
  }
  return std::string(cn, static_cast<size_t>(n));
}

// Serves `file` with Range support (cpp-httplib slices the provider).
void SendFile(httplib::Response& res, std::shared_ptr<RandomAccessFile> file) {
  auto size = file->Size();
  if (!size.ok()) return SendError(res, size.status());
  res.set_content_provider(
      *size, "application/octet-stream",
      [file](size_t offset, size_t length, httplib::DataSink& sink) {
        std::vector<uint8_t> buf(std::min<size_t>(length, 1 << 20));
        auto n = file->Read(offset, buf);
        if (!n.ok() || *n == 0) return false;
        return sink.write(reinterpret_cast<const char*>(buf.data()), *n);
      });
}

}  // namespace

void RegisterPortalRoutes(httplib::Server& server, const PortalServices& svc) {
  auto who = [svc](const httplib::Request& req) -> StatusOr<Principal> {
    ASSIGN_OR_RETURN(SecretBytes token, BearerToken(req));
    return svc.accounts->Authenticate(token);
  };
  auto is_operator = [svc](const httplib::Request& req) -> Status {
    if (svc.operator_token == nullptr || svc.operator_token->empty()) {
      return PermissionDeniedError("operator routes are disabled");
    }
    ASSIGN_OR_RETURN(SecretBytes token, BearerToken(req));
    if (!token.Equals(*svc.operator_token)) return PermissionDeniedError("not the operator");
    return OkStatus();
  };

  // --- accounts ---
  server.Post("/v1/register", [svc](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
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
  });
  server.Get("/v1/customer/key", [svc, who](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(Principal p, who(req));
      ASSIGN_OR_RETURN(CustomerKey k, svc.accounts->GetCustomerKey(p));
      json out = ToJson(k);
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
  });
  server.Post("/v1/customer/signing-key", [svc, who](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(Principal p, who(req));
      ASSIGN_OR_RETURN(json body, ParseBody(req));
      std::string pem;
      std::vector<uint8_t> proof;
      RETURN_IF_ERROR(SigningKeyFrom(body, "public_key_pem", "proof", &pem, &proof));
      ASSIGN_OR_RETURN(SigningKey k, svc.accounts->RegisterSigningKey(p, pem, proof));
      return ToJson(k);
    }, 201);
  });
  server.Get("/v1/kms/ca", [svc](const httplib::Request&, httplib::Response& res) {
    SendJson(res, {{"ca_cert_pem", svc.kms->CaCertificatePem()}});
  });

  // --- the agent binary (the running vmseal) ---
  server.Get("/v1/agent/sha256", [svc](const httplib::Request&, httplib::Response& res) {
    if (!svc.agent_binary) return SendError(res, NotFoundError("no agent binary is served"));
    SendJson(res, {{"sha256", svc.agent_sha256_hex}, {"size_bytes", svc.agent_size_bytes}});
  });
  server.Get("/v1/agent", [svc](const httplib::Request&, httplib::Response& res) {
    if (!svc.agent_binary) return SendError(res, NotFoundError("no agent binary is served"));
    res.set_header("X-Content-SHA256", svc.agent_sha256_hex);
    SendFile(res, svc.agent_binary);
  });
  server.Post("/v1/login", [svc](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
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
  });
  server.Post("/v1/logout", [svc](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(SecretBytes token, BearerToken(req));
      RETURN_IF_ERROR(svc.accounts->Logout(token));
      return json::object();
    });
  });

  // --- uploads ---
  server.Post("/v1/uploads", [svc, who](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(Principal p, who(req));
      ASSIGN_OR_RETURN(UploadState u, svc.images->BeginUpload(p, {}));
      return ToJson(u);
    }, 201);
  });
  server.Get(R"(/v1/uploads/([0-9a-f]{32}))",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(UploadState u, svc.images->GetUpload(p, req.matches[1]));
                 return ToJson(u);
               });
             });
  server.Put(R"(/v1/uploads/([0-9a-f]{32}))",
             [svc, who](const httplib::Request& req, httplib::Response& res,
                        const httplib::ContentReader& content) {
               auto principal = who(req);
               if (!principal.ok()) return SendError(res, principal.status());
               const std::string id = req.matches[1];
               char* end = nullptr;
               const std::string off = req.get_param_value("offset");
               uint64_t offset = std::strtoull(off.c_str(), &end, 10);
               if (off.empty() || *end != '\0') {
                 return SendError(res, InvalidArgumentError("offset query parameter is required"));
               }
               // Appends in large batches: each append is fsynced.
               std::string buf;
               Status failed;
               UploadState state{id, offset, 0};
               auto flush = [&]() -> bool {
                 if (buf.empty()) return true;
                 store::StringReader r(buf);
                 auto s = svc.images->AppendUpload(*principal, id, state.offset_bytes, r);
                 buf.clear();
                 if (!s.ok()) {
                   failed = s.status();
                   return false;
                 }
                 state = *s;
                 return true;
               };
               content([&](const char* data, size_t len) {
                 buf.append(data, len);
                 return buf.size() < kAppendBufferBytes || flush();
               });
               if (failed.ok()) flush();
               if (!failed.ok()) return SendError(res, failed);
               auto now = svc.images->GetUpload(*principal, id);
               if (!now.ok()) return SendError(res, now.status());
               SendJson(res, ToJson(*now));
             });
  server.Post(R"(/v1/uploads/([0-9a-f]{32})/commit)",
              [svc, who](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(Principal p, who(req));
                  ASSIGN_OR_RETURN(json body, ParseBody(req));
                  CommitUploadRequest c;
                  c.upload_id = req.matches[1];
                  c.name = body.value("name", "");
                  c.sha256_hex = body.value("sha256", "");
                  ASSIGN_OR_RETURN(c.policy, PolicyFrom(body));
                  if (body.contains("kms_policy")) {
                    // The portal writes no release policy: the customer's
                    // is in its signed package or a signed document.
                    return InvalidArgumentError(
                        "kms_policy is not accepted: seal the release policy into the package "
                        "(vmseal seal --policy) or sign one (vmseal customer set-policy)");
                  }
                  ASSIGN_OR_RETURN(ImageInfo i, svc.images->CommitUpload(p, c));
                  if (!i.key_id.empty()) {
                    // The KMS learns the tag's identity, owned by this
                    // customer: grants and this image's policy need it.
                    Status reg = svc.kms->RegisterImage(p.customer_id, i.tagged_image_id, i.key_id);
                    if (!reg.ok()) {
                      (void)svc.images->DeleteImage(p, i.image_id);
                      return Status(reg.code(), "KMS image registration: " + reg.message());
                    }
                  }
                  return ToJson(i);
                }, 201);
              });

  // --- images ---
  server.Get("/v1/images", [svc, who](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(Principal p, who(req));
      ASSIGN_OR_RETURN(auto list, svc.images->ListImages(p));
      json images = json::array();
      for (const auto& i : list) images.push_back(ToJson(i));
      return json{{"images", images}};
    });
  });
  server.Get(R"(/v1/images/([A-Za-z0-9-]+))",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.matches[1]));
                 return ToJson(i);
               });
             });
  server.Delete(R"(/v1/images/([A-Za-z0-9-]+))",
                [svc, who](const httplib::Request& req, httplib::Response& res) {
                  Reply(res, [&]() -> StatusOr<json> {
                    ASSIGN_OR_RETURN(Principal p, who(req));
                    RETURN_IF_ERROR(svc.images->DeleteImage(p, req.matches[1]));
                    return json::object();
                  });
                });
  server.Put(R"(/v1/images/([A-Za-z0-9-]+)/kms-policy)",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.matches[1]));
                 ASSIGN_OR_RETURN(json body, ParseBody(req));
                 auto text = [&](const char* name) {
                   return body.contains(name) && body[name].is_string() ? body[name].get<std::string>()
                                                                         : std::string();
                 };
                 ASSIGN_OR_RETURN(SignedPolicy sp, RelaySignedPolicy(svc.kms, p, i, text("document"),
                                                                     text("signature")));
                 return json{{"image_id", i.image_id}, {"kms_image_id", KmsImageId(i)},
                             {"version", sp.version}};
               });
             });
  server.Get(R"(/v1/images/([A-Za-z0-9-]+)/kms-policy)",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(ImageInfo i, svc.images->GetImage(p, req.matches[1]));
                 ASSIGN_OR_RETURN(SignedPolicy sp, NewestSignedPolicy(svc.kms, p, i));
                 return json{{"image_id", i.image_id}, {"kms_image_id", KmsImageId(i)},
                             {"version", sp.version},
                             {"document", crypto::Base64Encode(crypto::AsBytes(sp.document))},
                             {"signature", sp.signature}};
               });
             });
  server.Get(R"(/v1/images/([A-Za-z0-9-]+)/package)",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               auto p = who(req);
               if (!p.ok()) return SendError(res, p.status());
               auto f = svc.images->OpenImage(*p, req.matches[1]);
               if (!f.ok()) return SendError(res, f.status());
               SendFile(res, std::shared_ptr<RandomAccessFile>(std::move(f).value()));
             });
  server.Get(R"(/v1/images/([A-Za-z0-9-]+)/placement)",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(Placement pl, svc.jobs->ExplainImagePlacement(p, req.matches[1]));
                 return ToJson(pl);
               });
             });

  // The customer's audit of one image, relayed from the KMS (csp/customer_audit.h).
  server.Get(R"(/v1/images/([A-Za-z0-9._:@-]{1,128})/audit)",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(int64_t after, ParseAuditCount(req.get_param_value("after"), "after"));
                 ASSIGN_OR_RETURN(int64_t old_size, ParseAuditCount(req.get_param_value("old"), "old"));
                 return RelayCustomerAudit(*svc.images, *svc.kms, p, req.matches[1], after, old_size);
               });
             });

  // --- launches and jobs ---
  server.Post("/v1/launch", [svc, who](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(Principal p, who(req));
      ASSIGN_OR_RETURN(json body, ParseBody(req));
      ASSIGN_OR_RETURN(Job j, svc.jobs->Launch(p, {body.value("image_id", "")}));
      return ToJson(j);
    }, 201);
  });
  server.Get("/v1/jobs", [svc, who](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(Principal p, who(req));
      ASSIGN_OR_RETURN(auto list, svc.jobs->ListJobs(p));
      json jobs = json::array();
      for (const auto& j : list) jobs.push_back(ToJson(j));
      return json{{"jobs", jobs}};
    });
  });
  server.Get(R"(/v1/jobs/([A-Za-z0-9-]+))",
             [svc, who](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Principal p, who(req));
                 ASSIGN_OR_RETURN(Job j, svc.jobs->GetJob(p, req.matches[1]));
                 return ToJson(j);
               });
             });

  // --- the customer's VMs ({vm}: the job id or the VM name) ---
  server.Post(R"(/v1/vms/([A-Za-z0-9._-]{1,128})/stop)",
              [svc, who](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(Principal p, who(req));
                  ASSIGN_OR_RETURN(Job j, svc.jobs->StopVm(p, req.matches[1]));
                  return ToJson(j);
                }, 202);
              });
  server.Post(R"(/v1/vms/([A-Za-z0-9._-]{1,128})/start)",
              [svc, who](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(Principal p, who(req));
                  ASSIGN_OR_RETURN(Job j, svc.jobs->StartVm(p, req.matches[1]));
                  return ToJson(j);
                }, 202);
              });
  server.Delete(R"(/v1/vms/([A-Za-z0-9._-]{1,128}))",
                [svc, who](const httplib::Request& req, httplib::Response& res) {
                  Reply(res, [&]() -> StatusOr<json> {
                    ASSIGN_OR_RETURN(Principal p, who(req));
                    ASSIGN_OR_RETURN(Job j, svc.jobs->DeleteVm(p, req.matches[1]));
                    return ToJson(j);
                  }, 202);
                });

  // --- hosts (mTLS) ---
  server.Post("/v1/hosts/register", [svc](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
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
  });
  server.Post("/v1/hosts/heartbeat", [svc](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
      RETURN_IF_ERROR(svc.hosts->Heartbeat(host));
      return json{{"host_id", host},
                  {"in_pool", true},
                  {"heartbeat_timeout_seconds", svc.hosts->heartbeat_timeout_seconds()}};
    });
  });
  server.Get("/v1/hosts/jobs", [svc](const httplib::Request& req, httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
      json jobs = json::array();
      for (const auto& j : svc.jobs->PendingJobs(host)) jobs.push_back(ToJson(j, true));
      json vms = json::array();
      for (const HostVmCommand& c : svc.jobs->VmCommands(host)) {
        vms.push_back({{"job_id", c.job_id}, {"vm_name", c.vm_name}, {"action", c.action}});
      }
      return json{{"jobs", jobs}, {"vms", vms}};
    });
  });
  server.Post(R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/progress)",
              [svc](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
                  ASSIGN_OR_RETURN(json body, ParseBody(req));
                  // "phase" (contract) or "state" (older hosts).
                  std::string phase = body.value("phase", body.value("state", ""));
                  if (phase == "failed") {
                    // A host that gives up reports a refusal (launch failed).
                    RefusalReport r{req.matches[1], RefusalKind::kLaunchFailed,
                                    body.value("reason", "") + (body.contains("message")
                                        ? ": " + body.value("message", "") : "")};
                    ASSIGN_OR_RETURN(Job j, svc.jobs->ReportRefusal(host, r));
                    return ToJson(j, true);
                  }
                  ASSIGN_OR_RETURN(JobState s, JobStateFromName(phase));
                  ProgressReport p{req.matches[1], s, body.value("vm_name", ""),
                                   body.value("serial_log_path", "")};
                  ASSIGN_OR_RETURN(Job j, svc.jobs->ReportProgress(host, p));
                  return ToJson(j, true);
                });
              });
  server.Post(R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/refusal)",
              [svc](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
                  ASSIGN_OR_RETURN(json body, ParseBody(req));
                  // {reason, message} (contract) or {kind, detail} (older hosts).
                  std::string kind = body.value("reason", body.value("kind", ""));
                  RefusalReport r;
                  r.job_id = req.matches[1];
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
              });
  server.Post(R"(/v1/hosts/vms/([A-Za-z0-9._-]{1,64})/ended)",
              [svc](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
                  ASSIGN_OR_RETURN(json body, ParseBody(req));
                  if (!body["reason"].is_string()) return InvalidArgumentError("reason is required");
                  if (body.contains("text") && !body["text"].is_string()) {
                    return InvalidArgumentError("text must be a string");
                  }
                  VmEndedReport r{req.matches[1], body["reason"].get<std::string>(),
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
              });
  server.Post(R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/events)",
              [svc](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
                  ASSIGN_OR_RETURN(json body, ParseBody(req));
                  if (!body["event"].is_string() ||
                      (body.contains("text") && !body["text"].is_string())) {
                    return InvalidArgumentError("event (string) is required; text is a string");
                  }
                  DiskEventReport r{req.matches[1], body["event"].get<std::string>(),
                                    body.value("text", "")};
                  ASSIGN_OR_RETURN(Job j, svc.jobs->ReportDiskEvent(host, r));
                  return ToJson(j, true);
                });
              });
  server.Post(R"(/v1/hosts/vms/([A-Za-z0-9._-]{1,64})/deleted)",
              [svc](const httplib::Request& req, httplib::Response& res) {
                Reply(res, [&]() -> StatusOr<json> {
                  ASSIGN_OR_RETURN(std::string host, HostIdentity(req));
                  ASSIGN_OR_RETURN(Job j, svc.jobs->ReportVmDeleted(host, req.matches[1]));
                  return ToJson(j, true);
                });
              });
  server.Get(R"(/v1/hosts/jobs/([A-Za-z0-9-]+)/package)",
             [svc](const httplib::Request& req, httplib::Response& res) {
               auto host = HostIdentity(req);
               if (!host.ok()) return SendError(res, host.status());
               auto job = svc.jobs->GetAnyJob(req.matches[1]);
               if (!job.ok() || job->host_id != *host) {
                 return SendError(res, NotFoundError("no such job on this host"));
               }
               auto f = svc.store->Get(job->object_key);
               if (!f.ok()) return SendError(res, f.status());
               res.set_header("X-Content-SHA256", job->package_sha256_hex);
               SendFile(res, std::shared_ptr<RandomAccessFile>(std::move(f).value()));
             });

  // --- operator ---
  server.Get("/v1/operator/jobs", [svc, is_operator](const httplib::Request& req,
                                                     httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      RETURN_IF_ERROR(is_operator(req));
      json jobs = json::array();
      for (const auto& j : svc.jobs->ListAllJobs()) jobs.push_back(ToJson(j, true));
      return json{{"jobs", jobs}};
    });
  });
  server.Get("/v1/operator/hosts", [svc, is_operator](const httplib::Request& req,
                                                      httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
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
  });
  server.Get(R"(/v1/operator/jobs/([A-Za-z0-9-]+)/placement)",
             [svc, is_operator](const httplib::Request& req, httplib::Response& res) {
               Reply(res, [&]() -> StatusOr<json> {
                 RETURN_IF_ERROR(is_operator(req));
                 ASSIGN_OR_RETURN(Job j, svc.jobs->GetAnyJob(req.matches[1]));
                 json all = json::array();
                 for (const Placement& p : j.placements) all.push_back(ToJson(p));
                 json out = ToJson(j.last_placement);
                 out["job"] = ToJson(j, true);
                 out["history"] = all;
                 return out;
               });
             });
  server.Get("/v1/operator/placement", [svc, is_operator](const httplib::Request& req,
                                                         httplib::Response& res) {
    Reply(res, [&]() -> StatusOr<json> {
      RETURN_IF_ERROR(is_operator(req));
      const std::string customer = req.get_param_value("customer_id");
      const std::string image = req.get_param_value("image_id");
      if (customer.empty() || image.empty()) {
        return InvalidArgumentError("customer_id and image_id query parameters are required");
      }
      ASSIGN_OR_RETURN(Placement p, svc.jobs->ExplainImagePlacement(Principal{customer}, image));
      return ToJson(p);
    });
  });
}

}  // namespace vmseal::csp
