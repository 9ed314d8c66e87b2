// The KMS core: plain request structs in, StatusOr<response> out, every call
// checked against the caller's role. The HTTP layer (kms/http.h) is a thin
// adapter over this class, so all logic is testable without sockets.
//
// Thread-safe.
#ifndef VMSEAL_KMS_SERVICE_H_
#define VMSEAL_KMS_SERVICE_H_

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "attest/ek_certificate.h"
#include "attest/evidence.h"
#include "attest/verifier.h"
#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/keys.h"
#include "crypto/x509.h"
#include "kms/audit.h"
#include "kms/customer_audit.h"
#include "kms/internal/mini_ca.h"
#include "kms/kek.h"
#include "kms/key_versions.h"
#include "kms/lifecycle.h"
#include "kms/metrics.h"
#include "kms/migration.h"
#include "kms/nonce.h"
#include "kms/package_precheck.h"
#include "kms/policy.h"
#include "kms/store.h"
#include "net/https_server.h"

namespace vmseal::ovf {
struct SignedPackageTexts;  // ovf/signature.h (vmseal_ovf is private to the KMS)
struct SignedDescriptor;
}  // namespace vmseal::ovf

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
  int64_t version = 1;       // the customer's key version (kms/key_versions.h)
  int64_t retired_unix = 0;  // 0 while the version is in use
};

struct NonceResponse {
  std::string nonce;  // hex, 32 bytes: issue time, random, MAC (docs/protocol.md)
  int64_t expires_unix = 0;
};

// One recorded attestation verdict as the API shows it.
struct VerdictInfo {
  std::string verdict_id;
  bool trusted = false;
  std::string reason;  // "ok" when trusted
  int64_t time_unix = 0;
};

// POST /v1/hosts/{hid}/releases (CONTRACT.md).
struct ReleaseRequest {
  // The portal's job this release is for: its grant (KmsService::CreateGrant)
  // must name this host, the label's image and tenant; it is used up.
  std::string job_id;
  std::string image_id;
  std::string tenant;       // the customer id
  std::string key_id;       // "sha256:<hex SPKI digest>" (package) or a KMS "k-..." id
  uint64_t key_version = 1;
  // ovf::kRsaOaepUri (RSA customer keys) or ovf::kX25519WrapUri (X25519).
  std::string wrap_algorithm;
  // The package label (docs/format/package.md §5): the OAEP label, or the
  // associated data of the X25519 wrap.
  crypto::Bytes oaep_label;
  crypto::Bytes wrapped_key;
  attest::Evidence evidence;
  // The package's signed metadata exactly as stored (docs/protocol.md §5):
  // the descriptor's file name and text, the manifest and the .cert. The
  // KMS verifies the signature with the tenant's registered signing key and
  // that the fields above are the signed descriptor's before it unwraps.
  std::string descriptor_name;
  std::string descriptor;
  std::string manifest;
  std::string package_cert;
  // Which placement of the job (the portal's "attempt", given to the host
  // with the job): a release for an attempt older than the job's grant is
  // refused (stale_attempt), any other mismatch is no_grant.
  int64_t attempt = 0;
};
struct ReleaseResponse {
  crypto::Bytes rewrapped_key;  // RSA-OAEP-SHA256 to the certified binding key
  crypto::Bytes label;          // the OAEP label used, ending in a zero byte
  // Key id (hex SHA-256 of the SPKI) of the registered signing key that
  // signed the package; empty for an unsigned release (signature not
  // required by this KMS's configuration).
  std::string signer_key_id;
  // The host's next nonce (docs/protocol.md §5.1), issued as the key is
  // answered: a host that attests or releases again uses it instead of a
  // separate POST .../nonces. Empty if it could not be issued.
  NonceResponse next_nonce;
};

// POST /v1/customers/{cid}/signing-key: the public half of a signing key
// the customer created on its own machine, with its proof of possession.
struct SigningKeyRequest {
  std::string tenant;
  std::string public_key_pem;  // ECDSA P-256 SubjectPublicKeyInfo
  crypto::Bytes proof;         // ovf::SigningKeyProofMessage signed by the key
};
struct SigningKeyInfo {
  std::string tenant;
  std::string key_id;
  std::string public_key_pem;
  std::string cert_pem;  // KMS CA, CN = tenant, EKU codeSigning
  int64_t created_unix = 0;
};

