#include "store/upload_sessions.h"

#include <filesystem>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "json/json.h"

namespace vmseal::store {
namespace {

constexpr size_t kBufferBytes = 1 << 20;

StatusOr<uint64_t> ParseQuota(const std::string& meta) {
  auto parsed = ParseJson(meta);
  if (!parsed.ok() || !parsed->is_object() || !(*parsed)["max"].is_number_unsigned()) {
    return DataLossError("corrupt upload session");
  }
  return (*parsed)["max"].get<uint64_t>();
}

StatusOr<UploadSession> ToSession(const std::string& id, const StagedInfo& info) {
  ASSIGN_OR_RETURN(uint64_t max, ParseQuota(info.meta));
  return UploadSession{id, info.key, info.size_bytes, max};
}

StatusOr<std::string> HashContent(const RandomAccessFile& file) {
  crypto::Sha256Hasher hasher;
  std::vector<uint8_t> buf(kBufferBytes);
  RandomAccessFileReader reader(&file);
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, reader.Read(buf));
    if (n == 0) break;
    hasher.Update(std::span<const uint8_t>(buf.data(), n));
  }
  return crypto::HexEncode(hasher.Finish());
}

// Copies `file` into a fresh local file at `path` (0600) for a verifier that
// opens packages by path.
Status CopyToLocal(const RandomAccessFile& file, const std::string& path) {
  Env* env = Env::Default();
  ASSIGN_OR_RETURN(auto out, env->NewExclusiveFile(path, 0600));
  std::vector<uint8_t> buf(kBufferBytes);
  RandomAccessFileReader reader(&file);
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, reader.Read(buf));
    if (n == 0) break;
    RETURN_IF_ERROR(out->Append(std::span<const uint8_t>(buf.data(), n)));
  }
  return out->Close();
}

}  // namespace

StatusOr<std::unique_ptr<UploadSessions>> UploadSessions::Create(const Options& options,
                                                                 ObjectStore* store) {
  if (options.staging_dir.empty()) return InvalidArgumentError("staging directory is empty");
  if (store == nullptr) return InvalidArgumentError("upload sessions need a store");
  std::error_code ec;
  std::filesystem::create_directories(options.staging_dir, ec);
  if (ec) return InternalError("create " + options.staging_dir + ": " + ec.message());
  std::filesystem::permissions(options.staging_dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  return std::unique_ptr<UploadSessions>(new UploadSessions(options, store));
}

Status UploadSessions::Acquire(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!busy_.insert(id).second) return AbortedError("upload session is busy");
  return OkStatus();
}

void UploadSessions::Release(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  busy_.erase(id);
}

UploadSessions::Running UploadSessions::TakeRunning(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = running_.find(id);
  if (it == running_.end()) return {};
  Running r = std::move(it->second);
  running_.erase(it);
  return r;
}

void UploadSessions::PutRunning(const std::string& id, Running running) {
  std::lock_guard<std::mutex> lock(mu_);
  if (running_.size() >= options_.max_hashed_sessions) {
    // Forgotten sessions: their commit (if any) reads the bytes back.
    running_.erase(running_.begin());
  }
  running_[id] = std::move(running);
}

uint64_t UploadSessions::rehashed_commits_for_testing() const {
  std::lock_guard<std::mutex> lock(mu_);
  return rehashed_commits_;
}

StatusOr<UploadSession> UploadSessions::Begin(const std::string& key, const PutOptions& options) {
  RETURN_IF_ERROR(ValidateKey(key));
  const std::string id = crypto::HexEncode(crypto::RandomBytes(16));
  const nlohmann::json meta = {{"max", options.max_size_bytes}};
  RETURN_IF_ERROR(store_->StageCreate(id, key, DumpJson(meta)));
  Running running{0, std::make_unique<crypto::Sha256Hasher>()};
  PutRunning(id, std::move(running));
  return UploadSession{id, key, 0, options.max_size_bytes};
}

