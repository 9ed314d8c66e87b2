// `vmseal customer export IMAGE -o FILE.ova`: the customer takes a copy of
// their package from the portal, verified against their own signature
// before it is written (docs/protocol.md §8).
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "cli/customer_cert.h"
#include "cli/customer_flags.h"
#include "cli/portal_http.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "json/json.h"
#include "kms/migration.h"
#include "ovf/descriptor.h"
#include "ovf/package.h"
#include "ovf/package_format.h"
#include "ovf/signature.h"

namespace vmseal::cli {
namespace {

using json = nlohmann::json;

struct ExportFlags {
  std::string image;
  std::string out;
  std::string kms_ca;
  std::string signing_key;
};

// The package at `path` is one the customer signed: its manifest digests
// every file (Package::Open), its .cert verifies over the manifest, the
// signer chains to the KMS CA the customer pinned, is certified for this
// customer and holds exactly the customer's local signing key; its tag names
// this customer.
Status VerifyOwnPackage(const std::string& path, const std::vector<crypto::Certificate>& roots,
                        const std::string& customer_id, const crypto::PublicKey& signing_key,
                        std::unique_ptr<ovf::Package>* opened) {
  ovf::PackageOpenOptions po;
  po.require_signature = true;
  auto pkg = ovf::Package::Open(Env::Default(), path, po);
  if (!pkg.ok()) {
    return Status(pkg.status().code(), "the portal's package does not verify: " +
                                           pkg.status().message());
  }
  const ovf::PackageSignature& sig = (*pkg)->signature();
  auto signer = sig.signer.GetPublicKey();
  if (!signer.ok() || signer->KeyId() != signing_key.KeyId()) {
    return DataLossError("signer_mismatch: the portal's package is signed by key " +
                         (signer.ok() ? signer->KeyId() : std::string("(unreadable)")) +
                         ", not your signing key " + signing_key.KeyId());
  }
  Status who = ovf::VerifySigner(sig, roots, customer_id);
  if (!who.ok()) return DataLossError(who.message());
  if ((*pkg)->tag().tenant != customer_id) {
    return DataLossError("tenant_mismatch: the package's tag names tenant '" +
                         (*pkg)->tag().tenant + "', not you (" + customer_id + ")");
  }
  *opened = std::move(pkg).value();
  return OkStatus();
}

// Downloads and verifies the package of `ef.image` into `ef.out`; what it
// verified, as JSON. `opened` (if not null) keeps the verified package open.
StatusOr<json> ExportTo(const CustomerFlags& f, const ExportFlags& ef,
                        std::unique_ptr<ovf::Package>* opened) {
  if (ef.out.empty()) return InvalidArgumentError("-o/--out is required");
  if (Env::Default()->FileExists(ef.out)) {
    return AlreadyExistsError(ef.out + " exists; export writes a new file only");
  }
  ASSIGN_OR_RETURN(std::vector<crypto::Certificate> roots, LoadPinnedCa(ef.kms_ca));
  const std::string key_path = ef.signing_key.empty() ? DefaultSigningKeyFile(f) : ef.signing_key;
  auto local = crypto::LoadPrivateKeyFile(key_path);
  if (!local.ok()) {
    return Status(local.status().code(),
                  "your signing key " + key_path + ": " + local.status().message());
  }
  ASSIGN_OR_RETURN(auto c, ConnectCustomer(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, CustomerAuth(f));
  ASSIGN_OR_RETURN(json k, CheckReply(c->Get("/v1/customer/key", auth), "export"));
  const std::string customer_id = k.value("customer_id", "");
  if (customer_id.empty()) return DataLossError("the portal named no customer id");
  // The image's listing first: a clear error for an unknown image.
  ASSIGN_OR_RETURN(json img, CheckReply(c->Get("/v1/images/" + ef.image, auth), "export"));

  // Into a temp file beside the output, which becomes the output only once
  // it verifies; any failure leaves nothing.
  ASSIGN_OR_RETURN(auto file, AtomicOutputFile::Create(Env::Default(), ef.out, 0644));
  crypto::Sha256Hasher hasher;
  Status write_error;
  uint64_t bytes = 0;
  int status = 0;
  auto res = c->Get(
      "/v1/images/" + ef.image + "/package", auth,
      [&](const httplib::Response& r) {
        status = r.status;
        return r.status == 200;
      },
      [&](const char* data, size_t len) {
        auto span = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), len);
        hasher.Update(span);
        bytes += len;
        write_error = file->file()->Append(span);
        return write_error.ok();
      });
  RETURN_IF_ERROR(write_error);
  if (!res) return UnavailableError("export: " + httplib::to_string(res.error()));
  if (status != 200) return CheckReply(res, "export").status();
  RETURN_IF_ERROR(file->file()->Sync());
  std::unique_ptr<ovf::Package> pkg;
  RETURN_IF_ERROR(VerifyOwnPackage(file->temp_path(), roots, customer_id, local->Public(), &pkg));
  const std::string sha = crypto::HexEncode(hasher.Finish());
  if (!img.value("sha256", "").empty() && img.value("sha256", "") != sha) {
    return DataLossError("the package's SHA-256 " + sha + " is not the image's " +
                         img.value("sha256", ""));
  }
  json out = {{"image_id", ef.image},
              {"file", ef.out},
              {"sha256", sha},
              {"size_bytes", bytes},
              {"tag_image_id", pkg->tag().image_id},
              {"tenant", pkg->tag().tenant},
              {"signer_key_id", local->KeyId()},
              {"verified", true}};
  pkg.reset();
  RETURN_IF_ERROR(file->Commit());
  if (opened != nullptr) {
    ovf::PackageOpenOptions po;
    po.require_signature = true;
    po.verify_manifest = false;  // verified above, byte for byte the same file
    ASSIGN_OR_RETURN(*opened, ovf::Package::Open(Env::Default(), ef.out, po));
  }
  return out;
}

Status Export(const CustomerFlags& f, const ExportFlags& ef) {
  ASSIGN_OR_RETURN(json out, ExportTo(f, ef, nullptr));
  const std::string sha = out.value("sha256", "");
  const uint64_t bytes = out.value("size_bytes", uint64_t{0});
  if (f.json) {
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << ef.out << " " << sha << " (" << bytes
              << " bytes; signed by your key, verified against the KMS CA)\n";
  }
  return OkStatus();
}

struct MigrateFlags {
  std::string image;
  std::string kms_ca;          // KMS A's CA (the source package's signer)
  std::string to_portal;       // portal B
  std::string to_ca_cert;      // portal B's TLS CA
  std::string to_session;      // the customer's session at B
  std::string to_kms_ca;       // KMS B's CA, pinned out of band
  std::string signing_key;     // the customer's signing key at A
  std::string work_dir;        // where the exported package and the result go
  std::string to_signing_key;  // the customer's signing key at B
  std::string to_signing_cert; // its certificate from KMS B (fetch-cert)
  std::string to_name;         // the image's name at B
  int64_t lifetime_seconds = 600;
};

// The customer's certificate at B, verified before anything is asked of A:
// it chains to the KMS B CA the customer pinned, certifies exactly the key
// portal B names, and its CN is that key's id (customer_cert.h).
StatusOr<VerifiedCustomerCert> FetchDestination(const MigrateFlags& mf) {
  ASSIGN_OR_RETURN(std::vector<crypto::Certificate> roots, LoadPinnedCa(mf.to_kms_ca));
  CustomerFlags bf;
  bf.portal = mf.to_portal;
  bf.ca_cert = mf.to_ca_cert;
  bf.session_file = mf.to_session;
  ASSIGN_OR_RETURN(auto c, ConnectCustomer(bf));
  ASSIGN_OR_RETURN(httplib::Headers auth, CustomerAuth(bf));
  return FetchVerifiedCustomerCert(*c, auth, roots, "destination certificate",
                                   {.certificate = "the destination certificate",
                                    .ca = "the KMS CA you pinned (--to-kms-ca)",
                                    .portal = "portal B"});
}

Status Migrate(const CustomerFlags& f, const MigrateFlags& mf) {
  if (mf.lifetime_seconds < 1 || mf.lifetime_seconds > kms::kMaxRewrapAuthorizationSeconds) {
    return InvalidArgumentError("--lifetime is 1 to 3600 seconds");
  }
  const std::string dir = mf.work_dir.empty() ? std::string(".") : mf.work_dir;
  const std::string source_path = dir + "/" + mf.image + ".source.ova";
  const std::string result_path = dir + "/" + mf.image + ".rewrap.json";
  const std::string migrated_path = dir + "/" + mf.image + ".migrated.ova";
  const std::string uploaded_path = dir + "/" + mf.image + ".uploaded.json";
  if (Env::Default()->FileExists(uploaded_path)) {
    return AlreadyExistsError(uploaded_path + " exists: the image was migrated already; migrate "
                              "writes new files only (use another --work-dir to migrate again)");
  }
  // A re-run after a failure past the re-wrap (say the upload to B) resumes
  // from the re-wrap it recorded: no second re-wrap is asked of A.
  std::optional<json> recorded;
  if (Env::Default()->FileExists(result_path)) {
    ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), result_path));
    auto parsed = ParseJson(text);
    if (!parsed.ok() || !parsed->is_object() || parsed->value("image_id", "") != mf.image) {
      return DataLossError(result_path + " is not this image's re-wrap record; move it away");
    }
    recorded = *std::move(parsed);
  }
  const std::string b_dir = DirName(mf.to_session);
  const std::string b_key_path =
      mf.to_signing_key.empty() ? b_dir + "/signing-key.pem" : mf.to_signing_key;
  const std::string b_cert_path =
      mf.to_signing_cert.empty() ? b_dir + "/signing-cert.pem" : mf.to_signing_cert;
  ASSIGN_OR_RETURN(crypto::PrivateKey b_signing, crypto::LoadPrivateKeyFile(b_key_path));
  ASSIGN_OR_RETURN(std::string b_chain, ReadFileToString(Env::Default(), b_cert_path));
  // 1. The destination first: an untrusted one stops everything before A is
  //    asked for anything.
  ASSIGN_OR_RETURN(VerifiedCustomerCert dest, FetchDestination(mf));
  // 2. The source package, verified against the customer's own signature.
  const std::string key_path = mf.signing_key.empty() ? DefaultSigningKeyFile(f) : mf.signing_key;
  ASSIGN_OR_RETURN(crypto::PrivateKey signing, crypto::LoadPrivateKeyFile(key_path));
  std::unique_ptr<ovf::Package> pkg;
  // An earlier run's export is fetched and verified again.
  if (Env::Default()->FileExists(source_path)) (void)Env::Default()->RemoveFile(source_path);
  ExportFlags ef{mf.image, source_path, mf.kms_ca, key_path};
  RETURN_IF_ERROR(ExportTo(f, ef, &pkg).status());
  // The package for B keeps the source's key wrap: a destination key of
  // the other type is refused before anything is signed or asked of A.
  const bool source_x25519 = pkg->wrapped_key().algorithm == ovf::kX25519WrapUri;
  if (source_x25519 != (dest.public_key.type() == crypto::KeyType::kX25519)) {
    pkg.reset();
    (void)Env::Default()->RemoveFile(source_path);
    return FailedPreconditionError(
        std::string("key_type_mismatch: the package wraps its key to an ") +
        (source_x25519 ? "X25519" : "RSA") + " key, your key at the destination is " +
        (source_x25519 ? "not X25519" : "not RSA") +
        " (register there with the same --key-algorithm); nothing was asked of the source KMS");
  }
  const ovf::EncryptionTag& tag = pkg->tag();
  // 3. The destination tag: the same image and key version, B's tenant and key.
  ovf::EncryptionTag dest_tag = tag;
  dest_tag.tenant = dest.customer_id;
  dest_tag.key_id = "sha256:" + dest.public_key.KeyId();
  // B's key version (its certificate's); the streams keep the version they
  // were sealed under (streamKeyVersion, package.md §4).
  dest_tag.key_version = dest.version;
  dest_tag.stream_key_version = tag.stream_key_version != 0 ? tag.stream_key_version : tag.key_version;
  if (dest_tag.stream_key_version == dest_tag.key_version) dest_tag.stream_key_version = 0;
  kms::RewrapRequest req;
  kms::RewrapAuthorization& a = req.authorization;
  a.tenant = tag.tenant;
  a.image_id = tag.image_id;
  a.key_version = tag.key_version;
  a.destination_cert_sha256 = crypto::HexEncode(crypto::Sha256(dest.cert.ToDer()));
  a.destination_label = ovf::OaepLabel(dest_tag);
  a.nonce = crypto::HexEncode(crypto::RandomBytes(32));
  a.expires_unix = static_cast<int64_t>(::time(nullptr)) + mf.lifetime_seconds;
  ASSIGN_OR_RETURN(req.signature, crypto::Sign(signing, crypto::SignatureDigest::kSha256,
                                               kms::RewrapAuthorizationMessage(a)));
  req.destination_cert_pem = dest.cert.ToPem();
  req.key_id = tag.key_id;
  req.wrap_algorithm = pkg->wrapped_key().algorithm;
  req.oaep_label = pkg->wrapped_key().oaep_label;
  req.wrapped_key = pkg->wrapped_key().ciphertext;
  // 4. KMS A re-wraps through portal A, or the recorded re-wrap is reused
  //    if it is for this destination (certificate, tenant, label).
  json r;
  if (recorded) {
    if (recorded->value("destination_cert_sha256", "") != a.destination_cert_sha256 ||
        recorded->value("destination_tenant", "") != dest.customer_id ||
        recorded->value("destination_label", "") != crypto::Base64Encode(a.destination_label) ||
        recorded->value("source_tenant", "") != tag.tenant) {
      return FailedPreconditionError("destination_mismatch: " + result_path +
                                     " records a re-wrap for another destination; move it away "
                                     "to ask the source KMS for a new one");
    }
    auto recorded_auth = kms::RewrapAuthorizationFromJson(recorded->value("authorization", json()));
    if (!recorded_auth.ok()) return DataLossError(result_path + ": " + recorded_auth.status().message());
    a = *std::move(recorded_auth);  // what KMS A audited
    r = {{"destination_key_id", dest.public_key.KeyId()},
         {"rewrapped_key", recorded->value("rewrapped_key", "")}};
    // A package of an earlier run may be incomplete: it is made again.
    (void)Env::Default()->RemoveFile(migrated_path);
    if (!f.json) std::cout << "resuming: the re-wrap recorded in " << result_path << " is reused\n";
  } else {
    ASSIGN_OR_RETURN(auto c, ConnectCustomer(f));
    ASSIGN_OR_RETURN(httplib::Headers auth, CustomerAuth(f));
    ASSIGN_OR_RETURN(r, CheckReply(c->Post("/v1/images/" + mf.image + "/rewrap", auth,
                                           kms::RewrapRequestToJson(req).dump(),
                                           "application/json"),
                                   "re-wrap at the source KMS"));
  }
  if (r.value("destination_key_id", "") != dest.public_key.KeyId()) {
    return DataLossError("the source KMS wrapped to key " + r.value("destination_key_id", "") +
                         ", not your destination key " + dest.public_key.KeyId());
  }
  auto rewrapped = crypto::Base64Decode(r.value("rewrapped_key", ""));
  if (!rewrapped.ok() || rewrapped->empty()) return DataLossError("the source KMS sent no re-wrapped key");
  json out = {{"image_id", mf.image},
              {"source_package", source_path},
              {"tag_image_id", tag.image_id},
              {"source_tenant", tag.tenant},
              {"destination_tenant", dest.customer_id},
              {"destination_key_id", dest_tag.key_id},
              {"destination_cert_sha256", a.destination_cert_sha256},
              {"destination_label", crypto::Base64Encode(a.destination_label)},
              {"rewrapped_key", r.value("rewrapped_key", "")},
              {"authorization", kms::RewrapAuthorizationToJson(a)}};
  if (!recorded) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), result_path, out.dump(2) + "\n", 0600));
  }
  out["result_file"] = result_path;
  out["resumed"] = recorded.has_value();
  // 5. The package for B: the new EncryptedKey and tag (B's tenant and key;
  //    the streams keep their context: streamTenant), every disk's
  //    ciphertext unchanged, signed with the customer's signing key at B.
  dest_tag.stream_tenant = tag.stream_tenant.empty() ? tag.tenant : tag.stream_tenant;
  RETURN_IF_ERROR(ovf::RewrapPackage(Env::Default(), *pkg, dest_tag, *rewrapped, b_signing, b_chain,
                                     migrated_path));
  out["migrated_package"] = migrated_path;
  // 6. Uploaded to portal B (which verifies it with KMS B).
  CustomerFlags bf;
  bf.portal = mf.to_portal;
  bf.ca_cert = mf.to_ca_cert;
  bf.session_file = mf.to_session;
  RETURN_IF_ERROR(UploadPackage(bf, migrated_path, mf.to_name.empty() ? tag.image_id : mf.to_name));
  out["uploaded_to"] = mf.to_portal;
  RETURN_IF_ERROR(WriteStringToFileAtomic(
      Env::Default(), uploaded_path,
      json{{"image_id", mf.image}, {"uploaded_to", mf.to_portal}}.dump(2) + "\n", 0600));
  if (f.json) {
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << "image " << tag.image_id << ": data key re-wrapped by the source KMS to your key "
              << dest.public_key.KeyId() << " at " << mf.to_portal << " (" << result_path << ")\n";
  }
  return OkStatus();
}

