// bf16.h — bfloat16 storage and the precision each tensor of a mixed-precision model is kept in.
//
// bf16 is the top half of an IEEE float: the same exponent range, 8 bits of mantissa. Host code only stores
// and converts it (round to nearest even); arithmetic happens in float. On the GPU the same bits are read as
// __nv_bfloat16 (ops/cuda/common.cuh).
//
// master_t<T> is the type of everything a model of element type T keeps at full precision: master weights,
// parameter gradients, optimizer moments, LayerNorm/attention statistics and losses. For float and double it
// is T itself; for bf16 it is float ("bf16 weights and activations, fp32 master weights, gradients and
// reductions").
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace aq {

struct bf16 {
  uint16_t bits;
};

inline float bf16_to_float(bf16 x) {
  const uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{static_cast<uint16_t>(u >> 16)};
}

template <typename T>
using master_t = std::conditional_t<std::is_same_v<T, bf16>, float, T>;

}  // namespace aq
