// embedding.h — token + position embedding ("encoder"), forward and backward.
//
// forward:  out[b,t,:] = wte[inp[b,t],:] + wpe[t,:]
// backward: dwte[inp[b,t],:] += dout[b,t,:];  dwpe[t,:] += dout[b,t,:]   (deterministic: no atomics, fixed order)
// Vocabulary-parallel form: wte holds rows v0 … v0+Vl−1 of the table; tokens outside that range contribute
// zero (forward) and no gradient (backward), and the partial outputs of the ranks are summed. wpe / dwpe may
// be null (positions added on one rank only, or not at all).
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct Embedding {
  // out (B,T,C), inp (B,T), wte (Vl,C) rows v0…v0+Vl−1, wpe (maxT,C) or null
  using Forward = void(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int T_, int C, int v0, int Vl);
  // dwte (Vl,C) +=, dwpe (maxT,C) += or null (parameter gradients, master precision), dout (B,T,C), inp (B,T)
  using Backward = void(master_t<T>* dwte, master_t<T>* dwpe, const T* dout, const int32_t* inp, int B, int T_,
                        int C, int v0, int Vl);
};

void register_embedding_cpu(Registry& r);
void register_embedding_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
