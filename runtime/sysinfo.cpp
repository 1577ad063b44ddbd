#include "runtime/sysinfo.h"

#include <cstdio>
#include <cstring>
#include <fstream>

namespace aq {
namespace {
double status_field_mib(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  size_t n = std::strlen(key);
  while (std::getline(f, line)) {
    if (line.compare(0, n, key) == 0) return std::stod(line.substr(n + 1)) / 1024.0;  // value is in kB
  }
  return 0.0;
}
}  // namespace

double steady_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mib() { return status_field_mib("VmHWM"); }
double current_rss_mib() { return status_field_mib("VmRSS"); }

std::string format_duration(double seconds) {
  if (!(seconds >= 0)) return "?";
  long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof(buf), "%lds", s);
  return buf;
}

}  // namespace aq
