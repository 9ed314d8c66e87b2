#include "host/https_kms_client.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <mutex>

#include "base/env.h"
#include "crypto/keys.h"
#include "crypto/x509.h"
#include "net/https_client.h"
#include "ovf/signature.h"

namespace vmseal::host {
namespace {

using nlohmann::json;

StatusOr<std::string> StrField(const json& body, const std::string& name) {
  if (!body.is_object() || !body.contains(name) || !body[name].is_string()) {
    return DataLossError("KMS answer lacks string field '" + name + "'");
  }
  return body[name].get<std::string>();
}

StatusOr<crypto::Bytes> B64Field(const json& body, const std::string& name) {
  ASSIGN_OR_RETURN(std::string text, StrField(body, name));
  auto out = crypto::Base64Decode(text);
  if (!out.ok()) return DataLossError("KMS answer field '" + name + "' is not base64");
  return out;
}

// Splits "https://host:port".
Status ParseUrl(const std::string& url, std::string* host, int* port) {
  constexpr std::string_view kScheme = "https://";
  if (url.rfind(kScheme, 0) != 0) return InvalidArgumentError("KMS url must start with https://");
  std::string rest = url.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  if (rest.find('/') != std::string::npos) return InvalidArgumentError("KMS url must not have a path");
  size_t colon = rest.rfind(':');
  *port = 443;
  if (colon != std::string::npos && rest.find(']') == std::string::npos) {
    const std::string p = rest.substr(colon + 1);
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), *port);
    if (ec != std::errc() || ptr != p.data() + p.size() || *port <= 0 || *port > 65535) {
      return InvalidArgumentError("KMS url has a bad port");
    }
    rest = rest.substr(0, colon);
  }
  if (rest.empty()) return InvalidArgumentError("KMS url has no host");
  *host = rest;
  return OkStatus();
}

// The host's own check of a signed package before it asks for the key
// (docs/protocol.md §5): the .cert's signature over the manifest, the
// manifest's digest of the descriptor (whose files ovf::Package::Open
// checked against that manifest), a signer certified by the KMS CA for the
// package's tenant, and a request for exactly the signed key. Returns the
// signer's key id.
StatusOr<std::string> CheckSignedRequest(const ReleaseRequest& r,
                                         const std::vector<crypto::Certificate>& kms_roots) {
  ASSIGN_OR_RETURN(ovf::SignedDescriptor signed_pkg,
                   ovf::VerifySignedDescriptor(
                       {r.descriptor_name, r.descriptor, r.manifest, r.package_cert}));
  RETURN_IF_ERROR(ovf::VerifySigner(signed_pkg.signature, kms_roots, r.tenant));
  const ovf::EncryptionTag& tag = signed_pkg.tag;
  const ovf::WrappedKey& key = signed_pkg.wrapped_key;
  if (tag.image_id != r.image_id || tag.tenant != r.tenant || tag.key_id != r.key_id ||
      tag.key_version != r.key_version || key.algorithm != r.wrap_algorithm ||
      key.oaep_label != r.oaep_label || key.ciphertext != r.wrapped_key) {
    return FailedPreconditionError("key_not_signed: the release request differs from the "
                                   "signed descriptor");
  }
  ASSIGN_OR_RETURN(crypto::PublicKey signer, signed_pkg.signature.signer.GetPublicKey());
  return signer.KeyId();
}

class HttpsKmsClient final : public KmsApi {
 public:
  HttpsKmsClient(std::unique_ptr<net::HttpsClient> client, std::string host_id,
                 std::vector<crypto::Certificate> kms_roots)
      : client_(std::move(client)), base_("/v1/hosts/" + host_id),
        kms_roots_(std::move(kms_roots)) {}

