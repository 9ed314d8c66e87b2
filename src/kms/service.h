// The KMS core: plain request structs in, StatusOr<response> out, every call
// checked against the caller's role. The HTTP layer (kms/http.h) is a thin
// adapter over this class, so all logic is testable without sockets.
//
// Thread-safe.
#ifndef VMSEAL_KMS_SERVICE_H_
#define VMSEAL_KMS_SERVICE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "kms/audit.h"
#include "kms/internal/mini_ca.h"
#include "kms/kek.h"
#include "kms/metrics.h"
#include "kms/store.h"
#include "net/https_server.h"

namespace vmseal::kms {

// Who is calling, from the verified mTLS client certificate: the OU names
// the role, the CN the principal (portal name, host id, operator name).
struct Caller {
  enum class Role { kAnonymous, kPortal, kHost, kOperator };
  Role role = Role::kAnonymous;
  std::string name;
  std::string fingerprint;
};
Caller CallerFromPeer(const net::Peer& peer);

struct CreateKeyRequest {
  std::string customer_id;  // [A-Za-z0-9._-]{1,64}
  std::string algorithm;    // "RSA-3072" (default when empty) or "X25519"
};
struct CustomerKeyInfo {
  std::string key_id;
  std::string customer_id;
  std::string algorithm;
  std::string public_key_pem;
  std::string cert_pem;
  int64_t created_unix = 0;
};

struct NonceResponse {
  std::string nonce;  // hex, 32 random bytes
  int64_t expires_unix = 0;
};

class KmsService {
 public:
  struct Options {
    // Lifetime of attestation nonces. Default 60 s.
    int64_t nonce_lifetime_seconds = 60;
    // Validity of customer key certificates. Default 825 days.
    int64_t customer_cert_days = 825;
    // The clock (unix seconds); default time(nullptr).
    std::function<int64_t()> clock;
  };

  // `store` and `kek` must outlive the service. `ca` signs certificates.
  static StatusOr<std::unique_ptr<KmsService>> Create(Options options, Store* store,
                                                      const KeyEncryptionKey* kek,
                                                      internal::CertAndKey ca);

  // Portal only. Generates the key pair, stores the private key wrapped
  // under the KEK (with its audit record, in one transaction) and returns
  // the public half with a certificate from the KMS CA.
  StatusOr<CustomerKeyInfo> CreateCustomerKey(const Caller& caller, const CreateKeyRequest& req);
  // Portal or operator. NOT_FOUND also when the key belongs to another customer.
  StatusOr<CustomerKeyInfo> GetCustomerKey(const Caller& caller, const std::string& customer_id,
                                           const std::string& key_id);
  // A host asks for a nonce for itself (its CN must equal host_id).
  StatusOr<NonceResponse> IssueNonce(const Caller& caller, const std::string& host_id);
  // Operator only: records after `after_seq` (at most `limit`, <= 1000).
  StatusOr<std::vector<AuditRecord>> ReadAudit(const Caller& caller, int64_t after_seq,
                                               int64_t limit);
  // Operator only: verifies the whole chain.
  StatusOr<AuditHead> VerifyAudit(const Caller& caller);

  // Records a refused request (metrics and audit) with a reason code.
  void RecordDenial(const std::string& reason, const std::string& subject,
                    const std::string& message);

  Metrics& metrics() { return metrics_; }
  Store& store() { return *store_; }
  const std::string& ca_cert_pem() const { return ca_.cert_pem; }

 private:
  KmsService(Options options, Store* store, const KeyEncryptionKey* kek, internal::CertAndKey ca);
  Status Require(const Caller& caller, Caller::Role role, const std::string& action);
  int64_t Now() const;

  const Options options_;
  Store* const store_;
  const KeyEncryptionKey* const kek_;
  const internal::CertAndKey ca_;
  Metrics metrics_;
};

// Registers the KMS routes (docs/api/kms.yaml) on `server`.
void RegisterKmsRoutes(KmsService* service, net::HttpsServer* server);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_SERVICE_H_
