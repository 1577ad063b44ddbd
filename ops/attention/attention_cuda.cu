// attention_cuda.cu — causal multi-head attention on CUDA, flash-attention style, forward and backward, for
// float and bf16 storage (all arithmetic in fp32; lse and the backward's row statistics in fp32).
//
// Layout and semantics as attention.h: packed qkv (B,T,3C), head h in columns h·hs … (h+1)·hs−1 of q, k and v,
// causal, scale 1/sqrt(hs), row log-sum-exp lse (B,NH,T) kept for the backward pass; no T×T matrix is stored.
//
// Tiling (hs ≤ 128): the head size is padded with zeros to D ∈ {16, 32, 64, 128}, and a block of 256 threads,
// seen as a 16×16 grid (ty, tx), works on tiles held in shared memory as fp32 (rows padded to D+1 floats so
// that reading one column of many rows hits distinct banks). In every tile product a thread owns rows
// ty, ty+16, … and columns tx, tx+16, …, so the 16 threads sharing a row sit in one half-warp and reduce a
// row with four shuffles.
//  - forward: one block per (query tile, head, batch). The Q tile stays in shared memory; K/V tiles up to the
//    causal limit stream through it with an online softmax (running max and sum per row in registers).
//  - backward: D_i = dO_i·O_i first (one warp per row, into fp32 scratch); then one kernel in which each block
//    owns a KEY tile and walks the query tiles at or after it, accumulating dK and dV in registers, and one
//    kernel in which each block owns a QUERY tile and walks the key tiles up to it, accumulating dQ. Both
//    recompute p = exp(s − lse) from q, k and lse.
// Why it is deterministic: every element of dqkv has exactly one writer (the block owning its tile) and every
// sum runs in a fixed order, so there are no atomics and a run repeats bit for bit.
// Head sizes above 128 take the row kernels at the end of the file (one block per query or key row, the scores
// of that row in shared memory), which are slower but fit any head size.
//
// Grouped-query attention (attention_gqa_*, layout in attention.h): every kernel takes NKV, the kv head count;
// qkv rows are (NH+2·NKV)·hs wide and query head h reads kv head h / (NH/NKV). The dK/dV kernels run one block
// per (key tile or row, KV head, batch) and walk the query heads sharing that kv head one after the other, so
// the sum over the group stays in one block (one writer, fixed order, as above). With NKV = NH every index is
// what it was for multi-head attention. The tensor-core kernels stay multi-head only: GQA with NKV < NH takes
// the FMA tiles (or the row kernels) in both precisions, and GQA with NKV = NH is sent to the multi-head entry.
//
// Tensor cores: bf16 with a head size that is a multiple of 16, up to 128 (GPT-2's 64 among them), takes the
// WMMA kernels of attention_wmma.cu instead (same three passes and the same one-writer, fixed-order
// determinism; 4 warps, each owning 16 rows of a 64-row tile), which run at the bf16 tensor-core rate rather
// than the fp32 FMA rate. Setting AQ_ATTENTION_FMA=1 in the environment (read at each call) sends bf16 back
// to the FMA tiles, for comparisons and tests; float always takes the FMA tiles.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "ops/attention/attention.h"
#include "ops/attention/attention_cuda.cuh"
#include "ops/cuda/common.cuh"

