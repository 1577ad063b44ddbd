// stop.h — stopping a run early at an agreed step (signals, --stop-at, --time-limit) and the fault-injection
// hook of the failure tests.
#pragma once

#include <atomic>
#include <cstdint>

#include "parallel/context.h"
#include "train/trainer.h"

namespace aq {

// The pending stop signal (0: none). The handler only records it; the loop stops after the running step. A
// second signal while one is pending ends the process at once (the default action), for a user who means it.
extern std::atomic<int> g_stop_signal;
void install_stop_handlers();
void restore_stop_handlers();
const char* signal_name(int sig);

// Whether the ranks agree on stopping after step t (1-based): every step, or with DiLoCo across centres only on
// the steps where an outer exchange starts anyway (no extra wide-area round trip between them).
bool stop_check_due(const TrainConfig& cfg, const ParallelContext& ctx, int64_t t);

// Fault injection for the failure tests: AQ_FAULT_INJECT="stall:RANK:STEP" makes that rank stop responding
// (sleep) at that 1-based step, "die:RANK:STEP" kills it with SIGKILL, "error:RANK:STEP" raises an error on
// that rank alone, "sigterm:RANK:STEP" sends that rank SIGTERM. Unset in normal runs.
void maybe_inject_fault(int rank, int64_t step);

}  // namespace aq
