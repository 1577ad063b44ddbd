// common.cuh — launch helpers shared by the CUDA kernels.
#pragma once

#include <cstdint>

#include "runtime/cuda/allocator.h"
#include "runtime/cuda/cuda_check.h"

namespace aq::cuda {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));  // grid-stride loops cover the rest
}

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
