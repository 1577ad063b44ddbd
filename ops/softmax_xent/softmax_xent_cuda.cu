// softmax_xent_cuda.cu — fused softmax + cross-entropy and the chunked tied classifier on CUDA.
//
// One block per row: maximum, sum of exponentials (CUB block reductions), loss, and — for training — the row
// overwritten in place by (softmax − onehot)·dscale, all in one kernel. The classifier runs cuBLASLt GEMMs
// around it, chunk by chunk, as the CPU kernel does. The vocabulary-parallel form (hook != null) needs the
// row statistics all-reduced on the device, which arrives with the NCCL backend; until then it is refused
// with a clear error instead of staging through the host.
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

void classifier(float* losses, float* dx, float* dwte, float* scratch, const float* x, const float* wte,
                const int32_t* targets, int64_t N, int C, int Vl, int v0, int V, int64_t chunk, float dscale,
                const ReduceHook<float>* hook) {
  AQ_CHECK(hook == nullptr && v0 == 0 && Vl == V, "the vocabulary-parallel classifier (--tp > 1) on CUDA needs ",
           "the NCCL backend, which this build does not have yet; use --device cpu for tensor parallelism");
  const bool backward = dx != nullptr;
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
