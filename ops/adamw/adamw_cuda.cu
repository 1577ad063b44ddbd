// adamw_cuda.cu — AdamW update and the deterministic sum of squares on CUDA, per tensor and multi-tensor.
//
// The multi-tensor forms take the whole flat parameter buffer as a table of chunks (adamw.h): one launch
// updates every tensor (one block per chunk, the chunk's weight-decay flag read from the table), and for a
// bf16 model the same pass writes the rounded working copy, so the fp32 master weights are read once.
//
// sum_squares uses a fixed grid of fixed-size chunks, a CUB block reduction per chunk in double, and a second
// one-block pass over the partials in chunk order: the result is the same bit for bit on every run and GPU.
#include <algorithm>
#include <cub/block/block_reduce.cuh>
#include <vector>

#include "ops/adamw/adamw.h"
#include "ops/cuda/common.cuh"

namespace aq::ops {
namespace {

// Scalars of one AdamW step, computed once on the host in double.
struct AdamWScalars {
  float decay, b1, b2, step_size, inv_bc2_sqrt, eps, gs;
};
AdamWScalars scalars(const AdamWParams& hp) {
  const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(hp.step));
  const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(hp.step));
  return {static_cast<float>(1.0 - hp.lr * hp.weight_decay), static_cast<float>(hp.beta1),
          static_cast<float>(hp.beta2),                    static_cast<float>(hp.lr / bc1),
          static_cast<float>(1.0 / std::sqrt(bc2)),        static_cast<float>(hp.eps),
          static_cast<float>(hp.grad_scale)};
}

constexpr int kMultiThreads = 512;

