// `vmseal customer register|login|fetch-cert|fetch-agent|upload|images|audit|launch|
// status|vms|vm stop|start|delete` (export and migrate: migration_commands.cc): the customer
// side of the portal API (docs/api/csp.yaml).
// Every command prints JSON with --json.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "cli/commands.h"
#include "cli/customer_cert.h"
#include "cli/customer_flags.h"
#include "cli/portal_http.h"
#include "crypto/keys.h"
#include "crypto/primitives.h"
#include "crypto/signature.h"
#include "crypto/x509.h"
#include "json/json.h"
#include "kms/customer_audit.h"
#include "kms/lifecycle.h"
#include "kms/policy.h"
#include "ovf/policy_document.h"
#include "ovf/signature.h"
#include "tlog/checkpoint.h"

namespace vmseal::cli {
namespace {

using json = nlohmann::json;
// Bytes per PUT: the portal makes each durable (fdatasync) before it
// answers, and a broken PUT resumes from what the portal kept, so large
// requests cost nothing in resumability.
constexpr uint64_t kUploadChunkBytes = 256ull << 20;
// Read and send buffer: small enough that the bytes read are still in the
// CPU cache when they are hashed and encrypted (a 4 MiB buffer made each
// pass a trip to memory; curl sends from a small buffer too).
constexpr size_t kUploadBufferBytes = size_t{256} << 10;
constexpr int kUploadRetries = 5;

using CommonFlags = CustomerFlags;

std::string DefaultSessionFile() {
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : ".") + "/.vmseal-session.json";
}

}  // namespace

// The customer's package-signing key (private, 0600) lives beside the
// session file: <session dir>/signing-key.pem, or ~/.vmseal-signing-key.pem
// beside the default session.
std::string DefaultSigningKeyFile(const CommonFlags& f) {
  if (f.session_file.empty()) {
    const char* home = std::getenv("HOME");
    return std::string(home != nullptr ? home : ".") + "/.vmseal-signing-key.pem";
  }
  return DirName(f.session_file) + "/signing-key.pem";
}

namespace {

// The public half of `key` and its proof of possession, as the portal
// forwards them to the KMS (docs/protocol.md §1).
StatusOr<json> SigningKeyFields(const crypto::PrivateKey& key) {
  ASSIGN_OR_RETURN(crypto::Bytes proof,
                   crypto::Sign(key, crypto::SignatureDigest::kSha256,
                                ovf::SigningKeyProofMessage(key.Public())));
  return json{{"public_key_pem", key.Public().ToPem()}, {"proof", crypto::Base64Encode(proof)}};
}

// A fresh P-256 signing key written to `path` (0600); refuses to replace an
// existing file.
StatusOr<crypto::PrivateKey> NewSigningKeyFile(const std::string& path) {
  if (Env::Default()->FileExists(path)) {
    return AlreadyExistsError("signing key file " + path + " exists; give --signing-key with "
                              "a new path (or use it with register-signing-key)");
  }
  ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::PrivateKey::Generate(crypto::KeyType::kEcP256));
  RETURN_IF_ERROR(crypto::WritePrivateKeyFile(Env::Default(), path, key));
  return key;
}

}  // namespace

StatusOr<std::unique_ptr<httplib::Client>> ConnectCustomer(const CommonFlags& f) {
  return ConnectPortal(f.portal, f.ca_cert);
}

StatusOr<httplib::Headers> CustomerAuth(const CommonFlags& f) {
  std::string path = f.session_file.empty() ? DefaultSessionFile() : f.session_file;
  auto text = ReadFileToString(Env::Default(), path);
  if (!text.ok()) return UnauthenticatedError("not logged in (run vmseal customer login)");
  auto parsed = ParseJson(*text);
  json s = parsed.ok() ? *std::move(parsed) : json();
  if (!s.is_object() || !s["token"].is_string()) return UnauthenticatedError("bad session file");
  return httplib::Headers{{"Authorization", "Bearer " + s["token"].get<std::string>()}};
}

namespace {

StatusOr<std::unique_ptr<httplib::Client>> Connect(const CommonFlags& f) { return ConnectCustomer(f); }
StatusOr<httplib::Headers> Auth(const CommonFlags& f) { return CustomerAuth(f); }

void PrintJson(const json& j) { std::cout << j.dump(2) << "\n"; }

// `key_algorithm`: rsa3072 or x25519, the KMS key the portal has created.
// The signing key pair is made here, on the customer's machine; only its
// public half and a proof of possession are sent.
Status Register(const CommonFlags& f, const std::string& password_out,
                const std::string& key_algorithm, const std::string& signing_key_flag) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  const std::string signing_path =
      signing_key_flag.empty() ? DefaultSigningKeyFile(f) : signing_key_flag;
  ASSIGN_OR_RETURN(crypto::PrivateKey signing, NewSigningKeyFile(signing_path));
  ASSIGN_OR_RETURN(json fields, SigningKeyFields(signing));
  const json body = {{"key_algorithm", key_algorithm},
                     {"signing_public_key_pem", fields["public_key_pem"]},
                     {"signing_key_proof", fields["proof"]}};
  auto registered = CheckReply(c->Post("/v1/register", body.dump(), "application/json"), "register");
  if (!registered.ok()) {
    (void)Env::Default()->RemoveFile(signing_path);  // made for this registration only
    return registered.status();
  }
  json r = *std::move(registered);
  r["signing_key_file"] = signing_path;
  const std::string password = r.value("password", "");
  if (!password_out.empty()) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), password_out, password + "\n", 0600));
  }
  if (f.json) {
    if (!password_out.empty()) r.erase("password");
    PrintJson(r);
    return OkStatus();
  }
  std::cout << "customer_id: " << r.value("customer_id", "") << "\n"
            << "login_id: " << r.value("login_id", "") << "\n";
  if (r.contains("key") && r["key"].is_object()) {
    std::cout << "key_id: " << r["key"].value("key_id", "") << "\n"
              << "key_algorithm: " << r["key"].value("algorithm", "") << "\n";
  }
  std::cout << "signing key: " << signing_path << " (private, mode 0600; never sent)\n";
  if (password_out.empty()) {
    std::cout << "password: " << password << "\n(the password is shown only once)\n";
  } else {
    std::cout << "password written to " << password_out << "\n";
  }
  return OkStatus();
}

