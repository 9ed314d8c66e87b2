// Resumable uploads over any ObjectStore: a client that loses its connection
// asks for the session's offset and appends from there. The bytes are staged
// in the store itself (ObjectStore::Stage*), so every process sharing the
// store (portal replicas) sees the session: an upload begun through one
// replica resumes and commits through another. Nothing is visible in the
// store before Commit, which publishes the staged bytes without copying them.
#ifndef VMSEAL_STORE_UPLOAD_SESSIONS_H_
#define VMSEAL_STORE_UPLOAD_SESSIONS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "crypto/primitives.h"
#include "store/object_store.h"

namespace vmseal::store {

// The state of one upload session.
struct UploadSession {
  // 32 lowercase hex characters, random (unguessable).
  std::string id;
  // Key the object is published under on Commit.
  std::string key;
  // Bytes received and durable so far: where the next Append must start.
  uint64_t offset_bytes = 0;
  // Quota of the final object (0 = none).
  uint64_t max_size_bytes = 0;
};

// Thread-safe. Appends to the same session are serialised (a concurrent one
// fails with ABORTED); different sessions proceed in parallel. Across
// processes the store serialises them (see ObjectStore::StageAppend).
class UploadSessions {
 public:
  struct Options {
    // Local scratch directory, created (0700) if missing: a verifier that
    // needs a local file reads a staging the store keeps elsewhere (S3)
    // from a temp file here, removed after the check. Required.
    std::string staging_dir;
    // Most sessions whose running SHA-256 is kept in memory; the digest of
    // a session without one is taken by reading its staged bytes at Commit.
    // Default 4096.
    size_t max_hashed_sessions = 4096;
  };
  // `store` must outlive the object.
  static StatusOr<std::unique_ptr<UploadSessions>> Create(const Options& options,
                                                          ObjectStore* store);

  // Starts a session for `key` (validated) with the quota in `options`.
  StatusOr<UploadSession> Begin(const std::string& key, const PutOptions& options);

  // The session's current state; NOT_FOUND for an unknown id.
  StatusOr<UploadSession> Get(const std::string& id);

  // Appends `data` read to its end, which must start at `offset_bytes` (else
  // FAILED_PRECONDITION "offset", so a client that resumes at a stale offset
  // never corrupts the object). Bytes read before a source error stay
  // appended and durable; the returned/queried offset tells where to resume.
  // RESOURCE_EXHAUSTED "quota" when the total exceeds the quota. The bytes
  // are hashed as they arrive: while every append of a session since its
  // first byte went through this object, Commit reads nothing back.
  StatusOr<UploadSession> Append(const std::string& id, uint64_t offset_bytes, Reader& data);

  // Checks the complete staged content before it is published; an error
  // stops the Commit. `local_path` names the content as a local file (for
  // checkers that need a path); it must not be modified.
  using Verifier =
      std::function<Status(const RandomAccessFile& content, const std::string& local_path)>;

  // Publishes the staged bytes under the session's key (no copy: see
  // ObjectStore::StagePublish) and ends the session. When
  // `expected_sha256_hex` is not empty and differs from the content, fails
  // with DATA_LOSS "digest", publishes nothing and ends the session. When
  // `verify` is set and fails, publishes nothing, ends the session and
  // returns its error.
  StatusOr<ObjectInfo> Commit(const std::string& id, const std::string& expected_sha256_hex,
                              const Verifier& verify = nullptr);

  // Ends the session and drops its bytes.
  Status Abort(const std::string& id);

  // Commits so far whose digest had to be taken by reading the staged bytes
  // back (tests).
  uint64_t rehashed_commits_for_testing() const;

 private:
  // A session's running SHA-256 over its first `offset_bytes` bytes.
  struct Running {
    uint64_t offset_bytes = 0;
    std::unique_ptr<crypto::Sha256Hasher> hasher;
  };
  UploadSessions(const Options& options, ObjectStore* store) : options_(options), store_(store) {}
  // Marks `id` busy; ABORTED if it already is.
  Status Acquire(const std::string& id);
  void Release(const std::string& id);
  // Takes the running hash of `id` out of the map (empty if none).
  Running TakeRunning(const std::string& id);
  void PutRunning(const std::string& id, Running running);

  const Options options_;
  ObjectStore* const store_;
  mutable std::mutex mu_;
  std::set<std::string> busy_;
  std::map<std::string, Running> running_;
  uint64_t rehashed_commits_ = 0;
};

}  // namespace vmseal::store

#endif  // VMSEAL_STORE_UPLOAD_SESSIONS_H_
