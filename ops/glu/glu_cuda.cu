// glu_cuda.cu — the gated linear unit's kernels on CUDA (float and bf16); see glu.h.
//
// Elementwise and memory-bound: one grid-stride loop over the N·F elements of each, arithmetic in fp32 (one
// rounding per stored value, as on the CPU for float).
#include "ops/cuda/common.cuh"
#include "ops/glu/glu.h"

namespace aq::ops {
namespace {

#define AQ_GLU_LOOP(n)                                                                                   \
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < (n);                 \
       k += static_cast<int64_t>(blockDim.x) * gridDim.x)

// gate (N,F) = inp (N,2F) [:, :F]
template <typename T>
__global__ void glu_split_kernel(T* gate, const T* inp, int64_t N, int F) {
  AQ_GLU_LOOP(N * F) gate[k] = inp[(k / F) * 2 * F + k % F];
}

// out (N,F) = act (N,F) ⊙ inp (N,2F) [:, F:]
template <typename T>
__global__ void glu_forward_kernel(T* out, const T* act, const T* inp, int64_t N, int F) {
  AQ_GLU_LOOP(N * F) out[k] = cuda::from_f<T>(cuda::to_f(act[k]) * cuda::to_f(inp[(k / F) * 2 * F + F + k % F]));
}

// dact (N,F) = dout ⊙ up; dinp (N,2F) = [0 | dout ⊙ act]; dinp may alias inp: each thread reads its up element
// before writing that element's gradient, and no other thread touches it
template <typename T>
__global__ void glu_backward_kernel(T* dinp, T* dact, const T* dout, const T* act, const T* inp, int64_t N, int F) {
  AQ_GLU_LOOP(N * F) {
    const int64_t g = (k / F) * 2 * F + k % F;
    const float d = cuda::to_f(dout[k]), up = cuda::to_f(inp[g + F]);
    dact[k] = cuda::from_f<T>(d * up);
    dinp[g + F] = cuda::from_f<T>(d * cuda::to_f(act[k]));
    dinp[g] = cuda::from_f<T>(0.0f);
  }
}

// dinp (N,2F) [:, :F] = dgate (N,F)
template <typename T>
__global__ void glu_merge_kernel(T* dinp, const T* dgate, int64_t N, int F) {
  AQ_GLU_LOOP(N * F) dinp[(k / F) * 2 * F + k % F] = dgate[k];
}

#undef AQ_GLU_LOOP

template <typename T>
void glu_split_cuda(T* gate, const T* inp, int64_t N, int F) {
  if (N * F == 0) return;
  glu_split_kernel<<<cuda::blocks_for(N * F), cuda::kThreads>>>(gate, inp, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void glu_forward_cuda(T* out, const T* act, const T* inp, int64_t N, int F) {
  if (N * F == 0) return;
  glu_forward_kernel<<<cuda::blocks_for(N * F), cuda::kThreads>>>(out, act, inp, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void glu_backward_cuda(T* dinp, T* dact, const T* dout, const T* act, const T* inp, int64_t N, int F) {
  if (N * F == 0) return;
  glu_backward_kernel<<<cuda::blocks_for(N * F), cuda::kThreads>>>(dinp, dact, dout, act, inp, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void glu_merge_cuda(T* dinp, const T* dgate, int64_t N, int F) {
  if (N * F == 0) return;
  glu_merge_kernel<<<cuda::blocks_for(N * F), cuda::kThreads>>>(dinp, dgate, N, F);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Glu<T>::Split>("glu_split", Device::CUDA, dtype_of<T>(), &glu_split_cuda<T>);
  r.add<typename Glu<T>::Forward>("glu_forward", Device::CUDA, dtype_of<T>(), &glu_forward_cuda<T>);
  r.add<typename Glu<T>::Backward>("glu_backward", Device::CUDA, dtype_of<T>(), &glu_backward_cuda<T>);
  r.add<typename Glu<T>::Merge>("glu_merge", Device::CUDA, dtype_of<T>(), &glu_merge_cuda<T>);
}

}  // namespace

void register_glu_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
