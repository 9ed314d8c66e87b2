// The KMS's durable state behind one interface, with two backends: SQLite
// (WAL; the embedded default) and PostgreSQL (selected by a postgres:// URL,
// so several KMS processes can share it). Every state change that the audit
// log must record is appended to the hash-chained audit log in the SAME
// transaction (see docs/kms-audit.md), so a crash never leaves one without
// the other.
//
// Thread-safe: calls are serialized on one connection per Store.
#ifndef VMSEAL_KMS_STORE_H_
#define VMSEAL_KMS_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "tlog/merkle.h"

namespace vmseal::kms {

// What happened, for the audit log. `details` must not contain secrets.
struct AuditEvent {
  std::string event;    // e.g. "customer_key.create", "release.deny"
  std::string subject;  // who or what it is about, e.g. "customer/acme"
  nlohmann::json details = nlohmann::json::object();
};

// One appended audit record as stored.
struct AuditRecord {
  int64_t seq = 0;
  std::string record;  // canonical JSON (docs/kms-audit.md)
  std::string hash;    // lowercase hex SHA-256(prev_hash || record)
};

struct CustomerKeyRecord {
  std::string key_id;
  std::string customer_id;
  std::string algorithm;       // "RSA-3072" or "X25519"
  std::string public_key_pem;  // SubjectPublicKeyInfo
  std::string cert_pem;        // issued by the KMS CA
  std::string wrapped_private_key;  // base64 of the KEK-wrapped PKCS#8
  std::string kek_id;               // which KEK wrapped it
  int64_t created_unix = 0;
  // The customer's key version (issue 19, kms/key_versions.h): 1 for the
  // first key, one more for each rotation; (customer_id, version) is unique.
  // A package's tag keyVersion selects it at release.
  int64_t version = 1;
  // When the customer retired this version (0 = in use): packages sealed
  // under it are no longer released (key_version_retired).
  int64_t retired_unix = 0;
};

struct HostRecord {
  std::string host_id;
  std::string ek_cert_pem;
  std::string ak_public;  // base64 TPM2B_PUBLIC of the AK
  bool enrolled = false;  // true only after ActivateCredential matched
  std::vector<std::string> tags;  // e.g. "region=eu-west"
  int64_t created_unix = 0;
};

struct Verdict {
  std::string verdict_id;
  std::string host_id;
  bool trusted = false;
  std::string reason;  // machine-readable, "ok" when trusted
  int64_t time_unix = 0;
  nlohmann::json details = nlohmann::json::object();
};

// A named set of known-good PCR values ({"sha256": {"0": "hex", ...}}).
struct Flavor {
  std::string name;
  nlohmann::json pcrs = nlohmann::json::object();
};

// A release policy for a customer, optionally narrowed to one image ("" =
// every image of the customer).
struct PolicyRecord {
  std::string customer_id;
  std::string image_id;
  nlohmann::json policy = nlohmann::json::object();
};

// A customer-signed policy document (docs/format/policy-document.md) for
// one image of a tenant, stored exactly as signed. (tenant, image_id,
// version) is unique; the newest version is the one a release enforces.
struct PolicyDocumentRecord {
  std::string tenant;
  std::string image_id;
  int64_t version = 0;       // 1..2^53-1
  std::string document;      // the signed bytes
  std::string signature;     // base64 of the DER ECDSA signature
  std::string signer_key_id; // the registered signing key that verified it
  int64_t created_unix = 0;  // when the KMS accepted it
};

// An image as the portal registered it at upload: the tenant and imageId
// of the package's encryption tag (what the key-wrap label binds) and the
// tag's key id. (tenant, image_id) is unique.
struct ImageRecord {
  std::string tenant;
  std::string image_id;
  std::string key_id;
  int64_t created_unix = 0;
  // Hex SHA-256 of the customer-signed descriptor the portal registered the
  // image with, its signature verified by the KMS (docs/protocol.md §4);
  // empty for an image registered without it.
  std::string descriptor_sha256;
  // The release policy of that signed descriptor (docs/format/package.md
  // §4.1), nullopt when it has none or no descriptor was registered.
  std::optional<std::string> release_policy;
};

// One launch of an image by a job on a host, registered by the portal when
// it places the job. A release is granted only against an unexpired, unused
// grant that names the same job, attempt, image, tenant and host; it is used
// up by that release. A job has one grant, that of its newest attempt: a
// grant for a newer attempt replaces it (fencing off the older attempt's
// host), and a used grant is never armed again.
struct GrantRecord {
  std::string job_id;
  std::string image_id;
  std::string tenant;
  std::string host_id;
  int64_t expires_unix = 0;
  int64_t created_unix = 0;
  int64_t used_unix = 0;  // 0 while unused
  // The portal's placement of the job this grant is for (1, 2, ...; 0 for a
  // portal that names none). Grows with every placement of the job.
  int64_t attempt = 0;
};

// A tenant's registered package-signing key (issue 14): the public half of
// the key the customer created on its own machine, and the certificate the
// KMS CA issued for it (CN = tenant, EKU codeSigning). One per tenant.
struct SigningKeyRecord {
  std::string tenant;
  std::string key_id;          // lowercase hex SHA-256 of the SPKI DER
  std::string public_key_pem;  // SubjectPublicKeyInfo
  std::string cert_pem;        // issued by the KMS CA
  int64_t created_unix = 0;
};

// A lifecycle mark (issue 19, kms/lifecycle.h): what has been taken back.
// (kind, subject) is unique; the newest mark replaces the previous one.
struct LifecycleRecord {
  std::string kind;     // "image", "host" or "customer"
  std::string subject;  // "<tenant>/<image_id>", the host id or the customer id
  // image: "revoked"; host: "revoked"; customer: "enabled", "disabled",
  // "closing" (keys destroyed at `due_unix`) or "destroyed".
  std::string state;
  std::string reason;   // why, as the caller gave it (no secrets)
  std::string by;       // who: operator or portal name, "customer/<id>"
  int64_t since_unix = 0;
  int64_t due_unix = 0;  // "closing": when the keys are destroyed
};

class Store {
 public:
  virtual ~Store() = default;

