// config.cpp — the flags of a training job checked and resolved: validation, threads, the model's shape, the
// device and dtype, and the data-parallel algorithm for the job's centres. Nothing here allocates a model.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "ops/cpu/blas.h"
#include "runtime/file_io.h"
#include "train/job.h"
#ifdef AQ_HAVE_CUDA
#include "ops/cuda/gemm.h"
#include "runtime/cuda/device.h"
#endif

namespace aq {

int configure_threads(int threads, int local_ranks) {
  // 0: the node's cores shared by the ranks on it.
  const int cores = omp_get_num_procs();
  const int n = threads > 0 ? threads : std::max(1, cores / std::max(1, local_ranks));
  if (threads > 0 && static_cast<int64_t>(threads) * std::max(1, local_ranks) > cores)
    log_info("warning: --threads ", threads, " x ", std::max(1, local_ranks), " rank(s) on this node exceeds its ",
             cores, " cores: the threads will compete for them (0 = cores / ranks)");
  omp_set_num_threads(n);
  cpu::set_blas_threads(n);
  return n;
}

void TrainConfig::validate() const {
  AQ_CHECK(batch >= 1, "--batch must be >= 1 (got ", batch, ")");
  AQ_CHECK(seq >= 1, "--seq must be >= 1 (got ", seq, ")");
  AQ_CHECK(grad_accum >= 1, "--grad-accum must be >= 1 micro-batches per step (got ", grad_accum, ")");
  AQ_CHECK(steps >= 0, "--steps must be >= 0 (got ", steps, ")");
  AQ_CHECK(schedule.lr > 0 && std::isfinite(schedule.lr), "--lr must be a positive number (got ", schedule.lr, ")");
  AQ_CHECK(schedule.min_lr >= 0 && schedule.min_lr <= schedule.lr, "--min-lr must be in [0, --lr] (got ",
           schedule.min_lr, " with --lr ", schedule.lr, ")");
  AQ_CHECK(schedule.kind == "constant" || schedule.kind == "cosine", "--lr-schedule must be constant or cosine (got ",
           schedule.kind, ")");
  AQ_CHECK(schedule.warmup >= 0, "--warmup must be >= 0 (got ", schedule.warmup, ")");
  AQ_CHECK(weight_decay >= 0, "--weight-decay must be >= 0 (got ", weight_decay, ")");
  AQ_CHECK(beta1 >= 0 && beta1 < 1, "--beta1 must be in [0, 1) (got ", beta1, ")");
  AQ_CHECK(beta2 >= 0 && beta2 < 1, "--beta2 must be in [0, 1) (got ", beta2, ")");
  AQ_CHECK(eps > 0, "--eps must be > 0 (got ", eps, ")");
  AQ_CHECK(grad_clip >= 0, "--grad-clip must be >= 0 (0 turns clipping off; got ", grad_clip, ")");
  AQ_CHECK(save_every >= 0 && eval_every >= 0, "--save-every and --eval-every must be >= 0");
  AQ_CHECK(eval_batches >= 1, "--eval-batches must be >= 1 (got ", eval_batches, ")");
  AQ_CHECK(save_every == 0 || !save.empty(), "--save-every ", save_every, " needs --save DIR to say where");
  AQ_CHECK(keep >= 0, "--keep must be >= 0 saves (0 keeps every save; got ", keep, ")");
  AQ_CHECK(eval_every == 0 || !val_data.empty(), "--eval-every ", eval_every, " needs --val-data GLOB to evaluate on");
  AQ_CHECK(init_from.empty() || resume.empty(), "--init-from and --resume exclude each other: --resume continues a ",
           "saved run with its optimizer state, --init-from starts a new run from weights");
  AQ_CHECK(!data.empty(), "--data is required: a shard file or glob, e.g. --data 'data/train_*.bin' ",
           "(make shards with aq-prepare)");
  AQ_CHECK(threads >= 0, "--threads must be >= 0 (0 = all cores; got ", threads, ")");
  AQ_CHECK(stop_at >= 0, "--stop-at must be >= 0 (0 = run to --steps; got ", stop_at, ")");
  AQ_CHECK(time_limit_min >= 0 && std::isfinite(time_limit_min), "--time-limit must be >= 0 minutes (0 = none; got ",
           time_limit_min, ")");
  AQ_CHECK(bucket_mb > 0, "--bucket-mb must be > 0 (got ", bucket_mb, ")");
  AQ_CHECK(zero == 0 || zero == 1, "--zero must be 0 or 1 (got ", zero, ")");
  AQ_CHECK(dp_algo == "auto" || dp_algo == "flat" || dp_algo == "hier", "--dp-algo must be flat, hier or auto (got \"",
           dp_algo, "\")");
  wan_codec_from_name(wan_compress);
  AQ_CHECK(error_feedback == "auto" || error_feedback == "on" || error_feedback == "off",
           "--error-feedback must be on, off or auto (got \"", error_feedback, "\")");
  AQ_CHECK(outer == "none" || outer == "diloco", "--outer must be none or diloco (got \"", outer, "\")");
  AQ_CHECK(outer_steps >= 1, "--outer-steps must be >= 1 inner steps between outer syncs (got ", outer_steps, ")");
  AQ_CHECK(outer_lr > 0 && std::isfinite(outer_lr), "--outer-lr must be a positive number (got ", outer_lr, ")");
  AQ_CHECK(outer_momentum >= 0 && outer_momentum < 1, "--outer-momentum must be in [0, 1) (got ", outer_momentum, ")");
  AQ_CHECK(balance_steps >= 1, "--balance-steps must be >= 1 timed steps (got ", balance_steps, ")");
  AQ_CHECK(balance == "off" || outer == "none" || outer_steps <= (int64_t{1} << 30), "--balance paces inner steps ",
           "per window of --outer-steps, which must then be <= 2^30 (got ", outer_steps, ")");
  AQ_CHECK(outer_fragments >= 1, "--outer-fragments must be >= 1 (got ", outer_fragments, ")");
  AQ_CHECK(outer_overlap >= 0 && outer_overlap < outer_steps, "--outer-overlap must be in [0, --outer-steps) = [0, ",
           outer_steps, ") inner steps (got ", outer_overlap, ")");
  AQ_CHECK(outer_mix >= 0 && outer_mix < 1, "--outer-mix must be in [0, 1) (got ", outer_mix, ")");
  AQ_CHECK(outer == "diloco" || (outer_fragments == 1 && outer_overlap == 0),
           "--outer-fragments and --outer-overlap shape DiLoCo's outer syncs; add --outer diloco");
  AQ_CHECK(error_feedback != "on" || wan_compress != "none",
           "--error-feedback on keeps what compression dropped, but --wan-compress is none; add --wan-compress int8 ",
           "(or bf16)");
}

// See job.h: the DP algorithm resolved against the centres; a combination that cannot run throws on every rank.
DpAlgoOptions resolve_dp_algorithm(const TrainConfig& cfg, const Topology& topo) {
  DpAlgoOptions o;
  const bool centres = topo.centres() > 1;
  // ZeRO-1's hierarchical reduce-scatter needs equal centres of contiguous ranks (DP rank = centre·g + index).
  // With DiLoCo ZeRO-1 is inside each centre, and the algorithm only averages the outer change (an all-reduce).
  const bool zero_ok = !cfg.zero || cfg.outer == "diloco" || topo.uniform_blocks();
  o.algo = cfg.dp_algo != "auto" ? cfg.dp_algo : centres && zero_ok ? "hier" : "flat";
  AQ_CHECK(o.algo != "hier" || zero_ok, "--zero 1 with --dp-algo hier needs centres of equal size holding ",
           "contiguous blocks of ranks (", topo.describe(), "); launch each centre's ranks together with equal ",
           "counts, or use --dp-algo flat");
  o.codec = wan_codec_from_name(cfg.wan_compress);
  if (o.codec != WanCodec::None) {
    AQ_CHECK(centres, "--wan-compress ", cfg.wan_compress, " compresses the cross-centre hop, but the job is one centre; ",
             "name the centres (--centres N, or AQ_CENTRE per rank with --centres auto) or drop --wan-compress");
    AQ_CHECK(o.algo == "hier", "--wan-compress ", cfg.wan_compress, " needs --dp-algo hier (flat runs the backend's ",
             "own all-reduce, which has no slow hop to compress)", zero_ok ? "" : "; with these centres --zero 1 needs flat, so drop one of them");
  }
  o.error_feedback = o.codec != WanCodec::None && cfg.error_feedback != "off";
  return o;
}

void restore_saved_options(TrainConfig& cfg, int dp) {
  const std::string sp = state_path_for(cfg.resume);
  if (!cfg.given || !file_exists(sp)) return;  // a missing state file is reported when it is loaded
  const SafeTensorsReader state(sp);
  if (!state.metadata().count("train_options")) return;
  nlohmann::json o;
  try {
    o = nlohmann::json::parse(state.metadata().at("train_options"));
  } catch (const std::exception& e) {
    fail(str(sp, ": \"train_options\" in the metadata is malformed (", e.what(), "); the file is damaged"));
  }
  std::string restored, changed;
  const auto given = [&](const char* flag) { return cfg.given->count(flag) > 0; };
  // A hyper-parameter: restored when not given; a given new value is taken, and said.
  const auto hyper = [&](const char* flag, const char* key, auto& field) {
    using V = std::decay_t<decltype(field)>;
    if (!o.contains(key)) return;
    const V saved = o.at(key).get<V>();
    if (field == saved) return;
    if (given(flag))
      changed += str(" ", flag, " ", saved, " → ", field);
    else
      restored += str(" ", flag, " ", field = saved);
  };
  // An option whose change would alter the data order or the shapes: restored when not given; a given new value
  // is refused with the reason.
  const auto fixed = [&](const char* flag, const char* key, auto& field, const char* why) {
    using V = std::decay_t<decltype(field)>;
    if (!o.contains(key)) return;
    const V saved = o.at(key).get<V>();
    if (field == saved) return;
    AQ_CHECK(!given(flag), "--resume ", cfg.resume, ": ", flag, " ", field, " differs from the saved run's ", saved,
             "; ", why, ": drop ", flag, " to continue the run, or start a new one from its weights with --init-from");
    restored += str(" ", flag, " ", field = saved);
  };
  fixed("--seq", "seq", cfg.seq, "the sequences would be cut differently");
  fixed("--data", "data", cfg.data, "the data order would change");
  fixed("--grad-accum", "grad_accum", cfg.grad_accum, "the global batch would change");
  fixed("--outer", "outer", cfg.outer, "the training algorithm and its saved state differ");
  // The global batch (batch × dp) is the run's; the per-rank batch follows this run's dp.
  if (o.contains("batch") && o.contains("dp")) {
    const int64_t global = o.at("batch").get<int64_t>() * o.at("dp").get<int64_t>();
    if (given("--batch")) {
      AQ_CHECK(static_cast<int64_t>(cfg.batch) * dp == global, "--resume ", cfg.resume, ": --batch ", cfg.batch,
               " on dp=", dp, " is a global batch of ", static_cast<int64_t>(cfg.batch) * dp,
               " sequences, the saved run's is ", global, "; the data order would change: drop --batch to continue ",
               "the run, or start a new one with --init-from");
    } else {
      AQ_CHECK(global % dp == 0, "--resume ", cfg.resume, ": the saved run's global batch of ", global,
               " sequences does not split over dp=", dp, "; use a data-parallel size that divides it");
      if (cfg.batch != global / dp) restored += str(" --batch ", cfg.batch = static_cast<int>(global / dp));
    }
  }
  hyper("--steps", "steps", cfg.steps);
  hyper("--lr", "lr", cfg.schedule.lr);
  hyper("--lr-schedule", "lr_schedule", cfg.schedule.kind);
  hyper("--warmup", "warmup", cfg.schedule.warmup);
  hyper("--min-lr", "min_lr", cfg.schedule.min_lr);
  hyper("--weight-decay", "weight_decay", cfg.weight_decay);
  hyper("--beta1", "beta1", cfg.beta1);
  hyper("--beta2", "beta2", cfg.beta2);
  hyper("--eps", "eps", cfg.eps);
  hyper("--grad-clip", "grad_clip", cfg.grad_clip);
  hyper("--outer-steps", "outer_steps", cfg.outer_steps);
  hyper("--outer-lr", "outer_lr", cfg.outer_lr);
  hyper("--outer-momentum", "outer_momentum", cfg.outer_momentum);
  if (!restored.empty()) log_info("resume: the saved run's options:", restored);
  if (!changed.empty()) log_info("resume: changed from the saved run:", changed);
}

namespace {

// A flag given explicitly must agree with the checkpoint's configuration.
void check_flag(const std::optional<int>& flag, int value, const char* name, const std::string& file) {
  AQ_CHECK(!flag || *flag == value, name, " ", *flag, " disagrees with ", file, ", which has ", value,
           "; drop the flag or use a matching checkpoint");
}

}  // namespace

ModelConfig model_config(const TrainConfig& cfg, std::unique_ptr<SafeTensorsReader>& weights) {
  const std::string& file = !cfg.resume.empty() ? cfg.resume : cfg.init_from;
  if (file.empty() && !cfg.model_config.empty()) {  // a fresh model of the given config
    ModelConfig c = read_hf_config(cfg.model_config);
    const std::string where = "--model-config " + cfg.model_config;
    check_flag(cfg.layers, c.n_layer, "--layers", where);
    check_flag(cfg.heads, c.n_head, "--heads", where);
    check_flag(cfg.dim, c.n_embd, "--dim", where);
    check_flag(cfg.vocab, c.vocab_size, "--vocab", where);
    check_flag(cfg.max_seq, c.max_seq, "--max-seq", where);
    return c;
  }
  if (file.empty()) {
    ModelConfig c;
    c.n_layer = cfg.layers.value_or(4);
    c.n_head = cfg.heads.value_or(4);
    c.n_embd = cfg.dim.value_or(128);
    c.vocab_size = cfg.vocab.value_or(256);
    c.max_seq = cfg.max_seq.value_or(std::max(cfg.seq, 128));
    c.validate();
    return c;
  }
  weights = std::make_unique<SafeTensorsReader>(file);
  ModelConfig c = read_checkpoint_config(*weights, cfg.heads.value_or(0), cfg.model_config);
  check_flag(cfg.layers, c.n_layer, "--layers", file);
  check_flag(cfg.dim, c.n_embd, "--dim", file);
  check_flag(cfg.vocab, c.vocab_size, "--vocab", file);
  check_flag(cfg.max_seq, c.max_seq, "--max-seq", file);
  return c;
}


// --dtype: fp32, bf16, or auto (bf16 on a GPU, fp32 on the CPU).
bool use_bf16(const std::string& want, Device device) {
  AQ_CHECK(want == "fp32" || want == "bf16" || want == "auto", "--dtype must be fp32, bf16 or auto (got ", want, ")");
  AQ_CHECK(want != "bf16" || device == Device::CUDA, "--dtype bf16 runs on a GPU (--device cuda); the CPU engine ",
           "trains in fp32: use --dtype fp32 or leave --dtype at auto");
  return want == "bf16" || (want == "auto" && device == Device::CUDA);
}

std::vector<std::string> centre_devices(const TrainConfig& cfg, const Topology& topo) {
  AQ_CHECK(cfg.device == "cpu" || cfg.device == "cuda" || cfg.device == "auto",
           "--device must be cpu, cuda or auto (got ", cfg.device, ")");
  // auto stays on the CPU for several ranks (see choose_device), so in a job of several ranks every centre's
  // device is known from the flags alone, identically on every rank.
  const std::string fallback = cfg.device == "auto" && topo.world > 1 ? "cpu" : cfg.device;
  std::vector<std::string> dev(static_cast<size_t>(topo.centres()), fallback);
  if (cfg.centre_device.empty()) return dev;
  std::string names;
  for (const std::string& n : topo.centre_names) names += str(names.empty() ? "" : ", ", n);
  std::vector<bool> named(dev.size(), false);
  std::string cuda_item;  // the first NAME=cuda
  size_t at = 0;
  while (at <= cfg.centre_device.size()) {
    const size_t comma = std::min(cfg.centre_device.find(',', at), cfg.centre_device.size());
    const std::string item = cfg.centre_device.substr(at, comma - at);
    at = comma + 1;
    const size_t eq = item.find('=');
    AQ_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < item.size(), "--centre-device: \"", item,
             "\" is not NAME=DEV; write e.g. --centre-device ", topo.centre_names[0], "=cuda");
    const std::string name = item.substr(0, eq), d = item.substr(eq + 1);
    const auto it = std::find(topo.centre_names.begin(), topo.centre_names.end(), name);
    AQ_CHECK(it != topo.centre_names.end(), "--centre-device: no centre is named \"", name, "\"; this job's centres ",
             "are ", names, " (", topo.describe(), ")");
    AQ_CHECK(d == "cpu" || d == "cuda", "--centre-device ", item, ": the device must be cpu or cuda (got \"", d, "\")");
    const size_t c = static_cast<size_t>(it - topo.centre_names.begin());
    AQ_CHECK(!named[c], "--centre-device names centre ", name, " twice; give each centre one device");
    named[c] = true;
    dev[c] = d;
    if (d == "cuda" && cuda_item.empty()) cuda_item = item;
  }
  // A centre's ranks all share its device, so only the inner exchange (inside a centre) runs on it; what
  // crosses centres must then be DiLoCo's outer exchange, which runs on host buffers.
  const bool cpu = std::count(dev.begin(), dev.end(), "cpu") > 0, gpu = std::count(dev.begin(), dev.end(), "cuda") > 0;
  AQ_CHECK(!(cpu && gpu) || cfg.outer == "diloco", "--centre-device puts some centres on the CPU and some on GPUs, ",
           "but synchronous data parallelism (--outer none) all-reduces gradients across centres every step, which ",
           "is not supported across devices; add --outer diloco (each centre trains its own replica)");
  AQ_CHECK(!cpu || cfg.dtype != "bf16", "--dtype bf16 runs on GPUs, but --centre-device puts a centre on the CPU, ",
           "whose engine trains in fp32; leave --dtype at auto (bf16 on the GPU centres, fp32 on the CPU ones) or use ",
           "--dtype fp32");
  AQ_CHECK(cuda_item.empty() || cuda_built(), "--centre-device ", cuda_item, ": this build has no CUDA backend ",
           "(configure with the CUDA toolkit, -DAQ_CUDA=ON)");
  return dev;
}

