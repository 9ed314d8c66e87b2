#include "csp/kms_client.h"

#include <charconv>
#include <set>

#include "base/env.h"
#include "crypto/primitives.h"
#include "json/json.h"
#include "net/https_client.h"

namespace vmseal::csp {
namespace {

using nlohmann::json;

// "https://host:port" -> host, port.
Status ParseUrl(const std::string& url, std::string* host, int* port) {
  constexpr std::string_view kScheme = "https://";
  if (!url.starts_with(kScheme)) return InvalidArgumentError("KMS URL must start with https://");
  std::string rest = url.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  size_t colon = rest.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return InvalidArgumentError("KMS URL must be https://host:port");
  }
  *host = rest.substr(0, colon);
  if (host->size() > 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  std::string_view p = std::string_view(rest).substr(colon + 1);
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), *port);
  if (ec != std::errc() || end != p.data() + p.size() || *port <= 0 || *port > 65535) {
    return InvalidArgumentError("KMS URL has a bad port");
  }
  return OkStatus();
}

std::string Str(const json& j, const char* name) {
  auto it = j.find(name);
  return it != j.end() && it->is_string() ? it->get<std::string>() : "";
}

StatusOr<SigningKey> SigningKeyFrom(const json& r, const std::string& customer_id) {
  if (!r.is_object()) return DataLossError("KMS answered with a non-object");
  SigningKey k{Str(r, "customer_id"), Str(r, "key_id"), Str(r, "public_key_pem"), Str(r, "cert_pem")};
  if (k.customer_id != customer_id || k.key_id.empty() || k.cert_pem.empty()) {
    return DataLossError("KMS signing key answer is incomplete or names another customer");
  }
  return k;
}

StatusOr<SignedPolicy> SignedPolicyFrom(const json& r) {
  if (!r.is_object() || !r.contains("version") || !r["version"].is_number_integer()) {
    return InternalError("KMS answered a signed policy without a version");
  }
  SignedPolicy p;
  p.version = r["version"].get<int64_t>();
  ASSIGN_OR_RETURN(crypto::Bytes doc, crypto::Base64Decode(r.value("document", "")));
  p.document.assign(doc.begin(), doc.end());
  p.signature = r.value("signature", "");
  return p;
}

class HttpsKmsClient final : public KmsClient {
 public:
  HttpsKmsClient(std::unique_ptr<net::HttpsClient> client, std::string ca_pem)
      : client_(std::move(client)), ca_pem_(std::move(ca_pem)) {}

  StatusOr<CustomerKey> CreateCustomerKey(const std::string& customer_id,
                                          const std::string& algorithm) override {
    ASSIGN_OR_RETURN(json r, client_->Post("/v1/customers/" + customer_id + "/keys",
                                           json{{"algorithm", algorithm}}));
    ASSIGN_OR_RETURN(CustomerKey k, KeyFrom(r, customer_id));
    if (k.algorithm != algorithm) {
      return DataLossError("KMS created a " + k.algorithm.substr(0, 32) + " key, not " + algorithm);
    }
    return k;
  }

  StatusOr<std::vector<CustomerKey>> ListCustomerKeys(const std::string& customer_id) override {
    ASSIGN_OR_RETURN(json r, client_->Get("/v1/customers/" + customer_id + "/keys"));
    if (!r.is_object() || !r.contains("keys") || !r["keys"].is_array()) {
      return DataLossError("KMS key list has no keys");
    }
    std::vector<CustomerKey> out;
    for (const json& k : r["keys"]) {
      ASSIGN_OR_RETURN(CustomerKey key, KeyFrom(k, customer_id));
      out.push_back(std::move(key));
    }
    return out;
  }

  StatusOr<CustomerKey> RotateCustomerKey(const std::string& customer_id) override {
    ASSIGN_OR_RETURN(json r, client_->Post("/v1/customers/" + customer_id + "/key-rotations", json::object()));
    return KeyFrom(r, customer_id);
  }

  StatusOr<CustomerKey> RetireCustomerKey(const std::string& customer_id, int64_t version,
                                          const std::string& document_b64,
                                          const std::string& signature_b64) override {
    ASSIGN_OR_RETURN(json r, client_->Post("/v1/customers/" + customer_id + "/key-versions/" +
                                               std::to_string(version) + "/retire",
                                           json{{"document", document_b64}, {"signature", signature_b64}}));
    return KeyFrom(r, customer_id);
  }