  // Opens `location`: a postgres:// or postgresql:// URL, or else a SQLite
  // file path (created if absent). Applies pending schema migrations.
  static StatusOr<std::unique_ptr<Store>> Open(const std::string& location);

  // "sqlite" or "postgres".
  virtual std::string backend() const = 0;

  // --- Customer keys -----------------------------------------------------
  // Inserts a new key and its audit record atomically; ALREADY_EXISTS if the
  // key id is taken.
  virtual Status PutCustomerKey(const CustomerKeyRecord& key, const AuditEvent& audit) = 0;
  // NOT_FOUND if absent.
  virtual StatusOr<CustomerKeyRecord> GetCustomerKey(const std::string& key_id) = 0;
  virtual StatusOr<std::vector<CustomerKeyRecord>> ListCustomerKeys(
      const std::string& customer_id) = 0;

  // Marks version `version` of the customer's keys retired at `when_unix`,
  // with its audit record, in one transaction that also moves the config
  // version (so cached release reads see it): NOT_FOUND if the customer has
  // no such version, FAILED_PRECONDITION "key_version_retired: ..." if it
  // is retired already.
  virtual Status RetireCustomerKey(const std::string& customer_id, int64_t version,
                                   int64_t when_unix, const AuditEvent& audit) = 0;

  // Deletes every private key of the customer and writes `mark`, with the
  // audit record, in one transaction (crypto-shredding, kms/lifecycle.h);
  // returns how many keys were deleted.
  virtual StatusOr<int64_t> DestroyCustomerKeys(const std::string& customer_id,
                                                const LifecycleRecord& mark,
                                                const AuditEvent& audit) = 0;
  // --- Lifecycle marks (kms/lifecycle.h) -----------------------------------
  // Inserts or replaces the mark of (kind, subject) with its audit record.
  virtual Status PutLifecycle(const LifecycleRecord& mark, const AuditEvent& audit) = 0;
  // NOT_FOUND if (kind, subject) has no mark.
  virtual StatusOr<LifecycleRecord> GetLifecycle(const std::string& kind,
                                                 const std::string& subject) = 0;
  // The marks of `kind` in `state` ("" = any), ordered by subject.
  virtual StatusOr<std::vector<LifecycleRecord>> ListLifecycle(const std::string& kind,
                                                               const std::string& state) = 0;
  // --- Package-signing keys ------------------------------------------------
  // Registers the tenant's signing key with its audit record. Registering
  // the same key again is a no-op (nothing audited); another key for a
  // tenant that has one, or a key registered to another tenant, is
  // FAILED_PRECONDITION "signing_key_exists: ...". A registration
  // increments ConfigVersion in its transaction.
  virtual Status PutSigningKey(const SigningKeyRecord& key, const AuditEvent& audit) = 0;
  // NOT_FOUND if the tenant has none.
  virtual StatusOr<SigningKeyRecord> GetSigningKey(const std::string& tenant) = 0;