// This rank's device: its centre's entry of `wanted` — cpu, cuda, or auto (cuda for a single process when a
// GPU is visible).
Device choose_device(const std::vector<std::string>& wanted, const ParallelContext& ctx) {
  const std::string& want = wanted[static_cast<size_t>(ctx.centre())];
  // auto stays on the CPU for several ranks: every rank must choose the same device, and a rank's view of the
  // GPUs (driver, CUDA_VISIBLE_DEVICES, ranks per node) may differ; multi-rank GPU runs say --device cuda.
  // The CUDA runtime is only asked when a GPU could be used: initialising it costs ~150 MiB of resident memory.
  if (want == "cpu" || (want == "auto" && ctx.world_size() > 1)) return Device::CPU;
#ifdef AQ_HAVE_CUDA
  if (want == "auto" && cuda::device_count() == 0) return Device::CPU;
#else
  if (want == "auto") return Device::CPU;
#endif
  AQ_CHECK(cuda_built(), "--device cuda: this build has no CUDA backend (configure with the CUDA toolkit, "
           "-DAQ_CUDA=ON)");
#ifdef AQ_HAVE_CUDA
  // The node's GPUs go to its GPU ranks only: in a job with CPU centres beside GPU ones, the CPU ranks of the
  // node take none.
  const Topology& topo = ctx.topology();
  const auto [index, gpu_ranks] = ctx.local_index_among(
      [&](int r) { return wanted[static_cast<size_t>(topo.centre_of[static_cast<size_t>(r)])] != "cpu"; });
  const cuda::DeviceInfo info = cuda::select_device(index, gpu_ranks);
  const size_t lt = cuda::cublaslt_version();
  log_info("device: cuda:", info.index, " ", cuda::describe(info), ", cuBLASLt ", lt / 10000, ".", (lt / 100) % 100,
           ".", lt % 100);
#endif
  return Device::CUDA;
}

}  // namespace aq
