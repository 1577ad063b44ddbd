// gelu_cuda.cu — GELU (tanh approximation) on CUDA, forward and backward; 128-bit loads where aligned.
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

// vec: 16-byte aligned pointers, so the body runs on float4 and only the tail is scalar.
__global__ void gelu_forward_kernel(float* out, const float* inp, int64_t n, bool vec) {
  const int64_t n4 = vec ? n / 4 : 0;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4; i += stride) {
    float4 x = reinterpret_cast<const float4*>(inp)[i];
    reinterpret_cast<float4*>(out)[i] = make_float4(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w));
  }
  for (int64_t i = 4 * n4 + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = gelu(inp[i]);
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dinp[i] = gelu_grad(inp[i]) * dout[i];
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

void gelu_forward(float* out, const float* inp, int64_t n) {
  if (n == 0) return;
  const bool vec = aligned16(out) && aligned16(inp);
  gelu_forward_kernel<<<cuda::blocks_for(vec ? n / 4 + 1 : n), cuda::kThreads>>>(out, inp, n, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int64_t n) {
  if (n == 0) return;
  gelu_backward_kernel<<<cuda::blocks_for(n), cuda::kThreads>>>(dinp, inp, dout, n);
  AQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

void register_gelu_cuda(Registry& r) {
  r.add<Gelu<float>::Forward>("gelu_forward", Device::CUDA, DType::F32, &gelu_forward);
  r.add<Gelu<float>::Backward>("gelu_backward", Device::CUDA, DType::F32, &gelu_backward);
}

}  // namespace aq::ops
