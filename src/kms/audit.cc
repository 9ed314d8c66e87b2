#include "kms/audit.h"

#include "crypto/primitives.h"
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

StatusOr<AuditHead> VerifyStoreAudit(Store& store) {
  std::vector<AuditRecord> all;
  int64_t after = 0;
  while (true) {
    ASSIGN_OR_RETURN(auto page, store.ReadAudit(after, 1000));
    if (page.empty()) break;
    after = page.back().seq;
    for (auto& r : page) all.push_back(std::move(r));
  }
  return VerifyAuditChain(all);
}

}  // namespace vmseal::kms
