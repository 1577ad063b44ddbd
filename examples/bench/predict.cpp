// predict.cpp — `aq-bench predict`: the cost model (parallel/cost_model.h) asked about a layout, and what-if
// tables for jobs the testbed cannot hold.
//
//   build/bin/aq-bench predict --calibration cal.json --centres 2 --ranks-per-centre 2 --wan-rate 100mbit
//   scripts/wan_testbed.sh run 4 -- build/bin/aq-bench predict --save-calibration cal.json   (calibrate first)
// Without --calibration it calibrates on the world mpirun started (aq-bench calibrate) and predicts that world's
// layout. --wan-rate and --wan-latency-ms replace the calibrated WAN link (e.g. to ask what a faster line buys).
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>

#include "examples/bench/bench.h"
#include "examples/main_guard.h"
#include "parallel/context.h"
#include "runtime/file_io.h"

namespace aq::bench {
namespace {

struct WhatIfModel {
  const char* name;
  double params;
  int layers, dim, seq, tp;
  double tokens_per_replica;  // B·T of one data-parallel replica (tp GPUs) per step
};

// GPT-2 124M and 1.5B at T = 1024; a Llama-7B-like shape (L32, C4096) at T = 2048 with TP 8 inside a node
// (its fp32 gradients and Adam state would not fit one 80 GB GPU otherwise).
constexpr WhatIfModel kModels[] = {
    {"GPT-2 124M", 124.4e6, 12, 768, 1024, 1, 16 * 1024},
    {"GPT-2 1.5B", 1557.6e6, 48, 1600, 1024, 1, 8 * 1024},
    {"7B (L32 C4096)", 6.74e9, 32, 4096, 2048, 8, 32 * 2048},
};

}  // namespace

void print_what_if(double wan_latency_s) {
  const double peak = 989.4e12, mfu = 0.40;
  cost::Calibration cal;
  cal.node = {5e-6, 150e9};    // NVLink 4: ~150 GB/s ring algbw per GPU inside a node
  cal.centre = {10e-6, 45e9};  // InfiniBand NDR 400 Gbit/s per GPU, ~45 GB/s achievable
  cal.wan = {wan_latency_s, 0};
  for (int k = 0; k < kWanCodecs; ++k)
    cal.encode_bytes_per_s[k] = cal.decode_bytes_per_s[k] = 200e9;  // GPU kernels, HBM-bound
  std::printf(
      "\nWhat-if (cost model only; nothing here was run). Assumptions:\n"
      "  GPUs: H100 SXM, dense bf16 peak %.1f TFLOP/s, MFU %.0f%% => compute = tokens x (6N + 6LCT) / (tp x peak x "
      "MFU)\n"
      "  8 GPUs per node; inside a node alpha %.0f us, %.0f GB/s (NVLink); inside a centre alpha %.0f us, %.0f GB/s "
      "per "
      "GPU (InfiniBand NDR)\n"
      "  across centres: alpha %.0f ms per message, the rate below per centre and direction, shared by the centre's "
      "GPUs\n"
      "  codecs on the GPU at %.0f GB/s; gradients fp32 (4 bytes x parameters / tp), buckets 25 MiB, overlap with a\n"
      "  backward of 2/3 of compute; flat = one NCCL-style ring through every DP rank (2(p-1) WAN latencies per "
      "bucket);\n"
      "  hier = reduce-scatter in the centre, one exchange per shard across centres, all-gather in the centre.\n"
      "  Memory is not checked; no DiLoCo-style outer steps (every step all-reduces every gradient).\n",
      peak / 1e12, mfu * 100, cal.node.alpha_s * 1e6, cal.node.bytes_per_s / 1e9, cal.centre.alpha_s * 1e6,
      cal.centre.bytes_per_s / 1e9, wan_latency_s * 1e3, cal.encode_bytes_per_s[0] / 1e9);
  const int centres[] = {2, 8};
  const int gpus[] = {8, 512};
  const double rates[] = {100e6 / 8, 1e9 / 8, 10e9 / 8, 100e9 / 8};
  for (const WhatIfModel& m : kModels) {
    cal.compute_s_per_token = cost::compute_s_per_token_from_flops(m.params, m.layers, m.dim, m.seq, m.tp * peak, mfu);
    std::printf("\n%s: %.3g parameters, tp %d, %.0f tokens per replica per step, compute %.3f s per step\n", m.name,
                m.params, m.tp, m.tokens_per_replica, m.tokens_per_replica * cal.compute_s_per_token);
    std::printf("%7s %6s %12s | %10s %10s %10s | %8s %8s | %10s %10s %10s\n", "centres", "GPUs/c", "WAN rate", "flat s",
                "hier s", "int8 s", "hier x", "int8 x", "flat GB", "hier GB", "int8 GB");
    for (int C : centres)
      for (int g : gpus)
        for (double rate : rates) {
          cal.wan.bytes_per_s = rate;
          cost::StepJob job;
          job.params = m.params / m.tp;
          job.tokens_per_rank = m.tokens_per_replica;
          job.layout = {C, g / m.tp, std::max(1, 8 / m.tp)};
          double step[3], gb[3];
          const cost::Algo algos[3] = {cost::Algo::FlatRing, cost::Algo::Hier, cost::Algo::Hier};
          const WanCodec codecs[3] = {WanCodec::None, WanCodec::None, WanCodec::Int8};
          for (int i = 0; i < 3; ++i) {
            job.algo = algos[i];
            job.codec = codecs[i];
            const cost::Prediction p = cost::predict_step(job, cal);
            step[i] = p.step_s;
            gb[i] = p.wan_bytes_per_centre / 1e9;
          }
          std::printf("%7d %6d %12s | %10.3g %10.3g %10.3g | %7.1fx %7.1fx | %10.3g %10.3g %10.3g\n", C, g,
                      format_rate(rate).c_str(), step[0], step[1], step[2], step[0] / step[1], step[0] / step[2], gb[0],
                      gb[1], gb[2]);
        }
  }
  std::printf("(s: predicted step time; x: speed-up over flat; GB: bytes each centre sends per step)\n");

  // Streaming DiLoCo's question: what link does each mode need to keep the GPUs busy? Synchronous hier (every
  // step), DiLoCo H=50, streaming F=4 τ=1, all with int8 on the slow hop.
  const WhatIfModel& m = kModels[1];
  cal.compute_s_per_token = cost::compute_s_per_token_from_flops(m.params, m.layers, m.dim, m.seq, m.tp * peak, mfu);
  std::printf("\nWAN rate each centre needs for a compute utilisation (%s, 2 centres x 8 GPUs, int8 on the slow hop,\n"
              "WAN alpha %.0f ms; utilisation = compute / step):\n", m.name, wan_latency_s * 1e3);
  std::printf("%-40s %15s %15s %15s %15s %15s\n", "mode", "50%", "80%", "90%", "95%", "99%");
  struct Mode {
    const char* name;
    int64_t H;
    int F;
    int64_t tau;
  };
  for (const Mode& mode : {Mode{"synchronous hier (H = 1)", 1, 1, 0}, Mode{"DiLoCo H = 50", 50, 1, 0},
                           Mode{"streaming DiLoCo H = 50, F = 4, tau 1", 50, 4, 1}}) {
    cost::DilocoJob dj;
    dj.inner.params = m.params / m.tp;
    dj.inner.tokens_per_rank = m.tokens_per_replica;
    dj.inner.layout = {1, 8 / m.tp, std::max(1, 8 / m.tp)};  // one node of 8 GPUs per centre
    dj.centres = 2;
    dj.H = mode.H;
    dj.F = mode.F;
    dj.tau = mode.tau;
    dj.codec = WanCodec::Int8;
    std::printf("%-40s", mode.name);
    for (double u : {0.5, 0.8, 0.9, 0.95, 0.99}) {
      const double r = cost::wan_rate_for_utilisation(dj, cal, u);
      std::printf(" %15s", std::isfinite(r) ? format_rate(r).c_str() : "never");
    }
    std::printf("\n");
  }
  std::printf("(DiLoCo syncs 1/H of the steps; streaming spreads the model over F fragments and hides each exchange\n"
              " behind tau inner steps; \"never\": latency alone keeps it below)\n");

  // Which mode to use: for each link rate and model, the first mode in order of closeness to synchronous
  // training (the quality of one process with the global batch) whose predicted compute utilisation is >= 90%.
  struct Candidate {
    const char* name;
    int64_t H;
    int F;
    int64_t tau;
    WanCodec codec;
  };
  const Candidate candidates[] = {{"sync hier fp32", 1, 1, 0, WanCodec::None},
                                  {"sync hier int8", 1, 1, 0, WanCodec::Int8},
                                  {"DiLoCo H50 int8", 50, 1, 0, WanCodec::Int8},
                                  {"stream H50 F4 t1", 50, 4, 1, WanCodec::Int8},
                                  {"stream H500 F4 t1", 500, 4, 1, WanCodec::Int8}};
  std::printf("\nWhich mode (2 centres x 8 GPUs, WAN alpha %.0f ms): the first of sync fp32 > sync int8 > DiLoCo H50 >\n"
              "streaming H50 > streaming H500 (all int8 outer deltas) predicted at >= 90%% compute utilisation\n",
              wan_latency_s * 1e3);
  std::printf("%-12s", "WAN rate");
  for (const WhatIfModel& m : kModels) std::printf(" | %-30s", m.name);
  std::printf("\n");
  for (double rate : {10e6 / 8, 100e6 / 8, 1e9 / 8, 10e9 / 8, 100e9 / 8}) {
    std::printf("%-12s", format_rate(rate).c_str());
    for (const WhatIfModel& m : kModels) {
      cal.compute_s_per_token = cost::compute_s_per_token_from_flops(m.params, m.layers, m.dim, m.seq, m.tp * peak, mfu);
      cal.wan.bytes_per_s = rate;
      std::string pick;
      double u = 0;
      for (const Candidate& c : candidates) {
        cost::DilocoJob dj;
        dj.inner.params = m.params / m.tp;
        dj.inner.tokens_per_rank = m.tokens_per_replica;
        dj.inner.layout = {1, 8 / m.tp, std::max(1, 8 / m.tp)};
        dj.centres = 2, dj.H = c.H, dj.F = c.F, dj.tau = c.tau, dj.codec = c.codec;
        if (c.H == 1) {
          // Synchronous: the step model itself (buckets overlapping backward), not an outer exchange every step.
          cost::StepJob sync = dj.inner;
          sync.layout = {2, 8 / m.tp, std::max(1, 8 / m.tp)};
          sync.algo = cost::Algo::Hier;
          sync.codec = c.codec;
          const cost::Prediction p = cost::predict_step(sync, cal);
          u = p.compute_s / p.step_s;
        } else {
          u = cost::predict_diloco(dj, cal).utilisation;
        }
        pick = c.name;
        if (u >= 0.9) break;
      }
      std::printf(" | %-30s", str(u >= 0.9 ? "" : "none: ", pick, " (", static_cast<int>(100 * u), "%)").c_str());
    }
    std::printf("\n");
  }
  std::printf("(in parentheses: predicted compute utilisation of that mode; \"none\": even the last stays below 90%%)\n");
}

namespace {

struct Options {
  std::string calibration, save, config = "tiny", data, algo = "all", compress = "all", wan_rate, centres_spec = "auto";
  double params = 0, tokens = 0, wan_latency_ms = -1, what_if_latency_ms = 30, bucket_mb = 25;
  int centres = 0, per_centre = 0, per_node = 0, threads = 1;
  bool what_if = true;
};

void run(ParallelContext& ctx, const Options& o) {
  AQ_CHECK(o.algo == "all" || o.algo == "flat" || o.algo == "ring" || o.algo == "hier",
           "--algo must be flat, ring, hier or all (got \"", o.algo, "\")");
  AQ_CHECK(o.compress == "all" || is_wan_codec_name(o.compress), "--compress must be none, bf16, int8, int4 or all ",
           "(got \"", o.compress, "\")");
  AQ_CHECK(o.compress == "all" || o.compress == "none" || o.algo == "all" || o.algo == "hier", "--compress ",
           o.compress, " encodes hier's cross-centre hop, but --algo ", o.algo, " has none; use --algo hier or all");
  cost::Calibration cal;
  if (!o.calibration.empty()) {
    cal = load_calibration(o.calibration);
  } else {
    ctx.configure(1, 300, o.centres_spec);
    CalibrateOptions co;
    co.config = o.config;
    co.data = o.data;
    co.threads = o.threads;
    cal = calibrate(ctx, co);
    if (!o.save.empty() && ctx.world_rank() == 0) save_calibration(cal, o.save);
  }
  if (ctx.world_rank() != 0) return;
  if (!o.wan_rate.empty()) {  // the exchange keeps its measured efficiency against the one-flow rate
    const double r = rate_bytes_per_s(o.wan_rate);
    for (auto& point : cal.wan_exchange) point.second *= r / cal.wan.bytes_per_s;
    cal.wan.bytes_per_s = r;
  }
  if (o.wan_latency_ms >= 0) cal.wan.alpha_s = o.wan_latency_ms / 1e3;
  std::printf("%s", describe_calibration(cal).c_str());
  if (!o.save.empty()) std::printf("wrote %s\n", o.save.c_str());
  if (o.calibration.empty() && ctx.topology().centres() < 2 && o.wan_rate.empty())
    std::printf(
        "note: this world has no link across centres, so the WAN above is an assumption (1 GB/s, no "
        "latency); run under scripts/wan_testbed.sh, pass --calibration FILE, or give --wan-rate and "
        "--wan-latency-ms\n");

  const TrainShape sh = shape_for(o.config);
  cost::StepJob job;
  job.params = o.params > 0 ? o.params : sh.params();
  job.tokens_per_rank = o.tokens > 0 ? o.tokens : static_cast<double>(sh.batch) * sh.seq;
  AQ_CHECK(o.bucket_mb > 0, "--bucket-mb must be > 0 MiB (got ", o.bucket_mb, ")");
  job.bucket_bytes = o.bucket_mb * 1048576.0;
  // Default layout: the world just calibrated when it spans centres, else the testbed's 2 centres x 2 ranks.
  const Topology& t = ctx.topology();
  const bool here = o.calibration.empty() && t.centres() > 1;
  job.layout.centres = o.centres > 0 ? o.centres : here ? t.centres() : 2;
  job.layout.dp_per_centre = o.per_centre > 0 ? o.per_centre : here ? std::max(1, ctx.dp() / t.centres()) : 2;
  job.layout.ranks_per_node = o.per_node > 0 ? o.per_node : job.layout.dp_per_centre;
  std::printf(
      "\nprediction: %.0f parameters, %.0f tokens per rank per step, %d centres x %d DP ranks (%d per node), "
      "buckets of %.0f MiB\n",
      job.params, job.tokens_per_rank, job.layout.centres, job.layout.dp_per_centre, job.layout.ranks_per_node,
      o.bucket_mb);
  std::printf("%-22s %-6s %10s %10s %11s %10s %14s\n", "algorithm", "codec", "compute ms", "comm ms", "exposed ms",
              "step ms", "wan B/centre");
  for (cost::Algo a : {cost::Algo::FlatBinomial, cost::Algo::FlatRing, cost::Algo::Hier}) {
    const std::string an = a == cost::Algo::Hier ? "hier" : a == cost::Algo::FlatRing ? "ring" : "flat";
    if (o.algo != "all" && o.algo != an) continue;
    for (int k = 0; k < kWanCodecs; ++k) {
      const auto c = static_cast<WanCodec>(k);
      if ((a != cost::Algo::Hier && k) || (o.compress != "all" && o.compress != wan_codec_name(c))) continue;
      job.algo = a;
      job.codec = c;
      const cost::Prediction p = cost::predict_step(job, cal);
      std::printf("%-22s %-6s %10.1f %10.1f %11.1f %10.1f %14.0f\n", cost::algo_name(a), wan_codec_name(c),
                  p.compute_s * 1e3, p.comm_s * 1e3, p.exposed_s * 1e3, p.step_s * 1e3, p.wan_bytes_per_centre);
    }
  }
  if (o.what_if) print_what_if(o.what_if_latency_ms / 1e3);
}

}  // namespace

int predict_main(int argc, char** argv) {
  Options o;
  CLI::App app{"aq-bench predict: step time and WAN bytes of a layout from the cost model, and what-if tables"};
  app.add_option("--calibration", o.calibration,
                 "Calibration JSON (aq-bench calibrate); default: calibrate this world");
  app.add_option("--save-calibration", o.save, "Write the calibration measured here");
  app.add_option("--config", o.config, "tiny | small: parameters and tokens per rank")->capture_default_str();
  app.add_option("--data", o.data, "Training shards for the compute calibration (default: random tokens)");
  app.add_option("--threads", o.threads, "CPU threads per rank (compute calibration)")->capture_default_str();
  app.add_option("--params", o.params, "Parameters (gradient values per rank), overriding --config");
  app.add_option("--tokens-per-rank", o.tokens, "Tokens per rank per step, overriding --config");
  app.add_option("--centres", o.centres, "Centres C (default: this world's, at least 2)");
  app.add_option("--ranks-per-centre", o.per_centre, "DP ranks per centre g (default: this world's)");
  app.add_option("--ranks-per-node", o.per_node, "DP ranks per node (default: all of a centre's)");
  app.add_option("--algo", o.algo, "flat (MPI binomial) | ring | hier | all")->capture_default_str();
  app.add_option("--compress", o.compress, "none | bf16 | int8 | int4 | all (hier)")->capture_default_str();
  app.add_option("--bucket-mb", o.bucket_mb, "Gradient bucket size in MiB")->capture_default_str();
  app.add_option("--wan-rate", o.wan_rate, "Replace the WAN bandwidth (e.g. 100mbit, 10gbit)");
  app.add_option("--wan-latency-ms", o.wan_latency_ms, "Replace the WAN latency (one message, ms)");
  app.add_option("--what-if-latency-ms", o.what_if_latency_ms, "WAN latency of the what-if tables")
      ->capture_default_str();
  app.add_option("--what-if", o.what_if, "Print the what-if tables")->capture_default_str();
  app.add_option("--calibrate-centres", o.centres_spec, "--centres of this world when calibrating (auto | N)")
      ->capture_default_str();
  ParallelContext& ctx = ParallelContext::init(&argc, &argv);
  return run_main("aq-bench predict", app, argc, argv, ctx, [&] {
    if (!o.wan_rate.empty()) rate_bytes_per_s(o.wan_rate);
    if (!o.save.empty()) check_writable(o.save, "calibration");  // every rank, so none is left waiting
    run(ctx, o);
  });
}

}  // namespace aq::bench
