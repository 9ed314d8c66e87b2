#include "ovf/disk_conversion.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "disk_format/disk_format.h"
#include "json/json.h"
#include "ovf/package_format.h"
#include "ovf/tar.h"

extern char** environ;

namespace vmseal::ovf {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxToolOutput = 1 << 20;

bool HasMagic(std::span<const uint8_t> bytes, size_t offset, std::string_view magic) {
  return bytes.size() >= offset + magic.size() &&
         std::memcmp(bytes.data() + offset, magic.data(), magic.size()) == 0;
}

struct ToolResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `args` (args[0] found on PATH) with no stdin, capturing stdout and
// stderr (each bounded). The child gets the caller's environment and, when
// `pass_fd` >= 0, that descriptor as its descriptor 3.
StatusOr<ToolResult> RunTool(const std::vector<std::string>& args, int pass_fd = -1) {
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoToStatus(errno, "pipe", args[0]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    int e = errno;
    close(out_pipe[0]);
    close(out_pipe[1]);
    return ErrnoToStatus(e, "pipe", args[0]);
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  // glibc clears close-on-exec for dup2 onto the same number (POSIX 2018).
  if (pass_fd >= 0) posix_spawn_file_actions_adddup2(&actions, pass_fd, 3);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    if (rc == ENOENT) {
      return FailedPreconditionError(args[0] + " is not installed (Debian: qemu-utils); it "
                                     "converts VMDK, VHD and VHDX disks at seal time");
    }
    return ErrnoToStatus(rc, "run", args[0]);
  }
  ToolResult result;
  std::array<pollfd, 2> fds = {pollfd{out_pipe[0], POLLIN, 0}, pollfd{err_pipe[0], POLLIN, 0}};
  std::array<std::string*, 2> sinks = {&result.out, &result.err};
  int open_fds = 2;
  while (open_fds > 0) {
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        if (sinks[i]->size() < kMaxToolOutput) sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (const pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoToStatus(errno, "wait for", args[0]);
  }
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

// The first lines of a tool's error output, for a message.
std::string FirstLines(const std::string& text) {
  std::string s = text.substr(0, 400);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s;
}

Status Refuse(const std::string& name, const std::string& why) {
  return InvalidArgumentError("disk conversion: " + name + ": " + why);
}

// The realpath of an existing path, or its error.
StatusOr<std::string> RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) return ErrnoToStatus(errno, "resolve", path);
  return std::string(buf);
}

// A file an image names must be a regular file (not a link) directly inside
// `dir` (a realpath).
Status CheckConfined(const std::string& image, const std::string& dir, const std::string& named) {
  if (named.empty()) return Refuse(image, "names an empty extent file");
  if (!ValidateFileName(named).ok()) {
    return Refuse(image, "names the file \"" + named.substr(0, 100) +
                             "\", which is not a plain file name in the image's directory");
  }
  const std::string path = dir + "/" + named;
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) {
    return Refuse(image, "names the extent \"" + named + "\", which does not exist in " + dir);
  }
  if (!S_ISREG(st.st_mode)) {
    return Refuse(image, "its extent \"" + named + "\" is not a regular file (links are refused)");
  }
  return OkStatus();
}

// Reads the extent lines of a VMDK text descriptor (VMware's "Virtual Disk
// Format 5.0" §Extent descriptions) and checks each names a confined file,
// and that the descriptor names no parent.
Status CheckVmdkDescriptor(const std::string& image, const std::string& dir,
                           const std::string& text) {
  size_t extents = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.starts_with("parentCID=") && line != "parentCID=ffffffff") {
      return Refuse(image, "is a delta disk (parentCID " + line.substr(10, 16) +
                               "); seal the whole disk, not a snapshot");
    }
    if (line.starts_with("parentFileNameHint")) {
      return Refuse(image, "names a parent disk (parentFileNameHint); seal the whole disk");
    }
    if (!(line.starts_with("RW ") || line.starts_with("RDONLY ") ||
          line.starts_with("NOACCESS "))) {
      continue;
    }
    size_t q1 = line.find('"');
    size_t q2 = q1 == std::string::npos ? q1 : line.find('"', q1 + 1);
    if (q1 == std::string::npos || q2 == std::string::npos) {
      if (line.find(" ZERO") != std::string::npos) continue;  // no file
      return Refuse(image, "has an extent line without a file name");
    }
    RETURN_IF_ERROR(CheckConfined(image, dir, line.substr(q1 + 1, q2 - q1 - 1)));
    if (++extents > 64) return Refuse(image, "has more than 64 extents");
  }
  if (extents == 0) return Refuse(image, "is a VMDK descriptor without extents");
  return OkStatus();
}

}  // namespace

