#include "ovf/tar.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "ovf/package_format.h"

namespace vmseal::ovf {
namespace {

constexpr size_t kBlockBytes = 512;
constexpr uint64_t kMaxOctalSize = (uint64_t{1} << 33) - 1;  // 11 octal digits

struct Header {
  char name[100];
  char mode[8];
  char uid[8];
  char gid[8];
  char size[12];
  char mtime[12];
  char chksum[8];
  char typeflag;
  char linkname[100];
  char magic[6];
  char version[2];
  char uname[32];
  char gname[32];
  char devmajor[8];
  char devminor[8];
  char prefix[155];
  char pad[12];
};
static_assert(sizeof(Header) == kBlockBytes);

void WriteOctal(char* field, size_t width, uint64_t value) {
  // width-1 digits and a NUL terminator.
  field[width - 1] = '\0';
  for (size_t i = width - 1; i-- > 0;) {
    field[i] = static_cast<char>('0' + (value & 7));
    value >>= 3;
  }
}

unsigned Checksum(const uint8_t* block) {
  unsigned sum = 0;
  for (size_t i = 0; i < kBlockBytes; ++i) {
    bool in_chksum = i >= offsetof(Header, chksum) && i < offsetof(Header, chksum) + 8;
    sum += in_chksum ? ' ' : block[i];
  }
  return sum;
}

StatusOr<uint64_t> ParseNumber(const char* field, size_t width, const char* what) {
  const auto* u = reinterpret_cast<const uint8_t*>(field);
  if (u[0] & 0x80) {  // base-256 (GNU), positive values only
    if (u[0] != 0x80) return InvalidArgumentError(std::string("bad tar ") + what + " field");
    uint64_t v = 0;
    for (size_t i = 1; i < width; ++i) {
      if (v >> 56) return InvalidArgumentError(std::string("tar ") + what + " too large");
      v = (v << 8) | u[i];
    }
    return v;
  }
  uint64_t v = 0;
  size_t i = 0;
  while (i < width && field[i] == ' ') ++i;
  bool any = false;
  for (; i < width && field[i] >= '0' && field[i] <= '7'; ++i) {
    if (v >> 60) return InvalidArgumentError(std::string("tar ") + what + " too large");
    v = v * 8 + static_cast<uint64_t>(field[i] - '0');
    any = true;
  }
  for (; i < width; ++i) {
    if (field[i] != '\0' && field[i] != ' ') {
      return InvalidArgumentError(std::string("bad tar ") + what + " field");
    }
  }
  if (!any) return InvalidArgumentError(std::string("bad tar ") + what + " field");
  return v;
}

std::string FieldString(const char* field, size_t width) {
  return std::string(field, strnlen(field, width));
}

class SliceFile : public RandomAccessFile {
 public:
  SliceFile(const RandomAccessFile* base, uint64_t offset, uint64_t size)
      : base_(base), offset_(offset), size_(size) {}
  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    if (offset >= size_) return size_t{0};
    uint64_t n = std::min<uint64_t>(out.size(), size_ - offset);
    return base_->Read(offset_ + offset, out.first(static_cast<size_t>(n)));
  }
  StatusOr<uint64_t> Size() const override { return size_; }

 private:
  const RandomAccessFile* const base_;
  const uint64_t offset_;
  const uint64_t size_;
};

// Counts what the DataFn writes so that a wrong size is caught before the
// archive is corrupt.
class CountingFile : public WritableFile {
 public:
  explicit CountingFile(WritableFile* out) : out_(out) {}
  Status Append(std::span<const uint8_t> data) override {
    count_ += data.size();
    return out_->Append(data);
  }
  Status Skip(uint64_t bytes) override {
    static const uint8_t kZeros[4096] = {};
    while (bytes > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(bytes, sizeof(kZeros)));
      RETURN_IF_ERROR(Append(std::span<const uint8_t>(kZeros, n)));
      bytes -= n;
    }
    return OkStatus();
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  uint64_t count() const { return count_; }

 private:
  WritableFile* const out_;
  uint64_t count_ = 0;
};

}  // namespace

Status ValidateFileName(const std::string& name) {
  if (name.empty()) return InvalidArgumentError("empty file name");
  if (name[0] == '/') return InvalidArgumentError("absolute path not allowed: " + name.substr(0, 100));
  if (name == ".." || name.starts_with("../") || name.ends_with("/..") ||
      name.find("/../") != std::string::npos) {
    return InvalidArgumentError("'..' not allowed in file name: " + name.substr(0, 100));
  }
  if (name.size() > kMaxNameBytes) return InvalidArgumentError("file name longer than 100 bytes");
  if (name.find('/') != std::string::npos) {
    return InvalidArgumentError("subdirectories are not supported: " + name);
  }
  if (name == ".") return InvalidArgumentError("invalid file name: .");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == '+';
    if (!ok) return InvalidArgumentError("invalid character in file name: " + name);
  }
  return OkStatus();
}

