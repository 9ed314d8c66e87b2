// The portal's view of the KMS (docs/protocol.md §1, CONTRACT routes): it
// asks for customer key pairs at registration and for the placement verdict
// of candidate hosts. The portal never sees a private key.
#ifndef VMSEAL_CSP_KMS_CLIENT_H_
#define VMSEAL_CSP_KMS_CLIENT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "ovf/signed_package_texts.h"
#include "crypto/primitives.h"

namespace vmseal::csp {

// The public half of a customer key, as the KMS issued it.
struct CustomerKey {
  std::string key_id;
  std::string customer_id;
  // "RSA-3072" or "X25519".
  std::string algorithm;
  // PEM SubjectPublicKeyInfo.
  std::string public_key_pem;
  // PEM certificate of the public key, signed by the KMS CA.
  std::string cert_pem;
  int64_t created_unix = 0;
  // The customer's key version (kms/key_versions.h) and when it was retired
  // (0: in use).
  int64_t version = 1;
  int64_t retired_unix = 0;
};

// A customer's package-signing key as the KMS registered it: the public half
// of the key the customer made on its own machine and the KMS CA's
// certificate for it (CN = customer id, EKU codeSigning).
struct SigningKey {
  std::string customer_id;
  // Lowercase hex SHA-256 of the key's SubjectPublicKeyInfo.
  std::string key_id;
  std::string public_key_pem;
  std::string cert_pem;
};

// A customer-signed policy document as the KMS stored it.
struct SignedPolicy {
  int64_t version = 0;
  std::string document;   // the signed bytes
  std::string signature;  // base64 of the DER signature
};

// The KMS's placement answer for one host.
struct HostEligibility {
  std::string host_id;
  bool eligible = false;
  // "ok" when eligible, else a machine reason (pcr_policy, tags, evidence_age,
  // history, no_policy, not_enrolled, ...).
  std::string reason;
};

// A launch the portal grants at the KMS when it places a job (POST
// /v1/grants): the host may have the image's key released once.
struct LaunchGrant {
  std::string job_id;
  // The tag's imageId and tenant (what the key-wrap label binds).
  std::string image_id;
  std::string tenant;
  std::string host_id;
  int64_t ttl_seconds = 0;
  // Which placement of the job (1, 2, ...; the "attempt" the host is given):
  // the KMS keeps only the newest attempt's grant and refuses an older
  // attempt's release (stale_attempt).
  int64_t attempt = 0;
};

// Thread-safe.
class KmsClient {
 public:
  virtual ~KmsClient() = default;

  // Asks the KMS for a new key pair of `customer_id` (POST
  // /v1/customers/{cid}/keys) with `algorithm`, "RSA-3072" or "X25519".
  // UNAVAILABLE when the KMS cannot be reached.
  virtual StatusOr<CustomerKey> CreateCustomerKey(const std::string& customer_id,
                                                  const std::string& algorithm) = 0;

  // Key versions (kms/key_versions.h): every version of the customer's key,
  // oldest first (GET /v1/customers/{cid}/keys); a new version
  // (POST .../key-rotations); retiring one (POST
  // .../key-versions/{n}/retire). UNIMPLEMENTED by clients without them.
  virtual StatusOr<std::vector<CustomerKey>> ListCustomerKeys(const std::string& customer_id) {
    (void)customer_id;
    return UnimplementedError("this KMS client has no key versions");
  }
  virtual StatusOr<CustomerKey> RotateCustomerKey(const std::string& customer_id) {
    (void)customer_id;
    return UnimplementedError("this KMS client has no key versions");
  }
  // Retiring relays the customer's signed retire_key_version request
  // (`document` and `signature` base64, kms/lifecycle.h) unchanged.
  virtual StatusOr<CustomerKey> RetireCustomerKey(const std::string& customer_id, int64_t version,
                                                  const std::string& document_b64,
                                                  const std::string& signature_b64) {
    (void)customer_id, (void)version, (void)document_b64, (void)signature_b64;
    return UnimplementedError("this KMS client has no key versions");
  }

