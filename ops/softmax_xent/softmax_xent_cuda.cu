// softmax_xent_cuda.cu — fused softmax + cross-entropy and the chunked tied classifier on CUDA.
//
// One block per row: maximum, sum of exponentials (CUB block reductions), loss, and — for training — the row
// overwritten in place by (softmax − onehot)·dscale, all in one kernel. The classifier runs cuBLASLt GEMMs
// around it, chunk by chunk, as the CPU kernel does. In the vocabulary-parallel form (hook != null) the row
// statistics live in device memory and the hook all-reduces them there (NCCL, or MPI staged through the host).
#include <cfloat>
#include <cub/block/block_reduce.cuh>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/softmax_xent/softmax_xent.h"

namespace aq::ops {
namespace {

constexpr int kBlock = 256;
using BlockReduce = cub::BlockReduce<float, kBlock>;


__global__ void softmax_xent_kernel(float* losses, float* logits, const int32_t* targets, int V, float dscale,
                                    int backward) {
  __shared__ typename BlockReduce::TempStorage tmp;
  __shared__ float slot;
  const int64_t i = blockIdx.x;
  float* row = logits + i * V;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, row[j]);
  m = BlockReduce(tmp).Reduce(m, cuda::MaxOp{});
  if (threadIdx.x == 0) slot = m;
  __syncthreads();
  m = slot;
  __syncthreads();
  float s = 0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(row[j] - m);
  s = BlockReduce(tmp).Reduce(s, cuda::SumOp{});
  if (threadIdx.x == 0) slot = s;
  __syncthreads();
  s = slot;
  const int tgt = targets[i];
  const float target_logit = row[tgt] - m;
  __syncthreads();  // everyone has read row[tgt] before it is overwritten
  if (threadIdx.x == 0) losses[i] = logf(s) - target_logit;
  if (!backward) return;
  const float scale = dscale / s;
  for (int j = threadIdx.x; j < V; j += blockDim.x) row[j] = expf(row[j] - m) * scale - (j == tgt ? dscale : 0.0f);
}

void softmax_xent(float* losses, float* logits, const int32_t* targets, int64_t N, int V, float dscale, int backward) {
  if (N == 0) return;
  softmax_xent_kernel<<<static_cast<unsigned>(N), kBlock>>>(losses, logits, targets, V, dscale, backward);
  AQ_CUDA_LAUNCH_CHECK();
}

// Vocabulary-parallel pieces: this rank's real columns are 0 … valid−1 of each row (the rest is padding).
__global__ void vp_row_max_kernel(float* mx, const float* logits, int Vl, int valid) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * Vl;
  float m = -FLT_MAX;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) m = fmaxf(m, row[j]);
  m = BlockReduce(tmp).Reduce(m, cuda::MaxOp{});
  if (threadIdx.x == 0) mx[blockIdx.x] = m;
}

// exp(row − max) in place over the real columns, zero padding; sum_tgt[i] = Σ exp, sum_tgt[rows+i] = target
// logit − max when this rank owns the target (else 0).
__global__ void vp_exp_sum_kernel(float* sum_tgt, float* logits, const float* mx, const int32_t* targets, int rows,
                                  int Vl, int v0, int valid) {
  __shared__ typename BlockReduce::TempStorage tmp;
  const int i = blockIdx.x;
  float* row = logits + static_cast<int64_t>(i) * Vl;
  const float m = mx[i];
  const int t = targets[i] - v0;
  if (threadIdx.x == 0) sum_tgt[rows + i] = (t >= 0 && t < valid) ? row[t] - m : 0.0f;
  __syncthreads();  // the target logit is read before the row is overwritten
  float s = 0;
  for (int j = threadIdx.x; j < Vl; j += blockDim.x) {
    const float e = j < valid ? expf(row[j] - m) : 0.0f;
    row[j] = e;
    s += e;
  }
  s = BlockReduce(tmp).Reduce(s, cuda::SumOp{});
  if (threadIdx.x == 0) sum_tgt[i] = s;
}

__global__ void vp_finish_kernel(float* losses, float* logits, const float* sum_tgt, const int32_t* targets, int rows,
                                 int Vl, int v0, int valid, float dscale, int backward) {
  const int i = blockIdx.x;
  if (threadIdx.x == 0) losses[i] = logf(sum_tgt[i]) - sum_tgt[rows + i];
  if (!backward) return;
  float* row = logits + static_cast<int64_t>(i) * Vl;
  const float scale = dscale / sum_tgt[i];
  const int t = targets[i] - v0;
  for (int j = threadIdx.x; j < valid; j += blockDim.x) row[j] = row[j] * scale - (j == t ? dscale : 0.0f);
}

void classifier(float* losses, float* dx, float* dwte, float* scratch, const float* x, const float* wte,
                const int32_t* targets, int64_t N, int C, int Vl, int v0, int V, int64_t chunk, float dscale,
                const ReduceHook<float>* hook) {
  const bool backward = dx != nullptr;
  if (hook) {
    const int valid = std::max(0, std::min(Vl, V - v0));
    cuda::DeviceScratch stats(static_cast<size_t>(3 * chunk) * sizeof(float));
    float* mx = stats.as<float>();
    float* sum_tgt = mx + chunk;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int rows = static_cast<int>(std::min(chunk, N - r0));
      cuda::gemm(false, true, rows, Vl, C, x + r0 * C, C, wte, C, 0.0f, scratch, Vl, nullptr);
      vp_row_max_kernel<<<rows, kBlock>>>(mx, scratch, Vl, valid);
      AQ_CUDA_LAUNCH_CHECK();
      hook->all_reduce(hook->ctx, mx, rows, 1);
      vp_exp_sum_kernel<<<rows, kBlock>>>(sum_tgt, scratch, mx, targets + r0, rows, Vl, v0, valid);
      AQ_CUDA_LAUNCH_CHECK();
      hook->all_reduce(hook->ctx, sum_tgt, 2 * rows, 0);
      vp_finish_kernel<<<rows, kBlock>>>(losses + r0, scratch, sum_tgt, targets + r0, rows, Vl, v0, valid, dscale,
                                         backward ? 1 : 0);
      AQ_CUDA_LAUNCH_CHECK();
      if (!backward) continue;
      cuda::gemm(false, false, rows, C, Vl, scratch, Vl, wte, C, 0.0f, dx + r0 * C, C, nullptr);  // partial
      cuda::gemm(true, false, Vl, C, rows, scratch, Vl, x + r0 * C, C, 1.0f, dwte, C, nullptr);
    }
    return;
  }
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    cuda::gemm(false, true, rows, V, C, x + r0 * C, C, wte, C, 0.0f, scratch, V, nullptr);  // logits = x·wteᵀ
    softmax_xent(losses + r0, scratch, targets + r0, rows, V, dscale, backward ? 1 : 0);
    if (!backward) continue;
    cuda::gemm(false, false, rows, C, V, scratch, V, wte, C, 0.0f, dx + r0 * C, C, nullptr);  // dx = dlogits·wte
    cuda::gemm(true, false, V, C, rows, scratch, V, x + r0 * C, C, 1.0f, dwte, C, nullptr);   // dwte += dlogitsᵀ·x
  }
}

}  // namespace

void register_softmax_xent_cuda(Registry& r) {
  r.add<SoftmaxXent<float>::Forward>("softmax_xent", Device::CUDA, DType::F32, &softmax_xent);
  r.add<Classifier<float>::Forward>("classifier", Device::CUDA, DType::F32, &classifier);
}

}  // namespace aq::ops