namespace aq::ops {
namespace {

using attention_detail::allow_smem;
using attention_detail::load_stats;
using attention_detail::vector_loads;
using attention_detail::wmma_backward;
using attention_detail::wmma_forward;

// ---- shared helpers ----------------------------------------------------------------------------------------

constexpr int kFlashThreads = 256;  // 16×16: (ty, tx) = (threadIdx.x / 16, threadIdx.x % 16)

// Tile sizes per padded head size D: QF×KF for the forward pass, QB×KB for both backward kernels. Chosen so
// that every kernel needs ≤ 75 KB of shared memory at D = 128 (two blocks fit an A100 SM, three an H100 SM).
template <int D>
struct Tiles {
  static_assert(D == 16 || D == 32 || D == 64 || D == 128, "padded head size");
  static constexpr int QF = 64;
  static constexpr int KF = D == 128 ? 32 : 64;
  static constexpr int QB = D <= 32 ? 64 : 32;
  static constexpr int KB = D <= 64 ? 64 : 32;
  static constexpr int P = D + 1;  // row pitch of a (rows, D) tile, in floats
};

__device__ __forceinline__ float half_warp_max(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float half_warp_sum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// 16 bytes at p (16-byte aligned) as floats: 4 floats or 8 bf16.
__device__ __forceinline__ void load16(float* v, const float* p) {
  const float4 x = *reinterpret_cast<const float4*>(p);
  v[0] = x.x;
  v[1] = x.y;
  v[2] = x.z;
  v[3] = x.w;
}
__device__ __forceinline__ void load16(float* v, const aq::bf16* p) {
  const uint4 x = *reinterpret_cast<const uint4*>(p);
  const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {  // little-endian: the lower address is the low half
    v[2 * k] = __uint_as_float(w[k] << 16);
    v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
  }
}

// dst (rows, D) in shared memory, row pitch D+1, ← rows row0 … row0+rows−1 of a matrix whose row t starts at
// src + t·stride. Zero past row T_ and past column hs, so padded products add nothing and masked probabilities
// never meet uninitialised values (0·NaN would be NaN). vec: hs and stride are multiples of 16/sizeof(T)
// elements and src is 16-byte aligned, so whole 128-bit chunks are either inside column hs or outside it.
template <typename T, int D>
__device__ void load_tile(float* dst, const T* src, int64_t stride, int row0, int rows, int T_, int hs, bool vec) {
  constexpr int P = D + 1;
  if (vec) {
    constexpr int V = 16 / sizeof(T);
    constexpr int NC = D / V;  // chunks per row
    static_assert(D % V == 0, "D holds whole chunks");
    for (int idx = threadIdx.x; idx < rows * NC; idx += blockDim.x) {
      const int r = idx / NC, d0 = (idx % NC) * V;
      float v[V];
      if (row0 + r < T_ && d0 < hs) {
        load16(v, src + (row0 + r) * stride + d0);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) v[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) dst[r * P + d0 + e] = v[e];
    }
  } else {
    for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
      const int r = idx / D, d = idx % D;
      dst[r * P + d] = (row0 + r < T_ && d < hs) ? cuda::to_f(src[(row0 + r) * stride + d]) : 0.0f;
    }
  }
}

// Views of a tile in shared memory (row pitch in floats): Tile reads element (r, c), TileT reads the transpose.
struct Tile {
  const float* p;
  int pitch;
  __device__ __forceinline__ float operator()(int r, int c) const { return p[r * pitch + c]; }
};
struct TileT {
  const float* p;
  int pitch;
  __device__ __forceinline__ float operator()(int r, int c) const { return p[c * pitch + r]; }
};

// acc[i][j] += Σ_{k<n} a(ty + 16i, k) · b(k, tx + 16j): this thread's share of the product of two tiles in
// shared memory; S = Q·Kᵀ is tile_mma(s, hs, ty, tx, Tile{Qs, P}, TileT{Ks, P}).
template <int I, int J, typename A, typename Bm>
__device__ __forceinline__ void tile_mma(float (&acc)[I][J], int n, int ty, int tx, A a, Bm b) {
#pragma unroll 4
  for (int k = 0; k < n; ++k) {
    float av[I], bv[J];
#pragma unroll
    for (int i = 0; i < I; ++i) av[i] = a(ty + 16 * i, k);
#pragma unroll
    for (int j = 0; j < J; ++j) bv[j] = b(k, tx + 16 * j);
#pragma unroll
    for (int i = 0; i < I; ++i)
#pragma unroll
      for (int j = 0; j < J; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

template <int I, int J>
__device__ __forceinline__ void zero(float (&acc)[I][J]) {
#pragma unroll
  for (int i = 0; i < I; ++i)
#pragma unroll
    for (int j = 0; j < J; ++j) acc[i][j] = 0.0f;
}

// Bytes of dynamic shared memory of each flash kernel (layouts in the kernels).
template <int D>
constexpr size_t forward_smem() {
  using S = Tiles<D>;
  return sizeof(float) * (S::QF * S::P + 2 * S::KF * S::P + S::QF * (S::KF + 1));
}
template <int D>
constexpr size_t backward_kv_smem() {
  using S = Tiles<D>;
  return sizeof(float) * (2 * S::KB * S::P + 2 * S::QB * S::P + 2 * S::QB * (S::KB + 1) + 2 * S::QB);
}
template <int D>
constexpr size_t backward_q_smem() {
  using S = Tiles<D>;
  return sizeof(float) * (2 * S::QB * S::P + 2 * S::KB * S::P + S::QB * (S::KB + 1) + 2 * S::QB);
}

// ---- forward -----------------------------------------------------------------------------------------------

// One block per (query tile, head, batch): grid (ceil(T_/QF), NH, B), kFlashThreads threads.
// out (B,T_,C), lse (B,NH,T_), qkv (B,T_,(NH+2·NKV)·hs), C = NH·hs; vec: 128-bit loads are safe (see load_tile)
template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads)
    flash_forward_kernel(T* out, float* lse, const T* qkv, int T_, int C, int NH, int NKV, float scale, bool vec) {
  using S = Tiles<D>;
  constexpr int BQ = S::QF, BK = S::KF, P = S::P, PS = BK + 1;
  constexpr int I = BQ / 16, J = BK / 16, JD = D / 16;
  extern __shared__ float smem[];
  float* Qs = smem;         // (BQ, D) pitch P
  float* Ks = Qs + BQ * P;  // (BK, D) pitch P
  float* Vs = Ks + BK * P;  // (BK, D) pitch P
  float* Ps = Vs + BK * P;  // (BQ, BK) pitch PS: this step's probabilities (unnormalised)

  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (latest) query tiles start first
  const int h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t C3 = static_cast<int64_t>(NH + 2 * NKV) * hs;        // row stride of qkv (3C for multi-head)
  const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;  // q of row 0
  const T* kbase = qkv + static_cast<int64_t>(b) * T_ * C3 + C + (h / (NH / NKV)) * hs;  // k of row 0; v +NKV·hs
  const int q0 = qt * BQ;

  load_tile<T, D>(Qs, base, C3, q0, BQ, T_, hs, vec);
  float m[I], l[I], o[I][JD];
#pragma unroll
  for (int i = 0; i < I; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
  }
  zero(o);
  // Key tiles up to the causal limit of the last valid query of this tile. Tile 0 holds key 0, which every
  // query sees, so after it every row's running max is finite and exp(m_old − m_new) is never NaN.
  const int nk = (min(q0 + BQ, T_) - 1) / BK + 1;
  for (int kt = 0; kt < nk; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // the previous step's reads of Ks, Vs and Ps are done
    load_tile<T, D>(Ks, kbase, C3, k0, BK, T_, hs, vec);
    load_tile<T, D>(Vs, kbase + NKV * hs, C3, k0, BK, T_, hs, vec);
    __syncthreads();
    float s[I][J];
    zero(s);
    tile_mma(s, hs, ty, tx, Tile{Qs, P}, TileT{Ks, P});  // S = Q·Kᵀ
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const int q = q0 + ty + 16 * i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        const int k = k0 + tx + 16 * j;
        s[i][j] = (k <= q && k < T_) ? s[i][j] * scale : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = fmaxf(m[i], half_warp_max(mx));
      const float corr = expf(m[i] - mx);  // 0 on the first tile (m = −inf)
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        s[i][j] = expf(s[i][j] - mx);  // masked: exp(−inf) = 0
        sum += s[i][j];
        Ps[(ty + 16 * i) * PS + tx + 16 * j] = s[i][j];
      }
      l[i] = l[i] * corr + half_warp_sum(sum);
      m[i] = mx;
#pragma unroll
      for (int jd = 0; jd < JD; ++jd) o[i][jd] *= corr;
    }
    __syncthreads();
    tile_mma(o, BK, ty, tx, Tile{Ps, PS}, Tile{Vs, P});  // O += P·V
  }
#pragma unroll
  for (int i = 0; i < I; ++i) {
    const int q = q0 + ty + 16 * i;
    if (q >= T_) continue;
    const float inv = 1.0f / l[i];
    T* orow = out + (static_cast<int64_t>(b) * T_ + q) * C + h * hs;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) {
      const int d = tx + 16 * jd;
      if (d < hs) orow[d] = cuda::from_f<T>(o[i][jd] * inv);
    }
    if (tx == 0) lse[(static_cast<int64_t>(b) * NH + h) * T_ + q] = m[i] + logf(l[i]);
  }
}

// ---- backward ----------------------------------------------------------------------------------------------

// Dbuf (B,NH,T_) = Σ_{c<hs} dout·out over each head's columns (= Σ_t2 p·dp of the row); one warp per row,
// grid ceil(B·NH·T_ / 8) blocks of 256 threads. dout (B,T_,C), out (B,T_,C)
template <typename T>
__global__ void attention_backward_D_kernel(float* Dbuf, const T* dout, const T* out, int B, int T_, int C, int NH) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;  // (b, h, t)
  const int lane = threadIdx.x % 32;
  if (row >= static_cast<int64_t>(B) * NH * T_) return;  // the whole warp leaves together
  const int t = static_cast<int>(row % T_);
  const int h = static_cast<int>((row / T_) % NH);
  const int64_t b = row / (static_cast<int64_t>(T_) * NH);
  const int hs = C / NH;
  const int64_t off = (b * T_ + t) * C + h * hs;
  float d = 0.0f;
  for (int i = lane; i < hs; i += 32) d += cuda::to_f(dout[off + i]) * cuda::to_f(out[off + i]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
  if (lane == 0) Dbuf[row] = d;
}

// Recomputes this step's p = exp(s·scale − lse) and ds = p·(dp − D) for a (query tile, key tile) pair, with
// s = q·k and dp = dO·v; rows are queries ty+16i, columns keys tx+16j. Masked (key after query) and padding
// entries are exactly 0.
template <int D, int I, int J>
__device__ __forceinline__ void recompute_p_ds(float (&p)[I][J], float (&ds)[I][J], const float* Qs, const float* dOs,
                                               const float* Ks, const float* Vs, const float* Ls, const float* Ds,
                                               int q0, int k0, int T_, int hs, float scale, int ty, int tx) {
  constexpr int P = D + 1;
  zero(p);
  zero(ds);
  tile_mma(p, hs, ty, tx, Tile{Qs, P}, TileT{Ks, P});    // S = Q·Kᵀ
  tile_mma(ds, hs, ty, tx, Tile{dOs, P}, TileT{Vs, P});  // dP = dO·Vᵀ
#pragma unroll
  for (int i = 0; i < I; ++i) {
    const int r = ty + 16 * i, q = q0 + r;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int k = k0 + tx + 16 * j;
      const float pij = (q < T_ && k <= q) ? expf(p[i][j] * scale - Ls[r]) : 0.0f;
      p[i][j] = pij;
      ds[i][j] = pij * (ds[i][j] - Ds[r]);
    }
  }
}

