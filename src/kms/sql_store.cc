// Store over the SqlConn seam: one implementation, two dialects.
#include <charconv>
#include <condition_variable>
#include <ctime>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "crypto/primitives.h"
#include "kms/audit.h"
#include "kms/customer_audit.h"
#include "kms/internal/sql.h"
#include "kms/store.h"
#include "json/json.h"
#include "tlog/merkle.h"

namespace vmseal::kms {
namespace {

using internal::SqlConn;
using internal::SqlResult;
using internal::SqlValue;
using nlohmann::json;

// Schema migrations, applied in order; the same SQL runs on both backends.
// Never edit a shipped entry: append a new one.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE customers (
  customer_id TEXT PRIMARY KEY,
  created_unix BIGINT NOT NULL);
CREATE TABLE customer_keys (
  key_id TEXT PRIMARY KEY,
  customer_id TEXT NOT NULL REFERENCES customers(customer_id),
  algorithm TEXT NOT NULL,
  public_key_pem TEXT NOT NULL,
  cert_pem TEXT NOT NULL,
  wrapped_private_key TEXT NOT NULL,
  kek_id TEXT NOT NULL,
  created_unix BIGINT NOT NULL);
CREATE INDEX customer_keys_by_customer ON customer_keys(customer_id);
CREATE TABLE hosts (
  host_id TEXT PRIMARY KEY,
  ek_cert_pem TEXT NOT NULL,
  ak_public TEXT NOT NULL,
  enrolled INTEGER NOT NULL,
  tags TEXT NOT NULL,
  created_unix BIGINT NOT NULL);
CREATE TABLE nonces (
  nonce TEXT PRIMARY KEY,
  host_id TEXT NOT NULL,
  expires_unix BIGINT NOT NULL,
  consumed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE verdicts (
  verdict_id TEXT PRIMARY KEY,
  host_id TEXT NOT NULL,
  trusted INTEGER NOT NULL,
  reason TEXT NOT NULL,
  time_unix BIGINT NOT NULL,
  details TEXT NOT NULL);
CREATE INDEX verdicts_by_host ON verdicts(host_id, time_unix);
CREATE TABLE flavors (
  name TEXT PRIMARY KEY,
  pcrs TEXT NOT NULL);
CREATE TABLE policies (
  customer_id TEXT NOT NULL,
  image_id TEXT NOT NULL,
  policy TEXT NOT NULL,
  PRIMARY KEY (customer_id, image_id));
CREATE TABLE audit_log (
  seq BIGINT PRIMARY KEY,
  record TEXT NOT NULL,
  hash TEXT NOT NULL);
)sql",
    // 2: the history check of every release asks for a host's failed
    // verdicts in a window; with only verdicts_by_host it read every verdict
    // of the host in that window (one per release: thousands per hour).
    R"sql(
CREATE INDEX verdicts_failed_by_host ON verdicts(host_id, time_unix) WHERE trusted = 0;
)sql",
    // 3: nonces are issued without a write (MAC-authenticated); only used
    // ones are recorded, until they expire. The MAC key, wrapped under the
    // KEK, is shared by every KMS process on the store.
    R"sql(
DROP TABLE nonces;
CREATE TABLE used_nonces (
  nonce TEXT PRIMARY KEY,
  host_id TEXT NOT NULL,
  expires_unix BIGINT NOT NULL);
CREATE INDEX used_nonces_by_expiry ON used_nonces(expires_unix);
CREATE TABLE service_secrets (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL);
)sql",
    // 4: one number that every change to what a release reads besides keys
    // (policies, flavors, hosts, failed verdicts) increments in its own
    // transaction, so that a process may cache those reads (ConfigVersion).
    R"sql(
CREATE TABLE config_version (
  id INTEGER PRIMARY KEY,
  version BIGINT NOT NULL);
INSERT INTO config_version (id, version) VALUES (1, 0);
)sql",
    // Transparency log (docs/format/audit-log.md): the audit log's Merkle
    // tree as its frontier (one row) and every complete subtree, and the
    // newest signed checkpoint issued. Stores with records are caught up
    // once on open (CatchUpAuditTree).
    R"sql(
CREATE TABLE audit_tree (
  level INTEGER NOT NULL,
  idx BIGINT NOT NULL,
  hash TEXT NOT NULL,
  PRIMARY KEY (level, idx));
CREATE TABLE audit_frontier (
  id INTEGER PRIMARY KEY,
  size BIGINT NOT NULL,
  hashes TEXT NOT NULL);
INSERT INTO audit_frontier (id, size, hashes) VALUES (1, 0, '');
CREATE TABLE audit_checkpoint (
  id INTEGER PRIMARY KEY,
  size BIGINT NOT NULL,
  note TEXT NOT NULL);
)sql",
    // Binding (issue 14): the images the portal registered at upload (the
    // tag's tenant and imageId), one-launch grants of a job on a host, and
    // the EK pinned to each host id at its first enrollment.
    R"sql(
CREATE TABLE images (
  tenant TEXT NOT NULL,
  image_id TEXT NOT NULL,
  key_id TEXT NOT NULL,
  created_unix BIGINT NOT NULL,
  PRIMARY KEY (tenant, image_id));
CREATE TABLE grants (
  job_id TEXT PRIMARY KEY,
  image_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  host_id TEXT NOT NULL,
  expires_unix BIGINT NOT NULL,
  created_unix BIGINT NOT NULL,
  used_unix BIGINT NOT NULL DEFAULT 0);
CREATE TABLE ek_pins (
  host_id TEXT PRIMARY KEY,
  ek_sha256 TEXT NOT NULL,
  pinned_unix BIGINT NOT NULL);
)sql",
    // Customer-signed packages (issue 14): each tenant's package-signing
    // key, certified by the KMS CA; a key belongs to one tenant only.
    R"sql(
CREATE TABLE signing_keys (
  tenant TEXT PRIMARY KEY,
  key_id TEXT NOT NULL UNIQUE,
  public_key_pem TEXT NOT NULL,
  cert_pem TEXT NOT NULL,
  created_unix BIGINT NOT NULL);
)sql",
    // Customer-signed policy documents (issue 14): every accepted version,
    // exactly as signed; the newest per image is the one enforced.
    R"sql(
CREATE TABLE policy_documents (
  tenant TEXT NOT NULL,
  image_id TEXT NOT NULL,
  version BIGINT NOT NULL,
  document TEXT NOT NULL,
  signature TEXT NOT NULL,
  signer_key_id TEXT NOT NULL,
  created_unix BIGINT NOT NULL,
  PRIMARY KEY (tenant, image_id, version));
)sql",
    // Customer audit (docs/format/audit-log.md §6.1): the records of each
    // (tenant, image), written in the record's own transaction, so that a
    // customer's events are found without reading the log. built = 0 until
    // the records older than this table are indexed once on open.
    R"sql(
CREATE TABLE audit_by_image (
  tenant TEXT NOT NULL,
  image_id TEXT NOT NULL,
  seq BIGINT NOT NULL,
  PRIMARY KEY (tenant, image_id, seq));
CREATE TABLE audit_index_state (
  id INTEGER PRIMARY KEY,
  built INTEGER NOT NULL);