Status Login(const CommonFlags& f, const std::string& login_id,
             const std::string& password_file) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  std::string password;
  if (!password_file.empty()) {
    ASSIGN_OR_RETURN(password, ReadFileToString(Env::Default(), password_file));
    while (!password.empty() && (password.back() == '\n' || password.back() == '\r')) {
      password.pop_back();
    }
  } else if (const char* env = std::getenv("VMSEAL_PASSWORD")) {
    password = env;
  } else {
    return InvalidArgumentError("give --password-file or set VMSEAL_PASSWORD");
  }
  json body = {{"login_id", login_id}, {"password", password}};
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(password.data()), password.size()));
  std::string text = body.dump();
  body.clear();
  auto res = c->Post("/v1/login", text, "application/json");
  WipeBytes(std::span<uint8_t>(reinterpret_cast<uint8_t*>(text.data()), text.size()));
  ASSIGN_OR_RETURN(json r, CheckReply(res, "login"));
  json session = {{"portal", f.portal}, {"token", r["token"]}, {"expires_unix", r["expires_unix"]}};
  std::string path = f.session_file.empty() ? DefaultSessionFile() : f.session_file;
  RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), path, session.dump(), 0600));
  if (f.json) {
    PrintJson({{"customer_id", r.value("customer_id", "")},
               {"expires_unix", r.value("expires_unix", int64_t{0})},
               {"session_file", path}});
    return OkStatus();
  }
  std::cout << "logged in as " << r.value("customer_id", "") << " until "
            << r.value("expires_unix", int64_t{0}) << "\n";
  return OkStatus();
}

// For a customer without a signing key: uses the key at the path if it
// exists (a retry), else makes one there; sends its public half and proof.
Status RegisterSigningKey(const CommonFlags& f, const std::string& signing_key_flag) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  const std::string path = signing_key_flag.empty() ? DefaultSigningKeyFile(f) : signing_key_flag;
  const bool existed = Env::Default()->FileExists(path);
  auto key = existed ? crypto::LoadPrivateKeyFile(path) : NewSigningKeyFile(path);
  if (!key.ok()) return key.status();
  if (key->type() != crypto::KeyType::kEcP256) {
    return InvalidArgumentError("the signing key in " + path + " is not an ECDSA P-256 key");
  }
  ASSIGN_OR_RETURN(json fields, SigningKeyFields(*key));
  auto r = CheckReply(c->Post("/v1/customer/signing-key", auth, fields.dump(), "application/json"),
                      "register signing key");
  if (!r.ok()) {
    if (!existed) (void)Env::Default()->RemoveFile(path);
    return r.status();
  }
  if (f.json) {
    PrintJson({{"key_id", r->value("key_id", "")}, {"signing_key_file", path}});
  } else {
    std::cout << "signing key " << r->value("key_id", "") << " (" << path
              << ") registered; run fetch-cert to check and keep its certificate\n";
  }
  return OkStatus();
}

struct FetchCertFlags {
  std::string out;      // where the customer certificate goes
  std::string kms_ca;   // trusted KMS CA (PEM); empty: the one the portal serves
  std::string ca_out;   // optional: where to write the KMS CA used
  std::string signing_key;       // the local signing key (default beside the session)
  std::string signing_cert_out;  // default: signing-cert.pem beside --out
  int64_t min_version = 0;       // rotate-key: the version it created
};

// Checks the signing certificate the portal relays before anything is
// written: it chains to the KMS CA, is for package signing, names this
// customer and certifies exactly the public half of the local signing key
// (a portal that registered or substitutes a key of its own is caught here).
StatusOr<crypto::Certificate> CheckSigningCert(const json& signing,
                                               const std::vector<crypto::Certificate>& roots,
                                               const std::string& customer_id,
                                               const std::string& key_path) {
  ASSIGN_OR_RETURN(crypto::Certificate cert,
                   crypto::Certificate::FromPem(signing.value("cert_pem", "")));
  Status chain = crypto::VerifyCertificateChain(cert, roots);
  if (!chain.ok()) {
    return DataLossError("signer_mismatch: the signing certificate does not chain to the KMS CA: " +
                         chain.message());
  }
  auto local = crypto::LoadPrivateKeyFile(key_path);
  if (!local.ok()) {
    return Status(local.status().code(), "the local signing key " + key_path + ": " +
                                             local.status().message());
  }
  ASSIGN_OR_RETURN(crypto::PublicKey certified, cert.GetPublicKey());
  if (certified.KeyId() != local->KeyId()) {
    return DataLossError("signer_mismatch: the signing certificate certifies key " +
                         certified.KeyId() + ", not your signing key " + local->KeyId() + " (" +
                         key_path + ")");
  }
  ovf::PackageSignature probe{crypto::SignatureDigest::kSha256, "", {}, cert, {}};
  Status signer = ovf::VerifySigner(probe, roots, customer_id);
  if (!signer.ok()) return DataLossError(signer.message());
  return cert;
}

// Checks that `k` is a KMS certificate of this customer's key before any
// file is written (customer_cert.h: it chains to the KMS CA, certifies
// exactly the public key the portal says, names the key id and the newest
// version), then writes it.
Status FetchCert(const CommonFlags& f, const FetchCertFlags& ff) {
  if (ff.out.empty()) return InvalidArgumentError("--out is required");
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json k, CheckReply(c->Get("/v1/customer/key", auth), "fetch certificate"));
  std::string ca_pem;
  bool ca_from_portal = false;
  if (!ff.kms_ca.empty()) {
    ASSIGN_OR_RETURN(ca_pem, ReadFileToString(Env::Default(), ff.kms_ca));
  } else {
    ca_pem = k.value("kms_ca_cert_pem", "");
    ca_from_portal = true;
  }
  ASSIGN_OR_RETURN(std::vector<crypto::Certificate> roots, crypto::Certificate::ParsePemBundle(ca_pem));
  CustomerCertNames names;
  names.certificate = "the customer certificate";
  names.ca = ca_from_portal ? "the KMS CA the portal serves" : "the KMS CA you pinned (--kms-ca)";
  names.reason = "certificate_untrusted";
  ASSIGN_OR_RETURN(VerifiedCustomerCert verified, VerifyCustomerKeyReply(k, roots, names));
  const crypto::Certificate& cert = verified.cert;
  const std::string& key_id = verified.key_id;
  // The newest key version (kms/key_versions.h), checked above; none older
  // than one this customer asked for (rotate-key) is accepted.
  const auto version = static_cast<int64_t>(verified.version);
  if (ff.min_version > 0 && version < ff.min_version) {
    return DataLossError("the portal served key version " + std::to_string(version) +
                         ", older than the version " + std::to_string(ff.min_version) + " just created");
  }
  // The signing certificate, if the KMS has a signing key registered.
  std::optional<crypto::Certificate> signing_cert;
  const std::string signing_out =
      ff.signing_cert_out.empty() ? DirName(ff.out) + "/signing-cert.pem" : ff.signing_cert_out;
  if (k.contains("signing_key") && k["signing_key"].is_object()) {
    ASSIGN_OR_RETURN(signing_cert,
                     CheckSigningCert(k["signing_key"], roots, k.value("customer_id", ""),
                                      ff.signing_key.empty() ? DefaultSigningKeyFile(f)
                                                             : ff.signing_key));
  }
  RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), ff.out, cert.ToPem(), 0644));
  if (signing_cert) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), signing_out, signing_cert->ToPem(), 0644));
  }
  if (!ff.ca_out.empty()) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), ff.ca_out, ca_pem, 0644));
  }
  json out = {{"customer_id", k.value("customer_id", "")},
              {"key_id", key_id},
              {"version", version},
              {"algorithm", k.value("algorithm", "")},
              {"cert_file", ff.out},
              {"cert_sha256", cert.Fingerprint()},
              {"not_after_unix", cert.NotAfter()},
              {"kms_ca_sha256", roots[0].Fingerprint()},
              {"kms_ca_source", ca_from_portal ? "portal" : ff.kms_ca},
              {"verified", true}};
  if (signing_cert) {
    out["signing_cert_file"] = signing_out;
    out["signing_key_id"] = k["signing_key"].value("key_id", "");
  }
  if (f.json) {
    PrintJson(out);
  } else {
    std::cout << "certificate of key " << key_id << " (version " << version << ") verified against the KMS CA "
              << roots[0].Fingerprint() << " and written to " << ff.out << "\n";
    if (signing_cert) {
      std::cout << "signing certificate (your signing key, certified for this customer) "
                << "verified and written to " << signing_out << "\n";
    }
  }
  if (!signing_cert) {
    std::cerr << "note: no signing key is registered; run register-signing-key (vmseal seal "
                 "signs packages, and the portal refuses unsigned ones)\n";
  }
  if (ca_from_portal) {
    std::cerr << "note: the KMS CA was supplied by the portal; pass --kms-ca with a CA "
                 "obtained out of band to anchor trust independently\n";
  }
  return OkStatus();
}

