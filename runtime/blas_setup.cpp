// blas_setup.cpp — detect OpenBLAS's fallback to old kernels and re-execute with OPENBLAS_CORETYPE (see the header).
#include "runtime/blas_setup.h"

#include <cblas.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace aq {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// OpenBLAS core names (as openblas_get_corename() spells them, compared without case) whose kernels predate AVX2.
bool is_sse_era(const std::string& core) {
  static const char* kNames[] = {"prescott",   "core2",     "penryn",       "dunnington", "nehalem", "atom",
                                 "barcelona",  "opteron",   "opteron_sse3", "bobcat",     "nano",    "katmai",
                                 "coppermine", "northwood", "banias",       "athlon",     "generic", "unknown"};
  const std::string c = lower(core);
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return c == n; });
}
bool is_avx_era(const std::string& core) {  // AVX (or FMA4) but no AVX2 kernels
  static const char* kNames[] = {"sandybridge", "bulldozer", "piledriver", "steamroller"};
  const std::string c = lower(core);
  return std::any_of(std::begin(kNames), std::end(kNames), [&](const char* n) { return c == n; });
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// What OpenBLAS reported, or what the test hook makes detection believe it reported (never after a re-exec).
std::string reported_corename() {
  const char* hook = env("AQ_BLAS_TEST_CORENAME");
  if (hook && !env("AQ_BLAS_CORRECTED")) return hook;
  return openblas_get_corename();
}

}  // namespace

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx512 = f.avx2_fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
  return f;
}

BlasKernelChoice decide_blas_kernels(const std::string& corename, const std::string& config, const CpuFeatures& cpu,
                                     const char* user_coretype) {
  if (user_coretype && *user_coretype)
    return {"", std::string("OPENBLAS_CORETYPE=") + user_coretype + " set by the user"};
  const bool old = is_sse_era(corename) || is_avx_era(corename);
  if (!old || !(cpu.avx512 || cpu.avx2_fma)) return {"", ""};  // OpenBLAS's choice fits the CPU
  const std::string reason = "OpenBLAS chose " + corename + " on an " + (cpu.avx512 ? "AVX-512" : "AVX2") + " CPU";
  // A build for one fixed core ignores OPENBLAS_CORETYPE: nothing to do but say so.
  if (config.find("DYNAMIC_ARCH") == std::string::npos)
    return {"", reason +
                    ", and this OpenBLAS is not a DYNAMIC_ARCH build, so it cannot be corrected; install "
                    "Debian's libopenblas0-openmp"};
  return {cpu.avx512 ? "SkylakeX" : "Haswell", reason};
}

void ensure_blas_kernels(char** argv) {
  // Already corrected (this process before its re-exec, or a parent whose setting we inherited): never loop. The
  // marker alone (OPENBLAS_CORETYPE removed by a wrapper) decides again; a re-exec sets both, so that cannot loop.
  if (env("AQ_BLAS_CORRECTED") && env("OPENBLAS_CORETYPE")) return;
  const BlasKernelChoice c =
      decide_blas_kernels(reported_corename(), openblas_get_config(), detect_cpu_features(), env("OPENBLAS_CORETYPE"));
  if (c.coretype.empty()) return;
  ::setenv("OPENBLAS_CORETYPE", c.coretype.c_str(), 1);
  ::setenv("AQ_BLAS_CORRECTED", c.reason.c_str(), 1);
  ::execv("/proc/self/exe", argv);  // returns only on failure
  const int err = errno;
  ::unsetenv("OPENBLAS_CORETYPE");
  ::unsetenv("AQ_BLAS_CORRECTED");
  std::fprintf(stderr,
               "aq: warning: %s, but re-executing /proc/self/exe with OPENBLAS_CORETYPE=%s failed (%s); training "
               "will be slow: set OPENBLAS_CORETYPE=%s in the environment\n",
               c.reason.c_str(), c.coretype.c_str(), std::strerror(err), c.coretype.c_str());
}

std::string blas_corename() {
  // The kernels in use; under the test hook (no correction, no user choice) the pretended fallback itself.
  if (env("AQ_BLAS_TEST_CORENAME") && !env("AQ_BLAS_CORRECTED") && !env("OPENBLAS_CORETYPE"))
    return reported_corename();
  return openblas_get_corename();
}

std::string blas_choice_kind() {
  if (env("AQ_BLAS_CORRECTED") && env("OPENBLAS_CORETYPE")) return "corrected";
  if (env("OPENBLAS_CORETYPE")) return "user";
  const BlasKernelChoice c =
      decide_blas_kernels(reported_corename(), openblas_get_config(), detect_cpu_features(), nullptr);
  return c.reason.empty() ? "openblas" : "not corrected";
}

std::string blas_kernels_line() {
  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." → "OpenBLAS 0.3.21"
  const std::string config = openblas_get_config();
  size_t end = config.find(' ');
  if (end != std::string::npos) end = config.find(' ', end + 1);
  const int par = openblas_get_parallel();
  const std::string head = config.substr(0, end) + (par == 0   ? " (sequential)"
                                                    : par == 1 ? " (pthreads)"
                                                               : " (OpenMP)");
  const std::string kind = blas_choice_kind();
  std::string why;
  if (kind == "corrected") why = std::string("corrected: ") + env("AQ_BLAS_CORRECTED");
  if (kind == "user") why = std::string("OPENBLAS_CORETYPE=") + env("OPENBLAS_CORETYPE") + " set by the user";
  if (kind == "openblas") why = "OpenBLAS's own choice";
  if (kind == "not corrected")
    why = "NOT corrected: " + decide_blas_kernels(reported_corename(), config, detect_cpu_features(), nullptr).reason;
  return head + " kernels " + blas_corename() + " (" + why + ")";
}

}  // namespace aq
