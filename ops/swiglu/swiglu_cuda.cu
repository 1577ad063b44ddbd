// swiglu_cuda.cu — SwiGLU on CUDA, forward and backward, float and bf16 (arithmetic in fp32).
//
// Elementwise and memory-bound: a block per row (grid-stride over rows), its threads over the row's F columns,
// reading gate and up of a column from the packed (N, 2F) row (see swiglu.h) — no 64-bit division per element.
// Rows are not 16-byte aligned in general (F odd), so loads are scalar; consecutive threads still read
// consecutive addresses of each half. expf(−g) overflows to inf below g ≈ −88 and 1/(1 + inf) is exactly 0
// (IEEE division; this file is not built with --use_fast_math), the right limit.
#include "ops/cuda/common.cuh"
#include "ops/swiglu/swiglu.h"

namespace aq::ops {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// out (N,F) = silu(gate) · up; inp (N,2F). Blocks walk rows (grid-stride), threads walk a row's columns.
template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* inp, int64_t N, int F) {
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* g = inp + row * 2 * F;
    for (int c = threadIdx.x; c < F; c += blockDim.x) {
      const float gc = cuda::to_f(g[c]);
      out[row * F + c] = cuda::from_f<T>(gc * sigmoid(gc) * cuda::to_f(g[F + c]));
    }
  }
}

// dinp (N,2F) = [d gate | d up], may alias inp (each thread reads its gate and up first); dout (N,F), inp (N,2F)
template <typename T>
__global__ void swiglu_backward_kernel(T* dinp, const T* dout, const T* inp, int64_t N, int F) {
  for (int64_t row = blockIdx.x; row < N; row += gridDim.x) {
    const T* g = inp + row * 2 * F;
    T* dg = dinp + row * 2 * F;
    for (int c = threadIdx.x; c < F; c += blockDim.x) {
      const float gc = cuda::to_f(g[c]), uc = cuda::to_f(g[F + c]), d = cuda::to_f(dout[row * F + c]);
      const float sig = sigmoid(gc);
      dg[c] = cuda::from_f<T>(d * uc * sig * (1.0f + gc * (1.0f - sig)));
      dg[F + c] = cuda::from_f<T>(d * gc * sig);
    }
  }
}

// One block per row up to a grid of 2^20 blocks (the grid-stride loop covers the rest).
inline unsigned row_blocks(int64_t N) { return static_cast<unsigned>(N < (1 << 20) ? N : (1 << 20)); }

template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int F) {
  if (N == 0 || F == 0) return;
  swiglu_forward_kernel<T><<<row_blocks(N), cuda::kThreads>>>(out, inp, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void swiglu_backward(T* dinp, const T* dout, const T* inp, int64_t N, int F) {
  if (N == 0 || F == 0) return;
  swiglu_backward_kernel<T><<<row_blocks(N), cuda::kThreads>>>(dinp, dout, inp, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename SwiGlu<T>::Forward>("swiglu_forward", Device::CUDA, dtype_of<T>(), &swiglu_forward<T>);
  r.add<typename SwiGlu<T>::Backward>("swiglu_backward", Device::CUDA, dtype_of<T>(), &swiglu_backward<T>);
}

}  // namespace

void register_swiglu_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
