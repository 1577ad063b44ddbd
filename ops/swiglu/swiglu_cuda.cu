// swiglu_cuda.cu — SwiGLU on CUDA, forward and backward, float and bf16 (arithmetic in fp32).
//
// Elementwise and memory-bound, over the (N, F) output positions with a grid-stride loop; each thread reads
// gate and up of its position from the packed (N, 2F) row (see swiglu.h). Rows are not 16-byte aligned in
// general (F odd), so loads are scalar; consecutive threads still read consecutive addresses of each half.
#include "ops/cuda/common.cuh"
#include "ops/swiglu/swiglu.h"

namespace aq::ops {
namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// out (N,F) = silu(gate) · up; inp (N,2F)
template <typename T>
__global__ void swiglu_forward_kernel(T* out, const T* inp, int64_t N, int F) {
  const int64_t n = N * F, stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t row = i / F, c = i % F;
    const float g = cuda::to_f(inp[row * 2 * F + c]), u = cuda::to_f(inp[row * 2 * F + F + c]);
    out[i] = cuda::from_f<T>(g * sigmoid(g) * u);
  }
}

// dinp (N,2F) = [d gate | d up], may alias inp (each thread reads its gate and up first); dout (N,F), inp (N,2F)
template <typename T>
__global__ void swiglu_backward_kernel(T* dinp, const T* dout, const T* inp, int64_t N, int F) {
  const int64_t n = N * F, stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const int64_t row = i / F, c = i % F;
    const float g = cuda::to_f(inp[row * 2 * F + c]), u = cuda::to_f(inp[row * 2 * F + F + c]);
    const float d = cuda::to_f(dout[i]), sig = sigmoid(g);
    dinp[row * 2 * F + c] = cuda::from_f<T>(d * u * sig * (1.0f + g * (1.0f - sig)));
    dinp[row * 2 * F + F + c] = cuda::from_f<T>(d * g * sig);
  }
}

template <typename T>
void swiglu_forward(T* out, const T* inp, int64_t N, int F) {
  if (N == 0 || F == 0) return;
  swiglu_forward_kernel<T><<<cuda::blocks_for(N * F), cuda::kThreads>>>(out, inp, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void swiglu_backward(T* dinp, const T* dout, const T* inp, int64_t N, int F) {
  if (N == 0 || F == 0) return;
  swiglu_backward_kernel<T><<<cuda::blocks_for(N * F), cuda::kThreads>>>(dinp, dout, inp, N, F);
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
