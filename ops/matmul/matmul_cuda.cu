// matmul_cuda.cu — the dense layer on CUDA through cuBLASLt, bias fused into the forward GEMM's epilogue.
//
// The GEMMs are cuda::gemm (ops/cuda/gemm.h). The bias gradient is a deterministic column
// sum (fixed row chunks, then the partials in order), not cuBLASLt's BGRADB epilogue, whose order is unspecified.
#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "ops/matmul/matmul.h"

namespace aq::ops {
namespace {

constexpr int64_t kRowsPerPartial = 256;

__global__ void column_partials_kernel(float* partial, const float* x, int64_t N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t p = blockIdx.y;
  if (c >= C) return;
  float acc = 0;
  for (int64_t row = p * kRowsPerPartial; row < min(N, (p + 1) * kRowsPerPartial); ++row) acc += x[row * C + c];
  partial[p * C + c] = acc;
}

__global__ void column_sum_kernel(float* out, const float* partial, int64_t parts, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float acc = 0;
  for (int64_t p = 0; p < parts; ++p) acc += partial[p * C + c];
  out[c] += acc;
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int64_t N, int IC, int OC) {
  cuda::gemm(false, false, N, OC, IC, inp, IC, weight, OC, 0.0f, out, OC, bias);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int IC, int OC) {
  cuda::gemm(true, false, IC, OC, N, inp, IC, dout, OC, 1.0f, dweight, OC, nullptr);  // dW += inpᵀ·dout
  if (dbias) {
    const int64_t parts = (N + kRowsPerPartial - 1) / kRowsPerPartial;
    cuda::DeviceScratch scratch(static_cast<size_t>(parts * OC) * sizeof(float));
    const unsigned cb = static_cast<unsigned>((OC + 127) / 128);
    column_partials_kernel<<<dim3(cb, static_cast<unsigned>(parts)), 128>>>(scratch.as<float>(), dout, N, OC);
    AQ_CUDA_LAUNCH_CHECK();
    column_sum_kernel<<<cb, 128>>>(dbias, scratch.as<float>(), parts, OC);
    AQ_CUDA_LAUNCH_CHECK();
  }
  if (dinp) cuda::gemm(false, true, N, IC, OC, dout, OC, weight, OC, 0.0f, dinp, IC, nullptr);  // may alias inp
}

}  // namespace

void register_matmul_cuda(Registry& r) {
  r.add<Matmul<float>::Forward>("matmul_forward", Device::CUDA, DType::F32, &matmul_forward);
  r.add<Matmul<float>::Backward>("matmul_backward", Device::CUDA, DType::F32, &matmul_backward);
}

}  // namespace aq::ops
