// The customer's audit of one image (docs/format/audit-log.md §6.1): the KMS
// answers with the image's audit records, each as an inclusion proof
// against one signed checkpoint, and (given the size of a checkpoint the
// customer saved earlier) a consistency proof from it; the customer checks
// all of it locally (VerifyCustomerAuditPage), so a portal that relays the
// answer, or anyone who edits the KMS store, cannot drop or rewrite a
// record that a checkpoint already covered without being caught.
//
// The log key is pinned through the KMS CA the customer already pins: the
// KMS CA signs LogKeyEndorsementMessage(verifier key) (ECDSA P-256,
// SHA-256), and the customer checks that endorsement with the CA
// certificate it obtained out of band (the same --kms-ca as fetch-cert).
#ifndef VMSEAL_KMS_CUSTOMER_AUDIT_H_
#define VMSEAL_KMS_CUSTOMER_AUDIT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/secret_bytes.h"
#include "base/status.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"

namespace vmseal::kms {

// Most events in one page (docs/format/audit-log.md §7): the answer is at
// most 100 inclusion proofs of at most 64 hashes each.
inline constexpr int64_t kMaxCustomerAuditEvents = 100;
// Largest answer a client accepts, in bytes of JSON.
inline constexpr size_t kMaxCustomerAuditReplyBytes = 4u << 20;

// GET /v1/images/{tenant}/{image_id}/audit?after=&limit=&old=
struct CustomerAuditRequest {
  std::string tenant;
  std::string image_id;  // the tag's imageId (what the key-wrap label binds)
  int64_t after_seq = 0;   // only records with seq > after_seq
  int64_t limit = kMaxCustomerAuditEvents;  // 1..kMaxCustomerAuditEvents
  // Size of a checkpoint the customer saved; 0: no consistency proof.
  int64_t old_size = 0;
};

// One page of the answer, as the KMS sends it and the portal relays it.
struct CustomerAuditPage {
  std::string tenant;
  std::string image_id;
  std::string log_key;              // "<origin>+<key id>+<key>"
  crypto::Bytes log_key_endorsement;  // the KMS CA's signature of the log key
  std::string checkpoint;           // signed note of the tree the proofs are for
  std::vector<std::string> proofs;  // c2sp.org/tlog-proof@v1 per record, seq order
  std::string consistency;          // vmseal.dev/tlog-consistency@v1, "" without old_size
  int64_t next_after = 0;           // the `after` of the next page; 0: this was the last
};
nlohmann::json CustomerAuditPageToJson(const CustomerAuditPage& page);
// INVALID_ARGUMENT "customer audit reply: ..." for a malformed answer; at
// most kMaxCustomerAuditEvents proofs.
StatusOr<CustomerAuditPage> CustomerAuditPageFromJson(const nlohmann::json& j);

// The text the KMS CA signs to endorse the log key:
// "vmseal audit log key v1\n" || verifier key || "\n".
std::string LogKeyEndorsementMessage(std::string_view verifier_key);

// The KMS CA's endorsement of the log key: its signature (ECDSA, SHA-256)
// of LogKeyEndorsementMessage(verifier_key) with the CA key `ca_key_pem`.
StatusOr<crypto::Bytes> EndorseLogKey(const SecretBytes& ca_key_pem, const std::string& verifier_key);

// The (tenant, image id) an audit record (parsed JSON) is about, if any:
// details.image_id with details.tenant, details.customer_id or a
// "customer/<tenant>" subject. The KMS indexes records by it; the customer
// checks each record it is shown against it.
std::optional<std::pair<std::string, std::string>> AuditRecordImage(const nlohmann::json& record);

// One record of the customer's image, after its proof verified.
struct VerifiedAuditEvent {
  int64_t seq = 0;
  int64_t time_unix = 0;
  std::string event;    // release.grant, release.deny, grant.create, image.register, ...
  std::string host_id;  // "" when the record names none
  std::string job_id;
  std::string reason;   // release.deny's reason, "" otherwise
  nlohmann::json details;
};

struct VerifiedAuditPage {
  std::vector<VerifiedAuditEvent> events;
  uint64_t tree_size = 0;
  std::string checkpoint;  // the verified signed checkpoint: save it for next time
  std::string log_key;
  int64_t next_after = 0;
  // Size of the saved checkpoint the log was proven to extend; -1: none given.
  int64_t extends_saved_size = -1;
};

struct CustomerAuditVerifyOptions {
  // The pinned KMS CA; the log key must be endorsed by one of these.
  std::vector<crypto::Certificate> kms_roots;
  std::string tenant;
  std::string image_id;
  // The request's `after`: every record shown must come after it.
  int64_t after_seq = 0;
  // A signed checkpoint saved earlier ("" for none): the current one must
  // extend it.
  std::string saved_checkpoint;
};

// Checks a page entirely locally: the log key's endorsement by the KMS CA;
// the checkpoint's signature; with a saved checkpoint, that the log
// extends it (DATA_LOSS "truncated: ..." or "fork or rewrite: ..."); each
// proof's inclusion against the checkpoint (UNAUTHENTICATED "audit record
// N: inclusion proof ..."), that its record is seq index+1, in order, and
// about this tenant's image (DATA_LOSS "audit record N is not about ...").
StatusOr<VerifiedAuditPage> VerifyCustomerAuditPage(const CustomerAuditPage& page,
                                                    const CustomerAuditVerifyOptions& options);

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_CUSTOMER_AUDIT_H_
