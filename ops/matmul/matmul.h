// matmul.h — dense layer y = x @ W + b with W stored input-major (IC, OC), as Hugging Face GPT-2's Conv1D.
//
// forward:  out (N,OC) = inp (N,IC) @ weight (IC,OC) + bias (OC)           (bias may be null)
// backward: dweight (IC,OC) += inp^T @ dout;  dbias (OC) += column sums of dout (skipped when null);
//           then dinp (N,IC) = dout @ weight^T (overwritten; skipped when null). Because dinp is written last,
//           it may alias inp — the model uses that to reuse one scratch buffer.
// Parameter gradients are in master precision (float for a bf16 model; the GEMM accumulates in fp32).
//
// Fused with GELU (the MLP's c_fc → GELU → c_proj), so the GPU does it in cuBLASLt epilogues:
// gelu forward:  pre (N,OC) = inp @ weight + bias;  out (N,OC) = gelu(pre)
// dgelu backward (for the layer after the GELU, whose input is gelu(pre)): dweight, dbias as above, then
//           dpre (N,IC) = gelu'(pre) ⊙ (dout @ weight^T); dpre may alias inp (written last).
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T, typename M = master_t<T>>
struct Matmul {
  using Forward = void(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int IC, int OC);
  using Backward = void(T* dinp, M* dweight, M* dbias, const T* dout, const T* inp, const T* weight, int64_t N,
                        int IC, int OC);
  // out (N,OC) = gelu(pre), pre (N,OC); inp (N,IC), weight (IC,OC), bias (OC) or null
  using GeluForward = void(T* out, T* pre, const T* inp, const T* weight, const T* bias, int64_t N, int IC, int OC);
  // dpre (N,IC) overwritten; dweight (IC,OC) +=, dbias (OC) += or null; dout (N,OC), inp (N,IC) = gelu(pre),
  // weight (IC,OC), pre (N,IC)
  using DgeluBackward = void(T* dpre, M* dweight, M* dbias, const T* dout, const T* inp, const T* weight,
                             const T* pre, int64_t N, int IC, int OC);
};

// Column sums accumulated into out (C) +=: sum over the N rows of x (N,C), in row order (deterministic).
template <typename T>
void column_sums_accumulate(T* out, const T* x, int64_t N, int C);

void register_matmul_cpu(Registry& r);
void register_matmul_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
