// The customer's audit of one image: the KMS side (KmsService::CustomerAudit
// and its route) and the customer's local verification.
#include "kms/customer_audit.h"

#include <charconv>
#include <cctype>

#include "crypto/keys.h"
#include "crypto/signature.h"
#include "json/json.h"
#include "kms/http_api.h"
#include "kms/service.h"
#include "tlog/checkpoint.h"
#include "tlog/merkle.h"
#include "tlog/note.h"

namespace vmseal::kms {
namespace {

using json = nlohmann::json;

constexpr std::string_view kEndorsementContext = "vmseal audit log key v1\n";

bool ValidImageName(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '@' && c != '-') {
      return false;
    }
  }
  return true;
}

StatusOr<std::string> Str(const json& j, const char* name, bool required = true) {
  if (!j.contains(name)) {
    if (!required) return std::string();
    return InvalidArgumentError(std::string("customer audit reply: missing '") + name + "'");
  }
  if (!j[name].is_string()) {
    return InvalidArgumentError(std::string("customer audit reply: '") + name + "' is not a string");
  }
  return j[name].get<std::string>();
}

StatusOr<int64_t> QueryInt(const net::Request& r, const std::string& name, int64_t fallback) {
  std::string v = r.QueryParam(name);
  if (v.empty()) return fallback;
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size()) return InvalidArgumentError(name + " must be an integer");
  return out;
}

std::string Text(const json& d, const char* name) {
  return d.contains(name) && d[name].is_string() ? d[name].get<std::string>() : std::string();
}

}  // namespace

std::string LogKeyEndorsementMessage(std::string_view verifier_key) {
  std::string m(kEndorsementContext);
  m.append(verifier_key);
  m.push_back('\n');
  return m;
}

std::optional<std::pair<std::string, std::string>> AuditRecordImage(const json& rec) {
  if (!rec.is_object() || !rec.contains("details") || !rec["details"].is_object()) return std::nullopt;
  const json& d = rec["details"];
  const std::string image = Text(d, "image_id");
  std::string tenant = Text(d, "tenant");
  if (tenant.empty()) tenant = Text(d, "customer_id");
  if (tenant.empty()) {
    const std::string subject = Text(rec, "subject");
    if (subject.rfind("customer/", 0) == 0) tenant = subject.substr(9);
  }
  if (image.empty() || tenant.empty()) return std::nullopt;
  return std::make_pair(tenant, image);
}

json CustomerAuditPageToJson(const CustomerAuditPage& page) {
  return json{{"tenant", page.tenant},
              {"image_id", page.image_id},
              {"log_key", page.log_key},
              {"log_key_endorsement", crypto::Base64Encode(page.log_key_endorsement)},
              {"checkpoint", page.checkpoint},
              {"proofs", page.proofs},
              {"consistency", page.consistency},
              {"next_after", page.next_after}};
}

StatusOr<CustomerAuditPage> CustomerAuditPageFromJson(const json& j) {
  if (!j.is_object()) return InvalidArgumentError("customer audit reply: not a JSON object");
  CustomerAuditPage page;
  ASSIGN_OR_RETURN(page.tenant, Str(j, "tenant"));
  ASSIGN_OR_RETURN(page.image_id, Str(j, "image_id"));
  ASSIGN_OR_RETURN(page.log_key, Str(j, "log_key"));
  ASSIGN_OR_RETURN(std::string endorsement, Str(j, "log_key_endorsement"));
  auto decoded = crypto::Base64Decode(endorsement);
  if (!decoded.ok()) return InvalidArgumentError("customer audit reply: log_key_endorsement is not base64");
  page.log_key_endorsement = *std::move(decoded);
  ASSIGN_OR_RETURN(page.checkpoint, Str(j, "checkpoint"));
  ASSIGN_OR_RETURN(page.consistency, Str(j, "consistency", /*required=*/false));
  if (!j.contains("proofs") || !j["proofs"].is_array()) {
    return InvalidArgumentError("customer audit reply: 'proofs' is not an array");
  }
  if (j["proofs"].size() > static_cast<size_t>(kMaxCustomerAuditEvents)) {
    return InvalidArgumentError("customer audit reply: more than " +
                                std::to_string(kMaxCustomerAuditEvents) + " proofs");
  }
  for (const json& p : j["proofs"]) {
    if (!p.is_string()) return InvalidArgumentError("customer audit reply: a proof is not a string");
    page.proofs.push_back(p.get<std::string>());
  }
  if (!j.contains("next_after") || !j["next_after"].is_number_integer() ||
      j["next_after"].get<int64_t>() < 0) {
    return InvalidArgumentError("customer audit reply: 'next_after' is not a non-negative integer");
  }
  page.next_after = j["next_after"].get<int64_t>();
  return page;
}