const char* QemuDriverName(SourceDiskFormat format) {
  switch (format) {
    case SourceDiskFormat::kRaw: return "raw";
    case SourceDiskFormat::kQcow2: return "qcow2";
    case SourceDiskFormat::kVmdk:
    case SourceDiskFormat::kVmdkDescriptor: return "vmdk";
    case SourceDiskFormat::kVhd: return "vpc";
    case SourceDiskFormat::kVhdx: return "vhdx";
  }
  return "raw";
}

bool NeedsConversion(SourceDiskFormat format) {
  return format != SourceDiskFormat::kRaw && format != SourceDiskFormat::kQcow2;
}

StatusOr<SourceDiskFormat> DetectSourceDiskFormat(const RandomAccessFile& file) {
  std::array<uint8_t, 64> head{};
  ASSIGN_OR_RETURN(size_t n, file.Read(0, head));
  std::span<const uint8_t> h(head.data(), n);
  if (HasMagic(h, 0, "QFI\xfb")) return SourceDiskFormat::kQcow2;
  if (HasMagic(h, 0, "KDMV")) return SourceDiskFormat::kVmdk;
  if (HasMagic(h, 0, "# Disk DescriptorFile")) return SourceDiskFormat::kVmdkDescriptor;
  if (HasMagic(h, 0, "vhdxfile")) return SourceDiskFormat::kVhdx;
  if (HasMagic(h, 0, "conectix")) return SourceDiskFormat::kVhd;
  ASSIGN_OR_RETURN(uint64_t size, file.Size());
  if (size >= 512) {
    std::array<uint8_t, 8> tail{};
    ASSIGN_OR_RETURN(size_t t, file.Read(size - 512, tail));
    if (HasMagic(std::span<const uint8_t>(tail.data(), t), 0, "conectix")) {
      return SourceDiskFormat::kVhd;
    }
  }
  return SourceDiskFormat::kRaw;
}

SourceDiskFormat FormatFromUri(std::string_view uri, bool* known) {
  *known = true;
  if (uri == kRawFormatUri) return SourceDiskFormat::kRaw;
  if (uri == kQcow2FormatUri) return SourceDiskFormat::kQcow2;
  if (uri.starts_with("http://www.vmware.com/interfaces/specifications/vmdk.html") ||
      uri.starts_with("https://www.vmware.com/interfaces/specifications/vmdk.html")) {
    return SourceDiskFormat::kVmdk;
  }
  if (uri.find("vhdx") != std::string_view::npos || uri.find("VHDX") != std::string_view::npos) {
    return SourceDiskFormat::kVhdx;
  }
  if (uri.find("vhd") != std::string_view::npos || uri.find("VHD") != std::string_view::npos) {
    return SourceDiskFormat::kVhd;
  }
  *known = false;
  return SourceDiskFormat::kRaw;
}

