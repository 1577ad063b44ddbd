// test_cost_model.cpp — the cost model's formulas (parallel/cost_model.h) against values worked out by hand:
// the guide's ring and two-level expressions, Open MPI's binomial all-reduce on 2 + 2 ranks (centre 0 sends 2n,
// centre 1 sends n: what the testbed's counters show), int8 wire bytes, the bucket-overlap rule, FLOPs per token,
// and the exchange's bandwidth-by-size curve. Links are chosen so each term can be read off (α = 0 or β = 0
// where a term should vanish).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "parallel/cost_model.h"
#include "runtime/error.h"

namespace aq::cost {
namespace {

// Free links everywhere except the WAN: α_W = 1 ms, 1 MB/s.
Calibration wan_only() {
  Calibration c;
  c.node = {0, 1e18};
  c.centre = {0, 1e18};
  c.wan = {1e-3, 1e6};
  for (int k = 0; k < kWanCodecs; ++k) c.encode_bytes_per_s[k] = c.decode_bytes_per_s[k] = 1e18;
  return c;
}

TEST(CostModel, DiLoCoAmortisesAndHidesTheOuterExchange) {
  Calibration cal = wan_only();
  cal.compute_s_per_token = 1e-4;
  DilocoJob j;
  j.inner.params = 1e5;
  j.inner.tokens_per_rank = 1000;  // 0.1 s of compute per step
  j.inner.layout = {1, 1, 1};
  j.centres = 2;
  j.H = 10;
  const DilocoPrediction once = predict_diloco(j, cal);
  Layout across{2, 1, 1};
  const Collective whole = all_reduce(Algo::Hier, WanCodec::None, across, 1e5, cal);
  EXPECT_NEAR(once.fragment_exchange_s, whole.seconds, 1e-12);
  EXPECT_NEAR(once.exposed_s, whole.seconds / 10, 1e-12);  // one exchange per H steps, all exposed
  EXPECT_NEAR(once.wan_bytes_per_step, whole.wan_bytes_per_centre / 10, 1e-6);
  // Four fragments, overlapped by enough steps: nothing shows, and the bytes per step stay those of the model.
  j.F = 4;
  j.tau = 9;
  const DilocoPrediction hidden = predict_diloco(j, cal);
  EXPECT_EQ(hidden.exposed_s, 0.0);
  EXPECT_NEAR(hidden.wan_bytes_per_step, once.wan_bytes_per_step, 1e-3 * once.wan_bytes_per_step);
  EXPECT_NEAR(hidden.utilisation, 1.0, 1e-9);
  // Higher utilisation needs a faster link, and the rate found gives it.
  j.tau = 0;
  const double r80 = wan_rate_for_utilisation(j, cal, 0.8), r95 = wan_rate_for_utilisation(j, cal, 0.95);
  EXPECT_LT(r80, r95);
  Calibration at = cal;
  at.wan.bytes_per_s = r95 * 1.001;
  EXPECT_GE(predict_diloco(j, at).utilisation, 0.95);
}

TEST(CostModel, DealBySpeedMinimisesTheSlowestRank) {
  // 15 micro-batches at 1 and 1.3 ms: 9 + 6 (step 9 ms), where the ideal shares 8.48 + 6.52 round to 8 + 7
  // (step 9.1 ms).
  EXPECT_EQ(deal_by_speed({1.0, 1.3}, 15), (std::vector<int>{9, 6}));
  EXPECT_EQ(deal_by_speed({1.0, 2.2}, 16), (std::vector<int>{11, 5}));
  EXPECT_EQ(deal_by_speed({0.4, 2.0 / 3.0}, 4), (std::vector<int>{3, 1}));  // finish times 1.2 and 0.67
  EXPECT_EQ(deal_by_speed({1.0, 1.0, 1.0, 1.0}, 4), (std::vector<int>{1, 1, 1, 1}));
  EXPECT_EQ(deal_by_speed({1.0, 1.0, 1.0}, 7), (std::vector<int>{3, 2, 2}));  // ties to the lower rank
  // One fast rank and three ten times slower: each keeps its one, the fast rank takes the rest.
  EXPECT_EQ(deal_by_speed({1.0, 10.0, 10.0, 10.0}, 8), (std::vector<int>{5, 1, 1, 1}));
  // No split of 13 over speeds 3 : 2 : 1 has a shorter slowest rank than the rule's (checked by enumeration).
  const std::vector<double> ms{1.0, 1.5, 3.0};
  const std::vector<int> k = deal_by_speed(ms, 13);
  EXPECT_EQ(k[0] + k[1] + k[2], 13);
  double best = 1e9;
  for (int a = 1; a < 13; ++a)
    for (int b = 1; a + b < 13; ++b) best = std::min(best, std::max({a * ms[0], b * ms[1], (13 - a - b) * ms[2]}));
  EXPECT_DOUBLE_EQ(std::max({k[0] * ms[0], k[1] * ms[1], k[2] * ms[2]}), best);
  EXPECT_THROW(deal_by_speed({1.0, 2.0, 3.0}, 2), Error);
}

TEST(CostModel, BalancedSynchronousStepClosedForm) {
  // Centre 0: 2 ranks at 1 ms per token; centre 1: 1 rank at 2 ms per token; micro-batches of 10 tokens (10 ms
  // and 20 ms), 10 of them per step, 5 ms of exchange after the last.
  BalanceJob j;
  j.centre_s_per_token = {1e-3, 2e-3};
  j.dp_per_centre = {2, 1};
  j.tokens_per_micro = 10;
  j.micro_batches = 10;
  j.sync_s = 5e-3;
  // Balanced: 4, 4, 2 (finish times 40, 40, 40 ms); step 45 ms; every rank waits 5 ms of it.
  const BalancePrediction b = predict_balance_sync(j, true);
  EXPECT_EQ(b.share, (std::vector<int64_t>{4, 2}));
  EXPECT_NEAR(b.period_s, 0.045, 1e-12);
  EXPECT_NEAR(b.compute_s, 0.040, 1e-12);
  EXPECT_NEAR(b.waiting_share[0], 5.0 / 45, 1e-12);
  EXPECT_NEAR(b.waiting_share[1], 5.0 / 45, 1e-12);
  EXPECT_NEAR(b.tokens_per_s, 100 / 0.045, 1e-6);
  EXPECT_NEAR(b.standalone_tokens_per_s, 2 / 1e-3 + 1 / 2e-3, 1e-9);  // 2 500 tokens/s
  // Even (the micro-batches must split evenly: 9 = 3 each): the slow rank's 60 ms set the step.
  j.micro_batches = 9;
  const BalancePrediction e = predict_balance_sync(j, false);
  EXPECT_EQ(e.share, (std::vector<int64_t>{3, 3}));
  EXPECT_NEAR(e.period_s, 0.065, 1e-12);
  EXPECT_NEAR(e.waiting_share[0], 35.0 / 65, 1e-12);
  EXPECT_NEAR(e.tokens_per_s, 90 / 0.065, 1e-6);
}

TEST(CostModel, PacedDiLoCoWindowClosedForm) {
  // Steps of 10 and 25 ms (one micro-batch of 10 tokens), H = 20, 50 ms of outer exchange per window.
  BalanceJob j;
  j.centre_s_per_token = {1e-3, 2.5e-3};
  j.dp_per_centre = {1, 1};
  j.tokens_per_micro = 10;
  j.H = 20;
  j.outer_s_per_window = 0.05;
  EXPECT_EQ(pace_by_speed({10.0, 25.0}, 20), (std::vector<int64_t>{20, 8}));
  EXPECT_EQ(pace_by_speed({10.0, 1e9}, 20), (std::vector<int64_t>{20, 1}));  // at least one step
  EXPECT_THROW(pace_by_speed({}, 20), Error);
  EXPECT_THROW(pace_by_speed({10.0}, 0), Error);
  // Paced: 20 · 10 ms and 8 · 25 ms = 200 ms each, + 50 ms; 28 steps of 10 tokens in 250 ms.
  const BalancePrediction p = predict_balance_diloco(j, true);
  EXPECT_EQ(p.share, (std::vector<int64_t>{20, 8}));
  EXPECT_NEAR(p.period_s, 0.25, 1e-12);
  EXPECT_NEAR(p.waiting_share[0], 0.2, 1e-12);
  EXPECT_NEAR(p.tokens_per_s, 280 / 0.25, 1e-6);
  // Unpaced: both train 20 steps, the slow centre's 500 ms set the window.
  const BalancePrediction u = predict_balance_diloco(j, false);
  EXPECT_NEAR(u.period_s, 0.55, 1e-12);
  EXPECT_NEAR(u.waiting_share[0], 350.0 / 550, 1e-12);
  EXPECT_NEAR(u.tokens_per_s, 400 / 0.55, 1e-6);
}

TEST(CostModel, RingClosedForm) {
  const Link l{1e-3, 1e6};
  // 2(p−1)α + 2(p−1)/p·n·β with p = 4, n = 1 MB: 6 ms + 1.5 s.
  EXPECT_DOUBLE_EQ(ring_all_reduce_s(4, 1e6, l), 0.006 + 1.5);
  EXPECT_DOUBLE_EQ(ring_half_s(4, 1e6, l), 0.003 + 0.75);
  EXPECT_DOUBLE_EQ(ring_all_reduce_s(1, 1e6, l), 0.0);
}

TEST(CostModel, FlatRingAcrossCentresPaysTheWanOnEveryStep) {
  const Calibration cal = wan_only();
  const Layout L{2, 2, 2};
  const Collective c = all_reduce(Algo::FlatRing, WanCodec::None, L, 250000, cal);  // n = 1 MB
  EXPECT_NEAR(c.seconds, 2 * 3 * (1e-3 + 0.25), 1e-12);  // 2(p−1) steps of α_W + (n/p)β_W
  EXPECT_DOUBLE_EQ(c.wan_bytes_per_centre, 1.5e6);       // 2(p−1)/p·n
  EXPECT_DOUBLE_EQ(c.wan_bytes_total, 3e6);
}

TEST(CostModel, HierTwoCentresCrossesOnceWithTwoLatencies) {
  const Calibration cal = wan_only();
  const Layout L{2, 2, 2};
  const Collective c = all_reduce(Algo::Hier, WanCodec::None, L, 250000, cal);
  // Each stage puts g(C−1)·n/(gC) = n/2 on a centre's link: 2·(α_W + 0.5 s).
  EXPECT_NEAR(c.seconds, 2 * (1e-3 + 0.5), 1e-9);
  EXPECT_DOUBLE_EQ(c.wan_bytes_per_centre, 1e6);  // 2(C−1)/C·n
  // The guide's claim: at p = 4 across 2 centres the ring pushes 1.5× the hierarchy's bytes.
  EXPECT_DOUBLE_EQ(
      all_reduce(Algo::FlatRing, WanCodec::None, L, 250000, cal).wan_bytes_per_centre / c.wan_bytes_per_centre, 1.5);
}

TEST(CostModel, HierManyCentresMatchesTheGuidesPerShardTerm) {
  const Calibration cal = wan_only();
  const Layout L{4, 8, 8};
  const double n = 4.0 * 8 * 4 * 1000;  // bytes, divisible into g·C chunks
  const Collective c = all_reduce(Algo::Hier, WanCodec::None, L, n / 4, cal);
  // Summed over the g shards sharing the link: 2(C−1)/C·n bytes, 2 latencies.
  EXPECT_DOUBLE_EQ(c.wan_bytes_per_centre, 2.0 * 3 / 4 * n);
  EXPECT_NEAR(c.seconds, 2e-3 + 2.0 * 3 / 4 * n / 1e6, 1e-9);
}

TEST(CostModel, Int8WireBytes) {
  const Calibration cal = wan_only();
  const Layout L{2, 2, 2};
  const Collective c = all_reduce(Algo::Hier, WanCodec::Int8, L, 250000, cal);
  // Chunks of 62 500 values: 62 500 int8 + 245 fp32 scales = 63 480 bytes; 2 carriers, 2 stages.
  EXPECT_DOUBLE_EQ(c.wan_bytes_per_centre, 4.0 * 63480);
  EXPECT_NEAR(1e6 / c.wan_bytes_per_centre, 3.94, 0.01);
  const Collective b = all_reduce(Algo::Hier, WanCodec::BF16, L, 250000, cal);
  EXPECT_DOUBLE_EQ(b.wan_bytes_per_centre, 5e5);
}

TEST(CostModel, OpenMpiBinomialOnTwoPlusTwoRanks) {
  const Calibration cal = wan_only();
  const Layout L{2, 2, 2};
  const Collective c = all_reduce(Algo::FlatBinomial, WanCodec::None, L, 250000, cal);
  // Reduce: 1→0, 3→2 (inside), then 2→0 (WAN, n). Broadcast: 0→1, then 0→2 and 1→3 (both leave centre 0: 2n).
  EXPECT_DOUBLE_EQ(c.wan_bytes_per_centre, 2e6);
  EXPECT_DOUBLE_EQ(c.wan_bytes_total, 3e6);
  EXPECT_NEAR(c.seconds, (1e-3 + 1.0) + (1e-3 + 2.0), 1e-9);
}

TEST(CostModel, OneBucketExposesAllOfItsCommunication) {
  Calibration cal;
  cal.node = {0, 1e7};
  cal.compute_s_per_token = 1;
  cal.backward_share = 1;
  StepJob job;
  job.params = 250000;  // 1 MB: one bucket of the default 25 MiB
  job.tokens_per_rank = 1;
  job.layout = {1, 2, 2};
  job.algo = Algo::FlatRing;
  const Prediction p = predict_step(job, cal);
  const double loss = 2 * 8 / 1e7;  // binomial over 2 ranks: one reduce round, one broadcast round of 8 bytes
  EXPECT_EQ(p.buckets, 1);
  EXPECT_NEAR(p.comm_s, 0.1, 1e-12);  // ring of 2: n/bw
  EXPECT_NEAR(p.exposed_s, 0.1 + loss, 1e-12);
  EXPECT_NEAR(p.step_s, 1.1 + loss, 1e-12);
}

TEST(CostModel, BucketsOverlapBackward) {
  Calibration cal;
  cal.node = {0, 1e7};
  cal.compute_s_per_token = 1;
  cal.backward_share = 1;
  StepJob job;
  job.params = 1e6;        // 4 MB
  job.bucket_bytes = 1e6;  // 4 buckets of 1 MB, ready at 0.25, 0.5, 0.75, 1.0 s
  job.tokens_per_rank = 1;
  job.layout = {1, 2, 2};
  job.algo = Algo::FlatRing;
  const double loss = 2 * 8 / 1e7;
  Prediction p = predict_step(job, cal);  // 0.1 s each: all but the last hidden
  EXPECT_EQ(p.buckets, 4);
  EXPECT_NEAR(p.exposed_s, 0.1 + loss, 1e-12);
  cal.node.bytes_per_s = 2e6;  // 0.5 s each: they queue, ending at 0.75, 1.25, 1.75, 2.25
  p = predict_step(job, cal);
  EXPECT_NEAR(p.exposed_s, 1.25 + 2 * 8 / 2e6, 1e-12);
}

TEST(CostModel, ExchangeCurveInterpolatesInLogBytes) {
  Calibration cal = wan_only();
  EXPECT_DOUBLE_EQ(cal.exchange_bytes_per_s(5e5), 1e6);  // no curve: the one-flow WAN
  cal.wan_exchange = {{1e5, 1e6}, {1e6, 2e6}};
  EXPECT_DOUBLE_EQ(cal.exchange_bytes_per_s(1e4), 1e6);  // held flat beyond the ends
  EXPECT_DOUBLE_EQ(cal.exchange_bytes_per_s(1e7), 2e6);
  EXPECT_NEAR(cal.exchange_bytes_per_s(std::sqrt(1e5 * 1e6)), 1.5e6, 1e-6);
  // hier's stages use it: 2 stages of 5e5 bytes at the curve's value there.
  const Collective c = all_reduce(Algo::Hier, WanCodec::None, Layout{2, 2, 2}, 250000, cal);
  EXPECT_NEAR(c.seconds, 2 * (1e-3 + 5e5 / cal.exchange_bytes_per_s(5e5)), 1e-9);
}

TEST(CostModel, FlopsPerToken) {
  // (6N + 6·L·C·T) / (peak · MFU)
  EXPECT_DOUBLE_EQ(compute_s_per_token_from_flops(1e6, 2, 64, 128, 1e12, 0.5), (6e6 + 6.0 * 2 * 64 * 128) / 5e11);
  EXPECT_THROW(compute_s_per_token_from_flops(1e6, 2, 64, 128, 1e12, 0), Error);
}

TEST(CostModel, RefusesAnEmptyLayout) {
  EXPECT_THROW(all_reduce(Algo::Hier, WanCodec::None, Layout{0, 2, 2}, 100, Calibration{}), Error);
}

}  // namespace
}  // namespace aq::cost
