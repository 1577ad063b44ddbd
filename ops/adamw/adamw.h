// adamw.h — AdamW with torch.optim.AdamW semantics, and the global gradient norm used for clipping.
//
// For step t (1-based), gradient g·grad_scale (grad_scale carries the clipping factor, saving a pass):
//   p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1ᵗ)) · m / (√v / √(1−β2ᵗ) + eps)
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

struct AdamWParams {
  double lr = 3e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // multiplies every gradient (clipping)
};

template <typename T>
struct AdamW {
  // param (n), grad (n), m (n), v (n)
  using Update = void(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& hp);
  // Σ x² over n values, accumulated in double in a fixed order (bit-reproducible for any thread count).
  using SumSquares = double(const T* x, int64_t n);
};

void register_adamw_cpu(Registry& r);
void register_adamw_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
