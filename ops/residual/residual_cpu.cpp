// residual_cpu.cpp — the residual add on the CPU (float and double): out = a + b, elementwise.
#include "ops/residual/residual.h"

namespace aq::ops {
namespace {

// out (n), a (n), b (n); no __restrict: out may alias a or b
template <typename T>
void residual_forward(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Residual<T>::Forward>("residual_forward", Device::CPU, dtype_of<T>(), &residual_forward<T>);
}

}  // namespace

void register_residual_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
