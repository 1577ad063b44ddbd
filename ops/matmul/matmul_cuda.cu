// matmul_cuda.cu — the dense layer on CUDA through cuBLASLt, for float and bf16 activations.
//
// Forward: bias fused into the GEMM's epilogue; with GELU, cuBLASLt's GELU_AUX_BIAS epilogue writes both the
// pre-activation and the GELU output in one pass. Backward: weight gradients accumulate in fp32 (for bf16 the
// GEMM reads bf16 and writes fp32 with beta = 1); the bias gradient is a deterministic column sum
// (ops/cuda/column_sums.cuh) rather than cuBLASLt's BGRAD epilogues, whose summation order is
// unspecified; after a GELU the input gradient gets GELU' from the DGELU epilogue. Where cuBLASLt offers no
// algorithm for an epilogue (leading dimensions not a multiple of 8, an older library) the unfused kernels
// run instead. Both compute the tanh-approximation GELU in fp32, but cuBLASLt's own implementation may differ
// from ops/gelu in the last bits, so fused and unfused results agree to ~1e-6 relative, not bit for bit.
#include "ops/cuda/column_sums.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/gelu/gelu.h"
#include "ops/matmul/matmul.h"

namespace aq::ops {
namespace {

// The bias-gradient term of one element of dout (N,OC).
template <typename T>
struct BiasGradTerm {
  const T* dout;
  int OC;
  __device__ void operator()(int64_t row, int c, float (&acc)[1]) const { acc[0] += cuda::to_f(dout[row * OC + c]); }
};

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int IC, int OC) {
  cuda::gemm(false, false, N, OC, IC, inp, IC, weight, OC, 0.0f, out, OC, bias);
}

template <typename T>
void matmul_backward(T* dinp, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight, int64_t N,
                     int IC, int OC) {
  cuda::gemm<T, float>(true, false, IC, OC, N, inp, IC, dout, OC, 1.0f, dweight, OC, nullptr);  // dW += inpᵀ·dout
  if (dbias) cuda::column_sums<1>({{dbias}}, N, OC, BiasGradTerm<T>{dout, OC});  // dbias += column sums of dout
  if (dinp) cuda::gemm<T, T>(false, true, N, IC, OC, dout, OC, weight, OC, 0.0f, dinp, IC, nullptr);  // may alias inp
}

template <typename T>
void matmul_gelu_forward(T* out, T* pre, const T* inp, const T* weight, const T* bias, int64_t N, int IC, int OC) {
  cuda::GemmArgs g = cuda::gemm_args(false, false, N, OC, IC, inp, IC, weight, OC, out, OC);
  g.epilogue = cuda::Epilogue::GeluAuxBias;
  g.bias = bias;
  g.aux = pre;
  g.ld_aux = OC;
  if (cuda::gemm(g, /*required=*/false)) return;
  matmul_forward(pre, inp, weight, bias, N, IC, OC);
  gelu_forward_cuda(out, pre, N * OC);
}

template <typename T>
void matmul_backward_dgelu(T* dpre, float* dweight, float* dbias, const T* dout, const T* inp, const T* weight,
                           const T* pre, int64_t N, int IC, int OC) {
  matmul_backward<T>(nullptr, dweight, dbias, dout, inp, weight, N, IC, OC);
  // dpre (N,IC) = gelu'(pre) ⊙ (dout · weightᵀ); written after inp was last read, so it may alias inp.
  cuda::GemmArgs g = cuda::gemm_args(false, true, N, IC, OC, dout, OC, weight, OC, dpre, IC);
  g.epilogue = cuda::Epilogue::Dgelu;
  g.aux = const_cast<T*>(pre);  // read-only for this epilogue
  g.ld_aux = IC;
  if (cuda::gemm(g, /*required=*/false)) return;
  cuda::gemm<T, T>(false, true, N, IC, OC, dout, OC, weight, OC, 0.0f, dpre, IC, nullptr);
  gelu_backward_cuda(dpre, pre, dpre, N * IC);
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Matmul<T>::Forward>("matmul_forward", Device::CUDA, dtype_of<T>(), &matmul_forward<T>);
  r.add<typename Matmul<T>::Backward>("matmul_backward", Device::CUDA, dtype_of<T>(), &matmul_backward<T>);
  r.add<typename Matmul<T>::GeluForward>("matmul_gelu_forward", Device::CUDA, dtype_of<T>(), &matmul_gelu_forward<T>);
  r.add<typename Matmul<T>::DgeluBackward>("matmul_backward_dgelu", Device::CUDA, dtype_of<T>(),
                                           &matmul_backward_dgelu<T>);
}

}  // namespace

void register_matmul_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
