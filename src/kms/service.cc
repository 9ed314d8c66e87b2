#include "kms/service.h"

#include <openssl/pem.h>

#include <charconv>
#include <ctime>

#include "crypto/primitives.h"
#include "crypto/ssl_util.h"

namespace vmseal::kms {
namespace {

using nlohmann::json;

bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

const char* RoleName(Caller::Role role) {
  switch (role) {
    case Caller::Role::kPortal: return "portal";
    case Caller::Role::kHost: return "host";
    case Caller::Role::kOperator: return "operator";
    case Caller::Role::kAnonymous: return "anonymous";
  }
  return "anonymous";
}

struct GeneratedKey {
  SecretBytes private_pkcs8_der;
  std::string public_pem;
};

StatusOr<GeneratedKey> Generate(const std::string& algorithm) {
  EVP_PKEY* raw = algorithm == "RSA-3072"
                      ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", static_cast<size_t>(3072))
                      : EVP_PKEY_Q_keygen(nullptr, nullptr, "X25519");
  if (raw == nullptr) return crypto::SslError("key generation");
  crypto::EvpPkeyPtr key(raw);
  unsigned char* der = nullptr;
  int der_len = i2d_PrivateKey(key.get(), &der);
  if (der_len <= 0) return crypto::SslError("i2d_PrivateKey");
  GeneratedKey out;
  out.private_pkcs8_der = SecretBytes(std::span<const uint8_t>(der, static_cast<size_t>(der_len)));
  OPENSSL_clear_free(der, static_cast<size_t>(der_len));
  crypto::BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key.get()) != 1) return crypto::SslError("PEM_write_bio_PUBKEY");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  out.public_pem.assign(data, static_cast<size_t>(len));
  return out;
}

CustomerKeyInfo Info(const CustomerKeyRecord& r) {
  return {r.key_id, r.customer_id, r.algorithm, r.public_key_pem, r.cert_pem, r.created_unix};
}

}  // namespace

Caller CallerFromPeer(const net::Peer& peer) {
  Caller c;
  if (!peer.authenticated) return c;
  c.name = peer.common_name;
  c.fingerprint = peer.fingerprint_sha256;
  if (peer.organizational_unit == "portal") c.role = Caller::Role::kPortal;
  if (peer.organizational_unit == "host") c.role = Caller::Role::kHost;
  if (peer.organizational_unit == "operator") c.role = Caller::Role::kOperator;
  return c;
}

KmsService::KmsService(Options options, Store* store, const KeyEncryptionKey* kek,
                       internal::CertAndKey ca)
    : options_(std::move(options)), store_(store), kek_(kek), ca_(std::move(ca)) {}

StatusOr<std::unique_ptr<KmsService>> KmsService::Create(Options options, Store* store,
                                                         const KeyEncryptionKey* kek,
                                                         internal::CertAndKey ca) {
  if (store == nullptr || kek == nullptr) return InvalidArgumentError("store and KEK are required");
  if (options.nonce_lifetime_seconds <= 0 || options.nonce_lifetime_seconds > 3600) {
    return InvalidArgumentError("nonce lifetime must be 1..3600 s");
  }
  if (ca.cert_pem.empty() || ca.key_pem.empty()) return InvalidArgumentError("CA is required");
  return std::unique_ptr<KmsService>(new KmsService(std::move(options), store, kek, std::move(ca)));
}

int64_t KmsService::Now() const {
  return options_.clock ? options_.clock() : static_cast<int64_t>(std::time(nullptr));
}

void KmsService::RecordDenial(const std::string& reason, const std::string& subject,
                              const std::string& message) {
  metrics_.CountDenial(reason);
  // Best effort: a denial must not fail because the audit write failed, but
  // it is counted either way.
  (void)store_->AppendAudit({"request.deny", subject, json{{"reason", reason}, {"message", message}}});
}

Status KmsService::Require(const Caller& caller, Caller::Role role, const std::string& action) {
  if (caller.role == role) return OkStatus();
  const std::string who = caller.role == Caller::Role::kAnonymous
                              ? std::string("anonymous")
                              : std::string(RoleName(caller.role)) + "/" + caller.name;
  if (caller.role == Caller::Role::kAnonymous) {
    RecordDenial("unauthenticated", who, action);
    return UnauthenticatedError(action + " requires a client certificate");
  }
  RecordDenial("wrong_role", who, action);
  return PermissionDeniedError(action + " requires the " + RoleName(role) + " role");
}

