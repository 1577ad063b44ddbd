// attention_wmma.cu — the tensor-core attention kernels: bf16, head sizes that are multiples of 16 up to 128.
//
// Called by the dispatch in attention_cuda.cu (see the file comment there for the tiling of the FMA kernels,
// whose three passes these mirror, and for the AQ_ATTENTION_FMA switch). Compiled for sm_80 and up; on an
// older target the kernels trap instead of computing garbage.
#include <mma.h>

#include "ops/attention/attention_cuda.cuh"

namespace aq::ops::attention_detail {
namespace {

// ---- tensor-core kernels: bf16 with head sizes that are multiples of 16, up to 128 ------------------------
//
// The same three passes as the FMA tiles in attention_cuda.cu, with every tile product on the tensor cores through the
// portable WMMA API (16×16×16 bf16 fragments, fp32 accumulators). Tiles are kept in shared memory as bf16,
// exactly the stored values; a block has 4 warps and each warp owns 16 rows of the block's tile (queries in
// the forward and dQ kernels, keys in the dK/dV kernel), so a warp's scores, probabilities and softmax
// statistics are its own and need only __syncwarp between the matrix and element-wise steps. The element
// layout of a fragment is unspecified, so every element-wise step (masking, softmax, rescaling, p and ds)
// goes through fp32 tiles in shared memory written with store_matrix_sync (the whole 16×64 score row block in
// the forward pass, which needs row maxima; one 16×16 block at a time in the backward pass, which does not).
// Probabilities and ds are rounded to bf16 for the P·V, Pᵀ·dO, dSᵀ·Q and dS·K products (as in
// FlashAttention-2); row sums, lse and all accumulation stay fp32. Exponentials are taken base 2 with the
// scale and log2(e) folded into one multiplier (one FMUL/FFMA and one MUFU.EX2 per score). dK, dV and dQ
// accumulate in fragments across the whole walk, as no rescaling is needed there; the forward's O is rescaled
// after each key tile, so it lives in shared memory (fp32) and is loaded into an accumulator fragment for each
// P·V step.

constexpr int kWmmaWarps = 4;
constexpr int kWmmaThreads = 32 * kWmmaWarps;

// Tile shapes per padded head size D. Pitches (in elements) keep every 16-row/16-column fragment pointer
// 32-byte aligned (WMMA requires 256-bit alignment and a pitch that is a multiple of 16 bytes) and shift
// successive rows by 4 banks, so the 8 rows a fragment load reads at once hit distinct banks.
template <int D>
struct WTiles {
  static_assert(D == 16 || D == 32 || D == 64 || D == 128, "padded head size");
  static constexpr int BQ = 16 * kWmmaWarps;  // query rows of a forward or dQ block, query columns of a dK/dV step
  static constexpr int BK = 16 * kWmmaWarps;  // key rows of a dK/dV block, key columns of a forward or dQ step
  static constexpr int LDH = D + 8;           // (rows, D) bf16 tiles
  static constexpr int LDS = 64 + 4;          // (rows, 64) fp32 score tiles
  static constexpr int LDP = 64 + 8;          // (rows, 64) bf16 probability tiles
  static constexpr int LDO = D + 4;           // (rows, D) fp32 output tile of the forward pass
  static constexpr int LDC = 16 + 4;          // (16, 16) fp32 per-warp scratch blocks of the backward pass
  static_assert(BQ == 64 && BK == 64, "score tiles are 64 wide");
};

using bf16_t = __nv_bfloat16;
namespace wmma = nvcuda::wmma;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16_t, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16_t, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// dst (rows, D) bf16 in shared memory, pitch D+8, ← rows row0 … row0+rows−1 of a matrix whose row t starts at
// src + t·stride, bit for bit. Zero past row T_ and past column hs (see load_tile). vec: 128-bit loads (hs is
// a multiple of 16 here, so only the alignment of src and stride decides).
template <int D>
__device__ void load_tile_bf16(bf16_t* dst, const aq::bf16* src, int64_t stride, int row0, int rows, int T_, int hs,
                               bool vec) {
  constexpr int LD = D + 8;
  if (vec) {
    constexpr int NC = D / 8;  // 16-byte chunks per row
    for (int idx = threadIdx.x; idx < rows * NC; idx += blockDim.x) {
      const int r = idx / NC, d0 = (idx % NC) * 8;
      uint4 v = {0u, 0u, 0u, 0u};
      if (row0 + r < T_ && d0 < hs) v = *reinterpret_cast<const uint4*>(src + (row0 + r) * stride + d0);
      *reinterpret_cast<uint4*>(dst + r * LD + d0) = v;
    }
  } else {
    for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
      const int r = idx / D, d = idx % D;
      const unsigned short bits = (row0 + r < T_ && d < hs) ? src[(row0 + r) * stride + d].bits : 0;
      dst[r * LD + d] = __ushort_as_bfloat16(bits);
    }
  }
}

// Bytes of dynamic shared memory of each WMMA kernel (layouts in the kernels): at D = 128 about 110, 96 and
// 88 KiB (one block per A100 SM, two per H100 SM); at D = 64 (GPT-2) 70, 65 and 56 KiB (two blocks per A100
// SM, three or four per H100 SM).
template <int D>
constexpr size_t wmma_forward_smem() {
  using S = WTiles<D>;
  return 2 * (S::BQ + 2 * S::BK) * S::LDH + 4 * S::BQ * S::LDS + 2 * S::BQ * S::LDP + 4 * S::BQ * S::LDO + 4 * S::BQ;
}
template <int D>
constexpr size_t wmma_backward_kv_smem() {
  using S = WTiles<D>;
  return 2 * (2 * S::BK + 2 * S::BQ) * S::LDH + 4 * 2 * kWmmaWarps * 16 * S::LDC + 2 * 2 * S::BK * S::LDP +
         4 * 2 * S::BQ;
}
template <int D>
constexpr size_t wmma_backward_q_smem() {
  using S = WTiles<D>;
  return 2 * (2 * S::BQ + 2 * S::BK) * S::LDH + 4 * 2 * kWmmaWarps * 16 * S::LDC + 2 * S::BQ * S::LDP + 4 * 2 * S::BQ;
}

// acc ← a (16×16·KS, row-major bf16, pitch lda) · bᵀ where b (16 rows × 16·KS) is row-major bf16 (pitch ldb): a
// 16×16 block of Q·Kᵀ; the sum over the KS 16-wide chunks runs in a fixed order.
template <int KS>
__device__ __forceinline__ void mma_abt(FragC& acc, const bf16_t* a, int lda, const bf16_t* b, int ldb) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    FragA fa;
    FragBCol fb;  // bᵀ (16·KS × 16) column-major is b row-major
    wmma::load_matrix_sync(fa, a + kk * 16, lda);
    wmma::load_matrix_sync(fb, b + kk * 16, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
}

// The same with the a operand already in registers: af[kk] holds columns 16·kk … of a.
template <int KS>
__device__ __forceinline__ void mma_abt(FragC& acc, const FragA (&af)[KS], const bf16_t* b, int ldb) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    FragBCol fb;
    wmma::load_matrix_sync(fb, b + kk * 16, ldb);
    wmma::mma_sync(acc, af[kk], fb, acc);
  }
}