// One block per KEY tile and kv head: grid (ceil(T_/KB), NKV, B), kFlashThreads threads. Walks the query tiles at
// or after the key tile (causal) of each query head sharing the kv head, in head order, and writes dK and dV of
// its keys (columns C… and C+NKV·hs… of dqkv).
// dqkv (B,T_,(NH+2·NKV)·hs), dout (B,T_,C), qkv (B,T_,(NH+2·NKV)·hs), lse (B,NH,T_), Dbuf (B,NH,T_); C = NH·hs
template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads)
    flash_backward_kv_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Dbuf, int T_, int C,
                             int NH, int NKV, float scale, bool vec) {
  using S = Tiles<D>;
  constexpr int BQ = S::QB, BK = S::KB, P = S::P, PS = BK + 1;
  constexpr int IQ = BQ / 16, JK = BK / 16, IK = BK / 16, JD = D / 16;
  extern __shared__ float smem[];
  float* Ks = smem;           // (BK, D) pitch P
  float* Vs = Ks + BK * P;    // (BK, D)
  float* Qs = Vs + BK * P;    // (BQ, D)
  float* dOs = Qs + BQ * P;   // (BQ, D)
  float* Ps = dOs + BQ * P;   // (BQ, BK) pitch PS
  float* dSs = Ps + BQ * PS;  // (BQ, BK) pitch PS
  float* Ls = dSs + BQ * PS;  // (BQ) lse of the query tile
  float* Ds = Ls + BQ;        // (BQ) D of the query tile

  const int kt = blockIdx.x;  // the earliest key tiles have the most query tiles: they start first
  const int kh = blockIdx.y, b = blockIdx.z, hs = C / NH, group = NH / NKV;  // kv head kh serves heads kh·group …
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t C3 = static_cast<int64_t>(NH + 2 * NKV) * hs;
  const T* kbase = qkv + static_cast<int64_t>(b) * T_ * C3 + C + kh * hs;  // k of row 0; v at +NKV·hs
  const int k0 = kt * BK;

  load_tile<T, D>(Ks, kbase, C3, k0, BK, T_, hs, vec);
  load_tile<T, D>(Vs, kbase + NKV * hs, C3, k0, BK, T_, hs, vec);
  float dk[IK][JD], dv[IK][JD];  // rows: keys ty+16i; columns: dims tx+16j
  zero(dk);
  zero(dv);
  const int nq = (T_ + BQ - 1) / BQ;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {  // the query heads sharing this kv head, in order
    const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
    const T* dbase = dout + static_cast<int64_t>(b) * T_ * C + h * hs;
    const float* lrow = lse + (static_cast<int64_t>(b) * NH + h) * T_;
    const float* drow = Dbuf + (static_cast<int64_t>(b) * NH + h) * T_;
    for (int qt = k0 / BQ; qt < nq; ++qt) {  // queries before k0 see none of these keys
      const int q0 = qt * BQ;
      __syncthreads();  // the previous step's reads of Qs, dOs, Ps, dSs, Ls and Ds are done
      load_tile<T, D>(Qs, base, C3, q0, BQ, T_, hs, vec);
      load_tile<T, D>(dOs, dbase, C, q0, BQ, T_, hs, vec);
      load_stats(Ls, lrow, q0, BQ, T_);
      load_stats(Ds, drow, q0, BQ, T_);
      __syncthreads();
      float p[IQ][JK], ds[IQ][JK];
      recompute_p_ds<D>(p, ds, Qs, dOs, Ks, Vs, Ls, Ds, q0, k0, T_, hs, scale, ty, tx);
#pragma unroll
      for (int i = 0; i < IQ; ++i)
#pragma unroll
        for (int j = 0; j < JK; ++j) {
          Ps[(ty + 16 * i) * PS + tx + 16 * j] = p[i][j];
          dSs[(ty + 16 * i) * PS + tx + 16 * j] = ds[i][j];
        }
      __syncthreads();
      // the scale of dK is applied once, at the end
      tile_mma(dv, BQ, ty, tx, TileT{Ps, PS}, Tile{dOs, P});  // dV += Pᵀ·dO
      tile_mma(dk, BQ, ty, tx, TileT{dSs, PS}, Tile{Qs, P});  // dK += dSᵀ·Q
    }
  }
#pragma unroll
  for (int i = 0; i < IK; ++i) {
    const int k = k0 + ty + 16 * i;
    if (k >= T_) continue;
    T* dkrow = dqkv + (static_cast<int64_t>(b) * T_ + k) * C3 + C + kh * hs;
    T* dvrow = dkrow + NKV * hs;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) {
      const int d = tx + 16 * jd;
      if (d < hs) {
        dkrow[d] = cuda::from_f<T>(dk[i][jd] * scale);
        dvrow[d] = cuda::from_f<T>(dv[i][jd]);
      }
    }
  }
}

