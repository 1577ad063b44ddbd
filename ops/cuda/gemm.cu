// gemm.cu — row-major FP32 GEMM through cuBLASLt (see gemm.h).
//
// cuBLASLt is opened with dlopen on the first GPU GEMM instead of being linked: merely loading the library
// costs ~150 MiB of resident memory (its static initialisers), which every CPU-only run would otherwise pay.
#include <cublasLt.h>
#include <dlfcn.h>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gemm.h"
#include "runtime/error.h"

#define AQ_STRINGIFY2(x) #x
#define AQ_STRINGIFY(x) AQ_STRINGIFY2(x)

namespace aq::cuda {
namespace {

#define AQ_CUBLAS_CHECK(call)                                                                          \
  do {                                                                                                 \
    cublasStatus_t st_ = (call);                                                                       \
    AQ_CHECK(st_ == CUBLAS_STATUS_SUCCESS, "cuBLASLt call ", #call, " failed with status ", int(st_), \
             " at ", __FILE__, ":", __LINE__);                                                         \
  } while (0)

constexpr size_t kWorkspaceBytes = 32u << 20;

// The cuBLASLt entry points this file uses, resolved from the library at run time.
struct LtApi {
#define AQ_LT_FN(name) decltype(&::name) name = nullptr;
  AQ_LT_FN(cublasLtCreate)
  AQ_LT_FN(cublasLtGetVersion)
  AQ_LT_FN(cublasLtMatmul)
  AQ_LT_FN(cublasLtMatmulAlgoGetHeuristic)
  AQ_LT_FN(cublasLtMatmulDescCreate)
  AQ_LT_FN(cublasLtMatmulDescDestroy)
  AQ_LT_FN(cublasLtMatmulDescSetAttribute)
  AQ_LT_FN(cublasLtMatmulPreferenceCreate)
  AQ_LT_FN(cublasLtMatmulPreferenceDestroy)
  AQ_LT_FN(cublasLtMatmulPreferenceSetAttribute)
  AQ_LT_FN(cublasLtMatrixLayoutCreate)
  AQ_LT_FN(cublasLtMatrixLayoutDestroy)
#undef AQ_LT_FN

  LtApi() {
    void* lib = nullptr;
    for (const char* path : {"libcublasLt.so." AQ_STRINGIFY(CUBLAS_VER_MAJOR), AQ_CUBLASLT_PATH})
      if (!lib) lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    AQ_CHECK(lib != nullptr, "cannot load cuBLASLt (libcublasLt.so." AQ_STRINGIFY(CUBLAS_VER_MAJOR) " or ",
             AQ_CUBLASLT_PATH, "): ", dlerror(), "; add the CUDA toolkit's lib64 to LD_LIBRARY_PATH");
#define AQ_LT_LOAD(name)                                                                            \
  name = reinterpret_cast<decltype(name)>(dlsym(lib, #name));                                       \
  AQ_CHECK(name != nullptr, "cuBLASLt at ", AQ_CUBLASLT_PATH, " lacks ", #name, " (toolkit too old?)");
    AQ_LT_LOAD(cublasLtCreate)
    AQ_LT_LOAD(cublasLtGetVersion)
    AQ_LT_LOAD(cublasLtMatmul)
    AQ_LT_LOAD(cublasLtMatmulAlgoGetHeuristic)
    AQ_LT_LOAD(cublasLtMatmulDescCreate)
    AQ_LT_LOAD(cublasLtMatmulDescDestroy)
    AQ_LT_LOAD(cublasLtMatmulDescSetAttribute)
    AQ_LT_LOAD(cublasLtMatmulPreferenceCreate)
    AQ_LT_LOAD(cublasLtMatmulPreferenceDestroy)
    AQ_LT_LOAD(cublasLtMatmulPreferenceSetAttribute)
    AQ_LT_LOAD(cublasLtMatrixLayoutCreate)
    AQ_LT_LOAD(cublasLtMatrixLayoutDestroy)
#undef AQ_LT_LOAD
  }
};
const LtApi& api() {
  static LtApi instance;
  return instance;
}

struct Lt {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  Lt() {
    AQ_CUBLAS_CHECK(api().cublasLtCreate(&handle));
    workspace = CachingAllocator::instance().allocate(kWorkspaceBytes);
  }
};
Lt& lt() {
  static Lt instance;  // one handle per process (one device per rank)
  return instance;
}

// Destroys the cuBLASLt descriptors of one call on every path, errors included.
struct LtCall {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtCall() {
    if (pref) api().cublasLtMatmulPreferenceDestroy(pref);
    if (la) api().cublasLtMatrixLayoutDestroy(la);
    if (lb) api().cublasLtMatrixLayoutDestroy(lb);
    if (lc) api().cublasLtMatrixLayoutDestroy(lc);
    if (desc) api().cublasLtMatmulDescDestroy(desc);
  }
};

// Largest power-of-two alignment (≤ 256 bytes) of a pointer, so the heuristic only offers kernels that can
// read it: views such as x + r0·C are often only 4-byte aligned.
uint32_t alignment(const void* p) {
  uint32_t a = 256;
  while (a > 4 && reinterpret_cast<uintptr_t>(p) % a) a /= 2;
  return a;
}
}  // namespace

// Row-major C (M,N) = op(A) · op(B) (+ bias over columns) with beta·C.
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc, const float* bias) {
  LtCall c;
  AQ_CUBLAS_CHECK(api().cublasLtMatmulDescCreate(&c.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major problem: Cᵀ (N,M) = op'(B-buffer) · op'(A-buffer).
  const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  AQ_CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  AQ_CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    AQ_CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    AQ_CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  // Stored B-buffer, seen column-major: (N,K) when not transposed, (K,N) when transposed; likewise A.
  AQ_CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&c.la, CUDA_R_32F, trans_b ? K : N, trans_b ? N : K, ldb));
  AQ_CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&c.lb, CUDA_R_32F, trans_a ? M : K, trans_a ? K : M, lda));
  AQ_CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&c.lc, CUDA_R_32F, N, M, ldc));
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceCreate(&c.pref));
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                       &kWorkspaceBytes, sizeof(kWorkspaceBytes)));
  const uint32_t align_a = alignment(B), align_b = alignment(A), align_c = alignment(C);  // swapped operands
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                       sizeof(align_a)));
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                       sizeof(align_b)));
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                       sizeof(align_c)));
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                       sizeof(align_c)));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  const cublasStatus_t hs =
      api().cublasLtMatmulAlgoGetHeuristic(lt().handle, c.desc, c.la, c.lb, c.lc, c.lc, c.pref, 1, &heur, &found);
  AQ_CHECK(hs == CUBLAS_STATUS_SUCCESS && found > 0, "cuBLASLt has no algorithm for a ", M, "x", N, "x", K,
           " fp32 GEMM (trans ", trans_a, trans_b, ", alignments ", align_b, "/", align_a, "/", align_c,
           " bytes, status ", static_cast<int>(hs), ")");
  const float alpha = 1.0f;
  AQ_CUBLAS_CHECK(api().cublasLtMatmul(lt().handle, c.desc, &alpha, B, c.la, A, c.lb, &beta, C, c.lc, C, c.lc, &heur.algo,
                                 lt().workspace, kWorkspaceBytes, nullptr));
}

size_t cublaslt_version() { return api().cublasLtGetVersion(); }

}  // namespace aq::cuda
