// work.cpp — what every Work shares (its stamps and the polite wait loop), and the Backend defaults.
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "parallel/backend.h"
#include "runtime/error.h"
#include "runtime/sysinfo.h"

namespace aq {

Work::Work(uint64_t seq, std::string name, const char* op, double timeout_s)
    : seq_(seq), name_(std::move(name)), op_(op), timeout_s_(timeout_s), started_ms_(steady_ms()) {}

void Work::poll_until_done(double timeout_s, double default_timeout_s,
                           const std::function<void(double)>& on_timeout) {
  const double limit = timeout_s >= 0 ? timeout_s : timeout_s_ >= 0 ? timeout_s_ : default_timeout_s;
  const double t0 = steady_ms();
  for (int64_t n = 0; !test(); ++n) {
    const double waited = (steady_ms() - t0) / 1000.0;
    if (waited > limit) on_timeout(waited);
    // Spin briefly (latency of small TP collectives), then yield, then sleep with a growing pause.
    if (n < 64) continue;
    if (n < 2048)
      sched_yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(std::min<int64_t>(1000, (n - 2048) / 16 + 20)));
  }
}

WorkPtr Backend::reduce_scatter_v(const void*, void*, const std::vector<int64_t>&, DType, const CollectiveOptions& o) {
  fail(str("reduce_scatter_v (\"", o.name, "\") is not supported by ", describe()));
}

WorkPtr Backend::all_gather_v(const void*, void*, const std::vector<int64_t>&, DType, const CollectiveOptions& o) {
  fail(str("all_gather_v (\"", o.name, "\") is not supported by ", describe()));
}

}  // namespace aq
