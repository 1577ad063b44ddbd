// codec.h — wire formats of the slow (cross-centre) hop: fp32, bf16, and int8 and int4 with per-block scales.
//
// Compression is applied only where data crosses centres; inside a centre everything stays fp32. The rules,
// after PRIME's int8 ring and ZeRO++'s qgZ:
//   * a value is quantised at most once per hop: senders encode, the owner of a chunk decodes every
//     contribution, adds in fp32, and re-encodes the sum once for the return hop;
//   * the owner keeps the decoded value of what it re-encoded, so every rank ends bit-identical;
//   * error feedback (EF-SGD/EF21): what quantisation dropped is kept in a residual (one float per value) and
//     added to the next step's value before encoding, so nothing is lost over time, only delayed:
//       sent_t = Q(x_t + r_{t-1}),  r_t = x_t + r_{t-1} − sent_t,  so  Σ sent + r_T = Σ x  exactly in reals.
// int8 layout of n values: ceil(n/256) fp32 scales (absmax/127 of each block of 256), then n int8 values
// rounded to nearest: 4·ceil(n/256) + n bytes, 3.94× smaller than fp32 for long chunks. int4 (Streaming
// DiLoCo's 4-bit outer deltas, ZeRO++'s int4 blocks): the same blocks with scale absmax/7, then ceil(n/2) bytes
// of values in [−7, 7] as two's-complement nibbles, value 2k in the low nibble of byte k and 2k+1 in the high
// one (0 past the end): 4·ceil(n/256) + ceil(n/2) bytes, 7.76× smaller than fp32. A block holding a non-finite
// value gets a NaN scale, so the NaN reaches the gradient norm check instead of vanishing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace aq {

enum class WanCodec { None, BF16, Int8, Int4 };
constexpr int kWanCodecs = 4;  // the enum's values are 0 … kWanCodecs − 1 (tables indexed by codec)

constexpr int64_t kInt8Block = 256;  // values per scale, int8 and int4 alike
// Blocks (and so fp32 scales) of n values of int8 or int4.
constexpr int64_t codec_blocks(int64_t n) { return (n + kInt8Block - 1) / kInt8Block; }
// The largest code of a block codec: values are rounded to [−qmax, qmax]·absmax/qmax; 0 for the others.
constexpr float codec_qmax(WanCodec c) { return c == WanCodec::Int8 ? 127.0f : c == WanCodec::Int4 ? 7.0f : 0.0f; }
// A block whose absmax is below this (128 × the smallest normal float, ~1.5e-36) is sent as zeros: 127/absmax
// would overflow. Its values stay in the residual with error feedback.
constexpr float kTinyBlock = 1.17549435e-38f * 128.0f;

WanCodec wan_codec_from_name(const std::string& name);  // none | bf16 | int8 | int4; throws aq::Error otherwise
const char* wan_codec_name(WanCodec c);
bool is_wan_codec_name(const std::string& name);  // one of the names above
// Bytes on the wire for n fp32 values.
size_t codec_bytes(WanCodec c, int64_t n);
// out (codec_bytes) ← encode(x + residual). residual (n) may be null (no error feedback); otherwise it is
// updated to x + residual − decode(out).
void codec_encode(WanCodec c, const float* x, float* residual, int64_t n, uint8_t* out);
// acc (n) += decode(in), or acc = decode(in) when `add` is false.
void codec_decode(WanCodec c, const uint8_t* in, int64_t n, float* acc, bool add);

}  // namespace aq
