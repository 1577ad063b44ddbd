// trainer.cpp — the training loop.
#include "model/trainer.h"
#include "model/memory_estimate.h"
#include "model/outer_optimizer.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>
#include <thread>

#include "ops/cpu/blas.h"
#include "parallel/algo/dp_algorithm.h"
#include "parallel/grad_sync.h"
#include "runtime/memory.h"
#ifdef AQ_HAVE_CUDA
#include "ops/cuda/gemm.h"
#include "runtime/cuda/device.h"
#endif
#include "runtime/blas_setup.h"
#include "runtime/data.h"
#include "runtime/log.h"
#include "runtime/op_profile.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"

namespace aq {

std::string state_path_for(const std::string& model_path) { return model_path + ".state"; }

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
  AQ_CHECK(save_every == 0 || !save.empty(), "--save-every ", save_every, " needs --save FILE to say where");
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
  AQ_CHECK(balance == "off" || outer == "none", "--balance splits the work of synchronous data parallelism; with ",
           "--outer diloco each centre keeps its own pace, so drop one of them");
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

// The data-parallel algorithm for this job and layout: the flags resolved against the centres. Throws aq::Error
// (identically on every rank) for a combination that cannot run.
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

namespace {

// A flag given explicitly must agree with the checkpoint's configuration.
void check_flag(const std::optional<int>& flag, int value, const char* name, const std::string& file) {
  AQ_CHECK(!flag || *flag == value, name, " ", *flag, " disagrees with ", file, ", which has ", value,
           "; drop the flag or use a matching checkpoint");
}

GPT2Config model_config(const TrainConfig& cfg, std::unique_ptr<SafeTensorsReader>& weights) {
  const std::string& file = !cfg.resume.empty() ? cfg.resume : cfg.init_from;
  if (file.empty()) {
    GPT2Config c;
    c.n_layer = cfg.layers.value_or(4);
    c.n_head = cfg.heads.value_or(4);
    c.n_embd = cfg.dim.value_or(128);
    c.vocab_size = cfg.vocab.value_or(256);
    c.max_seq = cfg.max_seq.value_or(std::max(cfg.seq, 128));
    c.validate();
    return c;
  }
  weights = std::make_unique<SafeTensorsReader>(file);
  GPT2Config c = read_checkpoint_config(*weights, cfg.heads.value_or(0));
  check_flag(cfg.layers, c.n_layer, "--layers", file);
  check_flag(cfg.dim, c.n_embd, "--dim", file);
  check_flag(cfg.vocab, c.vocab_size, "--vocab", file);
  check_flag(cfg.max_seq, c.max_seq, "--max-seq", file);
  return c;
}

// JSON text that never throws on a non-UTF-8 string (a file name, say): invalid bytes become U+FFFD.
template <typename J>
std::string dump_json(const J& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string new_checkpoint_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

struct OptimizerState {
  DeviceBuffer<float> m, v;  // on the model's device: the whole local buffer, or this rank's ZeRO-1 slice
  int64_t step = 0;          // completed optimizer steps
};

// --dtype: fp32, bf16, or auto (bf16 on a GPU, fp32 on the CPU).
bool use_bf16(const std::string& want, Device device) {
  AQ_CHECK(want == "fp32" || want == "bf16" || want == "auto", "--dtype must be fp32, bf16 or auto (got ", want, ")");
  AQ_CHECK(want != "bf16" || device == Device::CUDA, "--dtype bf16 runs on a GPU (--device cuda); the CPU engine ",
           "trains in fp32: use --dtype fp32 or leave --dtype at auto");
  return want == "bf16" || (want == "auto" && device == Device::CUDA);
}

// --device: cpu, cuda, or auto (cuda for a single process when a GPU is visible).
Device choose_device(const std::string& want, const ParallelContext& ctx) {
  AQ_CHECK(want == "cpu" || want == "cuda" || want == "auto", "--device must be cpu, cuda or auto (got ", want, ")");
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
  const cuda::DeviceInfo info = cuda::select_device(ctx.local_rank(), ctx.local_size());
  const size_t lt = cuda::cublaslt_version();
  log_info("device: cuda:", info.index, " ", cuda::describe(info), ", cuBLASLt ", lt / 10000, ".", (lt / 100) % 100,
           ".", lt % 100);
#endif
  return Device::CUDA;
}

int64_t meta_int64(const SafeTensorsReader& f, const char* key) {
  const std::optional<int64_t> v = f.metadata_int(key);
  AQ_CHECK(v.has_value(), f.path(), " has no \"", key, "\" in its metadata: not a checkpoint written by ",
           "aq-train --save (use --init-from to start a new run from plain weights)");
  return *v;
}

std::string progress_line(const StepRecord& r, int64_t total, double eta_s, const ParallelContext& ctx) {
  const bool parallel = ctx.world_size() > 1;
  char buf[320];
  int n = std::snprintf(buf, sizeof(buf), "step %*lld/%lld | loss %.4f | lr %.2e | norm %.4f | %.1f ms | %.0f tok/s",
                        static_cast<int>(std::to_string(total).size()), static_cast<long long>(r.step),
                        static_cast<long long>(total), r.loss, r.lr, r.grad_norm, r.ms, r.tokens_per_s);
  if (parallel)
    n += std::snprintf(buf + n, sizeof(buf) - static_cast<size_t>(n), " | comm %.1f ms (exposed %.1f) | tp%d x dp%d",
                       r.comm_ms, r.exposed_comm_ms, ctx.tp(), ctx.dp());
  if (r.outer_launched || r.outer_merged)
    n += std::snprintf(buf + n, sizeof(buf) - static_cast<size_t>(n), " | outer: %d sent, %d merged (waited %.1f ms)",
                       r.outer_launched, r.outer_merged, r.outer_exposed_ms);
  if (ctx.topology().centres() > 1)
    n += std::snprintf(buf + n, sizeof(buf) - static_cast<size_t>(n), " | wan %.1f ms (%.0f%% of step), %.2f MB",
                       r.wan_ms, r.ms > 0 ? 100.0 * r.wan_ms / r.ms : 0.0, r.wan_bytes / 1e6);
  std::snprintf(buf + n, sizeof(buf) - static_cast<size_t>(n), " | ETA %s", format_duration(eta_s).c_str());
  return buf;
}

// What the training loop needs from a job, whatever the model's element type.
class JobApi {
 public:
  virtual ~JobApi() = default;
  virtual void setup() = 0;  // flags, files: everything that can fail differently on different ranks
  virtual void build() = 0;  // device groups (collective), model, optimizer state, buckets
  virtual StepRecord step(int64_t s) = 0;
  virtual double evaluate() = 0;
  virtual void save(const std::string& path) = 0;
  virtual void log_json(const nlohmann::ordered_json& j) = 0;
  virtual int64_t start_step() const = 0;
  virtual std::string device_label() const = 0;
  virtual void log_summary() const = 0;
  virtual void describe(TrainResult& r) const = 0;  // device, dtype, parameters, device memory
  virtual Device device() const = 0;
  // Completes communication still running behind the steps (DiLoCo's overlapped exchanges). Collective.
  virtual void finish_communication() {}
};

// One training job on one rank, for a model of element type T (float, or bf16 with fp32 master weights).
// Members are set up in setup(); every method that communicates is collective.
template <typename T>
class Job final : public JobApi {
 public:
  Job(const TrainConfig& cfg, ParallelContext& ctx, Device device)
      : cfg_(cfg), ctx_(ctx), rng_(cfg.seed), device_(device) {}

  void setup() override;
  void build() override;
  StepRecord step(int64_t s) override;
  double evaluate() override;
  void save(const std::string& path) override;
  void log_json(const nlohmann::ordered_json& j) override {
    if (!log_file_.is_open()) return;
    log_file_ << dump_json(j) << "\n" << std::flush;
    // A full disk (or a vanished file system) must not cut the log silently.
    AQ_CHECK(log_file_.good(), "writing --log ", cfg_.log, " failed at step ", opt_.step,
             " (disk full or the file system went away); free space or point --log elsewhere");
  }
  int64_t start_step() const override { return opt_.step; }
  Device device() const override { return device_; }
  std::string device_label() const override {
    return device_ == Device::CPU ? "cpu" : str("cuda:", ctx_.local_rank());
  }
  void describe(TrainResult& r) const override {
    r.device = device_ == Device::CPU ? "cpu" : "cuda";
    r.dtype = std::is_same_v<T, bf16> ? "bf16" : "fp32";
    r.num_params = model_->num_params();
    r.device_peak_bytes = device_peak_bytes(device_);
  }
  void log_summary() const override {
    log_info("model: GPT-2 ", mc_.describe(), " | ", model_->num_params(), " parameters | ",
             std::is_same_v<T, bf16> ? "bf16 (fp32 master weights, gradients and optimizer state)" : "fp32",
             " | activations ", model_->activation_bytes() >> 20, " MiB per rank",
             ctx_.tp() > 1 ? str(" | tp shard of 1/", ctx_.tp()) : "", cfg_.zero ? " | ZeRO-1 optimizer state" : "");
    log_info("memory: about ", gib(mem_.total()), " per rank (parameters ", gib(mem_.params), ", gradients ",
             gib(mem_.grads), ", optimizer ", gib(mem_.optimizer + mem_.outer), ", activations ", gib(mem_.activations),
             ")", device_ == Device::CPU && mem_avail_ > 0 ? str(" of ", gib(mem_avail_), " available") : "",
             device_ == Device::CPU ? "" : " (on the GPU, not checked)");
    log_info("data: ", train_data_->num_shards(), " shard(s), ", train_data_->total_tokens(), " tokens | batch ",
             cfg_.batch, " x ", cfg_.seq, " per rank", cfg_.grad_accum > 1 ? str(" x ", cfg_.grad_accum, " micro-batches") : "",
             ", ", static_cast<int64_t>(cfg_.batch) * cfg_.grad_accum * cfg_.seq * ctx_.dp(),
             " tokens/step over dp=", ctx_.dp(), buckets_ ? str(" | ", buckets_->num_buckets(), " gradient buckets") : "");
    if (diloco())
      log_info("outer: DiLoCo every ", cfg_.outer_steps, " steps, Nesterov lr ", cfg_.outer_lr, " momentum ",
               cfg_.outer_momentum,
               fragments_.size() > 1 ? str(" | ", fragments_.size(), " fragments on a staggered schedule") : "",
               cfg_.outer_overlap ? str(" | exchanges overlap ", cfg_.outer_overlap, " inner steps, merged with mix ",
                                        cfg_.outer_mix) : "",
               " | inner data parallel inside each centre (dp=", idp(), " here) | outer exchange: ",
               outer_algo_->describe());
    else if (ctx_.dp() > 1)
      log_info("data parallel: ", dp_algo_->describe());
  }

 private:
  // This rank's share of the optimizer work: the whole buffer, or its ZeRO-1 slice.
  int64_t slice_begin() const { return cfg_.zero ? idp_rank() * slice_len() : 0; }
  int64_t slice_len() const { return cfg_.zero ? model_->buffer_size() / idp() : model_->buffer_size(); }
  // The data-parallel group of the optimizer step: every DP rank, or with --outer diloco the DP ranks of this
  // rank's centre (each centre trains its own replica between outer syncs).
  bool diloco() const { return cfg_.outer == "diloco"; }
  int idp() const { return diloco() ? ctx_.topology().centre_dp[static_cast<size_t>(ctx_.centre())] : ctx_.dp(); }
  int idp_rank() const { return diloco() ? ctx_.topology().intra_index[static_cast<size_t>(ctx_.world_rank())] : ctx_.dp_rank(); }
  Backend& idp_group() { return diloco() ? ctx_.intra_group() : ctx_.dp_group(); }
  double global_grad_norm(const float* grads);  // grads indexed from slice_begin()
  // Error feedback: appends each centre's residuals ("ef_residual.<centre id>.<tensor>") to `out`; false when
  // the job keeps none. Collective.
  bool save_residuals(std::vector<NamedTensor>& out);
  void load_residuals(const SafeTensorsReader& state);
  void load_state(const SafeTensorsReader& weights);
  // A host copy of a whole local buffer from this rank's part `part` (n values on the model's device), all-
  // gathered over DP under ZeRO-1.
  std::vector<float> full_local(const float* part, int64_t n, const char* what);

  TrainConfig cfg_;
  ParallelContext& ctx_;
  Rng rng_;
  GPT2Config mc_;
  std::unique_ptr<GPT2<T>> model_;
  std::unique_ptr<DataLoader> train_data_, val_data_;
  DpAlgoOptions dp_opts_;                 // resolved in setup()
  MemoryEstimate mem_;                    // per rank, from setup()
  double mem_avail_ = 0;                  // host memory per rank of this node (0: unknown)
  std::unique_ptr<DpAlgorithm> dp_algo_;  // how DP gradients are reduced (flat or hierarchical)
  // --outer diloco: the exchange of the outer change across centres (dp_opts_), the global parameters θ_global
  // and the outer Nesterov momentum (full local buffers, fp32, identical on every rank), and a scratch Δ.
  std::unique_ptr<DpAlgorithm> outer_algo_;
  std::vector<float> theta_global_, outer_mom_;
  std::vector<std::pair<int64_t, int64_t>> fragments_;  // [begin, end) of each fragment, at tensor boundaries
  // A fragment's exchange in flight: the summed change (the fragment's values), the step that merges it, and
  // the Work (null once complete, or when restored from a checkpoint).
  struct PendingSync {
    int fragment;
    int64_t merge_step;
    std::vector<float> delta;
    WorkPtr work;
  };
  std::deque<PendingSync> pending_;
  void outer_launch(int f, int64_t t);
  double outer_merge(PendingSync& ps);  // returns the ms it waited
  void outer_poll() {
    for (PendingSync& ps : pending_)
      if (ps.work) ps.work->test();
  }
  // The algorithm whose traffic crosses centres (and keeps the error-feedback residuals).
  DpAlgorithm& wan_algo() { return outer_algo_ ? *outer_algo_ : *dp_algo_; }
  void outer_steps(int64_t t, StepRecord& r);
  void outer_finish_exchanges();  // completes every exchange in flight (before a save and at the end)
  void finish_communication() override {
    if (diloco()) outer_finish_exchanges();
  }
  // Collective: `mine` (a full local buffer, the same on every rank of a centre and tp_rank) of every centre c,
  // appended to `out` as "<prefix(c)><tensor>"; `what` names it in diagnostics.
  void append_per_centre(const std::vector<float>& mine, const std::string& what,
                         const std::function<std::string(int)>& prefix, std::vector<NamedTensor>& out);
  void load_outer_state(const SafeTensorsReader& state);
  std::unique_ptr<GradBuckets> buckets_;
  Device device_;
  int gpus_on_node_ = 0;
  // This rank's share of the parameters (its ZeRO-1 slice or the whole buffer) as chunks for the multi-tensor
  // AdamW and norm, on the model's device; offsets relative to slice_begin().
  DeviceBuffer<ops::TensorChunk> chunks_;
  std::unique_ptr<SafeTensorsReader> weights_;  // --init-from / --resume file, opened in setup()
  OptimizerState opt_;
  DeviceBuffer<float> grad_slice_;  // ZeRO-1: this rank's reduced gradient slice
  std::vector<int32_t> inputs_, targets_;  // a step's K micro-batches, (K·B, T)
  // Micro-batches per DP rank (work split by speed; all equal to --grad-accum unless --balance), this rank's K
  // and their total M over the DP ranks. The step's global batch is M·B sequences.
  std::vector<int> micro_;
  int K_ = 1;
  int64_t M_ = 1;
  double micro_ms_ = 0;  // --balance auto: this rank's time per micro-batch, summed over the timed steps
  bool balanced_ = false;   // --balance auto: the split was measured (or restored from a checkpoint)
  int64_t start_step_ = 0;  // the first step this run executes
  void apply_split(std::vector<int> micro);  // sets micro_, K_, M_ and this rank's data window
  void balance_now();                        // --balance auto: times → split. Collective.
  bool last_micro_ = true;                 // the micro-batch running is the step's last
  std::ofstream log_file_;
  typename ops::MultiAdamW<T>::Update* adamw_ = nullptr;
  ops::MultiAdamW<float>::SumSquares* sum_squares_ = nullptr;
};

template <typename T>
void Job<T>::setup() {
  // ZeRO-1 over a single data-parallel rank has nothing to shard: run without it (one rule, here, instead of
  // a dp == 1 case at every use).
  if (idp() == 1 && cfg_.zero) {
    log_info("--zero 1: one data-parallel rank has no optimizer state to share; running without ZeRO-1");
    cfg_.zero = 0;
  }
  dp_opts_ = resolve_dp_algorithm(cfg_, ctx_.topology());
  AQ_CHECK(!diloco() || device_ == Device::CPU, "--outer diloco runs on the CPU so far (its outer step has no CUDA ",
           "kernel yet); use --device cpu, or --outer none on GPUs");
  std::unique_ptr<SafeTensorsReader>& weights = weights_;  // kept open for build()
  mc_ = model_config(cfg_, weights);
  AQ_CHECK(cfg_.seq <= mc_.max_seq, "--seq ", cfg_.seq, " exceeds the model's context n_positions=", mc_.max_seq,
           "; lower --seq", weights ? "" : str(" or raise --max-seq to at least ", cfg_.seq));
  // Memory, before anything large is allocated: the ranks of a node share its memory.
  mem_ = estimate_memory(mc_, cfg_.batch, cfg_.seq, ctx_.tp(), cfg_.zero ? 1.0 / idp() : 1.0,
                         std::is_same_v<T, bf16>, diloco());
  mem_avail_ = available_host_bytes() / std::max(1, ctx_.local_size());
  AQ_CHECK(device_ != Device::CPU || mem_avail_ <= 0 || mem_.total() <= mem_avail_ || std::getenv("AQ_SKIP_MEMORY_CHECK"),
           "the job needs about ", gib(mem_.total()), " per rank (parameters ", gib(mem_.params), ", gradients ",
           gib(mem_.grads), ", optimizer ", gib(mem_.optimizer + mem_.outer), ", activations ", gib(mem_.activations),
           ") but this node offers ", gib(mem_avail_), " to each of its ", ctx_.local_size(), " rank(s); lower ",
           "--batch, --seq, --layers or --dim, shard with --zero 1 or --tp, or use more nodes (AQ_SKIP_MEMORY_CHECK=1 ",
           "skips this check)");
  // Only rank 0 writes checkpoints and the log; its failures reach every rank through agree_on_failure.
  if (ctx_.world_rank() == 0) {
    if (!cfg_.save.empty()) check_writable(cfg_.save, "checkpoint");
    if (!cfg_.log.empty()) {
      check_writable(cfg_.log, "log");
      log_file_.open(cfg_.log, cfg_.resume.empty() ? std::ios::trunc : std::ios::app);
      AQ_CHECK(log_file_.good(), "cannot open --log ", cfg_.log, " for writing");
    }
  }

  // Data first: a bad shard should fail before a large model is allocated. DP rank r of D reads window r of
  // each global step; the TP ranks of a group read the same window.
  // With gradient accumulation a rank reads its K micro-batches as one window of K·B sequences, so the global
  // step covers what one process with batch dp·K·B reads.
  train_data_ = std::make_unique<DataLoader>(cfg_.data, cfg_.batch * cfg_.grad_accum, cfg_.seq, mc_.vocab_size,
                                             ctx_.dp_rank(), ctx_.dp(), "--data");
  if (!cfg_.val_data.empty())
    val_data_ = std::make_unique<DataLoader>(cfg_.val_data, cfg_.batch, cfg_.seq, mc_.vocab_size, ctx_.dp_rank(),
                                             ctx_.dp(), "--val-data");
  if (val_data_) {
    const double need = static_cast<double>(cfg_.eval_batches) * ctx_.dp() * cfg_.batch * cfg_.seq;
    if (need > static_cast<double>(val_data_->total_tokens()))
      log_info("warning: --eval-batches ", cfg_.eval_batches, " reads ", static_cast<int64_t>(need),
               " validation tokens but --val-data holds ", val_data_->total_tokens(),
               ": batches repeat; lower --eval-batches to ",
               std::max<int64_t>(1, static_cast<int64_t>(val_data_->total_tokens()) / (static_cast<int64_t>(ctx_.dp()) * cfg_.batch * cfg_.seq)));
  }

  gpus_on_node_ = 0;
#ifdef AQ_HAVE_CUDA
  if (device_ == Device::CUDA) gpus_on_node_ = cuda::device_count();
#endif
}

template <typename T>
void Job<T>::build() {
  ctx_.enable_device_groups(device_, gpus_on_node_);  // first: collective, and nothing before it can fail
  DpGroups outer_groups;
  if (diloco()) outer_groups = ctx_.outer_dp_groups();  // collective too
  std::unique_ptr<SafeTensorsReader> weights = std::move(weights_);
  if (device_ != Device::CPU && ctx_.world_size() > 1) log_info("device collectives: ", ctx_.device_dp_group().describe());
  TensorParallel tp{ctx_.tp(), ctx_.tp_rank(), &ctx_.device_tp_group(), &ctx_.tp_group()};
  // ZeRO-1 pads the buffer to split it evenly over the optimizer's DP group. With DiLoCo every centre pads to
  // the same length (a multiple of every centre's DP size, ZeRO-1 or not: a centre of one rank runs without
  // it), since the outer exchange spans centres.
  int pad = cfg_.zero ? 16 * idp() : 1;
  if (diloco())
    for (int g : ctx_.topology().centre_dp) pad = std::lcm(pad, 16 * g);
  model_ = std::make_unique<GPT2<T>>(mc_, cfg_.batch, cfg_.seq, tp, pad, device_);
  opt_.m = DeviceBuffer<float>(device_, static_cast<size_t>(slice_len()));
  opt_.v = DeviceBuffer<float>(device_, static_cast<size_t>(slice_len()));
  if (cfg_.zero) grad_slice_ = DeviceBuffer<float>(device_, static_cast<size_t>(slice_len()));
  dp_opts_.buffer_size = model_->buffer_size();
  dp_opts_.device = device_;
  if (diloco()) {
    // Inner steps reduce inside the centre (flat over dp-intra); only the outer change crosses centres.
    DpAlgoOptions inner;
    inner.buffer_size = dp_opts_.buffer_size;
    inner.device = device_;
    dp_algo_ = make_dp_algorithm(inner, ctx_.intra_dp_groups());
    // The outer exchange may run behind the inner steps (--outer-overlap), so it gets its own communicators.
    outer_algo_ = make_dp_algorithm(dp_opts_, outer_groups);
  } else {
    dp_algo_ = make_dp_algorithm(dp_opts_, ctx_.dp_groups());
  }
  if (weights)
    model_->load(*weights);
  else
    model_->init_random(rng_.next_u64());
  if (diloco()) {
    const float* p = model_->params();
    theta_global_.assign(p, p + model_->buffer_size());
    outer_mom_.assign(theta_global_.size(), 0.0f);
    // Fragments: consecutive tensors in buffer order (embeddings, blocks, final norm), cut at the first tensor
    // boundary past each 1/F of the model. The cuts are decided on the whole tensors' sizes, so every TP layout
    // (and a resume under another one) has the same fragments.
    const auto& info = model_->params_info();
    AQ_CHECK(cfg_.outer_fragments <= static_cast<int>(info.size()), "--outer-fragments ", cfg_.outer_fragments,
             " exceeds the model's ", info.size(), " tensors; use at most that many");
    int64_t whole = 0;
    for (const ParamInfo& p : info) whole += shape_numel(p.full_shape);
    int64_t begin = 0, upto = 0;
    for (size_t k = 1; k <= info.size(); ++k) {
      upto += shape_numel(info[k - 1].full_shape);
      const int64_t end = k < info.size() ? info[k].offset : model_->buffer_size();
      const int f = static_cast<int>(fragments_.size());
      const int left = cfg_.outer_fragments - f;  // fragments still to cut, this one included
      const bool must = static_cast<int>(info.size() - k) < left;  // one tensor per remaining fragment at least
      if (left > 1 && (upto * cfg_.outer_fragments >= (f + 1) * whole || must)) {
        fragments_.emplace_back(begin, end);
        begin = end;
      }
    }
    fragments_.emplace_back(begin, model_->buffer_size());
  }
  if (!cfg_.resume.empty()) load_state(*weights);
  start_step_ = opt_.step;

  if (idp() > 1 && !cfg_.zero) {
    std::vector<int64_t> boundaries;
    for (const ParamInfo& p : model_->params_info()) boundaries.push_back(p.offset);
    buckets_ = std::make_unique<GradBuckets>(*dp_algo_, model_->grads(), model_->buffer_size(), boundaries,
                                             cfg_.bucket_mb);
    // Buckets start during the last micro-batch's backward only: before it, the gradients are not final.
    model_->set_grad_ready_hook([this](int64_t offset) {
      if (last_micro_) buckets_->on_ready(offset);
    });
  }
  // The work split: --grad-accum micro-batches on every rank, or the fixed per-centre split of --balance K0,K1,…
  // (a resumed run keeps its saved split; see load_state).
  if (micro_.empty()) {
    std::vector<int> micro(static_cast<size_t>(ctx_.dp()), cfg_.grad_accum);
    if (cfg_.balance != "off" && cfg_.balance != "auto") {
      const Topology& topo = ctx_.topology();
      std::vector<int> per_centre;
      std::stringstream ss(cfg_.balance);
      for (std::string tok; std::getline(ss, tok, ',');) {
        char* end = nullptr;
        const long k = std::strtol(tok.c_str(), &end, 10);
        AQ_CHECK(!tok.empty() && *end == '\0' && k >= 1 && k <= 100000, "--balance must be off, auto or micro-batches ",
                 "per rank of each centre, e.g. 3,1 (got \"", cfg_.balance, "\")");
        per_centre.push_back(static_cast<int>(k));
      }
      AQ_CHECK(static_cast<int>(per_centre.size()) == topo.centres(), "--balance ", cfg_.balance, " gives ",
               per_centre.size(), " centre(s) micro-batches but the job has ", topo.describe(),
               "; give one number per centre, in that order");
      for (int d = 0; d < ctx_.dp(); ++d) micro[d] = per_centre[static_cast<size_t>(topo.centre_of[d * ctx_.tp()])];
    }
    apply_split(std::move(micro));
  }
  auto& reg = ops::Registry::instance();
  adamw_ = reg.find<typename ops::MultiAdamW<T>::Update>("multi_adamw", device_, dtype_of<T>());
  sum_squares_ = reg.find<ops::MultiAdamW<float>::SumSquares>("multi_sum_squares", device_, DType::F32);
  // The chunk table of this rank's slice: TP-sharded tensors count in norm class 0, replicated ones in 1.
  std::vector<ops::TensorChunk> chunks;
  const int64_t lo = slice_begin(), hi = lo + slice_len();
  for (const ParamInfo& p : model_->params_info()) {
    const int64_t a = std::max(lo, p.offset), b = std::min(hi, p.offset + shape_numel(p.shape));
    if (a < b) ops::append_chunks(chunks, a - lo, b - a, p.decay, p.split == TpSplit::Replicated ? 1 : 0);
  }
  chunks_ = DeviceBuffer<ops::TensorChunk>(device_, chunks.size());
  device_copy(chunks_.data(), device_, chunks.data(), Device::CPU, chunks.size() * sizeof(ops::TensorChunk));
}

template <typename T>
std::vector<float> Job<T>::full_local(const float* part, int64_t n, const char* what) {
  std::vector<float> mine(static_cast<size_t>(n));
  device_copy(mine.data(), Device::CPU, part, device_, mine.size() * sizeof(float));
  if (!cfg_.zero) return mine;
  std::vector<float> full(static_cast<size_t>(model_->buffer_size()));
  idp_group().all_gather(mine.data(), full.data(), slice_len(), DType::F32, {what})->wait();
  return full;
}

template <typename T>
void Job<T>::load_state(const SafeTensorsReader& weights) {
  const std::string sp = state_path_for(cfg_.resume);
  AQ_CHECK(file_exists(sp), "--resume ", cfg_.resume, " needs its training state ", sp,
           " (written by --save beside the model); to start a new run from these weights use --init-from");
  SafeTensorsReader state(sp);
  const auto& wm = weights.metadata();
  const auto& sm = state.metadata();
  const std::string id_model = wm.count("checkpoint_id") ? wm.at("checkpoint_id") : "";
  const std::string id_state = sm.count("checkpoint_id") ? sm.at("checkpoint_id") : "";
  AQ_CHECK(!id_state.empty() && id_model == id_state, cfg_.resume, " and ", sp,
           " belong to different saves (model at step ", wm.count("step") ? wm.at("step") : "?", ", state at step ",
           sm.count("step") ? sm.at("step") : "?",
           "): the save was interrupted between the two files; resume from an earlier checkpoint");
  // The state is stored whole (consolidated); keep this rank's TP shard, then its ZeRO slice.
  std::vector<float> m(static_cast<size_t>(model_->buffer_size()), 0.0f), v(m.size(), 0.0f);
  model_->load(state, "exp_avg.", m.data());
  model_->load(state, "exp_avg_sq.", v.data());
  const size_t bytes = static_cast<size_t>(slice_len()) * sizeof(float);
  device_copy(opt_.m.data(), device_, m.data() + slice_begin(), Device::CPU, bytes);
  device_copy(opt_.v.data(), device_, v.data() + slice_begin(), Device::CPU, bytes);
  opt_.step = meta_int64(state, "step");
  try {
    auto words = nlohmann::json::parse(sm.at("rng_state")).get<std::vector<uint64_t>>();
    AQ_CHECK(words.size() == 4, "bad size");
    rng_.set_state({words[0], words[1], words[2], words[3]});
  } catch (const std::exception&) {
    fail(str(sp, ": rng_state in the metadata is missing or malformed"));
  }
  // The saved work split first: the data position is one of its global steps.
  // --balance auto keeps the split it measured; a fixed list or off follows the flags.
  if (sm.count("balance_micro") && cfg_.balance == "auto") {
    auto micro = nlohmann::json::parse(sm.at("balance_micro")).get<std::vector<int>>();
    if (static_cast<int>(micro.size()) == ctx_.dp()) {
      apply_split(std::move(micro));
      balanced_ = true;
    } else {
      log_info("resume: the saved work split is for ", micro.size(), " DP ranks, this run has ", ctx_.dp(),
               "; it is measured again");
    }
  }
  train_data_->set_position(LoaderPosition{meta_int64(state, "data_shard"), meta_int64(state, "data_position")});
  load_residuals(state);
  if (diloco()) load_outer_state(state);
  AQ_CHECK(opt_.step < cfg_.steps, cfg_.resume, " is already at step ", opt_.step, " and --steps is ", cfg_.steps,
           ": nothing to do; raise --steps to train further");
}

template <typename T>
void Job<T>::save(const std::string& path) {
  // Everything is consolidated to whole Hugging Face tensors (collective over TP, and over DP for ZeRO-1), then
  // rank 0 writes. State first, then the model: if we die in between, the model file's id no longer matches
  // the new state and --resume refuses the pair instead of silently mixing two steps.
  const std::vector<float> m = full_local(opt_.m.data(), slice_len(), "checkpoint gather exp_avg");
  const std::vector<float> v = full_local(opt_.v.data(), slice_len(), "checkpoint gather exp_avg_sq");
  std::vector<NamedTensor> moments = model_->gather_full("exp_avg.", m.data());
  for (NamedTensor& t : model_->gather_full("exp_avg_sq.", v.data())) moments.push_back(std::move(t));
  // fp32 weights are all-gathered every ZeRO-1 step; a bf16 model gathers only its working copy, so its master
  // weights (each DP rank owns its slice) are gathered here.
  std::vector<float> master;
  if (!std::is_same_v<T, float> && cfg_.zero)
    master = full_local(model_->params() + slice_begin(), slice_len(), "checkpoint gather master weights");
  std::vector<NamedTensor> params;
  if (diloco()) {
    // The model file is the global model; each centre's replica, moments and the outer momentum go to the state,
    // and the summed changes of exchanges not merged yet (they are merged at their step after a resume).
    outer_finish_exchanges();
    for (size_t k = 0; k < pending_.size(); ++k) {
      std::vector<float> full(static_cast<size_t>(model_->buffer_size()), 0.0f);
      const auto [b, e] = fragments_[static_cast<size_t>(pending_[k].fragment)];
      std::copy(pending_[k].delta.begin(), pending_[k].delta.end(), full.begin() + b);
      for (NamedTensor& t : model_->gather_full(str("outer_pending.", k, "."), full.data())) moments.push_back(std::move(t));
    }
    params = model_->gather_full("", theta_global_.data());
    for (NamedTensor& t : model_->gather_full("outer_momentum.", outer_mom_.data())) moments.push_back(std::move(t));
    const float* p = model_->params();
    const std::vector<float> replica(p, p + model_->buffer_size());
    const std::pair<const char*, const std::vector<float>*> parts[] = {
        {"param", &replica}, {"exp_avg", &m}, {"exp_avg_sq", &v}};
    for (const auto& [what, buf] : parts)
      append_per_centre(*buf, what, [what = what](int c) { return str("centre.", c, ".", what, "."); }, moments);
  } else {
    params = model_->gather_full("", master.empty() ? nullptr : master.data());
  }
  const bool ef = save_residuals(moments);
  std::string error;
  if (ctx_.world_rank() == 0) {
    try {
      const std::string id = new_checkpoint_id();
      const auto rs = rng_.state();
      nlohmann::json options = {{"lr", cfg_.schedule.lr},           {"lr_schedule", cfg_.schedule.kind},
                                {"warmup", cfg_.schedule.warmup},   {"min_lr", cfg_.schedule.min_lr},
                                {"weight_decay", cfg_.weight_decay}, {"beta1", cfg_.beta1},
                                {"beta2", cfg_.beta2},              {"eps", cfg_.eps},
                                {"grad_clip", cfg_.grad_clip},      {"batch", cfg_.batch},
                                {"seq", cfg_.seq},                  {"steps", cfg_.steps},
                                {"grad_accum", cfg_.grad_accum},
                                {"seed", cfg_.seed},                {"data", cfg_.data},
                                {"tp", ctx_.tp()},                  {"dp", ctx_.dp()},
                                {"zero", cfg_.zero},                {"outer", cfg_.outer},
                                {"outer_steps", cfg_.outer_steps},  {"outer_lr", cfg_.outer_lr},
                                {"outer_momentum", cfg_.outer_momentum}};
      std::map<std::string, std::string> meta = model_->config().to_metadata();
      meta["checkpoint_id"] = id;
      meta["step"] = std::to_string(opt_.step);
      std::map<std::string, std::string> state_meta = meta;
      const LoaderPosition pos = train_data_->position();
      state_meta["data_shard"] = std::to_string(pos.shard);
      state_meta["data_position"] = std::to_string(pos.position);
      state_meta["rng_state"] = dump_json(nlohmann::json(std::vector<uint64_t>(rs.begin(), rs.end())));
      state_meta["train_options"] = dump_json(options);
      // The work split, once it is final (a fixed list, or measured by auto).
      if (cfg_.balance != "off" && (cfg_.balance != "auto" || balanced_))
        state_meta["balance_micro"] = dump_json(nlohmann::json(micro_));
      if (ef) state_meta["ef_centres"] = dump_json(nlohmann::json(ctx_.topology().centre_names));
      if (diloco()) {
        state_meta["diloco_centres"] = dump_json(nlohmann::json(ctx_.topology().centre_names));
        nlohmann::json pend = nlohmann::json::array();
        for (const PendingSync& ps : pending_) pend.push_back({ps.fragment, ps.merge_step});
        state_meta["outer_pending"] = dump_json(pend);
        state_meta["outer_fragments"] = std::to_string(fragments_.size());
      }
      write_safetensors(state_path_for(path), moments, state_meta);
      write_safetensors(path, params, meta);
    } catch (const std::exception& e) {  // any failure of the writer must reach every rank
      error = str("saving ", path, " failed: ", e.what());
    }
  }
  error = ctx_.agree_on_failure(error);
  if (!error.empty()) throw AgreedError(error);
}

template <typename T>
bool Job<T>::save_residuals(std::vector<NamedTensor>& out) {
  std::vector<float> centre;
  if (!wan_algo().residuals(centre)) return false;
  // Inside a centre each position is quantised by one rank, so the centre's sum is its residual; the ranks of
  // intra index 0 (one per centre and tp_rank) then gather every centre's, and the TP groups consolidate them.
  const int64_t n = model_->buffer_size();
  ctx_.intra_group().all_reduce(centre.data(), n, DType::F32, {"checkpoint error-feedback residuals"})->wait();
  append_per_centre(centre, "error-feedback residuals", [](int c) { return str("ef_residual.", c, "."); }, out);
  return true;
}

template <typename T>
void Job<T>::load_residuals(const SafeTensorsReader& state) {
  const bool want = wan_algo().keeps_residuals();
  const auto& sm = state.metadata();
  const std::string& mine = ctx_.topology().centre_names[static_cast<size_t>(ctx_.centre())];
  if (!sm.count("ef_centres")) {
    if (want) log_info("resume: ", state.path(), " holds no error-feedback residuals; they start at zero");
    return;
  }
  if (!want) {
    log_info("resume: the error-feedback residuals in ", state.path(), " are not used (this run keeps none)");
    return;
  }
  const auto names = nlohmann::json::parse(sm.at("ef_centres")).get<std::vector<std::string>>();
  const auto it = std::find(names.begin(), names.end(), mine);
  if (it == names.end()) {
    log_info("resume: ", state.path(), " holds no error-feedback residuals of centre ", mine, "; they start at zero");
    return;
  }
  std::vector<float> centre(static_cast<size_t>(model_->buffer_size()), 0.0f);
  model_->load(state, str("ef_residual.", it - names.begin(), "."), centre.data());
  wan_algo().restore_residuals(std::move(centre));
}

template <typename T>
void Job<T>::outer_launch(int f, int64_t t) {
  // DiLoCo's outer exchange for one fragment. Every rank of a centre holds the same θ_local, so summing
  // Δ = θ_global − θ_local over all DP ranks (and dividing by their number at the merge) weights each centre by
  // its DP ranks, i.e. by the tokens it trained on.
  const auto [b, e] = fragments_[static_cast<size_t>(f)];
  PendingSync ps{f, t + cfg_.outer_overlap, std::vector<float>(static_cast<size_t>(e - b)), nullptr};
  const float* p = model_->params() + b;
  const float* g = theta_global_.data() + b;
  float* d = ps.delta.data();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < e - b; ++i) d[i] = g[i] - p[i];
  ps.work = outer_algo_->all_reduce(d, e - b, b, {str("DiLoCo outer change, fragment ", f)});
  pending_.push_back(std::move(ps));
}

template <typename T>
double Job<T>::outer_merge(PendingSync& ps) {
  // The outer Nesterov step on the fragment (outer_optimizer.h). With --outer-overlap the replica trained on
  // while the exchange ran, so it is mixed with the new θ_global instead of replaced.
  Timer w;
  if (ps.work) ps.work->wait();
  ps.work.reset();
  const double waited = w.ms();
  const auto [b, e] = fragments_[static_cast<size_t>(ps.fragment)];
  outer_nesterov_step(theta_global_.data() + b, outer_mom_.data() + b, model_->params() + b, ps.delta.data(), e - b,
                      1.0f / static_cast<float>(ctx_.dp()), static_cast<float>(cfg_.outer_lr),
                      static_cast<float>(cfg_.outer_momentum),
                      cfg_.outer_overlap > 0 ? static_cast<float>(cfg_.outer_mix) : 0.0f);
  return waited;
}

template <typename T>
void Job<T>::outer_steps(int64_t t, StepRecord& r) {
  // After inner step t: start the exchanges of the fragments due now, then merge those due now (with no
  // overlap, the ones just started). Every rank runs the same schedule, so the exchanges match.
  Timer c;
  const int F = static_cast<int>(fragments_.size());
  for (int f = 0; f < F; ++f)
    if (fragment_syncs_at(f, F, cfg_.outer_steps, t)) {
      outer_launch(f, t);
      ++r.outer_launched;
    }
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->merge_step != t) {
      ++it;
      continue;
    }
    r.outer_exposed_ms += outer_merge(*it);
    ++r.outer_merged;
    it = pending_.erase(it);
  }
  outer_poll();
  r.outer_sync = r.outer_merged > 0;
  // What the step spent here is communication: the launches (encoding) and the waits at the merges.
  const double ms = c.ms();
  r.comm_ms += ms;
  r.exposed_comm_ms += ms;
}

