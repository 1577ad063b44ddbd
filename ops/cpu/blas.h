// blas.h — row-major GEMM through OpenBLAS, overloaded for float and double.
//
// C (M,N) = alpha · op(A) (M,K) · op(B) (K,N) + beta · C, all row-major with leading dimensions lda/ldb/ldc.
#pragma once

#include <cstdint>

namespace aq::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

void set_blas_threads(int n);
const char* blas_description();  // e.g. "OpenBLAS 0.3.21 (OpenMP), SKYLAKEX kernels"

}  // namespace aq::cpu
