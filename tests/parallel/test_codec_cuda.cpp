// test_codec_cuda.cpp — the GPU wire codecs (codec_cuda.h) against the CPU ones (codec.h): the same bytes for
// fp32 and bf16, the same int8 and int4 scales and values within one quantisation step (the two sides may round a
// product that lies exactly halfway differently), decoding with and without accumulation, error-feedback
// residuals, NaN blocks, odd sizes around the 256-value block. Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "parallel/algo/codec.h"
#include "parallel/algo/codec_cuda.h"
#include "tests/ops/cuda_test_util.h"

namespace aq {
namespace {

using test::Dev;

TEST(CodecCuda, MatchesTheCpuCodecs) {
  AQ_REQUIRE_GPU();
  for (int64_t n : {1, 255, 256, 257, 1000, 4099}) {
    std::vector<float> x = test::randn<float>(static_cast<size_t>(n), static_cast<uint64_t>(n), 0.01);
    if (n > 700) x[700] = std::nanf("");  // its block decodes to NaN on both sides
    if (n == 1000) std::fill(x.begin() + 256, x.begin() + 512, 1e-37f);  // a tiny block: zeros on both sides
    for (WanCodec c : {WanCodec::None, WanCodec::BF16, WanCodec::Int8, WanCodec::Int4}) {
      SCOPED_TRACE(str(wan_codec_name(c), " n=", n));
      const size_t bytes = codec_bytes(c, n);
      std::vector<float> res_cpu = test::randn<float>(static_cast<size_t>(n), 7, 1e-4);
      if (n == 1000) std::fill(res_cpu.begin() + 256, res_cpu.begin() + 512, 0.0f);  // keep the tiny block tiny
      const std::vector<float> res0 = res_cpu;
      std::vector<uint8_t> wire_cpu(bytes);
      codec_encode(c, x.data(), res_cpu.data(), n, wire_cpu.data());
      Dev<float> dx(x), dres(res0);
      Dev<uint8_t> dwire(std::vector<uint8_t>(bytes, 0xAB));
      cuda::codec_encode(c, dx.get(), dres.get(), n, dwire.get());
      const std::vector<uint8_t> wire_gpu = dwire.read();
      if (c == WanCodec::Int4 && n % 2) {
        ASSERT_EQ(wire_gpu.back() >> 4, 0) << "the high nibble past the end";
      }
      const std::vector<float> res_gpu = dres.read();
      // Decode both encodings on both sides.
      std::vector<float> y_cpu(static_cast<size_t>(n)), y_gpu_on_cpu(static_cast<size_t>(n));
      codec_decode(c, wire_cpu.data(), n, y_cpu.data(), false);
      codec_decode(c, wire_gpu.data(), n, y_gpu_on_cpu.data(), false);
      Dev<float> dacc(std::vector<float>(static_cast<size_t>(n), 1.0f));
      cuda::codec_decode(c, dwire.get(), n, dacc.get(), true);
      const std::vector<float> acc = dacc.read();
      for (int64_t i = 0; i < n; ++i) {
        const bool blocks = c == WanCodec::Int8 || c == WanCodec::Int4;
        const float step = blocks ? reinterpret_cast<const float*>(wire_cpu.data())[i / kInt8Block] : 0.0f;
        if (std::isnan(y_cpu[i])) {
          ASSERT_TRUE(std::isnan(y_gpu_on_cpu[i])) << i;
          continue;
        }
        if (blocks) {
          ASSERT_EQ(reinterpret_cast<const float*>(wire_gpu.data())[i / kInt8Block], step) << "scale of block " << i / 256;
          ASSERT_LE(std::fabs(y_gpu_on_cpu[i] - y_cpu[i]), step * 1.0001) << i;
        } else {
          ASSERT_EQ(y_gpu_on_cpu[i], y_cpu[i]) << i;
        }
        ASSERT_NEAR(acc[i], 1.0f + y_gpu_on_cpu[i], 1.2e-7 * (1 + std::fabs(y_gpu_on_cpu[i]))) << i;
        // Error feedback: what was sent plus the new residual is the input plus the old residual.
        ASSERT_NEAR(y_gpu_on_cpu[i] + res_gpu[i], x[i] + res0[i], 1e-6 * (std::fabs(x[i]) + 1e-3)) << i;
      }
    }
  }
}

}  // namespace
}  // namespace aq