  // --- Hosts -------------------------------------------------------------
  // Inserts or replaces a host (re-enrollment resets `enrolled`).
  virtual Status PutHost(const HostRecord& host, const AuditEvent& audit) = 0;
  virtual StatusOr<HostRecord> GetHost(const std::string& host_id) = 0;
  // Every host, ordered by host id.
  virtual StatusOr<std::vector<HostRecord>> ListHosts() = 0;
  // Marks the host enrolled; NOT_FOUND if absent.
  virtual Status SetHostEnrolled(const std::string& host_id, const AuditEvent& audit) = 0;
  virtual Status SetHostTags(const std::string& host_id, const std::vector<std::string>& tags,
                             const AuditEvent& audit) = 0;
  // Stores an enrolled host under its EK pin, in one transaction: the first
  // enrollment of `host.host_id` pins `ek_sha256` (lowercase hex SHA-256 of
  // the EK's SubjectPublicKeyInfo); a later one with another EK changes
  // nothing and fails FAILED_PRECONDITION "ek_mismatch: ...".
  virtual Status PutEnrolledHost(const HostRecord& host, const std::string& ek_sha256,
                                 const AuditEvent& audit) = 0;
  // The EK pinned to the host id; NOT_FOUND if none yet.
  virtual StatusOr<std::string> GetEkPin(const std::string& host_id) = 0;
  // Pins `ek_sha256` to the host id, replacing any pin (an operator's
  // approval of a new TPM), with its audit record.
  virtual Status PinEk(const std::string& host_id, const std::string& ek_sha256,
                       const AuditEvent& audit) = 0;

  // --- Images and grants -----------------------------------------------------
  // Registers an image with its audit record; registering the same (tenant,
  // image id) again is a no-op (nothing audited) unless the key id differs,
  // or both registrations carry a signed descriptor and their release
  // policies differ: FAILED_PRECONDITION "image_conflict". An image
  // registered without a descriptor gets the one registered later (audited).
  virtual Status PutImage(const ImageRecord& image, const AuditEvent& audit) = 0;
  // NOT_FOUND if the tenant has no such image.
  virtual StatusOr<ImageRecord> GetImage(const std::string& tenant, const std::string& image_id) = 0;
  // A re-wrap to a newer key version (kms/key_rewrap.cc): the image's key
  // becomes `to_key_id` if it is `from_key_id` or `to_key_id` already, with
  // its audit record, in one transaction. NOT_FOUND for no such image,
  // FAILED_PRECONDITION "image_conflict: ..." for another key; nothing is
  // written then.
  virtual Status MoveImageKey(const std::string& tenant, const std::string& image_id,
                              const std::string& from_key_id, const std::string& to_key_id,
                              const AuditEvent& audit) {
    (void)tenant, (void)image_id, (void)from_key_id, (void)to_key_id, (void)audit;
    return UnimplementedError("this store cannot move an image's key");
  }
  // Writes the grant of `grant.job_id` with its audit, in one transaction
  // that checks the job's current grant first:
  //  - none, or one for an older attempt: written (the older one is gone,
  //    so that attempt's host can no longer be released the key);
  //  - one for a newer attempt: FAILED_PRECONDITION "stale_attempt: ...";
  //  - one for the same attempt: replaced while unused (a placement retried
  //    after a failed grant call), FAILED_PRECONDITION "grant_used: ..." once
  //    used: a used grant is never armed again.
  // Nothing is written on refusal.
  virtual Status PutGrant(const GrantRecord& grant, const AuditEvent& audit) = 0;
  // NOT_FOUND if the job has no grant.
  virtual StatusOr<GrantRecord> GetGrant(const std::string& job_id) = 0;

  // --- Nonces ------------------------------------------------------------
  // Nonces are stateless when issued (the KMS authenticates them with a MAC,
  // docs/protocol.md); the store only remembers the used ones, until they
  // expire.
  //
  // Records `nonce` as used, exactly once across all processes sharing the
  // store: FAILED_PRECONDITION "nonce already used" the second time.
  // `expires_unix`: when the record may be purged.
  virtual Status ConsumeNonce(const std::string& nonce, const std::string& host_id,
                              int64_t expires_unix) = 0;
  // Deletes the used-nonce records that expired before `before_unix`;
  // returns the count.
  virtual StatusOr<int64_t> PurgeNonces(int64_t before_unix) = 0;

