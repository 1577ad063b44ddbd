// glu.h — a gated linear unit around any activation: out = act ⊙ up on packed [gate | up] rows, for a Llama whose
// hidden_act is a registered operator (HF: down(act_fn(gate(x)) · up(x))). silu keeps the fused SwiGLU
// (ops/swiglu); any other activation runs through the registry's generic path on the gate half, which these kernels
// cut out and put back:
//   split:    gate (N,F) = inp[:, :F]                 (the activation's contiguous input)
//   forward:  out (N,F) = act (N,F) ⊙ inp[:, F:2F]    (act = activation(gate))
//   backward: dact (N,F) = dout ⊙ up; dinp[:, F:2F] = dout ⊙ act; dinp[:, :F] = 0 (the gate reaches out only
//             through act); dinp may alias inp (each element of up is read before its gradient is written)
//   merge:    dinp[:, :F] = dgate (N,F)               (the activation's input gradient, back into the packed rows)
// inp and dinp are (N,2F): a rank's [gate shard | up shard] under tensor parallelism, as the column-parallel GEMM
// lays them out.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct Glu {
  // gate (N,F) = inp (N,2F) [:, :F]
  using Split = void(T* gate, const T* inp, int64_t N, int F);
  // out (N,F) = act (N,F) ⊙ inp (N,2F) [:, F:]
  using Forward = void(T* out, const T* act, const T* inp, int64_t N, int F);
  // dact (N,F) = dout ⊙ up; dinp (N,2F) = [0 | dout ⊙ act]; dout, act (N,F), inp (N,2F); dinp may alias inp
  using Backward = void(T* dinp, T* dact, const T* dout, const T* act, const T* inp, int64_t N, int F);
  // dinp (N,2F) [:, :F] = dgate (N,F); the up half untouched
  using Merge = void(T* dinp, const T* dgate, int64_t N, int F);
};

void register_glu_cpu(Registry& r);
void register_glu_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
