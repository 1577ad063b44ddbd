// attention_cuda.cu — causal multi-head attention on CUDA: fused scaled-masked softmax, forward and backward.
//
// Layout and semantics as attention.h (packed qkv, row log-sum-exp kept for backward, no T×T matrix stored).
// This is the straightforward version: one block per query row (forward, d(q)) and one block per key row
// (d(k), d(v)), scores for that row in shared memory, reductions with CUB. Every gradient element has one
// writer, so there are no atomics and results repeat bit for bit. A tiled flash-attention kernel replaces it
// when the GPU path is tuned; the tests pin its numbers against the CPU kernel.
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "ops/attention/attention.h"
#include "ops/cuda/common.cuh"

namespace aq::ops {
namespace {

constexpr int kBlock = 128;
constexpr int kWarps = kBlock / 32;
using BlockReduce = cub::BlockReduce<float, kBlock>;
using WarpReduce = cub::WarpReduce<float>;


// Dot product of two hs-vectors by one warp; the result is valid in every lane.
__device__ __forceinline__ float warp_dot(typename WarpReduce::TempStorage& tmp, const float* a, const float* b,
                                          int hs, int lane) {
  float d = 0;
  for (int i = lane; i < hs; i += 32) d += a[i] * b[i];
  d = WarpReduce(tmp).Sum(d);
  return __shfl_sync(0xffffffff, d, 0);
}

// Block-wide reduction whose result every thread receives.
template <typename Op>
__device__ float block_all(typename BlockReduce::TempStorage& tmp, float* slot, float v, Op op) {
  const float r = BlockReduce(tmp).Reduce(v, op);
  if (threadIdx.x == 0) *slot = r;
  __syncthreads();
  const float out = *slot;
  __syncthreads();
  return out;
}

__global__ void attention_forward_kernel(float* out, float* lse, const float* qkv, int T_, int C, int NH, float scale) {
  extern __shared__ float s[];  // scores of this query row, T_ values
  __shared__ typename BlockReduce::TempStorage btmp;
  __shared__ typename WarpReduce::TempStorage wtmp[kWarps];
  __shared__ float slot;
  const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const float* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const float* q = base + t * C3;
  for (int t2 = warp; t2 <= t; t2 += kWarps) {
    const float d = warp_dot(wtmp[warp], q, base + t2 * C3 + C, hs, lane);
    if (lane == 0) s[t2] = d * scale;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) m = fmaxf(m, s[t2]);
  m = block_all(btmp, &slot, m, cuda::MaxOp{});
  float sum = 0;
  for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) {
    const float e = expf(s[t2] - m);
    s[t2] = e;
    sum += e;
  }
  sum = block_all(btmp, &slot, sum, cuda::SumOp{});
  for (int i = threadIdx.x; i < hs; i += blockDim.x) {
    float acc = 0;
    for (int t2 = 0; t2 <= t; ++t2) acc += s[t2] * base[t2 * C3 + 2 * C + i];
    out[(static_cast<int64_t>(b) * T_ + t) * C + h * hs + i] = acc / sum;
  }
  if (threadIdx.x == 0) lse[(static_cast<int64_t>(b) * NH + h) * T_ + t] = m + logf(sum);
}

// Per query row t: D_t = dO·O, and d(q_t) = scale · Σ_t2 ds(t,t2) · k_t2 with ds = p·(dO·v_t2 − D_t).
__global__ void attention_backward_q_kernel(float* dqkv, float* Dbuf, const float* dout, const float* qkv,
                                            const float* out, const float* lse, int T_, int C, int NH, float scale) {
  extern __shared__ float ds[];
  __shared__ typename BlockReduce::TempStorage btmp;
  __shared__ typename WarpReduce::TempStorage wtmp[kWarps];
  __shared__ float slot;
  const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const float* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const int64_t row = (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
  const float* q = base + t * C3;
  const float* dO = dout + row;
  float d = 0;
  for (int i = threadIdx.x; i < hs; i += blockDim.x) d += dO[i] * out[row + i];
  const float D = block_all(btmp, &slot, d, cuda::SumOp{});
  const int64_t stat = (static_cast<int64_t>(b) * NH + h) * T_ + t;
  if (threadIdx.x == 0) Dbuf[stat] = D;
  const float l = lse[stat];
  for (int t2 = warp; t2 <= t; t2 += kWarps) {
    const float sc = warp_dot(wtmp[warp], q, base + t2 * C3 + C, hs, lane) * scale;
    __syncwarp();
    const float dp = warp_dot(wtmp[warp], dO, base + t2 * C3 + 2 * C, hs, lane);
    if (lane == 0) ds[t2] = expf(sc - l) * (dp - D);
  }
  __syncthreads();
  float* dq = dqkv + static_cast<int64_t>(b) * T_ * C3 + t * C3 + h * hs;
  for (int i = threadIdx.x; i < hs; i += blockDim.x) {
    float acc = 0;
    for (int t2 = 0; t2 <= t; ++t2) acc += ds[t2] * base[t2 * C3 + C + i];
    dq[i] = acc * scale;
  }
}

// Per key row t2: d(k_t2) = scale · Σ_{t≥t2} ds(t,t2) · q_t and d(v_t2) = Σ_{t≥t2} p(t,t2) · dO_t.
__global__ void attention_backward_kv_kernel(float* dqkv, const float* Dbuf, const float* dout, const float* qkv,
                                             const float* lse, int T_, int C, int NH, float scale) {
  extern __shared__ float sh[];  // p (T_) then ds (T_)
  float* p = sh;
  float* ds = sh + T_;
  __shared__ typename WarpReduce::TempStorage wtmp[kWarps];
  const int t2 = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const float* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const float* k = base + t2 * C3 + C;
  const float* v = base + t2 * C3 + 2 * C;
  for (int t = t2 + warp; t < T_; t += kWarps) {
    const int64_t stat = (static_cast<int64_t>(b) * NH + h) * T_ + t;
    const float sc = warp_dot(wtmp[warp], base + t * C3, k, hs, lane) * scale;
    __syncwarp();
    const float* dO = dout + (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
    const float dp = warp_dot(wtmp[warp], dO, v, hs, lane);
    if (lane == 0) {
      const float pt = expf(sc - lse[stat]);
      p[t] = pt;
      ds[t] = pt * (dp - Dbuf[stat]);
    }
  }
  __syncthreads();
  float* dk = dqkv + static_cast<int64_t>(b) * T_ * C3 + t2 * C3 + C + h * hs;
  float* dv = dk + C;
  for (int i = threadIdx.x; i < hs; i += blockDim.x) {
    float ak = 0, av = 0;
    for (int t = t2; t < T_; ++t) {
      ak += ds[t] * base[t * C3 + i];
      av += p[t] * dout[(static_cast<int64_t>(b) * T_ + t) * C + h * hs + i];
    }
    dk[i] = ak * scale;
    dv[i] = av;
  }
}

void check_shape(int T_) {
  AQ_CHECK(T_ <= 6144, "CUDA attention holds a row of scores in shared memory: sequence length ", T_,
           " exceeds 6144; lower --seq");
}

void attention_forward(float* out, float* lse, const float* qkv, int B, int T_, int C, int NH) {
  check_shape(T_);
  const float scale = 1.0f / sqrtf(static_cast<float>(C / NH));
  attention_forward_kernel<<<dim3(T_, NH, B), kBlock, T_ * sizeof(float)>>>(out, lse, qkv, T_, C, NH, scale);
  AQ_CUDA_LAUNCH_CHECK();
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out, const float* lse, int B,
                        int T_, int C, int NH) {
  check_shape(T_);
  const float scale = 1.0f / sqrtf(static_cast<float>(C / NH));
  cuda::DeviceScratch D(static_cast<size_t>(B) * NH * T_ * sizeof(float));
  attention_backward_q_kernel<<<dim3(T_, NH, B), kBlock, T_ * sizeof(float)>>>(dqkv, D.as<float>(), dout, qkv, out,
                                                                               lse, T_, C, NH, scale);
  AQ_CUDA_LAUNCH_CHECK();
  attention_backward_kv_kernel<<<dim3(T_, NH, B), kBlock, 2 * T_ * sizeof(float)>>>(dqkv, D.as<float>(), dout, qkv,
                                                                                    lse, T_, C, NH, scale);
  AQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

void register_attention_cuda(Registry& r) {
  r.add<Attention<float>::Forward>("attention_forward", Device::CUDA, DType::F32, &attention_forward);
  r.add<Attention<float>::Backward>("attention_backward", Device::CUDA, DType::F32, &attention_backward);
}

}  // namespace aq::ops