// A new version of the customer's KMS key (kms/key_versions.h): the KMS
// makes the key pair and certificate; then the new certificate is fetched
// and verified as fetch-cert does (it must be the version just created).
Status RotateKey(const CommonFlags& f, FetchCertFlags ff) {
  if (ff.out.empty()) return InvalidArgumentError("--out is required");
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json k, CheckReply(c->Post("/v1/customer/key/rotate", auth, "{}", "application/json"),
                                      "rotate key"));
  if (!k.contains("version") || !k["version"].is_number_integer() || k["version"].get<int64_t>() < 2) {
    return DataLossError("the portal's answer names no new key version");
  }
  ff.min_version = k["version"].get<int64_t>();
  if (!f.json) {
    std::cout << "key version " << ff.min_version << " (" << k.value("key_id", "")
              << ") created at the KMS\n";
  }
  return FetchCert(f, ff);
}

StatusOr<json> SignedLifecycleBody(const CommonFlags& f, const kms::LifecycleRequest& req,
                                   const std::string& signing_key_flag);

// Retires a version of the customer's key: the KMS releases no package
// wrapped under it again. The request is signed with the customer's
// signing key (kms/lifecycle.h retire_key_version): the portal relays it.
Status RetireKey(const CommonFlags& f, int64_t version) {
  if (version < 1) return InvalidArgumentError("--version must be >= 1");
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json me, CheckReply(c->Get("/v1/customer/key", auth), "customer key"));
  kms::LifecycleRequest req;
  req.action = "retire_key_version";
  req.tenant = me.value("customer_id", "");
  req.key_version = version;
  req.issued_unix = static_cast<int64_t>(std::time(nullptr));
  ASSIGN_OR_RETURN(json body, SignedLifecycleBody(f, req, ""));
  body["version"] = version;
  ASSIGN_OR_RETURN(json k, CheckReply(c->Post("/v1/customer/key/retire", auth, body.dump(), "application/json"),
                                      "retire key"));
  if (k.value("version", int64_t{0}) != version || k.value("retired_unix", int64_t{0}) == 0) {
    return DataLossError("the portal's answer does not show version " + std::to_string(version) + " retired");
  }
  if (f.json) {
    PrintJson({{"version", version}, {"key_id", k.value("key_id", "")},
               {"retired_unix", k.value("retired_unix", int64_t{0})}});
  } else {
    std::cout << "key version " << version << " (" << k.value("key_id", "")
              << ") retired: packages sealed under it are no longer released\n";
  }
  return OkStatus();
}

