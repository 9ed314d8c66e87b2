// ObjectStore: where the portal keeps sealed image packages. Two backends
// implement it: an embedded filesystem store (fs_store.h, the default) and an
// S3-compatible store (s3_store.h). Packages are already encrypted by the
// customer; the store never sees plaintext or keys.
#ifndef VMSEAL_STORE_OBJECT_STORE_H_
#define VMSEAL_STORE_OBJECT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/env.h"
#include "base/status.h"

namespace vmseal::store {

// Longest accepted object key, in bytes.
inline constexpr size_t kMaxKeyBytes = 512;

// Checks an object key: 1..kMaxKeyBytes bytes of [A-Za-z0-9._-] in
// '/'-separated segments; no empty segment, no segment starting with '.'
// (which also excludes "." and ".."), no leading or trailing '/'. Keys never
// need URL or path escaping. Returns INVALID_ARGUMENT otherwise.
Status ValidateKey(std::string_view key);

// What the store knows about a published object.
struct ObjectInfo {
  std::string key;
  uint64_t size_bytes = 0;
  // Lowercase hex SHA-256 of the content, computed by the store while the
  // object was written. Empty in List results of backends that document it.
  std::string sha256_hex;
};

// A source of bytes read front to back (an HTTP request body, a file).
class Reader {
 public:
  virtual ~Reader() = default;
  // Reads up to out.size() bytes; returns 0 only at end of stream.
  virtual StatusOr<size_t> Read(std::span<uint8_t> out) = 0;
};

// Reads a RandomAccessFile front to back from `offset`. Does not own `file`.
class RandomAccessFileReader final : public Reader {
 public:
  explicit RandomAccessFileReader(const RandomAccessFile* file, uint64_t offset = 0)
      : file_(file), offset_(offset) {}
  StatusOr<size_t> Read(std::span<uint8_t> out) override;

 private:
  const RandomAccessFile* const file_;
  uint64_t offset_;
};

// Reads an in-memory string (tests, small objects). Does not copy `data`.
class StringReader final : public Reader {
 public:
  explicit StringReader(std::string_view data) : data_(data) {}
  StatusOr<size_t> Read(std::span<uint8_t> out) override;

 private:
  std::string_view data_;
};

// Options of one Put.
struct PutOptions {
  // Largest accepted object in bytes; a larger source fails the Put with
  // RESOURCE_EXHAUSTED "quota" and publishes nothing. 0 means no limit.
  uint64_t max_size_bytes = 0;
};

// What a staging (ObjectStore::Stage*) holds so far.
struct StagedInfo {
  // Key the staged object is published under.
  std::string key;
  // The caller's small text, stored with the staging (UploadSessions keeps
  // its quota there).
  std::string meta;
  // Bytes appended and durable so far: where the next append must start.
  uint64_t size_bytes = 0;
};

// Sees each run of bytes StageAppend takes from its source, in order, before
// the call returns (UploadSessions hashes them as they arrive). Bytes seen by
// a call that then fails may or may not have been kept.
using StagedBytesObserver = std::function<void(std::span<const uint8_t>)>;

// A staging's complete content, opened for checking before it is published.
struct StagedContent {
  std::unique_ptr<RandomAccessFile> file;
  // The same bytes as a local file, or empty when the store keeps them
  // elsewhere (S3).
  std::string local_path;
};

// A flat namespace of immutable objects addressed by key.
//
// Guarantees (both backends): an object becomes visible to Get/Stat/List only
// once Put has returned OK, with all of its bytes; a Put that fails (source
// error, quota, full disk, crash) leaves any previous object under the key
// unchanged. Put replaces an existing object atomically. Memory use of Put is
// bounded and independent of the object size.
//
// Thread-safe: all methods may be called concurrently.
class ObjectStore {
 public:
  virtual ~ObjectStore() = default;

  // Streams `source` to its end into `key`. Returns the published object.
  virtual StatusOr<ObjectInfo> Put(const std::string& key, Reader& source,
                                   const PutOptions& options) = 0;

  // Opens the object for ranged reads. The returned file reads the content
  // the object had when opened or fails; NOT_FOUND if there is no object.
  virtual StatusOr<std::unique_ptr<RandomAccessFile>> Get(const std::string& key) = 0;

  // Size and SHA-256 of one object; NOT_FOUND if there is none.
  virtual StatusOr<ObjectInfo> Stat(const std::string& key) = 0;

  // The objects whose key starts with `prefix` (any string, "" for all),
  // sorted by key.
  virtual StatusOr<std::vector<ObjectInfo>> List(const std::string& prefix) = 0;

  // Removes the object; NOT_FOUND if there is none.
  virtual Status Delete(const std::string& key) = 0;

  // --- Stagings: an object built by appends, then published without a copy.
  // A staging lives in the store itself, so every process that shares the
  // store (portal replicas on one directory or one bucket) sees it: an
  // upload begun through one process resumes and publishes through another.
  // `id` names the staging: 32 lowercase hex characters (the caller's random
  // upload id); anything else is NOT_FOUND "no upload session". Nothing
  // staged is visible to Get/Stat/List before StagePublish.

  // Starts an empty staging for `key` (validated) with `meta` (at most
  // 4 KiB). ALREADY_EXISTS if `id` is in use or `key` already holds an
  // object.
  virtual Status StageCreate(const std::string& id, const std::string& key,
                             const std::string& meta) = 0;
  // Key, meta and durable size; NOT_FOUND "no upload session" if none.
  virtual StatusOr<StagedInfo> StageStat(const std::string& id) = 0;
  // Appends `source` read to its end at `offset_bytes`, which must be the
  // durable size (else FAILED_PRECONDITION "offset"). RESOURCE_EXHAUSTED
  // "quota" once the total would exceed `max_size_bytes` (0 = none). Bytes
  // read before an error are kept and durable where the backend can (the
  // next StageStat tells where to resume). ABORTED "busy" while another
  // append or publish of the same staging runs, in any process (fs: a lock
  // on the staged file; S3: see s3_store.h). Returns the new durable size.
  virtual StatusOr<uint64_t> StageAppend(const std::string& id, uint64_t offset_bytes,
                                         Reader& source, uint64_t max_size_bytes,
                                         const StagedBytesObserver& observe) = 0;
  // Ends appending and opens the complete content for checking. After this
  // the staging takes no more appends; it is published or removed.
  virtual StatusOr<StagedContent> StageSeal(const std::string& id) = 0;
  // Publishes the staged bytes under the staging's key as one object whose
  // SHA-256 is `sha256_hex` (the caller hashed the bytes as they arrived or
  // from StageSeal's content) and ends the staging. No byte is copied (fs:
  // a rename; S3: the completed multipart upload gets its digest
  // companion). The staging must have been sealed.
  virtual StatusOr<ObjectInfo> StagePublish(const std::string& id,
                                            const std::string& sha256_hex) = 0;
  // Ends the staging and drops its bytes; NOT_FOUND if none.
  virtual Status StageRemove(const std::string& id) = 0;
};

// NOT_FOUND "no upload session" unless `id` is 32 lowercase hex characters.
Status ValidateStageId(std::string_view id);

}  // namespace vmseal::store

#endif  // VMSEAL_STORE_OBJECT_STORE_H_
