// softmax_xent_cuda.cu — fused softmax + cross-entropy and the chunked tied classifier on CUDA.
//
// For a bf16 model the logits GEMM reads bf16 and writes fp32 logits, the softmax runs in fp32, and only
// dlogits is rounded to bf16 (into a second scratch buffer) for the two backward GEMMs; dwte accumulates in fp32.
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


// losses (N); logits (N,ld) fp32 of which the first V columns are real; dlogits (N,ld) written when backward
// (zero in the padding columns; may be logits itself: in place)
template <typename TD>
__global__ void softmax_xent_kernel(float* losses, float* logits, TD* dlogits, const int32_t* targets, int V, int ld,
                                    float dscale, int backward) {
  __shared__ typename BlockReduce::TempStorage tmp;
  __shared__ float slot;
  const int64_t i = blockIdx.x;
  float* row = logits + i * ld;
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
  TD* drow = dlogits + i * ld;
  for (int j = threadIdx.x; j < ld; j += blockDim.x)
    drow[j] = cuda::from_f<TD>(j < V ? expf(row[j] - m) * scale - (j == tgt ? dscale : 0.0f) : 0.0f);
}

template <typename TD>
void softmax_xent_to(float* losses, float* logits, TD* dlogits, const int32_t* targets, int64_t N, int V, int ld,
                     float dscale, int backward) {
  if (N == 0) return;
  softmax_xent_kernel<<<static_cast<unsigned>(N), kBlock>>>(losses, logits, dlogits, targets, V, ld, dscale,
                                                            backward);
  AQ_CUDA_LAUNCH_CHECK();
}

void softmax_xent(float* losses, float* logits, const int32_t* targets, int64_t N, int V, float dscale, int backward) {
  softmax_xent_to(losses, logits, logits, targets, N, V, V, dscale, backward);
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

// losses (rows); logits (rows,Vl) hold exp(logit − max); dlogits (rows,Vl) written when backward (may alias)
template <typename TD>
__global__ void vp_finish_kernel(float* losses, const float* logits, TD* dlogits, const float* sum_tgt,
                                 const int32_t* targets, int rows, int Vl, int v0, int valid, float dscale,
                                 int backward) {
  const int i = blockIdx.x;
  if (threadIdx.x == 0) losses[i] = logf(sum_tgt[i]) - sum_tgt[rows + i];
  if (!backward) return;
  const float* row = logits + static_cast<int64_t>(i) * Vl;
  TD* drow = dlogits + static_cast<int64_t>(i) * Vl;
  const float scale = dscale / sum_tgt[i];
  const int t = targets[i] - v0;
  for (int j = threadIdx.x; j < Vl; j += blockDim.x)  // padding columns (j >= valid) get no gradient
    drow[j] = cuda::from_f<TD>(j < valid ? row[j] * scale - (j == t ? dscale : 0.0f) : 0.0f);
}

// T: activations and weights (float or bf16). Logits are fp32 in `scratch`; for bf16 the rounded dlogits go to
// the bf16 buffer after them (classifier_scratch_bytes), for float they overwrite the logits in place.
template <typename T>
void classifier(float* losses, T* dx, float* dwte, void* scratch_bytes, const T* x, const T* wte,
                const int32_t* targets, int64_t N, int C, int Vl, int v0, int V, int64_t chunk, float dscale,
                const ReduceHook<float>* hook) {
  const bool backward = dx != nullptr;
  float* logits = static_cast<float*>(scratch_bytes);  // (chunk, Vl)
  T* dlogits = std::is_same_v<T, float> ? reinterpret_cast<T*>(logits) : reinterpret_cast<T*>(logits + chunk * Vl);
  if (hook) {
    const int valid = std::max(0, std::min(Vl, V - v0));
    cuda::DeviceScratch stats(static_cast<size_t>(3 * chunk) * sizeof(float));
    float* mx = stats.as<float>();
    float* sum_tgt = mx + chunk;
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int rows = static_cast<int>(std::min(chunk, N - r0));
      cuda::gemm<T, float>(false, true, rows, Vl, C, x + r0 * C, C, wte, C, 0.0f, logits, Vl, nullptr);
      vp_row_max_kernel<<<rows, kBlock>>>(mx, logits, Vl, valid);
      AQ_CUDA_LAUNCH_CHECK();
      hook->all_reduce(hook->ctx, mx, rows, 1);
      vp_exp_sum_kernel<<<rows, kBlock>>>(sum_tgt, logits, mx, targets + r0, rows, Vl, v0, valid);
      AQ_CUDA_LAUNCH_CHECK();
      hook->all_reduce(hook->ctx, sum_tgt, 2 * rows, 0);
      vp_finish_kernel<<<rows, kBlock>>>(losses + r0, logits, dlogits, sum_tgt, targets + r0, rows, Vl, v0, valid,
                                         dscale, backward ? 1 : 0);
      AQ_CUDA_LAUNCH_CHECK();
      if (!backward) continue;
      cuda::gemm<T, T>(false, false, rows, C, Vl, dlogits, Vl, wte, C, 0.0f, dx + r0 * C, C, nullptr);  // partial
      cuda::gemm<T, float>(true, false, Vl, C, rows, dlogits, Vl, x + r0 * C, C, 1.0f, dwte, C, nullptr);
    }
    return;
  }
  // One rank owns the whole vocabulary: wte has Vl >= V rows (the model pads them to a multiple of 64 on the
  // GPU so every row of logits starts 16-byte aligned); padding columns get no probability and no gradient.
  AQ_ASSERT(v0 == 0 && Vl >= V, "single-rank classifier with v0=", v0, " Vl=", Vl, " V=", V);
  for (int64_t r0 = 0; r0 < N; r0 += chunk) {
    const int64_t rows = std::min(chunk, N - r0);
    cuda::gemm<T, float>(false, true, rows, Vl, C, x + r0 * C, C, wte, C, 0.0f, logits, Vl, nullptr);  // x·wteᵀ
    softmax_xent_to(losses + r0, logits, dlogits, targets + r0, rows, V, Vl, dscale, backward ? 1 : 0);
    if (!backward) continue;
    cuda::gemm<T, T>(false, false, rows, C, Vl, dlogits, Vl, wte, C, 0.0f, dx + r0 * C, C, nullptr);  // dlogits·wte
    cuda::gemm<T, float>(true, false, Vl, C, rows, dlogits, Vl, x + r0 * C, C, 1.0f, dwte, C, nullptr);  // dwte +=
  }
}

}  // namespace

void register_softmax_xent_cuda(Registry& r) {
  r.add<SoftmaxXent<float>::Forward>("softmax_xent", Device::CUDA, DType::F32, &softmax_xent);
  r.add<Classifier<float>::Forward>("classifier", Device::CUDA, DType::F32, &classifier<float>);
  r.add<Classifier<bf16>::Forward>("classifier", Device::CUDA, DType::BF16, &classifier<bf16>);
}

}  // namespace aq::ops
