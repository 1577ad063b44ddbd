// rmsnorm.h — RMSNorm (Llama's norm): no mean subtraction, no bias, eps a parameter of the model
// (Hugging Face's rms_norm_eps, 1e-5 or 1e-6 in the Llama family).
//
// forward:          out = x · rstd · w,  rstd = 1/sqrt(mean(x²) + eps), per row of C; rstd (N) kept for backward
// residual forward: res = a + b_in; out = RMSNorm(res)   (one pass over memory instead of two, as LayerNorm's)
// backward: dinp += rstd · (dout·w − xhat · mean(dout·w·xhat)),  xhat = x · rstd;  dw += sum_rows(dout · xhat)
// dinp accumulates for the reason layernorm.h gives: in a pre-norm block it is the residual stream's gradient,
// which also receives the branch gradient. With bf16 storage everything is computed in fp32 and the output is
// rounded once (Hugging Face rounds x·rstd to bf16 before multiplying by w: a difference of one rounding).
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

// rstd and the weight gradient are kept in master precision M (float for bf16 models).
template <typename T, typename M = master_t<T>>
struct RmsNorm {
  // out (N,C), rstd (N), inp (N,C), w (C)
  using Forward = void(T* out, M* rstd, const T* inp, const T* w, int64_t N, int C, double eps);
  // res (N,C) = a + b_in; then as Forward on res
  using ResidualForward = void(T* res, T* out, M* rstd, const T* a, const T* b_in, const T* w, int64_t N, int C,
                               double eps);
  // dinp (N,C) +=, dw (C) +=; dout (N,C), inp (N,C), w (C), rstd (N)
  using Backward = void(T* dinp, M* dw, const T* dout, const T* inp, const T* w, const M* rstd, int64_t N, int C);
};

void register_rmsnorm_cpu(Registry& r);
void register_rmsnorm_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
