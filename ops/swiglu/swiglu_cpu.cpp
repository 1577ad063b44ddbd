// swiglu_cpu.cpp — CPU SwiGLU. Compiled with -ffast-math (see ops/CMakeLists.txt) so the exp in the loops
// becomes glibc's SIMD exp; everything here is elementwise, so no reduction order changes. A gate below
// about −88 (float) makes exp(−g) infinite and sigmoid exactly 0, which is the right limit.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "ops/swiglu/swiglu.h"

namespace aq::ops {
namespace {

template <typename T>
constexpr T kMaxExpArg = std::is_same_v<T, float> ? T(80) : T(690);

// 1 / (1 + exp(−g)), with exp kept finite (see above)
template <typename T>
inline T sigmoid(T g) {
  return T(1) / (T(1) + std::exp(std::min(-g, kMaxExpArg<T>)));
}

template <typename T>
void swiglu_forward(T* __restrict out, const T* __restrict inp, int64_t N, int F) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const T* g = inp + i * 2 * F;
    const T* u = g + F;
    T* o = out + i * F;
#pragma omp simd
    for (int c = 0; c < F; ++c) o[c] = g[c] * sigmoid(g[c]) * u[c];
  }
}

template <typename T>
void swiglu_backward(T* dinp, const T* dout, const T* inp, int64_t N, int F) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const T* g = inp + i * 2 * F;
    const T* u = g + F;
    const T* d = dout + i * F;
    T* dg = dinp + i * 2 * F;
    T* du = dg + F;
    // Every position reads its gate and up before writing their gradients in place: dinp may alias inp.
#pragma omp simd
    for (int c = 0; c < F; ++c) {
      const T gc = g[c], uc = u[c], sig = sigmoid(gc);
      dg[c] = d[c] * uc * sig * (T(1) + gc * (T(1) - sig));
      du[c] = d[c] * gc * sig;
    }
  }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename SwiGlu<T>::Forward>("swiglu_forward", Device::CPU, dtype_of<T>(), &swiglu_forward<T>);
  r.add<typename SwiGlu<T>::Backward>("swiglu_backward", Device::CPU, dtype_of<T>(), &swiglu_backward<T>);
}

}  // namespace

void register_swiglu_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
