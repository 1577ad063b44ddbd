// matmul_cuda.cu — the dense layer on CUDA through cuBLASLt, bias fused into the forward GEMM's epilogue.
//
// cuBLASLt is column-major; a row-major C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ,
// which only swaps the operands. FP32 math without TF32 (CUBLAS_COMPUTE_32F), so results match the CPU
// reference to ~1e-6; the bf16 path comes with mixed precision. The bias gradient is a deterministic column
// sum (fixed row chunks, then the partials in order), not cuBLASLt's BGRADB epilogue, whose order is unspecified.
#include <cublasLt.h>

#include "ops/cuda/common.cuh"
#include "ops/matmul/matmul.h"

namespace aq::ops {
namespace {

#define AQ_CUBLAS_CHECK(call)                                                                          \
  do {                                                                                                 \
    cublasStatus_t st_ = (call);                                                                       \
    AQ_CHECK(st_ == CUBLAS_STATUS_SUCCESS, "cuBLASLt call ", #call, " failed with status ", int(st_), \
             " at ", __FILE__, ":", __LINE__);                                                         \
  } while (0)

constexpr size_t kWorkspaceBytes = 32u << 20;

struct Lt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  Lt() {
    AQ_CUBLAS_CHECK(cublasLtCreate(&handle));
    workspace = cuda::CachingAllocator::instance().allocate(kWorkspaceBytes);
  }
};
Lt& lt() {
  static Lt instance;  // one handle per process (one device per rank)
  return instance;
}

// Row-major C (M,N) = op(A) · op(B) (+ bias over columns) with beta·C; A is (M,K) or (K,M) when trans_a, etc.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc, const float* bias) {
  cublasLtMatmulDesc_t desc;
  AQ_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major problem: Cᵀ (N,M) = op'(B-buffer) · op'(A-buffer).
  const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  AQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  AQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    AQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    AQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  cublasLtMatrixLayout_t la, lb, lc;
  // Stored B-buffer, seen column-major: (N,K) when not transposed, (K,N) when transposed.
  AQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, trans_b ? K : N, trans_b ? N : K, ldb));
  AQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, trans_a ? M : K, trans_a ? K : M, lda));
  AQ_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, N, M, ldc));
  cublasLtMatmulPreference_t pref;
  AQ_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  AQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspaceBytes,
                                                       sizeof(kWorkspaceBytes)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  AQ_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt().handle, desc, la, lb, lc, lc, pref, 1, &heur, &found));
  AQ_CHECK(found > 0, "cuBLASLt has no algorithm for a ", M, "x", N, "x", K, " fp32 GEMM");
  const float alpha = 1.0f;
  AQ_CUBLAS_CHECK(cublasLtMatmul(lt().handle, desc, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &heur.algo,
                                 lt().workspace, kWorkspaceBytes, nullptr));
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
}

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
  gemm(false, false, N, OC, IC, inp, IC, weight, OC, 0.0f, out, OC, bias);
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int64_t N, int IC, int OC) {
  gemm(true, false, IC, OC, N, inp, IC, dout, OC, 1.0f, dweight, OC, nullptr);  // dW += inpᵀ·dout
  if (dbias) {
    const int64_t parts = (N + kRowsPerPartial - 1) / kRowsPerPartial;
    cuda::DeviceScratch scratch(static_cast<size_t>(parts * OC) * sizeof(float));
    const unsigned cb = static_cast<unsigned>((OC + 127) / 128);
    column_partials_kernel<<<dim3(cb, static_cast<unsigned>(parts)), 128>>>(scratch.as<float>(), dout, N, OC);
    AQ_CUDA_LAUNCH_CHECK();
    column_sum_kernel<<<cb, 128>>>(dbias, scratch.as<float>(), parts, OC);
    AQ_CUDA_LAUNCH_CHECK();
  }
  if (dinp) gemm(false, true, N, IC, OC, dout, OC, weight, OC, 0.0f, dinp, IC, nullptr);  // may alias inp
}

}  // namespace

void register_matmul_cuda(Registry& r) {
  r.add<Matmul<float>::Forward>("matmul_forward", Device::CUDA, DType::F32, &matmul_forward);
  r.add<Matmul<float>::Backward>("matmul_backward", Device::CUDA, DType::F32, &matmul_backward);
}

}  // namespace aq::ops
