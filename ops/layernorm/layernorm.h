// layernorm.h — LayerNorm (eps 1e-5, biased variance), optionally fused with the residual add before it.
//
// forward:          out = (x - mean) * rstd * w + b,  rstd = 1/sqrt(var + 1e-5), per row of C
// residual forward: res = a + b_in; out = LayerNorm(res)   (one pass over memory instead of two)
// backward:         dinp += ..., dw += sum_rows(dout * xhat), db += sum_rows(dout)
// dinp accumulates because in a pre-LN transformer it is the residual stream's gradient, which also receives
// the branch gradient: accumulating saves a separate add.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

constexpr double kLayerNormEps = 1e-5;

// Statistics (mean, rstd) and weight gradients are kept in master precision M (float for bf16 models).
template <typename T, typename M = master_t<T>>
struct LayerNorm {
  // out (N,C), mean (N), rstd (N), inp (N,C), w (C), b (C)
  using Forward = void(T* out, M* mean, M* rstd, const T* inp, const T* w, const T* b, int64_t N, int C);
  // res (N,C) = a + b_in; then as Forward on res
  using ResidualForward = void(T* res, T* out, M* mean, M* rstd, const T* a, const T* b_in, const T* w,
                               const T* b, int64_t N, int C);
  // dinp (N,C) +=, dw (C) +=, db (C) +=; dout (N,C), inp (N,C), w (C), mean (N), rstd (N)
  using Backward = void(T* dinp, M* dw, M* db, const T* dout, const T* inp, const T* w, const M* mean,
                        const M* rstd, int64_t N, int C);
};

void register_layernorm_cpu(Registry& r);
void register_layernorm_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