// Downloads the agent, hashing as it goes, into a temp file that becomes
// `out` only if the digest matches the portal's (and --expect-sha256).
Status FetchAgent(const CommonFlags& f, const std::string& out, const std::string& expect) {
  if (out.empty()) return InvalidArgumentError("--out is required");
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(json d, CheckReply(c->Get("/v1/agent/sha256"), "agent digest"));
  const std::string want = d.value("sha256", "");
  if (want.size() != 64) return DataLossError("portal sent no agent digest");
  if (!expect.empty() && expect != want) {
    return DataLossError("the portal's agent digest " + want + " is not the expected " + expect);
  }
  ASSIGN_OR_RETURN(auto file, AtomicOutputFile::Create(Env::Default(), out, 0755));
  crypto::Sha256Hasher hasher;
  Status write_error;
  std::string header_digest;
  uint64_t bytes = 0;
  auto res = c->Get(
      "/v1/agent",
      [&](const httplib::Response& r) {
        header_digest = r.get_header_value("X-Content-SHA256");
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
  if (!res) return UnavailableError("fetch agent: " + httplib::to_string(res.error()));
  if (res->status != 200) return CheckReply(res, "fetch agent").status();
  const std::string got = crypto::HexEncode(hasher.Finish());
  if (got != want || header_digest != want) {
    return DataLossError("agent digest mismatch: downloaded " + got + ", portal says " + want);
  }
  RETURN_IF_ERROR(file->Commit());
  ::chmod(out.c_str(), 0755);
  if (f.json) {
    PrintJson({{"file", out}, {"sha256", got}, {"size_bytes", bytes}, {"verified", true}});
  } else {
    std::cout << out << " " << got << " (" << bytes << " bytes, verified)\n";
  }
  return OkStatus();
}

// A JSON object from a flag, or INVALID_ARGUMENT naming the flag.
StatusOr<json> JsonFlag(const std::string& text, const std::string& flag) {
  return ParseJsonObject(text, flag);
}

Status Upload(const CommonFlags& f, const std::string& file, const std::string& name,
              const std::string& policy_json, json* result = nullptr) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  // One TLS connection for begin, the PUTs and the commit (a handshake per
  // request cost more than the commit itself); a connection the portal
  // closed is reopened by the client, a broken PUT resumes as below.
  c->set_keep_alive(true);
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(std::shared_ptr<RandomAccessFile> in, Env::Default()->NewRandomAccessFile(file));
  ASSIGN_OR_RETURN(uint64_t size, in->Size());
  json policy;
  if (!policy_json.empty()) {
    ASSIGN_OR_RETURN(policy, JsonFlag(policy_json, "--policy"));
  }

  ASSIGN_OR_RETURN(json begin, CheckReply(c->Post("/v1/uploads", auth, "", "application/json"),
                                          "start upload"));
  const std::string id = begin.value("upload_id", "");
  // The digest the portal checks at commit is taken from the bytes as they
  // are sent (one read of the file, not two). Bytes are hashed once, in
  // order: a resend after a broken connection re-reads what was hashed.
  crypto::Sha256Hasher hasher;
  uint64_t hashed = 0;
  std::vector<uint8_t> buf(kUploadBufferBytes);
  uint64_t offset = 0;
  int failures = 0;
  while (offset < size) {
    uint64_t len = std::min(kUploadChunkBytes, size - offset);
    const uint64_t base = offset;
    Status read_error;
    auto res = c->Put("/v1/uploads/" + id + "?offset=" + std::to_string(base), auth, len,
                      [&](size_t o, size_t l, httplib::DataSink& sink) {
                        const uint64_t at = base + o;
                        auto n = in->Read(at, std::span<uint8_t>(buf).first(
                                                  std::min<size_t>(l, buf.size())));
                        if (!n.ok() || *n == 0) {
                          read_error = n.ok() ? DataLossError("file shrank while uploading")
                                              : n.status();
                          return false;
                        }
                        if (at <= hashed && at + *n > hashed) {
                          const uint64_t skip = hashed - at;
                          hasher.Update(std::span<const uint8_t>(buf.data() + skip, *n - skip));
                          hashed = at + *n;
                        }
                        return sink.write(reinterpret_cast<const char*>(buf.data()), *n);
                      },
                      "application/octet-stream");
    RETURN_IF_ERROR(read_error);
    auto put = CheckReply(res, "upload");
    if (put.ok()) {
      offset = (*put)["offset_bytes"].get<uint64_t>();
      failures = 0;
      continue;
    }
    // 409: the session's offset is not the one this PUT assumed. After a
    // broken PUT the portal may still be storing what it received when the
    // client asks for the offset (it answered the old one); the next PUT
    // then meets the new one. Ask again, a moment later.
    const bool conflict = res && res->status == 409;
    if ((put.status().code() != StatusCode::kUnavailable && !conflict) || ++failures > kUploadRetries) {
      return put.status();
    }
    if (conflict) std::this_thread::sleep_for(std::chrono::milliseconds(200 * failures));
    // Broken connection or moved offset: ask where to resume.
    ASSIGN_OR_RETURN(json state, CheckReply(c->Get("/v1/uploads/" + id, auth), "upload state"));
    offset = state["offset_bytes"].get<uint64_t>();
    std::cerr << "connection lost; resuming at byte " << offset << "\n";
  }
  if (hashed != size) return InternalError("upload: digest does not cover the file");
  const std::string sha = crypto::HexEncode(hasher.Finish());
  json commit = {{"name", name}, {"sha256", sha}};
  if (policy.is_object()) commit["policy"] = policy;
  ASSIGN_OR_RETURN(json image,
                   CheckReply(c->Post("/v1/uploads/" + id + "/commit", auth, commit.dump(),
                                      "application/json"),
                              "commit upload"));
  if (result != nullptr) {
    *result = std::move(image);
  } else if (f.json) {
    PrintJson(image);
  } else {
    std::cout << image.value("image_id", "") << "\n";
  }
  return OkStatus();
}

std::string NowRfc3339Utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Sets the release policy of one of the caller's images: a policy document
// (docs/format/policy-document.md) signed here with the customer's signing
// key, which the portal relays and the KMS verifies. The portal tells the
// tenant, the tag's imageId and the current version; it cannot lie to any
// effect: a document naming another tenant does not verify under this key,
// and a version not above the KMS's newest is refused (policy_stale).
Status SetPolicy(const CommonFlags& f, const std::string& image_id, const std::string& text,
                 int64_t version_flag, const std::string& signing_key_flag) {
  ASSIGN_OR_RETURN(json policy, JsonFlag(text, "the policy"));
  Status valid = kms::ValidatePolicy(policy);
  if (!valid.ok()) return InvalidArgumentError("the policy: " + valid.message());
  const std::string key_path = signing_key_flag.empty() ? DefaultSigningKeyFile(f) : signing_key_flag;
  ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::LoadPrivateKeyFile(key_path));
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json me, CheckReply(c->Get("/v1/customer/key", auth), "customer key"));
  ASSIGN_OR_RETURN(json image, CheckReply(c->Get("/v1/images/" + image_id, auth), "image"));
  ovf::PolicyDocument doc;
  doc.tenant = me.value("customer_id", "");
  doc.image_id = image.value("tagged_image_id", "");
  if (doc.image_id.empty()) {
    return FailedPreconditionError("image " + image_id + " has no tag imageId (not a sealed package)");
  }
  if (version_flag > 0) {
    doc.version = static_cast<uint64_t>(version_flag);
  } else {
    auto current = c->Get("/v1/images/" + image_id + "/kms-policy", auth);
    int64_t newest = 0;
    if (current && current->status == 200) {
      ASSIGN_OR_RETURN(json cur, CheckReply(current, "current policy"));
      newest = cur.value("version", int64_t{0});
    } else if (!current || current->status != 404) {
      RETURN_IF_ERROR(CheckReply(current, "current policy").status());
    }
    doc.version = static_cast<uint64_t>(newest) + 1;
  }
  doc.issued_at = NowRfc3339Utc();
  doc.policy = policy;
  ASSIGN_OR_RETURN(std::string bytes, ovf::SerializePolicyDocument(doc));
  ASSIGN_OR_RETURN(crypto::Bytes sig, ovf::SignPolicyDocument(bytes, key));
  json body = {{"document", crypto::Base64Encode(crypto::AsBytes(bytes))},
               {"signature", crypto::Base64Encode(sig)}};
  ASSIGN_OR_RETURN(json r, CheckReply(c->Put("/v1/images/" + image_id + "/kms-policy", auth,
                                             body.dump(), "application/json"),
                                      "set policy"));
  if (f.json) {
    r["signing_key_file"] = key_path;
    PrintJson(r);
  } else {
    std::cout << "policy version " << doc.version << " of " << image_id << " (imageId "
              << doc.image_id << ") signed and accepted by the KMS\n";
  }
  return OkStatus();
}

// Signs a lifecycle request (kms/lifecycle.h) with the customer's signing
// key: the body the portal relays to the KMS.
StatusOr<json> SignedLifecycleBody(const CommonFlags& f, const kms::LifecycleRequest& req,
                                   const std::string& signing_key_flag) {
  const std::string key_path = signing_key_flag.empty() ? DefaultSigningKeyFile(f) : signing_key_flag;
  ASSIGN_OR_RETURN(crypto::PrivateKey key, crypto::LoadPrivateKeyFile(key_path));
  ASSIGN_OR_RETURN(std::string bytes, kms::SerializeLifecycleRequest(req));
  ASSIGN_OR_RETURN(crypto::Bytes sig, kms::SignLifecycleRequest(bytes, key));
  return json{{"document", crypto::Base64Encode(crypto::AsBytes(bytes))},
              {"signature", crypto::Base64Encode(sig)}};
}

