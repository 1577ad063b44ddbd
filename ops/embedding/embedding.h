// embedding.h — token + position embedding ("encoder"), forward and backward.
//
// forward:  out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
// backward: dwte[inp[b,t],:] += dout[b,t,:];  dwpe[t,:] += dout[b,t,:]   (deterministic: no atomics, fixed order)
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct Embedding {
  // out (B,T,C), inp (B,T), wte (V,C), wpe (maxT,C)
  using Forward = void(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int T_, int C);
  // dwte (V,C) +=, dwpe (maxT,C) +=, dout (B,T,C), inp (B,T)
  using Backward = void(T* dwte, T* dwpe, const T* dout, const int32_t* inp, int B, int T_, int C);
};

void register_embedding_cpu(Registry& r);

}  // namespace aq::ops