  // Applies the KMS release policy of (customer, image) to each host's
  // latest verdict, history and tags (POST /v1/placement-check). Returns one
  // entry per requested host, in any order; hosts the KMS omits count as
  // ineligible.
  virtual StatusOr<std::vector<HostEligibility>> CheckPlacement(
      const std::string& customer_id, const std::string& image_id,
      const std::vector<std::string>& host_ids) = 0;

  // Relays a customer-signed policy document for the image (PUT
  // /v1/signed-policies/{tenant}/{image_id}, docs/format/policy-document.md):
  // the KMS verifies the customer's signature and version. The portal cannot
  // make or change one; it writes no release policy at all.
  virtual StatusOr<SignedPolicy> PutSignedPolicy(const std::string& tenant,
                                                 const std::string& image_id,
                                                 const std::string& document,
                                                 const crypto::Bytes& signature) {
    (void)tenant, (void)image_id, (void)document, (void)signature;
    return UnimplementedError("this KMS client relays no signed policies");
  }
  // The newest signed policy document of the image; NOT_FOUND if none.
  virtual StatusOr<SignedPolicy> GetSignedPolicy(const std::string& tenant,
                                                 const std::string& image_id) {
    (void)tenant, (void)image_id;
    return NotFoundError("no signed policy");
  }

  // Registers an accepted package's tag identity (PUT
  // /v1/images/{tenant}/{image_id}) with its signed metadata (empty for an
  // unsigned package): the KMS verifies the customer's signature, then
  // accepts grants and this image's policy for that tenant only, checking
  // hosts against the signed descriptor's release policy.
  virtual Status RegisterImage(const std::string& tenant, const std::string& image_id,
                               const std::string& key_id,
                               const ovf::SignedPackageTexts& signed_texts) = 0;

  // Registers a one-launch grant (KMS role portal). Without one the KMS
  // refuses the host's release (no_grant).
  virtual Status CreateGrant(const LaunchGrant& grant) = 0;

  // Forwards a customer's package-signing key with its proof of possession
  // (POST /v1/customers/{cid}/signing-key); the KMS checks the proof and
  // certifies the key. Refusals: bad_proof, signing_key_exists.
  virtual StatusOr<SigningKey> RegisterSigningKey(const std::string& customer_id,
                                                  const std::string& public_key_pem,
                                                  const std::vector<uint8_t>& proof) {
    (void)customer_id, (void)public_key_pem, (void)proof;
    return UnimplementedError("this KMS client registers no signing keys");
  }
  // The customer's registered signing key (GET
  // /v1/customers/{cid}/signing-key); NOT_FOUND if none.
  virtual StatusOr<SigningKey> GetSigningKey(const std::string& customer_id) {
    (void)customer_id;
    return UnimplementedError("this KMS client reads no signing keys");
  }

  // One page of the customer audit of image (tenant, image_id) (GET
  // /v1/images/{tenant}/{image_id}/audit?after=&old=): the KMS's answer,
  // relayed verbatim (docs/format/audit-log.md §6.1); the customer checks
  // it. tenant_mismatch / unknown_image as the KMS refuses.
  virtual StatusOr<nlohmann::json> CustomerAudit(const std::string& tenant, const std::string& image_id,
                                                 int64_t after_seq, int64_t old_size) {
    (void)tenant, (void)image_id, (void)after_seq, (void)old_size;
    return UnimplementedError("this KMS client relays no audit");
  }

  // Relays a customer-signed lifecycle request (POST
  // /v1/lifecycle-requests/{tenant}, kms/lifecycle.h): revoke_image or
  // close_account. The KMS's answer (the mark, and for an image its
  // "on_trust_loss"), verbatim.
  virtual StatusOr<nlohmann::json> LifecycleRequest(const std::string& tenant,
                                                    const std::string& document,
                                                    const crypto::Bytes& signature) {
    (void)tenant, (void)document, (void)signature;
    return UnimplementedError("this KMS client relays no lifecycle requests");
  }

