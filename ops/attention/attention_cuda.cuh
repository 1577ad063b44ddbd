// attention_cuda.cuh — what the two CUDA attention files share (internal to ops/attention).
//
// attention_cuda.cu holds the fp32-FMA flash tiles, the row kernels and the dispatch; attention_wmma.cu holds
// the tensor-core (WMMA) kernels for bf16, which the dispatch calls through wmma_forward / wmma_backward.
#pragma once

#include <algorithm>
#include <cstddef>
#include <initializer_list>

#include "ops/cuda/common.cuh"
#include "runtime/bf16.h"

namespace aq::ops::attention_detail {

// Whether the flash kernels may move 128 bits per load: head columns in whole 16-byte chunks, base pointers
// 16-byte aligned (then every row of every head is, as C = NH·hs is a multiple of the chunk too).
template <typename T>
inline bool vector_loads(int hs, std::initializer_list<const void*> ptrs) {
  if (hs % (16 / static_cast<int>(sizeof(T))) != 0) return false;
  return std::all_of(ptrs.begin(), ptrs.end(), [](const void* p) { return cuda::aligned16(p); });
}

// Lets Kernel use `bytes` of dynamic shared memory (beyond the 48 KiB default). Set once per kernel instance
// and process (one device per rank; the size of an instance never changes), not at every launch.
template <auto Kernel>
inline void allow_smem(size_t bytes) {
  static const bool done = [&] {
    AQ_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    return true;
  }();
  (void)done;
}

// dst[r] = src[row0 + r] for r < rows (0 past row T_): a tile's lse or D values, into shared memory.
__device__ __forceinline__ void load_stats(float* dst, const float* src, int row0, int rows, int T_) {
  for (int r = threadIdx.x; r < rows; r += blockDim.x) dst[r] = row0 + r < T_ ? src[row0 + r] : 0.0f;
}

// Tensor-core passes for bf16 with the head size padded to D ∈ {16, 32, 64, 128} (attention_wmma.cu).
// forward: out (B,T_,C), lse (B,NH,T_), qkv (B,T_,3C)
template <int D>
void wmma_forward(bf16* out, float* lse, const bf16* qkv, int B, int T_, int C, int NH, float scale);
// backward: dqkv (B,T_,3C) overwritten; dout (B,T_,C), qkv (B,T_,3C), lse and Dbuf = rowsum(dout·out) (B,NH,T_)
template <int D>
void wmma_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dbuf, int B, int T_,
                   int C, int NH, float scale);

}  // namespace aq::ops::attention_detail