void PrintLifecycle(const CommonFlags& f, const json& r, const std::string& what) {
  if (f.json) return PrintJson(r);
  std::cout << what << ": " << r["kms"].value("state", "") << "\n";
  for (const auto& j : r.value("stopped", json::array())) std::cout << "  stopped " << j.get<std::string>() << "\n";
  for (const auto& j : r.value("reported", json::array())) {
    std::cout << "  still running (policy: report) " << j.get<std::string>() << "\n";
  }
}

// `customer revoke IMAGE`: no release of the image ever again; its VMs
// stop if its policy says on_trust_loss "stop". `delete_objects` (customer
// delete-image) also deletes the image's objects at the portal.
Status RevokeImage(const CommonFlags& f, const std::string& image_id, const std::string& signing_key,
                   bool delete_objects) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json me, CheckReply(c->Get("/v1/customer/key", auth), "customer key"));
  ASSIGN_OR_RETURN(json image, CheckReply(c->Get("/v1/images/" + image_id, auth), "image"));
  kms::LifecycleRequest req;
  req.action = "revoke_image";
  req.tenant = me.value("customer_id", "");
  req.image_id = image.value("tagged_image_id", "");
  if (req.image_id.empty()) {
    return FailedPreconditionError("image " + image_id + " has no tag imageId (not a sealed package)");
  }
  req.issued_unix = static_cast<int64_t>(std::time(nullptr));
  ASSIGN_OR_RETURN(json body, SignedLifecycleBody(f, req, signing_key));
  ASSIGN_OR_RETURN(json r, CheckReply(c->Post("/v1/images/" + image_id + "/revoke", auth, body.dump(),
                                              "application/json"),
                                      "revoke"));
  if (delete_objects) {
    RETURN_IF_ERROR(CheckReply(c->Delete("/v1/images/" + image_id, auth), "delete image").status());
    r["deleted"] = true;
  }
  PrintLifecycle(f, r, "image " + image_id);
  return OkStatus();
}

// `customer close-account`: the KMS destroys the customer's private keys
// once the grace period is over; every VM of the customer stops now.
Status CloseAccount(const CommonFlags& f, int64_t grace_seconds, const std::string& signing_key) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json me, CheckReply(c->Get("/v1/customer/key", auth), "customer key"));
  kms::LifecycleRequest req;
  req.action = "close_account";
  req.tenant = me.value("customer_id", "");
  req.issued_unix = static_cast<int64_t>(std::time(nullptr));
  req.grace_seconds = grace_seconds;
  ASSIGN_OR_RETURN(json body, SignedLifecycleBody(f, req, signing_key));
  ASSIGN_OR_RETURN(json r, CheckReply(c->Post("/v1/customer/close", auth, body.dump(), "application/json"),
                                      "close account"));
  PrintLifecycle(f, r, "account " + req.tenant);
  return OkStatus();
}

Status Images(const CommonFlags& f) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json r, CheckReply(c->Get("/v1/images", auth), "list images"));
  if (f.json) {
    PrintJson(r);
    return OkStatus();
  }
  for (const auto& i : r["images"]) {
    std::cout << i.value("image_id", "") << "  " << i.value("size_bytes", uint64_t{0}) << "  "
              << i.value("sha256", "") << "  " << i.value("name", "") << "\n";
  }
  return OkStatus();
}

struct AuditFlags {
  std::string image;            // portal image id or the tag's imageId
  std::string kms_ca;           // the pinned KMS CA (required)
  std::string checkpoint;       // a checkpoint saved earlier ("" none)
  std::string save_checkpoint;  // where to write the verified current checkpoint
  int64_t max_events = 1000;
};

// `customer audit`: every page the portal relays from the KMS is checked
// here (kms::VerifyCustomerAuditPage) before anything is printed or saved.
Status Audit(const CommonFlags& f, const AuditFlags& af) {
  if (af.kms_ca.empty()) {
    return InvalidArgumentError("--kms-ca is required: the KMS CA obtained out of band (the log key "
                                "must be endorsed by it)");
  }
  if (af.max_events < 1 || af.max_events > 100000) return InvalidArgumentError("--max-events must be 1..100000");
  ASSIGN_OR_RETURN(std::string ca_pem, ReadFileToString(Env::Default(), af.kms_ca));
  kms::CustomerAuditVerifyOptions vo;
  ASSIGN_OR_RETURN(vo.kms_roots, crypto::Certificate::ParsePemBundle(ca_pem));
  // Records listed before (the .events file beside a saved checkpoint): the
  // log cannot lose them, and the answer must not leave them out.
  std::vector<int64_t> seen_before;
  if (!af.checkpoint.empty()) {
    ASSIGN_OR_RETURN(vo.saved_checkpoint, ReadFileToString(Env::Default(), af.checkpoint));
    auto seen = ReadFileToString(Env::Default(), af.checkpoint + ".events");
    if (seen.ok()) {
      ASSIGN_OR_RETURN(json list, ParseJson(*seen));
      if (!list.is_array()) return InvalidArgumentError(af.checkpoint + ".events is not a JSON array");
      for (const json& n : list) {
        if (!n.is_number_integer()) return InvalidArgumentError(af.checkpoint + ".events: not a record number");
        seen_before.push_back(n.get<int64_t>());
      }
    }
  }
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json key, CheckReply(c->Get("/v1/customer/key", auth), "customer audit"));
  vo.tenant = key.value("customer_id", "");
  // The image as the KMS names it: the tag's imageId. A portal image id is
  // mapped by the portal (naming the image by its tag id avoids that trust).
  vo.image_id = af.image;
  auto own = c->Get("/v1/images/" + af.image, auth);
  if (own && own->status == 200) {
    auto j = ParseJson(own->body);
    if (j.ok() && j->is_object() && !j->value("tagged_image_id", "").empty()) {
      vo.image_id = j->value("tagged_image_id", "");
    }
  }
  int64_t old_size = 0;
  if (!vo.saved_checkpoint.empty()) {
    // Its size only: the signature and the consistency are checked below.
    const size_t blank = vo.saved_checkpoint.find("\n\n");
    auto parsed = tlog::ParseCheckpoint(vo.saved_checkpoint.substr(0, blank == std::string::npos ? 0 : blank + 1));
    if (!parsed.ok()) return parsed.status().WithPrefix("the saved checkpoint " + af.checkpoint);
    old_size = static_cast<int64_t>(parsed->size);
  }
  json events = json::array();
  std::string checkpoint;
  uint64_t tree_size = 0;
  int64_t after = 0;
  bool truncated_listing = false;
  while (true) {
    const std::string path = "/v1/images/" + af.image + "/audit?after=" + std::to_string(after) +
                             "&old=" + std::to_string(old_size);
    auto res = c->Get(path, auth);
    if (res && res->body.size() > kms::kMaxCustomerAuditReplyBytes) {
      return InvalidArgumentError("customer audit: the answer is larger than the limit");
    }
    ASSIGN_OR_RETURN(json r, CheckReply(res, "customer audit"));
    ASSIGN_OR_RETURN(kms::CustomerAuditPage page, kms::CustomerAuditPageFromJson(r));
    vo.after_seq = after;
    auto verified = kms::VerifyCustomerAuditPage(page, vo);
    if (!verified.ok()) return verified.status().WithPrefix("customer audit verification failed");
    for (const auto& e : verified->events) {
      events.push_back({{"seq", e.seq}, {"time_unix", e.time_unix}, {"event", e.event},
                        {"host_id", e.host_id}, {"job_id", e.job_id}, {"reason", e.reason},
                        {"details", e.details}, {"inclusion_verified", true}});
    }
    checkpoint = verified->checkpoint;
    tree_size = verified->tree_size;
    if (verified->next_after == 0) break;
    if (static_cast<int64_t>(events.size()) >= af.max_events) {
      truncated_listing = true;
      break;
    }
    after = verified->next_after;
  }
  json seqs = json::array();
  for (const json& e : events) seqs.push_back(e["seq"]);
  if (!truncated_listing) {
    for (int64_t n : seen_before) {
      if (std::find(seqs.begin(), seqs.end(), json(n)) == seqs.end()) {
        return DataLossError("customer audit verification failed: withheld: audit record " +
                             std::to_string(n) + " of this image, listed before, is missing from the answer");
      }
    }
  }
  if (!af.save_checkpoint.empty()) {
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), af.save_checkpoint, checkpoint, 0644));
    RETURN_IF_ERROR(WriteStringToFileAtomic(Env::Default(), af.save_checkpoint + ".events", seqs.dump(), 0644));
  }
  json out = {{"tenant", vo.tenant}, {"image_id", vo.image_id}, {"events", events},
              {"tree_size", tree_size}, {"checkpoint", checkpoint},
              {"extends_saved_checkpoint", !vo.saved_checkpoint.empty()},
              {"more", truncated_listing}};
  if (f.json) {
    PrintJson(out);
  } else {
    for (const json& e : events) {
      std::cout << e["seq"].get<int64_t>() << "  " << e["time_unix"].get<int64_t>() << "  "
                << e["event"].get<std::string>() << "  host=" << e["host_id"].get<std::string>()
                << "  job=" << e["job_id"].get<std::string>();
      if (!e["reason"].get<std::string>().empty()) std::cout << "  reason=" << e["reason"].get<std::string>();
      std::cout << "  [inclusion verified]\n";
    }
    std::cout << events.size() << " events of image " << vo.image_id << ", each proven in the log of "
              << tree_size << " records signed by the KMS log key (endorsed by the pinned KMS CA)";
    if (!vo.saved_checkpoint.empty()) std::cout << "; the log extends the saved checkpoint (" << old_size << " records)";
    std::cout << "\n";
    if (truncated_listing) std::cout << "(more events: raise --max-events)\n";
  }
  return OkStatus();
}