StatusOr<VerifiedAuditPage> VerifyCustomerAuditPage(const CustomerAuditPage& page,
                                                    const CustomerAuditVerifyOptions& options) {
  if (options.kms_roots.empty()) return InvalidArgumentError("no KMS CA to check the log key with");
  if (page.tenant != options.tenant || page.image_id != options.image_id) {
    return DataLossError("the audit answer is for image " + page.image_id + " of " + page.tenant +
                         ", not " + options.image_id + " of " + options.tenant);
  }
  // 1. The log key, endorsed by the pinned KMS CA.
  const std::string message = LogKeyEndorsementMessage(page.log_key);
  bool endorsed = false;
  for (const crypto::Certificate& root : options.kms_roots) {
    auto pub = root.GetPublicKey();
    if (pub.ok() && crypto::VerifySignature(*pub, crypto::SignatureDigest::kSha256,
                                            crypto::AsBytes(message), page.log_key_endorsement)
                        .ok()) {
      endorsed = true;
      break;
    }
  }
  if (!endorsed) {
    return UnauthenticatedError("log key " + page.log_key + " is not endorsed by the pinned KMS CA");
  }
  ASSIGN_OR_RETURN(auto verifier, tlog::NoteVerifier::Create(page.log_key));
  // 2. The checkpoint, signed by it, of a tree named by it.
  auto text = verifier->Open(page.checkpoint);
  if (!text.ok()) return text.status().WithPrefix("the audit checkpoint");
  ASSIGN_OR_RETURN(tlog::Checkpoint current, tlog::ParseCheckpoint(*text));
  if (current.origin != verifier->key_name()) {
    return UnauthenticatedError("the audit checkpoint's origin " + current.origin +
                                " is not the log key's name " + verifier->key_name());
  }
  VerifiedAuditPage out;
  out.tree_size = current.size;
  out.checkpoint = page.checkpoint;
  out.log_key = page.log_key;
  out.next_after = page.next_after;
  // 3. The log extends the checkpoint saved earlier.
  if (!options.saved_checkpoint.empty()) {
    auto saved_text = verifier->Open(options.saved_checkpoint);
    if (!saved_text.ok()) return saved_text.status().WithPrefix("the saved checkpoint");
    ASSIGN_OR_RETURN(tlog::Checkpoint saved, tlog::ParseCheckpoint(*saved_text));
    if (saved.origin != current.origin) {
      return DataLossError("the saved checkpoint is of log " + saved.origin + ", not " + current.origin);
    }
    if (saved.size > current.size) {
      return DataLossError("truncated: the saved checkpoint covers " + std::to_string(saved.size) +
                           " records but the log has only " + std::to_string(current.size) +
                           " (records were deleted)");
    }
    if (saved.size > 0) {
      if (page.consistency.empty()) {
        return DataLossError("fork or rewrite: no consistency proof from the saved checkpoint (" +
                             std::to_string(saved.size) + " records)");
      }
      ASSIGN_OR_RETURN(tlog::ConsistencyProofText c, tlog::ParseConsistencyProof(page.consistency));
      if (c.old_size != saved.size || c.checkpoint != page.checkpoint) {
        return DataLossError("fork or rewrite: the consistency proof is not from the saved checkpoint "
                             "to the current one");
      }
      Status consistent = tlog::VerifyConsistency(saved.size, current.size, c.hashes, saved.root, current.root);
      if (!consistent.ok()) {
        return DataLossError("fork or rewrite: the log is not an extension of the saved checkpoint (" +
                             std::to_string(saved.size) + " records): " + consistent.message());
      }
    }
    out.extends_saved_size = static_cast<int64_t>(saved.size);
  }
  // 4. Each record: in the checkpoint's tree, in order, about this image.
  int64_t last = options.after_seq;
  for (const std::string& text_proof : page.proofs) {
    ASSIGN_OR_RETURN(tlog::InclusionProofText p, tlog::ParseInclusionProof(text_proof));
    const int64_t seq = static_cast<int64_t>(p.index) + 1;
    const std::string where = "audit record " + std::to_string(seq) + ": ";
    if (p.checkpoint != page.checkpoint) {
      return UnauthenticatedError(where + "its proof is for another checkpoint than the answer's");
    }
    Status included = tlog::VerifyInclusion(p.index, current.size, tlog::LeafHash(p.extra), p.hashes,
                                            current.root);
    if (!included.ok()) {
      return UnauthenticatedError(where + "the record is not in the signed tree: " + included.message());
    }
    if (seq <= last) return DataLossError(where + "out of order (after " + std::to_string(last) + ")");
    last = seq;
    auto rec = ParseJson(p.extra);
    if (!rec.ok() || !rec->is_object()) return DataLossError(where + "not a JSON record");
    if (!(*rec).contains("seq") || !(*rec)["seq"].is_number_integer() || (*rec)["seq"].get<int64_t>() != seq) {
      return DataLossError(where + "the record's seq field differs from its place in the log");
    }
    auto about = AuditRecordImage(*rec);
    if (!about || about->first != options.tenant || about->second != options.image_id) {
      return DataLossError(where + "not about image " + options.image_id + " of " + options.tenant);
    }
    VerifiedAuditEvent e;
    e.seq = seq;
    e.time_unix = (*rec).contains("time") && (*rec)["time"].is_number_integer() ? (*rec)["time"].get<int64_t>() : 0;
    e.event = Text(*rec, "event");
    e.details = (*rec)["details"];
    e.host_id = Text(e.details, "host_id");
    const std::string subject = Text(*rec, "subject");
    if (e.host_id.empty() && subject.rfind("host/", 0) == 0) e.host_id = subject.substr(5);
    e.job_id = Text(e.details, "job_id");
    e.reason = Text(e.details, "reason");
    out.events.push_back(std::move(e));
  }
  if (page.next_after != 0 && page.next_after != last) {
    return DataLossError("the answer's next page does not start after its last record");
  }
  return out;
}

