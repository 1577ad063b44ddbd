// gelu_cuda.cu — GELU (tanh approximation) on CUDA, forward and backward, float and bf16.
//
// Elementwise and memory-bound: when the pointers are 16-byte aligned the body moves 128 bits per load and
// store (4 floats or 8 bf16) and only the tail is scalar. Arithmetic is in fp32 for both types.
#include "ops/cuda/common.cuh"
#include "ops/gelu/gelu.h"

namespace aq::ops {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

__device__ __forceinline__ float gelu(float x) {
  return 0.5f * x * (1.0f + tanhf(kSqrt2OverPi * (x + kCubic * x * x * x)));
}
__device__ __forceinline__ float gelu_grad(float x) {
  const float th = tanhf(kSqrt2OverPi * (x + kCubic * x * x * x));
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
}

// out (n) = gelu(inp (n)); vec: both pointers 16-byte aligned
template <typename T>
__global__ void gelu_forward_kernel(T* out, const T* inp, int64_t n, bool vec) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t nv = vec ? n / kVec : 0;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < nv; i += stride) {
    const int4 raw = reinterpret_cast<const int4*>(inp)[i];
    const T* x = reinterpret_cast<const T*>(&raw);
    int4 res;
    T* y = reinterpret_cast<T*>(&res);
#pragma unroll
    for (int k = 0; k < kVec; ++k) y[k] = cuda::from_f<T>(gelu(cuda::to_f(x[k])));
    reinterpret_cast<int4*>(out)[i] = res;
  }
  for (int64_t i = kVec * nv + first; i < n; i += stride) out[i] = cuda::from_f<T>(gelu(cuda::to_f(inp[i])));
}

// dinp (n) = gelu'(inp) · dout; dinp may alias dout; vec: all three pointers 16-byte aligned
template <typename T>
__global__ void gelu_backward_kernel(T* dinp, const T* inp, const T* dout, int64_t n, bool vec) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t nv = vec ? n / kVec : 0;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < nv; i += stride) {
    const int4 rx = reinterpret_cast<const int4*>(inp)[i];
    const int4 rd = reinterpret_cast<const int4*>(dout)[i];
    const T* x = reinterpret_cast<const T*>(&rx);
    const T* d = reinterpret_cast<const T*>(&rd);
    int4 res;
    T* y = reinterpret_cast<T*>(&res);
#pragma unroll
    for (int k = 0; k < kVec; ++k) y[k] = cuda::from_f<T>(gelu_grad(cuda::to_f(x[k])) * cuda::to_f(d[k]));
    reinterpret_cast<int4*>(dinp)[i] = res;
  }
  for (int64_t i = kVec * nv + first; i < n; i += stride)
    dinp[i] = cuda::from_f<T>(gelu_grad(cuda::to_f(inp[i])) * cuda::to_f(dout[i]));
}

template <typename T>
unsigned grid_for(int64_t n, bool vec) {
  return cuda::blocks_for(vec ? n / static_cast<int64_t>(16 / sizeof(T)) + 1 : n);
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Gelu<T>::Forward>("gelu_forward", Device::CUDA, dtype_of<T>(), &gelu_forward_cuda<T>);
  r.add<typename Gelu<T>::Backward>("gelu_backward", Device::CUDA, dtype_of<T>(), &gelu_backward_cuda<T>);
}

}  // namespace

template <typename T>
void gelu_forward_cuda(T* out, const T* inp, int64_t n) {
  if (n == 0) return;
  const bool vec = cuda::aligned16(out) && cuda::aligned16(inp);
  gelu_forward_kernel<<<grid_for<T>(n, vec), cuda::kThreads>>>(out, inp, n, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void gelu_backward_cuda(T* dinp, const T* inp, const T* dout, int64_t n) {
  if (n == 0) return;
  const bool vec = cuda::aligned16(dinp) && cuda::aligned16(inp) && cuda::aligned16(dout);
  gelu_backward_kernel<<<grid_for<T>(n, vec), cuda::kThreads>>>(dinp, inp, dout, n, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

template void gelu_forward_cuda<float>(float*, const float*, int64_t);
template void gelu_forward_cuda<bf16>(bf16*, const bf16*, int64_t);
template void gelu_backward_cuda<float>(float*, const float*, const float*, int64_t);
template void gelu_backward_cuda<bf16>(bf16*, const bf16*, const bf16*, int64_t);

void register_gelu_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