template <typename T>
void Job<T>::outer_finish_exchanges() {
  for (PendingSync& ps : pending_)
    if (ps.work) {
      ps.work->wait();
      ps.work.reset();
    }
}

template <typename T>
void Job<T>::append_per_centre(const std::vector<float>& mine, const std::string& what,
                               const std::function<std::string(int)>& prefix, std::vector<NamedTensor>& out) {
  const Topology& topo = ctx_.topology();
  const int64_t n = model_->buffer_size();
  std::vector<float> all(static_cast<size_t>(n) * topo.centres(), 0.0f);
  if (topo.centres() == 1)
    std::copy(mine.begin(), mine.end(), all.begin());
  else if (topo.intra_index[ctx_.world_rank()] == 0)  // one rank per centre and tp_rank gathers every centre's
    ctx_.cross_group()->all_gather(mine.data(), all.data(), n, DType::F32, {"checkpoint " + what + " of every centre"})
        ->wait();
  for (int c = 0; c < topo.centres(); ++c)
    for (NamedTensor& t : model_->gather_full(prefix(c), all.data() + static_cast<size_t>(c) * n))
      out.push_back(std::move(t));
}

template <typename T>
void Job<T>::load_outer_state(const SafeTensorsReader& state) {
  // θ_global is the model file (loaded already); the state has the momentum and each centre's replica.
  const auto& sm = state.metadata();
  if (!sm.count("diloco_centres")) {
    log_info("resume: ", state.path(), " has no DiLoCo state; every centre starts its replica from the model and "
             "the outer momentum from zero");
    return;
  }
  const int64_t n = model_->buffer_size();
  model_->load(state, "outer_momentum.", outer_mom_.data());
  std::vector<float> buf(static_cast<size_t>(n), 0.0f);
  // Exchanges that were in flight at the save: their summed changes, merged at their step.
  const auto pend = sm.count("outer_pending") ? nlohmann::json::parse(sm.at("outer_pending")) : nlohmann::json::array();
  if (!pend.empty()) {
    const std::string saved_f = sm.count("outer_fragments") ? sm.at("outer_fragments") : "?";
    AQ_CHECK(saved_f == std::to_string(fragments_.size()), state.path(), " was saved with --outer-fragments ", saved_f,
             " and ", pend.size(), " outer exchange(s) not merged yet; resume with --outer-fragments ", saved_f);
    for (size_t k = 0; k < pend.size(); ++k) {
      std::fill(buf.begin(), buf.end(), 0.0f);
      model_->load(state, str("outer_pending.", k, "."), buf.data());
      const int f = pend[k][0].get<int>();
      const auto [b, e] = fragments_[static_cast<size_t>(f)];
      pending_.push_back(PendingSync{f, pend[k][1].get<int64_t>(),
                                     std::vector<float>(buf.begin() + b, buf.begin() + e), nullptr});
    }
  }

  const auto names = nlohmann::json::parse(sm.at("diloco_centres")).get<std::vector<std::string>>();
  const std::string& mine = ctx_.topology().centre_names[static_cast<size_t>(ctx_.centre())];
  const auto it = std::find(names.begin(), names.end(), mine);
  if (it == names.end()) {
    log_info("resume: ", state.path(), " has no replica of centre ", mine, "; it starts from the global model");
    return;
  }
  const std::string c = str("centre.", it - names.begin(), ".");
  std::fill(buf.begin(), buf.end(), 0.0f);
  model_->load(state, c + "param.", buf.data());
  std::copy(buf.begin(), buf.end(), model_->params());
  for (auto [what, dst] : {std::pair{"exp_avg.", &opt_.m}, std::pair{"exp_avg_sq.", &opt_.v}}) {
    std::fill(buf.begin(), buf.end(), 0.0f);
    model_->load(state, c + what, buf.data());
    device_copy(dst->data(), device_, buf.data() + slice_begin(), Device::CPU,
                static_cast<size_t>(slice_len()) * sizeof(float));
  }
}

}  // namespace