// --- KMS side ----------------------------------------------------------------

StatusOr<CustomerAuditPage> KmsService::CustomerAudit(const Caller& caller,
                                                      const CustomerAuditRequest& req) {
  RETURN_IF_ERROR(RequireAny(caller, {Caller::Role::kPortal, Caller::Role::kOperator}, "customer audit"));
  if (!ValidImageName(req.tenant) || !ValidImageName(req.image_id)) {
    return InvalidArgumentError("tenant and image_id must match [A-Za-z0-9._:@-]{1,128}");
  }
  if (req.limit < 1 || req.limit > kMaxCustomerAuditEvents) {
    return InvalidArgumentError("limit must be 1.." + std::to_string(kMaxCustomerAuditEvents));
  }
  if (req.after_seq < 0 || req.old_size < 0) {
    return InvalidArgumentError("after and old must not be negative");
  }
  auto image = store_->GetImage(req.tenant, req.image_id);
  if (!image.ok() && image.status().code() != StatusCode::kNotFound) return image.status();
  if (!image.ok()) {
    ASSIGN_OR_RETURN(std::vector<std::string> owners, store_->ImageTenants(req.image_id));
    if (!owners.empty()) {
      RecordDenial("tenant_mismatch",
                   std::string(caller.role == Caller::Role::kPortal ? "portal/" : "operator/") + caller.name,
                   "customer audit of image " + req.image_id + " for tenant " + req.tenant);
      return PermissionDeniedError("tenant_mismatch: image " + req.image_id +
                                   " is not registered for tenant " + req.tenant);
    }
    return NotFoundError("unknown_image: image " + req.image_id + " is not registered for tenant " +
                         req.tenant);
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> seqs,
                   store_->AuditSeqsForImage(req.tenant, req.image_id, req.after_seq, req.limit + 1));
  const bool more = seqs.size() > static_cast<size_t>(req.limit);
  if (more) seqs.resize(static_cast<size_t>(req.limit));
  ASSIGN_OR_RETURN(AuditLog::RecordProofs proofs, audit_log_->ProveRecords(seqs, req.old_size));
  CustomerAuditPage page;
  page.tenant = req.tenant;
  page.image_id = req.image_id;
  page.log_key = audit_log_->verifier_key();
  page.log_key_endorsement = log_key_endorsement_;
  page.checkpoint = std::move(proofs.checkpoint);
  page.proofs = std::move(proofs.inclusion);
  page.consistency = std::move(proofs.consistency);
  page.next_after = more ? seqs.back() : 0;
  return page;
}

StatusOr<crypto::Bytes> EndorseLogKey(const SecretBytes& ca_key_pem, const std::string& verifier_key) {
  ASSIGN_OR_RETURN(crypto::PrivateKey ca_key, crypto::PrivateKey::FromPem(ca_key_pem));
  return crypto::Sign(ca_key, crypto::SignatureDigest::kSha256,
                      crypto::AsBytes(LogKeyEndorsementMessage(verifier_key)));
}

void RegisterCustomerAuditRoute(KmsService* s, net::HttpsServer* server) {
  server->Get("/v1/images/([A-Za-z0-9._:@-]{1,128})/([A-Za-z0-9._:@-]{1,128})/audit",
              [s](const net::Request& r) -> StatusOr<json> {
                CustomerAuditRequest req;
                req.tenant = r.path_params[0];
                req.image_id = r.path_params[1];
                ASSIGN_OR_RETURN(req.after_seq, QueryInt(r, "after", 0));
                ASSIGN_OR_RETURN(req.limit, QueryInt(r, "limit", kMaxCustomerAuditEvents));
                ASSIGN_OR_RETURN(req.old_size, QueryInt(r, "old", 0));
                ASSIGN_OR_RETURN(CustomerAuditPage page, s->CustomerAudit(CallerFromPeer(r.peer), req));
                return CustomerAuditPageToJson(page);
              });
}

}  // namespace vmseal::kms