struct RewrapFlags {
  std::string image;         // the portal's image id
  std::string kms_ca;        // the KMS CA, pinned out of band
  std::string signing_key;   // default signing-key.pem beside the session
  std::string signing_cert;  // default signing-cert.pem beside the session
  std::string work_dir;      // where the exported and the re-wrapped package go
  int64_t lifetime_seconds = 600;
  bool keep_old = false;     // keep the old image at the portal
};

// `customer rewrap IMAGE` (docs/protocol.md §1.3): the image's package moves
// to the customer's newest key version. The KMS re-wraps the data key (the
// customer signs the authorization, its destination their own newest
// certificate, verified against the pinned KMS CA); the package keeps its
// disk ciphertext byte for byte and names the streams' version in
// streamKeyVersion; it is signed again and uploaded, and the old image is
// removed from the portal (its objects only: the KMS's image stays, now
// registered with the newest key).
Status Rewrap(const CustomerFlags& f, const RewrapFlags& rf) {
  if (rf.lifetime_seconds < 1 || rf.lifetime_seconds > kms::kMaxRewrapAuthorizationSeconds) {
    return InvalidArgumentError("--lifetime is 1 to 3600 seconds");
  }
  const std::string dir = rf.work_dir.empty() ? std::string(".") : rf.work_dir;
  const std::string source_path = dir + "/" + rf.image + ".source.ova";
  const std::string rewrapped_path = dir + "/" + rf.image + ".rewrapped.ova";
  const std::string key_path = rf.signing_key.empty() ? DefaultSigningKeyFile(f) : rf.signing_key;
  const std::string chain_path =
      rf.signing_cert.empty() ? DirName(key_path) + "/signing-cert.pem" : rf.signing_cert;
  ASSIGN_OR_RETURN(crypto::PrivateKey signing, crypto::LoadPrivateKeyFile(key_path));
  ASSIGN_OR_RETURN(std::string chain, ReadFileToString(Env::Default(), chain_path));
  ASSIGN_OR_RETURN(std::vector<crypto::Certificate> roots, LoadPinnedCa(rf.kms_ca));
  ASSIGN_OR_RETURN(auto c, ConnectCustomer(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, CustomerAuth(f));
  // 1. The newest version's certificate, verified as fetch-cert does: it
  //    chains to the pinned CA, certifies the key the portal names, is of
  //    the version the portal names, and no newer version is listed.
  ASSIGN_OR_RETURN(VerifiedCustomerCert newest,
                   FetchVerifiedCustomerCert(*c, auth, roots, "rewrap",
                                             {.certificate = "your newest certificate"}));
  const crypto::Certificate& cert = newest.cert;
  const crypto::PublicKey& certified = newest.public_key;
  const auto version = static_cast<int64_t>(newest.version);
  // 2. The image's package, verified against the customer's own signature.
  ASSIGN_OR_RETURN(json listing, CheckReply(c->Get("/v1/images/" + rf.image, auth), "rewrap"));
  // Files of an earlier run are made again.
  (void)Env::Default()->RemoveFile(source_path);
  (void)Env::Default()->RemoveFile(rewrapped_path);
  std::unique_ptr<ovf::Package> pkg;
  ExportFlags ef{rf.image, source_path, rf.kms_ca, key_path};
  RETURN_IF_ERROR(ExportTo(f, ef, &pkg).status());
  auto cleanup = [&](Status s) {
    pkg.reset();
    (void)Env::Default()->RemoveFile(source_path);
    (void)Env::Default()->RemoveFile(rewrapped_path);
    return s;
  };
  const ovf::EncryptionTag& tag = pkg->tag();
  if (static_cast<int64_t>(tag.key_version) >= version) {
    return cleanup(FailedPreconditionError(
        "key_version_current: image " + rf.image + " is at key version " + std::to_string(tag.key_version) +
        ", your newest; nothing to re-wrap (rotate-key first)"));
  }
  const bool x25519 = pkg->wrapped_key().algorithm == ovf::kX25519WrapUri;
  if (x25519 != (certified.type() == crypto::KeyType::kX25519)) {
    return cleanup(FailedPreconditionError("key_type_mismatch: your newest key is of another type than the "
                                           "package's key wrap"));
  }
  // 3. The new tag: the newest key and version; the streams keep theirs.
  ovf::EncryptionTag new_tag = tag;
  new_tag.key_id = "sha256:" + certified.KeyId();
  new_tag.key_version = static_cast<uint64_t>(version);
  new_tag.stream_key_version = tag.stream_key_version != 0 ? tag.stream_key_version : tag.key_version;
  if (new_tag.stream_key_version == new_tag.key_version) new_tag.stream_key_version = 0;
  kms::RewrapRequest req;
  kms::RewrapAuthorization& a = req.authorization;
  a.tenant = tag.tenant;
  a.image_id = tag.image_id;
  a.key_version = tag.key_version;
  a.destination_cert_sha256 = crypto::HexEncode(crypto::Sha256(cert.ToDer()));
  a.destination_label = ovf::OaepLabel(new_tag);
  a.nonce = crypto::HexEncode(crypto::RandomBytes(32));
  a.expires_unix = static_cast<int64_t>(::time(nullptr)) + rf.lifetime_seconds;
  auto sig = crypto::Sign(signing, crypto::SignatureDigest::kSha256, kms::RewrapAuthorizationMessage(a));
  if (!sig.ok()) return cleanup(sig.status());
  req.signature = *std::move(sig);
  req.destination_cert_pem = cert.ToPem();
  req.key_id = tag.key_id;
  req.wrap_algorithm = pkg->wrapped_key().algorithm;
  req.oaep_label = pkg->wrapped_key().oaep_label;
  req.wrapped_key = pkg->wrapped_key().ciphertext;
  // 4. The KMS re-wraps (through the portal, which cannot sign for us).
  auto r = CheckReply(c->Post("/v1/images/" + rf.image + "/key-rewrap", auth,
                              kms::RewrapRequestToJson(req).dump(), "application/json"),
                      "re-wrap at the KMS");
  if (!r.ok()) return cleanup(r.status());
  if (r->value("destination_key_id", "") != certified.KeyId() || r->value("key_version", int64_t{0}) != version) {
    return cleanup(DataLossError("the KMS wrapped to key " + r->value("destination_key_id", "") +
                                 ", not your newest key " + certified.KeyId()));
  }
  auto rewrapped = crypto::Base64Decode(r->value("rewrapped_key", ""));
  if (!rewrapped.ok() || rewrapped->empty()) return cleanup(DataLossError("the KMS sent no re-wrapped key"));
  // 5. The package: new EncryptedKey and tag, the files byte for byte,
  //    signed again.
  Status written = ovf::RewrapPackage(Env::Default(), *pkg, new_tag, *rewrapped, signing, chain, rewrapped_path);
  if (!written.ok()) return cleanup(written);
  pkg.reset();
  // 6. Uploaded under the image's name; then the old image goes.
  const std::string name = listing.value("name", rf.image);
  ASSIGN_OR_RETURN(json uploaded, UploadPackageQuietly(f, rewrapped_path, name));
  const std::string new_image = uploaded.value("image_id", "");
  if (new_image.empty()) return DataLossError("the portal named no image for the re-wrapped package");
  if (!rf.keep_old) {
    RETURN_IF_ERROR(CheckReply(c->Delete("/v1/images/" + rf.image, auth), "delete the old image").status());
  }
  (void)Env::Default()->RemoveFile(source_path);
  json out = {{"image_id", rf.image},
              {"new_image_id", new_image},
              {"tag_image_id", new_tag.image_id},
              {"from_version", tag.key_version},
              {"to_version", version},
              {"stream_key_version", new_tag.stream_key_version},
              {"key_id", new_tag.key_id},
              {"package", rewrapped_path},
              {"old_image_removed", !rf.keep_old}};
  if (f.json) {
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << "image " << rf.image << " re-wrapped from key version " << tag.key_version << " to "
              << version << " by the KMS (disk data unchanged); uploaded as " << new_image << "\n";
  }
  return OkStatus();
}

}  // namespace

