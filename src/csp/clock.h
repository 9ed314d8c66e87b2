// Time seam for the portal: every expiry, freshness and heartbeat rule reads
// the time through a Clock so that tests control it.
#ifndef VMSEAL_CSP_CLOCK_H_
#define VMSEAL_CSP_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace vmseal::csp {

// Thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
  // Seconds since the Unix epoch.
  virtual int64_t NowUnixSeconds() const = 0;
  // The system clock. Never deleted.
  static Clock* Real();
};

// A clock that moves only when told to (tests).
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t now_unix_seconds = 1'700'000'000) : now_(now_unix_seconds) {}
  int64_t NowUnixSeconds() const override { return now_.load(); }
  void AdvanceSeconds(int64_t s) { now_ += s; }
  void SetUnixSeconds(int64_t s) { now_ = s; }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace vmseal::csp

#endif  // VMSEAL_CSP_CLOCK_H_