// Block c updates chunk c. master, grad, m, v (fp32) and copy (T, or null) are flat buffers the chunks index.
template <typename T>
__global__ void multi_adamw_kernel(float* master, T* copy, const float* grad, float* m, float* v,
                                   const TensorChunk* chunks, AdamWScalars s) {
  const TensorChunk k = chunks[blockIdx.x];
  const float decay = k.decay ? s.decay : 1.0f;  // chunks of tensors without weight decay keep their scale
  for (int32_t j = threadIdx.x; j < k.n; j += blockDim.x) {
    const int64_t i = k.offset + j;
    const float g = grad[i] * s.gs;
    const float mi = s.b1 * m[i] + (1.0f - s.b1) * g;
    const float vi = s.b2 * v[i] + (1.0f - s.b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = master[i] * decay - s.step_size * mi / (sqrtf(vi) * s.inv_bc2_sqrt + s.eps);
    master[i] = p;
    if (copy) copy[i] = cuda::from_f<T>(p);
  }
}

template <typename T>
void multi_adamw(float* master, T* copy, const float* grad, float* m, float* v, const TensorChunk* chunks,
                 int64_t nchunks, const AdamWParams& hp) {
  AQ_ASSERT((copy != nullptr) == (!std::is_same_v<T, float>), "the working copy is given exactly for a bf16 model");
  if (nchunks == 0) return;
  AQ_CHECK(nchunks <= 0x7fffffff, "too many parameter chunks (", nchunks, ") for one launch");
  multi_adamw_kernel<T><<<static_cast<unsigned>(nchunks), kMultiThreads>>>(
      master, copy, grad, m, v, chunks, scalars(hp));
  AQ_CUDA_LAUNCH_CHECK();
}

// partial[c] = Σ x² over chunk c (double, CUB block reduction: a fixed order)
__global__ void multi_partial_squares_kernel(double* partial, const float* x, const TensorChunk* chunks) {
  using Reduce = cub::BlockReduce<double, kMultiThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const TensorChunk k = chunks[blockIdx.x];
  double acc = 0;
  for (int32_t j = threadIdx.x; j < k.n; j += blockDim.x) {
    const double g = x[k.offset + j];
    acc += g * g;
  }
  const double total = Reduce(tmp).Sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// sums[0], sums[1] = the partials of norm class 0 and 1, added in chunk order
__global__ void multi_sum_partials_kernel(double* sums, const double* partial, const TensorChunk* chunks,
                                          int64_t nchunks) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double s[2] = {0.0, 0.0};
  for (int64_t c = 0; c < nchunks; ++c) s[chunks[c].norm_class ? 1 : 0] += partial[c];
  sums[0] = s[0];
  sums[1] = s[1];
}

void multi_sum_squares(double* sums, const float* x, const TensorChunk* chunks, int64_t nchunks) {
  sums[0] = sums[1] = 0.0;
  if (nchunks == 0) return;
  cuda::DeviceScratch scratch(static_cast<size_t>(nchunks + 2) * sizeof(double));
  double* partial = scratch.as<double>();
  multi_partial_squares_kernel<<<static_cast<unsigned>(nchunks), kMultiThreads>>>(partial, x, chunks);
  AQ_CUDA_LAUNCH_CHECK();
  multi_sum_partials_kernel<<<1, 32>>>(partial + nchunks, partial, chunks, nchunks);
  AQ_CUDA_LAUNCH_CHECK();
  AQ_CUDA_CHECK(cudaMemcpy(sums, partial + nchunks, 2 * sizeof(double), cudaMemcpyDeviceToHost));
}

// dst (n) = src (n) rounded to bf16
__global__ void cast_kernel(bf16* dst, const float* src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    dst[i] = cuda::from_f<bf16>(src[i]);
}

void cast_to_bf16(bf16* dst, const float* src, int64_t n) {
  if (n == 0) return;
  cast_kernel<<<cuda::blocks_for(n), cuda::kThreads>>>(dst, src, n);
  AQ_CUDA_LAUNCH_CHECK();
}

// The per-tensor forms are the multi-tensor kernels over a one-tensor chunk table (they serve tests and the
// registry's CPU/CUDA symmetry; the trainer calls the multi-tensor forms).
struct OneTensorChunks {
  std::vector<TensorChunk> host;
  cuda::DeviceScratch dev;
  explicit OneTensorChunks(int64_t n) : host(make(n)), dev(std::max<size_t>(1, host.size()) * sizeof(TensorChunk)) {
    AQ_CUDA_CHECK(cudaMemcpy(dev.as<TensorChunk>(), host.data(), host.size() * sizeof(TensorChunk),
                             cudaMemcpyHostToDevice));
  }
  static std::vector<TensorChunk> make(int64_t n) {
    std::vector<TensorChunk> c;
    append_chunks(c, 0, n, /*decay=*/true, /*norm_class=*/0);
    return c;
  }
  int64_t size() const { return static_cast<int64_t>(host.size()); }
};

void adamw_update(float* param, const float* grad, float* m, float* v, int64_t n, const AdamWParams& hp) {
  const OneTensorChunks chunks(n);
  multi_adamw<float>(param, nullptr, grad, m, v, chunks.dev.as<TensorChunk>(), chunks.size(), hp);
}

double sum_squares(const float* x, int64_t n) {
  const OneTensorChunks chunks(n);
  double sums[2];
  multi_sum_squares(sums, x, chunks.dev.as<TensorChunk>(), chunks.size());
  return sums[0];
}

}  // namespace

void register_adamw_cuda(Registry& r) {
  r.add<AdamW<float>::Update>("adamw_update", Device::CUDA, DType::F32, &adamw_update);
  r.add<AdamW<float>::SumSquares>("sum_squares", Device::CUDA, DType::F32, &sum_squares);
  r.add<MultiAdamW<float>::Update>("multi_adamw", Device::CUDA, DType::F32, &multi_adamw<float>);
  r.add<MultiAdamW<bf16>::Update>("multi_adamw", Device::CUDA, DType::BF16, &multi_adamw<bf16>);
  r.add<MultiAdamW<float>::SumSquares>("multi_sum_squares", Device::CUDA, DType::F32, &multi_sum_squares);
  r.add<MultiAdamW<bf16>::Cast>("cast_to_working", Device::CUDA, DType::BF16, &cast_to_bf16);
}

}  // namespace aq::ops