Status Launch(const CommonFlags& f, const std::string& image_id) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  json body = {{"image_id", image_id}};
  ASSIGN_OR_RETURN(json j, CheckReply(c->Post("/v1/launch", auth, body.dump(), "application/json"),
                                      "launch"));
  if (f.json) {
    PrintJson(j);
  } else {
    std::cout << j.value("job_id", "") << " " << j.value("state", "") << "\n";
  }
  return OkStatus();
}

// Why a job is where it is, in one line: its failure or the VM's end.
std::string JobReason(const json& j) {
  if (!j.value("failure_reason", "").empty()) return j.value("failure_reason", "");
  std::string end = j.value("end_reason", "");
  if (!j.value("end_text", "").empty()) end += (end.empty() ? "" : ": ") + j.value("end_text", "");
  return end;
}

// Every job of the customer, oldest first, with its state and reason.
Status ListJobs(const CommonFlags& f) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json r, CheckReply(c->Get("/v1/jobs", auth), "list jobs"));
  if (!r.contains("jobs") || !r["jobs"].is_array()) {
    return DataLossError("list jobs: the portal's answer has no jobs");
  }
  std::vector<json> jobs(r["jobs"].begin(), r["jobs"].end());
  std::stable_sort(jobs.begin(), jobs.end(), [](const json& a, const json& b) {
    return a.value("created_unix", int64_t{0}) < b.value("created_unix", int64_t{0});
  });
  if (f.json) {
    json out = json::array();
    for (const json& j : jobs) {
      out.push_back({{"job_id", j.value("job_id", "")},
                     {"image_id", j.value("image_id", "")},
                     {"state", j.value("state", "")},
                     {"wanted", j.value("wanted", "")},
                     {"host_id", j.value("host_id", "")},
                     {"vm_name", j.value("vm_name", "")},
                     {"failure_reason", j.value("failure_reason", "")},
                     {"end_reason", j.value("end_reason", "")},
                     {"end_text", j.value("end_text", "")},
                     {"created_unix", j.value("created_unix", int64_t{0})},
                     {"updated_unix", j.value("updated_unix", int64_t{0})}});
    }
    PrintJson({{"jobs", out}});
    return OkStatus();
  }
  if (jobs.empty()) std::cout << "no jobs\n";
  for (const json& j : jobs) {
    std::cout << j.value("job_id", "") << "  " << j.value("state", "") << "  "
              << j.value("image_id", "");
    if (!j.value("host_id", "").empty()) std::cout << "  on " << j.value("host_id", "");
    if (!JobReason(j).empty()) std::cout << "  (" << JobReason(j) << ")";
    if (j.contains("disk_events") && j["disk_events"].is_array() && !j["disk_events"].empty()) {
      std::cout << "  [disk integrity: " << j["disk_events"].size() << " event(s)]";
    }
    if (j.contains("trust_events") && j["trust_events"].is_array() && !j["trust_events"].empty()) {
      std::cout << "  [host trust lost]";
    }
    std::cout << "\n";
  }
  return OkStatus();
}

