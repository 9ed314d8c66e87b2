// The KMS's HTTP adapter: maps the routes of docs/api/kms.yaml onto
// KmsService (service.h), which holds the logic. Nothing here decides who
// may do what; it parses requests, calls the service and renders JSON.
#include "kms/http_api.h"

#include <charconv>
#include <string>
#include <vector>

#include "attest/credential.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"
#include "json/json.h"
#include "kms/service.h"
#include "ovf/signature.h"

namespace vmseal::kms {

using nlohmann::json;

namespace {
json KeyJson(const CustomerKeyInfo& k) {
  return {{"key_id", k.key_id}, {"customer_id", k.customer_id}, {"algorithm", k.algorithm},
          {"public_key_pem", k.public_key_pem}, {"cert_pem", k.cert_pem},
          {"certificate_pem", k.cert_pem},
          {"created_unix", k.created_unix}, {"version", k.version},
          {"retired_unix", k.retired_unix}};
}

StatusOr<int64_t> IntParam(const net::Request& r, const std::string& name, int64_t fallback) {
  std::string v = r.QueryParam(name);
  if (v.empty()) return fallback;
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size()) return InvalidArgumentError(name + " must be an integer");
  return out;
}

constexpr const char* kHostRe = "([A-Za-z0-9._-]{1,64})";
constexpr const char* kNameRe = "([A-Za-z0-9._-]{1,64})";
constexpr const char* kImageRe = "([A-Za-z0-9._:@-]{1,128})";

Status RequireObject(const json& body) {
  if (!body.is_object()) return InvalidArgumentError("body must be a JSON object");
  return OkStatus();
}

StatusOr<std::string> StrField(const json& body, const std::string& name) {
  auto it = body.find(name);
  if (it == body.end() || !it->is_string()) return InvalidArgumentError("missing string field '" + name + "'");
  return it->get<std::string>();
}

// The job's attempt (grants and releases): absent is 0 (a client that names
// none), otherwise a non-negative integer.
StatusOr<int64_t> AttemptField(const json& body) {
  if (!body.contains("attempt")) return int64_t{0};
  if (!body["attempt"].is_number_unsigned() || body["attempt"].get<uint64_t>() > (uint64_t{1} << 62)) {
    return InvalidArgumentError("attempt must be a non-negative integer");
  }
  return static_cast<int64_t>(body["attempt"].get<uint64_t>());
}

StatusOr<crypto::Bytes> B64Field(const json& body, const std::string& name) {
  ASSIGN_OR_RETURN(std::string text, StrField(body, name));
  auto bytes = crypto::Base64Decode(text);
  if (!bytes.ok()) return InvalidArgumentError("field '" + name + "' is not valid base64");
  return bytes;
}

StatusOr<std::vector<std::string>> StrArrayField(const json& body, const std::string& name) {
  auto it = body.find(name);
  if (it == body.end() || !it->is_array()) return InvalidArgumentError("missing array field '" + name + "'");
  std::vector<std::string> out;
  for (const auto& e : *it) {
    if (!e.is_string()) return InvalidArgumentError("field '" + name + "' must hold strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

StatusOr<attest::Evidence> EvidenceField(const json& body) {
  auto it = body.find("evidence");
  if (it == body.end() || !it->is_object()) {
    return InvalidArgumentError("malformed_evidence: missing object field 'evidence'");
  }
  return attest::EvidenceFromJsonValue(*it);
}

json VerdictJson(const VerdictInfo& v) {
  return {{"verdict_id", v.verdict_id}, {"trusted", v.trusted}, {"reason", v.reason},
          {"time_unix", v.time_unix}};
}
}  // namespace

void RegisterKmsRoutes(KmsService* s, net::HttpsServer* server) {
  RegisterCustomerAuditRoute(s, server);
  server->Get("/healthz", [s](const net::Request&) -> StatusOr<json> {
    // A cheap read proves the store answers.
    RETURN_IF_ERROR(s->store().ReadAudit(0, 1));
    return json{{"status", "ok"}, {"store", s->store().backend()}};
  });
  server->GetText("/metrics", [s, server](const net::Request&) -> StatusOr<net::TextResponse> {
    return net::TextResponse{s->metrics().Render() + net::RenderFrontEndMetrics(server->stats(), "vmseal_kms")};
  });
  server->Post(
      R"(/v1/customers/([A-Za-z0-9._-]{1,64})/keys)",
      [s](const net::Request& r) -> StatusOr<json> {
        CreateKeyRequest req{r.path_params[0], ""};
        if (!r.body.is_null()) {
          if (!r.body.is_object()) return InvalidArgumentError("body must be a JSON object");
          if (r.body.contains("algorithm")) req.algorithm = r.body.at("algorithm").get<std::string>();
        }
        ASSIGN_OR_RETURN(auto info, s->CreateCustomerKey(CallerFromPeer(r.peer), req));
        return KeyJson(info);
      },
      /*created=*/true);
  // Key versions (kms/key_versions.h).
  server->Get(R"(/v1/customers/([A-Za-z0-9._-]{1,64})/keys)", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(auto keys, s->ListCustomerKeys(CallerFromPeer(r.peer), r.path_params[0]));
    json out = json::array();
    for (const auto& k : keys) out.push_back(KeyJson(k));
    return json{{"keys", out}};
  });
  server->Post(
      R"(/v1/customers/([A-Za-z0-9._-]{1,64})/key-rotations)",
      [s](const net::Request& r) -> StatusOr<json> {
        ASSIGN_OR_RETURN(auto info, s->RotateCustomerKey(CallerFromPeer(r.peer), r.path_params[0]));
        return KeyJson(info);
      },
      /*created=*/true);
  server->Post(R"(/v1/customers/([A-Za-z0-9._-]{1,64})/key-versions/([0-9]{1,15})/retire)",
               [s](const net::Request& r) -> StatusOr<json> {
                 // The customer's signed retire_key_version request
                 // (kms/lifecycle.h); an empty body is refused by the service.
                 std::string document;
                 crypto::Bytes signature;
                 if (r.body.is_object() && r.body.contains("document")) {
                   ASSIGN_OR_RETURN(crypto::Bytes d, B64Field(r.body, "document"));
                   document.assign(d.begin(), d.end());
                   ASSIGN_OR_RETURN(signature, B64Field(r.body, "signature"));
                 }
                 ASSIGN_OR_RETURN(auto info, s->RetireCustomerKey(CallerFromPeer(r.peer), r.path_params[0],
                                                                  std::stoll(r.path_params[1]), document,
                                                                  signature));
                 return KeyJson(info);
               });
  // Re-wrap of a package to the customer's newest key version (kms/key_rewrap.cc).
  server->Post(R"(/v1/customers/([A-Za-z0-9._-]{1,64})/key-rewraps)", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(RewrapRequest req, ParseRewrapRequest(r.body));
    ASSIGN_OR_RETURN(RewrapResponse out, s->RewrapToNewestKey(CallerFromPeer(r.peer), r.path_params[0], req));
    return json{{"rewrapped_key", crypto::Base64Encode(out.rewrapped_key)},
                {"destination_key_id", out.destination_key_id},
                {"key_version", out.key_version},
                {"kms_key_id", out.kms_key_id}};
  });
  server->Get(R"(/v1/customers/([A-Za-z0-9._-]{1,64})/keys/([A-Za-z0-9._-]{1,64}))",
              [s](const net::Request& r) -> StatusOr<json> {
                ASSIGN_OR_RETURN(auto info, s->GetCustomerKey(CallerFromPeer(r.peer),
                                                              r.path_params[0], r.path_params[1]));
                return KeyJson(info);
              });
  auto signing_json = [](const SigningKeyInfo& k) {
    return json{{"customer_id", k.tenant}, {"key_id", k.key_id}, {"public_key_pem", k.public_key_pem},
                {"cert_pem", k.cert_pem}, {"created_unix", k.created_unix}};
  };
  server->Post(
      R"(/v1/customers/([A-Za-z0-9._-]{1,64})/signing-key)",
      [s, signing_json](const net::Request& r) -> StatusOr<json> {
        RETURN_IF_ERROR(RequireObject(r.body));
        SigningKeyRequest req;
        req.tenant = r.path_params[0];
        ASSIGN_OR_RETURN(req.public_key_pem, StrField(r.body, "public_key_pem"));
        ASSIGN_OR_RETURN(req.proof, B64Field(r.body, "proof"));
        ASSIGN_OR_RETURN(SigningKeyInfo info, s->RegisterSigningKey(CallerFromPeer(r.peer), req));
        return signing_json(info);
      },
      /*created=*/true);
  server->Get(R"(/v1/customers/([A-Za-z0-9._-]{1,64})/signing-key)",
              [s, signing_json](const net::Request& r) -> StatusOr<json> {
                ASSIGN_OR_RETURN(SigningKeyInfo info,
                                 s->GetSigningKey(CallerFromPeer(r.peer), r.path_params[0]));
                return signing_json(info);
              });
  server->Post(R"(/v1/hosts/([A-Za-z0-9._-]{1,64})/nonces)",
               [s](const net::Request& r) -> StatusOr<json> {
                 ASSIGN_OR_RETURN(auto n, s->IssueNonce(CallerFromPeer(r.peer), r.path_params[0]));
                 return json{{"nonce", n.nonce}, {"expires_unix", n.expires_unix}};
               },
               /*created=*/true);
  server->Get("/v1/audit", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(int64_t after, IntParam(r, "after", 0));
    ASSIGN_OR_RETURN(int64_t limit, IntParam(r, "limit", 100));
    ASSIGN_OR_RETURN(auto recs, s->ReadAudit(CallerFromPeer(r.peer), after, limit));
    json out = json::array();
    for (const auto& rec : recs) {
      out.push_back({{"seq", rec.seq}, {"record", rec.record}, {"hash", rec.hash}});
    }
    return json{{"records", out}};
  });
  // Transparency log (docs/format/audit-log.md §6): texts in JSON strings.
  server->Get("/v1/audit/checkpoint", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string note, s->AuditCheckpoint(CallerFromPeer(r.peer)));
    return json{{"checkpoint", note}, {"log_key", s->audit_log_key()},
                {"log_key_endorsement", crypto::Base64Encode(s->audit_log_key_endorsement())}};
  });
  server->Get("/v1/audit/proofs/inclusion", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(int64_t seq, IntParam(r, "seq", 0));
    ASSIGN_OR_RETURN(int64_t size, IntParam(r, "size", 0));
    ASSIGN_OR_RETURN(std::string proof, s->AuditInclusionProof(CallerFromPeer(r.peer), seq, size));
    return json{{"proof", proof}};
  });
  server->Get("/v1/audit/proofs/consistency", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(int64_t old_size, IntParam(r, "old", 0));
    ASSIGN_OR_RETURN(int64_t size, IntParam(r, "size", 0));
    ASSIGN_OR_RETURN(std::string proof, s->AuditConsistencyProof(CallerFromPeer(r.peer), old_size, size));
    return json{{"proof", proof}};
  });
  server->Get("/v1/audit/verify", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(auto head, s->VerifyAudit(CallerFromPeer(r.peer)));
    return json{{"valid", true}, {"count", head.count}, {"head", head.hash}};
  });
  // --- Enrollment, attestation, release (role host) ---------------------
  server->Get("/v1/ca", [s](const net::Request&) -> StatusOr<json> {
    return json{{"ca_cert_pem", s->ca_cert_pem()}};
  });
  server->Post(std::string("/v1/hosts/") + kHostRe + "/enroll", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    attest::EnrollmentRequest req;
    ASSIGN_OR_RETURN(std::string pem, StrField(r.body, "ek_certificate_pem"));
    auto cert = crypto::Certificate::FromPem(pem);
    if (!cert.ok()) return InvalidArgumentError("malformed_evidence: ek_certificate_pem is not one PEM certificate");
    req.ek_certificate = cert->ToDer();
    ASSIGN_OR_RETURN(req.ak_public, B64Field(r.body, "ak_public"));
    ASSIGN_OR_RETURN(auto ch, s->BeginEnrollment(CallerFromPeer(r.peer), r.path_params[0], req));
    return json{{"credential_blob", crypto::Base64Encode(ch.credential_blob)},
                {"encrypted_secret", crypto::Base64Encode(ch.encrypted_secret)}};
  });
  server->Post(std::string("/v1/hosts/") + kHostRe + "/activate", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ASSIGN_OR_RETURN(crypto::Bytes raw, B64Field(r.body, "secret"));
    SecretBytes secret(raw);
    WipeBytes(std::span<uint8_t>(raw.data(), raw.size()));
    RETURN_IF_ERROR(s->CompleteEnrollment(CallerFromPeer(r.peer), r.path_params[0], secret));
    return json{{"host_id", r.path_params[0]}, {"enrolled", true}};
  });
  server->Post(std::string("/v1/hosts/") + kHostRe + "/attestations", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ASSIGN_OR_RETURN(attest::Evidence ev, EvidenceField(r.body));
    ASSIGN_OR_RETURN(VerdictInfo v, s->Attest(CallerFromPeer(r.peer), r.path_params[0], ev));
    return VerdictJson(v);
  }, /*created=*/true);
  server->Post(std::string("/v1/hosts/") + kHostRe + "/releases", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ReleaseRequest req;
    ASSIGN_OR_RETURN(req.job_id, StrField(r.body, "job_id"));
    ASSIGN_OR_RETURN(req.attempt, AttemptField(r.body));
    ASSIGN_OR_RETURN(req.image_id, StrField(r.body, "image_id"));
    ASSIGN_OR_RETURN(req.tenant, StrField(r.body, "tenant"));
    ASSIGN_OR_RETURN(req.key_id, StrField(r.body, "key_id"));
    if (r.body.contains("key_version")) {
      if (!r.body["key_version"].is_number_unsigned()) return InvalidArgumentError("key_version must be a positive integer");
      req.key_version = r.body["key_version"].get<uint64_t>();
    }
    ASSIGN_OR_RETURN(req.wrap_algorithm, StrField(r.body, "wrap_algorithm"));
    ASSIGN_OR_RETURN(req.oaep_label, B64Field(r.body, "oaep_label"));
    ASSIGN_OR_RETURN(req.wrapped_key, B64Field(r.body, "wrapped_key"));
    ASSIGN_OR_RETURN(req.evidence, EvidenceField(r.body));
    // The package's signed metadata (optional fields; the service decides
    // whether they are required).
    for (auto [name, out] : {std::pair{"descriptor_name", &req.descriptor_name},
                             std::pair{"descriptor", &req.descriptor},
                             std::pair{"manifest", &req.manifest},
                             std::pair{"package_cert", &req.package_cert}}) {
      if (!r.body.contains(name)) continue;
      ASSIGN_OR_RETURN(*out, StrField(r.body, name));
    }
    ASSIGN_OR_RETURN(ReleaseResponse out, s->Release(CallerFromPeer(r.peer), r.path_params[0], req));
    json answer = {{"rewrapped_key", crypto::Base64Encode(out.rewrapped_key)},
                   {"label", crypto::Base64Encode(out.label)},
                   {"signer_key_id", out.signer_key_id}};
    if (!out.next_nonce.nonce.empty()) {
      answer["next_nonce"] = {{"nonce", out.next_nonce.nonce}, {"expires_unix", out.next_nonce.expires_unix}};
    }
    return answer;
  });

  // --- Hosts for the portal and operators --------------------------------
  server->Get("/v1/hosts", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(auto hosts, s->ListHosts(CallerFromPeer(r.peer)));
    json out = json::array();
    for (const auto& h : hosts) {
      out.push_back({{"host_id", h.host_id}, {"enrolled", h.enrolled}, {"tags", h.tags},
                     {"latest", h.latest ? VerdictJson(*h.latest) : json()}});
    }
    return json{{"hosts", out}};
  });
  server->Get(std::string("/v1/hosts/") + kHostRe + "/verdicts", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(int64_t since, IntParam(r, "since", 0));
    ASSIGN_OR_RETURN(auto vs, s->ListVerdicts(CallerFromPeer(r.peer), r.path_params[0], since));
    json out = json::array();
    for (const auto& v : vs) out.push_back(VerdictJson(v));
    return json{{"verdicts", out}};
  });
  server->Put(std::string("/v1/hosts/") + kHostRe + "/tags", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ASSIGN_OR_RETURN(auto tags, StrArrayField(r.body, "tags"));
    RETURN_IF_ERROR(s->SetHostTags(CallerFromPeer(r.peer), r.path_params[0], tags));
    return json{{"host_id", r.path_params[0]}, {"tags", tags}};
  });
  server->Post("/v1/placement-check", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    PlacementRequest req;
    ASSIGN_OR_RETURN(req.customer_id, StrField(r.body, "customer_id"));
    ASSIGN_OR_RETURN(req.image_id, StrField(r.body, "image_id"));
    ASSIGN_OR_RETURN(req.host_ids, StrArrayField(r.body, "host_ids"));
    ASSIGN_OR_RETURN(auto results, s->PlacementCheck(CallerFromPeer(r.peer), req));
    json out = json::array();
    for (const auto& p : results) {
      out.push_back({{"host_id", p.host_id}, {"eligible", p.eligible}, {"reason", p.reason}});
    }
    return json{{"hosts", out}};
  });

  // --- Images and grants (role portal), EK approval (operator) -----------
  server->Put(std::string("/v1/images/") + kImageRe + "/" + kImageRe, [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ImageRecord image{r.path_params[0], r.path_params[1], "", 0};
    ASSIGN_OR_RETURN(image.key_id, StrField(r.body, "key_id"));
    // The package's signed metadata, as a release carries it (optional).
    ovf::SignedPackageTexts texts;
    for (auto [name, out] : {std::pair{"descriptor_name", &texts.descriptor_name},
                             std::pair{"descriptor", &texts.descriptor},
                             std::pair{"manifest", &texts.manifest},
                             std::pair{"package_cert", &texts.certificate}}) {
      if (!r.body.contains(name)) continue;
      ASSIGN_OR_RETURN(*out, StrField(r.body, name));
    }
    RETURN_IF_ERROR(s->RegisterImage(CallerFromPeer(r.peer), image, texts));
    return json{{"tenant", image.tenant}, {"image_id", image.image_id}, {"key_id", image.key_id}};
  });
  server->Post("/v1/grants", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    GrantRequest req;
    ASSIGN_OR_RETURN(req.job_id, StrField(r.body, "job_id"));
    ASSIGN_OR_RETURN(req.image_id, StrField(r.body, "image_id"));
    ASSIGN_OR_RETURN(req.tenant, StrField(r.body, "tenant"));
    ASSIGN_OR_RETURN(req.host_id, StrField(r.body, "host_id"));
    if (!r.body.contains("ttl_seconds") || !r.body["ttl_seconds"].is_number_integer()) {
      return InvalidArgumentError("missing integer field 'ttl_seconds'");
    }
    req.ttl_seconds = r.body["ttl_seconds"].get<int64_t>();
    ASSIGN_OR_RETURN(req.attempt, AttemptField(r.body));
    ASSIGN_OR_RETURN(GrantRecord g, s->CreateGrant(CallerFromPeer(r.peer), req));
    return json{{"job_id", g.job_id}, {"attempt", g.attempt}, {"image_id", g.image_id}, {"tenant", g.tenant},
                {"host_id", g.host_id}, {"expires_unix", g.expires_unix}};
  }, /*created=*/true);
  server->Post(std::string("/v1/hosts/") + kHostRe + "/ek-approval", [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ASSIGN_OR_RETURN(std::string ek, StrField(r.body, "ek_sha256"));
    RETURN_IF_ERROR(s->ApproveEk(CallerFromPeer(r.peer), r.path_params[0], ek));
    return json{{"host_id", r.path_params[0]}, {"ek_sha256", ek}};
  });

  // --- Flavors and policies ----------------------------------------------
  server->Put(std::string("/v1/flavors/") + kNameRe, [s](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(RequireObject(r.body));
    if (!r.body.contains("pcrs")) return InvalidArgumentError("missing field 'pcrs'");
    Flavor f{r.path_params[0], r.body["pcrs"]};
    RETURN_IF_ERROR(s->PutFlavor(CallerFromPeer(r.peer), f));
    ASSIGN_OR_RETURN(Flavor stored, s->store().GetFlavor(f.name));
    return json{{"name", stored.name}, {"pcrs", stored.pcrs}};
  });
  server->Get("/v1/flavors", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(auto flavors, s->ListFlavors(CallerFromPeer(r.peer)));
    json out = json::array();
    for (const auto& f : flavors) out.push_back({{"name", f.name}, {"pcrs", f.pcrs}});
    return json{{"flavors", out}};
  });
  server->Post(std::string("/v1/flavors/") + kNameRe + "/from-host/" + kHostRe,
               [s](const net::Request& r) -> StatusOr<json> {
                 ASSIGN_OR_RETURN(Flavor f, s->FlavorFromHost(CallerFromPeer(r.peer), r.path_params[0],
                                                              r.path_params[1]));
                 return json{{"name", f.name}, {"pcrs", f.pcrs}};
               });
  auto put_policy = [s](const net::Request& r) -> StatusOr<json> {
    PolicyRecord p{r.path_params[0], r.path_params.size() > 1 ? r.path_params[1] : "", r.body};
    RETURN_IF_ERROR(s->PutPolicy(CallerFromPeer(r.peer), p));
    return json{{"customer_id", p.customer_id}, {"image_id", p.image_id}, {"policy", p.policy}};
  };
  auto get_policy = [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(PolicyRecord p, s->GetPolicy(CallerFromPeer(r.peer), r.path_params[0],
                                                  r.path_params.size() > 1 ? r.path_params[1] : ""));
    return json{{"customer_id", p.customer_id}, {"image_id", p.image_id}, {"policy", p.policy}};
  };
  // Customer-signed policy documents (docs/format/policy-document.md): the
  // document travels as base64 of its exact bytes.
  auto signed_policy_json = [](const PolicyDocumentRecord& d) {
    return json{{"tenant", d.tenant},        {"image_id", d.image_id},
                {"version", d.version},      {"document", crypto::Base64Encode(crypto::AsBytes(d.document))},
                {"signature", d.signature},  {"signer_key_id", d.signer_key_id},
                {"created_unix", d.created_unix}};
  };
  server->Put(std::string("/v1/signed-policies/") + kImageRe + "/" + kImageRe,
              [s, signed_policy_json](const net::Request& r) -> StatusOr<json> {
                RETURN_IF_ERROR(RequireObject(r.body));
                SignedPolicyRequest req;
                req.tenant = r.path_params[0];
                req.image_id = r.path_params[1];
                ASSIGN_OR_RETURN(crypto::Bytes doc, B64Field(r.body, "document"));
                req.document.assign(doc.begin(), doc.end());
                ASSIGN_OR_RETURN(req.signature, B64Field(r.body, "signature"));
                ASSIGN_OR_RETURN(PolicyDocumentRecord rec, s->PutSignedPolicy(CallerFromPeer(r.peer), req));
                return signed_policy_json(rec);
              });
  server->Get(std::string("/v1/signed-policies/") + kImageRe + "/" + kImageRe,
              [s, signed_policy_json](const net::Request& r) -> StatusOr<json> {
                ASSIGN_OR_RETURN(PolicyDocumentRecord rec,
                                 s->GetSignedPolicy(CallerFromPeer(r.peer), r.path_params[0],
                                                    r.path_params[1]));
                return signed_policy_json(rec);
              });
  // Issue 19: the portal relays a customer's re-wrap authorization
  // (kms/migration.h, docs/format/rewrap-authorization.md).
  server->Post("/v1/migrations/rewrap", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(RewrapRequest req, ParseRewrapRequest(r.body));
    ASSIGN_OR_RETURN(RewrapResponse out, s->MigrationRewrap(CallerFromPeer(r.peer), req));
    return json{{"rewrapped_key", crypto::Base64Encode(out.rewrapped_key)},
                {"destination_key_id", out.destination_key_id}};
  });
  // Issue 19: loss of trust (kms/lifecycle.h, docs/protocol.md §7.2).
  server->Post("/v1/vms/trust-check", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(auto vms, ParseVmTrustQueries(r.body));
    ASSIGN_OR_RETURN(auto answers, s->CheckVmTrust(CallerFromPeer(r.peer), vms));
    return VmTrustAnswersJson(answers);
  });
  server->Post("/v1/vms/trust-events", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(VmTrustEvent e, ParseVmTrustEvent(r.body));
    RETURN_IF_ERROR(s->RecordVmTrustEvent(CallerFromPeer(r.peer), e));
    return json::object();
  });
  server->Put(std::string("/v1/policies/") + kNameRe, put_policy);
  server->Put(std::string("/v1/policies/") + kNameRe + "/" + kImageRe, put_policy);
  server->Get(std::string("/v1/policies/") + kNameRe, get_policy);
  server->Get(std::string("/v1/policies/") + kNameRe + "/" + kImageRe, get_policy);
  // Revocation, disable, decommissioning (kms/lifecycle.h, docs/protocol.md §7).
  auto mark_json = [](const LifecycleRecord& m) {
    json j = {{"kind", m.kind}, {"subject", m.subject}, {"state", m.state}, {"reason", m.reason},
              {"by", m.by}, {"since_unix", m.since_unix}};
    if (m.due_unix != 0) j["due_unix"] = m.due_unix;
    return j;
  };
  auto reason_of = [](const net::Request& r) -> StatusOr<std::string> {
    if (r.body.is_null()) return std::string();
    RETURN_IF_ERROR(RequireObject(r.body));
    if (!r.body.contains("reason")) return std::string();
    return StrField(r.body, "reason");
  };
  server->Post(std::string("/v1/hosts/") + kHostRe + "/revoke",
               [s, mark_json, reason_of](const net::Request& r) -> StatusOr<json> {
                 ASSIGN_OR_RETURN(std::string reason, reason_of(r));
                 ASSIGN_OR_RETURN(LifecycleRecord m, s->lifecycle().RevokeHost(CallerFromPeer(r.peer),
                                                                              r.path_params[0], reason));
                 return mark_json(m);
               });
  for (const bool enable : {false, true}) {
    server->Post(std::string("/v1/customers/") + kImageRe + (enable ? "/enable" : "/disable"),
                 [s, mark_json, reason_of, enable](const net::Request& r) -> StatusOr<json> {
                   ASSIGN_OR_RETURN(std::string reason, reason_of(r));
                   ASSIGN_OR_RETURN(LifecycleRecord m,
                                    s->lifecycle().SetCustomerEnabled(CallerFromPeer(r.peer),
                                                                      r.path_params[0], enable, reason));
                   return mark_json(m);
                 });
  }
  server->Post(std::string("/v1/lifecycle-requests/") + kImageRe,
               [s, mark_json](const net::Request& r) -> StatusOr<json> {
                 RETURN_IF_ERROR(RequireObject(r.body));
                 ASSIGN_OR_RETURN(crypto::Bytes document, B64Field(r.body, "document"));
                 ASSIGN_OR_RETURN(crypto::Bytes signature, B64Field(r.body, "signature"));
                 ASSIGN_OR_RETURN(LifecycleRecord m,
                                  s->lifecycle().CustomerRequest(
                                      CallerFromPeer(r.peer), r.path_params[0],
                                      std::string(document.begin(), document.end()), signature));
                 json out = mark_json(m);
                 if (m.kind == "image") {
                   // The portal acts on the image's running VMs as its policy says.
                   const std::string image_id = m.subject.substr(m.subject.find('/') + 1);
                   ASSIGN_OR_RETURN(out["on_trust_loss"], s->OnTrustLoss(r.path_params[0], image_id));
                 }
                 return out;
               });
  server->Get(R"(/v1/lifecycle/(image|host|customer))",
              [s, mark_json](const net::Request& r) -> StatusOr<json> {
                ASSIGN_OR_RETURN(auto marks, s->lifecycle().List(CallerFromPeer(r.peer), r.path_params[0]));
                json out = json::array();
                for (const auto& m : marks) out.push_back(mark_json(m));
                return json{{"marks", out}};
              });
  server->SetObserver([s](const std::string&, const std::string& route, int status, double secs) {
    s->metrics().CountRequest(route, status, secs);
  });
}

