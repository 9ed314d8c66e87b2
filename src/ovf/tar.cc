#include "ovf/tar.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <string_view>
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
  const std::string shown = name.substr(0, 100);
  if (name[0] == '/') return InvalidArgumentError("absolute path not allowed: " + shown);
  if (name == ".." || name.starts_with("../") || name.ends_with("/..") ||
      name.find("/../") != std::string::npos) {
    return InvalidArgumentError("'..' not allowed in file name: " + shown);
  }
  if (name.size() > kMaxNameBytes) {
    return InvalidArgumentError("file name longer than " + std::to_string(kMaxNameBytes) +
                                " bytes: " + shown);
  }
  if (name.find('/') != std::string::npos) {
    return InvalidArgumentError("subdirectories are not supported: " + shown);
  }
  if (name == ".") return InvalidArgumentError("invalid file name: .");
  if (name.front() == ' ' || name.back() == ' ') {
    return InvalidArgumentError("file name begins or ends with a space: '" + shown + "'");
  }
  const auto* u = reinterpret_cast<const uint8_t*>(name.data());
  for (size_t i = 0; i < name.size();) {
    const uint8_t c = u[i];
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f || std::strchr("\\:*?\"<>|", c) != nullptr) {
        return InvalidArgumentError(
            "invalid character in file name (allowed: letters, digits, spaces and any "
            "UTF-8 text except control characters and \\ : * ? \" < > | /): " +
            (c < 0x20 || c == 0x7f ? std::string("control character") : shown));
      }
      ++i;
      continue;
    }
    // UTF-8 (RFC 3629): shortest form only, no surrogates, at most U+10FFFF.
    size_t len = 0;
    uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) {
      len = 2, cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
      len = 3, cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      len = 4, cp = c & 0x07;
    } else {
      return InvalidArgumentError("file name is not UTF-8");
    }
    if (i + len > name.size()) return InvalidArgumentError("file name is not UTF-8");
    for (size_t k = 1; k < len; ++k) {
      if ((u[i + k] & 0xc0) != 0x80) return InvalidArgumentError("file name is not UTF-8");
      cp = (cp << 6) | (u[i + k] & 0x3f);
    }
    const bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
      return InvalidArgumentError("file name is not UTF-8");
    }
    i += len;
  }
  return OkStatus();
}

namespace {

// One USTAR header block for a member `name_field` (at most 100 bytes) of
// `size` bytes and type `typeflag`.
std::array<uint8_t, kBlockBytes> UstarHeader(std::string_view name_field, uint64_t size,
                                             char typeflag) {
  Header h;
  std::memset(&h, 0, sizeof(h));
  std::memcpy(h.name, name_field.data(), std::min(name_field.size(), sizeof(h.name)));
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
  h.typeflag = typeflag;
  std::memcpy(h.magic, "ustar", 6);
  std::memcpy(h.version, "00", 2);
  std::memcpy(h.uname, "root", 4);
  std::memcpy(h.gname, "root", 4);
  std::array<uint8_t, kBlockBytes> block;
  std::memcpy(block.data(), &h, kBlockBytes);
  unsigned sum = Checksum(block.data());
  WriteOctal(h.chksum, 7, sum);  // six digits, NUL, then a space
  h.chksum[7] = ' ';
  std::memcpy(block.data(), &h, kBlockBytes);
  return block;
}

// One pax extended-header record, "LEN key=value\n", LEN counting itself.
std::string PaxRecord(std::string_view key, std::string_view value) {
  const size_t body = 1 + key.size() + 1 + value.size() + 1;  // ' ' key '=' value '\n'
  size_t len = body + 1;
  while (std::to_string(len).size() + body != len) len = std::to_string(len).size() + body;
  return std::to_string(len) + " " + std::string(key) + "=" + std::string(value) + "\n";
}

}  // namespace