namespace {

// The memory file of ConvertToQcow2InMemory, read with plain preads: on
// tmpfs/shmem SEEK_DATA and SEEK_HOLE walk the pages from the offset, so the
// hole-aware reads of Env's files would cost O(size) per read, and qemu-img
// leaves no holes in the qcow2 it writes.
class MemoryFile final : public RandomAccessFile {
 public:
  explicit MemoryFile(int fd) : fd_(fd) {}
  ~MemoryFile() override { close(fd_); }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out) const override {
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = pread(fd_, out.data() + done, out.size() - done,
                              static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoToStatus(errno, "read", "the converted disk in memory");
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }
  StatusOr<uint64_t> Size() const override {
    struct stat st;
    if (fstat(fd_, &st) != 0) return ErrnoToStatus(errno, "stat", "the converted disk in memory");
    return static_cast<uint64_t>(st.st_size);
  }

 private:
  const int fd_;
};

// What ConvertToQcow2 checks before converting: the source's real path and
// its virtual size.
struct CheckedSource {
  std::string name;
  std::string real_path;
  std::string driver;
  uint64_t virtual_size = 0;
};

StatusOr<CheckedSource> CheckSource(Env* env, const std::string& source_path,
                                    SourceDiskFormat format, const std::string& confine_dir) {
  if (!NeedsConversion(format)) return InternalError("disk conversion: nothing to convert");
  const std::string name = fs::path(source_path).filename().string();
  ASSIGN_OR_RETURN(std::string dir, RealPath(confine_dir));
  ASSIGN_OR_RETURN(std::string source_real, RealPath(source_path));
  if (fs::path(source_real).parent_path().string() != dir) {
    return Refuse(name, "is not inside " + dir);
  }
  if (format == SourceDiskFormat::kVmdkDescriptor) {
    ASSIGN_OR_RETURN(auto f, env->NewRandomAccessFile(source_path));
    ASSIGN_OR_RETURN(uint64_t size, f->Size());
    if (size > 64 * 1024) return Refuse(name, "VMDK descriptor larger than 64 KiB");
    std::string text(size, '\0');
    ASSIGN_OR_RETURN(size_t n, f->Read(0, std::span<uint8_t>(
                                              reinterpret_cast<uint8_t*>(text.data()), size)));
    text.resize(n);
    RETURN_IF_ERROR(CheckVmdkDescriptor(name, dir, text));
  }
  // What qemu-img sees (it opens no backing file for info): no parent, and
  // every extent confined.
  const std::string driver = QemuDriverName(format);
  ASSIGN_OR_RETURN(ToolResult info,
                   RunTool({"qemu-img", "info", "--output=json", "-f", driver, source_real}));
  if (info.exit_code != 0) {
    return Refuse(name, "qemu-img cannot read it as " + driver + ": " + FirstLines(info.err));
  }
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(info.out));
  if (!j.is_object()) return Refuse(name, "qemu-img info did not print an object");
  if (j.contains("backing-filename") || j.contains("full-backing-filename")) {
    return Refuse(name, "has a parent (backing file \"" +
                            j.value("backing-filename", std::string()).substr(0, 100) +
                            "\"); seal the whole disk, not a snapshot");
  }
  if (!j.contains("virtual-size") || !j["virtual-size"].is_number_unsigned()) {
    return Refuse(name, "qemu-img reports no virtual size");
  }
  const uint64_t virtual_size = j["virtual-size"].get<uint64_t>();
  if (auto fsd = j.find("format-specific"); fsd != j.end() && fsd->is_object()) {
    auto data = fsd->find("data");
    if (data != fsd->end() && data->is_object()) {
      auto extents = data->find("extents");
      if (extents != data->end() && extents->is_array()) {
        for (const auto& e : *extents) {
          std::string f = e.is_object() ? e.value("filename", std::string()) : std::string();
          if (f.empty()) continue;
          fs::path p(f);
          if (p.is_relative()) p = fs::path(source_real).parent_path() / p;
          auto real = RealPath(p.string());
          if (!real.ok() || fs::path(*real).parent_path().string() != dir) {
            return Refuse(name, "its extent \"" + f.substr(0, 100) + "\" is outside " + dir);
          }
        }
      }
    }
  }
  return CheckedSource{name, source_real, driver, virtual_size};
}

// The qemu-img command both conversions run: the same bytes either way.
std::vector<std::string> ConvertCommand(const CheckedSource& src, const std::string& dest) {
  return {"qemu-img", "convert", "-q", "-f", src.driver, "-O", "qcow2", "-o", "compat=1.1",
          src.real_path, dest};
}