// POST /v1/grants: the portal placed job `job_id` of `tenant`'s image on
// `host_id`; the host may have the image's key released once, until
// `ttl_seconds` from now.
struct GrantRequest {
  std::string job_id;    // [A-Za-z0-9._-]{1,64}
  std::string image_id;  // the tag's imageId (what the key-wrap label binds)
  std::string tenant;
  std::string host_id;
  int64_t ttl_seconds = 0;  // 1..Options::max_grant_ttl_seconds
  // The job's placement this grant is for (>= 0; the portal counts from 1).
  // A grant for a newer attempt replaces the job's grant; one for an older
  // attempt is refused (stale_attempt), as is arming a used grant again
  // (grant_used).
  int64_t attempt = 0;
};

// PUT /v1/signed-policies/{tenant}/{image_id}: a customer-signed policy
// document (docs/format/policy-document.md), relayed by the portal.
struct SignedPolicyRequest {
  std::string tenant;    // whose image (the tag's tenant)
  std::string image_id;  // the tag's imageId
  std::string document;  // the signed bytes, exactly as signed
  crypto::Bytes signature;
};

// The policy a release enforces and where it came from (the release.grant
// audit record's "policy"): "signed:v<N>", "descriptor",
// "operator:<customer>/<image>" or "_default".
struct AppliedPolicy {
  nlohmann::json policy;
  std::string source;
};

struct HostSummary {
  std::string host_id;
  bool enrolled = false;
  std::vector<std::string> tags;
  std::optional<VerdictInfo> latest;
};

struct PlacementRequest {
  std::string customer_id;
  std::string image_id;
  std::vector<std::string> host_ids;
};
struct PlacementResult {
  std::string host_id;
  bool eligible = false;
  std::string reason;  // "ok" when eligible
};

// The image identity the package's OAEP label encodes
// (docs/format/package.md, "OAEPparams"); parsed to check a release request
// names the same image.
struct PackageLabel {
  std::string image_id;
  std::string tenant;
  uint64_t key_version = 0;
  std::string data_algorithm;
};
StatusOr<PackageLabel> ParsePackageLabel(std::span<const uint8_t> label);

// The release-wrap label for an image (without the trailing zero byte the
// TPM needs; crypto::OaepLabel::kTpm appends it).
std::string ReleaseLabel(const std::string& image_id);

