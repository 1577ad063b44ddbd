// stop.cpp — see stop.h.
#include "train/stop.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

#include "runtime/log.h"
#include "train/outer_optimizer.h"

namespace aq {

std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

void install_stop_handlers() {
  g_stop_signal = 0;
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, on_stop_signal);
}

void restore_stop_handlers() {
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, SIG_DFL);
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
  }
  return "a signal";
}

bool stop_check_due(const TrainConfig& cfg, const ParallelContext& ctx, int64_t t) {
  if (cfg.stop_at > 0 && t >= cfg.stop_at) return true;  // identical on every rank
  if (cfg.outer != "diloco" || ctx.topology().centres() == 1) return true;
  for (int f = 0; f < cfg.outer_fragments; ++f)
    if (fragment_syncs_at(f, cfg.outer_fragments, cfg.outer_steps, t)) return true;
  return false;
}

void maybe_inject_fault(int rank, int64_t step) {
  static const char* spec = std::getenv("AQ_FAULT_INJECT");
  if (!spec) return;
  char kind[16] = {0};
  int r = -1;
  long long at = -1;
  if (std::sscanf(spec, "%15[a-z]:%d:%lld", kind, &r, &at) != 3 || r != rank || at != step) return;
  log_error(str("aq: fault injection: rank ", rank, " ", kind, " at step ", step));
  if (std::string(kind) == "die") std::raise(SIGKILL);
  if (std::string(kind) == "error") fail("injected fault");
  if (std::string(kind) == "sigterm") std::raise(SIGTERM);  // one rank only: the stop must still be agreed
  if (std::string(kind) == "stall")
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace aq
