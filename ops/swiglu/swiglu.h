// swiglu.h — SwiGLU, the gated activation of Llama's MLP: out = silu(gate) · up, silu(g) = g · sigmoid(g).
//
// Hugging Face computes down_proj(silu(gate_proj(x)) * up_proj(x)) with two GEMMs for gate and up. Our layout
// packs them into one GEMM output: inp (…, 2F) holds [gate | up] in each row (gate in columns 0 … F−1, up in
// F … 2F−1), so the fc weight is the two HF matrices side by side and one GEMM (and its backward) serves both.
// Under tensor parallelism each rank's row is its own [gate shard | up shard] of F/tp columns each.
// backward: d gate = dout · up · silu'(gate), d up = dout · silu(gate),
//           silu'(g) = sigmoid(g) · (1 + g · (1 − sigmoid(g))).
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct SwiGlu {
  // out (N,F); inp (N,2F) = [gate | up] per row
  using Forward = void(T* out, const T* inp, int64_t N, int F);
  // dinp (N,2F) = [d gate | d up] overwritten, may alias inp (in place); dout (N,F), inp (N,2F)
  using Backward = void(T* dinp, const T* dout, const T* inp, int64_t N, int F);
};

void register_swiglu_cpu(Registry& r);
void register_swiglu_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
