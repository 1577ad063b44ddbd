// calibrate.cpp — `aq-bench calibrate`: the cost model's inputs measured on the world mpirun started (on the WAN
// testbed: `scripts/wan_testbed.sh run 4 -- build/bin/aq-bench calibrate --save-calibration cal.json`).
//   * α and bandwidth per link class: a ping-pong between one pair of ranks of each class present (same host:
//     node; same centre, other host: centre; other centres: wan) at 8 B (α = half the round trip) and at
//     max/8 and max bytes (bandwidth from the slope between the two, so α and tbf's initial burst cancel).
//     The other ranks wait meanwhile, so the pair has the link to itself. A class the world lacks copies the
//     next faster one (and says so in `source`).
//   * the WAN again as hier's exchange loads it (wan_exchange): the hierarchical all-reduce itself, every carrier
//     pair sending both ways at once, timed at 1/32, 1/16, … 1/2 and all of the configuration's gradient bucket,
//     less its intra-centre stages: a bandwidth-by-size curve;
//   * compute per token: every rank trains --calibrate-steps steps of the configuration as a one-process job at
//     the same time (so the job's own sharing of cores is priced in); per step the slowest rank's time (a
//     synchronous step waits for it), median over the steps after the first two, per token.
//   * codec throughput: every rank encodes (with error feedback) and decodes 1 Mi fp32 values per codec, at the
//     same time; fp32 bytes per second, averaged over ranks.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iterator>

#include "examples/bench/bench.h"
#include "examples/main_guard.h"
#include "train/trainer.h"
#include "parallel/algo/dp_algorithm.h"
#include "parallel/context.h"
#include "runtime/data.h"
#include "runtime/file_io.h"
#include "runtime/log.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"

namespace aq::bench {
namespace {

// One-way time of `bytes` between world ranks a and b: half the median round trip of `iters` ping-pongs (after
// one untimed). Collective over the world: ranks other than a and b only take part in the closing broadcast.
double one_way_s(ParallelContext& ctx, int a, int b, double bytes, int iters) {
  Backend& w = ctx.world();
  const int me = ctx.world_rank();
  std::vector<uint16_t> buf(static_cast<size_t>(std::max(1.0, std::ceil(bytes / 2))));
  const auto n = static_cast<int64_t>(buf.size());
  std::vector<double> rtt;
  if (me == a || me == b) {
    const int peer = me == a ? b : a;
    for (int i = 0; i <= iters; ++i) {
      const double t0 = steady_ms();
      if (me == a) {
        w.send(buf.data(), n, DType::U16, peer, {"calibrate ping"})->wait();
        w.recv(buf.data(), n, DType::U16, peer, {"calibrate pong"})->wait();
      } else {
        w.recv(buf.data(), n, DType::U16, peer, {"calibrate ping"})->wait();
        w.send(buf.data(), n, DType::U16, peer, {"calibrate pong"})->wait();
      }
      if (i > 0) rtt.push_back((steady_ms() - t0) / 1e3);
    }
  }
  double t = me == a ? median(rtt) / 2 : 0;
  w.all_reduce_sync(&t, 1, DType::F64, {"calibrate: one-way time"});
  return t;
}

cost::Link measure_link(ParallelContext& ctx, int a, int b, double max_bytes) {
  cost::Link l;
  l.alpha_s = one_way_s(ctx, a, b, 8, 20);
  const double small = max_bytes / 8, t_small = one_way_s(ctx, a, b, small, 4);
  const double t_big = one_way_s(ctx, a, b, max_bytes, 3);
  l.bytes_per_s = t_big > t_small ? (max_bytes - small) / (t_big - t_small) : max_bytes / t_big;
  return l;
}

// The hierarchical all-reduce (parallel/algo/hier.cpp, no compression) of `bytes` over the world's DP groups:
// the slowest rank's time, median of `iters` calls after one untimed, each started together after a barrier.
// Collective over the world.
double hier_all_reduce_s(ParallelContext& ctx, double bytes, int iters) {
  const auto count = static_cast<int64_t>(bytes / 4);
  DpAlgoOptions ao;
  ao.algo = "hier";
  ao.buffer_size = count;
  std::unique_ptr<DpAlgorithm> dp = make_dp_algorithm(ao, ctx.dp_groups());
  std::vector<float> buf(static_cast<size_t>(count), 1.0f);
  std::vector<double> times;
  for (int i = 0; i <= iters; ++i) {
    ctx.world().barrier({"calibrate: exchange barrier"})->wait();
    const double t0 = steady_ms();
    dp->all_reduce(buf.data(), count, 0, {"calibrate: hierarchical all-reduce"})->wait();
    double dt = (steady_ms() - t0) / 1e3;
    ctx.world().all_reduce_sync(&dt, 1, DType::F64, {"calibrate: exchange time", ReduceOp::Max});
    if (i > 0) times.push_back(dt);
  }
  return median(times);
}

double time_s(const std::function<void()>& f, int reps) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = steady_ms();
    f();
    t.push_back((steady_ms() - t0) / 1e3);
  }
  return median(t);
}

}  // namespace