// One block per QUERY tile: grid (ceil(T_/QB), NH, B), kFlashThreads threads. Walks the key tiles (of the
// head's kv head) up to the causal limit and writes dQ of its queries (columns 0… of dqkv).
// dqkv (B,T_,(NH+2·NKV)·hs), dout (B,T_,C), qkv (B,T_,(NH+2·NKV)·hs), lse (B,NH,T_), Dbuf (B,NH,T_); C = NH·hs
template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads)
    flash_backward_q_kernel(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Dbuf, int T_, int C,
                            int NH, int NKV, float scale, bool vec) {
  using S = Tiles<D>;
  constexpr int BQ = S::QB, BK = S::KB, P = S::P, PS = BK + 1;
  constexpr int IQ = BQ / 16, JK = BK / 16, JD = D / 16;
  extern __shared__ float smem[];
  float* Qs = smem;           // (BQ, D) pitch P
  float* dOs = Qs + BQ * P;   // (BQ, D)
  float* Ks = dOs + BQ * P;   // (BK, D)
  float* Vs = Ks + BK * P;    // (BK, D)
  float* dSs = Vs + BK * P;   // (BQ, BK) pitch PS
  float* Ls = dSs + BQ * PS;  // (BQ)
  float* Ds = Ls + BQ;        // (BQ)

  const int qt = gridDim.x - 1 - blockIdx.x;  // the longest (latest) query tiles start first
  const int h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
  const int64_t C3 = static_cast<int64_t>(NH + 2 * NKV) * hs;
  const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const T* kbase = qkv + static_cast<int64_t>(b) * T_ * C3 + C + (h / (NH / NKV)) * hs;  // k of row 0; v +NKV·hs
  const int q0 = qt * BQ;

  load_tile<T, D>(Qs, base, C3, q0, BQ, T_, hs, vec);
  load_tile<T, D>(dOs, dout + static_cast<int64_t>(b) * T_ * C + h * hs, C, q0, BQ, T_, hs, vec);
  load_stats(Ls, lse + (static_cast<int64_t>(b) * NH + h) * T_, q0, BQ, T_);
  load_stats(Ds, Dbuf + (static_cast<int64_t>(b) * NH + h) * T_, q0, BQ, T_);
  float dq[IQ][JD];  // rows: queries ty+16i; columns: dims tx+16j
  zero(dq);
  const int nk = (min(q0 + BQ, T_) - 1) / BK + 1;
  for (int kt = 0; kt < nk; ++kt) {
    const int k0 = kt * BK;
    __syncthreads();  // the previous step's reads of Ks, Vs and dSs are done
    load_tile<T, D>(Ks, kbase, C3, k0, BK, T_, hs, vec);
    load_tile<T, D>(Vs, kbase + NKV * hs, C3, k0, BK, T_, hs, vec);
    __syncthreads();
    float p[IQ][JK], ds[IQ][JK];
    recompute_p_ds<D>(p, ds, Qs, dOs, Ks, Vs, Ls, Ds, q0, k0, T_, hs, scale, ty, tx);
#pragma unroll
    for (int i = 0; i < IQ; ++i)
#pragma unroll
      for (int j = 0; j < JK; ++j) dSs[(ty + 16 * i) * PS + tx + 16 * j] = ds[i][j];
    __syncthreads();
    tile_mma(dq, BK, ty, tx, Tile{dSs, PS}, Tile{Ks, P});  // dQ += dS·K
  }
#pragma unroll
  for (int i = 0; i < IQ; ++i) {
    const int q = q0 + ty + 16 * i;
    if (q >= T_) continue;
    T* dqrow = dqkv + (static_cast<int64_t>(b) * T_ + q) * C3 + h * hs;
#pragma unroll
    for (int jd = 0; jd < JD; ++jd) {
      const int d = tx + 16 * jd;
      if (d < hs) dqrow[d] = cuda::from_f<T>(dq[i][jd] * scale);
    }
  }
}

