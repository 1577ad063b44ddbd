// residual.h — the residual add, out = a + b, elementwise.
//
// The built-in norms fuse this add into their forward pass (residual_layernorm_forward,
// residual_rmsnorm_forward); a norm placed in the model's norm slot from the operator registry
// (ModelConfig::norm_op) has no fused form, so the model adds first with this kernel and then runs the norm on
// the sum. The addition is one rounding in the kernel's dtype either way, so the sum is bit-identical to the
// one the fused kernels write.
#pragma once

#include <cstdint>

#include "ops/registry.h"

namespace aq::ops {

template <typename T>
struct Residual {
  // out (n) = a (n) + b (n); out may alias a or b
  using Forward = void(T* out, const T* a, const T* b, int64_t n);
};

void register_residual_cpu(Registry& r);
void register_residual_cuda(Registry& r);  // built with the CUDA toolkit

}  // namespace aq::ops
