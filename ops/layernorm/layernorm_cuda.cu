// layernorm_cuda.cu — LayerNorm (optionally fused with the residual add) on CUDA, forward and backward.
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

// res (optional) = a + b_in; out = LayerNorm(res or inp)
__global__ void layernorm_forward_kernel(float* res, float* out, float* mean, float* rstd, const float* a,
                                         const float* b_in, const float* w, const float* b, int64_t N, int C) {
  __shared__ typename WarpReduce::TempStorage tmp[kRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= N) return;
  const float* x = a + row * C;
  float* r = res ? res + row * C : nullptr;
  float sum = 0;
  for (int c = lane; c < C; c += kWarp) {
    float v = x[c];
    if (r) {
      v += b_in[row * C + c];
      r[c] = v;
    }
    sum += v;
  }
  const float* src = r ? r : x;
  const float m = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(sum), 0) / C;
  __syncwarp();
  float var = 0;
  for (int c = lane; c < C; c += kWarp) var += (src[c] - m) * (src[c] - m);
  const float s = rsqrtf(__shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(var), 0) / C + static_cast<float>(kLayerNormEps));
  for (int c = lane; c < C; c += kWarp) out[row * C + c] = (src[c] - m) * s * w[c] + b[c];
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* w, const float* b,
                       int64_t N, int C) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * kWarp>>>(nullptr, out, mean, rstd, inp, nullptr, w, b, N, C);
  AQ_CUDA_LAUNCH_CHECK();
}

void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a, const float* b_in,
                                const float* w, const float* b, int64_t N, int C) {
  const unsigned blocks = static_cast<unsigned>((N + kRowsPerBlock - 1) / kRowsPerBlock);
  layernorm_forward_kernel<<<blocks, kRowsPerBlock * kWarp>>>(res, out, mean, rstd, a, b_in, w, b, N, C);
  AQ_CUDA_LAUNCH_CHECK();
}

__global__ void layernorm_backward_input_kernel(float* dinp, const float* dout, const float* inp, const float* w,
                                                const float* mean, const float* rstd, int64_t N, int C) {
  __shared__ typename WarpReduce::TempStorage tmp[kRowsPerBlock];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + warp;
  if (row >= N) return;
  const float* x = inp + row * C;
  const float* d = dout + row * C;
  const float m = mean[row], s = rstd[row];
  float a = 0, bsum = 0;
  for (int c = lane; c < C; c += kWarp) {
    const float dn = d[c] * w[c];
    a += dn;
    bsum += dn * (x[c] - m) * s;
  }
  const float dnorm_mean = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(a), 0) / C;
  __syncwarp();
  const float dnorm_xhat_mean = __shfl_sync(0xffffffff, WarpReduce(tmp[warp]).Sum(bsum), 0) / C;
  for (int c = lane; c < C; c += kWarp) {
    const float xhat = (x[c] - m) * s;
    dinp[row * C + c] += (d[c] * w[c] - dnorm_mean - xhat * dnorm_xhat_mean) * s;
  }
}

constexpr int64_t kRowsPerPartial = 256;

// partial[p, c] = Σ over rows of chunk p of (dout·xhat, dout) for column c.
__global__ void layernorm_weight_partials_kernel(float* partial_w, float* partial_b, const float* dout,
                                                 const float* inp, const float* mean, const float* rstd, int64_t N,
                                                 int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (c >= C) return;
  float aw = 0, ab = 0;
  for (int64_t row = p * kRowsPerPartial; row < min(N, (p + 1) * kRowsPerPartial); ++row) {
    const float d = dout[row * C + c];
    aw += d * (inp[row * C + c] - mean[row]) * rstd[row];
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

void layernorm_backward(float* dinp, float* dw, float* db, const float* dout, const float* inp, const float* w,
                        const float* mean, const float* rstd, int64_t N, int C) {
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

}  // namespace

void register_layernorm_cuda(Registry& r) {
  r.add<LayerNorm<float>::Forward>("layernorm_forward", Device::CUDA, DType::F32, &layernorm_forward);
  r.add<LayerNorm<float>::ResidualForward>("residual_layernorm_forward", Device::CUDA, DType::F32,
                                           &residual_layernorm_forward);
  r.add<LayerNorm<float>::Backward>("layernorm_backward", Device::CUDA, DType::F32, &layernorm_backward);
}

}  // namespace aq::ops