StatusOr<UploadSession> UploadSessions::Get(const std::string& id) {
  RETURN_IF_ERROR(ValidateStageId(id));
  ASSIGN_OR_RETURN(StagedInfo info, store_->StageStat(id));
  return ToSession(id, info);
}

StatusOr<UploadSession> UploadSessions::Append(const std::string& id, uint64_t offset_bytes,
                                               Reader& data) {
  RETURN_IF_ERROR(ValidateStageId(id));
  RETURN_IF_ERROR(Acquire(id));
  struct Busy {
    UploadSessions* self;
    const std::string& id;
    ~Busy() { self->Release(id); }
  } busy{this, id};
  ASSIGN_OR_RETURN(UploadSession s, Get(id));
  // The running hash continues only from exactly where it stopped; bytes
  // appended through another process leave it behind (then Commit reads).
  Running running = TakeRunning(id);
  if (running.hasher == nullptr && offset_bytes == 0 && s.offset_bytes == 0) {
    running = {0, std::make_unique<crypto::Sha256Hasher>()};
  }
  if (running.hasher != nullptr && running.offset_bytes != offset_bytes) running = {};
  crypto::Sha256Hasher* hasher = running.hasher.get();
  auto size = store_->StageAppend(
      id, offset_bytes, data, s.max_size_bytes, [hasher](std::span<const uint8_t> bytes) {
        if (hasher != nullptr) hasher->Update(bytes);
      });
  if (!size.ok()) return size.status();  // the running hash is dropped
  if (running.hasher != nullptr) {
    running.offset_bytes = *size;
    PutRunning(id, std::move(running));
  }
  s.offset_bytes = *size;
  return s;
}

StatusOr<ObjectInfo> UploadSessions::Commit(const std::string& id,
                                            const std::string& expected_sha256_hex,
                                            const Verifier& verify) {
  RETURN_IF_ERROR(ValidateStageId(id));
  RETURN_IF_ERROR(Acquire(id));
  struct Busy {
    UploadSessions* self;
    const std::string& id;
    ~Busy() { self->Release(id); }
  } busy{this, id};
  ASSIGN_OR_RETURN(UploadSession s, Get(id));
  auto end_session = [&](Status why) {
    (void)store_->StageRemove(id);
    return why;
  };
  auto digest_mismatch = [&] {
    return end_session(DataLossError("uploaded content does not match the expected digest"));
  };
  // The digest of the bytes as they arrived, when this process saw them all.
  std::string digest;
  if (Running running = TakeRunning(id);
      running.hasher != nullptr && running.offset_bytes == s.offset_bytes) {
    digest = crypto::HexEncode(running.hasher->Finish());
    if (!expected_sha256_hex.empty() && digest != expected_sha256_hex) return digest_mismatch();
  }
  ASSIGN_OR_RETURN(StagedContent content, store_->StageSeal(id));
  if (digest.empty()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++rehashed_commits_;
    }
    ASSIGN_OR_RETURN(digest, HashContent(*content.file));
    if (!expected_sha256_hex.empty() && digest != expected_sha256_hex) return digest_mismatch();
  }
  if (verify) {
    std::string local_path = content.local_path;
    std::string scratch;
    Status verified;
    if (local_path.empty()) {
      scratch = options_.staging_dir + "/" + id + ".verify";
      (void)Env::Default()->RemoveFile(scratch);  // a crashed earlier commit's
      verified = CopyToLocal(*content.file, scratch);
      local_path = scratch;
    }
    if (verified.ok()) verified = verify(*content.file, local_path);
    if (!scratch.empty()) (void)Env::Default()->RemoveFile(scratch);
    if (!verified.ok()) return end_session(verified);
  }
  return store_->StagePublish(id, digest);
}

Status UploadSessions::Abort(const std::string& id) {
  RETURN_IF_ERROR(ValidateStageId(id));
  RETURN_IF_ERROR(Acquire(id));
  struct Busy {
    UploadSessions* self;
    const std::string& id;
    ~Busy() { self->Release(id); }
  } busy{this, id};
  (void)TakeRunning(id);
  return store_->StageRemove(id);
}

}  // namespace vmseal::store
