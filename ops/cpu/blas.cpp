#include "ops/cpu/blas.h"

#include <cblas.h>

#include <string>

namespace aq::cpu {
namespace {
CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }
}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
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

const char* blas_description() {
  static std::string s = [] {
    int par = openblas_get_parallel();
    const char* model = par == 0 ? "sequential" : par == 1 ? "pthreads" : "OpenMP";
    return std::string(openblas_get_config()) + " [" + model + ", " + openblas_get_corename() + " kernels]";
  }();
  return s.c_str();
}

}  // namespace aq::cpu