// What MigrationRewrap answers: the data key wrapped to the destination
// certificate's key under the signed destination label.
struct RewrapResponse {
  crypto::Bytes rewrapped_key;
  std::string destination_key_id;  // hex SHA-256 of the destination key's SPKI
  // RewrapToNewestKey: the version wrapped to and its KMS key id.
  int64_t key_version = 0;
  std::string kms_key_id;
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
    // PEM bundle of TPM manufacturer CAs for EK certificates. Empty: host
    // enrollment is refused (FAILED_PRECONDITION).
    std::string ek_ca_bundle_pem;
    // Pending enrollments older than this are forgotten. Default 300 s.
    int64_t enrollment_lifetime_seconds = 300;
    // Longest lifetime of a launch grant the portal may ask for. Default 1 day.
    int64_t max_grant_ttl_seconds = 86400;
    // A release must carry the package's signed metadata, signed by the
    // tenant's registered signing key (unsigned_package otherwise). false
    // (kms.json "allow_unsigned_packages": true) is for interoperability
    // tests only: a request that does carry a signature is still checked.
    // Default true.
    bool require_package_signature = true;
    // Validity of package-signing certificates. Default 825 days.
    int64_t signing_cert_days = 825;
    // Window over which refusals of anonymous callers are aggregated into
    // at most two audit records (the first refusal and the count of the
    // rest). Default 60 s.
    int64_t anonymous_denial_window_seconds = 60;
    // Remember, for 60 s, package texts verified as signed by the tenant's
    // registered key, so that the next release of the same package skips
    // parsing and verifying them (the registered key is still read every
    // time). false verifies every time (bench/release_bench's baseline).
    // Default true.
    bool remember_verified_packages = true;
    // The cheap checks of package texts before their verification, and the
    // per-host limit on refused releases (package_precheck.h).
    PackagePrecheck::Options package_precheck;
    // Grace before a closed account's keys are destroyed, when the
    // customer's close_account request names none (kms/lifecycle.h).
    // Default 7 days.
    int64_t account_grace_seconds = 7 * 86400;
  };

  // `store` and `kek` must outlive the service. `ca` signs certificates.
  static StatusOr<std::unique_ptr<KmsService>> Create(Options options, Store* store,
                                                      const KeyEncryptionKey* kek,
                                                      internal::CertAndKey ca);

  // Portal only. Generates the key pair, stores the private key wrapped
  // under the KEK (with its audit record, in one transaction) and returns
  // the public half with a certificate from the KMS CA.
  StatusOr<CustomerKeyInfo> CreateCustomerKey(const Caller& caller, const CreateKeyRequest& req);
  // --- Key versions (kms/key_versions.h; defined in key_versions.cc) -------
  // Portal only: a new version of the customer's key, of the algorithm of
  // its newest version (unknown_customer if it has none: never registered,
  // or its keys were destroyed). Audited as customer_key.create with the
  // version. CreateCustomerKey for a customer with keys does the same with
  // the algorithm asked for.
  StatusOr<CustomerKeyInfo> RotateCustomerKey(const Caller& caller, const std::string& customer_id);
  // Portal only, relaying the customer's signed request: retires version
  // `version` of the customer's keys: no package wrapped under it is
  // released again (key_version_retired). `document` is a lifecycle request
  // (kms/lifecycle.h, docs/protocol.md §1.2) retire_key_version of
  // (customer_id, version, issued_unix) signed with the customer's
  // registered signing key: the portal cannot retire a version on its own
  // word (Lifecycle::VerifyCustomerRequest's refusals, and
  // PERMISSION_DENIED "request_mismatch" for a document of another action
  // or version). Then refused: the newest version (key_version_current:
  // rotate first), an unknown version (NOT_FOUND unknown_key_version), a
  // retired one (key_version_retired). Audited as customer_key.retire /
  // customer_key.deny (lifecycle.deny for a request that does not verify).
  StatusOr<CustomerKeyInfo> RetireCustomerKey(const Caller& caller, const std::string& customer_id,
                                              int64_t version, const std::string& document,
                                              std::span<const uint8_t> signature);
  // Portal only, relaying the customer's signed authorization
  // (docs/format/rewrap-authorization.md) whose destination certificate is
  // the customer's own newest key version at this KMS: re-wraps the data
  // key of a package sealed under an older, unretired version to the newest
  // one under the signed label (kms/key_rewrap.cc, docs/protocol.md §1.3).
  // The image's registered key moves to the newest one with the audit
  // record `customer_key.rewrap`; refusals `customer_key.deny`.
  StatusOr<RewrapResponse> RewrapToNewestKey(const Caller& caller, const std::string& customer_id,
                                             const RewrapRequest& req);
  // Portal or operator: the customer's key versions, oldest first.
  StatusOr<std::vector<CustomerKeyInfo>> ListCustomerKeys(const Caller& caller,
                                                          const std::string& customer_id);

  // Portal only: certifies the tenant's package-signing key (P-256) after
  // checking its proof of possession (bad_proof), for a tenant that has a
  // customer key (unknown_customer otherwise); one key per tenant
  // (signing_key_exists for another; the same key again is idempotent).
  // Audited as signing_key.register.
  StatusOr<SigningKeyInfo> RegisterSigningKey(const Caller& caller, const SigningKeyRequest& req);
  // Portal or operator: the tenant's registered signing key; NOT_FOUND if none.
  StatusOr<SigningKeyInfo> GetSigningKey(const Caller& caller, const std::string& tenant);
  // Portal or operator. NOT_FOUND also when the key belongs to another customer.
  StatusOr<CustomerKeyInfo> GetCustomerKey(const Caller& caller, const std::string& customer_id,
                                           const std::string& key_id);
  // A host asks for a nonce for itself (its CN must equal host_id).
  StatusOr<NonceResponse> IssueNonce(const Caller& caller, const std::string& host_id);
  // --- Hosts (role host, CN == host_id) ----------------------------------
  // Enrollment step 1: checks the EK certificate against the manufacturer CA
  // bundle and the AK's shape; answers a MakeCredential challenge. The
  // secret is kept in memory only: after a KMS restart the host enrolls again.
  StatusOr<attest::CredentialChallenge> BeginEnrollment(const Caller& caller,
                                                        const std::string& host_id,
                                                        const attest::EnrollmentRequest& req);
  // Enrollment step 1 also checks the EK against the one pinned to the host
  // id by its first enrollment: another EK is refused (ek_mismatch, audited)
  // until an operator approves it (ApproveEk).
  //
  // Enrollment step 2: the ActivateCredential answer. On a match the AK is
  // stored as the host's (keeping its tags) and cached; the first
  // enrollment of a host id pins its EK in the same transaction.
  Status CompleteEnrollment(const Caller& caller, const std::string& host_id,
                            const SecretBytes& secret);
  // Consumes the nonce, verifies the evidence and records the verdict (also
  // an untrusted one, which is returned, not an error). Errors: not_enrolled,
  // nonce_* (PERMISSION_DENIED), malformed input.
  StatusOr<VerdictInfo> Attest(const Caller& caller, const std::string& host_id,
                               const attest::Evidence& evidence);
  // The release: see CONTRACT.md. Denials are PERMISSION_DENIED (or
  // INVALID_ARGUMENT for malformed_evidence) "<reason>: <detail>", audited
  // as release.deny; a grant is audited as release.grant. No key bytes in
  // either.
  StatusOr<ReleaseResponse> Release(const Caller& caller, const std::string& host_id,
                                    const ReleaseRequest& req);

  // --- Portal / operator ------------------------------------------------
  StatusOr<std::vector<HostSummary>> ListHosts(const Caller& caller);
  StatusOr<std::vector<VerdictInfo>> ListVerdicts(const Caller& caller, const std::string& host_id,
                                                  int64_t since_unix);
  // Operator only.
  Status SetHostTags(const Caller& caller, const std::string& host_id,
                     const std::vector<std::string>& tags);
  // Portal only: the release policy applied to each host's latest verdict:
  // the image's effective policy as CreateGrant and Release see it (with the
  // registered signed descriptor's policy).
  StatusOr<std::vector<PlacementResult>> PlacementCheck(const Caller& caller,
                                                        const PlacementRequest& req);
  // Operator only.
  Status PutFlavor(const Caller& caller, const Flavor& flavor);
  // Operator or portal.
  StatusOr<std::vector<Flavor>> ListFlavors(const Caller& caller);
  // Operator only: a flavor from the PCR values of the host's latest trusted verdict.
  StatusOr<Flavor> FlavorFromHost(const Caller& caller, const std::string& name,
                                  const std::string& host_id);
  // Operator only: "_default", a customer-wide or an image's policy, below
  // whatever the customer signed (see Release). The portal is refused
  // (PERMISSION_DENIED "policy_forbidden: ...", audited): it relays
  // customer-signed documents (PutSignedPolicy) and writes no policy.
  Status PutPolicy(const Caller& caller, const PolicyRecord& policy);
  // Portal (relaying for the customer) or operator: stores a customer-signed
  // policy document after checking, in this order: it parses
  // (INVALID_ARGUMENT "malformed_policy_document"); it names the request's
  // tenant and image, registered for that tenant ("tenant_mismatch"); it is
  // signed by the tenant's registered signing key ("bad_signature";
  // "signer_mismatch" if none is registered); its policy is valid
  // (INVALID_ARGUMENT "bad_policy"); its version is greater than the stored
  // newest ("policy_stale": replay or rollback). Refusals are
  // PERMISSION_DENIED unless stated and audited as policy.deny; success as
  // policy.signed. The newest stored document is what Release enforces.
  StatusOr<PolicyDocumentRecord> PutSignedPolicy(const Caller& caller, const SignedPolicyRequest& req);
  // Portal or operator: the newest signed document; NOT_FOUND if none.
  StatusOr<PolicyDocumentRecord> GetSignedPolicy(const Caller& caller, const std::string& tenant,
                                                 const std::string& image_id);
  StatusOr<PolicyRecord> GetPolicy(const Caller& caller, const std::string& customer_id,
                                   const std::string& image_id);

  // Portal only: records that the portal accepted the package of
  // (image.tenant, image.image_id), the tag's identity, wrapped to
  // image.key_id. With `signed_texts` (the package's descriptor, manifest
  // and .cert; docs/protocol.md §4) the KMS verifies them as a release does
  // (the tenant's registered signing key; unsigned_package, bad_signature,
  // signer_mismatch) and that the signed tag names this image, tenant and
  // key (key_not_signed), then keeps the descriptor's digest and release
  // policy: placement and grants are checked against that policy, and a
  // release's signed descriptor must carry the same policy. Refusals are
  // audited. Only
  // image.tenant, image_id and key_id are read. Idempotent; image_conflict
  // if registered with another key, or with a signed descriptor of another
  // release policy.
  Status RegisterImage(const Caller& caller, const ImageRecord& image,
                       const ovf::SignedPackageTexts& signed_texts);
  // The same without signed metadata.
  Status RegisterImage(const Caller& caller, const ImageRecord& image);
  // Portal only: a one-launch grant (GrantRequest); the image must be
  // registered for the tenant (unknown_image otherwise), and the host must
  // meet the image's effective release policy on its latest verdict, the
  // policy a release enforces (the newest customer-signed document, else
  // the registered signed descriptor's, else the operator's):
  // PERMISSION_DENIED "<reason>: ..." (the policy's reason, no_verdict,
  // not_enrolled, no_policy), audited as grant.deny, no grant stored. The
  // release checks the policy again on fresh evidence. Audited as
  // grant.create.
  StatusOr<GrantRecord> CreateGrant(const Caller& caller, const GrantRequest& req);
  // Operator only: pins the EK with SPKI SHA-256 `ek_sha256_hex` (64
  // lowercase hex) to the host, so that a host whose TPM was replaced can
  // enroll again. Audited as host.ek.approve.
  Status ApproveEk(const Caller& caller, const std::string& host_id,
                   const std::string& ek_sha256_hex);

  // Operator only: records after `after_seq` (at most `limit`, <= 1000).
  StatusOr<std::vector<AuditRecord>> ReadAudit(const Caller& caller, int64_t after_seq,
                                               int64_t limit);
  // Operator only: verifies the whole chain.
  StatusOr<AuditHead> VerifyAudit(const Caller& caller);
  // Any authenticated caller (docs/format/audit-log.md §6): the current
  // signed checkpoint; a tlog-proof of record `seq` in the tree of `size`
  // records; a consistency proof from `old_size` to `size` records (size 0:
  // the current tree).
  StatusOr<std::string> AuditCheckpoint(const Caller& caller);
  StatusOr<std::string> AuditInclusionProof(const Caller& caller, int64_t seq, int64_t size);
  StatusOr<std::string> AuditConsistencyProof(const Caller& caller, int64_t old_size, int64_t size);
  // Portal (relaying for the tenant it authenticated) or operator: one page
  // of the audit records of image (tenant, image_id), each with an inclusion
  // proof against one signed checkpoint, and a consistency proof from
  // `old_size` (kms/customer_audit.h). An image registered only for another
  // tenant: PERMISSION_DENIED "tenant_mismatch: ..." (audited, nothing
  // listed); not registered at all: NOT_FOUND "unknown_image: ...".
  StatusOr<CustomerAuditPage> CustomerAudit(const Caller& caller, const CustomerAuditRequest& req);

  // Portal only (relaying the customer's request): one re-wrap of an
  // image's data key to a destination certificate the customer signed for
  // (kms/migration.h, docs/format/rewrap-authorization.md). Audited
  // `migration.rewrap` / `migration.deny`. Defined in migration.cc.
  StatusOr<RewrapResponse> MigrationRewrap(const Caller& caller, const RewrapRequest& req);
  // Portal only: whether each VM's host still meets its image's release
  // policy (kms/lifecycle.h VmTrustQuery, docs/protocol.md §7.2); each
  // untrusted VM audited `vm.trust_loss`. Defined in vm_trust.cc.
  StatusOr<std::vector<VmTrustAnswer>> CheckVmTrust(const Caller& caller,
                                                    const std::vector<VmTrustQuery>& vms);
  // Portal only: audits what the portal did about a VM whose trust was lost
  // (`vm.trust_event`); the image must be registered for the tenant
  // (unknown_image otherwise).
  Status RecordVmTrustEvent(const Caller& caller, const VmTrustEvent& event);
  // The log's verifier key ("<origin>+<id>+<key>").
  std::string audit_log_key() const { return audit_log_->verifier_key(); }
  // The KMS CA's endorsement of that key (docs/format/audit-log.md §6.1).
  const crypto::Bytes& audit_log_key_endorsement() const { return log_key_endorsement_; }

  // Records a refused request (metrics and audit) with a reason code.
  void RecordDenial(const std::string& reason, const std::string& subject,
                    const std::string& message);

  // Revocation, disable and decommissioning (kms/lifecycle.h); Release,
  // CreateGrant, PlacementCheck and BeginEnrollment consult it first.
  Lifecycle& lifecycle() { return *lifecycle_; }
  // What the image's effective policy says of running VMs when trust in
  // them is lost ("stop" or "report", the default); NOT_FOUND if the image
  // is not registered.
  StatusOr<std::string> OnTrustLoss(const std::string& tenant, const std::string& image_id);
  // Drops the cached private keys of the customer (its keys were destroyed).
  void ForgetCustomerKeys(const std::string& customer_id);

  Metrics& metrics() { return metrics_; }
  Store& store() { return *store_; }
  const std::string& ca_cert_pem() const { return ca_.cert_pem; }

 private:
  KmsService(Options options, Store* store, const KeyEncryptionKey* kek, internal::CertAndKey ca);
  Status Require(const Caller& caller, Caller::Role role, const std::string& action);
  Status RequireAny(const Caller& caller, std::initializer_list<Caller::Role> roles,
                    const std::string& action);
  Status RequireHost(const Caller& caller, const std::string& host_id, const std::string& action);
  int64_t Now() const;
  // Deletes expired used-nonce records, at most once a minute.
  void MaybePurgeNonces(int64_t now);

  struct CachedKey {
    std::string key_id;  // KMS id
    std::string customer_id;
    std::shared_ptr<const crypto::PrivateKey> key;
  };
  struct PendingEnrollment {
    std::shared_ptr<const attest::AkPublic> ak;
    std::string ek_cert_pem;
    std::string ek_sha256;  // hex SHA-256 of the EK's SubjectPublicKeyInfo
    SecretBytes secret;
    int64_t expires_unix = 0;
  };
  // The host's activated AK (cache, else the store; `reload` skips the
  // cache); not_enrolled otherwise.
  StatusOr<std::shared_ptr<const attest::AkPublic>> EnrolledAk(const std::string& host_id,
                                                               bool reload = false);
  // The release's signature checks (docs/protocol.md §5): the package texts
  // are signed by the tenant's registered signing key and the request asks
  // for exactly the signed descriptor's key. Sets *signer_key_id.
  // Sets *release_policy to the signed descriptor's policy (package.md §4.1).
  Status CheckSignedPackage(const ReleaseRequest& req, std::string* signer_key_id,
                            std::optional<std::string>* release_policy, int64_t version);
  // The texts verified as signed by `tenant`'s registered signing key
  // (PERMISSION_DENIED unsigned_package, bad_signature, signer_mismatch;
  // INVALID_ARGUMENT malformed_package). Sets *signer_key_id.
  // `version`: the release's config version (the registered key is read
  // through the release-read cache), or kUncached to read the store.
  StatusOr<ovf::SignedDescriptor> VerifyTenantSigned(const std::string& tenant,
                                                     const ovf::SignedPackageTexts& texts,
                                                     std::string* signer_key_id,
                                                     int64_t version = kUncached);
  // The policy a grant or placement of (tenant, image) is checked against:
  // EffectivePolicy with the registered signed descriptor's policy. The
  // image record is read once; NOT_FOUND if the image is not registered.
  StatusOr<AppliedPolicy> PlacementPolicy(const std::string& tenant, const std::string& image_id,
                                          bool* registered);
  // One host against `policy` on its latest verdict (PlacementCheck's rule).
  StatusOr<PlacementResult> EvaluateHost(const StatusOr<AppliedPolicy>& policy,
                                         const std::string& host_id, int64_t now);
  // What the signed descriptor (tenant, image_id) was registered with
  // says: whether there was one, and its release policy. NOT_FOUND if not
  // registered. Cached once registered with a descriptor (it never changes
  // then).
  struct RegisteredPolicy {
    bool has_descriptor = false;
    std::optional<std::string> release_policy;
  };
  StatusOr<RegisteredPolicy> RegisteredDescriptor(const std::string& tenant, const std::string& image_id);
  // The customer's key named by `key_id`; unknown_key otherwise.
  StatusOr<CachedKey> CustomerPrivateKey(const std::string& customer_id, const std::string& key_id);
  // Checks (without consuming) the evidence's nonce: its MAC for this host,
  // its age, and that this process has not seen it used; returns its issue
  // time. nonce_unknown, nonce_expired or nonce_used. The nonce is consumed
  // with the verdict's write (nonce_used when another process used it).
  StatusOr<int64_t> CheckEvidenceNonce(const std::string& host_id, const attest::Evidence& ev);
  // Writes the verdict with `audits`, consuming the nonce (`use`, raw
  // `nonce`) in the same transaction; a nonce consumed now or found used
  // before is remembered, so that a replay is refused before any
  // verification. nonce_used if it was used.
  // `grant`, if given, is used up in the same transaction (no_grant if it
  // cannot be).
  Status PutVerdictUsingNonce(const Verdict& verdict, const std::vector<AuditEvent>& audits,
                              const Store::NonceUse& use, std::span<const uint8_t> nonce,
                              const Store::GrantUse* grant = nullptr);
  // Verifies the evidence; the verdict to record (trusted or not) and, if
  // trusted, what the evidence proved. Writes nothing.
  std::pair<Verdict, std::optional<attest::VerifiedEvidence>> CheckEvidence(
      const std::string& host_id, const attest::AkPublic& ak, const attest::Evidence& ev,
      int64_t nonce_issued_unix);
  // CheckEvidence, retried once with the AK reloaded from the store when a
  // signature check fails (another KMS process may have re-enrolled the host).
  std::pair<Verdict, std::optional<attest::VerifiedEvidence>> CheckEvidenceWithReload(
      const std::string& host_id, std::shared_ptr<const attest::AkPublic> ak,
      const attest::Evidence& ev, int64_t nonce_issued_unix);
  // What a release reads besides keys (policies, flavors, hosts, failed
  // verdicts) is cached for one Store::ConfigVersion: `version` is the one
  // read at the start of the request, or kUncached to read the store.
  static constexpr int64_t kUncached = -1;
  // The policy a release of (customer, image) enforces: the newest
  // customer-signed document, else `descriptor_policy` (the signed
  // descriptor's, when the release carried one), else the operator's policy
  // for the customer (image, then customer-wide), else "_default";
  // no_policy when there is none or the descriptor's is invalid.
  StatusOr<AppliedPolicy> EffectivePolicy(const std::string& customer_id, const std::string& image_id,
                                          const std::optional<std::string>& descriptor_policy,
                                          int64_t version = kUncached);
  StatusOr<HostRecord> HostOf(const std::string& host_id, int64_t version = kUncached);
  // Evaluates the policy with the flavors it names.
  // Failed verdicts (history) through their own cache, for the release's
  // `history_version` (Store::ReadReleaseVersions) or kUncached.
  StatusOr<PolicyDecision> Decide(const nlohmann::json& policy, PolicyFacts facts,
                                  const std::string& host_id, int64_t version = kUncached,
                                  int64_t history_version = kUncached);
  // The host's failed verdicts since `since`, from the history cache when
  // it holds `history_version`.
  StatusOr<std::vector<Verdict>> FailuresOf(const std::string& host_id, int64_t since,
                                            int64_t history_version);
  // `load()` for `key` of `map`, from the cache when it holds `version`;
  // a loaded value (found or NOT_FOUND) is kept only if the cache still
  // holds `version`, which was read before loading (so it is never older).
  // Empties the release-read cache; caller holds reads_mu_.
  void ClearReadsLocked();
  template <typename T, typename Key, typename Load>
  StatusOr<T> Cached(int64_t version, std::map<Key, StatusOr<T>>* map, const Key& key, Load load);

  const Options options_;
  Store* const store_;
  const KeyEncryptionKey* const kek_;
  const internal::CertAndKey ca_;
  std::vector<crypto::Certificate> ca_roots_;  // ca_ parsed: signer chains end here
  std::unique_ptr<attest::EkCertificateVerifier> ek_verifier_;
  SecretBytes nonce_key_;  // HMAC key of the nonces, shared through the store
  std::unique_ptr<AuditLog> audit_log_;  // signs checkpoints with the store's log key
  crypto::Bytes log_key_endorsement_;    // the CA's signature of the log key (EndorseLogKey)
  // Anonymous denials are aggregated (docs/format/audit-log.md §6): the
  // first of each window is recorded, the others counted and written as
  // one request.deny.aggregate record when the next window starts.
  std::mutex anon_mu_;
  int64_t anon_window_start_ = -1;
  int64_t anon_suppressed_ = 0;
  std::atomic<int64_t> last_nonce_purge_{0};
  UsedNonceCache used_nonces_;
  Metrics metrics_;
  std::unique_ptr<Lifecycle> lifecycle_;
  std::unique_ptr<KeyVersions> key_versions_;

  std::mutex mu_;  // guards the caches below
  std::map<std::string, std::shared_ptr<const attest::AkPublic>> aks_;
  std::map<std::string, PendingEnrollment> pending_;
  std::map<std::string, CachedKey> keys_;  // by "<customer>/<key id as requested>"
  // Signed package texts already verified for a tenant's registered signing
  // key, by SHA-256 of (tenant, texts): a release of the same package skips
  // parsing and verifying them again (VerifyTenantSigned).
  struct VerifiedTexts;
  std::map<std::string, std::shared_ptr<const VerifiedTexts>> verified_texts_;
  // Registered descriptor policies by (tenant, image id), only of images
  // registered with a descriptor.
  std::map<std::pair<std::string, std::string>, RegisteredPolicy> descriptors_;
  PackagePrecheck precheck_;

  std::mutex reads_mu_;  // guards the release reads below
  int64_t reads_version_ = kUncached;
  size_t reads_entries_ = 0;
  std::map<std::pair<std::string, std::string>, StatusOr<PolicyRecord>> policies_;
  std::map<std::pair<std::string, std::string>, StatusOr<AppliedPolicy>> signed_policies_;
  std::map<std::string, StatusOr<Flavor>> flavors_;
  std::map<std::string, StatusOr<HostRecord>> hosts_;
  // Failed verdicts by (host, since), for history_version_ (not emptied by
  // config changes; a failed verdict increments the history version).
  int64_t history_version_ = kUncached;
  std::map<std::pair<std::string, int64_t>, StatusOr<std::vector<Verdict>>> failures_;
  std::map<std::pair<std::string, std::string>, StatusOr<LifecycleRecord>> marks_;  // (kind, subject)
  // The registered signing key of a tenant with its certificate's SHA-256.
  struct RegisteredSigner {
    SigningKeyRecord record;
    std::string cert_sha256;
  };
  std::map<std::string, StatusOr<RegisteredSigner>> signers_;  // by tenant

  // Descriptor release policies parsed and validated, by SHA-256 of their
  // text (a pure function of the text: nothing to go stale). Guarded by
  // mu_; bounded (kMaxCachedKeys, then it starts over).
  std::map<std::string, StatusOr<nlohmann::json>> descriptor_policies_;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_SERVICE_H_
