// codec.cpp — the CPU encoders and decoders of codec.h. Plain loops over contiguous arrays written so that GCC
// vectorises them at -O3 (the per-block absmax, the scaling and the conversions).
#include "parallel/algo/codec.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "runtime/bf16.h"
#include "runtime/error.h"

namespace aq {

WanCodec wan_codec_from_name(const std::string& name) {
  if (name == "none") return WanCodec::None;
  if (name == "bf16") return WanCodec::BF16;
  if (name == "int8") return WanCodec::Int8;
  if (name == "int4") return WanCodec::Int4;
  fail(str("--wan-compress must be none, bf16, int8 or int4 (got \"", name, "\")"));
}

const char* wan_codec_name(WanCodec c) {
  switch (c) {
    case WanCodec::None: return "none";
    case WanCodec::BF16: return "bf16";
    case WanCodec::Int8: return "int8";
    case WanCodec::Int4: return "int4";
  }
  return "?";
}

bool is_wan_codec_name(const std::string& name) {
  for (int k = 0; k < kWanCodecs; ++k)
    if (name == wan_codec_name(static_cast<WanCodec>(k))) return true;
  return false;
}

size_t codec_bytes(WanCodec c, int64_t n) {
  const size_t un = static_cast<size_t>(n);
  switch (c) {
    case WanCodec::None: return un * sizeof(float);
    case WanCodec::BF16: return un * sizeof(bf16);
    case WanCodec::Int8: return static_cast<size_t>(codec_blocks(n)) * sizeof(float) + un;
    case WanCodec::Int4: return static_cast<size_t>(codec_blocks(n)) * sizeof(float) + (un + 1) / 2;
  }
  return 0;
}

namespace {

// One block: v (m ≤ 256 values, already including the residual) → scale and q in [−qmax, qmax] (127 for int8,
// 7 for int4); returns the scale.
float encode_block(const float* v, int64_t m, int8_t* q, float qmax) {
  float amax = 0.0f;
  bool finite = true;
  // Comparisons rather than fmax/fmin, whose NaN rules keep GCC from vectorising; NaN and Inf are caught by the
  // finiteness test instead.
  for (int64_t i = 0; i < m; ++i) {
    const float a = std::fabs(v[i]);
    amax = a > amax ? a : amax;
    finite &= std::isfinite(v[i]);
  }
  if (!finite) {
    std::memset(q, 0, static_cast<size_t>(m));
    return std::numeric_limits<float>::quiet_NaN();
  }
  // Below kTinyBlock, qmax/amax would overflow to infinity (0·inf = NaN): such a block is sent as zeros (its
  // values stay in the residual with error feedback).
  if (amax < kTinyBlock) amax = 0.0f;
  const float scale = amax / qmax, inv = amax > 0 ? qmax / amax : 0.0f;
  // Round to nearest even by adding and subtracting 1.5·2^23 (exact for |x| ≤ 2^22, so for ±127): the same
  // result as nearbyint in the default rounding mode, but a plain add that vectorises (nearbyint does not).
  constexpr float kRound = 12582912.0f;
  for (int64_t i = 0; i < m; ++i) {
    const float x = v[i] * inv, c = x > qmax ? qmax : x < -qmax ? -qmax : x;
    q[i] = static_cast<int8_t>(static_cast<int>((c + kRound) - kRound));
  }
  return scale;
}

}  // namespace

void codec_encode(WanCodec c, const float* x, float* residual, int64_t n, uint8_t* out) {
  switch (c) {
    case WanCodec::None: {
      float* o = reinterpret_cast<float*>(out);
      if (!residual) {
        std::memcpy(o, x, static_cast<size_t>(n) * sizeof(float));
        return;
      }
      for (int64_t i = 0; i < n; ++i) o[i] = x[i] + residual[i];  // exact: the residual becomes 0
      for (int64_t i = 0; i < n; ++i) residual[i] = 0.0f;
      return;
    }
    case WanCodec::BF16: {
      bf16* o = reinterpret_cast<bf16*>(out);
      if (!residual) {
        for (int64_t i = 0; i < n; ++i) o[i] = float_to_bf16(x[i]);
        return;
      }
      for (int64_t i = 0; i < n; ++i) {
        const float v = x[i] + residual[i];
        o[i] = float_to_bf16(v);
        residual[i] = v - bf16_to_float(o[i]);
      }
      return;
    }
    case WanCodec::Int8:
    case WanCodec::Int4: {
      // Block by block: v = x + residual → the block's scale and codes q, then residual ← v − q·scale. int8
      // stores q as it is; int4 packs value 2k into the low nibble of byte k and 2k+1 into the high one.
      const int64_t nb = codec_blocks(n);
      const float qmax = codec_qmax(c);
      float* scales = reinterpret_cast<float*>(out);
      uint8_t* codes = out + nb * sizeof(float);  // an int4 block starts on a byte: kInt8Block is even
      float v[kInt8Block];
      int8_t q[kInt8Block + 1];
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t lo = b * kInt8Block, m = std::min<int64_t>(kInt8Block, n - lo);
        for (int64_t i = 0; i < m; ++i) v[i] = x[lo + i] + (residual ? residual[lo + i] : 0.0f);
        scales[b] = encode_block(v, m, q, qmax);
        if (c == WanCodec::Int8) {
          std::memcpy(codes + lo, q, static_cast<size_t>(m));
        } else {
          q[m] = 0;  // the high nibble past an odd end
          for (int64_t i = 0; i < m; i += 2)
            codes[(lo + i) / 2] = static_cast<uint8_t>((q[i] & 0xF) | ((q[i + 1] & 0xF) << 4));
        }
        if (residual)
          for (int64_t i = 0; i < m; ++i) residual[lo + i] = v[i] - static_cast<float>(q[i]) * scales[b];
      }
      return;
    }
  }
}