  StatusOr<attest::CredentialChallenge> BeginEnrollment(
      const attest::EnrollmentRequest& request) override {
    ASSIGN_OR_RETURN(crypto::Certificate ek, crypto::Certificate::FromDer(request.ek_certificate));
    ASSIGN_OR_RETURN(json answer,
                     client_->Post(base_ + "/enroll",
                                   {{"ek_certificate_pem", ek.ToPem()},
                                    {"ak_public", crypto::Base64Encode(request.ak_public)}}));
    attest::CredentialChallenge out;
    ASSIGN_OR_RETURN(out.credential_blob, B64Field(answer, "credential_blob"));
    ASSIGN_OR_RETURN(out.encrypted_secret, B64Field(answer, "encrypted_secret"));
    return out;
  }

  Status CompleteEnrollment(const SecretBytes& secret) override {
    std::string b64 = crypto::Base64Encode(secret.UnsafeSpan());
    json body = {{"secret", b64}};
    WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(b64.data()), b64.size()));
    auto answer = client_->Post(base_ + "/activate", body);
    std::string& held = body["secret"].get_ref<std::string&>();
    WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(held.data()), held.size()));
    RETURN_IF_ERROR(answer.status());
    if (!answer->is_object() || !answer->value("enrolled", false)) {
      return DataLossError("KMS did not confirm the enrollment");
    }
    return OkStatus();
  }

  StatusOr<crypto::Bytes> Nonce() override {
    {
      // The nonce the last release answer carried (docs/protocol.md §5.1),
      // once, while fresh (KeepNextNonce).
      std::lock_guard<std::mutex> lock(next_mu_);
      if (!next_nonce_.empty()) {
        crypto::Bytes next = std::move(next_nonce_);
        next_nonce_.clear();
        if (std::chrono::steady_clock::now() < next_nonce_use_by_) return next;
      }
    }
    ASSIGN_OR_RETURN(json answer, client_->Post(base_ + "/nonces", json::object()));
    ASSIGN_OR_RETURN(std::string hex, StrField(answer, "nonce"));
    auto nonce = crypto::HexDecode(hex);
    if (!nonce.ok()) return DataLossError("KMS nonce is not hex");
    return nonce;
  }

  Status Attest(const attest::Evidence& evidence) override {
    ASSIGN_OR_RETURN(json answer, client_->Post(base_ + "/attestations",
                                                {{"evidence", EvidenceJson(evidence)}}));
    if (!answer.is_object() || !answer.contains("trusted") || !answer["trusted"].is_boolean()) {
      return DataLossError("KMS answer lacks 'trusted'");
    }
    if (!answer["trusted"].get<bool>()) {
      return PermissionDeniedError(answer.value("reason", std::string("untrusted")) +
                                   ": the KMS did not trust the evidence (verdict " +
                                   answer.value("verdict_id", std::string("?")) + ")");
    }
    return OkStatus();
  }

  StatusOr<ReleasedKey> Release(const ReleaseRequest& request) override {
    // An unsigned package is the KMS's to refuse (unsigned_package unless
    // its configuration allows it); a signed one is checked here first.
    std::string local_signer;
    if (!request.package_cert.empty()) {
      ASSIGN_OR_RETURN(local_signer, CheckSignedRequest(request, kms_roots_));
    }
    json body = {{"job_id", request.job_id},
                 {"attempt", request.attempt},
                 {"image_id", request.image_id},
                 {"tenant", request.tenant},
                 {"key_id", request.key_id},
                 {"key_version", request.key_version},
                 {"wrap_algorithm", request.wrap_algorithm},
                 {"oaep_label", crypto::Base64Encode(request.oaep_label)},
                 {"wrapped_key", crypto::Base64Encode(request.wrapped_key)},
                 {"evidence", EvidenceJson(request.evidence)},
                 {"descriptor_name", request.descriptor_name},
                 {"descriptor", request.descriptor},
                 {"manifest", request.manifest},
                 {"package_cert", request.package_cert}};
    ASSIGN_OR_RETURN(json answer, client_->Post(base_ + "/releases", body));
    ReleasedKey out;
    ASSIGN_OR_RETURN(out.rewrapped_key, B64Field(answer, "rewrapped_key"));
    ASSIGN_OR_RETURN(out.label, B64Field(answer, "label"));
    if (out.label.empty() || out.label.back() != 0) {
      return DataLossError("KMS release label does not end in a zero byte");
    }
    if (answer.contains("signer_key_id") && answer["signer_key_id"].is_string()) {
      out.signer_key_id = answer["signer_key_id"].get<std::string>();
    }
    if (!local_signer.empty() && out.signer_key_id != local_signer) {
      return DataLossError("signer_mismatch: the KMS checked the package with signing key '" +
                           out.signer_key_id.substr(0, 64) + "', the package is signed by " +
                           local_signer);
    }
    KeepNextNonce(answer);
    return out;
  }

 private:
  // Keeps the answer's next nonce, if well formed, for the next Nonce().
  // Its lifetime is expires_unix minus the issue time it carries (both the
  // KMS's clock); it is used within half of that, and within 5 s, as
  // measured here.
  void KeepNextNonce(const json& answer) {
    const auto received = std::chrono::steady_clock::now();
    if (!answer.contains("next_nonce") || !answer["next_nonce"].is_object()) return;
    const json& next = answer["next_nonce"];
    if (!next.contains("nonce") || !next["nonce"].is_string() || !next.contains("expires_unix") ||
        !next["expires_unix"].is_number_integer()) {
      return;
    }
    auto nonce = crypto::HexDecode(next["nonce"].get<std::string>());
    if (!nonce.ok() || nonce->size() < 8) return;
    int64_t issued = 0;
    for (size_t i = 0; i < 8; ++i) issued = (issued << 8) | (*nonce)[i];
    const int64_t lifetime = next["expires_unix"].get<int64_t>() - issued;
    if (lifetime <= 0 || lifetime > 86400) return;
    std::lock_guard<std::mutex> lock(next_mu_);
    next_nonce_ = *std::move(nonce);
    // At most 5 s: its issue time is what a policy's max_evidence_age_seconds
    // measures from, so an older one could make evidence too old that a
    // nonce asked for now would not.
    next_nonce_use_by_ = received + std::min<std::chrono::milliseconds>(std::chrono::seconds(lifetime) / 2,
                                                                       std::chrono::seconds(5));
  }

  static json EvidenceJson(const attest::Evidence& evidence) {
    return json::parse(attest::EvidenceToJson(evidence));
  }

  std::unique_ptr<net::HttpsClient> client_;
  const std::string base_;
  const std::vector<crypto::Certificate> kms_roots_;  // the KMS CA: signing certificates chain to it
  std::mutex next_mu_;
  crypto::Bytes next_nonce_;  // from the last release answer; empty once used
  std::chrono::steady_clock::time_point next_nonce_use_by_;
};

}  // namespace

StatusOr<std::unique_ptr<KmsApi>> NewHttpsKmsClient(const HttpsKmsClientOptions& options) {
  if (options.host_id.empty()) return InvalidArgumentError("host id is required");
  net::HttpsClient::Options o;
  RETURN_IF_ERROR(ParseUrl(options.url, &o.host, &o.port));
  ASSIGN_OR_RETURN(o.ca_pem, ReadFileToString(Env::Default(), options.ca_cert_file));
  ASSIGN_OR_RETURN(o.cert_pem, ReadFileToString(Env::Default(), options.cert_file));
  ASSIGN_OR_RETURN(o.key_pem, crypto::ReadSecretFile(options.key_file));
  o.timeout_seconds = options.timeout_seconds;
  ASSIGN_OR_RETURN(std::vector<crypto::Certificate> roots,
                   crypto::Certificate::ParsePemBundle(o.ca_pem));
  ASSIGN_OR_RETURN(auto client, net::HttpsClient::Create(std::move(o)));
  return std::unique_ptr<KmsApi>(
      new HttpsKmsClient(std::move(client), options.host_id, std::move(roots)));
}

}  // namespace vmseal::host
