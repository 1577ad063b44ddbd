// rope.h — rotary position embedding, Hugging Face's "rotate_half" convention (Llama, Mistral, Qwen, …).
//
// Within each head of hs columns, column i < hs/2 pairs with column i + hs/2 and the pair is rotated by the
// angle pos · inv_freq_i, inv_freq_i = theta^(−2i/hs) (theta is the config's rope_theta):
//   x'_i        = x_i · cos − x_{i+hs/2} · sin
//   x'_{i+hs/2} = x_{i+hs/2} · cos + x_i · sin        (HF: x' = x·cos + rotate_half(x)·sin)
// Applied in place to the first n_heads heads of each row, which on the packed attention input
// qkv (B,T,(NH+2·NKV)·hs) = [q | k | v] are exactly the q and k heads (n_heads = NH + NKV; v is left alone).
// Row t of the sequence has position pos0 + t (pos0 > 0 continues a sequence, e.g. when generating).
// backward: the rotation is orthogonal, so the gradient is rotated back by −angle, in place.
//
// Precision: inv_freq, the angle and its cos/sin are evaluated in double and rounded once to the kernel's
// arithmetic type (fp32 for float and bf16 storage). Hugging Face evaluates inv_freq, pos·inv_freq and cos/sin
// in fp32, so its angle is off by up to about pos·inv_freq·2⁻²³ (≈ 2e-4 rad at position 2000 where inv_freq is
// near 1; i = 0 is exact, inv_freq being 1); ours is the exact angle, theirs is within that of it
// (tests/ops/test_ops.cpp checks both). HF also rounds cos and sin to bf16 in a bf16 model; here they stay fp32
// and only the rotated values are rounded.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct Rope {
  // x (B,T_,stride) rotated in place: heads 0 … n_heads−1 (columns 0 … n_heads·hs−1) of every row
  using Forward = void(T* x, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta);
  // dx (B,T_,stride): the gradient with respect to the rotated values, rotated back in place (same columns)
  using Backward = void(T* dx, int B, int T_, int stride, int n_heads, int hs, int pos0, double theta);
};

// The shape checks both devices share: one line naming the bad value.
void check_rope_shape(int B, int T_, int stride, int n_heads, int hs, int pos0, double theta);

void register_rope_cpu(Registry& r);
void register_rope_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