  static StatusOr<CustomerKey> KeyFrom(const json& r, const std::string& customer_id) {
    if (!r.is_object()) return DataLossError("KMS answered with a non-object");
    CustomerKey k;
    k.key_id = Str(r, "key_id");
    k.customer_id = Str(r, "customer_id");
    k.algorithm = Str(r, "algorithm");
    k.public_key_pem = Str(r, "public_key_pem");
    // The contract names it cert_pem; older KMS builds say certificate_pem.
    k.cert_pem = Str(r, "cert_pem");
    if (k.cert_pem.empty()) k.cert_pem = Str(r, "certificate_pem");
    if (r.contains("created_unix") && r["created_unix"].is_number_integer()) {
      k.created_unix = r["created_unix"].get<int64_t>();
    }
    for (auto [field, out] : {std::pair{"version", &k.version}, std::pair{"retired_unix", &k.retired_unix}}) {
      if (r.contains(field) && r[field].is_number_integer()) *out = r[field].get<int64_t>();
    }
    if (k.key_id.empty() || k.customer_id != customer_id || k.public_key_pem.empty() ||
        k.cert_pem.empty() || k.version < 1) {
      return DataLossError("KMS key answer is incomplete or names another customer");
    }
    return k;
  }

  StatusOr<std::vector<HostEligibility>> CheckPlacement(
      const std::string& customer_id, const std::string& image_id,
      const std::vector<std::string>& host_ids) override {
    json body = {{"customer_id", customer_id}, {"image_id", image_id}, {"host_ids", host_ids}};
    ASSIGN_OR_RETURN(json r, client_->Post("/v1/placement-check", body));
    if (!r.is_object() || !r.contains("hosts") || !r["hosts"].is_array()) {
      return DataLossError("KMS placement answer has no hosts list");
    }
    const std::set<std::string> asked(host_ids.begin(), host_ids.end());
    std::vector<HostEligibility> out;
    for (const json& h : r["hosts"]) {
      if (!h.is_object()) continue;
      HostEligibility e;
      e.host_id = Str(h, "host_id");
      if (!asked.contains(e.host_id)) continue;
      e.eligible = h.contains("eligible") && h["eligible"].is_boolean() && h["eligible"].get<bool>();
      e.reason = Str(h, "reason");
      if (e.reason.empty()) e.reason = e.eligible ? "ok" : "unspecified";
      out.push_back(std::move(e));
    }
    return out;
  }

  StatusOr<SignedPolicy> PutSignedPolicy(const std::string& tenant, const std::string& image_id,
                                         const std::string& document,
                                         const crypto::Bytes& signature) override {
    ASSIGN_OR_RETURN(json r, client_->Put("/v1/signed-policies/" + tenant + "/" + image_id,
                                          json{{"document", crypto::Base64Encode(crypto::AsBytes(document))},
                                               {"signature", crypto::Base64Encode(signature)}}));
    return SignedPolicyFrom(r);
  }

  StatusOr<json> CheckVmTrust(const json& body) override {
    return client_->Post("/v1/vms/trust-check", body);
  }

  Status RecordVmTrustEvent(const json& body) override {
    return client_->Post("/v1/vms/trust-events", body).status();
  }

  StatusOr<json> LifecycleRequest(const std::string& tenant, const std::string& document,
                                  const crypto::Bytes& signature) override {
    return client_->Post("/v1/lifecycle-requests/" + tenant,
                         json{{"document", crypto::Base64Encode(crypto::AsBytes(document))},
                              {"signature", crypto::Base64Encode(signature)}});
  }

  StatusOr<SignedPolicy> GetSignedPolicy(const std::string& tenant,
                                         const std::string& image_id) override {
    ASSIGN_OR_RETURN(json r, client_->Get("/v1/signed-policies/" + tenant + "/" + image_id));
    return SignedPolicyFrom(r);
  }

  Status RegisterImage(const std::string& tenant, const std::string& image_id,
                       const std::string& key_id,
                       const ovf::SignedPackageTexts& signed_texts) override {
    json body = {{"key_id", key_id}};
    if (!signed_texts.certificate.empty()) {
      body["descriptor_name"] = signed_texts.descriptor_name;
      body["descriptor"] = signed_texts.descriptor;
      body["manifest"] = signed_texts.manifest;
      body["package_cert"] = signed_texts.certificate;
    }
    ASSIGN_OR_RETURN(json ignored, client_->Put("/v1/images/" + tenant + "/" + image_id, body));
    (void)ignored;
    return OkStatus();
  }

