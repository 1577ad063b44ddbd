// test_blas_setup.cpp — the rule that decides whether OpenBLAS's kernel choice is corrected, over a table of
// (core name OpenBLAS reported, build, CPU features, user OPENBLAS_CORETYPE) cases. The re-exec itself is
// tested end to end by tests/runtime/blas_reexec.sh.
#include <gtest/gtest.h>

#include "runtime/blas_setup.h"

namespace {

constexpr const char* kDynamic =
    "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY USE_OPENMP Prescott MAX_THREADS=64";
constexpr const char* kFixed = "OpenBLAS 0.3.21 NO_AFFINITY USE_OPENMP Prescott MAX_THREADS=64";

struct Case {
  const char* core;
  const char* config;
  bool avx2, avx512;
  const char* user;         // OPENBLAS_CORETYPE set by the user, or null
  const char* want_core;    // "" = keep OpenBLAS's choice
  const char* want_reason;  // substring of the reason; "" = no reason
};

const Case kCases[] = {
    // The workplace's Xeons (family 6 model 207): SSE3 fallback on an AVX-512 CPU.
    {"Prescott", kDynamic, true, true, nullptr, "SkylakeX", "OpenBLAS chose Prescott on an AVX-512 CPU"},
    {"Prescott", kDynamic, true, false, nullptr, "Haswell", "OpenBLAS chose Prescott on an AVX2 CPU"},
    {"PRESCOTT", kDynamic, true, true, nullptr, "SkylakeX", "chose PRESCOTT"},  // case does not matter
    {"Core2", kDynamic, true, true, nullptr, "SkylakeX", "Core2"},
    {"Nehalem", kDynamic, true, false, nullptr, "Haswell", "Nehalem"},
    {"Atom", kDynamic, true, true, nullptr, "SkylakeX", "Atom"},
    {"Barcelona", kDynamic, true, false, nullptr, "Haswell", "Barcelona"},
    {"Sandybridge", kDynamic, true, true, nullptr, "SkylakeX", "Sandybridge"},  // AVX-era on AVX-512
    {"Bulldozer", kDynamic, true, false, nullptr, "Haswell", "Bulldozer"},
    // OpenBLAS's own AVX2 / AVX-512 choices are kept.
    {"Cooperlake", kDynamic, true, true, nullptr, "", ""},
    {"SkylakeX", kDynamic, true, true, nullptr, "", ""},
    {"Haswell", kDynamic, true, true, nullptr, "", ""},
    {"Zen", kDynamic, true, false, nullptr, "", ""},
    {"SapphireRapids", kDynamic, true, true, nullptr, "", ""},
    // An old core on an old CPU is the right choice.
    {"Prescott", kDynamic, false, false, nullptr, "", ""},
    {"Sandybridge", kDynamic, false, false, nullptr, "", ""},
    // The user's OPENBLAS_CORETYPE always wins, even over a fallback.
    {"Prescott", kDynamic, true, true, "Haswell", "", "OPENBLAS_CORETYPE=Haswell set by the user"},
    {"Cooperlake", kDynamic, true, true, "Prescott", "", "OPENBLAS_CORETYPE=Prescott set by the user"},
    // A fixed-core build ignores OPENBLAS_CORETYPE: detected, not corrected, said so.
    {"Prescott", kFixed, true, true, nullptr, "", "not a DYNAMIC_ARCH build"},
};

TEST(BlasSetup, DecisionTable) {
  for (const Case& c : kCases) {
    aq::CpuFeatures f;
    f.avx2_fma = c.avx2;
    f.avx512 = c.avx512;
    const aq::BlasKernelChoice got = aq::decide_blas_kernels(c.core, c.config, f, c.user);
    SCOPED_TRACE(std::string(c.core) +
                 (c.avx512 ? " avx512"
                  : c.avx2 ? " avx2"
                           : " sse") +
                 (c.user ? std::string(" user=") + c.user : "") + (c.config == kFixed ? " fixed-core build" : ""));
    EXPECT_EQ(got.coretype, c.want_core);
    if (*c.want_reason)
      EXPECT_NE(got.reason.find(c.want_reason), std::string::npos) << got.reason;
    else
      EXPECT_EQ(got.reason, "");
  }
}

TEST(BlasSetup, AnEmptyUserCoretypeIsNotAnOverride) {
  aq::CpuFeatures f;
  f.avx2_fma = f.avx512 = true;
  EXPECT_EQ(aq::decide_blas_kernels("Prescott", kDynamic, f, "").coretype, "SkylakeX");
}

TEST(BlasSetup, BannerNamesTheKernels) {
  const std::string line = aq::blas_kernels_line();
  EXPECT_EQ(line.rfind("OpenBLAS ", 0), 0u) << line;
  EXPECT_NE(line.find(" kernels " + aq::blas_corename() + " ("), std::string::npos) << line;
}

}  // namespace