StatusOr<CustomerKeyInfo> KmsService::CreateCustomerKey(const Caller& caller,
                                                        const CreateKeyRequest& req) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "create customer key"));
  if (!ValidId(req.customer_id)) return InvalidArgumentError("customer id must match [A-Za-z0-9._-]{1,64}");
  const std::string algorithm = req.algorithm.empty() ? "RSA-3072" : req.algorithm;
  if (algorithm != "RSA-3072" && algorithm != "X25519") {
    return InvalidArgumentError("algorithm must be RSA-3072 or X25519");
  }
  ASSIGN_OR_RETURN(GeneratedKey key, Generate(algorithm));
  CustomerKeyRecord rec;
  rec.key_id = "k-" + crypto::HexEncode(crypto::RandomBytes(16));
  rec.customer_id = req.customer_id;
  rec.algorithm = algorithm;
  rec.public_key_pem = key.public_pem;
  rec.created_unix = Now();
  ASSIGN_OR_RETURN(rec.cert_pem,
                   internal::CertifyPublicKey(ca_, key.public_pem, rec.key_id, "customer:" + rec.customer_id,
                                              options_.customer_cert_days));
  ASSIGN_OR_RETURN(std::string wrapped,
                   kek_->Wrap(key.private_pkcs8_der, CustomerKeyAad(rec.key_id, rec.customer_id)));
  rec.wrapped_private_key = crypto::Base64Encode(crypto::AsBytes(wrapped));
  rec.kek_id = kek_->id();
  RETURN_IF_ERROR(store_->PutCustomerKey(
      rec, {"customer_key.create", "customer/" + rec.customer_id,
            json{{"key_id", rec.key_id}, {"algorithm", algorithm}, {"kek_id", rec.kek_id},
                 {"by", caller.name}, {"by_fingerprint", caller.fingerprint}}}));
  metrics_.CountKeyCreated();
  return Info(rec);
}

StatusOr<CustomerKeyInfo> KmsService::GetCustomerKey(const Caller& caller,
                                                     const std::string& customer_id,
                                                     const std::string& key_id) {
  if (caller.role != Caller::Role::kOperator) {
    RETURN_IF_ERROR(Require(caller, Caller::Role::kPortal, "read customer key"));
  }
  auto rec = store_->GetCustomerKey(key_id);
  if (!rec.ok() || rec->customer_id != customer_id) {
    return NotFoundError("unknown key " + key_id + " for customer " + customer_id);
  }
  return Info(*rec);
}

StatusOr<NonceResponse> KmsService::IssueNonce(const Caller& caller, const std::string& host_id) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kHost, "issue nonce"));
  if (caller.name != host_id) {
    RecordDenial("wrong_host", "host/" + caller.name, "nonce for " + host_id);
    return PermissionDeniedError("a host may only ask nonces for itself");
  }
  NonceResponse out;
  out.nonce = crypto::HexEncode(crypto::RandomBytes(32));
  out.expires_unix = Now() + options_.nonce_lifetime_seconds;
  RETURN_IF_ERROR(store_->PutNonce(out.nonce, host_id, out.expires_unix));
  return out;
}

StatusOr<std::vector<AuditRecord>> KmsService::ReadAudit(const Caller& caller, int64_t after_seq,
                                                         int64_t limit) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "read audit log"));
  if (limit <= 0 || limit > 1000) return InvalidArgumentError("limit must be 1..1000");
  return store_->ReadAudit(after_seq, limit);
}

StatusOr<AuditHead> KmsService::VerifyAudit(const Caller& caller) {
  RETURN_IF_ERROR(Require(caller, Caller::Role::kOperator, "verify audit log"));
  return VerifyStoreAudit(*store_);
}

// --- HTTP adapter ---------------------------------------------------------

namespace {
json KeyJson(const CustomerKeyInfo& k) {
  return {{"key_id", k.key_id}, {"customer_id", k.customer_id}, {"algorithm", k.algorithm},
          {"public_key_pem", k.public_key_pem}, {"certificate_pem", k.cert_pem},
          {"created_unix", k.created_unix}};
}

StatusOr<int64_t> IntParam(const net::Request& r, const std::string& name, int64_t fallback) {
  std::string v = r.QueryParam(name);
  if (v.empty()) return fallback;
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size()) return InvalidArgumentError(name + " must be an integer");
  return out;
}
}  // namespace

void RegisterKmsRoutes(KmsService* s, net::HttpsServer* server) {
  server->Get("/healthz", [s](const net::Request&) -> StatusOr<json> {
    // A cheap read proves the store answers.
    RETURN_IF_ERROR(s->store().ReadAudit(0, 1));
    return json{{"status", "ok"}, {"store", s->store().backend()}};
  });
  server->GetText("/metrics", [s](const net::Request&) -> StatusOr<net::TextResponse> {
    return net::TextResponse{s->metrics().Render()};
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
  server->Get(R"(/v1/customers/([A-Za-z0-9._-]{1,64})/keys/([A-Za-z0-9._-]{1,64}))",
              [s](const net::Request& r) -> StatusOr<json> {
                ASSIGN_OR_RETURN(auto info, s->GetCustomerKey(CallerFromPeer(r.peer),
                                                              r.path_params[0], r.path_params[1]));
                return KeyJson(info);
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
  server->Get("/v1/audit/verify", [s](const net::Request& r) -> StatusOr<json> {
    ASSIGN_OR_RETURN(auto head, s->VerifyAudit(CallerFromPeer(r.peer)));
    return json{{"valid", true}, {"count", head.count}, {"head", head.hash}};
  });
  // TODO(attest merge): POST /v1/hosts/{id}/enroll, /activate, /attest and
  // POST /v1/release are wired once src/attest lands on main.
  server->SetObserver([s](const std::string&, const std::string& route, int status, double secs) {
    s->metrics().CountRequest(route, status, secs);
  });
}

}  // namespace vmseal::kms
