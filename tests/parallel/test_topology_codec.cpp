// test_topology_codec.cpp — the pure parts of the cross-centre layer, without MPI:
//   * Topology: centre names from --centres and AQ_CENTRE, intra indices, dp-intra and dp-cross groups for
//     equal and unequal centres, and the refusal of a TP group that spans centres;
//   * the wire codecs: round-trip error bounds (int8, int4: half a quantisation step of each block's scale;
//     bf16: 2^-9 relative), int4's bytes against a hand-written example, NaN propagation, and the
//     error-feedback identity Σ sent + residual = Σ inputs;
//   * progress_in_background on a scripted algorithm: a call completes with no test from the caller, and a call
//     that fails on the thread makes every later call throw its error.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "parallel/algo/codec.h"
#include "parallel/algo/dp_algorithm.h"
#include "parallel/topology.h"
#include "runtime/error.h"

namespace aq {
namespace {

TEST(Topology, NamesFromSpec) {
  EXPECT_EQ(Topology::names_for("auto", 3, {"", "", ""}), (std::vector<std::string>{"0", "0", "0"}));
  EXPECT_EQ(Topology::names_for("auto", 3, {"a", "", "b"}), (std::vector<std::string>{"0", "0", "0"}));  // not all set
  EXPECT_EQ(Topology::names_for("auto", 3, {"x", "y", "x"}), (std::vector<std::string>{"x", "y", "x"}));
  EXPECT_EQ(Topology::names_for("2", 6, {}), (std::vector<std::string>{"0", "0", "0", "1", "1", "1"}));
  EXPECT_THROW(Topology::names_for("4", 6, {}), Error);
  EXPECT_THROW(Topology::names_for("0", 6, {}), Error);
  EXPECT_THROW(Topology::names_for("two", 6, {}), Error);
}

TEST(Topology, UnequalCentres) {
  // 5 ranks, tp 1: centre A holds ranks 0, 1, 3; B holds 2, 4 (interleaved on purpose).
  const Topology t = Topology::build({"A", "A", "B", "A", "B"}, 1);
  EXPECT_EQ(t.centres(), 2);
  EXPECT_EQ(t.centre_of, (std::vector<int>{0, 0, 1, 0, 1}));
  EXPECT_EQ(t.intra_index, (std::vector<int>{0, 1, 0, 2, 1}));
  EXPECT_EQ(t.centre_dp, (std::vector<int>{3, 2}));
  EXPECT_EQ(t.cross_shards(), 2);
  EXPECT_FALSE(t.uniform_blocks());
  EXPECT_EQ(t.intra_group(3), (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(t.cross_group(1), (std::vector<int>{1, 4}));
  EXPECT_TRUE(t.cross_group(3).empty());  // A's third rank carries no cross-centre shard
  EXPECT_EQ(t.describe(), "2 centres: A (3 ranks), B (2 ranks)");
}

TEST(Topology, TensorParallelInsideCentres) {
  // tp 2, 8 ranks in 2 centres of 4: TP groups {0,1},{2,3} in c0 and {4,5},{6,7} in c1.
  const Topology t = Topology::build(Topology::names_for("2", 8, {}), 2);
  EXPECT_TRUE(t.uniform_blocks());
  EXPECT_EQ(t.centre_dp, (std::vector<int>{2, 2}));
  EXPECT_EQ(t.intra_index, (std::vector<int>{0, 0, 1, 1, 0, 0, 1, 1}));
  EXPECT_EQ(t.intra_group(5), (std::vector<int>{5, 7}));   // same tp_rank 1, same centre
  EXPECT_EQ(t.cross_group(3), (std::vector<int>{3, 7}));   // tp_rank 1, intra index 1, one per centre
  // A TP group across centres is refused with the ranks and the fix.
  try {
    Topology::build({"a", "a", "a", "b", "b", "b"}, 2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("spans centres"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ranks 2..3"), std::string::npos) << e.what();
  }
}

std::vector<float> random_values(int64_t n, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = d(g);
  return x;
}

TEST(Codec, RoundTripBounds) {
  for (int64_t n : {1, 255, 256, 257, 1000, 4099}) {
    std::vector<float> x = random_values(n, static_cast<uint32_t>(n), 0.01f);
    if (n > 300) x[300] = 5.0f;  // one outlier: only its own block loses resolution
    for (WanCodec c : {WanCodec::None, WanCodec::BF16, WanCodec::Int8, WanCodec::Int4}) {
      std::vector<uint8_t> wire(codec_bytes(c, n), 0xAB);
      codec_encode(c, x.data(), nullptr, n, wire.data());
      std::vector<float> y(static_cast<size_t>(n), -99.0f);
      codec_decode(c, wire.data(), n, y.data(), false);
      for (int64_t b = 0; b < n; b += kInt8Block) {
        const int64_t e = std::min(n, b + kInt8Block);
        double amax = 0;
        for (int64_t i = b; i < e; ++i) amax = std::max(amax, std::fabs(static_cast<double>(x[i])));
        for (int64_t i = b; i < e; ++i) {
          const double err = std::fabs(static_cast<double>(y[i]) - x[i]);
          // fp32: exact; bf16: half an ulp of 8 bits; int8, int4: half a quantisation step of the block.
          const double bound = c == WanCodec::None   ? 0.0
                               : c == WanCodec::BF16 ? std::fabs(x[i]) * std::ldexp(1.0, -8)
                               : c == WanCodec::Int8 ? amax / 127.0 * 0.5 * (1 + 1e-5)
                                                     : amax / 7.0 * 0.5 * (1 + 1e-5);
          ASSERT_LE(err, bound) << wan_codec_name(c) << " n " << n << " element " << i;
        }
      }
      // decode with add = true accumulates (within one rounding: the compiler may fuse the multiply-add).
      std::vector<float> acc(static_cast<size_t>(n), 1.0f);
      codec_decode(c, wire.data(), n, acc.data(), true);
      for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(acc[i], 1.0f + y[i], 1.2e-7 * (1.0f + std::fabs(y[i])));
    }
    EXPECT_EQ(codec_bytes(WanCodec::Int8, n), static_cast<size_t>(4 * ((n + 255) / 256) + n));
    EXPECT_EQ(codec_bytes(WanCodec::Int4, n), static_cast<size_t>(4 * ((n + 255) / 256) + (n + 1) / 2));
  }
}

TEST(Codec, Int4WireLayout) {
  // The documented bytes, written by hand: 5 values in one block of absmax 3.5, so scale 0.5 and codes
  // round(x / 0.5) = 7, −7, 1, −2, 0 (0.25 / 0.5 = 0.5 rounds to even); value 2k in the low nibble of byte k,
  // two's complement, and the high nibble past the odd end is 0.
  const float x[5] = {3.5f, -3.5f, 0.5f, -1.0f, 0.25f};
  std::vector<uint8_t> wire(codec_bytes(WanCodec::Int4, 5));
  ASSERT_EQ(wire.size(), 4u + 3u);
  codec_encode(WanCodec::Int4, x, nullptr, 5, wire.data());
  float scale;
  std::memcpy(&scale, wire.data(), 4);
  EXPECT_EQ(scale, 0.5f);
  EXPECT_EQ(wire[4], 0x97);  // 7 | (−7 = 0x9) << 4
  EXPECT_EQ(wire[5], 0xE1);  // 1 | (−2 = 0xE) << 4
  EXPECT_EQ(wire[6], 0x00);
  std::vector<float> y(5);
  codec_decode(WanCodec::Int4, wire.data(), 5, y.data(), false);
  const float want[5] = {3.5f, -3.5f, 0.5f, -1.0f, 0.0f};
  for (int i = 0; i < 5; ++i) EXPECT_EQ(y[i], want[i]) << i;
}

TEST(Codec, NonFiniteReachesTheReceiver) {
  std::vector<float> x = random_values(600, 7, 1.0f);
  x[400] = std::nanf("");
  for (WanCodec c : {WanCodec::Int8, WanCodec::Int4}) {
    std::vector<uint8_t> wire(codec_bytes(c, 600));
    codec_encode(c, x.data(), nullptr, 600, wire.data());
    std::vector<float> y(600);
    codec_decode(c, wire.data(), 600, y.data(), false);
    EXPECT_TRUE(std::isnan(y[400]) && std::isnan(y[511])) << wan_codec_name(c);  // the whole block of the NaN
    EXPECT_TRUE(std::isfinite(y[0]) && std::isfinite(y[599])) << wan_codec_name(c);
  }
}

TEST(Codec, TinyBlocksAreSentAsZeros) {
  // A block whose absmax is so small that qmax/absmax would overflow (here 1e-37 < 127/FLT_MAX ≈ 3.7e-37) is
  // sent as zeros with a zero scale; with error feedback its values wait in the residual. A normal block beside
  // it is unaffected.
  std::vector<float> x(300, 0.0f);
  x[3] = 1e-37f, x[4] = -5e-38f, x[299] = 0.5f;
  for (WanCodec c : {WanCodec::Int8, WanCodec::Int4}) {
    std::vector<float> residual(300, 0.0f), y(300);
    std::vector<uint8_t> wire(codec_bytes(c, 300));
    codec_encode(c, x.data(), residual.data(), 300, wire.data());
    codec_decode(c, wire.data(), 300, y.data(), false);
    for (int i = 0; i < 256; ++i) ASSERT_EQ(y[i], 0.0f) << wan_codec_name(c) << " element " << i;
    EXPECT_EQ(residual[3], 1e-37f) << wan_codec_name(c);
    EXPECT_EQ(residual[4], -5e-38f) << wan_codec_name(c);
    EXPECT_EQ(y[299], 0.5f) << wan_codec_name(c);
  }
}

TEST(Codec, ErrorFeedbackLosesNothing) {
  // Over many steps of fresh inputs: Σ decode(sent_t) + r_T = Σ x_t (up to fp32 rounding of the sums), while
  // without feedback the error of the sum grows with the number of steps.
  const int64_t n = 777;
  for (WanCodec c : {WanCodec::BF16, WanCodec::Int8, WanCodec::Int4}) {
    std::vector<float> residual(static_cast<size_t>(n), 0.0f), sent(static_cast<size_t>(n));
    std::vector<double> sum_x(static_cast<size_t>(n), 0.0), sum_sent(static_cast<size_t>(n), 0.0);
    std::vector<uint8_t> wire(codec_bytes(c, n));
    for (int step = 0; step < 50; ++step) {
      const std::vector<float> x = random_values(n, 100u + static_cast<uint32_t>(step), 1e-3f);
      codec_encode(c, x.data(), residual.data(), n, wire.data());
      codec_decode(c, wire.data(), n, sent.data(), false);
      for (int64_t i = 0; i < n; ++i) {
        sum_x[i] += x[i];
        sum_sent[i] += sent[i];
      }
    }
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      worst = std::max(worst, std::fabs(sum_sent[i] + residual[i] - sum_x[i]));
      scale = std::max(scale, std::fabs(sum_x[i]));
    }
    // Each step's fp32 additions (x + r, then r = v − sent) round at ~6e-8 of 1e-3-sized values.
    EXPECT_LT(worst, 50 * 2e-10) << wan_codec_name(c) << " (largest |sum| " << scale << ")";
  }
}

// ---- progress_in_background without MPI: a scripted algorithm ---------------------------------------------

// A Work that completes on its `done_after`-th test, or throws on its first one when `fails`.
class ScriptedWork final : public Work {
 public:
  ScriptedWork(int done_after, bool fails) : Work(1, "scripted", "all_reduce", -1), left_(done_after), fails_(fails) {}
  bool test() override {
    if (fails_) throw Error("scripted failure: the peer's link went down");
    if (left_ > 0) --left_;
    if (left_ == 0 && completed_ms_ == 0) completed_ms_ = started_ms_ + 1;
    return left_ == 0;
  }
  void wait(double) override {
    while (!test()) {
    }
  }

 private:
  int left_;
  bool fails_;
};

// all_reduce returns the next scripted Work; the algorithm itself has nothing to do.
class ScriptedAlgorithm final : public DpAlgorithm {
 public:
  std::vector<WorkPtr> script;
  std::string describe() const override { return "scripted"; }
  WorkPtr all_reduce(float*, int64_t, int64_t, const CollectiveOptions&) override { return next(); }
  WorkPtr reduce_scatter(const float*, float*, int64_t, const CollectiveOptions&) override { return next(); }
  WorkPtr all_gather(const void*, void*, int64_t, DType, const CollectiveOptions&) override { return next(); }
  WanStats take_wan_stats() override { return {}; }

 private:
  WorkPtr next() {
    WorkPtr w = script.front();
    script.erase(script.begin());
    return w;
  }
};

TEST(BackgroundProgress, CompletesCallsAloneAndHandsAFailureToEveryLaterCall) {
  auto inner = std::make_unique<ScriptedAlgorithm>();
  inner->script = {std::make_shared<ScriptedWork>(5, false), std::make_shared<ScriptedWork>(0, true)};
  std::unique_ptr<DpAlgorithm> dp = progress_in_background(std::move(inner), 0.1);
  EXPECT_NE(dp->describe().find("progressed by a background thread"), std::string::npos);
  float x = 0;
  // A call that needs five tests completes with no test from here (10 s bound a hang, not a slow machine).
  WorkPtr a = dp->all_reduce(&x, 1, 0, {"a"});
  for (int ms = 0; ms < 10000 && dp->completed_in_background() < 1; ++ms)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(dp->completed_in_background(), 1);
  EXPECT_TRUE(a->test());
  EXPECT_GT(a->completed_ms(), 0);
  // A call that fails on the thread: the failure is kept and thrown by every later call of any kind, since the
  // wrapped algorithm may be left mid-stage. take_wan_stats() tests nothing itself, so the failure it throws is
  // the one the thread caught.
  WorkPtr b = dp->all_reduce(&x, 1, 0, {"b"});
  bool thrown = false;
  for (int ms = 0; ms < 10000 && !thrown; ++ms) {
    try {
      dp->take_wan_stats();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("the peer's link went down"), std::string::npos) << e.what();
      thrown = true;
    }
  }
  ASSERT_TRUE(thrown) << "the thread did not report the failing call in 10 s";
  EXPECT_THROW(b->wait(), Error);
  EXPECT_THROW(dp->all_reduce(&x, 1, 0, {"c"}), Error);
  std::vector<float> host;
  EXPECT_THROW(dp->residuals(host), Error);
  EXPECT_EQ(dp->completed_in_background(), 1);
}

}  // namespace
}  // namespace aq