INSERT INTO audit_index_state (id, built) VALUES (1, 0);
)sql",
    // Placement under the sealed policy (issue 14): the digest and release
    // policy of the customer-signed descriptor an image was registered with.
    R"sql(
ALTER TABLE images ADD COLUMN descriptor_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE images ADD COLUMN release_policy TEXT;
)sql",
    // Grants bound to the job's attempt (issue 17): a grant for a newer
    // placement fences off the older attempt's host.
    R"sql(
ALTER TABLE grants ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
)sql",
    // Revocation, disable, decommissioning (issue 19, kms/lifecycle.h).
    R"sql(
CREATE TABLE lifecycle (
  kind TEXT NOT NULL,
  subject TEXT NOT NULL,
  state TEXT NOT NULL,
  reason TEXT NOT NULL,
  by_name TEXT NOT NULL,
  since_unix BIGINT NOT NULL,
  due_unix BIGINT NOT NULL,
  PRIMARY KEY (kind, subject));
)sql",
    // Customer key versions and their retirement (issue 19, kms/key_versions.h).
    R"sql(
ALTER TABLE customer_keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE customer_keys ADD COLUMN retired_unix BIGINT NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX customer_keys_by_version ON customer_keys(customer_id, version);
)sql",
    // Release history (failed verdicts) counts in a version of its own
    // (Store::ReadReleaseVersions): a failure no longer increments
    // config_version, which empties every host's release cache.
    R"sql(
CREATE TABLE history_version (
  id INTEGER PRIMARY KEY,
  version BIGINT NOT NULL);
INSERT INTO history_version (id, version) VALUES (1, 0);
)sql",
};

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)); }

int64_t ToInt(const std::optional<std::string>& cell) {
  int64_t v = 0;
  if (cell) std::from_chars(cell->data(), cell->data() + cell->size(), v);
  return v;
}
std::string ToStr(const std::optional<std::string>& cell) { return cell.value_or(""); }
json ToJson(const std::optional<std::string>& cell) {
  auto parsed = ParseJson(cell.value_or("null"));
  return parsed.ok() ? *parsed : json();
}

class SqlStore : public Store {
 public:
  // `reader` serves the queries that write nothing, so that they do not
  // wait behind a group commit's fsync on `conn` (WAL lets readers run
  // beside the writer; on PostgreSQL it is simply a second session).
  SqlStore(std::unique_ptr<SqlConn> conn, std::unique_ptr<SqlConn> reader)
      : conn_(std::move(conn)), reader_(std::move(reader)) {}

