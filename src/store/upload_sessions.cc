#include "store/upload_sessions.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "crypto/primitives.h"
#include "json/json.h"

namespace vmseal::store {
namespace {

constexpr size_t kBufferBytes = 1 << 20;

Status CheckId(const std::string& id) {
  if (id.size() != 32) return NotFoundError("no upload session");
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return NotFoundError("no upload session");
    }
  }
  return OkStatus();
}

// Closes a descriptor on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

StatusOr<std::unique_ptr<UploadSessions>> UploadSessions::Create(const Options& options,
                                                                 ObjectStore* store) {
  if (options.staging_dir.empty()) return InvalidArgumentError("staging directory is empty");
  std::error_code ec;
  std::filesystem::create_directories(options.staging_dir, ec);
  if (ec) return InternalError("create " + options.staging_dir + ": " + ec.message());
  std::filesystem::permissions(options.staging_dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  return std::unique_ptr<UploadSessions>(new UploadSessions(options.staging_dir, store));
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

StatusOr<UploadSession> UploadSessions::Load(const std::string& id) {
  RETURN_IF_ERROR(CheckId(id));
  const std::string meta = dir_ + "/" + id + ".json";
  Env* env = Env::Default();
  if (!env->FileExists(meta)) return NotFoundError("no upload session");
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(env, meta));
  auto parsed = ParseJson(text);
  nlohmann::json j = parsed.ok() ? *std::move(parsed) : nlohmann::json();
  if (!j.is_object() || !j["key"].is_string() || !j["max"].is_number_unsigned()) {
    return DataLossError("corrupt upload session");
  }
  UploadSession s;
  s.id = id;
  s.key = j["key"].get<std::string>();
  s.max_size_bytes = j["max"].get<uint64_t>();
  struct stat st;
  if (::stat((dir_ + "/" + id + ".part").c_str(), &st) != 0) {
    return DataLossError("upload session lost its data");
  }
  s.offset_bytes = static_cast<uint64_t>(st.st_size);
  return s;
}

StatusOr<UploadSession> UploadSessions::Begin(const std::string& key, const PutOptions& options) {
  RETURN_IF_ERROR(ValidateKey(key));
  UploadSession s;
  s.id = crypto::HexEncode(crypto::RandomBytes(16));
  s.key = key;
  s.max_size_bytes = options.max_size_bytes;
  Env* env = Env::Default();
  {
    ASSIGN_OR_RETURN(auto part, env->NewExclusiveFile(dir_ + "/" + s.id + ".part", 0600));
    RETURN_IF_ERROR(part->Sync());
    RETURN_IF_ERROR(part->Close());
  }
  nlohmann::json j = {{"key", key}, {"max", options.max_size_bytes}};
  RETURN_IF_ERROR(WriteStringToFileAtomic(env, dir_ + "/" + s.id + ".json", DumpJson(j), 0600));
  return s;
}

StatusOr<UploadSession> UploadSessions::Get(const std::string& id) { return Load(id); }

StatusOr<UploadSession> UploadSessions::Append(const std::string& id, uint64_t offset_bytes,
                                               Reader& data) {
  RETURN_IF_ERROR(CheckId(id));
  RETURN_IF_ERROR(Acquire(id));
  struct Releaser {
    UploadSessions* self;
    const std::string& id;
    ~Releaser() { self->Release(id); }
  } releaser{this, id};

  ASSIGN_OR_RETURN(UploadSession s, Load(id));
  if (offset_bytes != s.offset_bytes) {
    return FailedPreconditionError("upload offset " + std::to_string(offset_bytes) +
                                   " does not match the session offset " +
                                   std::to_string(s.offset_bytes));
  }
  const std::string part = dir_ + "/" + id + ".part";
  Fd fd{::open(part.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC)};
  if (fd.fd < 0) return ErrnoToStatus(errno, "open", part);
  std::vector<uint8_t> buf(kBufferBytes);
  Status result;
  for (;;) {
    auto n = data.Read(buf);
    if (!n.ok()) {
      result = n.status();
      break;
    }
    if (*n == 0) break;
    if (s.max_size_bytes != 0 && s.offset_bytes + *n > s.max_size_bytes) {
      result = ResourceExhaustedError("upload exceeds the size quota of " +
                                      std::to_string(s.max_size_bytes) + " bytes");
      break;
    }
    size_t done = 0;
    while (done < *n) {
      ssize_t w = ::write(fd.fd, buf.data() + done, *n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        result = ErrnoToStatus(errno, "write", part);
        // A partial write would leave an offset the client cannot know
        // about; cut the file back to the last whole chunk.
        if (::ftruncate(fd.fd, static_cast<off_t>(s.offset_bytes)) != 0) {
          return DataLossError("upload session lost its data");
        }
        break;
      }
      done += static_cast<size_t>(w);
    }
    if (!result.ok()) break;
    s.offset_bytes += *n;
  }
  // What was written is kept (that is the point of resuming) and durable.
  if (::fdatasync(fd.fd) != 0) return ErrnoToStatus(errno, "sync", part);
  if (!result.ok()) return result;
  return s;
}

StatusOr<ObjectInfo> UploadSessions::Commit(const std::string& id,
                                            const std::string& expected_sha256_hex,
                                            const Verifier& verify) {
  RETURN_IF_ERROR(CheckId(id));
  RETURN_IF_ERROR(Acquire(id));
  struct Releaser {
    UploadSessions* self;
    const std::string& id;
    ~Releaser() { self->Release(id); }
  } releaser{this, id};
  ASSIGN_OR_RETURN(UploadSession s, Load(id));
  const std::string part = dir_ + "/" + id + ".part";
  ASSIGN_OR_RETURN(auto file, Env::Default()->NewRandomAccessFile(part));
  if (!expected_sha256_hex.empty()) {
    crypto::Sha256Hasher hasher;
    std::vector<uint8_t> buf(kBufferBytes);
    RandomAccessFileReader reader(file.get());
    for (;;) {
      ASSIGN_OR_RETURN(size_t n, reader.Read(buf));
      if (n == 0) break;
      hasher.Update(std::span<const uint8_t>(buf.data(), n));
    }
    if (crypto::HexEncode(hasher.Finish()) != expected_sha256_hex) {
      return DataLossError("uploaded content does not match the expected digest");
    }
  }
  if (verify) {
    Status verified = verify(*file, part);
    if (!verified.ok()) {
      (void)Env::Default()->RemoveFile(dir_ + "/" + id + ".json");
      (void)Env::Default()->RemoveFile(part);
      return verified;
    }
  }
  RandomAccessFileReader reader(file.get());
  PutOptions put;
  put.max_size_bytes = s.max_size_bytes;
  ASSIGN_OR_RETURN(ObjectInfo info, store_->Put(s.key, reader, put));
  (void)Env::Default()->RemoveFile(dir_ + "/" + id + ".json");
  (void)Env::Default()->RemoveFile(part);
  return info;
}

Status UploadSessions::Abort(const std::string& id) {
  RETURN_IF_ERROR(CheckId(id));
  RETURN_IF_ERROR(Acquire(id));
  struct Releaser {
    UploadSessions* self;
    const std::string& id;
    ~Releaser() { self->Release(id); }
  } releaser{this, id};
  RETURN_IF_ERROR(Load(id).status());
  RETURN_IF_ERROR(Env::Default()->RemoveFile(dir_ + "/" + id + ".json"));
  (void)Env::Default()->RemoveFile(dir_ + "/" + id + ".part");
  return OkStatus();
}

}  // namespace vmseal::store
