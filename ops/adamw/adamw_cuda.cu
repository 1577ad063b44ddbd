// adamw_cuda.cu — AdamW update and the deterministic sum of squares on CUDA.
//
// sum_squares uses a fixed grid of fixed-size chunks, a CUB block reduction per chunk in double, and a second
// one-block pass over the partials in chunk order: the result is the same bit for bit on every run and GPU.
#include <cub/block/block_reduce.cuh>

#include "ops/adamw/adamw.h"
#include "ops/cuda/common.cuh"

namespace aq::ops {
namespace {

__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, int64_t n, float lr_decay,
                             float b1, float b2, float step_size, float inv_bc2_sqrt, float eps, float gs) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    const float g = grad[i] * gs;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * lr_decay - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
  }
}

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& hp) {
  if (n == 0) return;
  const float decay = static_cast<float>(1.0 - hp.lr * hp.weight_decay);
  const float step_size = static_cast<float>(hp.lr / (1.0 - std::pow(hp.beta1, static_cast<double>(hp.step))));
  const float inv_bc2 = static_cast<float>(1.0 / std::sqrt(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step))));
  adamw_kernel<<<cuda::blocks_for(n), cuda::kThreads>>>(param, grad, m, v, n, decay, static_cast<float>(hp.beta1),
                                                        static_cast<float>(hp.beta2), step_size, inv_bc2,
                                                        static_cast<float>(hp.eps), static_cast<float>(hp.grad_scale));
  AQ_CUDA_LAUNCH_CHECK();
}

constexpr int64_t kChunk = 1 << 16;  // same chunking as the CPU kernel

__global__ void partial_squares_kernel(double* partial, const float* x, int64_t n) {
  using Reduce = cub::BlockReduce<double, cuda::kThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t lo = blockIdx.x * kChunk, hi = min(n, lo + kChunk);
  double acc = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) acc += static_cast<double>(x[i]) * x[i];
  const double total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void sum_partials_kernel(double* out, const double* partial, int64_t count) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    double s = 0;
    for (int64_t i = 0; i < count; ++i) s += partial[i];  // in chunk order, like the CPU kernel
    *out = s;
  }
}

double sum_squares(const float* x, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks == 0) return 0.0;
  cuda::DeviceScratch scratch(static_cast<size_t>(chunks + 1) * sizeof(double));
  double* partial = scratch.as<double>();
  partial_squares_kernel<<<static_cast<unsigned>(chunks), cuda::kThreads>>>(partial, x, n);
  AQ_CUDA_LAUNCH_CHECK();
  sum_partials_kernel<<<1, 32>>>(partial + chunks, partial, chunks);
  AQ_CUDA_LAUNCH_CHECK();
  double result = 0;
  AQ_CUDA_CHECK(cudaMemcpy(&result, partial + chunks, sizeof(double), cudaMemcpyDeviceToHost));
  return result;
}

}  // namespace

void register_adamw_cuda(Registry& r) {
  r.add<AdamW<float>::Update>("adamw_update", Device::CUDA, DType::F32, &adamw_update);
  r.add<AdamW<float>::SumSquares>("sum_squares", Device::CUDA, DType::F32, &sum_squares);
}

}  // namespace aq::ops
