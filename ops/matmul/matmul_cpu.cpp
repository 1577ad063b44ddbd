// matmul_cpu.cpp — CPU dense layer on OpenBLAS GEMM.
#include <algorithm>

#include "ops/cpu/blas.h"
#include "ops/gelu/gelu.h"
#include "ops/matmul/matmul.h"
#include "runtime/op_profile.h"

namespace aq::ops {

template <typename T>
void column_sums_accumulate(T* out, const T* x, int64_t N, int C) {
  constexpr int kBlock = 64;
  const int nblocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < nblocks; ++blk) {
    const int c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock);
    T acc[kBlock] = {};
    for (int64_t i = 0; i < N; ++i) {
      const T* row = x + i * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) acc[c - c0] += row[c];
    }
    for (int c = c0; c < c1; ++c) out[c] += acc[c - c0];
  }
}
template void column_sums_accumulate<float>(float*, const float*, int64_t, int);
template void column_sums_accumulate<double>(double*, const double*, int64_t, int);

namespace {

template <typename T>
void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, int64_t N, int IC, int OC) {
  T beta = 0;
  if (bias) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; ++i) std::copy(bias, bias + OC, out + i * OC);
    beta = 1;
  }
  cpu::gemm(false, false, N, OC, IC, T(1), inp, IC, weight, OC, beta, out, OC);
}

template <typename T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, int64_t N, int IC,
                     int OC) {
  cpu::gemm(true, false, IC, OC, N, T(1), inp, IC, dout, OC, T(1), dweight, OC);
  if (dbias) profiled("bwd bias grads", [&] { column_sums_accumulate(dbias, dout, N, OC); });
  if (dinp) cpu::gemm(false, true, N, IC, OC, T(1), dout, OC, weight, OC, T(0), dinp, IC);  // may alias inp
}

// The GELU fusions are plain compositions on the CPU (the GELU is memory-bound next to the GEMM either way).
template <typename T>
void matmul_gelu_forward(T* out, T* pre, const T* inp, const T* weight, const T* bias, int64_t N, int IC, int OC) {
  matmul_forward(pre, inp, weight, bias, N, IC, OC);
  profiled("fwd gelu", [&] { gelu_forward_cpu(out, pre, N * OC); });
}

template <typename T>
void matmul_backward_dgelu(T* dpre, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                           const T* pre, int64_t N, int IC, int OC) {
  matmul_backward(dpre, dweight, dbias, dout, inp, weight, N, IC, OC);
  profiled("bwd gelu", [&] { gelu_backward_cpu(dpre, pre, dpre, N * IC); });
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Matmul<T>::Forward>("matmul_forward", Device::CPU, dtype_of<T>(), &matmul_forward<T>);
  r.add<typename Matmul<T>::Backward>("matmul_backward", Device::CPU, dtype_of<T>(), &matmul_backward<T>);
  r.add<typename Matmul<T>::GeluForward>("matmul_gelu_forward", Device::CPU, dtype_of<T>(), &matmul_gelu_forward<T>);
  r.add<typename Matmul<T>::DgeluBackward>("matmul_backward_dgelu", Device::CPU, dtype_of<T>(),
                                           &matmul_backward_dgelu<T>);
}

}  // namespace

void register_matmul_cpu(Registry& r) {
  add_kernels<float>(r);
  add_kernels<double>(r);
}

}  // namespace aq::ops
