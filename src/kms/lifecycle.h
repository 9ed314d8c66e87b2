// Taking things back at the KMS (issue 19): a customer revokes an image or
// closes their account, an operator revokes a host or disables a customer.
// The marks live in the Store (LifecycleRecord) and every release, grant and
// placement check reads them before any key is touched, so they hold for
// every KMS process sharing the store. Refusals carry the reasons
// image_revoked, host_revoked, customer_disabled, account_closing and
// key_destroyed (docs/protocol.md §7).
//
// A customer's request is a small JSON document signed with the tenant's
// registered package-signing key (docs/protocol.md §7.1), relayed by the
// portal: the portal cannot forge, alter or redirect one.
//
// Thread-safe.
#ifndef VMSEAL_KMS_LIFECYCLE_H_
#define VMSEAL_KMS_LIFECYCLE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "crypto/keys.h"
#include "kms/store.h"

namespace vmseal::kms {

struct Caller;

// docs/protocol.md §7.1.
inline constexpr std::string_view kLifecycleRequestFormat = "vmseal-lifecycle-request-v1";
// The signed message is this prefix followed by the document bytes, so that
// no other signed object of the customer (descriptor, policy document) can
// be replayed as a lifecycle request.
inline constexpr std::string_view kLifecycleSignaturePrefix = "vmseal lifecycle request v1\n";
inline constexpr size_t kMaxLifecycleDocumentBytes = 4096;

struct LifecycleRequest {
  // "revoke_image", "close_account" or "retire_key_version" (kms/key_versions.h:
  // the customer retires one version of their KMS key).
  std::string action;
  std::string tenant;      // the customer id
  std::string image_id;    // revoke_image: the tag's imageId; empty otherwise
  int64_t issued_unix = 0; // the KMS refuses requests older or newer than 10 minutes
  int64_t grace_seconds = -1;  // close_account: -1 = the KMS's default
  int64_t key_version = 0; // retire_key_version: the version (>= 1); 0 otherwise
};
// Canonical JSON bytes of the request; INVALID_ARGUMENT on a bad field.
StatusOr<std::string> SerializeLifecycleRequest(const LifecycleRequest& req);
// INVALID_ARGUMENT "malformed_request: ..." unless `document` is exactly
// what SerializeLifecycleRequest makes of its fields.
StatusOr<LifecycleRequest> ParseLifecycleRequest(std::string_view document);
StatusOr<crypto::Bytes> SignLifecycleRequest(std::string_view document, const crypto::PrivateKey& key);
// PERMISSION_DENIED "bad_signature: ..." unless it verifies.
Status VerifyLifecycleRequest(std::string_view document, std::span<const uint8_t> signature,
                              const crypto::PublicKey& key);

// Loss of trust (docs/protocol.md §7.2). The portal asks, for each VM it
// knows to run, whether the VM's host still meets the image's release
// policy on its latest verdict (the placement rule: a revoked or unenrolled
// host, a failed verdict, PCRs outside the flavors, evidence older than the
// policy's max_evidence_age_seconds). Each VM found untrusted is audited
// `vm.trust_loss` with the tenant and image, so the customer's audit shows
// it; the answer carries the image's `on_trust_loss` for the portal to act.
struct VmTrustQuery {
  std::string job_id;    // the portal's job, [A-Za-z0-9._-]{1,128}
  std::string tenant;    // the image's tenant
  std::string image_id;  // the tag's imageId
  std::string host_id;   // the host the VM runs on
};
struct VmTrustAnswer {
  std::string job_id;
  bool trusted = true;
  // "ok", or the reason trust is lost (host_revoked, not_enrolled,
  // no_verdict, the verdict's or the policy's reason, unknown_image).
  std::string reason = "ok";
  // "stop" or "report" (the image's effective policy; default report).
  std::string on_trust_loss = "report";
};
// What the portal did about a VM whose trust was lost, for the customer's
// audit (`vm.trust_event`): "stopped" (its host confirmed the VM and its
// files gone) or "stop_unanswered" (the host did not confirm within the
// portal's bound; the VM may still run).
struct VmTrustEvent {
  VmTrustQuery vm;
  std::string event;
  std::string text;  // one line for people, at most 256 bytes
};
inline constexpr size_t kMaxVmTrustQueries = 1000;
// {"vms": [{job_id, tenant, image_id, host_id}, ...]} (at most
// kMaxVmTrustQueries); INVALID_ARGUMENT "malformed_request: ..." otherwise.
StatusOr<std::vector<VmTrustQuery>> ParseVmTrustQueries(const nlohmann::json& body);
nlohmann::json VmTrustAnswersJson(const std::vector<VmTrustAnswer>& answers);
// {job_id, tenant, image_id, host_id, event, text}.
StatusOr<VmTrustEvent> ParseVmTrustEvent(const nlohmann::json& body);

class Lifecycle {
 public:
  struct Options {
    // Unix seconds; default time(nullptr).
    std::function<int64_t()> clock;
    // Grace before a closed account's keys are destroyed when the request
    // names none. Default 7 days.
    int64_t default_grace_seconds = 7 * 86400;
    // How far a signed request's issued_unix may lie from the KMS clock.
    // Default 600 s.
    int64_t max_request_skew_seconds = 600;
    // Called with a customer id once its keys are destroyed, so that the
    // service drops any cached private key.
    std::function<void(const std::string&)> forget_keys;
  };
  // `store` must outlive this.
  Lifecycle(Options options, Store* store);