std::vector<int> deal_micro_batches(const std::vector<double>& ideal, int64_t M) {
  // Floors of the ideal shares (at least one each), then the largest remainders get the rest; when the "at least
  // one" rule gave out too many, they are taken back from the ranks furthest above their share.
  const size_t n = ideal.size();
  AQ_ASSERT(n >= 1 && M >= static_cast<int64_t>(n), "dealing ", M, " micro-batches to ", n, " ranks");
  std::vector<int> k(n);
  int64_t given = 0;
  for (size_t d = 0; d < n; ++d) given += k[d] = std::max(1, static_cast<int>(ideal[d]));
  while (given != M) {
    size_t best = n;
    for (size_t d = 0; d < n; ++d) {
      if (given > M && k[d] <= 1) continue;
      const double gap = given < M ? ideal[d] - k[d] : k[d] - ideal[d];  // most below / most above its share
      if (best == n || gap > (given < M ? ideal[best] - k[best] : k[best] - ideal[best])) best = d;
    }
    k[best] += given < M ? 1 : -1;
    given += given < M ? 1 : -1;
  }
  return k;
}

namespace {

template <typename T>
void Job<T>::apply_split(std::vector<int> micro) {
  // DP rank d reads its K_d·B sequences right after those of ranks < d: the global step is what one process
  // with batch M·B reads, whatever the split (the mathematics does not depend on it).
  micro_ = std::move(micro);
  int64_t total = 0, first = 0;
  for (int d = 0; d < static_cast<int>(micro_.size()); ++d) {
    if (d == ctx_.dp_rank()) first = total;
    total += micro_[static_cast<size_t>(d)];
  }
  K_ = micro_[static_cast<size_t>(ctx_.dp_rank())];
  // M: the micro-batches the optimizer's DP group sums over (with DiLoCo, this centre's; --balance is refused
  // there, so its ranks all have K).
  M_ = diloco() ? static_cast<int64_t>(idp()) * K_ : total;
  train_data_->set_split(first * cfg_.batch, static_cast<int64_t>(K_) * cfg_.batch, total * cfg_.batch);
  inputs_.resize(static_cast<size_t>(cfg_.batch) * K_ * cfg_.seq);
  targets_.resize(inputs_.size());
}

template <typename T>
void Job<T>::balance_now() {
  // Each centre's speed: the mean over its ranks of their time per micro-batch. The M micro-batches of a step
  // are then dealt out to the DP ranks in proportion to their centre's speed (largest remainder, at least one
  // each), so every rank's step takes about the same time. One all-reduce over the world, once.
  const Topology& topo = ctx_.topology();
  const int C = topo.centres();
  std::vector<double> t(static_cast<size_t>(2 * C), 0.0);
  if (ctx_.tp_rank() == 0) {  // one report per DP rank
    t[static_cast<size_t>(ctx_.centre())] = micro_ms_;
    t[static_cast<size_t>(C + ctx_.centre())] = 1.0;
  }
  ctx_.world().all_reduce(t.data(), 2 * C, DType::F64, {"balance: times per centre"})->wait();
  // Test hook: AQ_BALANCE_TEST_MS="a,b,…" replaces the measured time per micro-batch of each centre (tests need
  // an uneven, reproducible split on one machine). Unset in normal runs.
  if (const char* fake = std::getenv("AQ_BALANCE_TEST_MS")) {
    std::stringstream ss(fake);
    int c = 0;
    for (std::string tok; std::getline(ss, tok, ',') && c < C; ++c) t[c] = std::stod(tok) * t[C + c] * cfg_.balance_steps;
  }
  std::vector<double> speed(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) speed[c] = t[C + c] / std::max(t[c], 1e-9);  // micro-batches per ms
  const int dp = ctx_.dp();
  double total = 0;
  for (int d = 0; d < dp; ++d) total += speed[static_cast<size_t>(topo.centre_of[d * ctx_.tp()])];
  std::vector<double> ideal(static_cast<size_t>(dp));
  for (int d = 0; d < dp; ++d)
    ideal[d] = static_cast<double>(M_) * speed[static_cast<size_t>(topo.centre_of[d * ctx_.tp()])] / total;
  std::vector<int> micro = deal_micro_batches(ideal, M_);
  std::string line = "balance: micro-batches per rank by centre speed:";
  for (int c = 0; c < C; ++c)
    for (int d = 0; d < dp; ++d)
      if (topo.centre_of[d * ctx_.tp()] == c) {
        line += str(" ", topo.centre_names[c], " ", micro[d], " (",
                    t[c] / std::max(t[C + c], 1.0) / static_cast<double>(cfg_.balance_steps), " ms per micro-batch)");
        break;
      }
  log_info(line);
  apply_split(std::move(micro));
}

template <typename T>
double Job<T>::global_grad_norm(const float* grads) {
  // TP-sharded tensors are summed across TP ranks; replicated ones have equal gradients on every TP rank and
  // are counted once. Under ZeRO-1 each DP rank holds a slice, so the slices are summed across DP first.
  double sq[2] = {0, 0};  // [sharded, replicated]: the chunks' norm classes
  ProfileScope prof("grad norm");
  sum_squares_(sq, grads, chunks_.data(), static_cast<int64_t>(chunks_.size()));
  if (cfg_.zero) idp_group().all_reduce(sq, 2, DType::F64, {"grad norm (ZeRO slices)"})->wait();
  if (ctx_.tp() > 1) ctx_.tp_group().all_reduce(sq, 1, DType::F64, {"grad norm (TP shards)"})->wait();
  return std::sqrt(sq[0] + sq[1]);
}

// Fault injection for the failure tests: AQ_FAULT_INJECT="stall:RANK:STEP" makes that rank stop responding
// (sleep) at that 1-based step, "die:RANK:STEP" kills it with SIGKILL, "error:RANK:STEP" raises an error on
// that rank alone. Unset in normal runs.
// Stop requests. The handler only records the signal; the loop stops after the step that is running. A second
// signal while one is pending ends the process at once (the default action), for a user who means it.
std::atomic<int> g_stop_signal{0};

extern "C" void on_stop_signal(int sig) {
  if (g_stop_signal.exchange(sig) != 0) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

void install_stop_handlers() {
  g_stop_signal = 0;
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, on_stop_signal);
}

void restore_stop_handlers() {
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) std::signal(sig, SIG_DFL);
}

