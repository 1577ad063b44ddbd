// codec_cuda.h — the wire codecs of codec.h on a GPU: the same formats, computed where device buffers live, so
// only the encoded bytes cross PCIe on their way to the cross-centre link (4× fewer for int8).
// Buffers are on the current device; kernels run on the legacy default stream (the model's compute stream), so
// they are ordered after the kernels and NCCL waits that produced their input.
#pragma once

#include <cstdint>

#include "parallel/algo/codec.h"

namespace aq::cuda {

// out (codec_bytes, device) ← encode(x + residual); residual (n, device, may be null) updated as in codec.h.
void codec_encode(WanCodec c, const float* x, float* residual, int64_t n, uint8_t* out);
// acc (n, device) += decode(in) (in: codec_bytes on the device), or acc = decode(in) when `add` is false.
void codec_decode(WanCodec c, const uint8_t* in, int64_t n, float* acc, bool add);

}  // namespace aq::cuda
