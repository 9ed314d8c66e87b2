// `vmseal sample-image` (a sparse test disk image) and `vmseal demo` (seal and
// open a sample image, narrated). The demo grows with the system.
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/progress.h"
#include "crypto/primitives.h"
#include "demo/demo.h"
#include "stream/stream.h"

namespace vmseal::cli {
namespace {

constexpr uint64_t kSampleBlockBytes = uint64_t{1} << 20;

// Writes `size` bytes to `path` atomically: alternating 1 MiB blocks of random
// data and holes, so half the image is random and half is sparse zeros, like
// a real disk image.
Status WriteSampleImage(const std::string& path, uint64_t size, ProgressBar* bar) {
  ASSIGN_OR_RETURN(auto out, AtomicOutputFile::Create(Env::Default(), path, 0644));
  for (uint64_t off = 0, block = 0; off < size; off += kSampleBlockBytes, ++block) {
    const uint64_t n = std::min(kSampleBlockBytes, size - off);
    if (block % 2 == 0) {
      crypto::Bytes data = crypto::RandomBytes(static_cast<size_t>(n));
      RETURN_IF_ERROR(out->file()->Append(data));
    } else {
      RETURN_IF_ERROR(out->file()->Skip(n));
    }
    if (bar != nullptr) bar->Update(off + n, size);
  }
  if (bar != nullptr) bar->Finish();
  return out->Commit();
}

StatusOr<crypto::Sha256Digest> HashFile(const std::string& path) {
  ASSIGN_OR_RETURN(auto in, Env::Default()->NewRandomAccessFile(path));
  crypto::Sha256Hasher h;
  std::vector<uint8_t> buf(4 << 20);
  for (uint64_t off = 0;; ) {
    ASSIGN_OR_RETURN(size_t n, in->Read(off, buf));
    if (n == 0) break;
    h.Update({buf.data(), n});
    off += n;
  }
  return h.Finish();
}

// A temp directory removed on destruction.
class DemoDir {
 public:
  static StatusOr<std::unique_ptr<DemoDir>> Create() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/vmseal-demo-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return ErrnoToStatus(errno, "create", tmpl);
    }
    return std::unique_ptr<DemoDir>(new DemoDir(tmpl));
  }
  ~DemoDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  explicit DemoDir(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

struct DemoFlags {
  std::string size = "256MiB";
  bool quiet = false;
  bool json = false;  // no narration; a JSON summary on stdout at the end
  bool stream_only = false;
  demo::DemoOptions system;
};

Status RunDemo(const DemoFlags& f) {
  uint64_t size = 0;
  if (!ParseByteSize(f.size, &size)) return InvalidArgumentError("--size: not a byte count");
  const bool bars = !f.quiet && ProgressBar::StderrIsTerminal();
  auto say = [&](const std::string& s) {
    if (!f.quiet) std::printf("%s\n", s.c_str());
    std::fflush(stdout);
  };
  ASSIGN_OR_RETURN(auto dir, DemoDir::Create());
  say("vmseal demo: seal a VM disk image so that only the key holder can open it.");
  say("Working in " + dir->path() + " (removed at the end).");

  say("\n[1/5] Generating a sample " + FormatBytes(size) +
      " raw disk image: half random data, half holes (sparse).");
  const std::string image = dir->File("disk.raw");
  {
    ProgressBar bar("writing", bars);
    RETURN_IF_ERROR(WriteSampleImage(image, size, &bar));
  }

  say("\n[2/5] Generating a fresh 32-byte data key (kept in memory, wiped after use).");
  SecretBytes key = SecretBytes::Random(stream::kDataKeyBytes);
  stream::StreamContext ctx{"demo-image-0001", "demo-tenant", 1};
  say("      The stream is bound to image id '" + ctx.image_id + "', tenant '" + ctx.tenant +
      "', key version 1.");

  say("\n[3/5] Sealing with AES-256-GCM in 1 MiB chunks on every core "
      "(format: docs/format/stream.md).");
  const std::string sealed = dir->File("disk.sealed");
  auto t0 = std::chrono::steady_clock::now();
  {
    ProgressBar bar("sealing", bars);
    stream::SealOptions o;
    o.progress = [&](uint64_t d, uint64_t t) { bar.Update(d, t); };
    RETURN_IF_ERROR(stream::SealFile(Env::Default(), image, sealed, key, ctx, o));
    bar.Finish();
  }
  double seal_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  struct stat st;
  uint64_t sealed_size = ::stat(sealed.c_str(), &st) == 0 ? st.st_size : 0;
  char line[160];
  std::snprintf(line, sizeof line, "      Sealed %s -> %s in %.2f s (%s/s).",
                FormatBytes(size).c_str(), FormatBytes(sealed_size).c_str(), seal_s,
                FormatBytes(static_cast<uint64_t>(size / std::max(seal_s, 1e-9))).c_str());
  say(line);

  say("\n[4/5] Opening: the output appears only after every chunk has authenticated.");
  const std::string opened = dir->File("disk.opened.raw");
  t0 = std::chrono::steady_clock::now();
  {
    ProgressBar bar("opening", bars);
    stream::OpenOptions o;
    o.progress = [&](uint64_t d, uint64_t t) { bar.Update(d, t); };
    RETURN_IF_ERROR(stream::OpenFile(Env::Default(), sealed, opened, key, ctx, o));
    bar.Finish();
  }
  double open_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::snprintf(line, sizeof line, "      Opened in %.2f s (%s/s); zero chunks written as holes.",
                open_s, FormatBytes(static_cast<uint64_t>(size / std::max(open_s, 1e-9))).c_str());
  say(line);
  key.Clear();

  say("\n[5/5] Comparing SHA-256 of the original and the opened image.");
  ASSIGN_OR_RETURN(auto h1, HashFile(image));
  ASSIGN_OR_RETURN(auto h2, HashFile(opened));
  say("      original: " + crypto::HexEncode(h1));
  say("      opened:   " + crypto::HexEncode(h2));
  if (h1 != h2) return InternalError("demo: opened image differs from the original");
  say("\nOK: the image survived sealing and opening unchanged.");
  if (f.json) {
    const nlohmann::json out = {{"ok", true},
                                {"mode", "stream-only"},
                                {"size_bytes", size},
                                {"sealed_bytes", sealed_size},
                                {"seal_seconds", seal_s},
                                {"open_seconds", open_s},
                                {"sha256", crypto::HexEncode(h1)}};
    std::printf("%s\n", out.dump(2).c_str());
  }
  return OkStatus();
}

}  // namespace

void AddDemoCommands(CLI::App& app, const CommandSink& sink) {
  {
    auto out = std::make_shared<std::string>();
    auto size = std::make_shared<std::string>();
    auto as_json = std::make_shared<bool>(false);
    CLI::App* c = app.add_subcommand(
        "sample-image", "Write a sparse sample raw disk image (half random, half holes)");
    c->add_option("OUT", *out, "Output file")->required();
    c->add_option("--size", *size, "Size in bytes (suffixes K, M, G, T: binary)")->required();
    c->add_flag("--json", *as_json, "Print {\"path\", \"size_bytes\"} as JSON");
    c->footer(ExitCodesHelp());
    c->callback([out, size, as_json, sink] {
      uint64_t n = 0;
      if (!ParseByteSize(*size, &n)) {
        return sink(InvalidArgumentError("--size: not a byte count: " + *size));
      }
      Status s = WriteSampleImage(*out, n, nullptr);
      if (s.ok() && *as_json) {
        std::printf("%s\n", nlohmann::json({{"path", *out}, {"size_bytes", n}}).dump(2).c_str());
      }
      sink(s);
    });
  }
  {
    auto f = std::make_shared<DemoFlags>();
    CLI::App* c = app.add_subcommand(
        "demo",
        "The whole system on loopback, narrated: KMS, portal, a trusted and a tampered host "
        "(swtpm), a customer who seals, uploads and launches a VM");
    c->add_flag("--keep", f->system.keep,
                "Leave everything running until Ctrl-C and print how to use it");
    c->add_option("--dir", f->system.work_dir, "Working directory (default: a temp dir)");
    c->add_option("--sample-image-script", f->system.sample_image_script,
                  "scripts/build-sample-image.sh (default: found from the binary)");
    c->add_flag("--stream-only", f->stream_only,
                "Only generate a sample image, seal it, open it and compare");
    c->add_option("--size", f->size, "--stream-only: sample image size (default 256MiB)");
    c->add_flag("--quiet", f->quiet, "No narration or progress bars");
    c->add_flag("--json", f->json, "No narration; a JSON summary on stdout at the end");
    c->footer(ExitCodesHelp());
    c->callback([f, sink] {
      if (f->json) f->quiet = true;
      if (f->stream_only) return sink(RunDemo(*f));
      f->system.quiet = f->quiet;
      Status s = demo::RunSystemDemo(f->system);
      if (s.ok() && f->json) {
        std::printf("%s\n", nlohmann::json({{"ok", true}, {"mode", "system"}}).dump(2).c_str());
      }
      sink(s);
    });
  }
}

}  // namespace vmseal::cli