const char* signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
  }
  return "a signal";
}

void maybe_inject_fault(int rank, int64_t step) {
  static const char* spec = std::getenv("AQ_FAULT_INJECT");
  if (!spec) return;
  char kind[16] = {0};
  int r = -1;
  long long at = -1;
  if (std::sscanf(spec, "%15[a-z]:%d:%lld", kind, &r, &at) != 3 || r != rank || at != step) return;
  log_error(str("aq: fault injection: rank ", rank, " ", kind, " at step ", step));
  if (std::string(kind) == "die") std::raise(SIGKILL);
  if (std::string(kind) == "error") fail("injected fault");
  if (std::string(kind) == "sigterm") std::raise(SIGTERM);  // one rank only: the stop must still be agreed
  if (std::string(kind) == "stall")
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

template <typename T>
StepRecord Job<T>::step(int64_t s) {
  maybe_inject_fault(ctx_.world_rank(), s + 1);
  profile_begin_step();
  Timer t;
  train_data_->next(inputs_.data(), targets_.data());
  model_->take_tp_comm_ms();
  if (buckets_) buckets_->begin_step();
  // Gradient accumulation: K micro-batches add into the gradients (zeroed by the first). Their losses and mean
  // gradients are summed here and over the DP ranks, and divided by the step's M micro-batches below.
  const int K = K_;
  const size_t micro = static_cast<size_t>(cfg_.batch) * cfg_.seq;
  double loss = 0;
  Timer compute;
  for (int k = 0; k < K; ++k) {
    last_micro_ = k + 1 == K;
    loss += model_->forward_backward(inputs_.data() + k * micro, targets_.data() + k * micro, cfg_.batch, cfg_.seq,
                                     k > 0);
  }
  // --balance auto times steps 2 .. 1 + balance_steps of the run (after a warm-up step), counted from the run's
  // start even across a resume, so a run split by a save switches to the measured split at the same step.
  const int64_t first_timed = 1;
  if (cfg_.balance == "auto" && s >= first_timed && s < first_timed + cfg_.balance_steps)
    micro_ms_ += compute.ms() / K;
  if (diloco()) outer_poll();  // exchanges running behind the inner steps make progress
  double comm = 0, exposed = 0;
  float* grads = model_->grads();
  if (buckets_) {
    buckets_->finish();  // data-parallel sum of the gradients (the mean is folded in below)
    comm += buckets_->comm_ms();
    exposed += buckets_->exposed_ms();
  } else if (cfg_.zero) {
    Timer c;
    dp_algo_->reduce_scatter(grads, grad_slice_.data(), slice_len(), {"ZeRO-1 gradient reduce-scatter"})->wait();
    const double ms = c.ms();
    comm += ms;
    exposed += ms;
  }
  const float* my_grads = cfg_.zero ? grad_slice_.data() : grads;
  // The mean over the optimizer's DP group (with DiLoCo: this centre's, so nothing but outer syncs crosses
  // centres).
  if (idp() > 1) idp_group().all_reduce(&loss, 1, DType::F64, {"loss"})->wait();
  loss /= static_cast<double>(M_);
  if (!std::isfinite(loss)) {  // the loss is all-reduced, so every rank of the group stops here together
    const std::string msg = str("loss is ", loss, " at step ", s + 1, ": training stopped (no checkpoint written for ",
                                "this step); lower --lr or keep --grad-clip on");
    // With DiLoCo only this centre knows: an unagreed error makes its ranks end the job for everyone.
    if (diloco() && ctx_.topology().centres() > 1) fail(msg);
    throw AgreedError(msg);
  }
  // The reductions above sum over the DP ranks; the mean is taken here, once, instead of in another pass over
  // the gradients: the norm is divided by dp and the division is folded into AdamW's gradient scale.
  const double dp_scale = 1.0 / static_cast<double>(M_);
  const double norm = global_grad_norm(my_grads) * dp_scale;
  if (!std::isfinite(norm)) {
    std::string where = "(not on this rank)";
    std::vector<float> host(static_cast<size_t>(model_->buffer_size()));
    device_copy(host.data(), Device::CPU, grads, device_, host.size() * sizeof(float));
    for (const ParamInfo& p : model_->params_info()) {
      const float* g = host.data() + p.offset;
      for (int64_t i = 0; i < shape_numel(p.shape) && where[0] == '('; ++i)
        if (!std::isfinite(g[i])) where = str(p.name, " (element ", i, " of this rank's shard = ", g[i], ")");
    }
    const auto raise = [&](const std::string& m) {
      if (diloco() && ctx_.topology().centres() > 1) fail(m);  // only this centre knows (see the loss above)
      throw AgreedError(m);
    };
    raise(str("gradient norm is ", norm, " at step ", s + 1, "; first non-finite gradient on rank ",
                          ctx_.world_rank(), ": ", where, "; lower --lr"));
  }
  // torch.nn.utils.clip_grad_norm_: scale by clip/(norm + 1e-6) when that is below 1.
  ops::AdamWParams hp;
  hp.grad_scale = (cfg_.grad_clip > 0 ? std::min(1.0, cfg_.grad_clip / (norm + 1e-6)) : 1.0) * dp_scale;
  hp.lr = cfg_.schedule.at(s);
  hp.beta1 = cfg_.beta1;
  hp.beta2 = cfg_.beta2;
  hp.eps = cfg_.eps;
  hp.step = ++opt_.step;
  hp.weight_decay = cfg_.weight_decay;  // for the chunks of tensors that decay (2-D and up)
  // One launch for every tensor of this rank's slice; a bf16 model's working copy is written in the same pass.
  const int64_t lo = slice_begin();
  T* copy = std::is_same_v<T, float> ? nullptr : model_->working_params() + lo;
  {
    ProfileScope prof("adamw");
    adamw_(model_->params() + lo, copy, my_grads, opt_.m.data(), opt_.v.data(), chunks_.data(),
           static_cast<int64_t>(chunks_.size()), hp);
  }
  if (cfg_.zero) {
    // Every rank needs the updated weights the kernels read: fp32 parameters, or the bf16 working copy (half
    // the bytes; the fp32 master slices stay with their owners until a checkpoint gathers them).
    Timer c;
    T* params = model_->working_params();
    dp_algo_->all_gather(params + lo, params, slice_len(), dtype_of<T>(), {"ZeRO-1 parameter all-gather"})->wait();
    const double ms = c.ms();
    comm += ms;
    exposed += ms;
  }
  device_synchronize(device_);  // the step's time includes the queued optimizer kernels
  const double tp_ms = model_->take_tp_comm_ms();
  StepRecord r{s + 1, loss, hp.lr, norm, t.ms(), 0.0, comm + tp_ms, exposed + tp_ms};
  if (diloco()) {
    outer_steps(opt_.step, r);
    r.ms = t.ms();
    dp_algo_->take_wan_stats();  // inside the centre: nothing crossed
  }
  const WanStats wan = wan_algo().take_wan_stats();
  r.wan_bytes = wan.bytes;
  r.wan_ms = wan.ms;
  r.tokens_per_s = static_cast<double>(cfg_.batch) * (diloco() ? K * ctx_.dp() : M_) * cfg_.seq / (r.ms / 1000.0);
  // Restored error-feedback residuals have all been claimed once every position was quantised: one step, or
  // with DiLoCo one window of H steps.
  if (s + 1 == start_step_ + (diloco() ? cfg_.outer_steps + cfg_.outer_overlap : 1)) wan_algo().drop_unclaimed_residuals();
  if (cfg_.balance == "auto" && s + 1 == first_timed + cfg_.balance_steps && !balanced_) {
    balance_now();
    balanced_ = true;
  }
  return r;
}

template <typename T>
double Job<T>::evaluate() {
  // DiLoCo: the model a run delivers is θ_global (the checkpoint's model file), so that is what is evaluated;
  // the replica comes back afterwards.
  std::vector<float> replica;
  if (diloco()) {
    float* p = model_->params();
    replica.assign(p, p + model_->buffer_size());
    std::copy(theta_global_.begin(), theta_global_.end(), p);
  }
  struct Restore {
    std::vector<float>& r;
    float* p;
    ~Restore() {
      if (!r.empty()) std::copy(r.begin(), r.end(), p);
    }
  } restore{replica, model_->params()};
  val_data_->reset();
  double sum = 0;
  for (int64_t i = 0; i < cfg_.eval_batches; ++i) {
    val_data_->next(inputs_.data(), targets_.data());
    sum += model_->evaluate(inputs_.data(), targets_.data(), cfg_.batch, cfg_.seq);
  }
  double val = sum / static_cast<double>(cfg_.eval_batches);
  if (ctx_.dp() > 1) ctx_.dp_group().all_reduce(&val, 1, DType::F64, {"validation loss"})->wait();
  return val / ctx_.dp();
}


// Whether the ranks agree on stopping after step t (1-based): every step, or with DiLoCo across centres only on
// the steps where an outer exchange starts anyway (no extra wide-area round trip between them).
bool stop_check_due(const TrainConfig& cfg, const ParallelContext& ctx, int64_t t) {
  if (cfg.stop_at > 0 && t >= cfg.stop_at) return true;  // identical on every rank
  if (cfg.outer != "diloco" || ctx.topology().centres() == 1) return true;
  for (int f = 0; f < cfg.outer_fragments; ++f)
    if (fragment_syncs_at(f, cfg.outer_fragments, cfg.outer_steps, t)) return true;
  return false;
}

// The steps, evaluations and saves of one job.
void run_loop(JobApi& job, const TrainConfig& cfg, ParallelContext& ctx, TrainResult& result) {
  const bool parallel = ctx.world_size() > 1;
  auto log_json = [&](const nlohmann::ordered_json& j) { job.log_json(j); };
  Timer run_timer;
  const int64_t first = job.start_step();
  size_t allocs_after_first = 0;
  double save_s = 0;  // the last save's duration (the time limit leaves room for one)
  for (int64_t s = first; s < cfg.steps; ++s) {
    const StepRecord r = job.step(s);
    result.steps.push_back(r);
    if (cfg.after_step) cfg.after_step(r);
    // From here on every buffer has been sized: the caching allocator must not call cudaMalloc again.
    if (s == first) allocs_after_first = device_driver_allocations(job.device());
    const double per_step_s = run_timer.ms() / 1000.0 / static_cast<double>(s + 1 - first);
    if (!cfg.quiet) log_info(progress_line(r, cfg.steps, per_step_s * static_cast<double>(cfg.steps - s - 1), ctx));
    nlohmann::ordered_json j = {{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm},
                                {"ms", r.ms},     {"tokens_per_s", r.tokens_per_s}};
    if (parallel) {
      j["world"] = ctx.world_size();
      j["tp"] = ctx.tp();
      j["dp"] = ctx.dp();
      j["comm_ms"] = r.comm_ms;
      j["exposed_comm_ms"] = r.exposed_comm_ms;
    }
    if (cfg.outer == "diloco") {
      if (r.outer_sync) j["outer_sync"] = true;
      j["outer_launched"] = r.outer_launched;
      j["outer_merged"] = r.outer_merged;
      j["outer_exposed_ms"] = r.outer_exposed_ms;
    }
    if (ctx.topology().centres() > 1) {
      j["centres"] = ctx.topology().centres();
      j["wan_bytes"] = r.wan_bytes;
      j["wan_ms"] = r.wan_ms;
    }
    log_json(j);

    const bool last = s + 1 == cfg.steps;
    if (!cfg.val_data.empty() && ((cfg.eval_every > 0 && (s + 1) % cfg.eval_every == 0) || last)) {
      const double val = job.evaluate();
      log_info("step ", s + 1, " | val loss ", val);
      log_json({{"step", s + 1}, {"split", "val"}, {"loss", val}});
      result.val_losses.emplace_back(s + 1, val);
    }
    // Stop early? Every rank must stop after the same step, so the ranks agree: a signal on any rank, the time
    // limit on any rank's clock (the next step and a save must still fit), or --stop-at. With DiLoCo across
    // centres the agreement rides on the outer syncs' steps, so it adds no wide-area round trip in between.
    if (!last && stop_check_due(cfg, ctx, s + 1)) {
      int32_t why = g_stop_signal.load();
      if (!why && cfg.stop_at > 0 && s + 1 >= cfg.stop_at) why = -1;
      if (!why && cfg.time_limit_min > 0) {
        const double mean_s = run_timer.ms() / 1000.0 / static_cast<double>(s + 1 - first);
        if (run_timer.ms() / 1000.0 + 3 * mean_s + save_s > cfg.time_limit_min * 60.0) why = -2;
      }
      int32_t agreed = why;
      if (parallel) {
        int32_t pair[2] = {why > 0 ? why : 0, why < 0 ? -why : 0};  // signal, planned reason
        ctx.world().all_reduce(pair, 2, DType::I32, {"stop agreement", ReduceOp::Max})->wait();
        agreed = pair[0] ? pair[0] : -pair[1];
      }
      if (agreed) {
        result.stopped_by = agreed == -1 ? "--stop-at" : agreed == -2 ? "--time-limit" : signal_name(agreed);
        result.stopped_by_signal = agreed > 0;
        break;
      }
    }
    if (cfg.save_every > 0 && (s + 1) % cfg.save_every == 0 && !last) {
      Timer st;
      job.save(cfg.save);
      save_s = st.ms() / 1000.0;
      log_info("saved ", cfg.save, " (step ", s + 1, ")");
    }
  }
  if (cfg.steps > first) result.step_loop_device_mallocs = device_driver_allocations(job.device()) - allocs_after_first;
  // Exchanges still in flight (started in the last τ steps) complete here; a save keeps them for a resume.
  job.finish_communication();
  if (!cfg.save.empty()) {
    job.save(cfg.save);
    log_info("saved ", cfg.save, " and ", state_path_for(cfg.save), " (step ", job.start_step(), ")");
  }
  if (!result.stopped_by.empty())
    log_info("stopped by ", result.stopped_by, " after step ", job.start_step(), " of ", cfg.steps,
             cfg.save.empty() ? " (nothing saved: no --save)" : str("; continue with --resume ", cfg.save));
}

// Across centres: what each centre sent over the run (the sum of its ranks' wan_bytes), for the log and for
// comparison with the link's own byte counters. Collective.
void report_wan_totals(TrainResult& result, ParallelContext& ctx) {
  const Topology& topo = ctx.topology();
  if (topo.centres() == 1) return;
  std::vector<double> per(static_cast<size_t>(topo.centres()), 0.0);
  for (const StepRecord& r : result.steps) per[static_cast<size_t>(ctx.centre())] += r.wan_bytes;
  ctx.world().all_reduce(per.data(), topo.centres(), DType::F64, {"wan bytes per centre"})->wait();
  std::string line = str("wan: bytes sent by each centre over ", result.steps.size(), " steps:");
  for (int c = 0; c < topo.centres(); ++c)
    line += str(c ? "," : "", " ", topo.centre_names[c], " ", static_cast<int64_t>(per[c]));
  log_info(line);
  result.wan_bytes_per_centre = per;
}

// Resolves --device and --dtype (which decide the model's element type), then makes the job.
std::unique_ptr<JobApi> make_job(const TrainConfig& cfg, ParallelContext& ctx) {
  const Device device = choose_device(cfg.device, ctx);
  if (use_bf16(cfg.dtype, device)) return std::make_unique<Job<bf16>>(cfg, ctx, device);
  return std::make_unique<Job<float>>(cfg, ctx, device);
}
}  // namespace

