// rmsnorm_cpu.cpp — CPU RMSNorm: rows in parallel; the weight gradient by column blocks, each summing the rows
// in order (deterministic, independent of the thread count), as layernorm_cpu.cpp does.
#include <algorithm>
#include <cmath>

#include "ops/rmsnorm/rmsnorm.h"

namespace aq::ops {
namespace {

template <typename T>
inline void normalize_row(T* o, T* rstd_out, const T* x, const T* w, int C, T eps) {
  T ss = 0;
#pragma omp simd reduction(+ : ss)
  for (int c = 0; c < C; ++c) ss += x[c] * x[c];
  const T s = T(1) / std::sqrt(ss / C + eps);
#pragma omp simd
  for (int c = 0; c < C; ++c) o[c] = x[c] * s * w[c];
  *rstd_out = s;
}

void check_shape(int C, double eps) {
  AQ_CHECK(C >= 1 && eps >= 0, "rmsnorm: width C=", C, " must be >= 1 and eps=", eps, " >= 0");
}

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int64_t N, int C, double eps) {
  check_shape(C, eps);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) normalize_row(out + i * C, rstd + i, inp + i * C, w, C, static_cast<T>(eps));
}

template <typename T>
void residual_rmsnorm_forward(T* res, T* out, T* rstd, const T* a, const T* b_in, const T* w, int64_t N, int C,
                              double eps) {
  check_shape(C, eps);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    T* r = res + i * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) r[c] = a[i * C + c] + b_in[i * C + c];
    normalize_row(out + i * C, rstd + i, r, w, C, static_cast<T>(eps));
  }
}

template <typename T>
void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w, const T* rstd, int64_t N, int C) {
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) {
      const T* x = inp + i * C;
      const T* d = dout + i * C;
      const T s = rstd[i];
      T dot = 0;  // Σ dout·w·xhat
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; ++c) dot += d[c] * w[c] * x[c] * s;
      const T m = dot / C;
      T* di = dinp + i * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) di[c] += (d[c] * w[c] - x[c] * s * m) * s;
    }
    constexpr int kBlock = 16;
    const int nblocks = (C + kBlock - 1) / kBlock;
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
      T acc[kBlock] = {};
      for (int64_t i = 0; i < N; ++i) {
        const T* x = inp + i * C;
        const T* d = dout + i * C;
        const T s = rstd[i];
        for (int c = c0; c < c1; ++c) acc[c - c0] += d[c] * x[c] * s;
      }
      for (int c = c0; c < c1; ++c) dw[c] += acc[c - c0];
    }
  }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename RmsNorm<T>::Forward>("rmsnorm_forward", Device::CPU, dtype_of<T>(), &rmsnorm_forward<T>);
  r.add<typename RmsNorm<T>::ResidualForward>("residual_rmsnorm_forward", Device::CPU, dtype_of<T>(),
                                              &residual_rmsnorm_forward<T>);
  r.add<typename RmsNorm<T>::Backward>("rmsnorm_backward", Device::CPU, dtype_of<T>(), &rmsnorm_backward<T>);
}

}  // namespace

void register_rmsnorm_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