// `vmseal customer vm stop|start|delete VM`: VM is the job id or VM name.
Status VmAction(const CommonFlags& f, const std::string& action, const std::string& vm) {
  for (char ch : vm) {
    const bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                    (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
    if (!ok) return InvalidArgumentError("bad VM name or job id '" + vm + "'");
  }
  if (vm.empty() || vm.size() > 128) return InvalidArgumentError("bad VM name or job id");
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  const std::string path = "/v1/vms/" + vm;
  ASSIGN_OR_RETURN(json j, CheckReply(action == "delete"
                                          ? c->Delete(path, auth)
                                          : c->Post(path + "/" + action, auth, "", "application/json"),
                                      "vm " + action));
  if (f.json) {
    PrintJson(j);
    return OkStatus();
  }
  std::cout << j.value("job_id", "") << " " << j.value("state", "");
  if (!j.value("vm_name", "").empty()) std::cout << " (" << j.value("vm_name", "") << ")";
  std::cout << "\n";
  return OkStatus();
}

Status JobStatus(const CommonFlags& f, const std::string& job_id) {
  if (job_id.empty()) return ListJobs(f);
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json j, CheckReply(c->Get("/v1/jobs/" + job_id, auth), "job status"));
  if (f.json) {
    PrintJson(j);
    return OkStatus();
  }
  std::cout << "job " << j.value("job_id", "") << ": " << j.value("state", "");
  if (!j.value("host_id", "").empty()) std::cout << " on " << j.value("host_id", "");
  std::cout << "\n";
  if (!JobReason(j).empty()) std::cout << "reason: " << JobReason(j) << "\n";
  if (j.contains("disk_events") && j["disk_events"].is_array()) {
    for (const auto& e : j["disk_events"]) {
      if (e.is_string()) std::cout << "disk integrity: " << e.get<std::string>() << "\n";
    }
  }
  if (j.contains("trust_events") && j["trust_events"].is_array()) {
    for (const auto& e : j["trust_events"]) {
      if (e.is_string()) std::cout << "host trust: " << e.get<std::string>() << "\n";
    }
  }
  for (const auto& a : j["attempts"]) {
    if (!a.value("refusal", "").empty()) {
      std::cout << "refused by " << a.value("host_id", "") << ": " << a.value("refusal", "")
                << "\n";
    }
  }
  for (const auto& d : j["last_placement"]["decisions"]) {
    std::cout << "  " << d.value("host_id", "") << ":";
    for (const auto& r : d["reasons"]) std::cout << " " << r.get<std::string>() << ";";
    std::cout << "\n";
  }
  return OkStatus();
}

// The customer's launches with their state, host and VM.
Status Vms(const CommonFlags& f) {
  ASSIGN_OR_RETURN(auto c, Connect(f));
  ASSIGN_OR_RETURN(httplib::Headers auth, Auth(f));
  ASSIGN_OR_RETURN(json r, CheckReply(c->Get("/v1/jobs", auth), "list jobs"));
  json vms = json::array();
  for (const auto& j : r["jobs"]) {
    vms.push_back({{"job_id", j.value("job_id", "")},
                   {"image_id", j.value("image_id", "")},
                   {"state", j.value("state", "")},
                   {"host_id", j.value("host_id", "")},
                   {"vm_name", j.value("vm_name", "")},
                   {"failure_reason", j.value("failure_reason", "")},
                   {"end_reason", j.value("end_reason", "")}});
  }
  if (f.json) {
    PrintJson({{"vms", vms}});
    return OkStatus();
  }
  for (const auto& v : vms) {
    std::cout << v["job_id"].get<std::string>() << "  " << v["state"].get<std::string>() << "  "
              << v["image_id"].get<std::string>() << "  " << v["host_id"].get<std::string>()
              << "  " << v["vm_name"].get<std::string>() << "\n";
  }
  return OkStatus();
}

}  // namespace

Status UploadPackage(const CustomerFlags& f, const std::string& file, const std::string& name) {
  return Upload(f, file, name, "");
}

StatusOr<json> UploadPackageQuietly(const CustomerFlags& f, const std::string& file, const std::string& name) {
  json image;
  RETURN_IF_ERROR(Upload(f, file, name, "", &image));
  return image;
}