  // --- Service secrets ---------------------------------------------------
  // Stores `value` (already wrapped under the KEK) under `name` unless a
  // value is stored there, appending `audit` if it stored it; returns the
  // stored value either way, so that processes sharing the store agree on
  // one.
  virtual StatusOr<std::string> PutSecretIfAbsent(const std::string& name, const std::string& value,
                                                  const AuditEvent& audit) = 0;

  // --- KEK rotation (kms/kek_rotation.h) -----------------------------------
  // Up to `limit` customer keys NOT wrapped under `kek_id`, with key_id >
  // `after_key_id`, in key_id order (a cursor: each row is visited once).
  virtual StatusOr<std::vector<CustomerKeyRecord>> ListKeysNotUnderKek(const std::string& kek_id,
                                                                       const std::string& after_key_id,
                                                                       int64_t limit) = 0;
  // One re-wrap of a stored key: replaces (wrapped_private_key, kek_id) only
  // if the row still holds `old_wrapped` (compare-and-set: a key deleted or
  // re-wrapped by another process meanwhile is left alone).
  struct KeyRewrap {
    std::string key_id;
    std::string old_wrapped;
    std::string new_wrapped;
    std::string new_kek_id;
  };
  // Applies a batch in one transaction (with `audit` if anything changed);
  // returns how many rows it replaced.
  virtual StatusOr<int64_t> RewrapCustomerKeys(const std::vector<KeyRewrap>& batch,
                                               const AuditEvent& audit) = 0;
  // How many customer keys each KEK id wraps.
  virtual StatusOr<std::vector<std::pair<std::string, int64_t>>> CountKeysByKek() = 0;
  // Every service secret (name, stored value), by name.
  virtual StatusOr<std::vector<std::pair<std::string, std::string>>> ListSecrets() = 0;
  // Replaces a service secret's value if it is still `old_value`, with its
  // audit record; false if it was not (changed or absent).
  virtual StatusOr<bool> ReplaceSecret(const std::string& name, const std::string& old_value,
                                       const std::string& new_value, const AuditEvent& audit) = 0;

  // --- Verdicts (host trust history) -----------------------------------
  Status PutVerdict(const Verdict& verdict, const AuditEvent& audit) {
    return PutVerdict(verdict, std::vector<AuditEvent>{audit}, nullptr);
  }
  Status PutVerdict(const Verdict& verdict, const std::vector<AuditEvent>& audits) {
    return PutVerdict(verdict, audits, nullptr);
  }
  // The verdict and several audit events (e.g. the verdict's and the release
  // decision's) in one transaction which, when `consume` is given, also
  // consumes that nonce: if the nonce cannot be consumed (ConsumeNonce's
  // errors) nothing is written. One commit per release.
  struct NonceUse {
    std::string nonce;
    std::string host_id;
    int64_t expires_unix = 0;
  };
  Status PutVerdict(const Verdict& verdict, const std::vector<AuditEvent>& audits,
                    const NonceUse* consume) {
    return PutVerdict(verdict, audits, consume, nullptr);
  }
  // The grant a release uses up: the verdict's transaction marks it used,
  // and writes nothing unless it is unused, unexpired at `now_unix` and
  // names this attempt, image, tenant and host (FAILED_PRECONDITION
  // "no_grant: ...").
  struct GrantUse {
    std::string job_id;
    std::string image_id;
    std::string tenant;
    std::string host_id;
    int64_t now_unix = 0;
    int64_t attempt = 0;
  };
  virtual Status PutVerdict(const Verdict& verdict, const std::vector<AuditEvent>& audits,
                            const NonceUse* consume, const GrantUse* grant) = 0;
  // The host's untrusted verdicts at or after `since_unix`, oldest first.
  virtual StatusOr<std::vector<Verdict>> ListFailedVerdicts(const std::string& host_id,
                                                            int64_t since_unix) = 0;
  // The host's most recent verdict; NOT_FOUND if it has none.
  virtual StatusOr<Verdict> LatestVerdict(const std::string& host_id) = 0;
  // Verdicts for the host at or after `since_unix`, oldest first.
  virtual StatusOr<std::vector<Verdict>> ListVerdicts(const std::string& host_id,
                                                      int64_t since_unix) = 0;

