#include "store/fs_store.h"

#include <filesystem>
#include <set>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "json/json.h"

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

}  // namespace

StatusOr<std::unique_ptr<FsObjectStore>> FsObjectStore::Create(const Options& options) {
  if (options.root.empty()) return InvalidArgumentError("object store root is empty");
  Env* env = options.env != nullptr ? options.env : Env::Default();
  RETURN_IF_ERROR(MakeDir(options.root));
  RETURN_IF_ERROR(MakeDir(options.root + "/data"));
  RETURN_IF_ERROR(MakeDir(options.root + "/meta"));
  std::unique_ptr<FsObjectStore> store(new FsObjectStore(env, options.root));
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
      if (env_->RemoveFile(path).ok()) ++swept_files_;
      continue;
    }
    auto meta = ReadMeta(path);
    if (meta.ok()) referenced.insert(meta->data_name);
  }
  ASSIGN_OR_RETURN(auto datas, ListNames(root_ + "/data"));
  for (const std::string& name : datas) {
    if (referenced.count(name) == 0) {
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
  uint64_t total = 0;
  for (;;) {
    ASSIGN_OR_RETURN(size_t n, source.Read(buf));
    if (n == 0) break;
    total += n;
    if (options.max_size_bytes != 0 && total > options.max_size_bytes) {
      return ResourceExhaustedError("object exceeds the size quota of " +
                                    std::to_string(options.max_size_bytes) + " bytes");
    }
    std::span<const uint8_t> chunk(buf.data(), n);
    hasher.Update(chunk);
    RETURN_IF_ERROR(out->file()->Append(chunk));
  }
  RETURN_IF_ERROR(out->Commit());

  ObjectInfo info{key, total, crypto::HexEncode(hasher.Finish())};
  nlohmann::json j = {{"key", key}, {"size", total}, {"sha256", info.sha256_hex},
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

}  // namespace vmseal::store
