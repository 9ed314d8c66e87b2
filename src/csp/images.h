// Sealed images of each customer: streaming, resumable, quota-bound upload;
// verification before listing; list, get, download, delete. Every method
// takes the caller's Principal and only ever touches that customer's images;
// another customer's image is indistinguishable from a missing one.
#ifndef VMSEAL_CSP_IMAGES_H_
#define VMSEAL_CSP_IMAGES_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "csp/accounts.h"
#include "csp/clock.h"
#include "csp/kms_client.h"
#include "csp/package_verifier.h"
#include "csp/policy.h"
#include "csp/portal_db.h"
#include "store/object_store.h"
#include "store/upload_sessions.h"

namespace vmseal::csp {

struct ImageInfo {
  std::string image_id;
  std::string name;
  uint64_t size_bytes = 0;
  std::string sha256_hex;
  ReleasePolicy policy;
  int64_t created_unix = 0;
  // Object-store key of the package (hosts fetch it).
  std::string object_key;
  // The image id in the package's encryption tag (what the KMS label names).
  std::string tagged_image_id;
  // Set by CommitUpload only (not stored): the tag's key id when the tag's
  // tenant and key were checked against the uploader, for registering the
  // image at the KMS; empty when the verifier read no tag.
  std::string key_id;
  // Set by CommitUpload only (not stored): the package's signed metadata,
  // which the KMS registration carries (empty for an unsigned package).
  ovf::SignedPackageTexts signed_texts;
};

struct BeginUploadRequest {};
struct UploadState {
  std::string upload_id;
  // Bytes received so far: where the next append starts.
  uint64_t offset_bytes = 0;
  // Largest total size the upload may reach.
  uint64_t max_size_bytes = 0;
};

struct CommitUploadRequest {
  std::string upload_id;
  // Display name: 1..128 printable ASCII characters.
  std::string name;
  // Hex SHA-256 the client computed; empty to skip the check.
  std::string sha256_hex;
  ReleasePolicy policy;
};

// One request's hold on an upload session across portal replicas
// (PortalDb::TryLockUpload); released when destroyed. Move-only.
class UploadHold {
 public:
  UploadHold() = default;
  UploadHold(UploadHold&& other) noexcept
      : db_(std::exchange(other.db_, nullptr)), id_(std::move(other.id_)) {}
  UploadHold& operator=(UploadHold&& other) noexcept;
  UploadHold(const UploadHold&) = delete;
  UploadHold& operator=(const UploadHold&) = delete;
  ~UploadHold();

 private:
  friend class ImageService;
  UploadHold(PortalDb* db, std::string id) : db_(db), id_(std::move(id)) {}
  void Release();
  PortalDb* db_ = nullptr;
  std::string id_;
};

// Thread-safe.
class ImageService {
 public:
  struct Options {
    // Largest single package. Default 64 GiB.
    uint64_t max_image_bytes = 64ull << 30;
    // Largest total of one customer's images. Default 256 GiB.
    uint64_t max_customer_bytes = 256ull << 30;
    // Where the uploader's registered signing key comes from: the KMS
    // (KmsClient::GetSigningKey, its certificate checked against the KMS
    // CA). A package whose tag the verifier read is listed only if it is
    // signed by that key (unsigned_package, signer_mismatch otherwise); with
    // no client such a package is refused. Not owned; default none.
    KmsClient* signing_keys = nullptr;
  };
  // All pointers must outlive the object.
  static StatusOr<std::unique_ptr<ImageService>> Create(const Options& options, PortalDb* db,
                                                        store::ObjectStore* store,
                                                        store::UploadSessions* uploads,
                                                        const PackageVerifier* verifier,
                                                        const Clock* clock);

  // Starts a resumable upload; its quota is the smaller of the image limit
  // and what is left of the customer's.
  StatusOr<UploadState> BeginUpload(const Principal& who, const BeginUploadRequest& request);
  // The upload's state (after a broken connection, to resume).
  StatusOr<UploadState> GetUpload(const Principal& who, const std::string& upload_id);
  // Holds the upload for one request (an HTTP PUT whose body arrives in
  // pieces, each an AppendUpload): while held, an append or commit of the
  // same upload through another portal replica is ABORTED "upload session is
  // busy: ..." (409), so two appends at the same instant through two
  // replicas cannot interleave. NOT_FOUND as GetUpload; UNAVAILABLE
  // "store_unavailable: ..." when the database cannot be asked. Within one
  // replica, store::UploadSessions serialises the calls themselves.
  StatusOr<UploadHold> HoldUpload(const Principal& who, const std::string& upload_id);
  // Appends `data` at `offset_bytes` (see UploadSessions::Append), holding
  // the upload for the call (HoldUpload).
  StatusOr<UploadState> AppendUpload(const Principal& who, const std::string& upload_id,
                                     uint64_t offset_bytes, store::Reader& data);
  // Verifies the package and lists it as an image, holding the upload for
  // the call (HoldUpload). A package that fails verification is dropped
  // with the verifier's error.
  StatusOr<ImageInfo> CommitUpload(const Principal& who, const CommitUploadRequest& request);
  // Begin + Append + Commit in one call (a non-resumable stream).
  StatusOr<ImageInfo> Upload(const Principal& who, CommitUploadRequest request,
                             store::Reader& data);

  StatusOr<std::vector<ImageInfo>> ListImages(const Principal& who);
  // NOT_FOUND "no such image" if missing or another customer's.
  StatusOr<ImageInfo> GetImage(const Principal& who, const std::string& image_id);
  // The sealed package for download (ranged reads).
  StatusOr<std::unique_ptr<RandomAccessFile>> OpenImage(const Principal& who,
                                                        const std::string& image_id);
  Status DeleteImage(const Principal& who, const std::string& image_id);

 private:
  ImageService(const Options& options, PortalDb* db, store::ObjectStore* store,
               store::UploadSessions* uploads, const PackageVerifier* verifier,
               const Clock* clock)
      : options_(options), db_(db), store_(store), uploads_(uploads), verifier_(verifier),
        clock_(clock) {}
  // The session, if it belongs to `who`; NOT_FOUND otherwise.
  StatusOr<store::UploadSession> OwnedUpload(const Principal& who, const std::string& id);

  const Options options_;
  PortalDb* const db_;
  store::ObjectStore* const store_;
  store::UploadSessions* const uploads_;
  const PackageVerifier* const verifier_;
  const Clock* const clock_;
};

// Object-store key prefix of a customer's packages: "images/<customer_id>/".
std::string CustomerImagePrefix(const std::string& customer_id);

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_IMAGES_H_
