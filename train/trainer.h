// trainer.h — the training job behind aq-train (train/): data, steps, clipping, AdamW, DiLoCo, evaluation, checkpoints.
//
// One step: next batch → forward_backward (tensor-parallel collectives inside; data-parallel gradient buckets
// start their all-reduces during backward) → GradBuckets::finish (or, with ZeRO-1, a reduce-scatter) → global
// norm → clip factor → AdamW (on this rank's shard under ZeRO-1, then an all-gather of parameters) → metrics.
// Checkpoints are one consolidated Hugging Face GPT-2 safetensors file plus a companion "<file>.state" (AdamW
// moments, step, data position, RNG, configuration), the same whatever layout wrote them, so --resume works
// under any tp/dp/zero layout and continues bit-identically under the same one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "model/schedule.h"
#include "parallel/context.h"
#include "runtime/checkpoint_dir.h"

namespace aq {

struct StepRecord {
  int64_t step;                  // 1-based
  double loss, lr, grad_norm, ms, tokens_per_s;
  double comm_ms = 0, exposed_comm_ms = 0;  // communication in the step: total, and not hidden behind compute
  double wan_bytes = 0, wan_ms = 0;  // bytes this rank sent to other centres; time in the cross-centre stage
  bool outer_sync = false;           // --outer diloco: this step merged an outer update (of some fragment)
  int outer_launched = 0, outer_merged = 0;  // fragments whose exchange started / whose update was merged
  double outer_exposed_ms = 0;       // time the step waited for outer exchanges (the rest was hidden)
  int micro_batches = 0;  // micro-batches this rank trained in the step (its K; 0 when idle)
  bool idle = false;  // --outer diloco --balance: this rank's centre sat this step out (it trains fewer steps
                      // per window, being slower); loss is then that of its last trained step
};

struct TrainConfig {
  // Shape of a fresh model. With --init-from/--resume the checkpoint decides, and a flag given explicitly must
  // agree with it.
  std::optional<int> layers, heads, dim, vocab, max_seq;
  // --model-config: a Hugging Face config.json (model_type gpt2 or llama) for a fresh model, or for a checkpoint
  // file that has no config of its own.
  std::string model_config;
  std::string init_from, resume;
  std::string data, val_data;
  int batch = 4, seq = 64;
  int grad_accum = 1;            // micro-batches of `batch` sequences per optimizer step
  // Work split by speed over centres of different speed: "off"; "auto" (after a warm-up step, `balance_steps`
  // steps are timed); or a list with one number per centre, in centre order. Synchronous data parallelism:
  // the step's dp·grad_accum micro-batches are dealt out in proportion to each centre's speed (the list gives
  // micro-batches per rank of each centre). --outer diloco: time-based inner phases — each centre trains as
  // many of every `outer_steps` steps as fit in the time the fastest takes for all of them (the list gives
  // those counts), and the outer average weighs centres by the inner steps they trained.
  std::string balance = "off";
  int64_t balance_steps = 3;
  int64_t steps = 100;
  LrSchedule schedule;          // lr, min_lr, warmup, kind (steps is filled from `steps`)
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, grad_clip = 1.0;
  uint64_t seed = 1337;
  // --save DIR: a checkpoint directory (runtime/checkpoint_dir.h), one step-N sub-directory per save, the newest
  // `keep` of them kept (0 = all).
  std::string save, log;
  int keep = 2;
  // A fresh run refuses a --save directory that holds another run's saves unless this is set (--overwrite).
  bool overwrite = false;
  int64_t save_every = 0, eval_every = 0, eval_batches = 8;
  // Stopping early while the schedule still follows `steps` (a run split over several jobs is bit-identical to
  // one uninterrupted run): after step `stop_at` (0 = no), or before `time_limit_min` minutes would be exceeded
  // (0 = no). SIGTERM, SIGINT and SIGUSR1 stop the same way; a second signal ends the process at once.
  int64_t stop_at = 0;
  double time_limit_min = 0;
  int threads = 0;               // 0 → the node's cores shared by its ranks (cores / local ranks)
  std::string device = "auto";   // cpu | cuda | auto (cuda when this build has it, a GPU is visible and the
                                 // job is a single process; several ranks on GPUs say cuda explicitly)
  // Per centre: "NAME=DEV[,NAME=DEV...]" (DEV cpu | cuda); a centre not listed uses `device`. Centres of
  // different devices need --outer diloco.
  std::string centre_device;
  std::string dtype = "auto";    // fp32 | bf16 | auto (bf16 on a GPU, fp32 on the CPU); bf16 keeps fp32 master
                                 // weights, gradients and optimizer state
  bool quiet = false;            // no per-step lines (tests)
  // Parallelism (the TP size is set on the ParallelContext; DP = world / TP).
  int zero = 0;                  // 1: ZeRO-1, optimizer state sharded over data-parallel ranks
  double bucket_mb = 25;         // data-parallel gradient bucket size
  // Across centres (the centres themselves are the ParallelContext's, from --centres / AQ_CENTRE).
  std::string dp_algo = "auto";        // flat | hier | auto (hier when the job spans several centres)
  std::string wan_compress = "none";   // none | bf16 | int8 | int4: the cross-centre hop of hier
  std::string error_feedback = "auto"; // on | off | auto (on for a lossy --wan-compress)
  // Low-communication training across centres (DiLoCo): each centre takes `outer_steps` inner steps on its own
  // replica, then the centres average their parameter change and an outer Nesterov step updates the global
  // parameters. "none": synchronous data parallelism everywhere.
  std::string outer = "none";          // none | diloco
  int64_t outer_steps = 50;            // H: inner steps between outer syncs
  double outer_lr = 0.7, outer_momentum = 0.9;
  int outer_fragments = 1;             // F: parameter fragments synced on a staggered schedule (streaming)
  int64_t outer_overlap = 0;           // τ: inner steps a fragment's exchange runs behind before it is merged
  double outer_mix = 0.5;              // τ > 0: weight of the replica's own values at the merge
  // The flags given on the command line (aq-train fills it). With --resume, the saved run's options that were not
  // given are restored, a given hyper-parameter that differs is taken with a line saying old → new, and a given
  // change that would alter the data order or shapes is refused (restore_saved_options). Unset (a program that
  // fills TrainConfig itself): the fields are taken as they are.
  std::optional<std::set<std::string>> given;
  // Called on every rank after each step, outside the step's timing (aq-bench times its sgemm ceiling there).
  std::function<void(const StepRecord&)> after_step;

