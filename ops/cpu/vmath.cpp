#include "ops/cpu/vmath.h"

#include <cmath>

namespace aq::cpu {
namespace {
template <typename T>
void exp_impl(T* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}
}  // namespace

void exp_inplace(float* x, int64_t n) { exp_impl(x, n); }
void exp_inplace(double* x, int64_t n) { exp_impl(x, n); }

}  // namespace aq::cpu