Status TarWriter::AddMember(const std::string& name, uint64_t size, const DataFn& data) {
  RETURN_IF_ERROR(ValidateFileName(name));
  static const uint8_t kZeros[kBlockBytes] = {};
  // A name the USTAR name field cannot hold as it is (over 100 bytes, or not
  // ASCII) goes in a pax extended header (POSIX.1-2001 `path`), which GNU
  // tar, bsdtar, Python's tarfile and ovftool read; the name field then
  // holds its first bytes, cut at a character boundary.
  const bool ascii = std::all_of(name.begin(), name.end(),
                                 [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  std::string_view name_field = name;
  if (name.size() > sizeof(Header::name) || !ascii) {
    const std::string record = PaxRecord("path", name);
    auto pax = UstarHeader("PaxHeader", record.size(), 'x');
    RETURN_IF_ERROR(out_->Append(pax));
    RETURN_IF_ERROR(out_->Append(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(record.data()), record.size())));
    RETURN_IF_ERROR(out_->Append(std::span<const uint8_t>(
        kZeros, (kBlockBytes - record.size() % kBlockBytes) % kBlockBytes)));
    size_t cut = std::min(name.size(), sizeof(Header::name));
    while (cut > 0 && cut < name.size() && (static_cast<uint8_t>(name[cut]) & 0xc0) == 0x80) --cut;
    name_field = std::string_view(name).substr(0, cut);
  }
  auto header = UstarHeader(name_field, size, '0');
  RETURN_IF_ERROR(out_->Append(header));
  CountingFile counting(out_);
  RETURN_IF_ERROR(data(&counting));
  if (counting.count() != size) {
    return InternalError("tar member " + name + ": wrote " + std::to_string(counting.count()) +
                         " bytes, announced " + std::to_string(size));
  }
  size_t pad = static_cast<size_t>((kBlockBytes - size % kBlockBytes) % kBlockBytes);
  return out_->Append(std::span<const uint8_t>(kZeros, pad));
}

Status TarWriter::Finish() {
  static const uint8_t kZeros[2 * kBlockBytes] = {};
  return out_->Append(kZeros);
}

namespace {

// Upper bound of one pax extended header or GNU long name (the data of an
// 'x', 'g', 'L' or 'K' member).
constexpr uint64_t kMaxExtendedHeaderBytes = 64 * 1024;

// The checksum as POSIX defines it (unsigned bytes), or as some old tars
// computed it (signed bytes); either is accepted.
bool ChecksumMatches(const uint8_t* block, uint64_t stored) {
  if (stored == Checksum(block)) return true;
  long sum = 0;
  for (size_t i = 0; i < kBlockBytes; ++i) {
    bool in_chksum = i >= offsetof(Header, chksum) && i < offsetof(Header, chksum) + 8;
    sum += in_chksum ? ' ' : static_cast<signed char>(block[i]);
  }
  return sum >= 0 && static_cast<uint64_t>(sum) == stored;
}

// What a pax extended header ('x') says about the member after it.
struct PaxOverrides {
  std::optional<std::string> path;
  std::optional<uint64_t> size;
};

// Parses pax records "LEN key=value\n" (POSIX.1-2001 pax, "pax Extended
// Header"). Keys other than path and size (mtime, atime, ctime, uid, gid,
// uname, gname, charset, comment, SCHILY.*, LIBARCHIVE.*, ...) describe
// nothing a package uses and are skipped; a record that is not well formed
// is an error.
StatusOr<PaxOverrides> ParsePax(std::string_view data) {
  PaxOverrides out;
  while (!data.empty()) {
    size_t space = data.find(' ');
    if (space == std::string_view::npos || space == 0 || space > 20) {
      return InvalidArgumentError("bad pax header record");
    }
    uint64_t len = 0;
    for (size_t i = 0; i < space; ++i) {
      if (data[i] < '0' || data[i] > '9') return InvalidArgumentError("bad pax header record");
      len = len * 10 + static_cast<uint64_t>(data[i] - '0');
    }
    if (len <= space + 2 || len > data.size() || data[len - 1] != '\n') {
      return InvalidArgumentError("bad pax header record length");
    }
    std::string_view record = data.substr(space + 1, len - space - 2);
    data.remove_prefix(len);
    size_t eq = record.find('=');
    if (eq == std::string_view::npos || eq == 0) return InvalidArgumentError("bad pax header record");
    std::string_view key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path") {
      out.path = std::string(value);
    } else if (key == "size") {
      if (value.empty() || value.size() > 19) return InvalidArgumentError("bad pax size");
      uint64_t v = 0;
      for (char c : value) {
        if (c < '0' || c > '9') return InvalidArgumentError("bad pax size");
        v = v * 10 + static_cast<uint64_t>(c - '0');
      }
      out.size = v;
    }
  }
  return out;
}

}  // namespace

