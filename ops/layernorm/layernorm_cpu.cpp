// layernorm_cpu.cpp — CPU LayerNorm: rows in parallel; weight gradients by column blocks (deterministic).
#include <algorithm>
#include <cmath>

#include "ops/layernorm/layernorm.h"

namespace aq::ops {
namespace {

template <typename T>
inline void normalize_row(T* o, T* mean_out, T* rstd_out, const T* x, const T* w, const T* b, int C) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int c = 0; c < C; ++c) sum += x[c];
  const T m = sum / C;
  T var = 0;
#pragma omp simd reduction(+ : var)
  for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
  const T s = T(1) / std::sqrt(var / C + static_cast<T>(kLayerNormEps));
#pragma omp simd
  for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * w[c] + b[c];
  *mean_out = m;
  *rstd_out = s;
}

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b, int64_t N, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) normalize_row(out + i * C, mean + i, rstd + i, inp + i * C, w, b, C);
}

template <typename T>
void residual_layernorm_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b_in, const T* w, const T* b,
                                int64_t N, int C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    T* r = res + i * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) r[c] = a[i * C + c] + b_in[i * C + c];
    normalize_row(out + i * C, mean + i, rstd + i, r, w, b, C);
  }
}

template <typename T>
void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w, const T* mean, const T* rstd,
                        int64_t N, int C) {
#pragma omp parallel
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < N; ++i) {
      const T* x = inp + i * C;
      const T* d = dout + i * C;
      const T m = mean[i], s = rstd[i];
      T dnorm_mean = 0, dnorm_xhat_mean = 0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_xhat_mean)
      for (int c = 0; c < C; ++c) {
        const T dn = d[c] * w[c];
        dnorm_mean += dn;
        dnorm_xhat_mean += dn * (x[c] - m) * s;
      }
      dnorm_mean /= C;
      dnorm_xhat_mean /= C;
      T* di = dinp + i * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const T xhat = (x[c] - m) * s;
        di[c] += (d[c] * w[c] - dnorm_mean - xhat * dnorm_xhat_mean) * s;
      }
    }
    // Weight gradients: each thread owns a block of columns and sums the rows in order.
    constexpr int kBlock = 16;
    const int nblocks = (C + kBlock - 1) / kBlock;
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
      T acc_w[kBlock] = {}, acc_b[kBlock] = {};
      for (int64_t i = 0; i < N; ++i) {
        const T* x = inp + i * C;
        const T* d = dout + i * C;
        const T m = mean[i], s = rstd[i];
        for (int c = c0; c < c1; ++c) {
          acc_w[c - c0] += d[c] * (x[c] - m) * s;
          acc_b[c - c0] += d[c];
        }
      }
      for (int c = c0; c < c1; ++c) {
        dw[c] += acc_w[c - c0];
        db[c] += acc_b[c - c0];
      }
    }
  }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename LayerNorm<T>::Forward>("layernorm_forward", Device::CPU, dtype_of<T>(), &layernorm_forward<T>);
  r.add<typename LayerNorm<T>::ResidualForward>("residual_layernorm_forward", Device::CPU, dtype_of<T>(),
                                                &residual_layernorm_forward<T>);
  r.add<typename LayerNorm<T>::Backward>("layernorm_backward", Device::CPU, dtype_of<T>(), &layernorm_backward<T>);
}

}  // namespace

void register_layernorm_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
