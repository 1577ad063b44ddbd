// layernorm_cuda.cu — LayerNorm (optionally fused with the residual add) on CUDA, forward and backward, for
// float and bf16 activations (statistics, arithmetic and weight gradients in fp32).
//
// One warp per row, reductions with cub::WarpReduce. The weight gradients are deterministic column sums
// (ops/cuda/column_sums.cuh: fixed row chunks, partials added in order, no float atomics).
#include <cub/warp/warp_reduce.cuh>

#include "ops/cuda/column_sums.cuh"
#include "ops/cuda/common.cuh"
#include "ops/layernorm/layernorm.h"

namespace aq::ops {
namespace {

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 8;  // warps per block
using WarpReduce = cub::WarpReduce<float>;

// res (N,C) (optional) = a + b_in; out (N,C) = LayerNorm(res or a); mean, rstd (N); w, b (C)
// With bf16, the rounded residual is what gets normalised (and what backward reads).
template <typename T>
__global__ void layernorm_forward_kernel(T* res, T* out, float* mean, float* rstd, const T* a, const T* b_in,
                                         const T* w, const T* b, int64_t N, int C) {
  __shared__ typename WarpReduce::TempStorage tmp[kRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= N) return;
  const T* x = a + row * C;
  T* r = res ? res + row * C : nullptr;
  float sum = 0;
  for (int c = lane; c < C; c += kWarp) {
    float v = cuda::to_f(x[c]);
    if (r) {
      const T rv = cuda::from_f<T>(v + cuda::to_f(b_in[row * C + c]));
      r[c] = rv;
      v = cuda::to_f(rv);
    }
    sum += v;
  }
  __syncwarp();  // this lane's stores to r are visible to the other lanes below
  const T* src = r ? r : x;
  const float m = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(sum), 0) / C;
  __syncwarp();
  float var = 0;
  for (int c = lane; c < C; c += kWarp) {
    const float d = cuda::to_f(src[c]) - m;
    var += d * d;
  }
  const float s = rsqrtf(__shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(var), 0) / C + static_cast<float>(kLayerNormEps));
  for (int c = lane; c < C; c += kWarp)
    out[row * C + c] = cuda::from_f<T>((cuda::to_f(src[c]) - m) * s * cuda::to_f(w[c]) + cuda::to_f(b[c]));
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, int64_t N, int C) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<T><<<blocks, kRowsPerBlock * kWarp>>>(nullptr, out, mean, rstd, inp, nullptr, w, b, N, C);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void residual_layernorm_forward(T* res, T* out, float* mean, float* rstd, const T* a, const T* b_in, const T* w,
                                const T* b, int64_t N, int C) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * kWarp>>>(res, out, mean, rstd, a, b_in, w, b, N, C);
  AQ_CUDA_LAUNCH_CHECK();
}

// dinp (N,C) += d/dinp; dout, inp (N,C); w (C); mean, rstd (N)
template <typename T>
__global__ void layernorm_backward_input_kernel(T* dinp, const T* dout, const T* inp, const T* w, const float* mean,
                                                const float* rstd, int64_t N, int C) {
  __shared__ typename WarpReduce::TempStorage tmp[kRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= N) return;
  const T* x = inp + row * C;
  const T* d = dout + row * C;
  const float m = mean[row], s = rstd[row];
  float a = 0, bsum = 0;
  for (int c = lane; c < C; c += kWarp) {
    const float dn = cuda::to_f(d[c]) * cuda::to_f(w[c]);
    a += dn;
    bsum += dn * (cuda::to_f(x[c]) - m) * s;
  }
  const float dnorm_mean = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(a), 0) / C;
  __syncwarp();
  const float dnorm_xhat_mean = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(bsum), 0) / C;
  for (int c = lane; c < C; c += kWarp) {
    const float xhat = (cuda::to_f(x[c]) - m) * s;
    const float g = (cuda::to_f(d[c]) * cuda::to_f(w[c]) - dnorm_mean - xhat * dnorm_xhat_mean) * s;
    dinp[row * C + c] = cuda::from_f<T>(cuda::to_f(dinp[row * C + c]) + g);
  }
}

// The weight-gradient terms of one element: (dout·xhat, dout).
template <typename T>
struct LayerNormWeightTerms {
  const T *dout, *inp;
  const float *mean, *rstd;
  int C;
  __device__ void operator()(int64_t row, int c, float (&acc)[2]) const {
    const float d = cuda::to_f(dout[row * C + c]);
    acc[0] += d * (cuda::to_f(inp[row * C + c]) - mean[row]) * rstd[row];
    acc[1] += d;
  }
};

template <typename T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w, const float* mean,
                        const float* rstd, int64_t N, int C) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_backward_input_kernel<<<blocks, kRowsPerBlock * kWarp>>>(dinp, dout, inp, w, mean, rstd, N, C);
  AQ_CUDA_LAUNCH_CHECK();
  cuda::column_sums<2>({{dw, db}}, N, C, LayerNormWeightTerms<T>{dout, inp, mean, rstd, C});
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename LayerNorm<T>::Forward>("layernorm_forward", Device::CUDA, dtype_of<T>(), &layernorm_forward<T>);
  r.add<typename LayerNorm<T>::ResidualForward>("residual_layernorm_forward", Device::CUDA, dtype_of<T>(),
                                                &residual_layernorm_forward<T>);
  r.add<typename LayerNorm<T>::Backward>("layernorm_backward", Device::CUDA, dtype_of<T>(), &layernorm_backward<T>);
}

}  // namespace

void register_layernorm_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