Status ValidatePackagePath(const std::string& path) {
  if (path.empty()) return InvalidArgumentError("empty file name");
  if (path.size() > kMaxNameBytes) {
    return InvalidArgumentError("path longer than " + std::to_string(kMaxNameBytes) +
                                " bytes: " + path.substr(0, 100));
  }
  if (path.front() == '/') return InvalidArgumentError("absolute path not allowed: " + path.substr(0, 100));
  size_t components = 0, start = 0;
  while (true) {
    size_t slash = path.find('/', start);
    std::string part = path.substr(start, slash == std::string::npos ? std::string::npos
                                                                      : slash - start);
    if (part.empty()) return InvalidArgumentError("empty path component in " + path.substr(0, 100));
    if (part == "..") {
      return InvalidArgumentError("'..' not allowed in file name: " + path.substr(0, 100));
    }
    RETURN_IF_ERROR(ValidateFileName(part).WithPrefix("in " + path.substr(0, 100)));
    if (++components > kMaxPathComponents) {
      return InvalidArgumentError("path deeper than " + std::to_string(kMaxPathComponents) +
                                  " levels: " + path.substr(0, 100));
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return OkStatus();
}

StatusOr<std::unique_ptr<TarReader>> TarReader::Open(const RandomAccessFile* file,
                                                     bool allow_subfolders) {
  ASSIGN_OR_RETURN(uint64_t file_size, file->Size());
  std::vector<TarMember> members;
  std::set<std::string> names;
  uint64_t offset = 0;
  uint8_t block[kBlockBytes];
  // Set by a pax 'x' header or a GNU 'L' long name for the next member only.
  PaxOverrides pending;
  bool pending_set = false;
  while (true) {
    if (offset + kBlockBytes > file_size) {
      return InvalidArgumentError("OVA archive truncated (no end-of-archive marker)");
    }
    ASSIGN_OR_RETURN(size_t n, file->Read(offset, block));
    if (n != kBlockBytes) return InvalidArgumentError("OVA archive truncated");
    if (std::all_of(block, block + kBlockBytes, [](uint8_t b) { return b == 0; })) {
      if (pending_set) return InvalidArgumentError("OVA archive ends after an extended header");
      break;
    }
    Header h;
    std::memcpy(&h, block, sizeof(h));
    // POSIX ustar ("ustar\0" "00"), GNU ("ustar " " \0") or the original
    // Unix v7 format (no magic; regular files only).
    const bool v7 = std::all_of(h.magic, h.magic + sizeof(h.magic) + sizeof(h.version),
                                [](char c) { return c == '\0'; });
    if (!v7 && std::memcmp(h.magic, "ustar", 5) != 0) {
      return InvalidArgumentError("not a tar archive (bad magic at offset " +
                                  std::to_string(offset) + "; pax, ustar, GNU and v7 are read)");
    }
    ASSIGN_OR_RETURN(uint64_t stored_sum, ParseNumber(h.chksum, sizeof(h.chksum), "checksum"));
    if (!ChecksumMatches(block, stored_sum)) {
      return InvalidArgumentError("tar header checksum mismatch at offset " +
                                  std::to_string(offset));
    }
    std::string name = FieldString(h.name, sizeof(h.name));
    std::string prefix = v7 ? "" : FieldString(h.prefix, sizeof(h.prefix));
    if (!prefix.empty()) name = prefix + "/" + name;
    if (v7 && !name.empty() && name.back() == '/' && !allow_subfolders) {
      return InvalidArgumentError("OVA member is a directory: " + name.substr(0, 100));
    }
    ASSIGN_OR_RETURN(uint64_t size, ParseNumber(h.size, sizeof(h.size), "size"));
    uint64_t data_offset = offset + kBlockBytes;
    if (size > file_size - data_offset) {
      return InvalidArgumentError("OVA member extends past the end of the archive: " +
                                  name.substr(0, 100));
    }
    const uint64_t padded = size + (kBlockBytes - size % kBlockBytes) % kBlockBytes;
    if (padded > file_size - data_offset) return InvalidArgumentError("OVA archive truncated");
    const char type = h.typeflag;
    if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
      // Extended headers: their data describes the next member ('x', 'L',
      // 'K') or the archive ('g').
      if (v7) return InvalidArgumentError("extended header in a v7 archive");
      if (size > kMaxExtendedHeaderBytes) {
        return InvalidArgumentError("tar extended header larger than 64 KiB at offset " +
                                    std::to_string(offset));
      }
      std::string text(static_cast<size_t>(size), '\0');
      ASSIGN_OR_RETURN(size_t got, file->Read(data_offset, std::span<uint8_t>(
                                       reinterpret_cast<uint8_t*>(text.data()), text.size())));
      if (got != text.size()) return InvalidArgumentError("OVA archive truncated");
      if (type == 'x' || type == 'g') {
        ASSIGN_OR_RETURN(PaxOverrides pax, ParsePax(text));
        if (type == 'g') {
          if (pax.path || pax.size) {
            return InvalidArgumentError("pax global header sets path or size");
          }
        } else {
          if (pax.path) pending.path = std::move(pax.path);
          if (pax.size) pending.size = pax.size;
          pending_set = true;
        }
      } else if (type == 'L') {
        text.resize(strnlen(text.data(), text.size()));
        if (!pending.path) pending.path = std::move(text);
        pending_set = true;
      } else {
        pending_set = true;  // 'K': a long link name; the link member is refused below
      }
      offset = data_offset + padded;
      continue;
    }
    if (pending.path) name = *pending.path;
    // "./disk.vmdk", as tar writes names given relative to ".".
    while (name.starts_with("./")) name.erase(0, 2);
    switch (type) {
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
        if (!allow_subfolders) {
          return InvalidArgumentError("OVA member is a directory: " + name.substr(0, 100));
        }
        break;
      case '6':
        return InvalidArgumentError("OVA member is a fifo: " + name.substr(0, 100));
      default:
        return InvalidArgumentError(std::string("OVA member has unsupported tar type '") +
                                    (type >= 0x20 && type < 0x7f ? type : '?') +
                                    "': " + name.substr(0, 100));
    }
    if (v7 && type != '0' && type != '\0') {
      return InvalidArgumentError("OVA member has unsupported tar type in a v7 archive");
    }
    if (pending.size) {
      // pax carries sizes the 12-byte field cannot (or writers that put 0
      // there); the data that follows has the pax size.
      size = *pending.size;
      if (size > file_size - data_offset) {
        return InvalidArgumentError("OVA member extends past the end of the archive: " +
                                    name.substr(0, 100));
      }
    }
    pending = PaxOverrides();
    pending_set = false;
    if (allow_subfolders && (type == '5' || (v7 && name.ends_with("/")))) {
      // A folder of a plain package: checked, then skipped (its files are
      // members of their own).
      while (name.ends_with("/")) name.pop_back();
      RETURN_IF_ERROR(ValidatePackagePath(name).WithPrefix("OVA folder"));
      offset = data_offset + size + (kBlockBytes - size % kBlockBytes) % kBlockBytes;
      continue;
    }
    RETURN_IF_ERROR((allow_subfolders ? ValidatePackagePath(name) : ValidateFileName(name))
                        .WithPrefix("OVA member"));
    if (!names.insert(name).second) {
      return InvalidArgumentError("duplicate OVA member: " + name);
    }
    if (members.size() >= kMaxTarMembers) {
      return InvalidArgumentError("OVA has more than " + std::to_string(kMaxTarMembers) +
                                  " members");
    }
    members.push_back(TarMember{name, data_offset, size});
    const uint64_t data_padded = size + (kBlockBytes - size % kBlockBytes) % kBlockBytes;
    if (data_padded > file_size - data_offset) return InvalidArgumentError("OVA archive truncated");
    offset = data_offset + data_padded;
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
