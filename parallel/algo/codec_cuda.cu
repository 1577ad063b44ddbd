// codec_cuda.cu — GPU encoders and decoders of the cross-centre wire formats (codec.h).
//
// int8 and int4: one thread block of 256 threads per block of 256 values: the block's absmax is reduced in
// shared memory, a non-finite value anywhere in the block makes its scale NaN (as on the CPU), values are
// rounded to nearest even with the same clamp to ±127 (±7), and the residual keeps what was dropped; int4's
// neighbours meet in shared memory to share a byte. bf16: round to nearest
// even per value. The decoders add in fp32.
#include <cuda_runtime.h>

#include <cmath>

#include "ops/cuda/common.cuh"
#include "parallel/algo/codec_cuda.h"

namespace aq::cuda {
namespace {

static_assert(kInt8Block == 256, "one thread per value of a block");
constexpr int kInt8Max = static_cast<int>(codec_qmax(WanCodec::Int8));
constexpr int kInt4Max = static_cast<int>(codec_qmax(WanCodec::Int4));

// x (n), residual (n or null) → scales (nb) and codes; residual ← v − q·scale. int8 (QMAX 127) writes one
// int8 per value; int4 (QMAX 7) packs value 2k into the low nibble of byte k and 2k+1 into the high one.
template <int QMAX>
__global__ void encode_blocks_kernel(const float* x, float* residual, int64_t n, float* scales, uint8_t* codes) {
  __shared__ float amax[kInt8Block];
  __shared__ int8_t qs[kInt8Block];
  const int64_t i = blockIdx.x * static_cast<int64_t>(kInt8Block) + threadIdx.x;
  const bool in = i < n;
  const float v = in ? x[i] + (residual ? residual[i] : 0.0f) : 0.0f;
  amax[threadIdx.x] = fabsf(v);
  const int bad = __syncthreads_or(in && !isfinite(v));
  for (int s = kInt8Block / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) amax[threadIdx.x] = fmaxf(amax[threadIdx.x], amax[threadIdx.x + s]);
    __syncthreads();
  }
  const float m = amax[0] < kTinyBlock ? 0.0f : amax[0];  // as on the CPU: a tiny block is sent as zeros
  const float qmax = static_cast<float>(QMAX);
  const float scale = bad ? __int_as_float(0x7fc00000) : __fdiv_rn(m, qmax);
  const float inv = m > 0 ? __fdiv_rn(qmax, m) : 0.0f;
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
  const int8_t qi = bad || !in ? 0 : static_cast<int8_t>(rintf(fminf(qmax, fmaxf(-qmax, __fmul_rn(v, inv)))));
  if (in && residual) residual[i] = __fsub_rn(v, __fmul_rn(static_cast<float>(qi), scale));
  if (QMAX == kInt8Max) {
    if (in) codes[i] = static_cast<uint8_t>(qi);
    return;
  }
  qs[threadIdx.x] = qi;  // 0 past the end: the high nibble of an odd last value
  __syncthreads();
  if (in && (threadIdx.x & 1) == 0)
    codes[i / 2] = static_cast<uint8_t>((qs[threadIdx.x] & 0xF) | ((qs[threadIdx.x + 1] & 0xF) << 4));
}

__global__ void decode_int8_kernel(const float* scales, const int8_t* q, int64_t n, float* acc, bool add) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float d = __fmul_rn(static_cast<float>(q[i]), scales[i / kInt8Block]);
    acc[i] = add ? __fadd_rn(acc[i], d) : d;
  }
}

__global__ void decode_int4_kernel(const float* scales, const uint8_t* packed, int64_t n, float* acc, bool add) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int nib = (packed[i / 2] >> (4 * (i & 1))) & 0xF;
    const float d = __fmul_rn(static_cast<float>((nib ^ 8) - 8), scales[i / kInt8Block]);
    acc[i] = add ? __fadd_rn(acc[i], d) : d;
  }
}

__global__ void encode_bf16_kernel(const float* x, float* residual, int64_t n, aq::bf16* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = residual ? __fadd_rn(x[i], residual[i]) : x[i];
    out[i] = from_f<aq::bf16>(v);
    if (residual) residual[i] = __fsub_rn(v, to_f(out[i]));
  }
}

__global__ void decode_bf16_kernel(const aq::bf16* in, int64_t n, float* acc, bool add) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc[i] = add ? __fadd_rn(acc[i], to_f(in[i])) : to_f(in[i]);
}

// fp32 "codec": out = x + residual (the residual becomes 0), and acc (+)= in.
__global__ void encode_f32_kernel(const float* x, float* residual, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = residual ? __fadd_rn(x[i], residual[i]) : x[i];
    if (residual) residual[i] = 0.0f;
  }
}

__global__ void decode_f32_kernel(const float* in, int64_t n, float* acc, bool add) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    acc[i] = add ? __fadd_rn(acc[i], in[i]) : in[i];
}

}  // namespace

void codec_encode(WanCodec c, const float* x, float* residual, int64_t n, uint8_t* out) {
  if (n == 0) return;
  switch (c) {
    case WanCodec::None:
      encode_f32_kernel<<<blocks_for(n), kThreads>>>(x, residual, n, reinterpret_cast<float*>(out));
      break;
    case WanCodec::BF16:
      encode_bf16_kernel<<<blocks_for(n), kThreads>>>(x, residual, n, reinterpret_cast<aq::bf16*>(out));
      break;
    case WanCodec::Int8:
    case WanCodec::Int4: {
      const int64_t nb = codec_blocks(n);
      float* scales = reinterpret_cast<float*>(out);
      uint8_t* codes = out + nb * sizeof(float);
      if (c == WanCodec::Int8)
        encode_blocks_kernel<kInt8Max><<<static_cast<unsigned>(nb), kInt8Block>>>(x, residual, n, scales, codes);
      else
        encode_blocks_kernel<kInt4Max><<<static_cast<unsigned>(nb), kInt8Block>>>(x, residual, n, scales, codes);
      break;
    }
  }
  AQ_CUDA_LAUNCH_CHECK();
}

void codec_decode(WanCodec c, const uint8_t* in, int64_t n, float* acc, bool add) {
  if (n == 0) return;
  switch (c) {
    case WanCodec::None:
      decode_f32_kernel<<<blocks_for(n), kThreads>>>(reinterpret_cast<const float*>(in), n, acc, add);
      break;
    case WanCodec::BF16:
      decode_bf16_kernel<<<blocks_for(n), kThreads>>>(reinterpret_cast<const aq::bf16*>(in), n, acc, add);
      break;
    case WanCodec::Int8: {
      const int64_t nb = codec_blocks(n);
      decode_int8_kernel<<<blocks_for(n), kThreads>>>(reinterpret_cast<const float*>(in),
                                                       reinterpret_cast<const int8_t*>(in + nb * sizeof(float)), n,
                                                       acc, add);
      break;
    }
    case WanCodec::Int4: {
      const int64_t nb = codec_blocks(n);
      decode_int4_kernel<<<blocks_for(n), kThreads>>>(reinterpret_cast<const float*>(in), in + nb * sizeof(float), n,
                                                      acc, add);
      break;
    }
  }
  AQ_CUDA_LAUNCH_CHECK();
}

}  // namespace aq::cuda
