// attention_cpu.cpp — CPU causal attention: one (batch, head) pair per task, so every gradient slice has one
// owner (no atomics, deterministic). Each task transposes its head's k and v to (hs, T) so the loops over key
// positions are contiguous and vectorise; scores live in a per-thread row buffer of T values.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/attention/attention.h"
#include "ops/cpu/vmath.h"

namespace aq::ops {
namespace {

// Per-thread scratch, grown once and reused every step.
template <typename T>
T* scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Copies one head's k or v (T rows of hs values, row stride 3C) into a (hs, T) transposed block, so that the
// loops over key positions t2 run over contiguous memory and vectorise without horizontal sums.
template <typename T>
void transpose_head(T* dst, const T* src, int T_, int hs, int64_t stride) {
  for (int t = 0; t < T_; ++t)
    for (int i = 0; i < hs; ++i) dst[static_cast<int64_t>(i) * T_ + t] = src[t * stride + i];
}

// s[0..n) = scale · Σ_i q[i] · kt[i][0..n)
template <typename T>
inline void scores(T* __restrict s, const T* q, const T* __restrict kt, int n, int hs, int T_, T scale) {
  std::fill(s, s + n, T(0));
  for (int i = 0; i < hs; ++i) {
    const T qi = q[i] * scale;
    const T* __restrict k = kt + static_cast<int64_t>(i) * T_;
#pragma omp simd
    for (int t2 = 0; t2 < n; ++t2) s[t2] += qi * k[t2];
  }
}

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      T* s = scratch<T>(static_cast<size_t>(T_) * (2 * hs + 1));
      T* kt = s + T_;
      T* vt = kt + static_cast<int64_t>(hs) * T_;
      const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
      transpose_head(kt, base + C, T_, hs, C3);
      transpose_head(vt, base + 2 * C, T_, hs, C3);
      for (int t = 0; t < T_; ++t) {
        const int n = t + 1;  // causal: keys 0..t
        scores(s, base + t * C3, kt, n, hs, T_, scale);
        T mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int t2 = 0; t2 < n; ++t2) mx = std::max(mx, s[t2]);
#pragma omp simd
        for (int t2 = 0; t2 < n; ++t2) s[t2] -= mx;
        cpu::exp_inplace(s, n);
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int t2 = 0; t2 < n; ++t2) sum += s[t2];
        const T inv = T(1) / sum;
        T* o = out + (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
        for (int i = 0; i < hs; ++i) {
          const T* __restrict v = vt + static_cast<int64_t>(i) * T_;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int t2 = 0; t2 < n; ++t2) acc += s[t2] * v[t2];
          o[i] = acc * inv;
        }
        lse[(static_cast<int64_t>(b) * NH + h) * T_ + t] = mx + std::log(sum);
      }
    }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B, int T_, int C,
                        int NH) {
  const int hs = C / NH;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      const int64_t block = static_cast<int64_t>(hs) * T_;
      T* p = scratch<T>(static_cast<size_t>(2 * T_ + 4 * block));
      T* ds = p + T_;
      T* kt = ds + T_;
      T* vt = kt + block;
      T* dkt = vt + block;  // d(k) and d(v) accumulate transposed, (hs, T), and are written back at the end
      T* dvt = dkt + block;
      const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
      transpose_head(kt, base + C, T_, hs, C3);
      transpose_head(vt, base + 2 * C, T_, hs, C3);
      std::fill(dkt, dkt + 2 * block, T(0));
      for (int t = 0; t < T_; ++t) {
        const int n = t + 1;
        const T* q = base + t * C3;
        const int64_t row = (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
        const T* dO = dout + row;
        T D = 0;  // Σ_t2 p·dp = dO·O
        for (int i = 0; i < hs; ++i) D += dO[i] * out[row + i];
        const T l = lse[(static_cast<int64_t>(b) * NH + h) * T_ + t];
        scores(p, q, kt, n, hs, T_, scale);
#pragma omp simd
        for (int t2 = 0; t2 < n; ++t2) p[t2] -= l;
        cpu::exp_inplace(p, n);
        // dp = dO·v_t2, then ds = p·(dp − D)·scale
        std::fill(ds, ds + n, T(0));
        for (int i = 0; i < hs; ++i) {
          const T di = dO[i];
          const T* __restrict v = vt + static_cast<int64_t>(i) * T_;
#pragma omp simd
          for (int t2 = 0; t2 < n; ++t2) ds[t2] += di * v[t2];
        }
#pragma omp simd
        for (int t2 = 0; t2 < n; ++t2) ds[t2] = p[t2] * (ds[t2] - D) * scale;
        T* dq = dqkv + static_cast<int64_t>(b) * T_ * C3 + t * C3 + h * hs;
        for (int i = 0; i < hs; ++i) {
          const T* __restrict k = kt + static_cast<int64_t>(i) * T_;
          T* __restrict dk = dkt + static_cast<int64_t>(i) * T_;
          T* __restrict dv = dvt + static_cast<int64_t>(i) * T_;
          const T qi = q[i], di = dO[i];
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int t2 = 0; t2 < n; ++t2) {
            acc += ds[t2] * k[t2];
            dk[t2] += ds[t2] * qi;
            dv[t2] += p[t2] * di;
          }
          dq[i] = acc;
        }
      }
      T* dbase = dqkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
      for (int t = 0; t < T_; ++t)
        for (int i = 0; i < hs; ++i) {
          dbase[t * C3 + C + i] = dkt[static_cast<int64_t>(i) * T_ + t];
          dbase[t * C3 + 2 * C + i] = dvt[static_cast<int64_t>(i) * T_ + t];
        }
    }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Attention<T>::Forward>("attention_forward", Device::CPU, dtype_of<T>(), &attention_forward<T>);
  r.add<typename Attention<T>::Backward>("attention_backward", Device::CPU, dtype_of<T>(), &attention_backward<T>);
}

}  // namespace

void register_attention_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