TrainResult train(const TrainConfig& cfg_in, ParallelContext& ctx) {
  TrainConfig cfg = cfg_in;
  cfg.schedule.steps = cfg.steps;
  const int nthreads = configure_threads(cfg.threads, ctx.local_size());
  std::unique_ptr<JobApi> job_ptr;
  // Set-up failures (bad flags, files, shapes, devices) are agreed on, so exactly one rank reports and all exit;
  // the collective part of building (device groups) starts only once every rank got that far.
  for (int phase = 0; phase < 2; ++phase) {
    std::string error;
    try {
      if (phase == 0) {
        cfg.validate();
        job_ptr = make_job(cfg, ctx);
        job_ptr->setup();
      } else {
        job_ptr->build();
      }
    } catch (const CommError&) {
      throw;
    } catch (const Error& e) {
      error = e.what();
    }
    error = ctx.agree_on_failure(error);
    if (!error.empty()) throw AgreedError(error);
  }

  JobApi& job = *job_ptr;
  log_info(ctx.banner(job.device_label()));
  job.log_summary();
  log_info("threads: ", nthreads, " per rank | blas ", blas_kernels_line());
  if (!cfg.resume.empty()) log_info("resumed ", cfg.resume, " at step ", job.start_step());

  TrainResult result;
  install_stop_handlers();
  struct Restore {
    ~Restore() { restore_stop_handlers(); }
  } restore_handlers;
  try {
    run_loop(job, cfg, ctx, result);
    job.describe(result);
    report_wan_totals(result, ctx);
  } catch (const AgreedError&) {
    throw;
  } catch (const CommError&) {
    throw;
  } catch (const Error& e) {
    if (ctx.world_size() == 1) throw;
    // Raised on this rank only (a CUDA error, a full disk…): its peers would wait in the next collective.
    log_error(str("aq: error on rank ", ctx.world_rank(), " (host ", ctx.host(), "): ", e.what(), "; ending the job"));
    ctx.abort(1);
  }
  return result;
}

}  // namespace aq