// The inspector's verdict on a converted image.
StatusOr<ConversionResult> CheckConverted(const CheckedSource& src, RandomAccessFile& out) {
  auto checked = disk_format::Inspect(out);
  if (!checked.ok()) return Refuse(src.name, "the converted image: " + checked.status().message());
  if (checked->format != disk_format::Format::kQcow2) {
    return Refuse(src.name, "the converted image is not qcow2");
  }
  if (checked->virtual_size != src.virtual_size) {
    return Refuse(src.name, "the converted image has " + std::to_string(checked->virtual_size) +
                                " bytes, the source " + std::to_string(src.virtual_size));
  }
  return ConversionResult{checked->virtual_size, checked->file_size};
}

}  // namespace

StatusOr<ConversionResult> ConvertToQcow2(Env* env, const std::string& source_path,
                                          SourceDiskFormat format,
                                          const std::string& confine_dir,
                                          const std::string& dest_path) {
  ASSIGN_OR_RETURN(CheckedSource src, CheckSource(env, source_path, format, confine_dir));
  struct stat st;
  if (lstat(dest_path.c_str(), &st) == 0) return AlreadyExistsError("output exists: " + dest_path);
  ASSIGN_OR_RETURN(ToolResult conv, RunTool(ConvertCommand(src, dest_path)));
  auto fail = [&](Status s) {
    unlink(dest_path.c_str());
    return s;
  };
  if (conv.exit_code != 0) {
    return fail(Refuse(src.name, "qemu-img convert failed: " + FirstLines(conv.err)));
  }
  auto out = env->NewRandomAccessFile(dest_path);
  if (!out.ok()) return fail(out.status());
  auto checked = CheckConverted(src, **out);
  if (!checked.ok()) return fail(checked.status());
  return *checked;
}

StatusOr<std::optional<MemoryConversion>> ConvertToQcow2InMemory(
    Env* env, const std::string& source_path, SourceDiskFormat format,
    const std::string& confine_dir, uint64_t max_bytes) {
  ASSIGN_OR_RETURN(CheckedSource src, CheckSource(env, source_path, format, confine_dir));
  if (max_bytes == 0) return std::optional<MemoryConversion>();
  // How big the qcow2 will be (data and metadata), before converting.
  ASSIGN_OR_RETURN(ToolResult measure,
                   RunTool({"qemu-img", "measure", "--output=json", "-f", src.driver, "-O",
                            "qcow2", "-o", "compat=1.1", src.real_path}));
  if (measure.exit_code != 0) return std::optional<MemoryConversion>();
  auto m = ParseJson(measure.out);
  if (!m.ok() || !m->is_object() || !m->contains("required") ||
      !(*m)["required"].is_number_unsigned() ||
      (*m)["required"].get<uint64_t>() > max_bytes) {
    return std::optional<MemoryConversion>();
  }
  const int memfd = memfd_create("vmseal-convert", MFD_CLOEXEC);
  if (memfd < 0) return std::optional<MemoryConversion>();
  // Owns the descriptor from here; the memory lives as long as it does.
  auto file = std::make_unique<MemoryFile>(memfd);
  ASSIGN_OR_RETURN(ToolResult conv, RunTool(ConvertCommand(src, "/dev/fd/3"), memfd));
  if (conv.exit_code != 0) {
    return Refuse(src.name, "qemu-img convert failed: " + FirstLines(conv.err));
  }
  ASSIGN_OR_RETURN(ConversionResult result, CheckConverted(src, *file));
  return std::optional<MemoryConversion>(MemoryConversion{result, std::move(file)});
}

uint64_t DefaultInMemoryConversionBytes() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib >> unit) {
    if (key == "MemAvailable:") return std::min<uint64_t>(kib * 1024 / 4, uint64_t{8} << 30);
  }
  return 0;
}

}  // namespace vmseal::ovf