cost::Calibration calibrate(ParallelContext& ctx, const CalibrateOptions& o) {
  AQ_CHECK(o.steps >= 3, "calibration needs --calibrate-steps >= 3 (two untimed; got ", o.steps, ")");
  const int world = ctx.world_size(), me = ctx.world_rank();
  cost::Calibration cal;

  // 1. Links. Host identity by a hash of the host name (all-gathered), centre from the topology.
  std::vector<int32_t> host(static_cast<size_t>(world));
  const auto h = static_cast<int32_t>(std::hash<std::string>{}(ctx.host()) & 0x7fffffff);
  ctx.world().all_gather(&h, host.data(), 1, DType::I32, {"calibrate: hosts"})->wait();
  const Topology& topo = ctx.topology();
  cost::Link* links[3] = {&cal.node, &cal.centre, &cal.wan};
  const char* names[3] = {"node", "centre", "wan"};
  bool measured[3] = {false, false, false};
  std::string source = str("aq-bench calibrate on ", world, " ranks (", topo.describe(), ")",
                           o.compute_only ? "; links not measured (--compute-only)" : "");
  for (int cls = 0; cls < 3 && !o.compute_only; ++cls) {
    int pa = -1, pb = -1;
    for (int a = 0; a < world && pa < 0; ++a)
      for (int b = a + 1; b < world && pa < 0; ++b) {
        const bool same_centre = topo.centre_of[a] == topo.centre_of[b], same_host = host[a] == host[b];
        const int c = !same_centre ? 2 : same_host ? 0 : 1;
        if (c == cls) pa = a, pb = b;
      }
    if (pa < 0) continue;
    *links[cls] = measure_link(ctx, pa, pb, o.max_bytes);
    measured[cls] = true;
    source += str("; ", names[cls], ": ranks ", pa, "-", pb);
  }
  for (int cls = 0; cls < 3 && !o.compute_only; ++cls)
    if (!measured[cls]) {
      int from = -1;
      for (int k = cls - 1; k >= 0 && from < 0; --k)
        if (measured[k]) from = k;
      for (int k = cls + 1; k < 3 && from < 0; ++k)
        if (measured[k]) from = k;
      if (from >= 0) *links[cls] = *links[from];
      source +=
          str("; ", names[cls], ": not in this world, ", from >= 0 ? str("copied from ", names[from]) : "assumed");
    }

  // 1b. The WAN as hier's exchange loads it (cost_model.h: wan_exchange): the hierarchical all-reduce of n/32 …
  // n in halvings, n = the configuration's gradient bucket (the range its fp32, bf16 and int8 stages span, down
  // to DiLoCo's fragments of a quarter of the model in int4, whose short stages ride the shaper's burst and run
  // faster), less its intra-centre stages as the node link prices them. Its 2 cross stages put (C−1)/C·n each on
  // a centre's link: bandwidth = 2(C−1)/C·n / (time − 2 α_W), keyed by the stage's bytes. Times are the slowest
  // rank's, so every rank keeps the same points.
  const TrainShape sh = shape_for(o.config);
  if (measured[2]) {
    const double C = topo.centres(), g = topo.cross_shards(), f = (C - 1) / C;
    const double n_cfg = std::min(4 * sh.params(), 25 * 1048576.0);  // one bucket of the default --bucket-mb
    const double sizes[] = {n_cfg / 32, n_cfg / 16, n_cfg / 8, n_cfg / 4, n_cfg / 2, n_cfg};
    for (double n : sizes) {
      const double y = hier_all_reduce_s(ctx, n, 4) - 2 * cost::ring_half_s(static_cast<int>(g), n, cal.node);
      // A point whose time is mostly the two latencies says nothing about the bandwidth (a fast link, a small
      // model): left out, and with none left the model uses the one-flow rate.
      if (y - 2 * cal.wan.alpha_s < 0.25 * y) continue;
      cal.wan_exchange.emplace_back(f * n, 2 * f * n / (y - 2 * cal.wan.alpha_s));
    }
    source += str("; wan exchange: hier all-reduce of ", static_cast<int64_t>(n_cfg), " B, /2, … /32");
    if (const size_t left_out = std::size(sizes) - cal.wan_exchange.size())
      source += str(" (", left_out, " of ", std::size(sizes), " sizes left out: their time was mostly latency)");
  }

  // 2. Compute per token: a one-process job on every rank at once.
  std::string dir, data = o.data;
  if (data.empty()) {
    char tmpl[] = "/tmp/aq-calibrate-XXXXXX";
    AQ_CHECK(::mkdtemp(tmpl) != nullptr, "cannot create a temporary directory under /tmp");
    dir = tmpl;
    data = dir + "/train_000.bin";
    Rng rng(1234);
    std::vector<uint16_t> tok(static_cast<size_t>(sh.batch) * sh.seq * (o.steps + 1) + 1);
    for (auto& t : tok) t = static_cast<uint16_t>(rng.next_u64() % static_cast<uint64_t>(sh.vocab));
    write_shard(data, tok);
  }
  TrainConfig cfg;
  cfg.layers = sh.layers, cfg.heads = sh.heads, cfg.dim = sh.dim, cfg.vocab = sh.vocab;
  cfg.seq = sh.seq, cfg.batch = sh.batch, cfg.steps = o.steps, cfg.data = data, cfg.threads = o.threads;
  cfg.device = "cpu", cfg.quiet = true;
  TrainResult r;
  try {
    r = train(cfg, ParallelContext::local());
  } catch (...) {
    if (!dir.empty()) ::unlink(data.c_str()), ::rmdir(dir.c_str());
    throw;
  }
  if (!dir.empty()) ::unlink(data.c_str()), ::rmdir(dir.c_str());
  // A synchronous step waits for its slowest rank: the median over steps of the slowest rank's time at that
  // step (the ranks ran their steps side by side). The same per centre, for centres of different speed
  // (--balance): column c of row i holds centre c's slowest rank at step i.
  const int C = topo.centres();
  const double tokens = static_cast<double>(sh.batch) * sh.seq;
  std::vector<double> ms(static_cast<size_t>(o.steps) * (1 + C), 0.0);
  for (size_t i = 0; i < r.steps.size() && i < static_cast<size_t>(o.steps); ++i) {
    ms[i * (1 + C)] = r.steps[i].ms;
    ms[i * (1 + C) + 1 + static_cast<size_t>(ctx.centre())] = r.steps[i].ms;
  }
  ctx.world().all_reduce_sync(ms.data(), static_cast<int64_t>(ms.size()), DType::F64,
                              {"calibrate: slowest rank per step", ReduceOp::Max});
  std::vector<std::vector<double>> slowest(static_cast<size_t>(1 + C));
  for (size_t i = 2; i < static_cast<size_t>(o.steps); ++i)
    for (int k = 0; k <= C; ++k) slowest[k].push_back(ms[i * (1 + C) + k]);
  const double per_token = median(slowest[0]) / 1e3 / tokens;
  cal.centre_compute_s_per_token.clear();
  if (C > 1)
    for (int c = 0; c < C; ++c) cal.centre_compute_s_per_token.push_back(median(slowest[1 + c]) / 1e3 / tokens);

  // 3. Codecs, every rank at once.
  const int64_t n = 1 << 20;
  std::vector<float> x(static_cast<size_t>(n)), res(static_cast<size_t>(n), 0.0f), acc(static_cast<size_t>(n));
  Rng rng(99 + static_cast<uint64_t>(me));
  for (auto& v : x) v = static_cast<float>(static_cast<double>(rng.next_u64() % 20001) / 1e4 - 1.0);
  std::vector<uint8_t> wire(codec_bytes(WanCodec::None, n));
  // [compute, encode per codec, decode per codec]: the same on every rank; summed and divided by the world below
  constexpr int K = kWanCodecs;
  double rates[1 + 2 * K] = {per_token};
  for (int k = 0; k < K; ++k) {
    const auto c = static_cast<WanCodec>(k);
    const double te = time_s([&] { codec_encode(c, x.data(), k ? res.data() : nullptr, n, wire.data()); }, 5);
    const double td = time_s([&] { codec_decode(c, wire.data(), n, acc.data(), true); }, 5);
    rates[1 + k] = 4.0 * n / te;
    rates[1 + K + k] = 4.0 * n / td;
  }
  ctx.world().all_reduce_sync(rates, 1 + 2 * K, DType::F64, {"calibrate: compute and codecs"});
  cal.compute_s_per_token = rates[0] / world;
  for (int k = 0; k < K; ++k) {
    cal.encode_bytes_per_s[k] = rates[1 + k] / world;
    cal.decode_bytes_per_s[k] = rates[1 + K + k] / world;
  }
  cal.source = source + str("; compute: ", o.config, " B", sh.batch, " T", sh.seq, ", ", o.threads,
                            " thread(s), every rank at once");
  return cal;
}

