// Persistent state of the portal behind a small interface, so that the SQLite
// implementation (sqlite_db.h) can be joined by PostgreSQL later. Tenant
// scoping is part of the interface: no customer-facing lookup of an image
// exists without its customer id.
#ifndef VMSEAL_CSP_PORTAL_DB_H_
#define VMSEAL_CSP_PORTAL_DB_H_

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace vmseal::csp {

struct CustomerRecord {
  std::string customer_id;
  std::string login_id;
  // Argon2id encoded hash ($argon2id$v=19$m=...,t=...,p=...$salt$hash).
  std::string password_hash;
  int64_t created_unix = 0;
  // The customer's KMS key (public half only): id, algorithm, PEM public key
  // and PEM certificate from the KMS CA.
  std::string key_id;
  std::string key_algorithm;
  std::string public_key_pem;
  std::string cert_pem;
};

struct SessionRecord {
  // Hex SHA-256 of the bearer token; the token itself is never stored.
  std::string token_sha256_hex;
  std::string customer_id;
  int64_t expires_unix = 0;
};

struct ImageRecord {
  std::string image_id;
  std::string customer_id;
  std::string name;
  // Key of the sealed package in the object store.
  std::string object_key;
  uint64_t size_bytes = 0;
  std::string sha256_hex;
  // ReleasePolicy JSON (policy.h).
  std::string policy_json;
  int64_t created_unix = 0;
  // The image id named in the package's encryption tag ("" if unknown).
  std::string tagged_image_id;
};

// Thread-safe.
class PortalDb {
 public:
  virtual ~PortalDb() = default;

  // ALREADY_EXISTS if the customer id or login id is taken.
  virtual Status InsertCustomer(const CustomerRecord& record) = 0;
  // NOT_FOUND if there is no such login.
  virtual StatusOr<CustomerRecord> FindCustomerByLogin(const std::string& login_id) = 0;
  // NOT_FOUND if there is no such customer.
  virtual StatusOr<CustomerRecord> FindCustomerById(const std::string& customer_id) = 0;

  virtual Status InsertSession(const SessionRecord& record) = 0;
  // NOT_FOUND if there is no such session.
  virtual StatusOr<SessionRecord> FindSession(const std::string& token_sha256_hex) = 0;
  virtual Status DeleteSession(const std::string& token_sha256_hex) = 0;
  // Removes sessions with expires_unix <= now; returns how many.
  virtual StatusOr<int64_t> DeleteExpiredSessions(int64_t now_unix) = 0;

  virtual Status InsertImage(const ImageRecord& record) = 0;
  // NOT_FOUND unless the image exists AND belongs to `customer_id`.
  virtual StatusOr<ImageRecord> FindImage(const std::string& customer_id,
                                          const std::string& image_id) = 0;
  // The customer's images, oldest first.
  virtual StatusOr<std::vector<ImageRecord>> ListImages(const std::string& customer_id) = 0;
  // NOT_FOUND unless the image exists AND belongs to `customer_id`.
  virtual Status DeleteImage(const std::string& customer_id, const std::string& image_id) = 0;

  // The cross-replica lock of one upload session (docs/format/portal-state.md
  // §1): while this handle holds it, no other handle on the same database
  // (another replica) takes it. True when taken, false when another holds it
  // (never waits). Taking it again through the same handle succeeds and
  // stacks: each TryLockUpload that answered true needs one UnlockUpload.
  // Released as well when the handle's connection ends (the replica died).
  // The default, for a database one replica uses alone (SQLite): always
  // taken; that replica's own calls are serialised by store::UploadSessions.
  virtual StatusOr<bool> TryLockUpload(const std::string& upload_id) {
    (void)upload_id;
    return true;
  }
  virtual Status UnlockUpload(const std::string& upload_id) {
    (void)upload_id;
    return OkStatus();
  }
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_PORTAL_DB_H_