  // --- Flavors and policies ---------------------------------------------
  virtual Status PutFlavor(const Flavor& flavor, const AuditEvent& audit) = 0;
  virtual StatusOr<Flavor> GetFlavor(const std::string& name) = 0;
  virtual StatusOr<std::vector<Flavor>> ListFlavors() = 0;
  virtual Status PutPolicy(const PolicyRecord& policy, const AuditEvent& audit) = 0;
  // The image-specific policy if any, else the customer-wide one, else
  // NOT_FOUND (callers must fail closed).
  virtual StatusOr<PolicyRecord> GetPolicy(const std::string& customer_id,
                                           const std::string& image_id) = 0;

  // Stores a verified policy document with its audit record, in one
  // transaction, only if its version is greater than every stored version
  // for (tenant, image_id): FAILED_PRECONDITION "policy_stale: ..."
  // otherwise (a replay or a rollback), writing nothing.
  virtual Status PutPolicyDocument(const PolicyDocumentRecord& doc, const AuditEvent& audit) = 0;
  // The newest policy document of (tenant, image_id); NOT_FOUND if none.
  virtual StatusOr<PolicyDocumentRecord> NewestPolicyDocument(const std::string& tenant,
                                                              const std::string& image_id) = 0;

  // A number that grows with every change to what a release reads besides
  // customer keys and history: policies, flavors, hosts (tags, enrollment,
  // AK), lifecycle marks (revocations, disabled or closed customers) and
  // registered signing keys, committed in the change's own transaction.
  // Equal numbers mean those reads are unchanged (a cache may be reused).
  virtual StatusOr<int64_t> ConfigVersion() = 0;
  // ConfigVersion and the history version, which grows with every failed
  // verdict (in the verdict's transaction), read in one statement. Apart,
  // so that one host's failures do not empty every host's release cache.
  struct ReleaseVersions {
    int64_t config = 0;
    int64_t history = 0;
  };
  virtual StatusOr<ReleaseVersions> ReadReleaseVersions() = 0;

  // --- Audit log -----------------------------------------------------------
  // Appends an event on its own (e.g. a denial that changes no other state).
  virtual Status AppendAudit(const AuditEvent& event) = 0;
  // Records with seq > `after_seq`, in seq order, at most `limit`.
  virtual StatusOr<std::vector<AuditRecord>> ReadAudit(int64_t after_seq, int64_t limit) = 0;

  // The audit log is also an RFC 6962 Merkle tree whose leaf seq-1 is
  // record seq's canonical bytes (docs/format/audit-log.md). Each append
  // extends it in the same transaction: the right-edge subtree hashes (the
  // frontier) and every newly completed subtree are stored, so neither an
  // append nor a proof reads the whole log.
  //
  // The committed frontier: tree size and subtree hashes, largest first.
  virtual StatusOr<tlog::Frontier> AuditFrontier() = 0;
  // The stored hash of the complete subtree at `level` covering leaves
  // [index << level, (index + 1) << level); NOT_FOUND if not stored.
  virtual StatusOr<tlog::Hash> AuditNode(int level, uint64_t index) = 0;
  // Remembers `signed_checkpoint` (a note for a tree of `size` leaves) as
  // the newest one issued, unless one for a larger tree is stored.
  virtual Status PutAuditCheckpoint(int64_t size, const std::string& signed_checkpoint) = 0;
  // The newest checkpoint issued, NOT_FOUND if none.
  virtual StatusOr<std::string> LatestAuditCheckpoint() = 0;

  // Customer audit: the seqs (> `after_seq`, ascending, at most `limit`) of
  // the records about (tenant, image_id): those whose details name the
  // image_id with that tenant (details.tenant, details.customer_id or a
  // "customer/<tenant>" subject). Indexed in each record's transaction.
  virtual StatusOr<std::vector<int64_t>> AuditSeqsForImage(const std::string& tenant,
                                                           const std::string& image_id,
                                                           int64_t after_seq, int64_t limit) = 0;
  // The tenants (at most 16) that registered an image with this id.
  virtual StatusOr<std::vector<std::string>> ImageTenants(const std::string& image_id) = 0;

  // Runs raw SQL (tests use it to tamper with the audit table).
  virtual Status ExecForTesting(const std::string& sql) = 0;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_STORE_H_
