// cost_model.cpp — the cost expressions of cost_model.h, all in this file. Notation (GUIDE.md, "Across centres"):
// α latency (s), β = 1/bandwidth (s/byte), n bytes, p ranks; C centres of g DP ranks each.
#include "parallel/cost_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "runtime/error.h"

namespace aq::cost {

double Calibration::exchange_bytes_per_s(double stage_bytes) const {
  const auto& c = wan_exchange;
  if (c.empty()) return wan.bytes_per_s;
  if (stage_bytes <= c.front().first) return c.front().second;
  if (stage_bytes >= c.back().first) return c.back().second;
  size_t i = 1;
  while (c[i].first < stage_bytes) ++i;
  const double t = std::log(stage_bytes / c[i - 1].first) / std::log(c[i].first / c[i - 1].first);
  return c[i - 1].second + t * (c[i].second - c[i - 1].second);
}

const char* algo_name(Algo a) {
  switch (a) {
    case Algo::FlatRing:
      return "flat (ring)";
    case Algo::FlatBinomial:
      return "flat (MPI binomial)";
    case Algo::Hier:
      return "hier";
  }
  return "?";
}

// Guide: "ring 2(p−1)α + 2(p−1)/p·nβ" (Patarasuk & Yuan's bandwidth-optimal ring: p−1 reduce-scatter steps
// and p−1 all-gather steps, each moving n/p bytes per rank).
double ring_all_reduce_s(int p, double n, const Link& l) {
  if (p <= 1) return 0;
  return 2.0 * (p - 1) * l.alpha_s + 2.0 * (p - 1) / p * n / l.bytes_per_s;
}

// Half of the ring (nccl-tests' (n−1)/n factor for reduce-scatter and all-gather): (p−1)α + (p−1)/p·nβ.
double ring_half_s(int p, double n, const Link& l) {
  if (p <= 1) return 0;
  return (p - 1) * l.alpha_s + static_cast<double>(p - 1) / p * n / l.bytes_per_s;
}

namespace {

// The link class between DP ranks a and b of a layout (ranks packed by centre, then by node).
const Link& link_between(int a, int b, const Layout& L, const Calibration& cal) {
  if (a / L.dp_per_centre != b / L.dp_per_centre) return cal.wan;
  const int rpn = std::max(1, L.ranks_per_node);
  return (a % L.dp_per_centre) / rpn == (b % L.dp_per_centre) / rpn ? cal.node : cal.centre;
}

// The link inside a centre that a ring of its g ranks is limited by.
const Link& intra_link(const Layout& L, const Calibration& cal) {
  return L.dp_per_centre <= std::max(1, L.ranks_per_node) ? cal.node : cal.centre;
}

// Flat ring through all p = C·g ranks in rank order. Each of the 2(p−1) steps moves n/p bytes over every edge
// at once and lasts as long as its slowest edge: with C > 1 that is a WAN edge, so the guide's ring formula
// holds with the WAN's α and β (2(p−1) WAN latencies). One edge leaves each centre: 2(p−1)/p·n bytes per centre.
Collective flat_ring(const Layout& L, double n, const Calibration& cal) {
  const int p = L.dp();
  Collective c;
  if (p <= 1) return c;
  double step = 0;
  for (int r = 0; r < p; ++r) step = std::max(step, link_between(r, (r + 1) % p, L, cal).time(n / p));
  c.seconds = 2.0 * (p - 1) * step;
  if (L.centres > 1) {
    c.wan_bytes_per_centre = 2.0 * (p - 1) / p * n;
    c.wan_bytes_total = L.centres * c.wan_bytes_per_centre;
    c.wan_seconds = c.seconds;
  }
  return c;
}

// Open MPI 4.1's non-blocking in-place all-reduce (coll/libnbc nbc_iallreduce.c: MPI_IN_PLACE, or p < 4, or
// fewer than 64 KiB, selects allred_sched_diss): a binomial-tree reduce to rank 0, then a binomial broadcast,
// each of ceil(log2 p) rounds moving all n bytes.
//   reduce round with distance d = 1, 2, 4, …: rank k with k mod 2d = d sends to k − d;
//   broadcast round with distance d = 1, 2, 4, …: every rank v in [d, 2d) receives from v − d.
// With 2 centres of 2 ranks: the reduce crosses once (2 → 0), the broadcast twice from centre 0 (0 → 2 and
// 1 → 3, sharing centre 0's link): centre 0 sends 2n, centre 1 sends n (what the testbed's counters show).
// A round lasts α + (bytes on its busiest pipe)/bandwidth: WAN transfers leaving or entering one centre in the
// same round share that centre's link; other pairs have links of their own.
Collective flat_binomial(const Layout& L, double n, const Calibration& cal) {
  const int p = L.dp();
  Collective c;
  std::vector<double> sent(static_cast<size_t>(L.centres), 0.0);
  std::vector<std::pair<int, int>> round;  // (sender, receiver)
  auto run_round = [&] {
    std::vector<double> up(static_cast<size_t>(L.centres), 0.0), down(up);
    double t = 0, wan_t = 0;
    for (const auto& [a, b] : round) {
      const Link& l = link_between(a, b, L, cal);
      if (&l == &cal.wan) {
        up[static_cast<size_t>(a / L.dp_per_centre)] += n;
        down[static_cast<size_t>(b / L.dp_per_centre)] += n;
        sent[static_cast<size_t>(a / L.dp_per_centre)] += n;
      } else {
        t = std::max(t, l.time(n));
      }
    }
    double pipe = 0;
    for (size_t i = 0; i < up.size(); ++i) pipe = std::max({pipe, up[i], down[i]});
    if (pipe > 0) wan_t = cal.wan.time(pipe);
    c.seconds += std::max(t, wan_t);
    c.wan_seconds += wan_t;
    round.clear();
  };
  for (int d = 1; d < p; d *= 2) {  // reduce
    for (int k = d; k < p; k += 2 * d) round.emplace_back(k, k - d);
    run_round();
  }
  for (int d = 1; d < p; d *= 2) {  // broadcast
    for (int v = d; v < std::min(2 * d, p); ++v) round.emplace_back(v - d, v);
    run_round();
  }
  for (double s : sent) c.wan_bytes_per_centre = std::max(c.wan_bytes_per_centre, s), c.wan_bytes_total += s;
  return c;
}

// parallel/algo/hier.cpp. Guide: "two levels with g ranks in each of N centres: local 2(g−1)α_L + 2(g−1)/g·nβ_L
// plus WAN 2(N−1)α_W + 2(N−1)/N·(n/g)β_W per shard". Here the WAN step is a direct exchange, not a ring: each
// of the g carriers cuts its shard n/g into C chunks, sends C−1 to their owners (stage A) and each owner sends
// its reduced chunk back to C−1 peers (stage B): two WAN latencies, and each stage puts
// g·(C−1)·bytes(n/(g·C)) on a centre's link, i.e. (C−1)/C·n (compressed) per stage, 2(C−1)/C·n per step, the
// guide's per-shard term summed over the g shards that share the centre's link. γ: carriers encode (C−1)/C of
// their shard in stage A; owners decode C−1 chunks, encode and decode their sum once in stage B; everyone
// decodes the C−1 returned chunks after it.
Collective hier(const Layout& L, WanCodec codec, double n, const Calibration& cal) {
  const int g = L.dp_per_centre, C = L.centres;
  Collective c;
  const Link& in = intra_link(L, cal);
  c.seconds += 2 * ring_half_s(g, n, in);  // intra reduce-scatter + intra all-gather
  if (C <= 1) return c;
  const double chunk = n / 4.0 / (static_cast<double>(g) * C);  // fp32 values of one chunk
  const double wire = static_cast<double>(g) * (C - 1) *
                      static_cast<double>(codec_bytes(codec, static_cast<int64_t>(std::ceil(chunk))));
  const int k = static_cast<int>(codec);
  const double enc = 4.0 * chunk / cal.encode_bytes_per_s[k], dec = 4.0 * chunk / cal.decode_bytes_per_s[k];
  const Link x{cal.wan.alpha_s, cal.exchange_bytes_per_s(wire)};  // both directions at once
  const double stage_a = (C - 1) * enc + x.time(wire);
  const double stage_b = (C - 1) * dec + enc + dec + x.time(wire) + (C - 1) * dec;
  c.wan_seconds = stage_a + stage_b;
  c.seconds += c.wan_seconds;
  c.wan_bytes_per_centre = 2 * wire;
  c.wan_bytes_total = C * c.wan_bytes_per_centre;
  return c;
}

}  // namespace

Collective all_reduce(Algo algo, WanCodec codec, const Layout& L, double n_values, const Calibration& cal) {
  AQ_CHECK(L.centres >= 1 && L.dp_per_centre >= 1,
           "cost model: layout needs >= 1 centre and >= 1 DP rank per centre (got ", L.centres, " and ",
           L.dp_per_centre, ")");
  const double n = 4.0 * n_values;  // fp32 gradients
  switch (algo) {
    case Algo::FlatRing:
      return flat_ring(L, n, cal);
    case Algo::FlatBinomial:
      return flat_binomial(L, n, cal);
    case Algo::Hier:
      return hier(L, codec, n, cal);
  }
  return {};
}

std::vector<double> bucket_bytes(double n_values, double bucket) {
  std::vector<double> out;
  double left = 4.0 * n_values;
  const int k = std::max(1, static_cast<int>(std::ceil(left / bucket)));
  for (int i = 0; i < k; ++i) out.push_back(left / k);
  return out;
}

// Overlap: backward frees the gradient buffer from its end, so the buckets become ready one after another over
// the backward window W = backward_share·compute (in proportion to their bytes); the last (the embeddings) only
// when backward ends, at time E. The buckets' all-reduces share the same links, so they are served one at a
// time: start_k = max(ready_k, end_{k−1}). Exposed = end_last − E: the last bucket is never hidden, which is why
// one bucket (a small model under the default 25 MiB) exposes all of its communication. The per-step loss
// all-reduce (8 bytes, a tree on every backend) adds its latency.
Prediction predict_step(const StepJob& job, const Calibration& cal) {
  Prediction p;
  p.compute_s = job.tokens_per_rank * cal.compute_s_per_token;
  const Layout& L = job.layout;
  if (L.dp() <= 1) {
    p.step_s = p.compute_s;
    return p;
  }
  const std::vector<double> buckets = bucket_bytes(job.params, job.bucket_bytes);
  p.buckets = static_cast<int>(buckets.size());
  const double E = p.compute_s, W = cal.backward_share * p.compute_s, total = 4.0 * job.params;
  double cum = 0, end = 0;
  for (double b : buckets) {
    cum += b;
    const double ready = E - W + W * cum / total;
    const Collective c = all_reduce(job.algo, job.codec, L, b / 4.0, cal);
    end = std::max(ready, end) + c.seconds;
    p.comm_s += c.seconds;
    p.wan_bytes_per_centre += c.wan_bytes_per_centre;
    p.wan_bytes_job += c.wan_bytes_total;
  }
  const double loss = all_reduce(Algo::FlatBinomial, WanCodec::None, L, 2, cal).seconds;
  p.exposed_s = std::max(0.0, end - E) + loss;
  p.step_s = p.compute_s + p.exposed_s;
  return p;
}

double compute_s_per_token_from_flops(double params, int layers, int dim, int seq, double peak_flops, double mfu) {
  AQ_CHECK(peak_flops > 0 && mfu > 0 && mfu <= 1, "cost model: peak FLOP/s must be > 0 and MFU in (0, 1] (got ",
           peak_flops, " and ", mfu, ")");
  return (6.0 * params + 6.0 * layers * dim * static_cast<double>(seq)) / (peak_flops * mfu);
}

// DiLoCo (Douillard et al.; Streaming DiLoCo): the inner step is an ordinary data-parallel step inside one centre;
// the outer exchange of one fragment (n/F values) is the hierarchical all-reduce across the C centres. Every H
// steps each of the F fragments is exchanged once: without overlap each exchange is exposed whole; with
// overlap τ it hides behind τ inner steps and only max(0, T_f − τ·step) shows.
DilocoPrediction predict_diloco(const DilocoJob& job, const Calibration& cal) {
  DilocoPrediction d;
  const Prediction inner = predict_step(job.inner, cal);
  Layout across = job.inner.layout;
  across.centres = job.centres;
  const Collective frag = all_reduce(Algo::Hier, job.codec, across, job.inner.params / job.F, cal);
  d.fragment_exchange_s = frag.seconds;
  const double hidden_window = static_cast<double>(job.tau) * inner.step_s;
  const double per_fragment = std::max(0.0, frag.seconds - hidden_window);
  d.exposed_s = job.F * per_fragment / static_cast<double>(job.H);
  d.step_s = inner.step_s + d.exposed_s;
  d.utilisation = inner.compute_s / d.step_s;
  d.wan_bytes_per_step = job.F * frag.wan_bytes_per_centre / static_cast<double>(job.H);
  return d;
}

double wan_rate_for_utilisation(const DilocoJob& job, Calibration cal, double utilisation) {
  cal.wan_exchange.clear();  // a what-if rate: one bandwidth, no measured curve
  auto util_at = [&](double rate) {
    cal.wan.bytes_per_s = rate;
    return predict_diloco(job, cal).utilisation;
  };
  double lo = 1e3, hi = 1e13;  // 8 kbit/s … 80 Tbit/s
  if (util_at(hi) < utilisation) return std::numeric_limits<double>::infinity();
  if (util_at(lo) >= utilisation) return lo;
  for (int i = 0; i < 100; ++i) {  // geometric bisection
    const double mid = std::sqrt(lo * hi);
    (util_at(mid) >= utilisation ? hi : lo) = mid;
  }
  return hi;
}

std::vector<int> deal_by_speed(const std::vector<double>& ms_per_micro, int64_t M) {
  const size_t n = ms_per_micro.size();
  AQ_CHECK(n >= 1 && M >= static_cast<int64_t>(n), "dealing ", M, " micro-batches to ", n,
           " ranks: every rank needs at least one; raise --grad-accum");
  std::vector<int> k(n, 1);
  for (int64_t given = static_cast<int64_t>(n); given < M; ++given) {
    size_t best = 0;
    for (size_t d = 1; d < n; ++d)
      if ((k[d] + 1) * ms_per_micro[d] < (k[best] + 1) * ms_per_micro[best]) best = d;
    ++k[best];
  }
  return k;
}

std::vector<int64_t> pace_by_speed(const std::vector<double>& ms_per_step, int64_t H) {
  AQ_CHECK(!ms_per_step.empty() && H >= 1, "pacing needs >= 1 centre and H >= 1 (got ", ms_per_step.size(),
           " centres, H ", H, ")");
  const double fastest = *std::min_element(ms_per_step.begin(), ms_per_step.end());
  std::vector<int64_t> a;
  for (double ms : ms_per_step) {
    const double share = std::max(fastest, 1e-9) / std::max(ms, 1e-9);
    a.push_back(std::clamp<int64_t>(std::llround(share * static_cast<double>(H)), 1, H));
  }
  return a;
}

namespace {

// One compute time and one DP size per centre, both positive.
void check_balance_job(const BalanceJob& j) {
  AQ_CHECK(!j.centre_s_per_token.empty() && j.centre_s_per_token.size() == j.dp_per_centre.size(),
           "cost model: the balance job needs one compute time and one DP size per centre (got ",
           j.centre_s_per_token.size(), " and ", j.dp_per_centre.size(), ")");
  for (size_t c = 0; c < j.dp_per_centre.size(); ++c)
    AQ_CHECK(j.centre_s_per_token[c] > 0 && j.dp_per_centre[c] >= 1, "cost model: centre ", c,
             " needs compute > 0 s per token and >= 1 DP rank (got ", j.centre_s_per_token[c], ", ", j.dp_per_centre[c],
             ")");
}

double standalone_rate(const BalanceJob& j) {
  double r = 0;
  for (size_t c = 0; c < j.dp_per_centre.size(); ++c) r += j.dp_per_centre[c] / j.centre_s_per_token[c];
  return r;
}

}  // namespace

// A synchronous step ends when its slowest rank has run its micro-batches and the exchange after them is done:
// period = max_d k_d·t_d + sync_s, every rank's wait = period − its own compute.
BalancePrediction predict_balance_sync(const BalanceJob& j, bool balanced) {
  check_balance_job(j);
  std::vector<double> rank_s;  // one rank's time per micro-batch, DP rank order = centre order
  std::vector<size_t> first_rank;
  for (size_t c = 0; c < j.dp_per_centre.size(); ++c) {
    first_rank.push_back(rank_s.size());
    for (int d = 0; d < j.dp_per_centre[c]; ++d) rank_s.push_back(j.centre_s_per_token[c] * j.tokens_per_micro);
  }
  const int64_t dp = static_cast<int64_t>(rank_s.size());
  AQ_CHECK(balanced || j.micro_batches % dp == 0, "cost model: ", j.micro_batches,
           " micro-batches do not split evenly over ", dp, " ranks");
  const std::vector<int> k = balanced ? deal_by_speed(rank_s, j.micro_batches)
                                      : std::vector<int>(rank_s.size(), static_cast<int>(j.micro_batches / dp));
  double compute = 0;
  for (size_t d = 0; d < rank_s.size(); ++d) compute = std::max(compute, k[d] * rank_s[d]);
  BalancePrediction p;
  p.compute_s = compute;
  p.period_s = compute + j.sync_s;
  for (size_t c = 0; c < first_rank.size(); ++c) {
    const size_t d = first_rank[c];
    p.share.push_back(k[d]);
    p.waiting_share.push_back((p.period_s - k[d] * rank_s[d]) / p.period_s);
  }
  p.tokens_per_s = static_cast<double>(j.micro_batches) * j.tokens_per_micro / p.period_s;
  p.standalone_tokens_per_s = standalone_rate(j);
  return p;
}

// DiLoCo: centres step on their own between outer syncs, so a window lasts as long as its slowest centre's
// trained steps (idle steps cost nothing) plus the outer exchange's exposed time.
BalancePrediction predict_balance_diloco(const BalanceJob& j, bool balanced) {
  check_balance_job(j);
  AQ_CHECK(j.H >= 1 && j.micro_per_step >= 1, "cost model: DiLoCo needs H >= 1 and >= 1 micro-batch per step");
  std::vector<double> step_s;
  for (double s : j.centre_s_per_token) step_s.push_back(s * j.tokens_per_micro * j.micro_per_step);
  const std::vector<int64_t> a = balanced ? pace_by_speed(step_s, j.H) : std::vector<int64_t>(step_s.size(), j.H);
  double compute = 0, tokens = 0;
  for (size_t c = 0; c < a.size(); ++c) {
    compute = std::max(compute, static_cast<double>(a[c]) * step_s[c]);
    tokens +=
        static_cast<double>(j.dp_per_centre[c]) * static_cast<double>(a[c]) * j.micro_per_step * j.tokens_per_micro;
  }
  BalancePrediction p;
  p.share = a;
  p.compute_s = compute;
  p.period_s = compute + j.outer_s_per_window;
  for (size_t c = 0; c < a.size(); ++c)
    p.waiting_share.push_back((p.period_s - static_cast<double>(a[c]) * step_s[c]) / p.period_s);
  p.tokens_per_s = tokens / p.period_s;
  p.standalone_tokens_per_s = standalone_rate(j);
  return p;
}

}  // namespace aq::cost
