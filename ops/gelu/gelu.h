// gelu.h — GELU, tanh approximation (GPT-2's): y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct Gelu {
  // out (n) = gelu(inp (n))
  using Forward = void(T* out, const T* inp, int64_t n);
  // dinp (n) = gelu'(inp) · dout; dinp may alias dout (in-place)
  using Backward = void(T* dinp, const T* inp, const T* dout, int64_t n);
};

// The CPU kernels themselves, for fused CPU operators built from them (ops/matmul); float and double.
template <typename T>
void gelu_forward_cpu(T* out, const T* inp, int64_t n);
template <typename T>
void gelu_backward_cpu(T* dinp, const T* inp, const T* dout, int64_t n);

// The CUDA launchers (float and bf16; built with the CUDA toolkit), for fused CUDA operators.
template <typename T>
void gelu_forward_cuda(T* out, const T* inp, int64_t n);
template <typename T>
void gelu_backward_cuda(T* dinp, const T* inp, const T* dout, int64_t n);

void register_gelu_cpu(Registry& r);
void register_gelu_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