void codec_decode(WanCodec c, const uint8_t* in, int64_t n, float* acc, bool add) {
  switch (c) {
    case WanCodec::None: {
      const float* v = reinterpret_cast<const float*>(in);
      if (add)
        for (int64_t i = 0; i < n; ++i) acc[i] += v[i];
      else
        std::memcpy(acc, v, static_cast<size_t>(n) * sizeof(float));
      return;
    }
    case WanCodec::BF16: {
      const bf16* v = reinterpret_cast<const bf16*>(in);
      for (int64_t i = 0; i < n; ++i) acc[i] = (add ? acc[i] : 0.0f) + bf16_to_float(v[i]);
      return;
    }
    case WanCodec::Int8: {
      const int64_t nb = codec_blocks(n);
      const float* scales = reinterpret_cast<const float*>(in);
      const int8_t* q = reinterpret_cast<const int8_t*>(in + nb * sizeof(float));
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t lo = b * kInt8Block, m = std::min<int64_t>(kInt8Block, n - lo);
        const float s = scales[b];
        for (int64_t i = 0; i < m; ++i) acc[lo + i] = (add ? acc[lo + i] : 0.0f) + static_cast<float>(q[lo + i]) * s;
      }
      return;
    }
    case WanCodec::Int4: {
      const int64_t nb = codec_blocks(n);
      const float* scales = reinterpret_cast<const float*>(in);
      const uint8_t* packed = in + nb * sizeof(float);
      // Block by block and a byte (two values) at a time, so the loop vectorises: the low nibble is sign-extended
      // by shifting it to the top of an int8, the high one by an arithmetic shift of the whole byte.
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t lo = b * kInt8Block, m = std::min<int64_t>(kInt8Block, n - lo);
        const float s = scales[b];
        const uint8_t* p = packed + lo / 2;
        float* a = acc + lo;
        for (int64_t k = 0; k < m / 2; ++k) {
          const float v0 = static_cast<float>(static_cast<int8_t>(p[k] << 4) >> 4) * s;
          const float v1 = static_cast<float>(static_cast<int8_t>(p[k]) >> 4) * s;
          a[2 * k] = (add ? a[2 * k] : 0.0f) + v0;
          a[2 * k + 1] = (add ? a[2 * k + 1] : 0.0f) + v1;
        }
        if (m & 1) a[m - 1] = (add ? a[m - 1] : 0.0f) + static_cast<float>(static_cast<int8_t>(p[m / 2] << 4) >> 4) * s;
      }
      return;
    }
  }
}

}  // namespace aq
