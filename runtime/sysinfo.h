// sysinfo.h — timers and process facts used in progress lines and benchmarks.
#pragma once

#include <chrono>
#include <string>

namespace aq {

class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  void reset() { start_ = std::chrono::steady_clock::now(); }
  double ms() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

double steady_ms();        // a monotonic clock in milliseconds (for start/completion stamps)
double peak_rss_mib();     // VmHWM: the most resident memory this process has held
double current_rss_mib();  // VmRSS
std::string format_duration(double seconds);  // "1h02m", "3m20s", "12s"

}  // namespace aq
