// gemm.cu — row-major FP32 GEMM through cuBLASLt (see gemm.h).
#include <cublasLt.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "runtime/error.h"

namespace aq::cuda {
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
    workspace = CachingAllocator::instance().allocate(kWorkspaceBytes);
  }
};
Lt& lt() {
  static Lt instance;  // one handle per process (one device per rank)
  return instance;
}

// Row-major C (M,N) = op(A) · op(B) (+ bias over columns) with beta·C; A is (M,K) or (K,M) when trans_a, etc.
}  // namespace

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

}  // namespace aq::cuda
