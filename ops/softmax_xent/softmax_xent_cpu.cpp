// softmax_xent_cpu.cpp — CPU fused softmax + cross-entropy and chunked classifier.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/blas.h"
#include "ops/cpu/vmath.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "runtime/op_profile.h"

namespace aq::ops {
namespace {

template <typename T>
void softmax_xent(T* losses, T* logits, const int32_t* targets, int64_t N, int V, T dscale, int backward) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    T* row = logits + i * V;
    T mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; ++j) mx = std::max(mx, row[j]);
    const T target_logit = row[targets[i]] - mx;
#pragma omp simd
    for (int j = 0; j < V; ++j) row[j] -= mx;
    cpu::exp_inplace(row, V);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += row[j];
    losses[i] = std::log(sum) - target_logit;
    if (backward) {
      const T s = dscale / sum;
#pragma omp simd
      for (int j = 0; j < V; ++j) row[j] *= s;
      row[targets[i]] -= dscale;
    }
  }
}

template <typename T>
void classifier(T* losses, T* dx, T* dwte, void* scratch_bytes, const T* x, const T* wte, const int32_t* targets, int64_t N,
                int C, int Vl, int v0, int V, int64_t chunk, T dscale, const ReduceHook<T>* hook) {
  const bool backward = dx != nullptr;
  T* scratch = static_cast<T*>(scratch_bytes);  // (chunk, Vl)
  if (!hook) {  // the whole vocabulary on this rank: the fused row kernel does everything
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t rows = std::min(chunk, N - r0);
      // logits (rows,V) = x[r0:r0+rows] (rows,C) · wteᵀ (C,V)
      profiled("fwd gemm lm_head",
               [&] { cpu::gemm(false, true, rows, V, C, T(1), x + r0 * C, C, wte, C, T(0), scratch, V); });
      profiled("softmax-xent",
               [&] { softmax_xent(losses + r0, scratch, targets + r0, rows, V, dscale, backward ? 1 : 0); });
      if (!backward) continue;
      // dx (rows,C) = dlogits (rows,V) · wte (V,C);  dwte (V,C) += dlogitsᵀ (V,rows) · x (rows,C)
      ProfileScope prof("bwd gemm lm_head");
      cpu::gemm(false, false, rows, C, V, T(1), scratch, V, wte, C, T(0), dx + r0 * C, C);
      cpu::gemm(true, false, V, C, rows, T(1), scratch, V, x + r0 * C, C, T(1), dwte, C);
    }
    return;
  }
  // Vocabulary-parallel: this rank's real columns are 0 … valid−1 (the rest is padding beyond V).
  const int valid = std::max(0, std::min(Vl, V - v0));
  thread_local std::vector<T> stats;  // per row: max; then (sum of exp, target logit)
  stats.resize(static_cast<size_t>(3 * chunk));
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    T* mx = stats.data();
    T* sum_tgt = mx + chunk;  // [sum(rows) | target(rows)]
    profiled("fwd gemm lm_head",
             [&] { cpu::gemm(false, true, rows, Vl, C, T(1), x + r0 * C, C, wte, C, T(0), scratch, Vl); });
    ProfileScope prof("softmax-xent");  // its all-reduces (the hook) are timed by the model as communication
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const T* row = scratch + i * Vl;
      T m = -std::numeric_limits<T>::max();
      for (int j = 0; j < valid; ++j) m = std::max(m, row[j]);
      mx[i] = m;
    }
    hook->all_reduce(hook->ctx, mx, rows, 1);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      T* row = scratch + i * Vl;
      const int t = targets[r0 + i] - v0;
      const bool mine = t >= 0 && t < valid;
      sum_tgt[rows + i] = mine ? row[t] - mx[i] : T(0);
#pragma omp simd
      for (int j = 0; j < valid; ++j) row[j] -= mx[i];
      cpu::exp_inplace(row, valid);
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int j = 0; j < valid; ++j) s += row[j];
      sum_tgt[i] = s;
      std::fill(row + valid, row + Vl, T(0));  // padding: no probability, no gradient
    }
    hook->all_reduce(hook->ctx, sum_tgt, 2 * rows, 0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      losses[r0 + i] = std::log(sum_tgt[i]) - sum_tgt[rows + i];
      if (!backward) continue;
      T* row = scratch + i * Vl;
      const T s = dscale / sum_tgt[i];
#pragma omp simd
      for (int j = 0; j < valid; ++j) row[j] *= s;
      const int t = targets[r0 + i] - v0;
      if (t >= 0 && t < valid) row[t] -= dscale;
    }
    if (!backward) continue;
    ProfileScope prof_bwd("bwd gemm lm_head");
    cpu::gemm(false, false, rows, C, Vl, T(1), scratch, Vl, wte, C, T(0), dx + r0 * C, C);  // partial over ranks
    cpu::gemm(true, false, Vl, C, rows, T(1), scratch, Vl, x + r0 * C, C, T(1), dwte, C);
  }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename SoftmaxXent<T>::Forward>("softmax_xent", Device::CPU, dtype_of<T>(), &softmax_xent<T>);
  r.add<typename Classifier<T>::Forward>("classifier", Device::CPU, dtype_of<T>(), &classifier<T>);
}

}  // namespace

void register_softmax_xent_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