void AddCustomerMigrationCommands(CLI::App& cust, std::shared_ptr<CustomerFlags> f,
                                  const CommandSink& sink) {
  auto ef = std::make_shared<ExportFlags>();
  CLI::App* exp = cust.add_subcommand(
      "export", "Download one of your packages; written only if it verifies against your signature");
  exp->add_option("image", ef->image, "Image id")->required();
  exp->add_option("-o,--out", ef->out, "Where to write the package (.ova; must not exist)")
      ->required();
  exp->add_option("--kms-ca", ef->kms_ca,
                  "The KMS CA obtained out of band: the package's signer must chain to it")
      ->required();
  exp->add_option("--signing-key", ef->signing_key,
                  "Your signing key (default signing-key.pem beside the session)");
  exp->callback([f, ef, sink] { sink(Export(*f, *ef)); });

  auto mf = std::make_shared<MigrateFlags>();
  CLI::App* mig = cust.add_subcommand(
      "migrate",
      "Move one of your images to another cloud: verify your certificate there, authorize the "
      "source KMS (with your signature) to re-wrap the image's data key to it");
  mig->add_option("image", mf->image, "Image id at this (the source) portal")->required();
  mig->add_option("--kms-ca", mf->kms_ca, "The source KMS CA (your package's signer chains to it)")
      ->required();
  mig->add_option("--to-portal", mf->to_portal, "The destination portal URL")->required();
  mig->add_option("--to-ca-cert", mf->to_ca_cert, "PEM CA of the destination portal's TLS");
  mig->add_option("--to-session", mf->to_session, "Your session file at the destination portal")
      ->required();
  mig->add_option("--to-kms-ca", mf->to_kms_ca,
                  "The destination KMS CA obtained out of band: your certificate there must "
                  "chain to it")
      ->required();
  mig->add_option("--signing-key", mf->signing_key,
                  "Your signing key at the source (default signing-key.pem beside the session)");
  mig->add_option("--work-dir", mf->work_dir, "Where the exported package and the result go");
  mig->add_option("--to-signing-key", mf->to_signing_key,
                  "Your signing key at the destination (default signing-key.pem beside --to-session)");
  mig->add_option("--to-signing-cert", mf->to_signing_cert,
                  "Its certificate from the destination KMS (default signing-cert.pem beside "
                  "--to-session)");
  mig->add_option("--to-name", mf->to_name, "The image's name at the destination (default its imageId)");
  mig->add_option("--lifetime", mf->lifetime_seconds,
                  "Seconds the authorization is valid (default 600, at most 3600)");
  mig->callback([f, mf, sink] { sink(Migrate(*f, *mf)); });

  auto rf = std::make_shared<RewrapFlags>();
  CLI::App* rw = cust.add_subcommand(
      "rewrap",
      "Move one of your images to your newest key version: the KMS re-wraps its data key (with "
      "your signature); the disk data is not re-encrypted; the package is signed and uploaded again");
  rw->add_option("image", rf->image, "Image id")->required();
  rw->add_option("--kms-ca", rf->kms_ca,
                 "The KMS CA obtained out of band: your package and newest certificate chain to it")
      ->required();
  rw->add_option("--signing-key", rf->signing_key,
                 "Your signing key (default signing-key.pem beside the session)");
  rw->add_option("--signing-cert", rf->signing_cert,
                 "Its certificate from the KMS (default signing-cert.pem beside the signing key)");
  rw->add_option("--work-dir", rf->work_dir, "Where the exported and the re-wrapped package go");
  rw->add_option("--lifetime", rf->lifetime_seconds,
                 "Seconds the authorization is valid (default 600, at most 3600)");
  rw->add_flag("--keep-old", rf->keep_old, "Keep the old image at the portal");
  rw->callback([f, rf, sink] { sink(Rewrap(*f, *rf)); });
}

}  // namespace vmseal::cli