void RegisterKekRotationRoutes(KekRotation* rotation, net::HttpsServer* server) {
  auto operator_only = [](const net::Request& r) -> StatusOr<std::string> {
    Caller c = CallerFromPeer(r.peer);
    if (c.role != Caller::Role::kOperator) return PermissionDeniedError("KEK rotation is for operators");
    return "operator/" + c.name;
  };
  auto kek_id_field = [](const net::Request& r) -> StatusOr<std::string> {
    RETURN_IF_ERROR(RequireObject(r.body));
    ASSIGN_OR_RETURN(std::string id, StrField(r.body, "kek_id"));
    if (id.empty() || id.size() > 200) return InvalidArgumentError("kek_id must be 1..200 characters");
    return id;
  };
  server->Get("/v1/kek", [rotation, operator_only](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(operator_only(r).status());
    return rotation->Describe();
  });
  server->Post("/v1/kek/reload", [rotation, operator_only, kek_id_field](const net::Request& r) -> StatusOr<json> {
    RETURN_IF_ERROR(operator_only(r).status());
    ASSIGN_OR_RETURN(std::string id, kek_id_field(r));
    return rotation->Reload(id);
  });
  server->Post("/v1/kek/rotation", [rotation, operator_only, kek_id_field](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string by, operator_only(r));
    ASSIGN_OR_RETURN(std::string id, kek_id_field(r));
    return rotation->Start(id, by);
  });
  server->Post("/v1/kek/retire", [rotation, operator_only, kek_id_field](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(std::string by, operator_only(r));
    ASSIGN_OR_RETURN(std::string id, kek_id_field(r));
    return rotation->Retire(id, by);
  });
}

}  // namespace vmseal::kms