Status TarWriter::AddMember(const std::string& name, uint64_t size, const DataFn& data) {
  RETURN_IF_ERROR(ValidateFileName(name));
  Header h;
  std::memset(&h, 0, sizeof(h));
  std::memcpy(h.name, name.data(), name.size());
  WriteOctal(h.mode, sizeof(h.mode), 0644);
  WriteOctal(h.uid, sizeof(h.uid), 0);
  WriteOctal(h.gid, sizeof(h.gid), 0);
  if (size <= kMaxOctalSize) {
    WriteOctal(h.size, sizeof(h.size), size);
  } else {
    auto* u = reinterpret_cast<uint8_t*>(h.size);
    u[0] = 0x80;
    for (size_t i = 0; i < 8; ++i) u[11 - i] = static_cast<uint8_t>(size >> (8 * i));
  }
  WriteOctal(h.mtime, sizeof(h.mtime), 0);
  h.typeflag = '0';
  std::memcpy(h.magic, "ustar", 6);
  std::memcpy(h.version, "00", 2);
  std::memcpy(h.uname, "root", 4);
  std::memcpy(h.gname, "root", 4);
  auto* block = reinterpret_cast<uint8_t*>(&h);
  unsigned sum = Checksum(block);
  WriteOctal(h.chksum, 7, sum);  // six digits, NUL, then a space
  h.chksum[7] = ' ';
  RETURN_IF_ERROR(out_->Append(std::span<const uint8_t>(block, kBlockBytes)));
  CountingFile counting(out_);
  RETURN_IF_ERROR(data(&counting));
  if (counting.count() != size) {
    return InternalError("tar member " + name + ": wrote " + std::to_string(counting.count()) +
                         " bytes, announced " + std::to_string(size));
  }
  static const uint8_t kZeros[kBlockBytes] = {};
  size_t pad = static_cast<size_t>((kBlockBytes - size % kBlockBytes) % kBlockBytes);
  return out_->Append(std::span<const uint8_t>(kZeros, pad));
}

Status TarWriter::Finish() {
  static const uint8_t kZeros[2 * kBlockBytes] = {};
  return out_->Append(kZeros);
}

StatusOr<std::unique_ptr<TarReader>> TarReader::Open(const RandomAccessFile* file) {
  ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  std::vector<TarMember> members;
  std::set<std::string> names;
  uint64_t offset = 0;
  uint8_t block[kBlockBytes];
  while (true) {
    if (offset + kBlockBytes > file_size) {
      return InvalidArgumentError("OVA archive truncated (no end-of-archive marker)");
    }
    ASSIGN_OR_RETURN(size_t n, file->Read(offset, block));
    if (n != kBlockBytes) return InvalidArgumentError("OVA archive truncated");
    if (std::all_of(block, block + kBlockBytes, [](uint8_t b) { return b == 0; })) break;
    Header h;
    std::memcpy(&h, block, sizeof(h));
    if (std::memcmp(h.magic, "ustar", 5) != 0) {
      return InvalidArgumentError("not a USTAR archive (bad magic at offset " +
                                  std::to_string(offset) + ")");
    }
    ASSIGN_OR_RETURN(uint64_t stored_sum, ParseNumber(h.chksum, sizeof(h.chksum), "checksum"));
    if (stored_sum != Checksum(block)) {
      return InvalidArgumentError("tar header checksum mismatch at offset " +
                                  std::to_string(offset));
    }
    std::string name = FieldString(h.name, sizeof(h.name));
    std::string prefix = FieldString(h.prefix, sizeof(h.prefix));
    if (!prefix.empty()) name = prefix + "/" + name;
    switch (h.typeflag) {
      case '0':
      case '\0':
      case '7':
        break;
      case '1':
      case '2':
        return InvalidArgumentError("OVA member is a link: " + name.substr(0, 100));
      case '3':
      case '4':
        return InvalidArgumentError("OVA member is a device: " + name.substr(0, 100));
      case '5':
        return InvalidArgumentError("OVA member is a directory: " + name.substr(0, 100));
      case '6':
        return InvalidArgumentError("OVA member is a fifo: " + name.substr(0, 100));
      default:
        return InvalidArgumentError(std::string("OVA member has unsupported tar type '") +
                                    (h.typeflag >= 0x20 && h.typeflag < 0x7f ? h.typeflag : '?') +
                                    "': " + name.substr(0, 100));
    }
    RETURN_IF_ERROR(ValidateFileName(name).WithPrefix("OVA member"));
    if (!names.insert(name).second) {
      return InvalidArgumentError("duplicate OVA member: " + name);
    }
    if (members.size() >= kMaxTarMembers) {
      return InvalidArgumentError("OVA has more than " + std::to_string(kMaxTarMembers) +
                                  " members");
    }
    ASSIGN_OR_RETURN(uint64_t size, ParseNumber(h.size, sizeof(h.size), "size"));
    uint64_t data_offset = offset + kBlockBytes;
    if (size > file_size - data_offset) {
      return InvalidArgumentError("OVA member extends past the end of the archive: " + name);
    }
    members.push_back(TarMember{name, data_offset, size});
    uint64_t padded = size + (kBlockBytes - size % kBlockBytes) % kBlockBytes;
    if (padded > file_size - data_offset) {
      return InvalidArgumentError("OVA archive truncated");
    }
    offset = data_offset + padded;
  }
  return std::unique_ptr<TarReader>(new TarReader(file, std::move(members)));
}

const TarMember* TarReader::Find(const std::string& name) const {
  for (const TarMember& m : members_) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

std::unique_ptr<RandomAccessFile> TarReader::NewMemberFile(const TarMember& member) const {
  return NewSliceFile(file_, member.data_offset, member.size);
}

std::unique_ptr<RandomAccessFile> NewSliceFile(const RandomAccessFile* base, uint64_t offset,
                                               uint64_t size) {
  return std::make_unique<SliceFile>(base, offset, size);
}

}  // namespace vmseal::ovf