void AddCustomerCommands(CLI::App& app, const CommandSink& sink) {
  CLI::App* cust = app.add_subcommand("customer", "Talk to the cloud portal as a customer");
  cust->require_subcommand(1);
  auto f = std::make_shared<CommonFlags>();
  cust->add_option("--portal", f->portal, "Portal URL, e.g. https://portal:8443")->required();
  cust->add_option("--ca-cert", f->ca_cert, "PEM CA the portal certificate must chain to");
  cust->add_option("--session", f->session_file, "Session file (default ~/.vmseal-session.json)");
  cust->add_flag("--json", f->json, "Print JSON");

  auto password_out = std::make_shared<std::string>();
  auto key_algorithm = std::make_shared<std::string>("rsa3072");
  CLI::App* reg = cust->add_subcommand("register", "Create an account; prints the password once");
  reg->add_option("--password-out", *password_out,
                  "Write the password to this file (mode 0600) instead of printing it");
  reg->add_option("--key-algorithm", *key_algorithm,
                  "Algorithm of the KMS key created for you (packages are sealed to it)")
      ->check(CLI::IsMember({"rsa3072", "x25519"}))
      ->capture_default_str();
  auto signing_key = std::make_shared<std::string>();
  reg->add_option("--signing-key", *signing_key,
                  "Where to write the new package-signing key (P-256, mode 0600; default "
                  "signing-key.pem beside the session file)");
  reg->callback([f, password_out, key_algorithm, signing_key, sink] {
    sink(Register(*f, *password_out, *key_algorithm, *signing_key));
  });

  auto reg_signing_key = std::make_shared<std::string>();
  CLI::App* reg_signing = cust->add_subcommand(
      "register-signing-key",
      "Register a package-signing key for an account that has none (made here if absent)");
  reg_signing->add_option("--signing-key", *reg_signing_key,
                          "The signing key (default signing-key.pem beside the session file)");
  reg_signing->callback([f, reg_signing_key, sink] {
    sink(RegisterSigningKey(*f, *reg_signing_key));
  });

  auto login_id = std::make_shared<std::string>();
  auto password_file = std::make_shared<std::string>();
  CLI::App* login = cust->add_subcommand("login", "Log in and keep the session token");
  login->add_option("--login-id", *login_id, "Login id from register")->required();
  login->add_option("--password-file", *password_file, "File with the password "
                    "(or VMSEAL_PASSWORD)");
  login->callback([f, login_id, password_file, sink] {
    sink(Login(*f, *login_id, *password_file));
  });

  auto cf = std::make_shared<FetchCertFlags>();
  CLI::App* fetch_cert = cust->add_subcommand(
      "fetch-cert", "Fetch your KMS certificate; verify it chains to the KMS CA, then write it");
  fetch_cert->add_option("--out", cf->out, "Where to write the certificate (PEM)")->required();
  fetch_cert->add_option("--kms-ca", cf->kms_ca,
                         "PEM KMS CA to verify against (default: the one the portal serves)");
  fetch_cert->add_option("--ca-out", cf->ca_out, "Also write the KMS CA used here");
  fetch_cert->add_option("--signing-key", cf->signing_key,
                         "Your signing key the signing certificate must certify (default "
                         "signing-key.pem beside the session file)");
  fetch_cert->add_option("--signing-cert-out", cf->signing_cert_out,
                         "Where to write the signing certificate (default signing-cert.pem "
                         "beside --out)");
  fetch_cert->callback([f, cf, sink] { sink(FetchCert(*f, *cf)); });

  auto rf = std::make_shared<FetchCertFlags>();
  CLI::App* rotate = cust->add_subcommand(
      "rotate-key", "Create a new version of your KMS key; verify and write its certificate "
                    "(packages sealed under older versions still release until retired)");
  rotate->add_option("--out", rf->out, "Where to write the new certificate (PEM)")->required();
  rotate->add_option("--kms-ca", rf->kms_ca, "PEM KMS CA to verify against (default: the portal's)");
  rotate->add_option("--signing-key", rf->signing_key, "Your signing key (default beside the session)");
  rotate->add_option("--signing-cert-out", rf->signing_cert_out,
                     "Where to write the signing certificate (default signing-cert.pem beside --out)");
  rotate->callback([f, rf, sink] { sink(RotateKey(*f, *rf)); });

  auto retire_version = std::make_shared<int64_t>(0);
  CLI::App* retire = cust->add_subcommand(
      "retire-key", "Retire a version of your KMS key: packages sealed under it are released no more");
  retire->add_option("--version", *retire_version, "The key version to retire")->required();
  retire->callback([f, retire_version, sink] { sink(RetireKey(*f, *retire_version)); });

  auto agent_out = std::make_shared<std::string>();
  auto agent_sha = std::make_shared<std::string>();
  CLI::App* fetch_agent = cust->add_subcommand(
      "fetch-agent", "Download the vmseal agent binary and check its SHA-256");
  fetch_agent->add_option("--out", *agent_out, "Where to write the binary")->required();
  fetch_agent->add_option("--expect-sha256", *agent_sha, "Refuse unless the digest is this");
  fetch_agent->callback([f, agent_out, agent_sha, sink] {
    sink(FetchAgent(*f, *agent_out, *agent_sha));
  });

  auto file = std::make_shared<std::string>();
  auto name = std::make_shared<std::string>();
  auto policy = std::make_shared<std::string>();
  CLI::App* upload = cust->add_subcommand("upload", "Upload a sealed package (resumable)");
  upload->add_option("package", *file, "Sealed package file")->required();
  upload->add_option("--name", *name, "Image name")->required();
  upload->add_option("--policy", *policy, "Portal-side policy JSON kept with the image");
  upload->callback([f, file, name, policy, sink] { sink(Upload(*f, *file, *name, *policy)); });

  auto policy_image = std::make_shared<std::string>();
  auto policy_text = std::make_shared<std::string>();
  auto policy_version = std::make_shared<int64_t>(0);
  auto policy_signing_key = std::make_shared<std::string>();
  CLI::App* set_policy = cust->add_subcommand(
      "set-policy",
      "Sign a new release policy for one of your images (the KMS enforces the newest you signed)");
  set_policy->add_option("image_id", *policy_image, "Image id")->required();
  set_policy->add_option("policy", *policy_text,
                         "release policy JSON (flavors, required_tags, max_evidence_age_seconds, "
                         "history)")
      ->required();
  set_policy->add_option("--version", *policy_version,
                         "document version (default: the KMS's newest + 1; the sealed policy is 0)");
  set_policy->add_option("--signing-key", *policy_signing_key,
                         "your signing key (default signing-key.pem beside the session)");
  set_policy->callback([f, policy_image, policy_text, policy_version, policy_signing_key, sink] {
    sink(SetPolicy(*f, *policy_image, *policy_text, *policy_version, *policy_signing_key));
  });

  cust->add_subcommand("images", "List your images")->callback([f, sink] { sink(Images(*f)); });

  auto life_image = std::make_shared<std::string>();
  auto life_key = std::make_shared<std::string>();
  auto life_grace = std::make_shared<int64_t>(-1);
  for (const bool del : {false, true}) {
    CLI::App* revoke = cust->add_subcommand(
        del ? "delete-image" : "revoke",
        del ? "Revoke one of your images at the KMS (signed) and delete its objects at the portal"
            : "Revoke one of your images for good: the KMS never releases its key again (signed)");
    revoke->add_option("image_id", *life_image, "Image id")->required();
    revoke->add_option("--signing-key", *life_key, "your signing key (default signing-key.pem beside the session)");
    revoke->callback([f, life_image, life_key, del, sink] { sink(RevokeImage(*f, *life_image, *life_key, del)); });
  }
  CLI::App* close = cust->add_subcommand(
      "close-account", "Close your account: the KMS destroys your private keys after a grace period (signed)");
  close->add_option("--grace-seconds", *life_grace, "grace before the keys are destroyed (default: the KMS's)")
      ->check(CLI::Range(int64_t{0}, int64_t{366} * 86400));
  close->add_option("--signing-key", *life_key, "your signing key (default signing-key.pem beside the session)");
  close->callback([f, life_grace, life_key, sink] { sink(CloseAccount(*f, *life_grace, *life_key)); });

  auto audit_flags = std::make_shared<AuditFlags>();
  CLI::App* audit = cust->add_subcommand(
      "audit", "List every key event of one of your images, each proven in the KMS's signed log");
  audit->add_option("image", audit_flags->image, "Image id (the portal's, or the tag's imageId)")->required();
  audit->add_option("--kms-ca", audit_flags->kms_ca,
                    "The KMS CA obtained out of band: the log key must be endorsed by it")
      ->required();
  audit->add_option("--checkpoint", audit_flags->checkpoint,
                    "A checkpoint saved earlier (--save-checkpoint): the log must extend it");
  audit->add_option("--save-checkpoint", audit_flags->save_checkpoint,
                    "Write the verified current checkpoint here (and the listed record numbers to "
                    "FILE.events, which --checkpoint FILE then requires to be listed again)");
  audit->add_option("--max-events", audit_flags->max_events, "Stop listing after this many (default 1000)");
  audit->callback([f, audit_flags, sink] { sink(Audit(*f, *audit_flags)); });

  auto image = std::make_shared<std::string>();
  CLI::App* launch = cust->add_subcommand("launch", "Launch an image; prints the job id");
  launch->add_option("image_id", *image, "Image id")->required();
  launch->callback([f, image, sink] { sink(Launch(*f, *image)); });

  auto job = std::make_shared<std::string>();
  CLI::App* status = cust->add_subcommand(
      "status", "Show a job and its placement reasons; without a job id, list your jobs");
  status->add_option("job_id", *job, "Job id (default: every job, with state and reason)");
  status->callback([f, job, sink] { sink(JobStatus(*f, *job)); });

  CLI::App* vm = cust->add_subcommand("vm", "Stop, start or delete one of your VMs");
  vm->require_subcommand(1);
  for (const char* action : {"stop", "start", "delete"}) {
    auto target = std::make_shared<std::string>();
    const char* help = std::string_view(action) == "stop"
                           ? "Stop the VM (its slot is freed; start runs it again)"
                       : std::string_view(action) == "start"
                           ? "Run a stopped VM again (a fresh key release on its host)"
                           : "Stop the VM and remove it and its files from its host";
    CLI::App* sub = vm->add_subcommand(action, help);
    sub->add_option("vm", *target, "The VM's job id or VM name")->required();
    sub->callback([f, target, action = std::string(action), sink] {
      sink(VmAction(*f, action, *target));
    });
  }

  cust->add_subcommand("vms", "List your launches: state, host and VM")
      ->callback([f, sink] { sink(Vms(*f)); });

  AddCustomerMigrationCommands(*cust, f, sink);
}

}  // namespace vmseal::cli
