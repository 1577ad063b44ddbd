// aq-train — train a GPT-2 on token shards.
//
//   build/bin/aq-train --data 'data/fortunes/train_*.bin' --val-data 'data/fortunes/val_*.bin'
//       --layers 4 --heads 4 --dim 128 --seq 128 --batch 16 --steps 500 --lr 1e-3 --save out/checkpoint
//   mpirun -np 4 build/bin/aq-train --tp 2 ...    (2-way tensor parallel x 2-way data parallel)

#include <CLI/CLI.hpp>
#include <algorithm>

#include "examples/main_guard.h"
#include "ops/plugin_loader.h"
#include "parallel/trace_session.h"
#include "runtime/blas_setup.h"
#include "runtime/log.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  aq::ensure_blas_kernels(argv);  // first: may re-execute this program with the right OpenBLAS kernels
  aq::TrainConfig cfg;
  CLI::App app{"aq-train: train a GPT-2 model on llm.c-format token shards (Aqueduct)"};
  app.get_formatter()->column_width(34);
  // A flag given twice takes its last value, so scripts can append overrides to their defaults.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);

  int layers = 0, heads = 0, dim = 0, vocab = 0, max_seq = 0;
  auto* o_layers = app.add_option("--layers", layers, "Transformer blocks L of a fresh model (default 4)");
  auto* o_heads = app.add_option("--heads", heads,
                                 "Attention heads H (default 4; also supplies n_head for a checkpoint lacking it)");
  auto* o_dim = app.add_option("--dim", dim, "Model width C, divisible by --heads (default 128)");
  auto* o_vocab = app.add_option("--vocab", vocab, "Vocabulary size V <= 65535 (default 256, byte-level)");
  auto* o_max_seq = app.add_option("--max-seq", max_seq, "Context length n_positions (default max(--seq, 128))");
  app.add_option("--model-config", cfg.model_config,
                 "Hugging Face config.json (model_type gpt2 or llama) of a fresh model, or of an --init-from file "
                 "without one beside it");
  app.add_option(
      "--init-from", cfg.init_from,
      "Start from the weights of a GPT-2 or Llama safetensors file, a Hugging Face model folder, a save, or a "
      "--save directory (its newest intact save)");
  app.add_option(
      "--resume", cfg.resume,
      "Continue a run saved with --save: its directory (the newest intact save is taken) or one step-N save");
  app.add_option("--data", cfg.data, "Training shards (file or glob)")->required();
  app.add_option("--val-data", cfg.val_data, "Validation shards (file or glob)");
  app.add_option("--batch", cfg.batch, "Sequences per step B")->capture_default_str();
  app.add_option("--seq", cfg.seq, "Tokens per sequence T")->capture_default_str();
  app.add_option("--balance", cfg.balance,
                 "off | auto (time the first steps, then split the work by centre speed) | K0,K1,... (one number per "
                 "centre). Synchronous: micro-batches per rank of each step; --outer diloco: inner steps of each "
                 "centre per --outer-steps window (time-based inner phases, token-weighted outer average)")
      ->capture_default_str();
  app.add_option("--balance-steps", cfg.balance_steps, "--balance auto: steps timed (after one warm-up step)")
      ->capture_default_str();
  app.add_option("--grad-accum", cfg.grad_accum,
                 "Micro-batches of --batch sequences per optimizer step (gradient accumulation)")
      ->capture_default_str();
  app.add_option("--steps", cfg.steps, "Total optimizer steps (a resumed run continues up to this)")
      ->capture_default_str();
  app.add_option("--lr", cfg.schedule.lr, "Peak learning rate")->capture_default_str();
  app.add_option("--lr-schedule", cfg.schedule.kind, "constant | cosine (linear warmup, cosine decay to --min-lr)")
      ->capture_default_str();
  app.add_option("--warmup", cfg.schedule.warmup, "Warmup steps (cosine schedule)")->capture_default_str();
  app.add_option("--min-lr", cfg.schedule.min_lr, "Final learning rate of the cosine schedule")->capture_default_str();
  app.add_option("--weight-decay", cfg.weight_decay, "AdamW decoupled weight decay (tensors with >= 2 dims)")
      ->capture_default_str();
  app.add_option("--beta1", cfg.beta1, "AdamW beta1")->capture_default_str();
  app.add_option("--beta2", cfg.beta2, "AdamW beta2")->capture_default_str();
  app.add_option("--eps", cfg.eps, "AdamW epsilon")->capture_default_str();
  app.add_option("--grad-clip", cfg.grad_clip, "Clip the global gradient L2 norm to this (0 = off)")
      ->capture_default_str();
  app.add_option("--seed", cfg.seed, "Seed of the initial weights")->capture_default_str();
  app.add_option("--save", cfg.save,
                 "Checkpoint directory: each save (at the end, every --save-every steps, on a signal) is DIR/step-N/");
  app.add_option("--keep", cfg.keep, "Saves kept in --save DIR, newest first (0 = all)")->capture_default_str();
  app.add_flag("--overwrite", cfg.overwrite,
               "Let a fresh run replace the saves of another run in --save DIR (refused otherwise)");
  app.add_option("--save-every", cfg.save_every, "Also save every N steps (0 = only at the end)")
      ->capture_default_str();
  app.add_option("--eval-every", cfg.eval_every, "Validation loss every N steps (and at the end)")
      ->capture_default_str();
  app.add_option("--eval-batches", cfg.eval_batches, "Batches per validation")->capture_default_str();
  app.add_option("--log", cfg.log, "Append one JSON line per step to this file");
  app.add_option("--stop-at", cfg.stop_at,
                 "Stop (and save, with --save) after this step while the schedule still follows --steps (0 = no)")
      ->capture_default_str();
  app.add_option("--time-limit", cfg.time_limit_min,
                 "Stop (and save) before this many minutes would be exceeded; the schedule follows --steps (0 = no)")
      ->capture_default_str();
  app.add_option("--threads", cfg.threads, "CPU threads per rank (0 = all cores / local ranks)")->capture_default_str();
  app.add_option("--device", cfg.device, "cpu | cuda | auto (cuda for a single process when a GPU is visible)")
      ->capture_default_str();
  app.add_option("--centre-device", cfg.centre_device,
                 "NAME=DEV[,NAME=DEV...]: the device (cpu | cuda) of each named centre; others use --device. Centres "
                 "of different devices need --outer diloco");
  app.add_option("--dtype", cfg.dtype,
                 "fp32 | bf16 | auto (bf16 on a GPU, fp32 on the CPU); bf16 keeps fp32 master weights, gradients and "
                 "optimizer state")
      ->capture_default_str();
  int tp = 1;
  double comm_timeout = 300;
  app.add_option("--tp", tp, "Tensor-parallel ranks per group (consecutive ranks); DP = world / TP")
      ->capture_default_str();
  app.add_option("--zero", cfg.zero, "1: ZeRO-1, shard the optimizer state over data-parallel ranks")
      ->capture_default_str();
  app.add_option("--bucket-mb", cfg.bucket_mb, "Data-parallel gradient bucket size in MiB")->capture_default_str();
  app.add_option("--comm-timeout", comm_timeout, "Seconds a collective may wait before the job is ended")
      ->capture_default_str();
  std::string centres = "auto";
  app.add_option("--centres", centres,
                 "auto (each rank's AQ_CENTRE when every rank has one, else one centre) | N (N equal blocks of ranks)")
      ->capture_default_str();
  app.add_option("--dp-algo", cfg.dp_algo, "flat | hier | auto (hier when the job spans several centres)")
      ->capture_default_str();
  app.add_option("--wan-compress", cfg.wan_compress, "none | bf16 | int8 | int4: compress the cross-centre hop of hier")
      ->capture_default_str();
  app.add_option("--outer", cfg.outer,
                 "none | diloco: each centre trains its own replica and syncs every --outer-steps (DiLoCo)")
      ->capture_default_str();
  app.add_option("--outer-steps", cfg.outer_steps, "DiLoCo: inner steps H between outer syncs")->capture_default_str();
  app.add_option("--outer-lr", cfg.outer_lr, "DiLoCo: outer Nesterov SGD learning rate")->capture_default_str();
  app.add_option("--outer-momentum", cfg.outer_momentum, "DiLoCo: outer Nesterov momentum")->capture_default_str();
  app.add_option("--outer-fragments", cfg.outer_fragments,
                 "DiLoCo: parameter fragments synced on a staggered schedule (streaming)")
      ->capture_default_str();
  app.add_option("--outer-overlap", cfg.outer_overlap,
                 "DiLoCo: inner steps a fragment's exchange runs behind before it is merged (0 .. H-1)")
      ->capture_default_str();
  app.add_option("--outer-mix", cfg.outer_mix,
                 "DiLoCo with overlap: weight of the replica's own values when an update is merged")
      ->capture_default_str();
  app.add_option("--error-feedback", cfg.error_feedback,
                 "on | off | auto (on with --wan-compress): carry what compression dropped into the next step")
      ->capture_default_str();

  std::vector<std::string> plugins;
  app.add_option("--plugin", plugins,
                 "Load an operator plugin (.so) at start-up; repeatable. AQ_PLUGIN_PATH (':'-separated .so files or "
                 "directories) is loaded first")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  std::string trace_path, trace_steps = "2:4";
  app.add_option("--trace", trace_path,
                 "Write a timeline of every rank to FILE.json (Chrome trace; open in https://ui.perfetto.dev)");
  app.add_option("--trace-steps", trace_steps, "Steps --trace records: A:B, 1-based and inclusive")
      ->capture_default_str();
  aq::ParallelContext& ctx = aq::ParallelContext::init(&argc, &argv);
  bool by_signal = false;
  const int code = aq::run_main("aq-train", app, argc, argv, ctx, [&] {
    // Plugins first: their operators must be declared before anything builds a model from them.
    for (const aq::ops::LoadedPlugin& p : aq::ops::load_plugins(plugins))
      aq::log_info("plugin ", p.path, ": ", p.name, " ", p.version, ", ", p.ops.size(), " operator(s)");
    cfg.given.emplace();  // which flags were given: --resume restores the saved run's other options
    for (const CLI::Option* opt : app.get_options())
      if (opt->count()) cfg.given->insert(opt->get_name());
    if (o_layers->count()) cfg.layers = layers;
    if (o_heads->count()) cfg.heads = heads;
    if (o_dim->count()) cfg.dim = dim;
    if (o_vocab->count()) cfg.vocab = vocab;
    if (o_max_seq->count()) cfg.max_seq = max_seq;
    const aq::trace::StepWindow trace_window = aq::trace::parse_step_window(trace_steps);
    ctx.configure(tp, comm_timeout, centres);
    aq::TraceSession trace(ctx, trace_path, trace_window, "aq-train");
    const aq::TrainResult r = aq::train(cfg, ctx);
    trace.write();
    by_signal = r.stopped_by_signal;
  });
  // Stopped by a signal after finishing its step (and saving): "try again" for schedulers that requeue.
  return code == 0 && by_signal ? aq::kExitStoppedBySignal : code;
}
