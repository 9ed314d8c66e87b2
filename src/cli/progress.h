// A one-line progress bar on stderr (bytes, rate, ETA), for any command that
// moves many bytes. Draws only when enabled (stderr is a terminal and not
// --quiet); redraws at most ten times a second, from any one thread.
#ifndef VMSEAL_CLI_PROGRESS_H_
#define VMSEAL_CLI_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

namespace vmseal::cli {

// "1.50 GiB", "512.0 MiB", "17 B".
std::string FormatBytes(uint64_t bytes);
// Parses a byte count for a flag: digits with an optional binary suffix
// K/KiB, M/MiB, G/GiB, T/TiB (e.g. "1048576", "256K", "4GiB"). False on junk
// or overflow.
bool ParseByteSize(const std::string& text, uint64_t* out);
// "1:02:03" or "02:03".
std::string FormatDuration(double seconds);

class ProgressBar {
 public:
  // `label` is shown before the bar (e.g. "sealing"). `enabled` false makes
  // every call a no-op. `out` defaults to stderr.
  ProgressBar(std::string label, bool enabled, std::FILE* out = stderr);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // True when stderr is a terminal (the default for `enabled`).
  static bool StderrIsTerminal();

  // Records progress; draws if the last draw is older than 100 ms.
  void Update(uint64_t done, uint64_t total);
  // Draws the final state and ends the line. Idempotent.
  void Finish();

  // The text of one bar line for the given state (no control characters),
  // e.g. "sealing [#####-----]  50%  1.00 GiB / 2.00 GiB  1.20 GiB/s  ETA 00:01".
  static std::string Render(const std::string& label, uint64_t done, uint64_t total,
                            double elapsed_seconds, int width = 24);

 private:
  void Draw(bool final_draw);

  const std::string label_;
  const bool enabled_;
  std::FILE* const out_;
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
  std::mutex mu_;
  uint64_t done_ = 0;
  uint64_t total_ = 0;
  bool drawn_ = false;
  bool finished_ = false;
};

}  // namespace vmseal::cli

#endif  // VMSEAL_CLI_PROGRESS_H_