  Status CreateGrant(const LaunchGrant& g) override {
    json body = {{"job_id", g.job_id},   {"image_id", g.image_id},
                 {"tenant", g.tenant},   {"host_id", g.host_id},
                 {"ttl_seconds", g.ttl_seconds}, {"attempt", g.attempt}};
    ASSIGN_OR_RETURN(json ignored, client_->Post("/v1/grants", body));
    (void)ignored;
    return OkStatus();
  }

  StatusOr<SigningKey> RegisterSigningKey(const std::string& customer_id,
                                          const std::string& public_key_pem,
                                          const std::vector<uint8_t>& proof) override {
    ASSIGN_OR_RETURN(json r, client_->Post("/v1/customers/" + customer_id + "/signing-key",
                                           json{{"public_key_pem", public_key_pem},
                                                {"proof", crypto::Base64Encode(proof)}}));
    return SigningKeyFrom(r, customer_id);
  }

  StatusOr<SigningKey> GetSigningKey(const std::string& customer_id) override {
    ASSIGN_OR_RETURN(json r, client_->Get("/v1/customers/" + customer_id + "/signing-key"));
    return SigningKeyFrom(r, customer_id);
  }

  StatusOr<json> CustomerAudit(const std::string& tenant, const std::string& image_id,
                               int64_t after_seq, int64_t old_size) override {
    return client_->Get("/v1/images/" + tenant + "/" + image_id + "/audit?after=" +
                        std::to_string(after_seq) + "&old=" + std::to_string(old_size));
  }

  StatusOr<json> RelayRewrap(const json& body) override {
    return client_->Post("/v1/migrations/rewrap", body);
  }

  StatusOr<json> RelayKeyRewrap(const std::string& customer_id, const json& body) override {
    return client_->Post("/v1/customers/" + customer_id + "/key-rewraps", body);
  }

  StatusOr<json> ListFlavors() override { return client_->Get("/v1/flavors"); }
  StatusOr<json> AuditCheckpoint() override { return client_->Get("/v1/audit/checkpoint"); }
  StatusOr<std::string> AuditInclusionProof(int64_t seq, int64_t size) override {
    ASSIGN_OR_RETURN(json r, client_->Get("/v1/audit/proofs/inclusion?seq=" + std::to_string(seq) +
                                          "&size=" + std::to_string(size)));
    if (!r.contains("proof") || !r["proof"].is_string()) return DataLossError("KMS answer without a proof");
    return r["proof"].get<std::string>();
  }

  StatusOr<std::string> AuditConsistencyProof(int64_t old_size, int64_t size) override {
    ASSIGN_OR_RETURN(json r, client_->Get("/v1/audit/proofs/consistency?old=" + std::to_string(old_size) +
                                          "&size=" + std::to_string(size)));
    if (!r.contains("proof") || !r["proof"].is_string()) return DataLossError("KMS answer without a proof");
    return r["proof"].get<std::string>();
  }

  std::string CaCertificatePem() const override { return ca_pem_; }

 private:
  const std::unique_ptr<net::HttpsClient> client_;
  const std::string ca_pem_;
};

}  // namespace

StatusOr<std::unique_ptr<KmsClient>> NewHttpsKmsClient(const HttpsKmsClientOptions& o) {
  if (o.ca_cert_file.empty() || o.cert_file.empty() || o.key_file.empty()) {
    return InvalidArgumentError("the KMS client needs the KMS CA, the portal certificate and key");
  }
  net::HttpsClient::Options co;
  RETURN_IF_ERROR(ParseUrl(o.url, &co.host, &co.port));
  ASSIGN_OR_RETURN(co.ca_pem, ReadFileToString(Env::Default(), o.ca_cert_file));
  ASSIGN_OR_RETURN(co.cert_pem, ReadFileToString(Env::Default(), o.cert_file));
  ASSIGN_OR_RETURN(std::string key, ReadFileToString(Env::Default(), o.key_file));
  co.key_pem = SecretBytes(crypto::AsBytes(key));
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(key.data()), key.size()));
  co.timeout_seconds = o.timeout_seconds;
  std::string ca = co.ca_pem;
  ASSIGN_OR_RETURN(auto client, net::HttpsClient::Create(std::move(co)));
  return std::unique_ptr<KmsClient>(new HttpsKmsClient(std::move(client), std::move(ca)));
}

}  // namespace vmseal::csp