  void validate() const;         // flag-level checks; throws aq::Error with the fix
};

struct TrainResult {
  std::vector<StepRecord> steps;  // the steps this run executed
  std::vector<std::pair<int64_t, double>> val_losses;
  std::string device = "cpu";          // what the run used: "cpu" or "cuda"
  std::string dtype = "fp32";          // "fp32" or "bf16"
  int64_t num_params = 0;              // real parameters of the whole model (all TP shards)
  size_t device_peak_bytes = 0;        // CUDA: peak device memory of this rank (caching allocator)
  size_t step_loop_device_mallocs = 0; // CUDA: cudaMalloc calls after the first step (expected 0)
  std::vector<double> wan_bytes_per_centre;  // across centres: bytes each centre sent over the run's steps
  // Why the run ended before --steps: "" (it did not), "--stop-at", "--time-limit", or the signal's name.
  std::string stopped_by;
  bool stopped_by_signal = false;  // the exit code is then kExitStoppedBySignal
};

// Runs the whole training job described by cfg on the ranks of ctx (configured beforehand). Collective: every
// rank calls it. Throws aq::Error on bad input or a non-finite loss — the same message on every rank.
TrainResult train(const TrainConfig& cfg, ParallelContext& ctx);

// The exit code of a run stopped by a signal (after saving when --save was given): EX_TEMPFAIL, "try again" —
// schedulers and scripts requeue on it. A run stopped by --stop-at or --time-limit exits 0.
constexpr int kExitStoppedBySignal = 75;

// --resume with cfg.given set: the options of the saved run (its state file's "train_options") put back where
// no flag was given, per the rules at TrainConfig::given; `dp` is this run's data-parallel size (the global batch
// is kept). Prints what it restored and what changed. Throws aq::Error for a refused change.
void restore_saved_options(TrainConfig& cfg, int dp);

// Applies --threads to OpenMP and OpenBLAS; returns the thread count in use.
int configure_threads(int threads, int local_ranks = 1);

}  // namespace aq
