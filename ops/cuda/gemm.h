// gemm.h — row-major GEMMs on the GPU through cuBLASLt, with fused epilogues.
//
// D (M,N) = op(A) · op(B) + beta·D, then an epilogue: a bias over the N columns, GELU(· + bias) keeping the
// pre-activation in `aux`, or multiplication by GELU'(aux) (the backward of that). cuBLASLt is column-major;
// a row-major D = op(A)·op(B) is computed as the column-major Dᵀ = op(B)ᵀ·op(A)ᵀ, which only swaps the
// operands (and makes "rows of the column-major output", where cuBLASLt applies bias and aux, our columns).
//
// Types: A and B are float or bf16 (the same); D is float or bf16. Math is always fp32 (CUBLAS_COMPUTE_32F, no
// TF32), so an fp32 GEMM matches the CPU reference to ~1e-6 and a bf16 one accumulates in fp32 — which is how
// bf16 activations produce fp32 weight gradients (A, B bf16; D fp32 accumulated with beta = 1).
// The algorithm chosen for each (shape, types, epilogue, alignment) is cached: the heuristic runs once per
// distinct GEMM, not once per step. One cuBLASLt handle and a 32 MiB workspace per process.
#pragma once

#include <library_types.h>

#include <cstdint>

namespace aq::cuda {

// Version of the cuBLASLt library in use (loads it on first use), e.g. 130100 for 13.1.0.
size_t cublaslt_version();

enum class Epilogue {
  None,
  Bias,         // D = AB + bias (bias of D's type, over the N columns)
  GeluAuxBias,  // aux = AB + bias; D = gelu(aux)            (aux like D: (M,N), leading dimension ld_aux)
  Dgelu,        // D = gelu'(aux) ⊙ AB                       (beta must be 0)
};

struct GemmArgs {
  bool trans_a = false, trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  const void* A = nullptr;
  int64_t lda = 0;
  const void* B = nullptr;
  int64_t ldb = 0;
  void* D = nullptr;
  int64_t ldd = 0;
  cudaDataType_t ab_type = CUDA_R_32F, d_type = CUDA_R_32F;
  float beta = 0.0f;
  Epilogue epilogue = Epilogue::None;
  const void* bias = nullptr;  // Bias, GeluAuxBias (may be null for GeluAuxBias: no bias)
  void* aux = nullptr;         // GeluAuxBias (written), Dgelu (read); 16-byte aligned for the fused path
  int64_t ld_aux = 0;          // a multiple of 8 for the fused path (cuBLASLt's rule)
};

// Runs the GEMM. With `required` false, returns false instead of failing when cuBLASLt offers no algorithm
// for this epilogue at these alignments (the caller then runs the unfused kernels); plain and bias GEMMs
// are always required.
bool gemm(const GemmArgs& g, bool required = true);

// The arguments of D (M,N) = op(A)·op(B), element types from the pointers; the caller adds beta and an epilogue.
template <typename TAB, typename TD>
GemmArgs gemm_args(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const TAB* A, int64_t lda,
                   const TAB* B, int64_t ldb, TD* D, int64_t ldd);

// The common case: D (M,N) = op(A)·op(B) + beta·D (+ bias over columns), element types from the pointers.
template <typename TAB, typename TD>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const TAB* A, int64_t lda, const TAB* B,
          int64_t ldb, float beta, TD* D, int64_t ldd, const TD* bias);

}  // namespace aq::cuda
