// wan_worker.cpp — `aq-bench wan-worker`: one configuration of `aq-bench wan` (wan.cpp), started by it under the
// testbed's mpirun. It trains (aq::train, the path aq-train runs; rank 0 writes the JSONL), then all-gathers every
// rank's centre, median step time, exposed and total communication, wan_ms and wan_bytes (steps after the first
// two), its total wan_bytes, its mean step time, the tokens/s it trained (idle steps of a paced centre count
// no tokens) and the share of its time spent waiting on communication (exposed), and prints them as one JSON line on rank 0: the JSONL holds rank 0's figures only.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "examples/bench/bench.h"
#include "examples/main_guard.h"
#include "train/trainer.h"
#include "parallel/context.h"

namespace aq::bench {
namespace {

struct WorkerOptions {
  std::string config = "tiny", data, val_data, dp_algo = "flat", compress = "none", error_feedback = "auto", log;
  std::string centres = "auto", outer = "none", balance = "off";
  int steps = 300, threads = 1, eval_batches = 32, outer_fragments = 1, grad_accum = 1;
  int64_t balance_steps = 3;
  int64_t outer_steps = 50, outer_overlap = 0;
  double lr = 1e-3;
  int skip = 2;  // warm-up steps left out of the medians
};

void worker(ParallelContext& ctx, const WorkerOptions& o) {
  ctx.configure(1, 300, o.centres);
  const TrainShape sh = shape_for(o.config);
  TrainConfig cfg;
  cfg.layers = sh.layers, cfg.heads = sh.heads, cfg.dim = sh.dim, cfg.vocab = sh.vocab;
  cfg.seq = sh.seq, cfg.batch = sh.batch, cfg.steps = o.steps, cfg.threads = o.threads, cfg.device = "cpu";
  cfg.data = o.data, cfg.val_data = o.val_data, cfg.eval_batches = o.eval_batches, cfg.log = o.log;
  cfg.schedule.lr = o.lr, cfg.quiet = true;
  cfg.dp_algo = o.dp_algo, cfg.wan_compress = o.compress, cfg.error_feedback = o.error_feedback;
  cfg.outer = o.outer, cfg.outer_steps = o.outer_steps, cfg.outer_fragments = o.outer_fragments;
  cfg.outer_overlap = o.outer_overlap, cfg.balance = o.balance, cfg.grad_accum = o.grad_accum;
  cfg.balance_steps = o.balance_steps;
  const TrainResult r = train(cfg, ctx);
  std::vector<double> ms, exposed, comm, wan_ms, wan_b;
  double wan_total = 0, ms_total = 0, trained = 0, exposed_total = 0;
  for (size_t i = 0; i < r.steps.size(); ++i) {
    wan_total += r.steps[i].wan_bytes;
    if (static_cast<int>(i) < o.skip && r.steps.size() > static_cast<size_t>(o.skip)) continue;
    ms.push_back(r.steps[i].ms), exposed.push_back(r.steps[i].exposed_comm_ms), comm.push_back(r.steps[i].comm_ms);
    wan_ms.push_back(r.steps[i].wan_ms), wan_b.push_back(r.steps[i].wan_bytes);
    // Low-communication runs: the mean matters (the outer syncs fall on few steps), and what this rank trained.
    ms_total += r.steps[i].ms;
    exposed_total += r.steps[i].exposed_comm_ms;
    trained += r.steps[i].micro_batches;  // this rank's K (its --balance share), 0 on an idle step
  }
  constexpr int kFields = 10;
  const double mine[kFields] = {static_cast<double>(ctx.centre()),
                                median(ms),
                                median(exposed),
                                median(comm),
                                median(wan_ms),
                                median(wan_b),
                                wan_total,
                                ms.empty() ? 0.0 : ms_total / static_cast<double>(ms.size()),
                                ms_total > 0 ? trained * sh.batch * sh.seq / (ms_total / 1e3) : 0.0,
                                ms_total > 0 ? exposed_total / ms_total : 0.0};
  std::vector<double> all(static_cast<size_t>(kFields * ctx.world_size()));
  ctx.world().all_gather(mine, all.data(), kFields, DType::F64, {"wan-worker: per-rank figures"})->wait();
  if (ctx.world_rank() != 0) return;
  nlohmann::ordered_json j;
  j["kind"] = "wan-worker";
  j["num_params"] = r.num_params;
  j["steps"] = r.steps.size();
  j["final_loss"] = r.steps.empty() ? 0.0 : r.steps.back().loss;
  j["val_loss"] = r.val_losses.empty() ? 0.0 : r.val_losses.back().second;
  for (int k = 0; k < ctx.world_size(); ++k) {
    const double* v = all.data() + kFields * k;
    j["ranks"].push_back({{"centre", static_cast<int>(v[0])},
                          {"step_ms", v[1]},
                          {"exposed_ms", v[2]},
                          {"comm_ms", v[3]},
                          {"wan_ms", v[4]},
                          {"wan_bytes", v[5]},
                          {"wan_bytes_total", v[6]},
                          {"mean_ms", v[7]},
                          {"tokens_per_s", v[8]},
                          {"exposed_share", v[9]}});
  }
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

}  // namespace

int wan_worker_main(int argc, char** argv) {
  WorkerOptions o;
  CLI::App app{"aq-bench wan-worker: one configuration of aq-bench wan (started by it under mpirun)"};
  app.add_option("--config", o.config, "tiny | small")->capture_default_str();
  app.add_option("--data", o.data, "Training shards")->required();
  app.add_option("--val-data", o.val_data, "Validation shards");
  app.add_option("--steps", o.steps, "Steps")->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads per rank")->capture_default_str();
  app.add_option("--lr", o.lr, "Learning rate (constant)")->capture_default_str();
  app.add_option("--eval-batches", o.eval_batches, "Validation batches at the end")->capture_default_str();
  app.add_option("--dp-algo", o.dp_algo, "flat | hier")->capture_default_str();
  app.add_option("--wan-compress", o.compress, "none | bf16 | int8 | int4")->capture_default_str();
  app.add_option("--error-feedback", o.error_feedback, "on | off | auto")->capture_default_str();
  app.add_option("--centres", o.centres, "auto | N")->capture_default_str();
  app.add_option("--outer", o.outer, "none | diloco")->capture_default_str();
  app.add_option("--outer-steps", o.outer_steps, "DiLoCo H")->capture_default_str();
  app.add_option("--outer-fragments", o.outer_fragments, "Streaming fragments F")->capture_default_str();
  app.add_option("--outer-overlap", o.outer_overlap, "Overlap tau (inner steps)")->capture_default_str();
  app.add_option("--grad-accum", o.grad_accum, "Micro-batches per step")->capture_default_str();
  app.add_option("--balance", o.balance, "off | auto | K0,K1,... (aq-train's --balance)")->capture_default_str();
  app.add_option("--balance-steps", o.balance_steps, "Timed steps of --balance auto")->capture_default_str();
  app.add_option("--log", o.log, "Rank 0's JSONL");
  app.add_option("--skip", o.skip, "Warm-up steps left out of the figures")->capture_default_str();
  ParallelContext& ctx = ParallelContext::init(&argc, &argv);
  return run_main("aq-bench wan-worker", app, argc, argv, ctx, [&] { worker(ctx, o); });
}

}  // namespace aq::bench