  // Relays a customer's signed re-wrap authorization (POST
  // /v1/migrations/rewrap, docs/format/rewrap-authorization.md) verbatim:
  // the KMS checks the customer's signature; the portal can make none.
  virtual StatusOr<nlohmann::json> RelayRewrap(const nlohmann::json& body) {
    (void)body;
    return UnimplementedError("this KMS client relays no re-wrap");
  }
  // Relays a customer's signed re-wrap authorization to their newest key
  // version (POST /v1/customers/{cid}/key-rewraps) verbatim.
  virtual StatusOr<nlohmann::json> RelayKeyRewrap(const std::string& customer_id,
                                                  const nlohmann::json& body) {
    (void)customer_id, (void)body;
    return UnimplementedError("this KMS client relays no re-wrap");
  }

  // Read-only views for the operator console (docs/console.md "Operator"),
  // made with the portal's own KMS identity, whose role the KMS allows to
  // read these and nothing that changes them:
  // the flavor definitions (GET /v1/flavors): {"flavors": [{name, pcrs}]};
  virtual StatusOr<nlohmann::json> ListFlavors() {
    return UnimplementedError("this KMS client reads no flavors");
  }
  // the log's signed checkpoint and verifier key (GET /v1/audit/checkpoint);
  virtual StatusOr<nlohmann::json> AuditCheckpoint() {
    return UnimplementedError("this KMS client reads no audit checkpoint");
  }
  // record `seq`'s inclusion proof in the tree of `size` records, the
  // record itself on its extra line (GET /v1/audit/proofs/inclusion).
  virtual StatusOr<std::string> AuditInclusionProof(int64_t seq, int64_t size) {
    (void)seq, (void)size;
    return UnimplementedError("this KMS client reads no audit proofs");
  }
  // the consistency proof from the tree of `old_size` records to the tree
  // of `size` (GET /v1/audit/proofs/consistency), its checkpoint included.
  virtual StatusOr<std::string> AuditConsistencyProof(int64_t old_size, int64_t size) {
    (void)old_size, (void)size;
    return UnimplementedError("this KMS client reads no audit proofs");
  }
  // Loss of trust (POST /v1/vms/trust-check, docs/protocol.md §7.2):
  // `body` is {"vms": [{job_id, tenant, image_id, host_id}]}; the KMS's
  // answer {"vms": [{job_id, trusted, reason, on_trust_loss}]} verbatim.
  virtual StatusOr<nlohmann::json> CheckVmTrust(const nlohmann::json& body) {
    (void)body;
    return UnimplementedError("this KMS client checks no trust");
  }
  // POST /v1/vms/trust-events: what the portal did about a VM whose trust
  // was lost, for the customer's audit.
  virtual Status RecordVmTrustEvent(const nlohmann::json& body) {
    (void)body;
    return UnimplementedError("this KMS client records no trust events");
  }

  // The PEM certificate of the KMS CA (what customer certificates chain to).
  virtual std::string CaCertificatePem() const = 0;
};

struct HttpsKmsClientOptions {
  // KMS base URL, "https://host:port". Required.
  std::string url;
  // PEM files: the KMS CA (server trust anchor and customer-cert root), and
  // the portal's mTLS identity issued by it (`vmseal kms issue-identity
  // --role portal`). All required.
  std::string ca_cert_file;
  std::string cert_file;
  std::string key_file;
  // Connect + read timeout per request. 30 s: a registration makes the KMS
  // generate an RSA-3072 key pair, which took over 10 s on a 2-core machine
  // at load average 18 (the customer then saw "HTTPS request failed: Read").
  int timeout_seconds = 30;
};

// The KmsClient over HTTPS (TLS 1.3, mTLS) using src/net's client.
StatusOr<std::unique_ptr<KmsClient>> NewHttpsKmsClient(const HttpsKmsClientOptions& options);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_KMS_CLIENT_H_
