// gelu_cpu.cpp — CPU GELU. This file is compiled with -ffast-math (see ops/CMakeLists.txt) so the tanh in the
// loops becomes glibc's SIMD tanh; everything here is elementwise, so no reduction order changes.
#include <cmath>

#include "ops/gelu/gelu.h"

namespace aq::ops {
namespace {
constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kCubic = 0.044715;

}  // namespace

template <typename T>
void gelu_forward_cpu(T* __restrict out, const T* __restrict inp, int64_t n) {
  const T k = static_cast<T>(kSqrt2OverPi), a = static_cast<T>(kCubic);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    out[i] = T(0.5) * x * (T(1) + std::tanh(k * (x + a * x * x * x)));
  }
}

template <typename T>
void gelu_backward_cpu(T* dinp, const T* __restrict inp, const T* dout, int64_t n) {
  const T k = static_cast<T>(kSqrt2OverPi), a = static_cast<T>(kCubic);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T th = std::tanh(k * (x + a * x * x * x));
    const T sech2 = T(1) - th * th;
    const T grad = T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * k * (T(1) + T(3) * a * x * x);
    dinp[i] = grad * dout[i];
  }
}

template void gelu_forward_cpu<float>(float*, const float*, int64_t);
template void gelu_forward_cpu<double>(double*, const double*, int64_t);
template void gelu_backward_cpu<float>(float*, const float*, const float*, int64_t);
template void gelu_backward_cpu<double>(double*, const double*, const double*, int64_t);

namespace {
template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Gelu<T>::Forward>("gelu_forward", Device::CPU, dtype_of<T>(), &gelu_forward_cpu<T>);
  r.add<typename Gelu<T>::Backward>("gelu_backward", Device::CPU, dtype_of<T>(), &gelu_backward_cpu<T>);
}
}  // namespace

void register_gelu_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
