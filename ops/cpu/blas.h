// blas.h — row-major GEMM through OpenBLAS, overloaded for float and double; the shapes a step performs and
// their speed alone (aq-bench's ceiling).
//
// C (M,N) = alpha · op(A) (M,K) · op(B) (K,N) + beta · C, all row-major with leading dimensions lda/ldb/ldc.
#pragma once

#include <cstdint>
#include <map>
#include <tuple>

namespace aq::cpu {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc);

void set_blas_threads(int n);

// One float GEMM call as the step made it: transposes, sizes, leading dimensions and whether C is accumulated.
struct GemmShape {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0, lda = 0, ldb = 0, ldc = 0;
  bool accumulate = false;  // beta != 0
  double flops() const { return 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K); }
  auto key() const { return std::tie(trans_a, trans_b, M, N, K, lda, ldb, ldc, accumulate); }
  bool operator<(const GemmShape& o) const { return key() < o.key(); }
};
// While set, every float GEMM adds one to its shape's count (single-threaded callers only: the model's driver
// thread). Null stops recording.
void set_gemm_recorder(std::map<GemmShape, int64_t>* counts);
// Seconds per call of one shape alone, with the current BLAS thread count: the best of `reps` timed calls, on
// per-thread buffers that only grow (a call that had to grow them runs once untimed first).
double time_gemm(const GemmShape& s, int reps);

}  // namespace aq::cpu
