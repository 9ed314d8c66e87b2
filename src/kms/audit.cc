#include "kms/audit.h"

#include "crypto/primitives.h"
#include "tlog/checkpoint.h"
#include "json/json.h"

namespace vmseal::kms {
namespace {

std::string ChainHash(const std::string& prev_hash_hex, const std::string& record) {
  auto prev = crypto::HexDecode(prev_hash_hex);
  crypto::Sha256Hasher hasher;
  if (prev.ok()) hasher.Update(std::span<const uint8_t>(*prev));
  hasher.Update(record);
  return crypto::HexEncode(hasher.Finish());
}

}  // namespace

AuditRecord MakeAuditRecord(int64_t seq, int64_t time_unix, const AuditEvent& event,
                            const std::string& prev_hash_hex) {
  nlohmann::json j = {{"seq", seq},           {"time", time_unix},
                      {"event", event.event}, {"subject", event.subject},
                      {"details", event.details}, {"prev_hash", prev_hash_hex}};
  AuditRecord rec;
  rec.seq = seq;
  rec.record = DumpJson(j);  // object keys are sorted
  rec.hash = ChainHash(prev_hash_hex, rec.record);
  return rec;
}

StatusOr<AuditHead> VerifyAuditChain(const std::vector<AuditRecord>& records) {
  AuditHead head;
  for (const AuditRecord& rec : records) {
    const int64_t want = head.count + 1;
    std::string where = "audit record " + std::to_string(want);
    if (rec.seq != want) {
      return DataLossError(where + ": sequence gap or reorder (found seq " +
                           std::to_string(rec.seq) + ")");
    }
    auto parsed = ParseJson(rec.record);
    if (!parsed.ok() || !parsed->is_object()) return DataLossError(where + ": not a JSON object");
    const nlohmann::json& j = *parsed;
    if (!j.contains("seq") || !j["seq"].is_number_integer() || j["seq"].get<int64_t>() != want) {
      return DataLossError(where + ": seq field does not match its position");
    }
    if (!j.contains("prev_hash") || !j["prev_hash"].is_string() ||
        j["prev_hash"].get<std::string>() != head.hash) {
      return DataLossError(where + ": prev_hash does not match the previous record");
    }
    if (ChainHash(head.hash, rec.record) != rec.hash) {
      return DataLossError(where + ": hash mismatch (record changed)");
    }
    head.count = want;
    head.hash = rec.hash;
  }
  return head;
}

namespace {

constexpr const char* kLogKeyName = kLogKeySecretName;
constexpr char kLogKeyEvent[] = "kms.audit_log_key.create";
constexpr char kOriginPrefix[] = "vmseal-kms/audit/";

// The signer for `seed`, named after its public key so that every store's
// log has its own origin.
StatusOr<std::unique_ptr<tlog::NoteSigner>> SignerForSeed(const SecretBytes& seed) {
  ASSIGN_OR_RETURN(auto unnamed, tlog::NoteSigner::Create("unnamed", seed));
  const crypto::Sha256Digest d = crypto::Sha256(std::span<const uint8_t>(unnamed->public_key()));
  return tlog::NoteSigner::Create(kOriginPrefix + crypto::HexEncode(std::span<const uint8_t>(d).first(8)),
                                  seed);
}

std::string SizeText(uint64_t n) { return std::to_string(n); }

// Checks one signed checkpoint (`what` names it in errors) against the tree
// recomputed from the records.
StatusOr<int64_t> CheckCheckpoint(const std::string& note, const std::string& what,
                                  const tlog::NoteVerifier& verifier, tlog::MemoryTree& tree) {
  auto text = verifier.Open(note);
  if (!text.ok()) return text.status().WithPrefix(what);
  auto cp = tlog::ParseCheckpoint(*text);
  if (!cp.ok()) return cp.status().WithPrefix(what);
  if (cp->origin != verifier.key_name()) {
    return DataLossError(what + ": origin " + cp->origin + " is not this log's (" + verifier.key_name() + ")");
  }
  if (cp->size > tree.size()) {
    return DataLossError("truncated: " + what + " covers " + SizeText(cp->size) +
                         " records but the log has only " + SizeText(tree.size()) +
                         " (the newest records were deleted)");
  }
  const tlog::Hash root = tree.Root();
  std::vector<tlog::Hash> proof;
  if (cp->size > 0) {
    ASSIGN_OR_RETURN(proof, tlog::ConsistencyProof(tree, cp->size, tree.size()));
  }
  Status consistent = tlog::VerifyConsistency(cp->size, tree.size(), proof, cp->root, root);
  if (!consistent.ok()) {
    return DataLossError("fork or rewrite: the log is not an extension of " + what + " (tree of " +
                         SizeText(cp->size) + " records): a record among the first " +
                         SizeText(cp->size) + " was changed, or this is another log; " +
                         consistent.message());
  }
  return static_cast<int64_t>(cp->size);
}

// The verifier key the log recorded when its key was created ("" if none).
std::string RecordedLogKey(const std::vector<AuditRecord>& records) {
  for (const AuditRecord& rec : records) {
    if (rec.record.find(kLogKeyEvent) == std::string::npos) continue;
    auto j = ParseJson(rec.record);
    if (!j.ok() || !j->is_object() || j->value("event", "") != kLogKeyEvent) continue;
    const auto details = j->find("details");
    if (details != j->end() && details->is_object() && details->contains("log_key") &&
        (*details)["log_key"].is_string()) {
      return (*details)["log_key"].get<std::string>();
    }
  }
  return "";
}

}  // namespace

StatusOr<AuditHead> VerifyStoreAudit(Store& store, const AuditVerifyOptions& options) {
  std::vector<AuditRecord> all;
  int64_t after = 0;
  while (true) {
    ASSIGN_OR_RETURN(auto page, store.ReadAudit(after, 1000));
    if (page.empty()) break;
    after = page.back().seq;
    for (auto& r : page) all.push_back(std::move(r));
  }
  ASSIGN_OR_RETURN(AuditHead head, VerifyAuditChain(all));

  // The tree from the records, against the tree the store kept.
  tlog::MemoryTree tree;
  for (const AuditRecord& rec : all) tree.AppendData(rec.record);
  head.root_hex = tlog::HashHex(tree.Root());
  ASSIGN_OR_RETURN(tlog::Frontier stored, store.AuditFrontier());
  if (stored.size() != tree.size()) {
    return DataLossError("truncated: the audit tree has " + SizeText(stored.size()) +
                         " leaves but the log has " + SizeText(tree.size()) + " records");
  }
  if (stored.Root() != tree.Root()) {
    for (uint64_t i = 0; i < tree.size(); ++i) {
      auto leaf = store.AuditNode(0, i);
      if (!leaf.ok() || *leaf != *tree.Node(0, i)) {
        return DataLossError("rewritten: audit record " + SizeText(i + 1) +
                             " does not hash to the tree's leaf " + SizeText(i));
      }
    }
    return DataLossError("rewritten: the records do not hash to the stored tree head");
  }

  std::string log_key = options.log_key.empty() ? RecordedLogKey(all) : options.log_key;
  std::unique_ptr<tlog::NoteVerifier> verifier;
  if (!log_key.empty()) {
    auto v = tlog::NoteVerifier::Create(log_key);
    if (!v.ok()) return v.status().WithPrefix("log key");
    verifier = std::move(*v);
    head.log_key = log_key;
  }
  auto newest = store.LatestAuditCheckpoint();
  if (!newest.ok() && newest.status().code() != StatusCode::kNotFound) return newest.status();
  if (newest.ok()) {
    if (!verifier) return DataLossError("the store holds a checkpoint but the log records no log key");
    ASSIGN_OR_RETURN(head.newest_checkpoint_size,
                     CheckCheckpoint(*newest, "the newest issued checkpoint", *verifier, tree));
  }
  if (!options.checkpoint.empty()) {
    if (!verifier) return DataLossError("the log records no log key: give the verifier key");
    ASSIGN_OR_RETURN(head.saved_checkpoint_size,
                     CheckCheckpoint(options.checkpoint, "the saved checkpoint", *verifier, tree));
  }
  return head;
}

StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(Store* store, const KeyEncryptionKey* kek) {
  SecretBytes fresh = SecretBytes::Random(tlog::kEd25519SeedBytes);
  ASSIGN_OR_RETURN(auto fresh_signer, SignerForSeed(fresh));
  ASSIGN_OR_RETURN(auto wrapped, kek->WrapForRecord(fresh, kLogKeyAad));
  ASSIGN_OR_RETURN(
      std::string stored,
      store->PutSecretIfAbsent(kLogKeyName,
                               wrapped.kek_id + " " + crypto::Base64Encode(crypto::AsBytes(wrapped.wrapped)),
                               {kLogKeyEvent, "kms",
                                nlohmann::json{{"kek_id", wrapped.kek_id}, {"log_key", fresh_signer->VerifierKey()}}}));
  wrapped.hold.reset();
  const size_t space = stored.find(' ');
  if (space == std::string::npos) return DataLossError("the store's audit log key record is malformed");
  const std::string stored_kek = stored.substr(0, space);
  if (!kek->Holds(stored_kek)) {
    return FailedPreconditionError("kek_mismatch: this store's audit log key is wrapped under KEK " +
                                   stored_kek + " but this KMS uses KEK " + kek->id());
  }
  ASSIGN_OR_RETURN(crypto::Bytes blob, crypto::Base64Decode(std::string_view(stored).substr(space + 1)));
  auto seed = kek->UnwrapUnder(stored_kek, crypto::AsStringView(blob), kLogKeyAad);
  if (!seed.ok()) return DataLossError("the store's audit log key does not open under KEK " + kek->id());
  ASSIGN_OR_RETURN(auto signer, SignerForSeed(*seed));
  return std::unique_ptr<AuditLog>(new AuditLog(store, std::move(signer)));
}

StatusOr<std::pair<uint64_t, std::string>> AuditLog::SignedAt(int64_t size) {
  ASSIGN_OR_RETURN(tlog::Frontier frontier, store_->AuditFrontier());
  if (size < 0 || static_cast<uint64_t>(size) > frontier.size()) {
    return InvalidArgumentError("size " + std::to_string(size) + " is not in 0.." +
                                SizeText(frontier.size()));
  }
  const bool current = size == 0;
  const uint64_t n = current ? frontier.size() : static_cast<uint64_t>(size);
  tlog::Hash root = frontier.Root();
  if (!current) {
    StoreAuditNodes nodes(*store_);
    ASSIGN_OR_RETURN(root, tlog::TreeRoot(nodes, n));
  }
  ASSIGN_OR_RETURN(std::string text, tlog::FormatCheckpoint({origin(), n, root, {}}));
  ASSIGN_OR_RETURN(std::string note, signer_->Sign(text));
  if (current) RETURN_IF_ERROR(store_->PutAuditCheckpoint(static_cast<int64_t>(n), note));
  return std::make_pair(n, std::move(note));
}

StatusOr<std::string> AuditLog::Checkpoint() {
  ASSIGN_OR_RETURN(auto signed_at, SignedAt(0));
  return std::move(signed_at.second);
}

StatusOr<std::string> AuditLog::InclusionProof(int64_t seq, int64_t size) {
  ASSIGN_OR_RETURN(auto signed_at, SignedAt(size));
  if (seq < 1 || static_cast<uint64_t>(seq) > signed_at.first) {
    return InvalidArgumentError("record " + std::to_string(seq) + " is not in a tree of " +
                                SizeText(signed_at.first) + " records");
  }
  ASSIGN_OR_RETURN(auto records, store_->ReadAudit(seq - 1, 1));
  if (records.empty() || records[0].seq != seq) return NotFoundError("audit record " + std::to_string(seq));
  StoreAuditNodes nodes(*store_);
  tlog::InclusionProofText proof;
  proof.extra = records[0].record;
  proof.index = static_cast<uint64_t>(seq - 1);
  ASSIGN_OR_RETURN(proof.hashes, tlog::InclusionProof(nodes, proof.index, signed_at.first));
  proof.checkpoint = std::move(signed_at.second);
  return tlog::FormatInclusionProof(proof);
}

StatusOr<std::string> AuditLog::ConsistencyProof(int64_t old_size, int64_t size) {
  ASSIGN_OR_RETURN(auto signed_at, SignedAt(size));
  if (old_size < 0 || static_cast<uint64_t>(old_size) > signed_at.first) {
    return InvalidArgumentError("old size " + std::to_string(old_size) + " is not in 0.." +
                                SizeText(signed_at.first));
  }
  tlog::ConsistencyProofText proof;
  proof.old_size = static_cast<uint64_t>(old_size);
  if (old_size > 0) {
    StoreAuditNodes nodes(*store_);
    ASSIGN_OR_RETURN(proof.hashes, tlog::ConsistencyProof(nodes, proof.old_size, signed_at.first));
  }
  proof.checkpoint = std::move(signed_at.second);
  return tlog::FormatConsistencyProof(proof);
}

StatusOr<AuditLog::RecordProofs> AuditLog::ProveRecords(const std::vector<int64_t>& seqs,
                                                        int64_t old_size) {
  ASSIGN_OR_RETURN(auto signed_at, SignedAt(0));
  RecordProofs out;
  out.size = signed_at.first;
  out.checkpoint = std::move(signed_at.second);
  StoreAuditNodes nodes(*store_);
  if (old_size < 0) return InvalidArgumentError("old size must not be negative");
  // A saved checkpoint of a longer log than this one gets no proof: the
  // verifier reports the truncation itself.
  if (old_size > 0 && static_cast<uint64_t>(old_size) <= out.size) {
    tlog::ConsistencyProofText c;
    c.old_size = static_cast<uint64_t>(old_size);
    ASSIGN_OR_RETURN(c.hashes, tlog::ConsistencyProof(nodes, c.old_size, out.size));
    c.checkpoint = out.checkpoint;
    out.consistency = tlog::FormatConsistencyProof(c);
  }
  for (int64_t seq : seqs) {
    if (seq < 1 || static_cast<uint64_t>(seq) > out.size) {
      return DataLossError("audit record " + std::to_string(seq) + " is not in the tree of " +
                           SizeText(out.size) + " records");
    }
    ASSIGN_OR_RETURN(auto records, store_->ReadAudit(seq - 1, 1));
    if (records.empty() || records[0].seq != seq) {
      return DataLossError("audit record " + std::to_string(seq) + " is missing from the log");
    }
    tlog::InclusionProofText proof;
    proof.extra = records[0].record;
    proof.index = static_cast<uint64_t>(seq - 1);
    ASSIGN_OR_RETURN(proof.hashes, tlog::InclusionProof(nodes, proof.index, out.size));
    proof.checkpoint = out.checkpoint;
    out.inclusion.push_back(tlog::FormatInclusionProof(proof));
  }
  return out;
}

}  // namespace vmseal::kms
