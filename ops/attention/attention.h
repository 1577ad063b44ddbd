// attention.h — causal multi-head self-attention on a packed qkv tensor, fused scaled-masked softmax.
//
// qkv (B,T,3C) is the c_attn output: q = [..., 0:C], k = [..., C:2C], v = [..., 2C:3C]; head h owns columns
// h·hs … (h+1)·hs−1 of each, hs = C/NH. For each query t: p = softmax(q·k_{t2≤t} / sqrt(hs)), out = Σ p·v.
// Only the row log-sum-exp lse (B,NH,T) is kept for the backward pass, which recomputes p from q, k and lse
// (flash-attention style): the T×T probability matrix is never stored, so memory is linear in T.
//
// Grouped-query attention (Llama's num_key_value_heads): NH query heads share NKV key/value heads
// (NH % NKV == 0), query head h using kv head h / (NH/NKV), on the packed layout qkv (B,T,(NH+2·NKV)·hs) =
// [q (NH·hs) | k (NKV·hs) | v (NKV·hs)]; out (B,T,NH·hs) and lse (B,NH,T) as above. Backward sums d(k) and
// d(v) over the query heads sharing a kv head. The GQA entry points share their code with the GPT-2 ones, and
// with NKV = NH they compute the same thing with the same operations (bit-identical results).
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
  // Grouped-query ("attention_gqa_forward"): out (B,T,NH·hs), lse (B,NH,T), qkv (B,T,(NH+2·NKV)·hs)
  using ForwardGqa = void(T* out, M* lse, const T* qkv, int B, int T_, int NH, int NKV, int hs);
  // ("attention_gqa_backward"): dqkv (B,T,(NH+2·NKV)·hs) overwritten; dout (B,T,NH·hs), qkv, out, lse as above
  using BackwardGqa = void(T* dqkv, const T* dout, const T* qkv, const T* out, const M* lse, int B, int T_, int NH,
                           int NKV, int hs);
};

void register_attention_cpu(Registry& r);
void register_attention_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
