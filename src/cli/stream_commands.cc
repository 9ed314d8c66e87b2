// `vmseal stream seal|open`: the sealed-image stream on its own, for tests,
// benchmarks and scripts (the customer-facing seal/unseal wrap it in OVF).
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "base/env.h"
#include "base/secret_bytes.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/progress.h"
#include "crypto/primitives.h"
#include "stream/stream.h"

namespace vmseal::cli {
namespace {

struct StreamFlags {
  std::string key_file;
  std::string image_id;
  std::string tenant;
  uint64_t key_version = 1;
  int threads = 0;
  std::string chunk_size;
  bool quiet = false;
  bool json = false;
  std::string input;
  std::string output;
};

// A data key file holds the 32 raw bytes, or 64 hex characters with an
// optional trailing newline. Messages never include the file's content.
StatusOr<SecretBytes> ReadDataKeyFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(Env::Default(), path));
  SecretBytes text_secret(crypto::AsBytes(text));
  WipeBytes({reinterpret_cast<uint8_t*>(text.data()), text.size()});
  std::span<const uint8_t> b = text_secret.UnsafeSpan();
  if (b.size() == stream::kDataKeyBytes) return SecretBytes(b);
  size_t n = b.size();
  if (n > 0 && b[n - 1] == '\n') --n;
  if (n > 0 && b[n - 1] == '\r') --n;
  if (n != 2 * stream::kDataKeyBytes) {
    return InvalidArgumentError("key file " + path +
                                ": must hold 32 raw bytes or 64 hex characters");
  }
  SecretBytes key(stream::kDataKeyBytes);
  auto nibble = [](uint8_t c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < stream::kDataKeyBytes; ++i) {
    int hi = nibble(b[2 * i]), lo = nibble(b[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      return InvalidArgumentError("key file " + path +
                                  ": must hold 32 raw bytes or 64 hex characters");
    }
    key.UnsafeMutableData()[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return key;
}

uint64_t FileSizeOrZero(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return 0;
  return static_cast<uint64_t>(st.st_size);
}

Status RunStream(bool seal, const StreamFlags& f) {
  if (f.threads < 0) return InvalidArgumentError("--threads must be 0 (all cores) or more");
  uint64_t chunk = 0;
  if (!f.chunk_size.empty()) {
    if (!ParseByteSize(f.chunk_size, &chunk) || chunk > UINT32_MAX) {
      return InvalidArgumentError("--chunk-size: not a byte count: " + f.chunk_size);
    }
  }
  ASSIGN_OR_RETURN(SecretBytes key, ReadDataKeyFile(f.key_file));
  stream::StreamContext ctx{f.image_id, f.tenant, f.key_version};
  ProgressBar bar(seal ? "sealing" : "opening", !f.quiet && ProgressBar::StderrIsTerminal());
  uint64_t plaintext_bytes = 0;
  auto progress = [&](uint64_t done, uint64_t total) {
    plaintext_bytes = total;
    bar.Update(done, total);
  };
  const auto start = std::chrono::steady_clock::now();
  if (seal) {
    stream::SealOptions o;
    o.chunk_size_bytes = static_cast<uint32_t>(chunk);
    o.threads = f.threads;
    o.progress = progress;
    RETURN_IF_ERROR(stream::SealFile(Env::Default(), f.input, f.output, key, ctx, o));
  } else {
    stream::OpenOptions o;
    o.threads = f.threads;
    o.progress = progress;
    RETURN_IF_ERROR(stream::OpenFile(Env::Default(), f.input, f.output, key, ctx, o));
  }
  bar.Finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double rate = seconds > 0 ? static_cast<double>(plaintext_bytes) / seconds : 0;
  if (f.json) {
    const int threads =
        f.threads > 0 ? f.threads : static_cast<int>(std::thread::hardware_concurrency());
    nlohmann::json j = {
        {"operation", seal ? "seal" : "open"},
        {"input", f.input},
        {"output", f.output},
        {"plaintext_bytes", plaintext_bytes},
        {"input_bytes", FileSizeOrZero(f.input)},
        {"output_bytes", f.output == "/dev/null" ? 0 : FileSizeOrZero(f.output)},
        {"seconds", seconds},
        {"throughput_bytes_per_second", rate},
        {"throughput_gib_per_second", rate / (1024.0 * 1024.0 * 1024.0)},
        {"threads", threads},
    };
    std::printf("%s\n", j.dump().c_str());
  } else if (!f.quiet) {
    std::fprintf(stderr, "%s %s in %.2f s (%s/s)\n", seal ? "sealed" : "opened",
                 FormatBytes(plaintext_bytes).c_str(), seconds,
                 FormatBytes(static_cast<uint64_t>(rate)).c_str());
  }
  return OkStatus();
}

void AddSubcommand(CLI::App& parent, bool seal, const CommandSink& sink) {
  auto f = std::make_shared<StreamFlags>();
  CLI::App* c = parent.add_subcommand(
      seal ? "seal" : "open",
      seal ? "Seal INPUT into the stream OUTPUT (docs/format/stream.md)"
           : "Open the stream INPUT into OUTPUT; OUTPUT appears only if it authenticates");
  c->add_option("--key-file", f->key_file,
                "File holding the 32-byte data key (raw, or 64 hex characters)")
      ->required();
  c->add_option("--image-id", f->image_id, "Image id bound into the stream (default empty)");
  c->add_option("--tenant", f->tenant, "Tenant bound into the stream (default empty)");
  c->add_option("--key-version", f->key_version, "Key version bound into the stream")
      ->default_val(1);
  c->add_option("--threads", f->threads, "Worker threads (0 = one per core)")->default_val(0);
  c->add_option("--chunk-size", f->chunk_size,
                seal ? "Plaintext bytes per chunk, 16 B to 16 MiB (default 1 MiB)"
                     : "Ignored: the stream's header sets the chunk size");
  c->add_flag("--quiet", f->quiet, "No progress bar or summary");
  c->add_flag("--json", f->json, "Print one JSON object of results on stdout");
  c->add_option("INPUT", f->input, "Input file")->required();
  c->add_option("OUTPUT", f->output, "Output file (or /dev/null)")->required();
  c->footer(ExitCodesHelp());
  c->callback([f, seal, sink] { sink(RunStream(seal, *f)); });
}

}  // namespace

void AddStreamCommands(CLI::App& app, const CommandSink& sink) {
  CLI::App* s = app.add_subcommand("stream", "Seal or open a raw sealed-image stream");
  s->require_subcommand(1);
  s->footer(ExitCodesHelp());
  AddSubcommand(*s, true, sink);
  AddSubcommand(*s, false, sink);
}

}  // namespace vmseal::cli
