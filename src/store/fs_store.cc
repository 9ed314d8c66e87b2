#include "store/fs_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <filesystem>
#include <set>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "json/json.h"
#include "store/internal/quota_reader.h"

namespace vmseal::store {
namespace {

namespace fs = std::filesystem;
constexpr size_t kCopyBufferBytes = 1 << 20;

std::string KeyHash(const std::string& key) {
  return crypto::HexEncode(crypto::Sha256(key));
}

Status MakeDir(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return InternalError("create directory " + path + ": " + ec.message());
  fs::permissions(path, fs::perms::owner_all, fs::perm_options::replace, ec);
  return OkStatus();
}

StatusOr<std::vector<std::string>> ListNames(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return InternalError("list " + dir + ": " + ec.message());
  return names;
}

// True when `path` was modified within `seconds` (or cannot be stat'ed).
bool RecentlyModified(const std::string& path, int64_t seconds) {
  if (seconds <= 0) return false;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return true;
  return static_cast<int64_t>(std::time(nullptr)) - static_cast<int64_t>(st.st_mtime) < seconds;
}

// A descriptor closed on scope exit, holding the staging's flock.
struct LockedFd {
  int fd = -1;
  LockedFd() = default;
  LockedFd(const LockedFd&) = delete;
  LockedFd& operator=(const LockedFd&) = delete;
  ~LockedFd() {
    if (fd >= 0) ::close(fd);  // releases the flock
  }
};

// Opens the staged file and takes its exclusive lock without waiting.
Status OpenLocked(const std::string& path, int flags, LockedFd* out) {
  out->fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (out->fd < 0) {
    if (errno == ENOENT) return NotFoundError("no upload session");
    return ErrnoToStatus(errno, "open", "staged upload");
  }
  if (::flock(out->fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return AbortedError("upload session is busy");
    return ErrnoToStatus(errno, "lock", "staged upload");
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::unique_ptr<FsObjectStore>> FsObjectStore::Create(const Options& options) {
  if (options.root.empty()) return InvalidArgumentError("object store root is empty");
  Env* env = options.env != nullptr ? options.env : Env::Default();
  RETURN_IF_ERROR(MakeDir(options.root));
  RETURN_IF_ERROR(MakeDir(options.root + "/data"));
  RETURN_IF_ERROR(MakeDir(options.root + "/meta"));
  RETURN_IF_ERROR(MakeDir(options.root + "/staging"));
  std::unique_ptr<FsObjectStore> store(new FsObjectStore(env, options.root, options.sweep_min_age_seconds));
  RETURN_IF_ERROR(store->Sweep());
  return store;
}

std::string FsObjectStore::MetaPath(const std::string& key) const {
  return root_ + "/meta/" + KeyHash(key);
}

Status FsObjectStore::Sweep() {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> referenced;
  ASSIGN_OR_RETURN(auto metas, ListNames(root_ + "/meta"));
  for (const std::string& name : metas) {
    std::string path = root_ + "/meta/" + name;
    if (name.starts_with(".")) {  // temp of an interrupted meta write
      if (RecentlyModified(path, sweep_min_age_seconds_)) continue;
      if (env_->RemoveFile(path).ok()) ++swept_files_;
      continue;
    }
    auto meta = ReadMeta(path);
    if (meta.ok()) referenced.insert(meta->data_name);
  }
  ASSIGN_OR_RETURN(auto datas, ListNames(root_ + "/data"));
  for (const std::string& name : datas) {
    if (referenced.count(name) == 0) {
      // Another process sharing the root may be between writing the data
      // file and publishing its meta.
      if (RecentlyModified(root_ + "/data/" + name, sweep_min_age_seconds_)) continue;
      if (env_->RemoveFile(root_ + "/data/" + name).ok()) ++swept_files_;
    }
  }
  return OkStatus();
}

StatusOr<FsObjectStore::Meta> FsObjectStore::ReadMeta(const std::string& meta_path) {
  if (!env_->FileExists(meta_path)) return NotFoundError("no such object");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(env_, meta_path));
  auto parsed = ParseJson(text);
  nlohmann::json j = parsed.ok() ? *std::move(parsed) : nlohmann::json();
  if (!j.is_object() || !j["key"].is_string() || !j["size"].is_number_unsigned() ||
      !j["sha256"].is_string() || !j["data"].is_string()) {
    return DataLossError("corrupt object metadata " + meta_path);
  }
  Meta meta;
  meta.info.key = j["key"].get<std::string>();
  meta.info.size_bytes = j["size"].get<uint64_t>();
  meta.info.sha256_hex = j["sha256"].get<std::string>();
  meta.data_name = j["data"].get<std::string>();
  if (meta.data_name.find('/') != std::string::npos || meta.data_name.starts_with(".")) {
    return DataLossError("corrupt object metadata " + meta_path);
  }
  return meta;
}

StatusOr<ObjectInfo> FsObjectStore::Put(const std::string& key, Reader& source,
                                        const PutOptions& options) {
  RETURN_IF_ERROR(ValidateKey(key));
  const std::string data_name =
      KeyHash(key) + "." + crypto::HexEncode(crypto::RandomBytes(8));
  const std::string data_path = root_ + "/data/" + data_name;
  ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(env_, data_path, 0600));

  crypto::Sha256Hasher hasher;
  std::vector<uint8_t> buf(kCopyBufferBytes);
  internal::QuotaReader limited(source, 0, options.max_size_bytes, "object");
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, limited.Read(buf));
    if (n == 0) break;
    std::span<const uint8_t> chunk(buf.data(), n);
    hasher.Update(chunk);
    RETURN_IF_ERROR(out->file()->Append(chunk));
  }
  RETURN_IF_ERROR(out->Commit());

