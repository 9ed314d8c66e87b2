#include "csp/images.h"

#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>

#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/x509.h"

namespace vmseal::csp {
namespace {

Status CheckPrincipal(const Principal& who) {
  if (who.customer_id.empty()) return UnauthenticatedError("not logged in");
  return OkStatus();
}

Status CheckName(const std::string& name) {
  if (name.empty() || name.size() > 128) {
    return InvalidArgumentError("image name must be 1 to 128 characters");
  }
  for (char c : name) {
    if (c < 0x20 || c > 0x7e) return InvalidArgumentError("image name must be printable ASCII");
  }
  return OkStatus();
}

ImageInfo ToInfo(const ImageRecord& r) {
  ImageInfo info;
  info.image_id = r.image_id;
  info.name = r.name;
  info.size_bytes = r.size_bytes;
  info.sha256_hex = r.sha256_hex;
  info.created_unix = r.created_unix;
  info.object_key = r.object_key;
  info.tagged_image_id = r.tagged_image_id;
  auto policy = ReleasePolicyFromJson(r.policy_json);
  if (policy.ok()) info.policy = *policy;
  return info;
}

// The package must be sealed for the uploader: the tag's tenant is the
// customer's id and its key id names the customer's key. PERMISSION_DENIED
// "tenant_mismatch: ..." naming both otherwise.
// `versions`: every version of the customer's key as the KMS lists them
// (kms/key_versions.h); a package sealed to any of them is the customer's.
Status CheckPackageOwner(const VerifiedPackage& p, const CustomerRecord& uploader,
                         const std::vector<CustomerKey>& versions) {
  std::string key_ids = uploader.key_id;
  bool key_ok = !uploader.key_id.empty() && p.key_id == uploader.key_id;
  auto spki = crypto::KeyIdOfPem(uploader.public_key_pem);
  if (spki.ok()) {
    key_ids += " or sha256:" + *spki;
    key_ok = key_ok || p.key_id == "sha256:" + *spki;
  }
  for (const CustomerKey& v : versions) {
    if (v.version < 2) continue;
    auto id = crypto::KeyIdOfPem(v.public_key_pem);
    if (!id.ok()) continue;
    key_ids += " or sha256:" + *id;
    key_ok = key_ok || p.key_id == "sha256:" + *id || p.key_id == v.key_id;
  }
  if (p.tenant != uploader.customer_id || !key_ok) {
    return PermissionDeniedError("tenant_mismatch: the package is sealed for tenant '" + p.tenant +
                                 "' with key '" + p.key_id + "', but the uploader is tenant '" +
                                 uploader.customer_id + "' with key '" + key_ids + "'");
  }
  return OkStatus();
}

// The package must be signed by the uploader's registered signing key,
// which the portal learns from the KMS each time (and checks: certified by
// the KMS CA for this tenant, for package signing, for that key).
// PERMISSION_DENIED "unsigned_package: ..." or "signer_mismatch: ...".
Status CheckPackageSigner(const VerifiedPackage& p, const std::string& tenant, KmsClient* kms) {
  if (p.signer_key_id.empty()) {
    return PermissionDeniedError("unsigned_package: the package carries no signature (.cert); "
                                 "seal it with your signing key (vmseal seal signs by default)");
  }
  if (kms == nullptr) {
    return FailedPreconditionError("signer_mismatch: the portal has no source of registered "
                                   "signing keys");
  }
  auto registered = kms->GetSigningKey(tenant);
  if (!registered.ok()) {
    if (registered.status().code() == StatusCode::kNotFound) {
      return PermissionDeniedError("signer_mismatch: tenant '" + tenant +
                                   "' has no registered signing key (vmseal customer "
                                   "register-signing-key)");
    }
    return Status(registered.status().code(), "KMS: " + registered.status().message());
  }
  auto roots = crypto::Certificate::ParsePemBundle(kms->CaCertificatePem());
  auto cert = crypto::Certificate::FromPem(registered->cert_pem);
  if (!roots.ok() || !cert.ok()) return DataLossError("KMS signing certificate is unreadable");
  crypto::VerifyOptions vo;
  auto key = cert->GetPublicKey();
  const uint32_t eku = X509_get_extended_key_usage(cert->x509());
  if (!crypto::VerifyCertificateChain(*cert, *roots, vo).ok() || !key.ok() ||
      key->KeyId() != registered->key_id || cert->SubjectCommonName() != tenant ||
      eku == UINT32_MAX || (eku & XKU_CODE_SIGN) == 0) {
    return DataLossError("the KMS's signing certificate for tenant '" + tenant +
                         "' does not verify against the KMS CA");
  }
  if (p.signer_key_id != registered->key_id) {
    return PermissionDeniedError("signer_mismatch: the package is signed by key " + p.signer_key_id +
                                 ", tenant '" + tenant + "' registered signing key " +
                                 registered->key_id);
  }
  return OkStatus();
}

UploadState ToState(const store::UploadSession& s) {
  return UploadState{s.id, s.offset_bytes, s.max_size_bytes};
}

}  // namespace

std::string CustomerImagePrefix(const std::string& customer_id) {
  return "images/" + customer_id + "/";
}

StatusOr<std::unique_ptr<ImageService>> ImageService::Create(
    const Options& options, PortalDb* db, store::ObjectStore* store,
    store::UploadSessions* uploads, const PackageVerifier* verifier, const Clock* clock) {
  if (db == nullptr || store == nullptr || uploads == nullptr || verifier == nullptr ||
      clock == nullptr) {
    return InvalidArgumentError("image service needs a database, store, uploads, verifier, clock");
  }
  if (options.max_image_bytes == 0 || options.max_customer_bytes == 0) {
    return InvalidArgumentError("image quotas must be positive");
  }
  return std::unique_ptr<ImageService>(
      new ImageService(options, db, store, uploads, verifier, clock));
}

StatusOr<store::UploadSession> ImageService::OwnedUpload(const Principal& who,
                                                         const std::string& id) {
  RETURN_IF_ERROR(CheckPrincipal(who));
  auto s = uploads_->Get(id);
  if (!s.ok() || !s->key.starts_with(CustomerImagePrefix(who.customer_id))) {
    if (s.ok() || s.status().code() == StatusCode::kNotFound) {
      return NotFoundError("no upload session");
    }
    return s.status();
  }
  return s;
}

StatusOr<UploadState> ImageService::BeginUpload(const Principal& who,
                                                const BeginUploadRequest& /*request*/) {
  RETURN_IF_ERROR(CheckPrincipal(who));
  ASSIGN_OR_RETURN(auto images, db_->ListImages(who.customer_id));
  uint64_t used = 0;
  for (const auto& i : images) used += i.size_bytes;
  if (used >= options_.max_customer_bytes) {
    return ResourceExhaustedError("customer storage quota of " +
                                  std::to_string(options_.max_customer_bytes) +
                                  " bytes is used up");
  }
  store::PutOptions quota;
  quota.max_size_bytes = std::min(options_.max_image_bytes, options_.max_customer_bytes - used);
  const std::string image_id = "img-" + crypto::HexEncode(crypto::RandomBytes(8));
  ASSIGN_OR_RETURN(auto s, uploads_->Begin(CustomerImagePrefix(who.customer_id) + image_id, quota));
  return ToState(s);
}

StatusOr<UploadState> ImageService::GetUpload(const Principal& who, const std::string& upload_id) {
  ASSIGN_OR_RETURN(auto s, OwnedUpload(who, upload_id));
  return ToState(s);
}

UploadHold& UploadHold::operator=(UploadHold&& other) noexcept {
  if (this != &other) {
    Release();
    db_ = std::exchange(other.db_, nullptr);
    id_ = std::move(other.id_);
  }
  return *this;
}

UploadHold::~UploadHold() { Release(); }

void UploadHold::Release() {
  if (db_ == nullptr) return;
  Status s = db_->UnlockUpload(id_);
  // A connection that broke took the lock with it: nothing is left held.
  if (!s.ok()) spdlog::warn("upload {}: releasing its lock: {}", id_, s.ToString());
  db_ = nullptr;
}

StatusOr<UploadHold> ImageService::HoldUpload(const Principal& who, const std::string& upload_id) {
  RETURN_IF_ERROR(OwnedUpload(who, upload_id).status());
  auto taken = db_->TryLockUpload(upload_id);
  if (!taken.ok()) {
    spdlog::error("upload {}: cannot take its lock: {}", upload_id, taken.status().ToString());
    return UnavailableError("store_unavailable: the upload cannot be locked; retry");
  }
  if (!*taken) {
    return AbortedError(
        "upload session is busy: another portal replica is appending to it or committing it; "
        "retry");
  }
  return UploadHold(db_, upload_id);
}

StatusOr<UploadState> ImageService::AppendUpload(const Principal& who,
                                                 const std::string& upload_id,
                                                 uint64_t offset_bytes, store::Reader& data) {
  ASSIGN_OR_RETURN(UploadHold hold, HoldUpload(who, upload_id));
  ASSIGN_OR_RETURN(auto s, uploads_->Append(upload_id, offset_bytes, data));
  return ToState(s);
}

StatusOr<ImageInfo> ImageService::CommitUpload(const Principal& who,
                                               const CommitUploadRequest& request) {
  ASSIGN_OR_RETURN(UploadHold hold, HoldUpload(who, request.upload_id));
  ASSIGN_OR_RETURN(auto session, OwnedUpload(who, request.upload_id));
  RETURN_IF_ERROR(CheckName(request.name));
  ASSIGN_OR_RETURN(auto images, db_->ListImages(who.customer_id));
  uint64_t used = 0;
  for (const auto& i : images) used += i.size_bytes;
  if (used + session.offset_bytes > options_.max_customer_bytes) {
    (void)uploads_->Abort(request.upload_id);
    return ResourceExhaustedError("customer storage quota of " +
                                  std::to_string(options_.max_customer_bytes) + " bytes exceeded");
  }
  VerifiedPackage verified;
  // Checked before anything is published: a refused package leaves no
  // object, no session and no staged bytes.
  auto verify = [&](const RandomAccessFile& content, const std::string& local_path) -> Status {
    ASSIGN_OR_RETURN(verified, verifier_->Verify(content, local_path));
    if (verified.tenant.empty()) return OkStatus();  // no tag read (package_verifier.h)
    ASSIGN_OR_RETURN(CustomerRecord uploader, db_->FindCustomerById(who.customer_id));
    std::vector<CustomerKey> versions;
    if (options_.signing_keys != nullptr) {
      auto listed = options_.signing_keys->ListCustomerKeys(uploader.customer_id);
      if (listed.ok()) {
        versions = *std::move(listed);
      } else if (listed.status().code() != StatusCode::kUnimplemented) {
        return listed.status();
      }
    }
    RETURN_IF_ERROR(CheckPackageOwner(verified, uploader, versions));
    return CheckPackageSigner(verified, uploader.customer_id, options_.signing_keys);
  };
  auto object = uploads_->Commit(request.upload_id, request.sha256_hex, verify);
  if (!object.ok()) {
    spdlog::info("image upload rejected customer={} upload={}: {}", who.customer_id,
                 request.upload_id, object.status().ToString());
    return object.status();
  }
  ImageRecord record;
  record.customer_id = who.customer_id;
  record.image_id = object->key.substr(CustomerImagePrefix(who.customer_id).size());
  record.name = request.name;
  record.object_key = object->key;
  record.size_bytes = object->size_bytes;
  record.sha256_hex = object->sha256_hex;
  record.policy_json = ReleasePolicyToJson(request.policy);
  record.created_unix = clock_->NowUnixSeconds();
  record.tagged_image_id = verified.tagged_image_id;
  Status inserted = db_->InsertImage(record);
  if (!inserted.ok()) {
    (void)store_->Delete(object->key);
    return inserted;
  }
  spdlog::info("image listed customer={} image={} tag={} size={} disks={}", who.customer_id,
               record.image_id, record.tagged_image_id, record.size_bytes, verified.disk_count);
  ImageInfo info = ToInfo(record);
  if (!verified.tenant.empty()) {
    info.key_id = verified.key_id;
    info.signed_texts = std::move(verified.signed_texts);
  }
  return info;
}

StatusOr<ImageInfo> ImageService::Upload(const Principal& who, CommitUploadRequest request,
                                         store::Reader& data) {
  RETURN_IF_ERROR(CheckName(request.name));
  ASSIGN_OR_RETURN(UploadState state, BeginUpload(who, {}));
  auto appended = AppendUpload(who, state.upload_id, 0, data);
  if (!appended.ok()) {
    (void)uploads_->Abort(state.upload_id);
    return appended.status();
  }
  request.upload_id = state.upload_id;
  return CommitUpload(who, request);
}

StatusOr<std::vector<ImageInfo>> ImageService::ListImages(const Principal& who) {
  RETURN_IF_ERROR(CheckPrincipal(who));
  ASSIGN_OR_RETURN(auto records, db_->ListImages(who.customer_id));
  std::vector<ImageInfo> out;
  for (const auto& r : records) out.push_back(ToInfo(r));
  return out;
}

StatusOr<ImageInfo> ImageService::GetImage(const Principal& who, const std::string& image_id) {
  RETURN_IF_ERROR(CheckPrincipal(who));
  ASSIGN_OR_RETURN(auto record, db_->FindImage(who.customer_id, image_id));
  return ToInfo(record);
}

StatusOr<std::unique_ptr<RandomAccessFile>> ImageService::OpenImage(const Principal& who,
                                                                    const std::string& image_id) {
  ASSIGN_OR_RETURN(ImageInfo info, GetImage(who, image_id));
  return store_->Get(info.object_key);
}

Status ImageService::DeleteImage(const Principal& who, const std::string& image_id) {
  ASSIGN_OR_RETURN(ImageInfo info, GetImage(who, image_id));
  RETURN_IF_ERROR(db_->DeleteImage(who.customer_id, image_id));
  Status s = store_->Delete(info.object_key);
  if (!s.ok() && s.code() != StatusCode::kNotFound) return s;
  return OkStatus();
}

}  // namespace vmseal::csp
