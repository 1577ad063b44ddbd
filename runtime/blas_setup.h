// blas_setup.h — the fast OpenBLAS kernels on any CPU, without the user setting anything.
//
// Debian's OpenBLAS (0.3.21, DYNAMIC_ARCH) picks its kernels from the CPUID family/model at library load, before
// main. On CPUs it does not know (e.g. Intel family 6 model 207) it falls back to its SSE3 "Prescott" kernels:
// sgemm runs 3.6x slower and training 2-3.6x slower, with no hint why. OPENBLAS_CORETYPE fixes the choice, but
// only when set before the library initialises, so ensure_blas_kernels() — the first call in every program's
// main, before MPI_Init and before any thread starts — sets it and re-executes /proc/self/exe with the same argv
// (execv keeps the PID, so mpirun and schedulers see the same process). No maths here.
//
// The rule (decide_blas_kernels, pure, tested over a table):
//   * OPENBLAS_CORETYPE set by the user always wins;
//   * only a DYNAMIC_ARCH build can be corrected (a fixed-core build ignores OPENBLAS_CORETYPE);
//   * OpenBLAS's core is an SSE-era one (Prescott, Core2, Nehalem, Atom, Barcelona, ...) or an AVX-era one
//     without AVX2 (Sandybridge, Bulldozer, Piledriver, Steamroller) while the CPU has AVX-512 F/BW/DQ/VL
//     → SkylakeX, or AVX2 + FMA → Haswell. Any AVX2 or AVX-512 core OpenBLAS chose itself is kept.
//   * AArch64 and other CPUs: OpenBLAS's own choice is kept (no known fallback to correct there).
//
// Environment:
//   AQ_BLAS_CORRECTED   set by the re-exec to the reason ("OpenBLAS chose Prescott on an AVX-512 CPU"); it marks
//                       the corrected process (and its children, e.g. aq-bench scaling's mpirun), so a process never
//                       re-executes twice.
//   AQ_BLAS_TEST_CORENAME  test hook: detection believes OpenBLAS reported this core name (e.g. Prescott), so the
//                       correction can be exercised on a machine whose OpenBLAS does not fall back.
#pragma once

#include <string>

namespace aq {

struct CpuFeatures {
  bool avx2_fma = false;  // AVX2 and FMA3
  bool avx512 = false;    // AVX-512 F, BW, DQ and VL (what OpenBLAS's SkylakeX kernels need)
};
CpuFeatures detect_cpu_features();  // __builtin_cpu_supports on x86-64; none elsewhere

struct BlasKernelChoice {
  std::string coretype;  // OPENBLAS_CORETYPE to set and re-execute with; empty: keep OpenBLAS's choice
  std::string reason;    // why, for the banner, e.g. "OpenBLAS chose Prescott on an AVX-512 CPU"; may be empty
};

// corename: openblas_get_corename(); config: openblas_get_config() ("... DYNAMIC_ARCH ..."); user_coretype: the
// OPENBLAS_CORETYPE the user set, or null.
BlasKernelChoice decide_blas_kernels(const std::string& corename, const std::string& config, const CpuFeatures& cpu,
                                     const char* user_coretype);

// First call in main (before MPI_Init and any thread). Returns only when no correction is needed or possible;
// otherwise it sets OPENBLAS_CORETYPE and AQ_BLAS_CORRECTED and re-executes the program with the same argv.
void ensure_blas_kernels(char** argv);

// What the banner prints, e.g. "OpenBLAS 0.3.21 (OpenMP) kernels SkylakeX (corrected: OpenBLAS chose Prescott
// on an AVX-512 CPU)", "... kernels Cooperlake (OpenBLAS's choice)", "... kernels Haswell (OPENBLAS_CORETYPE set
// by the user)".
std::string blas_kernels_line();
// The kernels alone ("SkylakeX") and how they were chosen ("corrected", "openblas", "user", "not corrected").
std::string blas_corename();
std::string blas_choice_kind();

}  // namespace aq