// af[kk] ← columns 16·kk … of the 16 rows at a (row-major bf16, pitch lda).
template <int KS>
__device__ __forceinline__ void load_rows(FragA (&af)[KS], const bf16_t* a, int lda) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) wmma::load_matrix_sync(af[kk], a + kk * 16, lda);
}

// Writes a warp's 16×16 fp32 block staged at st (pitch ld) to rows row0 … of dst (pitch stride), columns
// col0 …, times mul; rows ≥ T_ and columns ≥ hs are padding and are skipped.
__device__ __forceinline__ void write_block(aq::bf16* dst, int64_t stride, const float* st, int ld, int row0, int col0,
                                            int T_, int hs, float mul, int lane) {
#pragma unroll
  for (int idx = lane; idx < 256; idx += 32) {
    const int r = idx / 16, c = idx % 16;
    if (row0 + r < T_ && col0 + c < hs)
      dst[(row0 + r) * stride + col0 + c] = cuda::from_f<aq::bf16>(st[r * ld + c] * mul);
  }
}

// One block per (query tile, head, batch): grid (ceil(T_/BQ), NH, B), kWmmaThreads threads.
// out (B,T_,C), lse (B,NH,T_), qkv (B,T_,3C)
template <int D>
__global__ void __launch_bounds__(kWmmaThreads)
    wmma_forward_kernel(aq::bf16* out, float* lse, const aq::bf16* qkv, int T_, int C, int NH, float scale, bool vec) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using S = WTiles<D>;
  constexpr int BQ = S::BQ, BK = S::BK, LDH = S::LDH, LDS = S::LDS, LDP = S::LDP, LDO = S::LDO;
  extern __shared__ __align__(128) unsigned char wsmem[];
  bf16_t* Qs = reinterpret_cast<bf16_t*>(wsmem);          // (BQ, D) pitch LDH
  bf16_t* Ks = Qs + BQ * LDH;                             // (BK, D) pitch LDH
  bf16_t* Vs = Ks + BK * LDH;                             // (BK, D) pitch LDH
  float* Ss = reinterpret_cast<float*>(Vs + BK * LDH);    // (BQ, BK) pitch LDS: this step's scores
  bf16_t* Ps = reinterpret_cast<bf16_t*>(Ss + BQ * LDS);  // (BQ, BK) pitch LDP: this step's probabilities
  float* Os = reinterpret_cast<float*>(Ps + BQ * LDP);    // (BQ, D) pitch LDO: the running output, unnormalised
  float* Ls = Os + BQ * LDO;                              // (BQ): 1/l of each row, for the final write

  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (latest) query tiles start first
  const int h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = 16 * warp;                       // this warp's rows
  const int rr = r0 + lane / 2, half = lane % 2;  // in the softmax, lane works on row rr, columns half, half+2, …
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const aq::bf16* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;  // q of row 0; k at +C, v at +2C
  const int q0 = qt * BQ, q = q0 + rr;
  const float sl2 = scale * kLog2e;  // scores in log2 units: exp(s·scale − x) = exp2(s·sl2 − x·log2e)

  load_tile_bf16<D>(Qs, base, C3, q0, BQ, T_, hs, vec);
  for (int c = half; c < D; c += 2) Os[rr * LDO + c] = 0.0f;
  __syncthreads();
  FragA qf[D / 16];  // this warp's 16 query rows, held for the whole walk
  load_rows(qf, Qs + r0 * LDH, LDH);
  float m = -INFINITY, l = 0.0f;  // running max (log2 units) and sum of row rr, the same in both its lanes
  // As in flash_forward_kernel: tile 0 holds key 0, so every row's max is finite after it.
  const int nk = (min(q0 + BQ, T_) - 1) / BK + 1;
  for (int kt = 0; kt < nk; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // every warp's reads of Ks and Vs of the previous step are done
    load_tile_bf16<D>(Ks, base + C, C3, k0, BK, T_, hs, vec);
    load_tile_bf16<D>(Vs, base + 2 * C, C3, k0, BK, T_, hs, vec);
    __syncthreads();
#pragma unroll
    for (int j = 0; j < BK / 16; ++j) {  // S = Q·Kᵀ for this warp's rows
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_abt<D / 16>(acc, qf, Ks + j * 16 * LDH, LDH);
      wmma::store_matrix_sync(Ss + r0 * LDS + j * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncwarp();
    float mx = -INFINITY;
    for (int c = half; c < BK; c += 2) {
      const int k = k0 + c;
      const float s = (k <= q && k < T_) ? Ss[rr * LDS + c] * sl2 : -INFINITY;
      Ss[rr * LDS + c] = s;
      mx = fmaxf(mx, s);
    }
    mx = fmaxf(m, fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1)));
    const float corr = exp2f(m - mx);  // 0 on the first tile (m = −inf)
    float sum = 0.0f;
    for (int c = half; c < BK; c += 2) {
      const float p = exp2f(Ss[rr * LDS + c] - mx);  // masked: exp2(−inf) = 0
      sum += p;
      Ps[rr * LDP + c] = __float2bfloat16_rn(p);
    }
    l = l * corr + (sum + __shfl_xor_sync(0xffffffffu, sum, 1));
    m = mx;
    for (int c = half; c < D; c += 2) Os[rr * LDO + c] *= corr;
    __syncwarp();
#pragma unroll
    for (int jd = 0; jd < D / 16; ++jd) {  // O += P·V
      FragC acc;
      wmma::load_matrix_sync(acc, Os + r0 * LDO + jd * 16, LDO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < BK / 16; ++kk) {
        FragA fa;
        FragBRow fb;
        wmma::load_matrix_sync(fa, Ps + r0 * LDP + kk * 16, LDP);
        wmma::load_matrix_sync(fb, Vs + kk * 16 * LDH + jd * 16, LDH);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      wmma::store_matrix_sync(Os + r0 * LDO + jd * 16, acc, LDO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (half == 0) {
    Ls[rr] = 1.0f / l;
    if (q < T_) lse[(static_cast<int64_t>(b) * NH + h) * T_ + q] = m * kLn2 + logf(l);
  }
  __syncwarp();
  for (int idx = lane; idx < 16 * hs; idx += 32) {
    const int r = r0 + idx / hs, d = idx % hs;
    if (q0 + r < T_)
      out[(static_cast<int64_t>(b) * T_ + q0 + r) * C + h * hs + d] = cuda::from_f<aq::bf16>(Os[r * LDO + d] * Ls[r]);
  }
#else
  __trap();  // bf16 WMMA needs sm_80; the build targets AQ_CUDA_ARCHS (80;90 by default)
#endif
}

// One block per KEY tile: grid (ceil(T_/BK), NH, B), kWmmaThreads threads; each warp owns 16 keys and works
// in the transposed space (rows keys, columns queries): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, dV += Pᵀ·dO, dK += dSᵀ·Q.
// dqkv (B,T_,3C), dout (B,T_,C), qkv (B,T_,3C), lse (B,NH,T_), Dbuf (B,NH,T_)
template <int D>
__global__ void __launch_bounds__(kWmmaThreads)
    wmma_backward_kv_kernel(aq::bf16* dqkv, const aq::bf16* dout, const aq::bf16* qkv, const float* lse,
                            const float* Dbuf, int T_, int C, int NH, float scale, bool vec) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using S = WTiles<D>;
  constexpr int BQ = S::BQ, BK = S::BK, LDH = S::LDH, LDC = S::LDC, LDP = S::LDP, JD = D / 16;
  extern __shared__ __align__(128) unsigned char wsmem[];
  bf16_t* Ks = reinterpret_cast<bf16_t*>(wsmem);         // (BK, D) pitch LDH
  bf16_t* Vs = Ks + BK * LDH;                            // (BK, D)
  bf16_t* Qs = Vs + BK * LDH;                            // (BQ, D)
  bf16_t* dOs = Qs + BQ * LDH;                           // (BQ, D)
  float* Sc = reinterpret_cast<float*>(dOs + BQ * LDH);  // per warp: (16, 16) Sᵀ and dPᵀ blocks, pitch LDC
  bf16_t* Pt = reinterpret_cast<bf16_t*>(Sc + kWmmaWarps * 2 * 16 * LDC);  // (BK, BQ) pitch LDP: Pᵀ
  bf16_t* dSt = Pt + BK * LDP;                                             // (BK, BQ) pitch LDP: dSᵀ
  float* Ls = reinterpret_cast<float*>(dSt + BK * LDP);                    // (BQ) lse of the query tile
  float* Ds = Ls + BQ;                                                     // (BQ) D of the query tile

  const int kt = blockIdx.x;  // the earliest key tiles have the most query tiles: they start first
  const int h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = 16 * warp;               // this warp's keys
  float* Ssc = Sc + warp * 2 * 16 * LDC;  // this warp's Sᵀ block, later the output staging
  float* dPsc = Ssc + 16 * LDC;           // this warp's dPᵀ block
  const float sl2 = scale * kLog2e;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const aq::bf16* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const aq::bf16* dbase = dout + static_cast<int64_t>(b) * T_ * C + h * hs;
  const float* lrow = lse + (static_cast<int64_t>(b) * NH + h) * T_;
  const float* drow = Dbuf + (static_cast<int64_t>(b) * NH + h) * T_;
  const int k0 = kt * BK;

  load_tile_bf16<D>(Ks, base + C, C3, k0, BK, T_, hs, vec);
  load_tile_bf16<D>(Vs, base + 2 * C, C3, k0, BK, T_, hs, vec);
  FragC dk[JD], dv[JD];  // rows: this warp's keys; columns: dims 16·jd …
#pragma unroll
  for (int jd = 0; jd < JD; ++jd) {
    wmma::fill_fragment(dk[jd], 0.0f);
    wmma::fill_fragment(dv[jd], 0.0f);
  }
  const int nq = (T_ + BQ - 1) / BQ;
  for (int qt = k0 / BQ; qt < nq; ++qt) {  // queries before k0 see none of these keys
    const int q0 = qt * BQ;
    __syncthreads();  // every warp's reads of Qs, dOs, Ls and Ds of the previous step are done
    load_tile_bf16<D>(Qs, base, C3, q0, BQ, T_, hs, vec);
    load_tile_bf16<D>(dOs, dbase, C, q0, BQ, T_, hs, vec);
    load_stats(Ls, lrow, q0, BQ, T_);
    load_stats(Ds, drow, q0, BQ, T_);
    __syncthreads();
    for (int jq = 0; jq < BQ / 16; ++jq) {  // 16 queries at a time
      FragC s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
      mma_abt<D / 16>(s, Ks + r0 * LDH, LDH, Qs + jq * 16 * LDH, LDH);    // Sᵀ = K·Qᵀ
      mma_abt<D / 16>(dp, Vs + r0 * LDH, LDH, dOs + jq * 16 * LDH, LDH);  // dPᵀ = V·dOᵀ
      wmma::store_matrix_sync(Ssc, s, LDC, wmma::mem_row_major);
      wmma::store_matrix_sync(dPsc, dp, LDC, wmma::mem_row_major);
      __syncwarp();
#pragma unroll 2
      for (int idx = lane; idx < 256; idx += 32) {  // pᵀ and dsᵀ; masked (key after query) and padding: 0
        const int r = idx / 16, c = jq * 16 + idx % 16, k = k0 + r0 + r, qq = q0 + c;
        const float p = (qq < T_ && k <= qq) ? exp2f(fmaf(Ssc[r * LDC + idx % 16], sl2, -Ls[c] * kLog2e)) : 0.0f;
        Pt[(r0 + r) * LDP + c] = __float2bfloat16_rn(p);
        dSt[(r0 + r) * LDP + c] = __float2bfloat16_rn(p * (dPsc[r * LDC + idx % 16] - Ds[c]));
      }
      __syncwarp();  // the block is read before the next one overwrites it; Pᵀ and dSᵀ are complete after the last
    }
#pragma unroll
    for (int kq = 0; kq < BQ / 16; ++kq) {  // dV += Pᵀ·dO, dK += dSᵀ·Q (the scale of dK is applied at the end)
      FragA fp, fds;
      wmma::load_matrix_sync(fp, Pt + r0 * LDP + kq * 16, LDP);
      wmma::load_matrix_sync(fds, dSt + r0 * LDP + kq * 16, LDP);
#pragma unroll
      for (int jd = 0; jd < JD; ++jd) {
        FragBRow fb;
        wmma::load_matrix_sync(fb, dOs + kq * 16 * LDH + jd * 16, LDH);
        wmma::mma_sync(dv[jd], fp, fb, dv[jd]);
        wmma::load_matrix_sync(fb, Qs + kq * 16 * LDH + jd * 16, LDH);
        wmma::mma_sync(dk[jd], fds, fb, dk[jd]);
      }
    }
  }
  // Stage each 16×16 block in this warp's scratch (only this warp reads it) and write it out.
  aq::bf16* dk_out = dqkv + static_cast<int64_t>(b) * T_ * C3 + C + h * hs;
  float* st = Ssc;
#pragma unroll
  for (int jd = 0; jd < JD; ++jd) {
    __syncwarp();
    wmma::store_matrix_sync(st, dk[jd], LDC, wmma::mem_row_major);
    __syncwarp();
    write_block(dk_out, C3, st, LDC, k0 + r0, 16 * jd, T_, hs, scale, lane);
    __syncwarp();
    wmma::store_matrix_sync(st, dv[jd], LDC, wmma::mem_row_major);
    __syncwarp();
    write_block(dk_out + C, C3, st, LDC, k0 + r0, 16 * jd, T_, hs, 1.0f, lane);
  }
#else
  __trap();  // bf16 WMMA needs sm_80; the build targets AQ_CUDA_ARCHS (80;90 by default)
#endif
}

// One block per QUERY tile: grid (ceil(T_/BQ), NH, B), kWmmaThreads threads; each warp owns 16 queries and
// walks the key tiles up to the causal limit: S = Q·Kᵀ, dP = dO·Vᵀ, dQ += dS·K.
// dqkv (B,T_,3C), dout (B,T_,C), qkv (B,T_,3C), lse (B,NH,T_), Dbuf (B,NH,T_)
template <int D>
__global__ void __launch_bounds__(kWmmaThreads)
    wmma_backward_q_kernel(aq::bf16* dqkv, const aq::bf16* dout, const aq::bf16* qkv, const float* lse,
                           const float* Dbuf, int T_, int C, int NH, float scale, bool vec) {
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
  using S = WTiles<D>;
  constexpr int BQ = S::BQ, BK = S::BK, LDH = S::LDH, LDC = S::LDC, LDP = S::LDP, JD = D / 16;
  extern __shared__ __align__(128) unsigned char wsmem[];
  bf16_t* Qs = reinterpret_cast<bf16_t*>(wsmem);        // (BQ, D) pitch LDH
  bf16_t* dOs = Qs + BQ * LDH;                          // (BQ, D)
  bf16_t* Ks = dOs + BQ * LDH;                          // (BK, D)
  bf16_t* Vs = Ks + BK * LDH;                           // (BK, D)
  float* Sc = reinterpret_cast<float*>(Vs + BK * LDH);  // per warp: (16, 16) S and dP blocks, pitch LDC
  bf16_t* dSs = reinterpret_cast<bf16_t*>(Sc + kWmmaWarps * 2 * 16 * LDC);  // (BQ, BK) pitch LDP: dS
  float* Ls = reinterpret_cast<float*>(dSs + BQ * LDP);                     // (BQ)
  float* Ds = Ls + BQ;                                                      // (BQ)

  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (latest) query tiles start first
  const int h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = 16 * warp;               // this warp's queries
  float* Ssc = Sc + warp * 2 * 16 * LDC;  // this warp's S block, later the output staging
  float* dPsc = Ssc + 16 * LDC;           // this warp's dP block
  const float sl2 = scale * kLog2e;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const aq::bf16* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const int q0 = qt * BQ;

  load_tile_bf16<D>(Qs, base, C3, q0, BQ, T_, hs, vec);
  load_tile_bf16<D>(dOs, dout + static_cast<int64_t>(b) * T_ * C + h * hs, C, q0, BQ, T_, hs, vec);
  load_stats(Ls, lse + (static_cast<int64_t>(b) * NH + h) * T_, q0, BQ, T_);
  load_stats(Ds, Dbuf + (static_cast<int64_t>(b) * NH + h) * T_, q0, BQ, T_);
  __syncthreads();
  FragA qf[D / 16], dof[D / 16];  // this warp's 16 rows of Q and dO, held for the whole walk
  load_rows(qf, Qs + r0 * LDH, LDH);
  load_rows(dof, dOs + r0 * LDH, LDH);
  FragC dq[JD];  // rows: this warp's queries; columns: dims 16·jd …
#pragma unroll
  for (int jd = 0; jd < JD; ++jd) wmma::fill_fragment(dq[jd], 0.0f);
  const int nk = (min(q0 + BQ, T_) - 1) / BK + 1;
  for (int kt = 0; kt < nk; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // every warp's reads of Ks and Vs of the previous step are done
    load_tile_bf16<D>(Ks, base + C, C3, k0, BK, T_, hs, vec);
    load_tile_bf16<D>(Vs, base + 2 * C, C3, k0, BK, T_, hs, vec);
    __syncthreads();
    for (int j = 0; j < BK / 16; ++j) {  // 16 keys at a time
      FragC s, dp;
      wmma::fill_fragment(s, 0.0f);
      wmma::fill_fragment(dp, 0.0f);
      mma_abt<D / 16>(s, qf, Ks + j * 16 * LDH, LDH);    // S = Q·Kᵀ
      mma_abt<D / 16>(dp, dof, Vs + j * 16 * LDH, LDH);  // dP = dO·Vᵀ
      wmma::store_matrix_sync(Ssc, s, LDC, wmma::mem_row_major);
      wmma::store_matrix_sync(dPsc, dp, LDC, wmma::mem_row_major);
      __syncwarp();
#pragma unroll 2
      for (int idx = lane; idx < 256; idx += 32) {  // ds; masked (key after query) and padding: 0
        const int r = r0 + idx / 16, c = j * 16 + idx % 16, qq = q0 + r, k = k0 + c;
        const float p =
            (qq < T_ && k <= qq) ? exp2f(fmaf(Ssc[(idx / 16) * LDC + idx % 16], sl2, -Ls[r] * kLog2e)) : 0.0f;
        dSs[r * LDP + c] = __float2bfloat16_rn(p * (dPsc[(idx / 16) * LDC + idx % 16] - Ds[r]));
      }
      __syncwarp();  // the block is read before the next one overwrites it; dS is complete after the last
    }
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {  // dQ += dS·K (the scale is applied at the end)
      FragA fds;
      wmma::load_matrix_sync(fds, dSs + r0 * LDP + kk * 16, LDP);
#pragma unroll
      for (int jd = 0; jd < JD; ++jd) {
        FragBRow fb;
        wmma::load_matrix_sync(fb, Ks + kk * 16 * LDH + jd * 16, LDH);
        wmma::mma_sync(dq[jd], fds, fb, dq[jd]);
      }
    }
  }
  aq::bf16* dq_out = dqkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  float* st = Ssc;
#pragma unroll
  for (int jd = 0; jd < JD; ++jd) {
    __syncwarp();
    wmma::store_matrix_sync(st, dq[jd], LDC, wmma::mem_row_major);
    __syncwarp();
    write_block(dq_out, C3, st, LDC, q0 + r0, 16 * jd, T_, hs, scale, lane);
  }
#else
  __trap();  // bf16 WMMA needs sm_80; the build targets AQ_CUDA_ARCHS (80;90 by default)
#endif
}

}  // namespace

template <int D>
void wmma_forward(bf16* out, float* lse, const bf16* qkv, int B, int T_, int C, int NH, float scale) {
  const bool vec = vector_loads<bf16>(C / NH, {qkv});
  const size_t smem = wmma_forward_smem<D>();
  allow_smem<wmma_forward_kernel<D>>(smem);
  const dim3 grid((T_ + WTiles<D>::BQ - 1) / WTiles<D>::BQ, NH, B);
  wmma_forward_kernel<D><<<grid, kWmmaThreads, smem>>>(out, lse, qkv, T_, C, NH, scale, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

template <int D>
void wmma_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, const float* Dbuf, int B, int T_,
                   int C, int NH, float scale) {
  const bool vec = vector_loads<bf16>(C / NH, {qkv, dout});
  const size_t kv_smem = wmma_backward_kv_smem<D>(), q_smem = wmma_backward_q_smem<D>();
  allow_smem<wmma_backward_kv_kernel<D>>(kv_smem);
  allow_smem<wmma_backward_q_kernel<D>>(q_smem);
  const dim3 kv_grid((T_ + WTiles<D>::BK - 1) / WTiles<D>::BK, NH, B);
  wmma_backward_kv_kernel<D><<<kv_grid, kWmmaThreads, kv_smem>>>(dqkv, dout, qkv, lse, Dbuf, T_, C, NH, scale, vec);
  AQ_CUDA_LAUNCH_CHECK();
  const dim3 q_grid((T_ + WTiles<D>::BQ - 1) / WTiles<D>::BQ, NH, B);
  wmma_backward_q_kernel<D><<<q_grid, kWmmaThreads, q_smem>>>(dqkv, dout, qkv, lse, Dbuf, T_, C, NH, scale, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

template void wmma_forward<16>(bf16*, float*, const bf16*, int, int, int, int, float);
template void wmma_forward<32>(bf16*, float*, const bf16*, int, int, int, int, float);
template void wmma_forward<64>(bf16*, float*, const bf16*, int, int, int, int, float);
template void wmma_forward<128>(bf16*, float*, const bf16*, int, int, int, int, float);
template void wmma_backward<16>(bf16*, const bf16*, const bf16*, const float*, const float*, int, int, int, int, float);
template void wmma_backward<32>(bf16*, const bf16*, const bf16*, const float*, const float*, int, int, int, int, float);
template void wmma_backward<64>(bf16*, const bf16*, const bf16*, const float*, const float*, int, int, int, int, float);
template void wmma_backward<128>(bf16*, const bf16*, const bf16*, const float*, const float*, int, int, int, int,
                                 float);

}  // namespace aq::ops::attention_detail
