// common.cuh — launch helpers shared by the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <library_types.h>

#include <cstdint>

#include "runtime/bf16.h"
#include "runtime/cuda/allocator.h"
#include "runtime/cuda/cuda_check.h"

namespace aq::cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));  // grid-stride loops cover the rest
}

// Element loads and stores for kernels templated over the storage type (float or aq::bf16): arithmetic is
// always in float. aq::bf16 has the bit layout of __nv_bfloat16; stores round to nearest even.
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(aq::bf16 x) { return __uint_as_float(static_cast<uint32_t>(x.bits) << 16); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ aq::bf16 from_f<aq::bf16>(float x) {
  return aq::bf16{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
}

// The cudaDataType of a storage type, for cuBLASLt and friends.
template <typename T>
constexpr cudaDataType_t cuda_dtype() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, aq::bf16>, "float or bf16");
  return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Reduction operators for CUB (CCCL 3 dropped cub::Sum and cub::Max).
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Checks the last launch (cheap: no synchronisation).
#define AQ_CUDA_LAUNCH_CHECK() AQ_CUDA_CHECK(cudaGetLastError())

// Scratch device memory from the caching allocator, returned when the object goes out of scope.
class DeviceScratch {
 public:
  explicit DeviceScratch(size_t bytes) : p_(CachingAllocator::instance().allocate(bytes)) {}
  ~DeviceScratch() { CachingAllocator::instance().release(p_); }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_;
};

}  // namespace aq::cuda
