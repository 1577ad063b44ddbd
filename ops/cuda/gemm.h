// gemm.h — row-major FP32 GEMM on the GPU through cuBLASLt.
//
// C (M,N) = op(A) · op(B) + beta·C, plus an optional bias over the N columns fused into the epilogue. cuBLASLt
// is column-major; a row-major C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, which only
// swaps the operands. FP32 math without TF32 (CUBLAS_COMPUTE_32F), so results match the CPU reference to ~1e-6;
// the bf16 path comes with mixed precision. One cuBLASLt handle and a 32 MiB workspace per process.
#pragma once

#include <cstdint>

namespace aq::cuda {

// Version of the cuBLASLt library in use (loads it on first use), e.g. 130100 for 13.1.0.
size_t cublaslt_version();

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc, const float* bias);

}  // namespace aq::cuda