// ---- row kernels: the fallback for head sizes above 128 ----------------------------------------------------

constexpr int kRowThreads = 128;
constexpr int kRowWarps = kRowThreads / 32;

template <typename Op>
__device__ __forceinline__ float warp_all(float v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Dot product of two hs-vectors by one warp; the result is valid in every lane.
template <typename A, typename Bv>
__device__ __forceinline__ float warp_dot(const A* a, const Bv* b, int hs, int lane) {
  float d = 0.0f;
  for (int i = lane; i < hs; i += 32) d += cuda::to_f(a[i]) * cuda::to_f(b[i]);
  return warp_all(d, cuda::SumOp{});
}

// Block-wide reduction whose result every thread receives; red holds kRowWarps floats of shared memory.
template <typename Op>
__device__ float block_all(float* red, float v, Op op) {
  v = warp_all(v, op);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = red[0];
  for (int w = 1; w < kRowWarps; ++w) r = op(r, red[w]);
  __syncthreads();  // red may be reused at once
  return r;
}

// One block per query row: grid (T_, NH, B), kRowThreads threads, T_ floats of dynamic shared memory.
// out (B,T_,C), lse (B,NH,T_), qkv (B,T_,(NH+2·NKV)·hs); C = NH·hs
template <typename T>
__global__ void row_forward_kernel(T* out, float* lse, const T* qkv, int T_, int C, int NH, int NKV, float scale) {
  extern __shared__ float s[];  // scores of this query row, T_ values
  __shared__ float red[kRowWarps];
  const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = static_cast<int64_t>(NH + 2 * NKV) * hs;
  const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const T* kbase = qkv + static_cast<int64_t>(b) * T_ * C3 + C + (h / (NH / NKV)) * hs;  // k of row 0
  const T* vbase = kbase + NKV * hs;                                                     // v of row 0
  const T* q = base + t * C3;
  for (int t2 = warp; t2 <= t; t2 += kRowWarps) {
    const float d = warp_dot(q, kbase + t2 * C3, hs, lane);
    if (lane == 0) s[t2] = d * scale;
  }
  __syncthreads();
  float m = -INFINITY;
  for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) m = fmaxf(m, s[t2]);
  m = block_all(red, m, cuda::MaxOp{});
  float sum = 0.0f;
  for (int t2 = threadIdx.x; t2 <= t; t2 += blockDim.x) {
    const float e = expf(s[t2] - m);
    s[t2] = e;
    sum += e;
  }
  sum = block_all(red, sum, cuda::SumOp{});  // its first barrier also publishes s
  for (int i = threadIdx.x; i < hs; i += blockDim.x) {
    float acc = 0.0f;
    for (int t2 = 0; t2 <= t; ++t2) acc += s[t2] * cuda::to_f(vbase[t2 * C3 + i]);
    out[(static_cast<int64_t>(b) * T_ + t) * C + h * hs + i] = cuda::from_f<T>(acc / sum);
  }
  if (threadIdx.x == 0) lse[(static_cast<int64_t>(b) * NH + h) * T_ + t] = m + logf(sum);
}