  return PublishData(ObjectInfo{key, limited.total_bytes(), crypto::HexEncode(hasher.Finish())},
                     data_name);
}

StatusOr<ObjectInfo> FsObjectStore::PublishData(const ObjectInfo& info,
                                                const std::string& data_name) {
  const std::string& key = info.key;
  const std::string data_path = root_ + "/data/" + data_name;
  nlohmann::json j = {{"key", key}, {"size", info.size_bytes}, {"sha256", info.sha256_hex},
                      {"data", data_name}};
  std::lock_guard<std::mutex> lock(mu_);
  auto old = ReadMeta(MetaPath(key));
  Status published = WriteStringToFileAtomic(env_, MetaPath(key), DumpJson(j), 0600);
  if (!published.ok()) {
    (void)env_->RemoveFile(data_path);
    return published;
  }
  if (old.ok() && old->data_name != data_name) {
    (void)env_->RemoveFile(root_ + "/data/" + old->data_name);
  }
  return info;
}

StatusOr<std::unique_ptr<RandomAccessFile>> FsObjectStore::Get(const std::string& key) {
  RETURN_IF_ERROR(ValidateKey(key));
  // Under the lock so that a concurrent replace cannot remove the data file
  // between reading meta and opening; once open, the descriptor keeps it.
  std::lock_guard<std::mutex> lock(mu_);
  auto meta = ReadMeta(MetaPath(key));
  if (!meta.ok()) {
    if (meta.status().code() == StatusCode::kNotFound) {
      return NotFoundError("no object " + key);
    }
    return meta.status();
  }
  return env_->NewRandomAccessFile(root_ + "/data/" + meta->data_name);
}

StatusOr<ObjectInfo> FsObjectStore::Stat(const std::string& key) {
  RETURN_IF_ERROR(ValidateKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  auto meta = ReadMeta(MetaPath(key));
  if (!meta.ok()) {
    if (meta.status().code() == StatusCode::kNotFound) {
      return NotFoundError("no object " + key);
    }
    return meta.status();
  }
  return meta->info;
}

StatusOr<std::vector<ObjectInfo>> FsObjectStore::List(const std::string& prefix) {
  std::lock_guard<std::mutex> lock(mu_);
  ASSIGN_OR_RETURN(auto names, ListNames(root_ + "/meta"));
  std::vector<ObjectInfo> out;
  for (const std::string& name : names) {
    if (name.starts_with(".")) continue;
    auto meta = ReadMeta(root_ + "/meta/" + name);
    if (!meta.ok()) {
      if (meta.status().code() == StatusCode::kNotFound) continue;  // raced a delete
      return meta.status();
    }
    if (meta->info.key.starts_with(prefix)) out.push_back(meta->info);
  }
  std::sort(out.begin(), out.end(),
            [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

Status FsObjectStore::Delete(const std::string& key) {
  RETURN_IF_ERROR(ValidateKey(key));
  std::lock_guard<std::mutex> lock(mu_);
  auto meta = ReadMeta(MetaPath(key));
  if (!meta.ok()) {
    if (meta.status().code() == StatusCode::kNotFound) return NotFoundError("no object " + key);
    return meta.status();
  }
  RETURN_IF_ERROR(env_->RemoveFile(MetaPath(key)));
  RETURN_IF_ERROR(env_->SyncDir(root_ + "/meta"));
  (void)env_->RemoveFile(root_ + "/data/" + meta->data_name);
  return OkStatus();
}

std::string FsObjectStore::StagePath(const std::string& id, const char* ext) const {
  return root_ + "/staging/" + id + ext;
}

StatusOr<FsObjectStore::Staging> FsObjectStore::ReadStaging(const std::string& id) {
  RETURN_IF_ERROR(ValidateStageId(id));
  const std::string meta = StagePath(id, ".json");
  if (!env_->FileExists(meta)) return NotFoundError("no upload session");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(env_, meta));
  auto parsed = ParseJson(text);
  nlohmann::json j = parsed.ok() ? *std::move(parsed) : nlohmann::json();
  if (!j.is_object() || !j["key"].is_string() || !j["meta"].is_string() ||
      !j["sealed"].is_boolean()) {
    return DataLossError("corrupt upload session");
  }
  Staging s;
  s.info.key = j["key"].get<std::string>();
  s.info.meta = j["meta"].get<std::string>();
  s.sealed = j["sealed"].get<bool>();
  RETURN_IF_ERROR(ValidateKey(s.info.key).WithPrefix("corrupt upload session"));
  struct stat st;
  if (::stat(StagePath(id, ".part").c_str(), &st) != 0) {
    return DataLossError("upload session lost its data");
  }
  s.info.size_bytes = static_cast<uint64_t>(st.st_size);
  return s;
}

Status FsObjectStore::WriteStagingMeta(const std::string& id, const Staging& s) {
  nlohmann::json j = {{"key", s.info.key}, {"meta", s.info.meta}, {"sealed", s.sealed}};
  return WriteStringToFileAtomic(env_, StagePath(id, ".json"), DumpJson(j), 0600);
}

Status FsObjectStore::StageCreate(const std::string& id, const std::string& key,
                                  const std::string& meta) {
  RETURN_IF_ERROR(ValidateStageId(id).WithPrefix("bad staging id"));
  RETURN_IF_ERROR(ValidateKey(key));
  if (meta.size() > 4096) return InvalidArgumentError("staging meta is over 4 KiB");
  if (Stat(key).ok()) return AlreadyExistsError("object " + key + " exists");
  {
    auto part = env_->NewExclusiveFile(StagePath(id, ".part"), 0600);
    if (!part.ok()) return part.status();
    RETURN_IF_ERROR((*part)->Sync());
    RETURN_IF_ERROR((*part)->Close());
  }
  Staging s;
  s.info.key = key;
  s.info.meta = meta;
  Status written = WriteStagingMeta(id, s);
  if (!written.ok()) {
    (void)env_->RemoveFile(StagePath(id, ".part"));
    return written;
  }
  return env_->SyncDir(root_ + "/staging");
}

StatusOr<StagedInfo> FsObjectStore::StageStat(const std::string& id) {
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  return s.info;
}

StatusOr<uint64_t> FsObjectStore::StageAppend(const std::string& id, uint64_t offset_bytes,
                                              Reader& source, uint64_t max_size_bytes,
                                              const StagedBytesObserver& observe) {
  RETURN_IF_ERROR(ValidateStageId(id));
  const std::string part = StagePath(id, ".part");
  LockedFd fd;
  RETURN_IF_ERROR(OpenLocked(part, O_WRONLY | O_APPEND, &fd));
  // Read under the lock: the size is what other processes left.
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (s.sealed) return FailedPreconditionError("upload is being committed");
  uint64_t size = s.info.size_bytes;
  if (offset_bytes != size) {
    return FailedPreconditionError("upload offset " + std::to_string(offset_bytes) +
                                   " does not match the session offset " + std::to_string(size));
  }
  std::vector<uint8_t> buf(kCopyBufferBytes);
  internal::QuotaReader limited(source, size, max_size_bytes, "upload");
  Status result;
  for (;;) {
    auto n = limited.Read(buf);
    if (!n.ok()) {
      result = n.status();
      break;
    }
    if (*n == 0) break;
    size_t done = 0;
    while (done < *n) {
      ssize_t w = ::write(fd.fd, buf.data() + done, *n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        result = ErrnoToStatus(errno, "write", "staged upload");
        // A partial write would leave an offset the client cannot know
        // about; cut the file back to the last whole piece.
        if (::ftruncate(fd.fd, static_cast<off_t>(size)) != 0) {
          return DataLossError("upload session lost its data");
        }
        break;
      }
      done += static_cast<size_t>(w);
    }
    if (!result.ok()) break;
    if (observe) observe(std::span<const uint8_t>(buf.data(), *n));
    size += *n;
  }
  // What was written is kept (that is the point of resuming) and durable.
  if (::fdatasync(fd.fd) != 0) return ErrnoToStatus(errno, "sync", "staged upload");
  if (!result.ok()) return result;
  return size;
}

StatusOr<StagedContent> FsObjectStore::StageSeal(const std::string& id) {
  RETURN_IF_ERROR(ValidateStageId(id));
  const std::string part = StagePath(id, ".part");
  LockedFd fd;
  RETURN_IF_ERROR(OpenLocked(part, O_RDONLY, &fd));
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (!s.sealed) {
    s.sealed = true;
    RETURN_IF_ERROR(WriteStagingMeta(id, s));
  }
  StagedContent content;
  ASSIGN_OR_RETURN(content.file, env_->NewRandomAccessFile(part));
  content.local_path = part;
  return content;
}

StatusOr<ObjectInfo> FsObjectStore::StagePublish(const std::string& id,
                                                 const std::string& sha256_hex) {
  RETURN_IF_ERROR(ValidateStageId(id));
  const std::string part = StagePath(id, ".part");
  LockedFd fd;
  RETURN_IF_ERROR(OpenLocked(part, O_RDONLY, &fd));
  ASSIGN_OR_RETURN(Staging s, ReadStaging(id));
  if (!s.sealed) return FailedPreconditionError("upload was not sealed before publishing");
  if (sha256_hex.size() != 64) return InvalidArgumentError("publish needs the SHA-256");
  // The bytes were made durable by each append; the rename moves them into
  // data/ (same file system), then meta/ publishes them.
  const std::string data_name =
      KeyHash(s.info.key) + "." + crypto::HexEncode(crypto::RandomBytes(8));
  RETURN_IF_ERROR(env_->RenameFile(part, root_ + "/data/" + data_name));
  RETURN_IF_ERROR(env_->SyncDir(root_ + "/data"));
  auto info = PublishData(ObjectInfo{s.info.key, s.info.size_bytes, sha256_hex}, data_name);
  if (!info.ok()) {
    // Back to staging, so that nothing half-published remains.
    (void)env_->RenameFile(root_ + "/data/" + data_name, part);
    return info.status();
  }
  (void)env_->RemoveFile(StagePath(id, ".json"));
  (void)env_->SyncDir(root_ + "/staging");
  return info;
}

Status FsObjectStore::StageRemove(const std::string& id) {
  RETURN_IF_ERROR(ValidateStageId(id));
  const std::string part = StagePath(id, ".part");
  LockedFd fd;
  Status locked = OpenLocked(part, O_RDONLY, &fd);
  if (!locked.ok() && locked.code() != StatusCode::kNotFound) return locked;
  if (!env_->FileExists(StagePath(id, ".json"))) return NotFoundError("no upload session");
  RETURN_IF_ERROR(env_->RemoveFile(StagePath(id, ".json")));
  (void)env_->RemoveFile(part);
  return env_->SyncDir(root_ + "/staging");
}

}  // namespace vmseal::store
