// blas.cpp — the OpenBLAS GEMM wrapper, the shape recorder and the single-shape timer behind aq-bench's ceiling.
#include "ops/cpu/blas.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <vector>

#include "runtime/sysinfo.h"

namespace aq::cpu {
namespace {
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
std::map<GemmShape, int64_t>* g_recorder = nullptr;
}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  // Only the driver thread's GEMMs: those inside OpenMP tasks (attention's per-head blocks) are single-threaded
  // pieces of another op, and the map is not thread-safe.
  if (g_recorder && omp_get_level() == 0)
    ++(*g_recorder)[GemmShape{trans_a, trans_b, M, N, K, lda, ldb, ldc, beta != 0.0f}];
  cblas_sgemm(CblasRowMajor, tr(trans_a), tr(trans_b), static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
          const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, tr(trans_a), tr(trans_b), static_cast<blasint>(M), static_cast<blasint>(N),
              static_cast<blasint>(K), alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
              static_cast<blasint>(ldc));
}

void set_blas_threads(int n) { openblas_set_num_threads(n); }

void set_gemm_recorder(std::map<GemmShape, int64_t>* counts) { g_recorder = counts; }

double time_gemm(const GemmShape& s, int reps) {
  // Row-major storage: op(A) is (M,K), so A itself has rows M (or K when transposed) of lda values. The buffers
  // only grow, so after the first pass no call pays for page faults; a call that grows them is not timed.
  thread_local std::vector<float> A, B, C;
  const size_t a_n = static_cast<size_t>((s.trans_a ? s.K : s.M) * s.lda);
  const size_t b_n = static_cast<size_t>((s.trans_b ? s.N : s.K) * s.ldb);
  const size_t c_n = static_cast<size_t>(s.M * s.ldc);
  bool grown = false;
  if (A.size() < a_n) A.assign(a_n, 0.01f), grown = true;
  if (B.size() < b_n) B.assign(b_n, 0.02f), grown = true;
  if (C.size() < c_n) C.assign(c_n, 0.0f), grown = true;
  const float beta = s.accumulate ? 1.0f : 0.0f;
  double best = 1e30;
  for (int r = grown ? -1 : 0; r < reps; ++r) {
    Timer t;
    cblas_sgemm(CblasRowMajor, tr(s.trans_a), tr(s.trans_b), static_cast<blasint>(s.M), static_cast<blasint>(s.N),
                static_cast<blasint>(s.K), 1.0f, A.data(), static_cast<blasint>(s.lda), B.data(),
                static_cast<blasint>(s.ldb), beta, C.data(), static_cast<blasint>(s.ldc));
    if (r >= 0) best = std::min(best, t.ms() / 1000.0);
  }
  return best;
}

}  // namespace aq::cpu
