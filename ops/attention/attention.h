// attention.h — causal multi-head self-attention on a packed qkv tensor, fused scaled-masked softmax.
//
// qkv (B,T,3C) is the c_attn output: q = [..., 0:C], k = [..., C:2C], v = [..., 2C:3C]; head h owns columns
// h·hs … (h+1)·hs−1 of each, hs = C/NH. For each query t: p = softmax(q·k_{t2≤t} / sqrt(hs)), out = Σ p·v.
// Only the row log-sum-exp lse (B,NH,T) is kept for the backward pass, which recomputes p from q, k and lse
// (flash-attention style): the T×T probability matrix is never stored, so memory is linear in T.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

// lse is kept in master precision M (float for a bf16 model); all softmax arithmetic is in at least fp32.
template <typename T, typename M = master_t<T>>
struct Attention {
  // out (B,T,C), lse (B,NH,T), qkv (B,T,3C)
  using Forward = void(T* out, M* lse, const T* qkv, int B, int T_, int C, int NH);
  // dqkv (B,T,3C) overwritten; dout (B,T,C), qkv (B,T,3C), out (B,T,C), lse (B,NH,T)
  using Backward = void(T* dqkv, const T* dout, const T* qkv, const T* out, const M* lse, int B, int T_, int C,
                        int NH);
};

void register_attention_cpu(Registry& r);
void register_attention_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
