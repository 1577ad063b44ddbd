// gemm.cu — row-major GEMMs through cuBLASLt with fused epilogues (see gemm.h).
//
// cuBLASLt is opened with dlopen on the first GPU GEMM instead of being linked: merely loading the library
// costs ~150 MiB of resident memory (its static initialisers), which every CPU-only run would otherwise pay.
#include <cublasLt.h>
#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <unordered_map>

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
// read it: views such as x + r0·C are often only 4-byte (fp32) or 2-byte (bf16) aligned.
uint32_t alignment(const void* p) {
  uint32_t a = 256;
  while (a > 2 && reinterpret_cast<uintptr_t>(p) % a) a /= 2;
  return a;
}

// Everything the heuristic's answer depends on; the algorithm found for a key is reused for later calls.
struct AlgoKey {
  int64_t M, N, K, lda, ldb, ldd, ld_aux;
  int32_t ab_type, d_type, epilogue, trans, beta_nonzero;
  uint32_t align_a, align_b, align_d, align_bias, align_aux;
  bool operator==(const AlgoKey& o) const { return std::memcmp(this, &o, sizeof(AlgoKey)) == 0; }
};
struct AlgoKeyHash {
  size_t operator()(const AlgoKey& k) const {
    const auto* p = reinterpret_cast<const unsigned char*>(&k);
    size_t h = 1469598103934665603ull;  // FNV-1a over the bytes (the key has no padding: all fields are 4/8 bytes)
    for (size_t i = 0; i < sizeof(AlgoKey); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return h;
  }
};
struct AlgoCache {
  std::mutex mutex;
  std::unordered_map<AlgoKey, std::pair<bool, cublasLtMatmulAlgo_t>, AlgoKeyHash> map;  // found?, algorithm
};
AlgoCache& algo_cache() {
  static AlgoCache cache;
  return cache;
}

const char* type_name(cudaDataType_t t) { return t == CUDA_R_16BF ? "bf16" : t == CUDA_R_32F ? "fp32" : "?"; }

template <typename V>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, const V& value) {
  AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof(value)));
}

template <typename V>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const V& value) {
  AQ_CUBLAS_CHECK(api().cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(value)));
}
}  // namespace

