// fault.cpp — see fault.h.
#include "runtime/fault.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace aq {
namespace {

// -1: off; 0: count only; K > 0: die at the K-th point.
long read_target() {
  const char* v = std::getenv("AQ_FAULT_KILL_AT");
  if (!v || !*v) return -1;
  if (std::strcmp(v, "count") == 0) return 0;
  char* end = nullptr;
  const long k = std::strtol(v, &end, 10);
  if (*end != '\0' || k <= 0) {
    std::fprintf(stderr, "aq: AQ_FAULT_KILL_AT=%s is neither a positive point number nor \"count\"\n", v);
    std::_Exit(2);
  }
  return k;
}

std::atomic<long> g_passed{0};

void print_count() { std::fprintf(stderr, "aq fault points: %ld\n", g_passed.load()); }

// Read at start-up, so a count is printed even by a run that never saves.
const long g_target = [] {
  const long k = read_target();
  if (k == 0) std::atexit(print_count);
  return k;
}();

}  // namespace

void fault_point() {
  if (g_target < 0) return;
  const long n = g_passed.fetch_add(1) + 1;
  if (g_target > 0 && n == g_target) ::kill(::getpid(), SIGKILL);
}

}  // namespace aq