  // Operator only: the host gets no grant, placement or release again, and
  // is marked unenrolled. Idempotent. Audited as host.revoke.
  StatusOr<LifecycleRecord> RevokeHost(const Caller& caller, const std::string& host_id,
                                       const std::string& reason);
  // Operator only: no release for the customer's images while disabled
  // (customer.disable / customer.enable). A closing or destroyed account
  // cannot be enabled (FAILED_PRECONDITION "account_closing"/"key_destroyed").
  StatusOr<LifecycleRecord> SetCustomerEnabled(const Caller& caller, const std::string& customer_id,
                                               bool enabled, const std::string& reason);
  // Portal (relaying) or operator: a customer-signed request, checked in
  // this order: it parses (INVALID_ARGUMENT malformed_request); it names
  // `tenant` (tenant_mismatch); its time is within the skew (stale_request);
  // it verifies under the tenant's registered signing key (signer_mismatch,
  // bad_signature); revoke_image names a registered image of the tenant
  // (unknown_image). Refusals are audited as lifecycle.deny and change
  // nothing. revoke_image is final (image.revoke); close_account marks the
  // customer "closing" with its due time (customer.close), repeated
  // requests keep the first due time.
  StatusOr<LifecycleRecord> CustomerRequest(const Caller& caller, const std::string& tenant,
                                            const std::string& document,
                                            std::span<const uint8_t> signature);
  // The checks of CustomerRequest up to the signature (malformed_request,
  // tenant_mismatch, stale_request, signer_mismatch, bad_signature), each
  // refusal audited as lifecycle.deny; the request, signed by `tenant`'s
  // registered signing key, on success. Writes nothing else.
  StatusOr<LifecycleRequest> VerifyCustomerRequest(const Caller& caller, const std::string& tenant,
                                                   const std::string& document,
                                                   std::span<const uint8_t> signature);
  // Operator only: the marks of `kind` ("image", "host", "customer").
  StatusOr<std::vector<LifecycleRecord>> List(const Caller& caller, const std::string& kind);

  // OK, or PERMISSION_DENIED with the reason that refuses a release or grant
  // of (tenant, image_id) to host_id (empty host_id: not checked).
  Status Check(const std::string& tenant, const std::string& image_id, const std::string& host_id);
  // The same check with the marks read through `read` (kind, subject), e.g.
  // a cache keyed by the store's config version, which every lifecycle
  // write increments (Store::ConfigVersion). Destroys nothing itself: the
  // caller runs DestroyDue() first, before it reads the version that keys
  // its cache (a destruction is a lifecycle write; read after the version,
  // the cache would still answer "closing" for a destroyed account).
  using MarkReader = std::function<StatusOr<LifecycleRecord>(const std::string& kind, const std::string& subject)>;
  Status Check(const std::string& tenant, const std::string& image_id, const std::string& host_id,
               const MarkReader& read);
  // The host's refusal only (host_revoked), for placement and enrollment.
  Status CheckHost(const std::string& host_id);
  // Destroys the keys of every closing account whose grace is over (at most
  // once a second unless `force`); customer.keys_destroy audited.
  Status DestroyDue(bool force = false);

 private:
  int64_t Now() const;
  Status Refuse(const Caller& caller, const std::string& subject, const Status& s);
  Status DestroyKeys(const std::string& customer_id, const LifecycleRecord& closing);

  const Options options_;
  Store* const store_;
  std::atomic<int64_t> last_sweep_{0};
};

// Destroys the keys of closed accounts whose grace is over on a timer
// (Lifecycle::DestroyDue every `interval`, first at once), so that keys are
// shredded at their due time even when no request comes. Errors are logged
// and retried at the next interval. Thread-safe; Stop (or the destructor)
// waits for the thread.
class KeyDestructionTimer {
 public:
  // `lifecycle` must outlive this.
  KeyDestructionTimer(Lifecycle* lifecycle, std::chrono::milliseconds interval);
  ~KeyDestructionTimer();
  KeyDestructionTimer(const KeyDestructionTimer&) = delete;
  KeyDestructionTimer& operator=(const KeyDestructionTimer&) = delete;
  void Stop();
  // Sweeps done so far (tests).
  int64_t sweeps() const { return sweeps_.load(); }

 private:
  Lifecycle* const lifecycle_;
  const std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::atomic<int64_t> sweeps_{0};
  std::thread thread_;
};

}  // namespace vmseal::kms

#endif  // VMSEAL_KMS_LIFECYCLE_H_
