// residual_cuda.cu — the residual add on CUDA (float and bf16): out = a + b, elementwise.
//
// Memory-bound and simple: a grid-stride loop, one element per thread per step. bf16 adds in fp32 and rounds
// once, as the fused residual norm kernels do, so the generic norm path sees the same residual stream.
#include "ops/cuda/common.cuh"
#include "ops/residual/residual.h"

namespace aq::ops {
namespace {

// out (n) = a (n) + b (n); out may alias a or b
template <typename T>
__global__ void residual_forward_kernel(T* out, const T* a, const T* b, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    out[i] = cuda::from_f<T>(cuda::to_f(a[i]) + cuda::to_f(b[i]));
}

template <typename T>
void residual_forward_cuda(T* out, const T* a, const T* b, int64_t n) {
  if (n == 0) return;
  residual_forward_kernel<<<cuda::blocks_for(n), cuda::kThreads>>>(out, a, b, n);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Residual<T>::Forward>("residual_forward", Device::CUDA, dtype_of<T>(), &residual_forward_cuda<T>);
}

}  // namespace

void register_residual_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