  Status Migrate() {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(conn_->ExecScript(
          "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"));
      ASSIGN_OR_RETURN(auto r, conn_->Exec("SELECT MAX(version) FROM schema_version", {}));
      int64_t have = r.rows.empty() ? 0 : ToInt(r.rows[0][0]);
      const int64_t latest = static_cast<int64_t>(std::size(kMigrations));
      if (have > latest) {
        return FailedPreconditionError("store schema version " + std::to_string(have) +
                                       " is newer than this binary (" + std::to_string(latest) + ")");
      }
      for (int64_t v = have; v < latest; ++v) {
        RETURN_IF_ERROR(conn_->ExecScript(kMigrations[v]));
        RETURN_IF_ERROR(conn_->Exec("INSERT INTO schema_version (version) VALUES (?)", {v + 1}));
      }
      return OkStatus();
    });
  }

  std::string backend() const override {
    return conn_->dialect() == internal::SqlDialect::kSqlite ? "sqlite" : "postgres";
  }

  Status PutCustomerKey(const CustomerKeyRecord& k, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO customers (customer_id, created_unix) VALUES (?, ?) "
          "ON CONFLICT (customer_id) DO NOTHING",
          {k.customer_id, k.created_unix}));
      auto r = conn_->Exec(
          "INSERT INTO customer_keys (key_id, customer_id, algorithm, public_key_pem, cert_pem, "
          "wrapped_private_key, kek_id, created_unix, version, retired_unix) "
          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
          {k.key_id, k.customer_id, k.algorithm, k.public_key_pem, k.cert_pem,
           k.wrapped_private_key, k.kek_id, k.created_unix, k.version, k.retired_unix});
      if (!r.ok() && r.status().code() == StatusCode::kAlreadyExists) {
        return AlreadyExistsError("key " + k.key_id + " or version " + std::to_string(k.version) +
                                  " of customer " + k.customer_id + " already exists");
      }
      RETURN_IF_ERROR(r);
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<CustomerKeyRecord> GetCustomerKey(const std::string& key_id) override {
    ASSIGN_OR_RETURN(auto keys, QueryKeys("WHERE key_id = ?", key_id));
    if (keys.empty()) return NotFoundError("unknown key " + key_id);
    return std::move(keys[0]);
  }

  StatusOr<std::vector<CustomerKeyRecord>> ListCustomerKeys(const std::string& customer_id) override {
    return QueryKeys("WHERE customer_id = ? ORDER BY version, created_unix, key_id", customer_id);
  }

  Status RetireCustomerKey(const std::string& customer_id, int64_t version, int64_t when_unix,
                           const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec(
          "SELECT retired_unix FROM customer_keys WHERE customer_id = ? AND version = ?",
          {customer_id, version}));
      if (r.rows.empty()) {
        return NotFoundError("customer " + customer_id + " has no key version " + std::to_string(version));
      }
      if (ToInt(r.rows[0][0]) != 0) {
        return FailedPreconditionError("key_version_retired: version " + std::to_string(version) +
                                       " of customer " + customer_id + " is retired already");
      }
      RETURN_IF_ERROR(conn_->Exec(
          "UPDATE customer_keys SET retired_unix = ? WHERE customer_id = ? AND version = ?",
          {when_unix, customer_id, version}));
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  Status PutHost(const HostRecord& h, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO hosts (host_id, ek_cert_pem, ak_public, enrolled, tags, created_unix) "
          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET "
          "ek_cert_pem = excluded.ek_cert_pem, ak_public = excluded.ak_public, "
          "enrolled = excluded.enrolled, tags = excluded.tags",
          {h.host_id, h.ek_cert_pem, h.ak_public, int64_t{h.enrolled ? 1 : 0},
           DumpJson(h.tags), h.created_unix}));
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<HostRecord> GetHost(const std::string& host_id) override {
    ASSIGN_OR_RETURN(auto hosts, QueryHosts("WHERE host_id = ?", {host_id}));
    if (hosts.empty()) return NotFoundError("unknown host " + host_id);
    return std::move(hosts[0]);
  }

  StatusOr<std::vector<HostRecord>> ListHosts() override {
    return QueryHosts("ORDER BY host_id", {});
  }

  Status SetHostEnrolled(const std::string& host_id, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec("UPDATE hosts SET enrolled = 1 WHERE host_id = ?",
                                           {host_id}));
      if (r.affected != 1) return NotFoundError("unknown host " + host_id);
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  Status SetHostTags(const std::string& host_id, const std::vector<std::string>& tags,
                     const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec("UPDATE hosts SET tags = ? WHERE host_id = ?",
                                           {DumpJson(tags), host_id}));
      if (r.affected != 1) return NotFoundError("unknown host " + host_id);
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  Status ConsumeNonce(const std::string& nonce, const std::string& host_id,
                      int64_t expires_unix) override {
    return InTx([&]() -> Status { return ConsumeNonceLocked(nonce, host_id, expires_unix); });
  }

  StatusOr<int64_t> PurgeNonces(int64_t before_unix) override {
    int64_t purged = 0;
    Status deleted = InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec("DELETE FROM used_nonces WHERE expires_unix < ?",
                                           {before_unix}));
      purged = r.affected;
      return OkStatus();
    });
    if (!deleted.ok()) return deleted;
    return purged;
  }

  StatusOr<std::string> PutSecretIfAbsent(const std::string& name, const std::string& value,
                                          const AuditEvent& audit) override {
    std::string stored;
    Status written = InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto inserted,
                       conn_->Exec("INSERT INTO service_secrets (name, value) VALUES (?, ?) "
                                   "ON CONFLICT (name) DO NOTHING",
                                   {name, value}));
      if (inserted.affected == 1) RETURN_IF_ERROR(AppendAuditLocked(audit));
      ASSIGN_OR_RETURN(auto r, conn_->Exec("SELECT value FROM service_secrets WHERE name = ?",
                                           {name}));
      if (r.rows.empty()) return InternalError("service secret " + name + " vanished");
      stored = ToStr(r.rows[0][0]);
      return OkStatus();
    });
    if (!written.ok()) return written;
    return stored;
  }

  StatusOr<std::vector<CustomerKeyRecord>> ListKeysNotUnderKek(const std::string& kek_id,
                                                               const std::string& after_key_id,
                                                               int64_t limit) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT key_id, customer_id, algorithm, public_key_pem, cert_pem, wrapped_private_key, "
        "kek_id, created_unix, version, retired_unix FROM customer_keys "
        "WHERE key_id > ? AND kek_id <> ? ORDER BY key_id LIMIT ?",
        {after_key_id, kek_id, limit}));
    std::vector<CustomerKeyRecord> out;
    for (const auto& row : r.rows) {
      out.push_back({ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToStr(row[3]), ToStr(row[4]),
                     ToStr(row[5]), ToStr(row[6]), ToInt(row[7]), ToInt(row[8]), ToInt(row[9])});
    }
    return out;
  }

  StatusOr<int64_t> RewrapCustomerKeys(const std::vector<KeyRewrap>& batch,
                                       const AuditEvent& audit) override {
    int64_t changed = 0;
    Status s = InTx([&]() -> Status {
      changed = 0;
      for (const auto& k : batch) {
        ASSIGN_OR_RETURN(auto r, conn_->Exec(
            "UPDATE customer_keys SET wrapped_private_key = ?, kek_id = ? "
            "WHERE key_id = ? AND wrapped_private_key = ?",
            {k.new_wrapped, k.new_kek_id, k.key_id, k.old_wrapped}));
        changed += r.affected;
      }
      if (changed > 0) {
        AuditEvent a = audit;
        a.details["rewrapped"] = changed;
        RETURN_IF_ERROR(AppendAuditLocked(a));
      }
      return OkStatus();
    });
    if (!s.ok()) return s;
    return changed;
  }

  StatusOr<std::vector<std::pair<std::string, int64_t>>> CountKeysByKek() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT kek_id, COUNT(*) FROM customer_keys GROUP BY kek_id ORDER BY kek_id", {}));
    std::vector<std::pair<std::string, int64_t>> out;
    for (const auto& row : r.rows) out.emplace_back(ToStr(row[0]), ToInt(row[1]));
    return out;
  }

  StatusOr<std::vector<std::pair<std::string, std::string>>> ListSecrets() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT name, value FROM service_secrets ORDER BY name", {}));
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& row : r.rows) out.emplace_back(ToStr(row[0]), ToStr(row[1]));
    return out;
  }

  StatusOr<bool> ReplaceSecret(const std::string& name, const std::string& old_value,
                               const std::string& new_value, const AuditEvent& audit) override {
    bool replaced = false;
    Status s = InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec(
          "UPDATE service_secrets SET value = ? WHERE name = ? AND value = ?",
          {new_value, name, old_value}));
      replaced = r.affected == 1;
      if (replaced) RETURN_IF_ERROR(AppendAuditLocked(audit));
      return OkStatus();
    });
    if (!s.ok()) return s;
    return replaced;
  }

  Status PutEnrolledHost(const HostRecord& h, const std::string& ek_sha256,
                         const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      // The first enrollment pins the EK; the pin row decides every later one.
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO ek_pins (host_id, ek_sha256, pinned_unix) VALUES (?, ?, ?) "
          "ON CONFLICT (host_id) DO NOTHING",
          {h.host_id, ek_sha256, Now()}));
      ASSIGN_OR_RETURN(auto pin, conn_->Exec("SELECT ek_sha256 FROM ek_pins WHERE host_id = ?",
                                             {h.host_id}));
      if (pin.rows.empty() || ToStr(pin.rows[0][0]) != ek_sha256) {
        return FailedPreconditionError("ek_mismatch: host " + h.host_id +
                                       " is pinned to another EK; an operator must approve this one");
      }
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO hosts (host_id, ek_cert_pem, ak_public, enrolled, tags, created_unix) "
          "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host_id) DO UPDATE SET "
          "ek_cert_pem = excluded.ek_cert_pem, ak_public = excluded.ak_public, "
          "enrolled = excluded.enrolled, tags = excluded.tags",
          {h.host_id, h.ek_cert_pem, h.ak_public, int64_t{h.enrolled ? 1 : 0},
           DumpJson(h.tags), h.created_unix}));
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<std::string> GetEkPin(const std::string& host_id) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT ek_sha256 FROM ek_pins WHERE host_id = ?",
                                           {host_id}));
    if (r.rows.empty()) return NotFoundError("no EK pinned to host " + host_id);
    return ToStr(r.rows[0][0]);
  }

  Status PinEk(const std::string& host_id, const std::string& ek_sha256,
               const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO ek_pins (host_id, ek_sha256, pinned_unix) VALUES (?, ?, ?) "
          "ON CONFLICT (host_id) DO UPDATE SET ek_sha256 = excluded.ek_sha256, "
          "pinned_unix = excluded.pinned_unix",
          {host_id, ek_sha256, Now()}));
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<int64_t> DestroyCustomerKeys(const std::string& customer_id, const LifecycleRecord& mark,
                                        const AuditEvent& audit) override {
    int64_t deleted = 0;
    Status done = InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec("DELETE FROM customer_keys WHERE customer_id = ?",
                                           {customer_id}));
      deleted = r.affected;
      RETURN_IF_ERROR(PutLifecycleLocked(mark));
      return AppendAuditLocked(audit);
    });
    if (!done.ok()) return done;
    return deleted;
  }

  Status PutLifecycle(const LifecycleRecord& m, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(PutLifecycleLocked(m));
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<LifecycleRecord> GetLifecycle(const std::string& kind, const std::string& subject) override {
    ASSIGN_OR_RETURN(auto marks, QueryLifecycle("WHERE kind = ? AND subject = ?", {kind, subject}));
    if (marks.empty()) return NotFoundError(kind + " " + subject + " has no lifecycle mark");
    return std::move(marks[0]);
  }

  StatusOr<std::vector<LifecycleRecord>> ListLifecycle(const std::string& kind,
                                                       const std::string& state) override {
    if (state.empty()) return QueryLifecycle("WHERE kind = ? ORDER BY subject", {kind});
    return QueryLifecycle("WHERE kind = ? AND state = ? ORDER BY subject", {kind, state});
  }

  Status PutSigningKey(const SigningKeyRecord& k, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto existing, conn_->Exec(
          "SELECT tenant, key_id FROM signing_keys WHERE tenant = ? OR key_id = ?",
          {k.tenant, k.key_id}));
      for (const auto& row : existing.rows) {
        if (ToStr(row[0]) == k.tenant && ToStr(row[1]) == k.key_id) return OkStatus();
      }
      if (!existing.rows.empty()) {
        return FailedPreconditionError(
            ToStr(existing.rows[0][0]) == k.tenant
                ? "signing_key_exists: tenant " + k.tenant + " has another signing key"
                : "signing_key_exists: this signing key is registered to another tenant");
      }
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO signing_keys (tenant, key_id, public_key_pem, cert_pem, created_unix) "
          "VALUES (?, ?, ?, ?, ?)",
          {k.tenant, k.key_id, k.public_key_pem, k.cert_pem, k.created_unix}));
      // Releases read the registered key through the config-version cache.
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<SigningKeyRecord> GetSigningKey(const std::string& tenant) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT tenant, key_id, public_key_pem, cert_pem, created_unix FROM signing_keys "
        "WHERE tenant = ?",
        {tenant}));
    if (r.rows.empty()) return NotFoundError("tenant " + tenant + " has no signing key");
    const auto& row = r.rows[0];
    return SigningKeyRecord{ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToStr(row[3]),
                            ToInt(row[4])};
  }

  Status PutImage(const ImageRecord& i, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto inserted, conn_->Exec(
          "INSERT INTO images (tenant, image_id, key_id, created_unix, descriptor_sha256, "
          "release_policy) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, image_id) DO NOTHING",
          {i.tenant, i.image_id, i.key_id, i.created_unix, i.descriptor_sha256,
           i.release_policy ? SqlValue(*i.release_policy) : SqlValue()}));
      if (inserted.affected == 1) return AppendAuditLocked(audit);
      ASSIGN_OR_RETURN(auto r, conn_->Exec(
          "SELECT key_id, descriptor_sha256, release_policy FROM images "
          "WHERE tenant = ? AND image_id = ?",
          {i.tenant, i.image_id}));
      if (r.rows.empty() || ToStr(r.rows[0][0]) != i.key_id) {
        return FailedPreconditionError("image_conflict: image " + i.image_id + " of tenant " +
                                       i.tenant + " is registered with another key");
      }
      const std::string stored = ToStr(r.rows[0][1]);
      if (i.descriptor_sha256.empty()) return OkStatus();
      if (!stored.empty()) {
        // Another signed descriptor of the image (the customer re-sealed
        // it) is the same registration as long as its release policy is.
        if (r.rows[0][2] == i.release_policy) return OkStatus();
        return FailedPreconditionError("image_conflict: image " + i.image_id + " of tenant " +
                                       i.tenant + " is registered with another sealed release policy");
      }
      ASSIGN_OR_RETURN(auto updated, conn_->Exec(
          "UPDATE images SET descriptor_sha256 = ?, release_policy = ? "
          "WHERE tenant = ? AND image_id = ? AND descriptor_sha256 = ''",
          {i.descriptor_sha256, i.release_policy ? SqlValue(*i.release_policy) : SqlValue(),
           i.tenant, i.image_id}));
      (void)updated;
      return AppendAuditLocked(audit);
    });
  }

  Status MoveImageKey(const std::string& tenant, const std::string& image_id,
                      const std::string& from_key_id, const std::string& to_key_id,
                      const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec("SELECT key_id FROM images WHERE tenant = ? AND image_id = ?",
                                           {tenant, image_id}));
      if (r.rows.empty()) return NotFoundError("tenant " + tenant + " has no image " + image_id);
      const std::string current = ToStr(r.rows[0][0]);
      if (current != from_key_id && current != to_key_id) {
        return FailedPreconditionError("image_conflict: image " + image_id + " of tenant " + tenant +
                                       " is registered with another key");
      }
      ASSIGN_OR_RETURN(auto updated, conn_->Exec(
          "UPDATE images SET key_id = ? WHERE tenant = ? AND image_id = ?", {to_key_id, tenant, image_id}));
      (void)updated;
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<ImageRecord> GetImage(const std::string& tenant, const std::string& image_id) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT tenant, image_id, key_id, created_unix, descriptor_sha256, release_policy "
        "FROM images WHERE tenant = ? AND image_id = ?",
        {tenant, image_id}));
    if (r.rows.empty()) return NotFoundError("tenant " + tenant + " has no image " + image_id);
    const auto& row = r.rows[0];
    return ImageRecord{ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToInt(row[3]),
                       ToStr(row[4]), row[5]};
  }

  Status PutGrant(const GrantRecord& g, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      // Read under the write lock (BeginWrite), so two portals cannot both
      // pass the check.
      ASSIGN_OR_RETURN(auto cur, conn_->Exec("SELECT attempt, used_unix FROM grants WHERE job_id = ?",
                                             {g.job_id}));
      if (!cur.rows.empty()) {
        const int64_t have_attempt = ToInt(cur.rows[0][0]);
        const int64_t have_used = ToInt(cur.rows[0][1]);
        if (g.attempt < have_attempt) {
          return FailedPreconditionError("stale_attempt: job " + g.job_id + " has a grant for attempt " +
                                         std::to_string(have_attempt) + ", newer than " +
                                         std::to_string(g.attempt));
        }
        if (g.attempt == have_attempt && have_used != 0) {
          return FailedPreconditionError("grant_used: the grant of job " + g.job_id + " attempt " +
                                         std::to_string(g.attempt) + " was used; it is not armed again");
        }
      }
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO grants (job_id, image_id, tenant, host_id, expires_unix, created_unix, "
          "used_unix, attempt) VALUES (?, ?, ?, ?, ?, ?, 0, ?) ON CONFLICT (job_id) DO UPDATE SET "
          "image_id = excluded.image_id, tenant = excluded.tenant, host_id = excluded.host_id, "
          "expires_unix = excluded.expires_unix, created_unix = excluded.created_unix, used_unix = 0, "
          "attempt = excluded.attempt",
          {g.job_id, g.image_id, g.tenant, g.host_id, g.expires_unix, g.created_unix, g.attempt}));
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<GrantRecord> GetGrant(const std::string& job_id) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT job_id, image_id, tenant, host_id, expires_unix, created_unix, used_unix, attempt "
        "FROM grants WHERE job_id = ?",
        {job_id}));
    if (r.rows.empty()) return NotFoundError("no grant for job " + job_id);
    const auto& row = r.rows[0];
    return GrantRecord{ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToStr(row[3]),
                       ToInt(row[4]), ToInt(row[5]), ToInt(row[6]), ToInt(row[7])};
  }

  using Store::PutVerdict;
  Status PutVerdict(const Verdict& v, const std::vector<AuditEvent>& audits,
                    const NonceUse* consume, const GrantUse* grant) override {
    return InTx([&]() -> Status {
      if (consume != nullptr) {
        RETURN_IF_ERROR(ConsumeNonceLocked(consume->nonce, consume->host_id, consume->expires_unix));
      }
      if (grant != nullptr) {
        // Used exactly once: a second release (in any process) finds it used.
        ASSIGN_OR_RETURN(auto used, conn_->Exec(
            "UPDATE grants SET used_unix = ? WHERE job_id = ? AND image_id = ? AND tenant = ? "
            "AND host_id = ? AND used_unix = 0 AND expires_unix >= ? AND attempt = ?",
            {grant->now_unix, grant->job_id, grant->image_id, grant->tenant, grant->host_id,
             grant->now_unix, grant->attempt}));
        if (used.affected != 1) {
          // (Not "used": NonceError reads that word as a used nonce.)
          return FailedPreconditionError("no_grant: job " + grant->job_id +
                                         " has no open grant (unspent, unexpired) for this attempt, "
                                         "image and host");
        }
      }
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO verdicts (verdict_id, host_id, trusted, reason, time_unix, details) "
          "VALUES (?, ?, ?, ?, ?, ?)",
          {v.verdict_id, v.host_id, int64_t{v.trusted ? 1 : 0}, v.reason, v.time_unix,
           DumpJson(v.details)}));
      // A failure is history that release policies read.
      if (!v.trusted) {
        RETURN_IF_ERROR(
            conn_->Exec("UPDATE history_version SET version = version + 1 WHERE id = 1", {}).status());
      }
      // One statement per table for all of them, one frontier write.
      RETURN_IF_ERROR(AppendAuditsLocked(audits));
      return OkStatus();
    });
  }

  StatusOr<std::vector<Verdict>> ListVerdicts(const std::string& host_id,
                                              int64_t since_unix) override {
    return QueryVerdicts("WHERE host_id = ? AND time_unix >= ? ORDER BY time_unix, verdict_id",
                         {host_id, since_unix});
  }

  StatusOr<std::vector<Verdict>> ListFailedVerdicts(const std::string& host_id,
                                                    int64_t since_unix) override {
    return QueryVerdicts(
        "WHERE host_id = ? AND time_unix >= ? AND trusted = 0 ORDER BY time_unix, verdict_id",
        {host_id, since_unix});
  }

  StatusOr<Verdict> LatestVerdict(const std::string& host_id) override {
    ASSIGN_OR_RETURN(auto v, QueryVerdicts(
        "WHERE host_id = ? ORDER BY time_unix DESC, verdict_id DESC LIMIT 1", {host_id}));
    if (v.empty()) return NotFoundError("no verdict for host " + host_id);
    return std::move(v[0]);
  }

  Status PutFlavor(const Flavor& f, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(conn_->Exec("INSERT INTO flavors (name, pcrs) VALUES (?, ?) "
                                  "ON CONFLICT (name) DO UPDATE SET pcrs = excluded.pcrs",
                                  {f.name, DumpJson(f.pcrs)}));
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<Flavor> GetFlavor(const std::string& name) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT name, pcrs FROM flavors WHERE name = ?", {name}));
    if (r.rows.empty()) return NotFoundError("unknown flavor " + name);
    return Flavor{ToStr(r.rows[0][0]), ToJson(r.rows[0][1])};
  }

  StatusOr<std::vector<Flavor>> ListFlavors() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT name, pcrs FROM flavors ORDER BY name", {}));
    std::vector<Flavor> out;
    for (const auto& row : r.rows) out.push_back({ToStr(row[0]), ToJson(row[1])});
    return out;
  }

  Status PutPolicy(const PolicyRecord& p, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO policies (customer_id, image_id, policy) VALUES (?, ?, ?) "
          "ON CONFLICT (customer_id, image_id) DO UPDATE SET policy = excluded.policy",
          {p.customer_id, p.image_id, DumpJson(p.policy)}));
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<PolicyRecord> GetPolicy(const std::string& customer_id,
                                   const std::string& image_id) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT customer_id, image_id, policy FROM policies WHERE customer_id = ? AND "
        "(image_id = ? OR image_id = '') ORDER BY image_id DESC",
        {customer_id, image_id}));
    if (r.rows.empty()) return NotFoundError("no release policy for customer " + customer_id);
    return PolicyRecord{ToStr(r.rows[0][0]), ToStr(r.rows[0][1]), ToJson(r.rows[0][2])};
  }

  Status PutPolicyDocument(const PolicyDocumentRecord& d, const AuditEvent& audit) override {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto r, conn_->Exec(
          "SELECT MAX(version) FROM policy_documents WHERE tenant = ? AND image_id = ?",
          {d.tenant, d.image_id}));
      const int64_t newest = r.rows.empty() ? 0 : ToInt(r.rows[0][0]);
      if (d.version <= newest) {
        return FailedPreconditionError("policy_stale: version " + std::to_string(d.version) +
                                       " is not newer than the stored version " +
                                       std::to_string(newest));
      }
      RETURN_IF_ERROR(conn_->Exec(
          "INSERT INTO policy_documents (tenant, image_id, version, document, signature, "
          "signer_key_id, created_unix) VALUES (?, ?, ?, ?, ?, ?, ?)",
          {d.tenant, d.image_id, d.version, d.document, d.signature, d.signer_key_id,
           d.created_unix}));
      RETURN_IF_ERROR(BumpConfigVersionLocked());
      return AppendAuditLocked(audit);
    });
  }

  StatusOr<PolicyDocumentRecord> NewestPolicyDocument(const std::string& tenant,
                                                      const std::string& image_id) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT tenant, image_id, version, document, signature, signer_key_id, created_unix "
        "FROM policy_documents WHERE tenant = ? AND image_id = ? ORDER BY version DESC LIMIT 1",
        {tenant, image_id}));
    if (r.rows.empty()) {
      return NotFoundError("no signed policy for image " + image_id + " of tenant " + tenant);
    }
    const auto& row = r.rows[0];
    return PolicyDocumentRecord{ToStr(row[0]), ToStr(row[1]), ToInt(row[2]), ToStr(row[3]),
                                ToStr(row[4]), ToStr(row[5]), ToInt(row[6])};
  }

  StatusOr<ReleaseVersions> ReadReleaseVersions() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT c.version, h.version FROM config_version c, history_version h WHERE c.id = 1 AND h.id = 1",
        {}));
    if (r.rows.empty()) return DataLossError("store: config_version or history_version row missing");
    return ReleaseVersions{ToInt(r.rows[0][0]), ToInt(r.rows[0][1])};
  }

  StatusOr<int64_t> ConfigVersion() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT version FROM config_version WHERE id = 1", {}));
    if (r.rows.empty()) return DataLossError("store: config_version row missing");
    return ToInt(r.rows[0][0]);
  }

  Status AppendAudit(const AuditEvent& event) override {
    return InTx([&]() -> Status { return AppendAuditLocked(event); });
  }

  StatusOr<std::vector<AuditRecord>> ReadAudit(int64_t after_seq, int64_t limit) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT seq, record, hash FROM audit_log WHERE seq > ? "
                                         "ORDER BY seq LIMIT ?",
                                         {after_seq, limit}));
    std::vector<AuditRecord> out;
    for (const auto& row : r.rows) out.push_back({ToInt(row[0]), ToStr(row[1]), ToStr(row[2])});
    return out;
  }

  StatusOr<tlog::Frontier> AuditFrontier() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    return ReadFrontier(*reader_);
  }

  StatusOr<tlog::Hash> AuditNode(int level, uint64_t index) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT hash FROM audit_tree WHERE level = ? AND idx = ?",
                                           {int64_t{level}, static_cast<int64_t>(index)}));
    if (r.rows.empty()) {
      return NotFoundError("audit tree has no node at level " + std::to_string(level) + " index " +
                           std::to_string(index));
    }
    return StoredHash(ToStr(r.rows[0][0]));
  }

  Status PutAuditCheckpoint(int64_t size, const std::string& signed_checkpoint) override {
    return InTx([&]() -> Status {
      return conn_->Exec(
          "INSERT INTO audit_checkpoint (id, size, note) VALUES (1, ?, ?) ON CONFLICT (id) DO "
          "UPDATE SET size = excluded.size, note = excluded.note WHERE audit_checkpoint.size < excluded.size",
          {size, signed_checkpoint}).status();
    });
  }

  StatusOr<std::string> LatestAuditCheckpoint() override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT note FROM audit_checkpoint WHERE id = 1", {}));
    if (r.rows.empty()) return NotFoundError("no audit checkpoint issued yet");
    return ToStr(r.rows[0][0]);
  }

  // A store whose log predates the tree gets its tree once: the records
  // are appended as leaves in order, in one transaction.
  Status CatchUpAuditTree() {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(tlog::Frontier frontier, ReadFrontier(*conn_));
      if (frontier.size() != 0) return OkStatus();
      int64_t after = 0;
      while (true) {
        ASSIGN_OR_RETURN(auto r, conn_->Exec(
            "SELECT seq, record FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 1000", {after}));
        if (r.rows.empty()) return OkStatus();
        for (const auto& row : r.rows) {
          after = ToInt(row[0]);
          RETURN_IF_ERROR(AppendAuditLeafLocked(after, ToStr(row[1]), &frontier));
        }
      }
    });
  }

  // Indexes the records written before audit_by_image existed, once.
  Status CatchUpAuditIndex() {
    return InTx([&]() -> Status {
      ASSIGN_OR_RETURN(auto state, conn_->Exec("SELECT built FROM audit_index_state WHERE id = 1", {}));
      if (state.rows.empty() || ToInt(state.rows[0][0]) != 0) return OkStatus();
      int64_t after = 0;
      while (true) {
        ASSIGN_OR_RETURN(auto r, conn_->Exec(
            "SELECT seq, record FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 1000", {after}));
        if (r.rows.empty()) break;
        for (const auto& row : r.rows) {
          after = ToInt(row[0]);
          auto rec = ParseJson(ToStr(row[1]));
          if (rec.ok()) RETURN_IF_ERROR(IndexAuditRecordLocked(after, *rec));
        }
      }
      return conn_->Exec("UPDATE audit_index_state SET built = 1 WHERE id = 1", {}).status();
    });
  }

  StatusOr<std::vector<int64_t>> AuditSeqsForImage(const std::string& tenant, const std::string& image_id,
                                                   int64_t after_seq, int64_t limit) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT seq FROM audit_by_image WHERE tenant = ? AND image_id = ? AND seq > ? "
        "ORDER BY seq LIMIT ?",
        {tenant, image_id, after_seq, limit}));
    std::vector<int64_t> out;
    for (const auto& row : r.rows) out.push_back(ToInt(row[0]));
    return out;
  }

  StatusOr<std::vector<std::string>> ImageTenants(const std::string& image_id) override {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT tenant FROM images WHERE image_id = ? ORDER BY tenant LIMIT 16", {image_id}));
    std::vector<std::string> out;
    for (const auto& row : r.rows) out.push_back(ToStr(row[0]));
    return out;
  }

  Status ExecForTesting(const std::string& sql) override {
    std::lock_guard<std::mutex> lock(mu_);
    tail_.reset();
    RETURN_IF_ERROR(conn_->ExecScript(sql));
    // Whatever it changed, caches of release reads must not outlive it.
    return conn_->Exec("UPDATE config_version SET version = version + 1 WHERE id = 1", {}).status();
  }

 private:
  // Runs `body` in a write transaction holding the store-wide write lock,
  // and returns only once that transaction committed (or failed).
  //
  // Group commit: writers that arrive while another batch is committing
  // queue up; the next leader runs every queued body in one transaction,
  // each inside its own savepoint (a failing body is rolled back alone),
  // and commits once: one fsync for the batch instead of one per writer.
  // Every caller still learns its result only after the COMMIT returned,
  // so an acknowledged write is as durable as before.
  Status InTx(const std::function<Status()>& body) {
    PendingTx me{&body, OkStatus(), false};
    std::unique_lock<std::mutex> q(queue_mu_);
    queue_.push_back(&me);
    while (!me.done) {
      if (leader_active_) {
        queue_cv_.wait(q);
        continue;
      }
      leader_active_ = true;
      std::vector<PendingTx*> batch;
      batch.swap(queue_);
      q.unlock();
      RunBatch(batch);
      q.lock();
      for (PendingTx* p : batch) p->done = true;
      leader_active_ = false;
      queue_cv_.notify_all();
    }
    return me.result;
  }

  struct AuditTail {
    int64_t seq = 0;    // the last record's (0: none)
    std::string hash;   // its hash (the chain's genesis hash when none)
    tlog::Frontier frontier;
  };

  struct PendingTx {
    const std::function<Status()>* body;
    Status result;
    bool done;
  };

  void RunBatch(const std::vector<PendingTx*>& batch) {
    std::lock_guard<std::mutex> lock(mu_);
    // A new transaction: the cached audit tail is checked against the store
    // before its first use (another process may have appended).
    tail_checked_ = false;
    Status begun = conn_->BeginWrite();
    if (!begun.ok()) {
      for (PendingTx* p : batch) p->result = begun;
      return;
    }
    if (batch.size() == 1) {
      Status s = (*batch[0]->body)();
      if (s.ok()) s = conn_->ExecScript("COMMIT");
      if (!s.ok()) {
        tail_.reset();
        (void)conn_->ExecScript("ROLLBACK");
      }
      batch[0]->result = s;
      return;
    }
    bool any_ok = false;
    for (PendingTx* p : batch) {
      Status s = conn_->ExecScript("SAVEPOINT group_tx");
      Status undo = s;
      if (s.ok()) {
        s = (*p->body)();
        if (!s.ok()) tail_.reset();  // its records are rolled back
        undo = s.ok() ? conn_->ExecScript("RELEASE group_tx")
                      : conn_->ExecScript("ROLLBACK TO group_tx; RELEASE group_tx");
      }
      if (!undo.ok()) {
        // The transaction itself is in doubt (e.g. an I/O error rolled it
        // back): nothing of this batch commits.
        tail_.reset();
        (void)conn_->ExecScript("ROLLBACK");
        for (PendingTx* q : batch) q->result = undo.WithPrefix("store transaction aborted");
        if (!s.ok()) p->result = s;
        return;
      }
      p->result = s;
      any_ok = any_ok || s.ok();
    }
    Status committed = any_ok ? conn_->ExecScript("COMMIT") : conn_->ExecScript("ROLLBACK");
    if (!committed.ok()) {
      tail_.reset();
      (void)conn_->ExecScript("ROLLBACK");
      for (PendingTx* p : batch) {
        if (p->result.ok()) p->result = committed;
      }
    }
  }

  // Caller holds the write transaction.
  Status BumpConfigVersionLocked() {
    return conn_->Exec("UPDATE config_version SET version = version + 1 WHERE id = 1", {}).status();
  }

  // The log's tail (last record and the tree's frontier) as this process
  // last wrote it. Caller holds the write transaction. Checked against the
  // stored head once per transaction: another process sharing the store may
  // have appended since (then the frontier is read again); within the
  // transaction nobody else can append (the write lock). Dropped whenever a
  // transaction or savepoint rolls back (RunBatch), so it never holds a
  // record that was not committed.
  StatusOr<AuditTail*> AuditTailLocked() {
    if (tail_ && tail_checked_) return &*tail_;
    ASSIGN_OR_RETURN(auto r, conn_->Exec(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", {}));
    int64_t seq = 0;
    std::string hash = kAuditGenesisHash;
    if (!r.rows.empty()) {
      seq = ToInt(r.rows[0][0]);
      hash = ToStr(r.rows[0][1]);
    }
    if (!tail_ || tail_->seq != seq || tail_->hash != hash) {
      tail_.reset();
      ASSIGN_OR_RETURN(tlog::Frontier frontier, ReadFrontier(*conn_));
      tail_ = AuditTail{seq, std::move(hash), std::move(frontier)};
    }
    tail_checked_ = true;
    return &*tail_;
  }

  // Appends to the chain; caller holds the write transaction, so seq and
  // prev_hash are read and extended atomically across processes.
  Status AppendAuditLocked(const AuditEvent& event) { return AppendAuditsLocked({&event, 1}); }

  // Appends `events` in order as consecutive records: one INSERT of their
  // log rows, one of the tree nodes they complete, one of their image index
  // rows, and one write of the frontier after the last (the same rows as
  // appending them one by one; fewer statements and one frontier write).
  Status AppendAuditsLocked(std::span<const AuditEvent> events) {
    if (events.empty()) return OkStatus();
    ASSIGN_OR_RETURN(AuditTail * tail, AuditTailLocked());
    // Any failure below leaves the transaction to be rolled back: the tail
    // is dropped first, and set again only once every row is written.
    AuditTail next = *tail;
    tail_.reset();
    if (static_cast<int64_t>(next.frontier.size()) != next.seq) {
      return DataLossError("audit tree has " + std::to_string(next.frontier.size()) +
                           " leaves but the log is appending record " + std::to_string(next.seq + 1));
    }
    const int64_t now = Now();
    std::string log_sql = "INSERT INTO audit_log (seq, record, hash) VALUES ";
    std::vector<SqlValue> log_params;
    std::string tree_sql = "INSERT INTO audit_tree (level, idx, hash) VALUES ";
    std::vector<SqlValue> tree_params;
    std::string index_sql = "INSERT INTO audit_by_image (tenant, image_id, seq) VALUES ";
    std::vector<SqlValue> index_params;
    for (const AuditEvent& event : events) {
      const int64_t seq = next.seq + 1;
      AuditRecord rec = MakeAuditRecord(seq, now, event, next.hash);
      log_sql += log_params.empty() ? "(?, ?, ?)" : ", (?, ?, ?)";
      log_params.insert(log_params.end(), {rec.seq, rec.record, rec.hash});
      if (auto key = AuditRecordImage(json{{"subject", event.subject}, {"details", event.details}})) {
        index_sql += index_params.empty() ? "(?, ?, ?)" : ", (?, ?, ?)";
        index_params.insert(index_params.end(), {key->first, key->second, seq});
      }
      next.frontier.Append(tlog::LeafHash(rec.record), [&](int level, uint64_t index, const tlog::Hash& h) {
        tree_sql += tree_params.empty() ? "(?, ?, ?)" : ", (?, ?, ?)";
        tree_params.insert(tree_params.end(),
                           {int64_t{level}, static_cast<int64_t>(index), tlog::HashHex(h)});
      });
      next.seq = seq;
      next.hash = std::move(rec.hash);
    }
    RETURN_IF_ERROR(conn_->Exec(log_sql, log_params).status());
    if (!index_params.empty()) {
      RETURN_IF_ERROR(
          conn_->Exec(index_sql + " ON CONFLICT (tenant, image_id, seq) DO NOTHING", index_params).status());
    }
    if (!tree_params.empty()) RETURN_IF_ERROR(conn_->Exec(tree_sql, tree_params).status());
    std::string hashes;
    for (const tlog::Hash& h : next.frontier.hashes()) hashes += tlog::HashHex(h);
    RETURN_IF_ERROR(conn_->Exec("UPDATE audit_frontier SET size = ?, hashes = ? WHERE id = 1",
                                {static_cast<int64_t>(next.frontier.size()), hashes})
                        .status());
    tail_ = std::move(next);
    return OkStatus();
  }

  // Adds record `seq` to the per-image index if it names an image.
  Status IndexAuditRecordLocked(int64_t seq, const json& rec) {
    auto key = AuditRecordImage(rec);
    if (!key) return OkStatus();
    return conn_->Exec("INSERT INTO audit_by_image (tenant, image_id, seq) VALUES (?, ?, ?) "
                       "ON CONFLICT (tenant, image_id, seq) DO NOTHING",
                       {key->first, key->second, seq})
        .status();
  }

  // Adds record `seq` to the tree: O(1) amortized hashes and rows (the
  // frontier row and each subtree the leaf completes), never the whole log.
  // `frontier` is the stored one (before the leaf) and becomes the new one.
  Status AppendAuditLeafLocked(int64_t seq, const std::string& record, tlog::Frontier* stored) {
    tlog::Frontier& frontier = *stored;
    if (static_cast<int64_t>(frontier.size()) != seq - 1) {
      return DataLossError("audit tree has " + std::to_string(frontier.size()) +
                           " leaves but the log is appending record " + std::to_string(seq));
    }
    std::vector<std::pair<int64_t, int64_t>> ids;
    std::vector<std::string> hexes;
    frontier.Append(tlog::LeafHash(record), [&](int level, uint64_t index, const tlog::Hash& h) {
      ids.emplace_back(level, static_cast<int64_t>(index));
      hexes.push_back(tlog::HashHex(h));
    });
    std::string sql = "INSERT INTO audit_tree (level, idx, hash) VALUES ";
    std::vector<SqlValue> params;
    for (size_t i = 0; i < ids.size(); ++i) {
      sql += i == 0 ? "(?, ?, ?)" : ", (?, ?, ?)";
      params.insert(params.end(), {ids[i].first, ids[i].second, hexes[i]});
    }
    RETURN_IF_ERROR(conn_->Exec(sql, params).status());
    std::string hashes;
    for (const tlog::Hash& h : frontier.hashes()) hashes += tlog::HashHex(h);
    return conn_->Exec("UPDATE audit_frontier SET size = ?, hashes = ? WHERE id = 1",
                       {static_cast<int64_t>(frontier.size()), hashes})
        .status();
  }

  static StatusOr<tlog::Frontier> ReadFrontier(SqlConn& conn) {
    ASSIGN_OR_RETURN(auto r, conn.Exec("SELECT size, hashes FROM audit_frontier WHERE id = 1", {}));
    if (r.rows.empty()) return DataLossError("store: audit_frontier row missing");
    const int64_t size = ToInt(r.rows[0][0]);
    const std::string text = ToStr(r.rows[0][1]);
    std::vector<tlog::Hash> hashes;
    for (size_t i = 0; i + 64 <= text.size(); i += 64) {
      auto h = StoredHash(text.substr(i, 64));
      if (!h.ok()) return DataLossError("store: audit frontier is malformed");
      hashes.push_back(*h);
    }
    if (size < 0 || text.size() % 64 != 0) return DataLossError("store: audit frontier is malformed");
    auto f = tlog::Frontier::FromHashes(static_cast<uint64_t>(size), std::move(hashes));
    if (!f.ok()) return DataLossError("store: audit frontier does not match its size");
    return f;
  }

  static StatusOr<tlog::Hash> StoredHash(const std::string& hex) {
    auto bytes = crypto::HexDecode(hex);
    if (!bytes.ok()) return DataLossError("store: audit hash is not hex");
    auto h = tlog::HashFromBytes(*bytes);
    if (!h.ok()) return DataLossError("store: audit hash is not 32 bytes");
    return h;
  }

  StatusOr<std::vector<CustomerKeyRecord>> QueryKeys(const std::string& where,
                                                     const std::string& arg) {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT key_id, customer_id, algorithm, public_key_pem, cert_pem, wrapped_private_key, "
        "kek_id, created_unix, version, retired_unix FROM customer_keys " + where,
        {arg}));
    std::vector<CustomerKeyRecord> out;
    for (const auto& row : r.rows) {
      out.push_back({ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToStr(row[3]), ToStr(row[4]),
                     ToStr(row[5]), ToStr(row[6]), ToInt(row[7]), ToInt(row[8]), ToInt(row[9])});
    }
    return out;
  }

  StatusOr<std::vector<HostRecord>> QueryHosts(const std::string& where,
                                               std::vector<SqlValue> args) {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT host_id, ek_cert_pem, ak_public, enrolled, tags, "
                                         "created_unix FROM hosts " + where,
                                         args));
    std::vector<HostRecord> out;
    for (const auto& row : r.rows) {
      HostRecord h{ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToInt(row[3]) != 0, {},
                   ToInt(row[5])};
      json tags = ToJson(row[4]);
      if (tags.is_array()) {
        for (const auto& t : tags) {
          if (t.is_string()) h.tags.push_back(t.get<std::string>());
        }
      }
      out.push_back(std::move(h));
    }
    return out;
  }

  StatusOr<std::vector<LifecycleRecord>> QueryLifecycle(const std::string& where,
                                                        std::vector<SqlValue> args) {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec("SELECT kind, subject, state, reason, by_name, since_unix, "
                                           "due_unix FROM lifecycle " + where,
                                           args));
    std::vector<LifecycleRecord> out;
    for (const auto& row : r.rows) {
      out.push_back({ToStr(row[0]), ToStr(row[1]), ToStr(row[2]), ToStr(row[3]), ToStr(row[4]),
                     ToInt(row[5]), ToInt(row[6])});
    }
    return out;
  }

  // Caller holds the write transaction. A mark is what every release reads
  // first (kms/lifecycle.h): it changes the config version, so that no
  // process sharing the store answers from a cache that lacks it.
  Status PutLifecycleLocked(const LifecycleRecord& m) {
    RETURN_IF_ERROR(BumpConfigVersionLocked());
    return conn_->Exec(
        "INSERT INTO lifecycle (kind, subject, state, reason, by_name, since_unix, due_unix) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, subject) DO UPDATE SET "
        "state = excluded.state, reason = excluded.reason, by_name = excluded.by_name, "
        "since_unix = excluded.since_unix, due_unix = excluded.due_unix",
        {m.kind, m.subject, m.state, m.reason, m.by, m.since_unix, m.due_unix}).status();
  }

  // Caller holds the write transaction.
  Status ConsumeNonceLocked(const std::string& nonce, const std::string& host_id,
                            int64_t expires_unix) {
    // The primary key makes a second consumer (another process on the same
    // PostgreSQL waits for the first one's commit) fail.
    auto r = conn_->Exec("INSERT INTO used_nonces (nonce, host_id, expires_unix) VALUES (?, ?, ?)",
                         {nonce, host_id, expires_unix});
    if (!r.ok() && r.status().code() == StatusCode::kAlreadyExists) {
      return FailedPreconditionError("nonce already used");
    }
    return r.status();
  }

  StatusOr<std::vector<Verdict>> QueryVerdicts(const std::string& where,
                                                std::vector<SqlValue> args) {
    std::lock_guard<std::mutex> lock(read_mu_);
    ASSIGN_OR_RETURN(auto r, reader_->Exec(
        "SELECT verdict_id, host_id, trusted, reason, time_unix, details FROM verdicts " + where,
        args));
    std::vector<Verdict> out;
    for (const auto& row : r.rows) {
      out.push_back({ToStr(row[0]), ToStr(row[1]), ToInt(row[2]) != 0, ToStr(row[3]),
                     ToInt(row[4]), ToJson(row[5])});
    }
    return out;
  }

  std::mutex mu_;  // conn_: write transactions and the reads inside them
  std::unique_ptr<SqlConn> conn_;
  // Guarded by mu_: the audit log's tail as this process last committed it
  // (AuditTailLocked), and whether it was checked in the open transaction.
  std::optional<AuditTail> tail_;
  bool tail_checked_ = false;
  // Group commit queue (InTx).
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::vector<PendingTx*> queue_;
  bool leader_active_ = false;

  // The read-only queries' connection and its lock (SqlConn is not
  // thread-safe).
  std::unique_ptr<SqlConn> reader_;
  std::mutex read_mu_;
};

}  // namespace

StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& location) {
  std::unique_ptr<SqlConn> conn, reader;
  if (location.rfind("postgres://", 0) == 0 || location.rfind("postgresql://", 0) == 0) {
    ASSIGN_OR_RETURN(conn, internal::OpenPostgres(location));
    ASSIGN_OR_RETURN(reader, internal::OpenPostgres(location));
  } else {
    if (location.empty()) return InvalidArgumentError("store: empty location");
    ASSIGN_OR_RETURN(conn, internal::OpenSqlite(location));
    ASSIGN_OR_RETURN(reader, internal::OpenSqlite(location));
  }
  auto store = std::make_unique<SqlStore>(std::move(conn), std::move(reader));
  RETURN_IF_ERROR(store->Migrate().WithPrefix("store migration"));
  RETURN_IF_ERROR(store->CatchUpAuditTree().WithPrefix("audit tree"));
  RETURN_IF_ERROR(store->CatchUpAuditIndex().WithPrefix("audit index"));
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace vmseal::kms
