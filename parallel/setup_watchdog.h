// setup_watchdog.h — a time limit on the set-up phases that run before any collective has a watchdog of its own
// (MPI groups, NCCL communicators): a rank stuck there (a peer that stalled or died inside MPI_Comm_split, say)
// says which phase it waited in and for how long, and ends the job instead of hanging.
//
// A helper thread waits for the phase to end; past the limit it prints one line and calls _exit(3), which
// mpirun turns into the end of every rank (not MPI_Abort, which would need MPI from a second thread while the
// first may be stuck inside MPI holding its locks).
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace aq {

class SetupWatchdog {
 public:
  // phase: what this rank is doing, e.g. "creating the MPI process groups".
  SetupWatchdog(std::string phase, double timeout_s, int rank);
  ~SetupWatchdog();  // the phase ended: disarms
  SetupWatchdog(const SetupWatchdog&) = delete;
  SetupWatchdog& operator=(const SetupWatchdog&) = delete;

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace aq