bool gemm(const GemmArgs& g, bool required) {
  AQ_ASSERT(g.epilogue != Epilogue::Dgelu || g.beta == 0.0f, "the dgelu epilogue needs beta = 0");
  const bool uses_aux = g.epilogue == Epilogue::GeluAuxBias || g.epilogue == Epilogue::Dgelu;
  // cublasLt.h: the GELU aux matrix's leading dimension "must be divisible by 8"; and its kernels read it with
  // 16-byte accesses. Otherwise the caller's unfused path runs (an algorithm returned anyway could still fail).
  if (uses_aux && (g.ld_aux % 8 != 0 || alignment(g.aux) < 16)) {
    AQ_ASSERT(!required, "GELU epilogue needs an aux leading dimension divisible by 8 and a 16-byte aligned aux");
    return false;
  }
  LtCall c;
  AQ_CUBLAS_CHECK(api().cublasLtMatmulDescCreate(&c.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major problem: Dᵀ (N,M) = op'(B-buffer) · op'(A-buffer).
  const cublasOperation_t op_a = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(c.desc, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  set_desc(c.desc, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  switch (g.epilogue) {
    case Epilogue::None: break;
    case Epilogue::Bias: epi = g.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT; break;
    case Epilogue::GeluAuxBias: epi = g.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX; break;
    case Epilogue::Dgelu: epi = CUBLASLT_EPILOGUE_DGELU; break;
  }
  if (epi != CUBLASLT_EPILOGUE_DEFAULT) set_desc(c.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epi);
  if (g.bias && (g.epilogue == Epilogue::Bias || g.epilogue == Epilogue::GeluAuxBias))
    set_desc(c.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (uses_aux) {
    set_desc(c.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set_desc(c.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.ld_aux);
  }
  // Stored B-buffer, seen column-major: (N,K) when not transposed, (K,N) when transposed; likewise A.
  AQ_CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&c.la, g.ab_type, g.trans_b ? g.K : g.N, g.trans_b ? g.N : g.K,
                                                   g.ldb));
  AQ_CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&c.lb, g.ab_type, g.trans_a ? g.M : g.K, g.trans_a ? g.K : g.M,
                                                   g.lda));
  AQ_CUBLAS_CHECK(api().cublasLtMatrixLayoutCreate(&c.lc, g.d_type, g.N, g.M, g.ldd));

  const AlgoKey key{g.M, g.N, g.K, g.lda, g.ldb, g.ldd, g.ld_aux, static_cast<int32_t>(g.ab_type),
                    static_cast<int32_t>(g.d_type), static_cast<int32_t>(epi), (g.trans_a ? 1 : 0) | (g.trans_b ? 2 : 0),
                    g.beta != 0.0f ? 1 : 0, alignment(g.B), alignment(g.A), alignment(g.D),
                    g.bias ? alignment(g.bias) : 0u, g.aux ? alignment(g.aux) : 0u};
  std::pair<bool, cublasLtMatmulAlgo_t> algo{false, {}};
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(algo_cache().mutex);
    auto it = algo_cache().map.find(key);
    if (it != algo_cache().map.end()) {
      algo = it->second;
      cached = true;
    }
  }
  cublasStatus_t hs = CUBLAS_STATUS_SUCCESS;
  if (!cached) {
    AQ_CUBLAS_CHECK(api().cublasLtMatmulPreferenceCreate(&c.pref));
    set_pref(c.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kWorkspaceBytes);
    // Swapped operands: cuBLASLt's A is our B.
    set_pref(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a);
    set_pref(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b);
    set_pref(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d);
    set_pref(c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d);
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    hs = api().cublasLtMatmulAlgoGetHeuristic(lt().handle, c.desc, c.la, c.lb, c.lc, c.lc, c.pref, 1, &heur, &found);
    algo = {hs == CUBLAS_STATUS_SUCCESS && found > 0, heur.algo};
    std::lock_guard<std::mutex> lock(algo_cache().mutex);
    algo_cache().map.emplace(key, algo);
  }
  if (!algo.first) {
    if (!required && uses_aux) return false;
    fail(str("cuBLASLt has no algorithm for a ", g.M, "x", g.N, "x", g.K, " GEMM (", type_name(g.ab_type), " -> ",
             type_name(g.d_type), ", trans ", g.trans_a, g.trans_b, ", epilogue ", static_cast<int>(g.epilogue),
             ", alignments ", key.align_b, "/", key.align_a, "/", key.align_d, " bytes, status ",
             static_cast<int>(hs), ")"));
  }
  const float alpha = 1.0f;
  AQ_CUBLAS_CHECK(api().cublasLtMatmul(lt().handle, c.desc, &alpha, g.B, c.la, g.A, c.lb, &g.beta, g.D, c.lc, g.D,
                                       c.lc, &algo.second, lt().workspace, kWorkspaceBytes, nullptr));
  return true;
}

template <typename TAB, typename TD>
GemmArgs gemm_args(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const TAB* A, int64_t lda,
                   const TAB* B, int64_t ldb, TD* D, int64_t ldd) {
  GemmArgs g;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = A;
  g.lda = lda;
  g.B = B;
  g.ldb = ldb;
  g.D = D;
  g.ldd = ldd;
  g.ab_type = cuda_dtype<TAB>();
  g.d_type = cuda_dtype<TD>();
  return g;
}

template <typename TAB, typename TD>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const TAB* A, int64_t lda, const TAB* B,
          int64_t ldb, float beta, TD* D, int64_t ldd, const TD* bias) {
  GemmArgs g = gemm_args(trans_a, trans_b, M, N, K, A, lda, B, ldb, D, ldd);
  g.beta = beta;
  g.epilogue = bias ? Epilogue::Bias : Epilogue::None;
  g.bias = bias;
  gemm(g);
}

template GemmArgs gemm_args<float, float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                          int64_t, float*, int64_t);
template GemmArgs gemm_args<bf16, bf16>(bool, bool, int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*,
                                        int64_t, bf16*, int64_t);
template void gemm<float, float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                                 int64_t, float, float*, int64_t, const float*);
template void gemm<bf16, bf16>(bool, bool, int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*, int64_t,
                               float, bf16*, int64_t, const bf16*);
template void gemm<bf16, float>(bool, bool, int64_t, int64_t, int64_t, const bf16*, int64_t, const bf16*, int64_t,
                                float, float*, int64_t, const float*);

size_t cublaslt_version() { return api().cublasLtGetVersion(); }

}  // namespace aq::cuda