int calibrate_main(int argc, char** argv) {
  CalibrateOptions o;
  std::string save, centres = "auto";
  CLI::App app{"aq-bench calibrate: alpha-beta per link class, compute per token and codec throughput of this world"};
  app.add_option("--config", o.config, "tiny | small (the training shape whose compute is measured)")
      ->capture_default_str();
  app.add_option("--data", o.data, "Training shards for the compute steps (default: random tokens)");
  app.add_option("--calibrate-steps", o.steps, "One-process steps per rank (two untimed)")->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads per rank")->capture_default_str();
  app.add_option("--max-bytes", o.max_bytes, "Largest ping-pong message")->capture_default_str();
  app.add_option("--centres", centres, "auto (AQ_CENTRE) | N equal blocks of ranks")->capture_default_str();
  app.add_option("--save-calibration", save, "Write the calibration here (JSON)");
  app.add_flag("--compute-only", o.compute_only, "Measure compute and codecs only (links keep assumed values)");
  ParallelContext& ctx = ParallelContext::init(&argc, &argv);
  return run_main("aq-bench calibrate", app, argc, argv, ctx, [&] {
    AQ_CHECK(o.max_bytes >= 4096, "--max-bytes must be >= 4096 (got ", o.max_bytes, ")");
    if (!save.empty()) check_writable(save, "calibration");  // every rank: the check must fail everywhere or nowhere
    ctx.configure(1, 300, centres);
    const cost::Calibration cal = calibrate(ctx, o);
    if (ctx.world_rank() == 0) {
      std::printf("%s", describe_calibration(cal).c_str());
      if (!save.empty()) {
        save_calibration(cal, save);
        std::printf("wrote %s\n", save.c_str());
      }
      std::printf("%s\n", calibration_to_json(cal).dump().c_str());
    }
  });
}

}  // namespace aq::bench
