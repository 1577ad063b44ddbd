#include "parallel/setup_watchdog.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "runtime/log.h"

namespace aq {

SetupWatchdog::SetupWatchdog(std::string phase, double timeout_s, int rank) {
  thread_ = std::thread([this, phase = std::move(phase), timeout_s, rank] {
    std::unique_lock<std::mutex> lock(m_);
    if (cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [this] { return done_; })) return;
    std::fprintf(stderr,
                 "[rank %d] aq: error: set-up did not finish: rank %d (host %s) waited %d s while %s; another rank "
                 "stalled or died there. Ending the job (raise --comm-timeout if set-up is legitimately slower)\n",
                 rank, rank, host_name().c_str(), static_cast<int>(timeout_s), phase.c_str());
    std::fflush(stderr);
    _exit(3);
  });
}

SetupWatchdog::~SetupWatchdog() {
  {
    std::lock_guard<std::mutex> lock(m_);
    done_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

}  // namespace aq
