// embedding_cuda.cu — token + position embedding on CUDA, forward and a deterministic backward; float and bf16
// activations, fp32 gradients.
//
// Backward without float atomics: the (token, position) pairs are sorted by token with CUB's stable radix
// sort, and one thread per (run of equal tokens, channel) sums that token's gradients in position order.
// dwpe: one thread per (position, channel) sums over the batch in order.
#include <cub/device/device_radix_sort.cuh>

#include "ops/cuda/common.cuh"
#include "ops/embedding/embedding.h"

namespace aq::ops {
namespace {

// out (B·T,C), inp (B·T), wte (Vl,C), wpe (maxT,C) or null
template <typename T>
__global__ void embedding_forward_kernel(T* out, const int32_t* inp, const T* wte, const T* wpe, int64_t BT, int T_,
                                         int C, int v0, int Vl) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < BT * C; i += stride) {
    const int64_t bt = i / C;
    const int c = static_cast<int>(i % C);
    const int tok = inp[bt] - v0;
    float v = (tok >= 0 && tok < Vl) ? cuda::to_f(wte[static_cast<int64_t>(tok) * C + c]) : 0.0f;
    if (wpe) v += cuda::to_f(wpe[(bt % T_) * C + c]);
    out[i] = cuda::from_f<T>(v);
  }
}

template <typename T>
void embedding_forward(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int T_, int C, int v0, int Vl) {
  const int64_t BT = static_cast<int64_t>(B) * T_;
  embedding_forward_kernel<<<cuda::blocks_for(BT * C), cuda::kThreads>>>(out, inp, wte, wpe, BT, T_, C, v0, Vl);
  AQ_CUDA_LAUNCH_CHECK();
}

__global__ void iota_kernel(int32_t* x, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    x[i] = static_cast<int32_t>(i);
}

// Thread (i, c): if sorted position i starts a run of equal tokens, sum the run's gradients for channel c.
template <typename T>
__global__ void wte_backward_kernel(float* dwte, const int32_t* tokens, const int32_t* positions, const T* dout,
                                    int64_t BT, int C, int v0, int Vl) {
  const int64_t i = blockIdx.x;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C || (i > 0 && tokens[i] == tokens[i - 1])) return;
  const int tok = tokens[i] - v0;
  if (tok < 0 || tok >= Vl) return;
  float acc = 0;
  for (int64_t j = i; j < BT && tokens[j] == tokens[i]; ++j) acc += cuda::to_f(dout[static_cast<int64_t>(positions[j]) * C + c]);
  dwte[static_cast<int64_t>(tok) * C + c] += acc;
}

template <typename T>
__global__ void wpe_backward_kernel(float* dwpe, const T* dout, int B, int T_, int C) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < static_cast<int64_t>(T_) * C;
       i += stride) {
    const int64_t t = i / C, c = i % C;
    float acc = 0;
    for (int b = 0; b < B; ++b) acc += cuda::to_f(dout[(b * static_cast<int64_t>(T_) + t) * C + c]);
    dwpe[i] += acc;
  }
}

template <typename T>
void embedding_backward(float* dwte, float* dwpe, const T* dout, const int32_t* inp, int B, int T_, int C, int v0,
                        int Vl) {
  const int64_t BT = static_cast<int64_t>(B) * T_;
  // keys_out, positions in/out, then CUB's temporary storage.
  size_t sort_bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                  static_cast<int32_t*>(nullptr), static_cast<int>(BT));
  cuda::DeviceScratch scratch(3 * BT * sizeof(int32_t) + sort_bytes);
  int32_t* keys = scratch.as<int32_t>();
  int32_t* pos_in = keys + BT;
  int32_t* pos_out = pos_in + BT;
  void* tmp = pos_out + BT;
  iota_kernel<<<cuda::blocks_for(BT), cuda::kThreads>>>(pos_in, BT);
  AQ_CUDA_LAUNCH_CHECK();
  AQ_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(tmp, sort_bytes, inp, keys, pos_in, pos_out, static_cast<int>(BT)));
  wte_backward_kernel<<<dim3(static_cast<unsigned>(BT), static_cast<unsigned>((C + 127) / 128)), 128>>>(
      dwte, keys, pos_out, dout, BT, C, v0, Vl);
  AQ_CUDA_LAUNCH_CHECK();
  if (dwpe) {
    wpe_backward_kernel<<<cuda::blocks_for(static_cast<int64_t>(T_) * C), cuda::kThreads>>>(dwpe, dout, B, T_, C);
    AQ_CUDA_LAUNCH_CHECK();
  }
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Embedding<T>::Forward>("embedding_forward", Device::CUDA, dtype_of<T>(), &embedding_forward<T>);
  r.add<typename Embedding<T>::Backward>("embedding_backward", Device::CUDA, dtype_of<T>(), &embedding_backward<T>);
}

}  // namespace

void register_embedding_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
