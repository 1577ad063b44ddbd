// attention_cpu.cpp — CPU causal attention: one (batch, head) pair per task, so every gradient slice has one
// owner (no atomics, deterministic); scores live in a per-thread row buffer of T values.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/attention/attention.h"
#include "ops/cpu/vmath.h"

namespace aq::ops {
namespace {

template <typename T>
inline T dot(const T* a, const T* b, int n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

template <typename T>
T* row_scratch(int T_) {
  thread_local std::vector<T> buf;  // grows once, then reused every step
  if (static_cast<int>(buf.size()) < T_) buf.resize(static_cast<size_t>(T_));
  return buf.data();
}

template <typename T>
void attention_forward(T* out, T* lse, const T* qkv, int B, int T_, int C, int NH) {
  const int hs = C / NH;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      T* s = row_scratch<T>(T_);
      const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
      for (int t = 0; t < T_; ++t) {
        const T* q = base + t * C3;
        T mx = -INFINITY;
        for (int t2 = 0; t2 <= t; ++t2) {
          s[t2] = scale * dot(q, base + t2 * C3 + C, hs);
          mx = std::max(mx, s[t2]);
        }
        for (int t2 = 0; t2 <= t; ++t2) s[t2] -= mx;
        cpu::exp_inplace(s, t + 1);
        T sum = 0;
        for (int t2 = 0; t2 <= t; ++t2) sum += s[t2];
        T* o = out + (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
        std::fill(o, o + hs, T(0));
        for (int t2 = 0; t2 <= t; ++t2) {
          const T* v = base + t2 * C3 + 2 * C;
          const T p = s[t2];
#pragma omp simd
          for (int i = 0; i < hs; ++i) o[i] += p * v[i];
        }
        const T inv = T(1) / sum;
#pragma omp simd
        for (int i = 0; i < hs; ++i) o[i] *= inv;
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
      T* p = row_scratch<T>(T_);
      const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
      T* dbase = dqkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
      for (int t = 0; t < T_; ++t)
        for (int part = 0; part < 3; ++part) std::fill_n(dbase + t * C3 + part * C, hs, T(0));
      for (int t = 0; t < T_; ++t) {
        const T* q = base + t * C3;
        const int64_t row = (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
        const T* dO = dout + row;
        const T D = dot(dO, out + row, hs);  // Σ_t2 p·dp = dO·O
        const T l = lse[(static_cast<int64_t>(b) * NH + h) * T_ + t];
        for (int t2 = 0; t2 <= t; ++t2) p[t2] = scale * dot(q, base + t2 * C3 + C, hs) - l;
        cpu::exp_inplace(p, t + 1);
        T* dq = dbase + t * C3;
        for (int t2 = 0; t2 <= t; ++t2) {
          const T* k = base + t2 * C3 + C;
          const T* v = base + t2 * C3 + 2 * C;
          T* dk = dbase + t2 * C3 + C;
          T* dv = dbase + t2 * C3 + 2 * C;
          const T ds = p[t2] * (dot(dO, v, hs) - D) * scale;
          const T pt = p[t2];
#pragma omp simd
          for (int i = 0; i < hs; ++i) {
            dq[i] += ds * k[i];
            dk[i] += ds * q[i];
            dv[i] += pt * dO[i];
          }
        }
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
