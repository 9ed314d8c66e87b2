// Resumable uploads over any ObjectStore: a client that loses its connection
// asks for the session's offset and appends from there. Bytes are staged in a
// local directory and streamed into the store on Commit, so nothing is
// visible in the store before the upload is complete.
#ifndef VMSEAL_STORE_UPLOAD_SESSIONS_H_
#define VMSEAL_STORE_UPLOAD_SESSIONS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

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
// fails with ABORTED); different sessions proceed in parallel.
class UploadSessions {
 public:
  struct Options {
    // Staging directory, created (0700) if missing. Sessions persist in it
    // across restarts. Required.
    std::string staging_dir;
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
  // RESOURCE_EXHAUSTED "quota" when the total exceeds the quota.
  StatusOr<UploadSession> Append(const std::string& id, uint64_t offset_bytes, Reader& data);

  // Checks the complete staged content before it is published; an error
  // stops the Commit. `local_path` names the staged file on local disk (for
  // checkers that need a path); it must not be modified.
  using Verifier =
      std::function<Status(const RandomAccessFile& content, const std::string& local_path)>;

  // Publishes the staged bytes under the session's key and ends the session.
  // When `expected_sha256_hex` is not empty and differs from the content,
  // fails with DATA_LOSS "digest" and publishes nothing (the session stays).
  // When `verify` is set and fails, publishes nothing, ends the session and
  // returns its error.
  StatusOr<ObjectInfo> Commit(const std::string& id, const std::string& expected_sha256_hex,
                              const Verifier& verify = nullptr);

  // Ends the session and drops its bytes.
  Status Abort(const std::string& id);

 private:
  UploadSessions(std::string dir, ObjectStore* store) : dir_(std::move(dir)), store_(store) {}
  // Marks `id` busy; ABORTED if it already is. Returns a path prefix.
  Status Acquire(const std::string& id);
  void Release(const std::string& id);
  StatusOr<UploadSession> Load(const std::string& id);

  const std::string dir_;
  ObjectStore* const store_;
  std::mutex mu_;
  std::set<std::string> busy_;
};

}  // namespace vmseal::store

#endif  // VMSEAL_STORE_UPLOAD_SESSIONS_H_
