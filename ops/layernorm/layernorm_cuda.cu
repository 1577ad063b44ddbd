// layernorm_cuda.cu — LayerNorm (optionally fused with the residual add) on CUDA, forward and backward, for
// float and bf16 activations (statistics, arithmetic and weight gradients in fp32).
//
// One warp per row, reductions with cub::WarpReduce. The weight gradients are summed deterministically: each
// block sums a fixed range of rows for every column into a partial row, and a second pass adds the partials in
// order (no float atomics, so results repeat bit for bit).
#include <cub/warp/warp_reduce.cuh>

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

constexpr int64_t kRowsPerPartial = 256;

// partial[p, c] = Σ over rows of chunk p of (dout·xhat, dout) for column c.
template <typename T>
__global__ void layernorm_weight_partials_kernel(float* partial_w, float* partial_b, const T* dout, const T* inp,
                                                 const float* mean, const float* rstd, int64_t N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (c >= C) return;
  float aw = 0, ab = 0;
  for (int64_t row = p * kRowsPerPartial; row < min(N, (p + 1) * kRowsPerPartial); ++row) {
    const float d = cuda::to_f(dout[row * C + c]);
    aw += d * (cuda::to_f(inp[row * C + c]) - mean[row]) * rstd[row];
    ab += d;
  }
  partial_w[p * C + c] = aw;
  partial_b[p * C + c] = ab;
}

__global__ void layernorm_weight_sum_kernel(float* dw, float* db, const float* partial_w, const float* partial_b,
                                            int64_t parts, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float aw = 0, ab = 0;
  for (int64_t p = 0; p < parts; ++p) {
    aw += partial_w[p * C + c];
    ab += partial_b[p * C + c];
  }
  dw[c] += aw;
  db[c] += ab;
}

template <typename T>
void layernorm_backward(T* dinp, float* dw, float* db, const T* dout, const T* inp, const T* w, const float* mean,
                        const float* rstd, int64_t N, int C) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_backward_input_kernel<<<blocks, kRowsPerBlock * kWarp>>>(dinp, dout, inp, w, mean, rstd, N, C);
  AQ_CUDA_LAUNCH_CHECK();
  const int64_t parts = (N + kRowsPerPartial - 1) / kRowsPerPartial;
  cuda::DeviceScratch scratch(static_cast<size_t>(2 * parts * C) * sizeof(float));
  float* pw = scratch.as<float>();
  float* pb = pw + parts * C;
  const unsigned col_blocks = static_cast<unsigned>((C + 127) / 128);
  layernorm_weight_partials_kernel<<<dim3(col_blocks, static_cast<unsigned>(parts)), 128>>>(pw, pb, dout, inp, mean,
                                                                                            rstd, N, C);
  AQ_CUDA_LAUNCH_CHECK();
  layernorm_weight_sum_kernel<<<col_blocks, 128>>>(dw, db, pw, pb, parts, C);
  AQ_CUDA_LAUNCH_CHECK();
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
