#include "cli/progress.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>

namespace vmseal::cli {

std::string FormatBytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(buf, sizeof buf, "%.2f %s", v, kUnits[u]);
  }
  return buf;
}

bool ParseByteSize(const std::string& text, uint64_t* out) {
  size_t i = 0;
  uint64_t v = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
    ++i;
  }
  if (i == 0) return false;
  const std::string suffix = text.substr(i);
  int shift = 0;
  if (suffix.empty() || suffix == "B") {
    shift = 0;
  } else if (suffix == "K" || suffix == "KiB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MiB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GiB") {
    shift = 30;
  } else if (suffix == "T" || suffix == "TiB") {
    shift = 40;
  } else {
    return false;
  }
  if (shift > 0 && v > (UINT64_MAX >> shift)) return false;
  *out = v << shift;
  return true;
}

std::string FormatDuration(double seconds) {
  if (seconds < 0) seconds = 0;
  auto s = static_cast<unsigned long long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%llu:%02llu:%02llu", s / 3600, (s / 60) % 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%02llu:%02llu", s / 60, s % 60);
  }
  return buf;
}

ProgressBar::ProgressBar(std::string label, bool enabled, std::FILE* out)
    : label_(std::move(label)), enabled_(enabled), out_(out),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() {
  // A bar left mid-line (after an error) still ends its line.
  std::lock_guard<std::mutex> lock(mu_);
  if (enabled_ && drawn_ && !finished_) std::fputc('\n', out_);
}

bool ProgressBar::StderrIsTerminal() { return ::isatty(STDERR_FILENO) == 1; }

std::string ProgressBar::Render(const std::string& label, uint64_t done, uint64_t total,
                                double elapsed_seconds, int width) {
  const double frac =
      total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
  const int filled = static_cast<int>(frac * width + 0.5);
  std::string bar = label + " [";
  for (int i = 0; i < width; ++i) bar += i < filled ? '#' : '-';
  bar += "] ";
  char pct[16];
  std::snprintf(pct, sizeof pct, "%3d%%", static_cast<int>(frac * 100 + 0.5));
  bar += pct;
  bar += "  " + FormatBytes(done) + " / " + FormatBytes(total);
  const double rate = elapsed_seconds > 0 ? static_cast<double>(done) / elapsed_seconds : 0;
  bar += "  " + FormatBytes(static_cast<uint64_t>(rate)) + "/s";
  if (done < total && rate > 0) {
    bar += "  ETA " + FormatDuration(static_cast<double>(total - done) / rate);
  } else if (done >= total) {
    bar += "  in " + FormatDuration(elapsed_seconds);
  }
  return bar;
}

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  done_ = done;
  total_ = total;
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  Draw(false);
}

void ProgressBar::Finish() {
  if (!enabled_) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (finished_) return;
  Draw(true);
  finished_ = true;
}

void ProgressBar::Draw(bool final_draw) {
  const double elapsed = std::chrono::duration<double>(
      std::chrono::steady_clock::now() - start_).count();
  // \r and clear-to-end-of-line redraw in place.
  std::fprintf(out_, "\r%s\x1b[K%s", Render(label_, done_, total_, elapsed).c_str(),
               final_draw ? "\n" : "");
  std::fflush(out_);
  drawn_ = true;
}

}  // namespace vmseal::cli
