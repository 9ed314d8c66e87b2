// An ObjectStore over an S3-compatible service (AWS S3, Ceph radosgw, MinIO,
// s3rver), through libcurl. Requests are signed by libcurl's
// CURLOPT_AWS_SIGV4; this file never computes a signature itself.
#ifndef VMSEAL_STORE_S3_STORE_H_
#define VMSEAL_STORE_S3_STORE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "base/secret_bytes.h"
#include "store/object_store.h"

namespace vmseal::store {

// Smallest part size S3 accepts for a non-final part.
inline constexpr uint64_t kS3MinPartSizeBytes = 5ull << 20;

// Objects are addressed path-style: <endpoint>/<bucket>/<key>. The SHA-256 of
// each object is kept in a companion object ".vmseal-sha256/<key>" (a key no
// caller can use, see ValidateKey), written after the object; an object is
// visible only once its companion exists, so a crash between the two leaves
// nothing visible. Sources up to part_size_bytes go in one PUT; larger ones
// use a multipart upload with one part buffer in memory, aborted on failure
// (S3 never shows an incomplete multipart object).
// List returns sizes but leaves sha256_hex empty (use Stat).
//
// Stagings live in the bucket, so every portal replica on it shares them:
//   .vmseal-staging/<id>.json  {"key", "meta", "upload", "parts":
//                              [{"n", "etag", "size"}], "tail", "sealed"}
//   .vmseal-staging/<id>.tail  the bytes after the last whole part
// Each append streams whole parts (part_size_bytes) into a multipart upload
// on the final key, then writes the remainder as the tail object and the
// JSON last: the JSON is the staging's durable state (a part uploaded but
// not yet recorded is sent again by the resuming append). StageSeal uploads
// the tail as the last part and completes the multipart upload: the object
// exists but stays invisible (no digest companion) while it is checked;
// StagePublish writes the companion (no copy). A staging of less than one
// part is put in one PUT at seal. The bucket has no lock: two appends to
// one staging through two replicas at once are not excluded (the client
// sends one at a time; UploadSessions excludes them within a process).
class S3ObjectStore final : public ObjectStore {
 public:
  struct Options {
    // "http://host:port" or "https://host:port", no trailing slash. Required.
    std::string endpoint;
    // Existing bucket. Required.
    std::string bucket;
    // SigV4 region. Default "us-east-1".
    std::string region = "us-east-1";
    // Access key id (not secret). Required.
    std::string access_key_id;
    // Secret access key. Required.
    SecretBytes secret_access_key;
    // Multipart part size, >= kS3MinPartSizeBytes; also the single-PUT
    // threshold and the memory bound of Put. Default 8 MiB.
    uint64_t part_size_bytes = 8ull << 20;
    // CA bundle for an https endpoint; empty means the system store.
    std::string ca_file;
    // Per-request timeout. Default 300 s.
    long timeout_seconds = 300;
  };

  static StatusOr<std::unique_ptr<S3ObjectStore>> Create(Options options);
  ~S3ObjectStore() override;

  StatusOr<ObjectInfo> Put(const std::string& key, Reader& source,
                           const PutOptions& options) override;
  StatusOr<std::unique_ptr<RandomAccessFile>> Get(const std::string& key) override;
  StatusOr<ObjectInfo> Stat(const std::string& key) override;
  StatusOr<std::vector<ObjectInfo>> List(const std::string& prefix) override;
  Status Delete(const std::string& key) override;

  Status StageCreate(const std::string& id, const std::string& key,
                     const std::string& meta) override;
  StatusOr<StagedInfo> StageStat(const std::string& id) override;
  StatusOr<uint64_t> StageAppend(const std::string& id, uint64_t offset_bytes, Reader& source,
                                 uint64_t max_size_bytes,
                                 const StagedBytesObserver& observe) override;
  StatusOr<StagedContent> StageSeal(const std::string& id) override;
  StatusOr<ObjectInfo> StagePublish(const std::string& id, const std::string& sha256_hex) override;
  Status StageRemove(const std::string& id) override;

  // Creates the bucket named in Options; OK if this account already owns it.
  Status CreateBucket();

  class Client;  // internal: one signed HTTP request at a time

 private:
  explicit S3ObjectStore(std::unique_ptr<Client> client);
  struct Staging;
  StatusOr<Staging> ReadStaging(const std::string& id);
  Status WriteStaging(const std::string& id, const Staging& s);
  const std::unique_ptr<Client> client_;
};

}  // namespace vmseal::store

#endif  // VMSEAL_STORE_S3_STORE_H_
