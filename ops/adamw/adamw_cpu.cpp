// adamw_cpu.cpp — CPU AdamW update and sum of squares.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/adamw/adamw.h"

namespace aq::ops {
namespace {

template <typename T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& hp) {
  const T b1 = static_cast<T>(hp.beta1), b2 = static_cast<T>(hp.beta2);
  const T decay = static_cast<T>(1.0 - hp.lr * hp.weight_decay);
  const T step_size = static_cast<T>(hp.lr / (1.0 - std::pow(hp.beta1, static_cast<double>(hp.step))));
  const T inv_bc2_sqrt = static_cast<T>(1.0 / std::sqrt(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step))));
  const T eps = static_cast<T>(hp.eps), gs = static_cast<T>(hp.grad_scale);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * gs;
    const T mi = b1 * m[i] + (T(1) - b1) * g;
    const T vi = b2 * v[i] + (T(1) - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * decay - step_size * mi / (std::sqrt(vi) * inv_bc2_sqrt + eps);
  }
}

template <typename T>
double sum_squares(const T* x, int64_t n) {
  // Fixed-size chunks summed in index order: the result does not depend on the thread count.
  constexpr int64_t kChunk = 1 << 16;
  const int64_t nchunks = (n + kChunk - 1) / kChunk;
  thread_local std::vector<double> partial;
  partial.assign(static_cast<size_t>(nchunks), 0.0);
  double* out = partial.data();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t lo = c * kChunk, hi = std::min(n, lo + kChunk);
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = lo; i < hi; ++i) acc += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    out[c] = acc;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

// Multi-tensor forms: the chunks are independent, so they run in parallel; each uses the per-tensor kernels'
// arithmetic, so the result is bit-identical to updating tensor by tensor.
void multi_adamw(float* master, float* copy, const float* grad, float* m, float* v, const TensorChunk* chunks,
                 int64_t nchunks, const AdamWParams& hp) {
  AQ_ASSERT(copy == nullptr, "an fp32 model has no separate working copy");
  AdamWParams no_decay = hp;
  no_decay.weight_decay = 0.0;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const TensorChunk& k = chunks[c];
    const int64_t o = k.offset;
    // Nested: each call runs serially inside this parallel region (OpenMP does not nest by default).
    adamw_update(master + o, grad + o, m + o, v + o, k.n, k.decay ? hp : no_decay);
  }
}

void multi_sum_squares(double* sums, const float* x, const TensorChunk* chunks, int64_t nchunks) {
  thread_local std::vector<double> partial;
  partial.assign(static_cast<size_t>(nchunks), 0.0);
  double* out = partial.data();
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nchunks; ++c) {
    const float* p = x + chunks[c].offset;
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int32_t i = 0; i < chunks[c].n; ++i) acc += static_cast<double>(p[i]) * static_cast<double>(p[i]);
    out[c] = acc;
  }
  sums[0] = sums[1] = 0.0;
  for (int64_t c = 0; c < nchunks; ++c) sums[chunks[c].norm_class ? 1 : 0] += partial[static_cast<size_t>(c)];
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename AdamW<T>::Update>("adamw_update", Device::CPU, dtype_of<T>(), &adamw_update<T>);
  r.add<typename AdamW<T>::SumSquares>("sum_squares", Device::CPU, dtype_of<T>(), &sum_squares<T>);
}

}  // namespace

void append_chunks(std::vector<TensorChunk>& out, int64_t offset, int64_t n, bool decay, int norm_class) {
  for (int64_t i = 0; i < n; i += kTensorChunk)
    out.push_back(TensorChunk{offset + i, static_cast<int32_t>(std::min(kTensorChunk, n - i)),
                              static_cast<uint8_t>(decay ? 1 : 0), static_cast<uint8_t>(norm_class)});
}

void register_adamw_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
  r.add<MultiAdamW<float>::Update>("multi_adamw", Device::CPU, DType::F32, &multi_adamw);
  r.add<MultiAdamW<float>::SumSquares>("multi_sum_squares", Device::CPU, DType::F32, &multi_sum_squares);
}

}  // namespace aq::ops
