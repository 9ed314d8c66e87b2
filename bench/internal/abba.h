// What every vmseal benchmark that sets a figure beside its reference
// shares: the A B B A schedule (warm-up first, then A B B A A B B A ..., so
// that drift on a shared machine weighs on both sides alike), the median
// and min..max spread of each side, the ratio of medians beside its target,
// and the load average printed beside the figures.
//
//   auto s = bench::RunAbba({.warm_up_a = 1, .runs = 2}, run_reference, run_ours);
//   bench::Spread ref = bench::Summarize(bench::Column(s.a, &Result::seconds));
//
// Header-only: the benchmarks are separate executables outside the default
// build (bench/CMakeLists.txt); its unit test is tests/ bench_abba_test.
#ifndef VMSEAL_BENCH_INTERNAL_ABBA_H_
#define VMSEAL_BENCH_INTERNAL_ABBA_H_

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace vmseal::bench {

// The order of the timed runs and the warm-up before them.
struct AbbaPlan {
  // Untimed runs of A, then of B, before the first timed run (page cache,
  // connections, code paths). Default 1 of A, 0 of B.
  int warm_up_a = 1;
  int warm_up_b = 0;
  // Timed runs of each side, in the order A B B A A B B A ...; an odd count
  // ends A B. Default 2 (one A B B A).
  int runs = 2;
};

// What each side's runs returned, in the order they ran, and that order.
template <typename A, typename B>
struct AbbaSamples {
  std::vector<A> a;
  std::vector<B> b;
  // 'A' or 'B' per timed run, in the order they ran ("ABBA..."): run i is
  // a[count of 'A' before i] or b[count of 'B' before i].
  std::string order;
};

// The side of timed run `i` (0-based) of the A B B A schedule: 'A' or 'B'.
inline char AbbaSide(int i) { return (i % 4 == 0 || i % 4 == 3) ? 'A' : 'B'; }

// Runs `plan`: the warm-ups, then the timed runs, calling run_a() and
// run_b() (no arguments; each returns its sample, of any type but void) and
// keeping what each returned.
template <typename RunA, typename RunB>
auto RunAbba(const AbbaPlan& plan, RunA&& run_a, RunB&& run_b)
    -> AbbaSamples<std::invoke_result_t<RunA&>, std::invoke_result_t<RunB&>> {
  AbbaSamples<std::invoke_result_t<RunA&>, std::invoke_result_t<RunB&>> s;
  for (int i = 0; i < plan.warm_up_a; ++i) (void)run_a();
  for (int i = 0; i < plan.warm_up_b; ++i) (void)run_b();
  int done_a = 0, done_b = 0;
  for (int i = 0; done_a < plan.runs || done_b < plan.runs; ++i) {
    const char side = AbbaSide(i);
    if (side == 'A' && done_a < plan.runs) {
      s.a.push_back(run_a());
      ++done_a;
      s.order += 'A';
    } else if (side == 'B' && done_b < plan.runs) {
      s.b.push_back(run_b());
      ++done_b;
      s.order += 'B';
    }
  }
  return s;
}

// One figure of each sample: Column(results, &Result::seconds), or with a
// function of a sample.
template <typename T, typename F>
std::vector<double> Column(const std::vector<T>& samples, F&& f) {
  std::vector<double> out;
  out.reserve(samples.size());
  for (const T& t : samples) out.push_back(static_cast<double>(std::invoke(f, t)));
  return out;
}

// The median (the mean of the middle two for an even count) and the min..max
// spread of a set of samples; all 0 for none.
struct Spread {
  double median = 0;
  double min = 0;
  double max = 0;
  size_t n = 0;
  // max - min.
  double range() const { return max - min; }
};

inline Spread Summarize(std::vector<double> v) {
  Spread s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.min = v.front();
  s.max = v.back();
  s.n = n;
  return s;
}

inline double Median(std::vector<double> v) { return Summarize(std::move(v)).median; }

// The p-quantile (0 <= p <= 1) by nearest rank: sorted[min(n-1, floor(p*n))];
// 0 for none. (Latency percentiles within one run, e.g. a run's p99.)
inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// A limit on a ratio of medians (ours over the reference, or the other way
// round as the figure says): at least or at most `limit`.
struct Target {
  enum class Kind { kAtLeast, kAtMost };
  Kind kind = Kind::kAtLeast;
  double limit = 1;

  static Target AtLeast(double limit) { return {Kind::kAtLeast, limit}; }
  static Target AtMost(double limit) { return {Kind::kAtMost, limit}; }
  bool Met(double ratio) const { return kind == Kind::kAtLeast ? ratio >= limit : ratio <= limit; }
  // ">= 0.8", "<= 2".
  std::string ToString() const {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%s %g", kind == Kind::kAtLeast ? ">=" : "<=", limit);
    return buf;
  }
};

// "0.93x (target >= 0.8: met)", or "NOT met": the ratio line's tail.
inline std::string RatioText(double ratio, const Target& target) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.2fx (target %s: %s)", ratio, target.ToString().c_str(),
                target.Met(ratio) ? "met" : "NOT met");
  return buf;
}

// The 1, 5 and 15 minute load averages, "0.52 0.60 0.71" ("? ? ?" if
// unreadable): printed beside every figure of a shared machine.
inline std::string LoadAverage() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  if (!(f >> a >> b >> c)) return "? ? ?";
  return a + " " + b + " " + c;
}

}  // namespace vmseal::bench

#endif  // VMSEAL_BENCH_INTERNAL_ABBA_H_