// Per query row t: d(q_t) = scale · Σ_t2 ds(t,t2) · k_t2 with ds = p·(dO·v_t2 − D_t). Grid (T_, NH, B),
// kRowThreads threads, T_ floats of dynamic shared memory.
// dqkv (B,T_,(NH+2·NKV)·hs), Dbuf (B,NH,T_), dout (B,T_,C), qkv (B,T_,(NH+2·NKV)·hs), lse (B,NH,T_)
template <typename T>
__global__ void row_backward_q_kernel(T* dqkv, const float* Dbuf, const T* dout, const T* qkv, const float* lse, int T_,
                                      int C, int NH, int NKV, float scale) {
  extern __shared__ float ds[];
  const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z, hs = C / NH;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = static_cast<int64_t>(NH + 2 * NKV) * hs;
  const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
  const T* kbase = qkv + static_cast<int64_t>(b) * T_ * C3 + C + (h / (NH / NKV)) * hs;  // k of row 0
  const T* vbase = kbase + NKV * hs;                                                     // v of row 0
  const T* q = base + t * C3;
  const T* dO = dout + (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
  const int64_t stat = (static_cast<int64_t>(b) * NH + h) * T_ + t;
  const float D = Dbuf[stat], l = lse[stat];
  for (int t2 = warp; t2 <= t; t2 += kRowWarps) {
    const float sc = warp_dot(q, kbase + t2 * C3, hs, lane) * scale;
    const float dp = warp_dot(dO, vbase + t2 * C3, hs, lane);
    if (lane == 0) ds[t2] = expf(sc - l) * (dp - D);
  }
  __syncthreads();
  T* dq = dqkv + static_cast<int64_t>(b) * T_ * C3 + t * C3 + h * hs;
  for (int i = threadIdx.x; i < hs; i += blockDim.x) {
    float acc = 0.0f;
    for (int t2 = 0; t2 <= t; ++t2) acc += ds[t2] * cuda::to_f(kbase[t2 * C3 + i]);
    dq[i] = cuda::from_f<T>(acc * scale);
  }
}

// Per key row t2: d(k_t2) = scale · Σ_{t≥t2} ds(t,t2) · q_t and d(v_t2) = Σ_{t≥t2} p(t,t2) · dO_t, summed over
// the query heads sharing the kv head. Grid (T_, NKV, B), kRowThreads threads, 2·T_ floats of dynamic shared
// memory, plus 2·hs (fp32 sums over the group's heads) when NKV < NH.
// dqkv (B,T_,(NH+2·NKV)·hs), Dbuf (B,NH,T_), dout (B,T_,C), qkv (B,T_,(NH+2·NKV)·hs), lse (B,NH,T_)
template <typename T>
__global__ void row_backward_kv_kernel(T* dqkv, const float* Dbuf, const T* dout, const T* qkv, const float* lse,
                                       int T_, int C, int NH, int NKV, float scale) {
  extern __shared__ float sh[];  // p (T_) then ds (T_), then the group sums of d(k) and d(v) (hs each)
  const int t2 = blockIdx.x, kh = blockIdx.y, b = blockIdx.z, hs = C / NH, group = NH / NKV;
  float* p = sh;
  float* ds = sh + T_;
  float* acc_k = ds + T_;
  float* acc_v = acc_k + hs;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t C3 = static_cast<int64_t>(NH + 2 * NKV) * hs;
  const T* k = qkv + static_cast<int64_t>(b) * T_ * C3 + t2 * C3 + C + kh * hs;
  const T* v = k + NKV * hs;
  T* dk = dqkv + static_cast<int64_t>(b) * T_ * C3 + t2 * C3 + C + kh * hs;
  T* dv = dk + NKV * hs;
  for (int h = kh * group; h < (kh + 1) * group; ++h) {  // the query heads sharing this kv head, in order
    const T* base = qkv + static_cast<int64_t>(b) * T_ * C3 + h * hs;
    __syncthreads();  // the previous head's reads of p and ds are done
    for (int t = t2 + warp; t < T_; t += kRowWarps) {
      const int64_t stat = (static_cast<int64_t>(b) * NH + h) * T_ + t;
      const float sc = warp_dot(base + t * C3, k, hs, lane) * scale;
      const T* dO = dout + (static_cast<int64_t>(b) * T_ + t) * C + h * hs;
      const float dp = warp_dot(dO, v, hs, lane);
      if (lane == 0) {
        const float pt = expf(sc - lse[stat]);
        p[t] = pt;
        ds[t] = pt * (dp - Dbuf[stat]);
      }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {  // each thread owns its dims i, so acc needs no barrier
      float ak = 0.0f, av = 0.0f;
      for (int t = t2; t < T_; ++t) {
        ak += ds[t] * cuda::to_f(base[t * C3 + i]);
        av += p[t] * cuda::to_f(dout[(static_cast<int64_t>(b) * T_ + t) * C + h * hs + i]);
      }
      if (group > 1) {  // multi-head attention writes at once and never touches acc (no shared memory for it)
        const bool first = h == kh * group, last = h == (kh + 1) * group - 1;
        ak += first ? 0.0f : acc_k[i];
        av += first ? 0.0f : acc_v[i];
        if (!last) {
          acc_k[i] = ak;
          acc_v[i] = av;
          continue;
        }
      }
      dk[i] = cuda::from_f<T>(ak * scale);
      dv[i] = cuda::from_f<T>(av);
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------------------

constexpr int kMaxFlashHead = 128;

// The row kernels hold a row's scores in shared memory (48 KiB by default): T_ floats forward and for dQ, 2·T_ for
// dK/dV, plus 2·hs for the group sums of grouped-query attention.
void check_row_shape(int T_, int hs, int group) {
  const int limit = group > 1 ? 6144 - hs : 6144;
  AQ_CHECK(T_ <= limit, "CUDA attention with head size ", hs, " > ", kMaxFlashHead,
           " holds a row of scores in shared memory: sequence length ", T_, " exceeds ", limit,
           "; lower --seq or use head size ≤ ", kMaxFlashHead);
}

template <typename T, int D>
void flash_forward(T* out, float* lse, const T* qkv, int B, int T_, int C, int NH, int NKV, float scale) {
  const bool vec = vector_loads<T>(C / NH, {qkv});
  const size_t smem = forward_smem<D>();
  allow_smem<flash_forward_kernel<T, D>>(smem);
  const dim3 grid((T_ + Tiles<D>::QF - 1) / Tiles<D>::QF, NH, B);
  flash_forward_kernel<T, D><<<grid, kFlashThreads, smem>>>(out, lse, qkv, T_, C, NH, NKV, scale, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

template <typename T, int D>
void flash_backward(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Dbuf, int B, int T_, int C,
                    int NH, int NKV, float scale) {
  const bool vec = vector_loads<T>(C / NH, {qkv, dout});
  const size_t kv_smem = backward_kv_smem<D>(), q_smem = backward_q_smem<D>();
  allow_smem<flash_backward_kv_kernel<T, D>>(kv_smem);
  allow_smem<flash_backward_q_kernel<T, D>>(q_smem);
  const dim3 kv_grid((T_ + Tiles<D>::KB - 1) / Tiles<D>::KB, NKV, B);
  flash_backward_kv_kernel<T, D>
      <<<kv_grid, kFlashThreads, kv_smem>>>(dqkv, dout, qkv, lse, Dbuf, T_, C, NH, NKV, scale, vec);
  AQ_CUDA_LAUNCH_CHECK();
  const dim3 q_grid((T_ + Tiles<D>::QB - 1) / Tiles<D>::QB, NH, B);
  flash_backward_q_kernel<T, D>
      <<<q_grid, kFlashThreads, q_smem>>>(dqkv, dout, qkv, lse, Dbuf, T_, C, NH, NKV, scale, vec);
  AQ_CUDA_LAUNCH_CHECK();
}

// Whether bf16 attention is sent to the FMA tiles instead of the tensor cores: AQ_ATTENTION_FMA set to
// anything but "" or "0". Read at each call (one getenv next to several kernel launches), so a test can run
// both paths in one process.
bool fma_forced() {
  const char* e = std::getenv("AQ_ATTENTION_FMA");
  return e != nullptr && e[0] != '\0' && std::strcmp(e, "0") != 0;
}

// The tensor-core kernels take bf16 with head sizes that are whole 16-column fragments, up to 128.
template <typename T>
bool use_wmma(int hs) {
  return std::is_same_v<T, bf16> && hs % 16 == 0 && hs <= kMaxFlashHead && !fma_forced();
}

// The FMA flash tiles (hs ≤ 128) or the row kernels, for NKV kv heads (NKV = NH: multi-head attention).
// out (B,T_,C), lse (B,NH,T_), qkv (B,T_,(NH+2·NKV)·hs); C = NH·hs
template <typename T>
void fma_forward(T* out, float* lse, const T* qkv, int B, int T_, int C, int NH, int NKV, float scale) {
  const int hs = C / NH;
  if (hs <= 16) {
    flash_forward<T, 16>(out, lse, qkv, B, T_, C, NH, NKV, scale);
  } else if (hs <= 32) {
    flash_forward<T, 32>(out, lse, qkv, B, T_, C, NH, NKV, scale);
  } else if (hs <= 64) {
    flash_forward<T, 64>(out, lse, qkv, B, T_, C, NH, NKV, scale);
  } else if (hs <= kMaxFlashHead) {
    flash_forward<T, 128>(out, lse, qkv, B, T_, C, NH, NKV, scale);
  } else {
    check_row_shape(T_, hs, NH / NKV);
    row_forward_kernel<T><<<dim3(T_, NH, B), kRowThreads, T_ * sizeof(float)>>>(out, lse, qkv, T_, C, NH, NKV, scale);
    AQ_CUDA_LAUNCH_CHECK();
  }
}

// dqkv (B,T_,(NH+2·NKV)·hs) overwritten; dout (B,T_,C), qkv, lse (B,NH,T_), Dbuf (B,NH,T_); C = NH·hs
template <typename T>
void fma_backward(T* dqkv, const T* dout, const T* qkv, const float* lse, const float* Dbuf, int B, int T_, int C,
                  int NH, int NKV, float scale) {
  const int hs = C / NH;
  if (hs <= 16) {
    flash_backward<T, 16>(dqkv, dout, qkv, lse, Dbuf, B, T_, C, NH, NKV, scale);
  } else if (hs <= 32) {
    flash_backward<T, 32>(dqkv, dout, qkv, lse, Dbuf, B, T_, C, NH, NKV, scale);
  } else if (hs <= 64) {
    flash_backward<T, 64>(dqkv, dout, qkv, lse, Dbuf, B, T_, C, NH, NKV, scale);
  } else if (hs <= kMaxFlashHead) {
    flash_backward<T, 128>(dqkv, dout, qkv, lse, Dbuf, B, T_, C, NH, NKV, scale);
  } else {
    const int group = NH / NKV;
    check_row_shape(T_, hs, group);
    row_backward_q_kernel<T>
        <<<dim3(T_, NH, B), kRowThreads, T_ * sizeof(float)>>>(dqkv, Dbuf, dout, qkv, lse, T_, C, NH, NKV, scale);
    AQ_CUDA_LAUNCH_CHECK();
    const size_t kv_smem =
        (2 * static_cast<size_t>(T_) + (group > 1 ? 2 * static_cast<size_t>(hs) : 0)) * sizeof(float);
    row_backward_kv_kernel<T>
        <<<dim3(T_, NKV, B), kRowThreads, kv_smem>>>(dqkv, Dbuf, dout, qkv, lse, T_, C, NH, NKV, scale);
    AQ_CUDA_LAUNCH_CHECK();
  }
}

// Dbuf (B,NH,T_) = rowsum(dout·out) per head, the backward's D; dout, out (B,T_,C)
template <typename T>
void backward_D(float* Dbuf, const T* dout, const T* out, int B, int T_, int C, int NH) {
  const int64_t rows = static_cast<int64_t>(B) * NH * T_;
  attention_backward_D_kernel<T><<<static_cast<unsigned>((rows + 7) / 8), 256>>>(Dbuf, dout, out, B, T_, C, NH);
  AQ_CUDA_LAUNCH_CHECK();
}

// out (B,T_,C), lse (B,NH,T_), qkv (B,T_,3C)
template <typename T>
void attention_forward(T* out, float* lse, const T* qkv, int B, int T_, int C, int NH) {
  AQ_CHECK(NH >= 1 && C % NH == 0, "attention: width C=", C, " is not a multiple of the head count ", NH);
  if (B == 0 || T_ == 0) return;
  const int hs = C / NH;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  if constexpr (std::is_same_v<T, bf16>) {
    if (use_wmma<T>(hs)) {
      if (hs <= 16) {
        wmma_forward<16>(out, lse, qkv, B, T_, C, NH, scale);
      } else if (hs <= 32) {
        wmma_forward<32>(out, lse, qkv, B, T_, C, NH, scale);
      } else if (hs <= 64) {
        wmma_forward<64>(out, lse, qkv, B, T_, C, NH, scale);
      } else {
        wmma_forward<128>(out, lse, qkv, B, T_, C, NH, scale);
      }
      return;
    }
  }
  fma_forward(out, lse, qkv, B, T_, C, NH, NH, scale);
}

// dqkv (B,T_,3C) overwritten; dout (B,T_,C), qkv (B,T_,3C), out (B,T_,C), lse (B,NH,T_)
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse, int B, int T_, int C,
                        int NH) {
  AQ_CHECK(NH >= 1 && C % NH == 0, "attention: width C=", C, " is not a multiple of the head count ", NH);
  if (B == 0 || T_ == 0) return;
  const int hs = C / NH;
  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  cuda::DeviceScratch D(static_cast<size_t>(B) * NH * T_ * sizeof(float));  // D (B,NH,T_)
  backward_D(D.as<float>(), dout, out, B, T_, C, NH);
  if constexpr (std::is_same_v<T, bf16>) {
    if (use_wmma<T>(hs)) {
      if (hs <= 16) {
        wmma_backward<16>(dqkv, dout, qkv, lse, D.as<float>(), B, T_, C, NH, scale);
      } else if (hs <= 32) {
        wmma_backward<32>(dqkv, dout, qkv, lse, D.as<float>(), B, T_, C, NH, scale);
      } else if (hs <= 64) {
        wmma_backward<64>(dqkv, dout, qkv, lse, D.as<float>(), B, T_, C, NH, scale);
      } else {
        wmma_backward<128>(dqkv, dout, qkv, lse, D.as<float>(), B, T_, C, NH, scale);
      }
      return;
    }
  }
  fma_backward(dqkv, dout, qkv, lse, D.as<float>(), B, T_, C, NH, NH, scale);
}

void check_gqa_shape(int NH, int NKV, int hs) {
  AQ_CHECK(NH >= 1 && NKV >= 1 && hs >= 1, "attention: head counts NH=", NH, ", NKV=", NKV, " and head size ", hs,
           " must be >= 1");
  AQ_CHECK(NH % NKV == 0, "attention: query heads NH=", NH, " are not a multiple of the key/value heads NKV=", NKV);
}

// Grouped-query attention: out (B,T_,NH·hs), lse (B,NH,T_), qkv (B,T_,(NH+2·NKV)·hs). NKV = NH is multi-head
// attention and takes the multi-head entry (tensor cores included); NKV < NH takes the FMA tiles.
template <typename T>
void attention_gqa_forward(T* out, float* lse, const T* qkv, int B, int T_, int NH, int NKV, int hs) {
  check_gqa_shape(NH, NKV, hs);
  if (NKV == NH) return attention_forward(out, lse, qkv, B, T_, NH * hs, NH);
  if (B == 0 || T_ == 0) return;
  fma_forward(out, lse, qkv, B, T_, NH * hs, NH, NKV, 1.0f / sqrtf(static_cast<float>(hs)));
}

// dqkv (B,T_,(NH+2·NKV)·hs) overwritten; dout (B,T_,NH·hs), qkv, out (B,T_,NH·hs), lse (B,NH,T_)
template <typename T>
void attention_gqa_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const float* lse, int B, int T_, int NH,
                            int NKV, int hs) {
  check_gqa_shape(NH, NKV, hs);
  if (NKV == NH) return attention_backward(dqkv, dout, qkv, out, lse, B, T_, NH * hs, NH);
  if (B == 0 || T_ == 0) return;
  cuda::DeviceScratch D(static_cast<size_t>(B) * NH * T_ * sizeof(float));  // D (B,NH,T_)
  backward_D(D.as<float>(), dout, out, B, T_, NH * hs, NH);
  fma_backward(dqkv, dout, qkv, lse, D.as<float>(), B, T_, NH * hs, NH, NKV, 1.0f / sqrtf(static_cast<float>(hs)));
}

template <typename T>
void add_kernels(Registry& r) {
  r.add<typename Attention<T>::Forward>("attention_forward", Device::CUDA, dtype_of<T>(), &attention_forward<T>);
  r.add<typename Attention<T>::Backward>("attention_backward", Device::CUDA, dtype_of<T>(), &attention_backward<T>);
  r.add<typename Attention<T>::ForwardGqa>("attention_gqa_forward", Device::CUDA, dtype_of<T>(),
                                           &attention_gqa_forward<T>);
  r.add<typename Attention<T>::BackwardGqa>("attention_gqa_backward", Device::CUDA, dtype_of<T>(),
                                            &attention_gqa_backward<T>);
}

}  // namespace

void register_attention_cuda(Registry& r) {
  add_kernels<float>(r);
  add_kernels<bf16>(r);
}

}  // namespace aq::ops
