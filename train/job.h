// job.h — one training job on one rank, inside train/ only. The class is declared here and its methods are
// defined by topic: job.cpp (set-up, the step, evaluation), checkpoint.cpp (save and resume), diloco.cpp (the
// outer optimizer across centres), balance.cpp (the work split by speed). run.cpp drives it (run_loop).
// Each of those files instantiates Job<float> and Job<bf16> for the methods it defines.
#pragma once

#include <unistd.h>

#include <array>
#include <cstdint>
#include <deque>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/memory_estimate.h"
#include "model/transformer.h"
#include "ops/adamw/adamw.h"
#include "parallel/algo/dp_algorithm.h"
#include "parallel/grad_sync.h"
#include "runtime/data.h"
#include "runtime/log.h"
#include "runtime/memory.h"
#include "runtime/path_lock.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"
#include "train/outer_optimizer.h"
#include "train/trainer.h"

namespace aq {

// JSON text that never throws on a non-UTF-8 string (a file name, say): invalid bytes become U+FFFD.
template <typename J>
std::string dump_json(const J& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The data-parallel algorithm for this job and layout: the flags resolved against the centres. Throws aq::Error
// (identically on every rank) for a combination that cannot run. (config.cpp)
DpAlgoOptions resolve_dp_algorithm(const TrainConfig& cfg, const Topology& topo);
// The model's shape: from the flags for a fresh model, or from the --init-from/--resume file, opened into
// `weights` (flags given explicitly must agree with it). (config.cpp)
ModelConfig model_config(const TrainConfig& cfg, std::unique_ptr<SafeTensorsReader>& weights);
// --device and --centre-device resolved against the job's centres: the device each centre asks for ("cpu",
// "cuda", or "auto" in a job of one rank), by centre id. The same on every rank; throws aq::Error (identically
// on every rank) for a list that cannot run. (config.cpp)
std::vector<std::string> centre_devices(const TrainConfig& cfg, const Topology& topo);
// This rank's device (its centre's entry of centre_devices; a GPU among its node's GPU ranks), and --dtype
// resolved for a device: a job may hold Job<bf16> ranks on GPUs beside Job<float> ranks on CPUs. (config.cpp)
Device choose_device(const std::vector<std::string>& wanted, const ParallelContext& ctx);
bool use_bf16(const std::string& want, Device device);

struct OptimizerState {
  DeviceBuffer<float> m, v;  // on the model's device: the whole local buffer, or this rank's ZeRO-1 slice
  int64_t step = 0;          // completed optimizer steps
};

// What the training loop needs from a job, whatever the model's element type.
class JobApi {
 public:
  virtual ~JobApi() = default;
  virtual void setup() = 0;  // flags, files: everything that can fail differently on different ranks
  virtual void build() = 0;  // device groups (collective), model, optimizer state, buckets
  virtual void check_build() {}  // collective checks of what every rank built (after build() agreed)
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
  // A --save directory this run created and never saved into (it failed first) does not outlive it.
  ~Job() override {
    save_lock_.reset();
    if (made_save_dir_) ::rmdir(cfg_.save.c_str());  // fails, harmlessly, once it holds a save
  }

  void setup() override;
  void build() override;
  void check_build() override;
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
  std::string device_label() const override { return device_ == Device::CPU ? "cpu" : str("cuda:", gpu_index_); }
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
    log_info(
        "data: ", train_data_->num_shards(), " shard(s), ", train_data_->total_tokens(), " tokens | batch ", cfg_.batch,
        " x ", cfg_.seq, " per rank", cfg_.grad_accum > 1 ? str(" x ", cfg_.grad_accum, " micro-batches") : "", ", ",
        static_cast<int64_t>(cfg_.batch) * cfg_.grad_accum * cfg_.seq * ctx_.dp(), " tokens/step over dp=", ctx_.dp(),
        buckets_ ? str(" | ", buckets_->num_buckets(), " gradient buckets") : "");
    if (diloco())
      log_info("outer: DiLoCo every ", cfg_.outer_steps, " steps, Nesterov lr ", cfg_.outer_lr, " momentum ",
               cfg_.outer_momentum,
               fragments_.size() > 1 ? str(" | ", fragments_.size(), " fragments on a staggered schedule") : "",
               cfg_.outer_overlap
                   ? str(" | exchanges overlap ", cfg_.outer_overlap, " inner steps, merged with mix ", cfg_.outer_mix)
                   : "",
               " | inner data parallel inside each centre (dp=", idp(), " here)",
               paced() ? (cfg_.balance == "auto"
                              ? " | inner steps paced by measured centre speed, token-weighted average"
                              : str(" | inner steps per window by centre: ", cfg_.balance, ", token-weighted average"))
                       : "",
               " | outer exchange: ", outer_algo_->describe());
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
  int idp_rank() const {
    return diloco() ? ctx_.topology().intra_index[static_cast<size_t>(ctx_.world_rank())] : ctx_.dp_rank();
  }
  Backend& idp_group() { return diloco() ? ctx_.intra_group() : ctx_.dp_group(); }
  double global_grad_norm(const float* grads);  // grads indexed from slice_begin()
  // Error feedback: appends each centre's residuals ("ef_residual.<centre id>.<tensor>") to `out`; false when
  // the job keeps none. Collective.
  bool save_residuals(std::vector<NamedTensor>& out);
  void load_residuals(const SafeTensorsReader& state);
  void load_state(const SafeTensorsReader& weights);
  // A host copy of a whole local buffer from this rank's part `part` (n values on the model's device), all-
  // gathered over DP under ZeRO-1 (unless `sliced` is false: `part` is then the whole buffer).
  std::vector<float> full_local(const float* part, int64_t n, const char* what, bool sliced = true);

  TrainConfig cfg_;
  ParallelContext& ctx_;
  Rng rng_;
  ModelConfig mc_;
  std::unique_ptr<Transformer<T>> model_;
  std::unique_ptr<DataLoader> train_data_, val_data_;
  DpAlgoOptions dp_opts_;                 // resolved in setup()
  MemoryEstimate mem_;                    // per rank, from setup()
  double mem_avail_ = 0;                  // host memory per rank of this node (0: unknown)
  std::unique_ptr<DpAlgorithm> dp_algo_;  // how DP gradients are reduced (flat or hierarchical)
  // --outer diloco: the global parameters θ_global and the outer Nesterov momentum (full local buffers, fp32,
  // identical on every rank); the exchange (outer_algo_) is declared after the exchanges in flight.
  std::vector<float> theta_global_, outer_mom_;
  std::vector<std::pair<int64_t, int64_t>> fragments_;  // [begin, end) of each fragment, at tensor boundaries
  // A fragment's exchange in flight: the summed change (the fragment's values), the step that merges it, and
  // the Work (null once complete, or when restored from a checkpoint).
  struct PendingSync {
    int fragment;
    int64_t merge_step;
    std::vector<float> delta;
    WorkPtr work;
    float scale = 0;  // what the merge multiplies the summed change by (1/DP ranks, or the token weights')
  };
  std::deque<PendingSync> pending_;
  // The exchange of the outer change across centres (dp_opts_). Declared after pending_, so it is destroyed
  // first: its calls still in flight (a job unwinding from an error) write into pending_'s buffers, and with
  // --outer-overlap its thread runs their stages until it is stopped.
  std::unique_ptr<DpAlgorithm> outer_algo_;
  // The master parameters [b, e) as host values the outer step may change: the buffer itself on the CPU, a
  // copy in staged_ from a GPU (collective for a bf16 model under ZeRO-1: see diloco.cpp). unstage_params
  // writes them back (a no-op copy on the CPU) and refreshes a bf16 model's working copy.
  float* stage_params(int64_t b, int64_t e, int64_t t);  // t: the inner step the outer work follows
  void unstage_params(int64_t b, int64_t e, const float* host);
  std::vector<float> staged_;
  std::array<int64_t, 3> staged_at_{-1, 0, 0};  // what staged_ holds: after step t, the buffer's [b, e)
  void outer_launch(int f, int64_t t);
  double outer_merge(PendingSync& ps);  // returns the ms it waited
  void outer_poll() {
    for (PendingSync& ps : pending_)
      if (ps.work) ps.work->test();
  }
  // The algorithm whose traffic crosses centres (and keeps the error-feedback residuals).
  DpAlgorithm& wan_algo() { return outer_algo_ ? *outer_algo_ : *dp_algo_; }
  void outer_steps(int64_t t, StepRecord& r);
  void cut_fragments();           // fragments_ from --outer-fragments, at tensor boundaries
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
  int gpu_index_ = 0;  // the GPU this rank selected (choose_device)
  // This rank's share of the parameters (its ZeRO-1 slice or the whole buffer) as chunks for the multi-tensor
  // AdamW and norm, on the model's device; offsets relative to slice_begin().
  DeviceBuffer<ops::TensorChunk> chunks_;
  std::unique_ptr<SafeTensorsReader> weights_;  // --init-from / --resume file, opened in setup()
  OptimizerState opt_;
  DeviceBuffer<float> grad_slice_;         // ZeRO-1: this rank's reduced gradient slice
  std::vector<int32_t> inputs_, targets_;  // a step's K micro-batches, (K·B, T)
  // Micro-batches per DP rank (work split by speed; all equal to --grad-accum unless --balance), this rank's K
  // and their total M over the DP ranks. The step's global batch is M·B sequences.
  std::vector<int> micro_;
  int K_ = 1;
  int64_t M_ = 1;
  double micro_ms_ = 0;     // --balance auto: this rank's time per micro-batch (synchronous) or per inner step
                            // (DiLoCo), summed over the timed steps
  bool balanced_ = false;   // --balance auto: the split was measured (or restored from a checkpoint)
  int64_t start_step_ = 0;  // the first step this run executes
  void apply_split(std::vector<int> micro);  // sets micro_, K_, M_ and this rank's data window
  std::vector<int> initial_split() const;    // --grad-accum everywhere, or the fixed per-centre --balance list
  void balance_now();                        // --balance auto: times → split. Collective.
  // Each centre's measured time per micro-batch over the timed steps (AQ_BALANCE_TEST_MS replaces it in tests).
  // One all-reduce over the world.
  std::vector<double> centre_ms_per_micro();
  // --balance with the numbers of a fixed list, one per centre, each in [lo, hi]; `what` says what they count.
  std::vector<int> balance_list(const char* what, int lo, int hi, const char* example) const;
  // DiLoCo with time-based inner phases (--outer diloco --balance auto|A0,A1,…): each centre trains
  // inner_per_window_[c] of every H steps (inner_step_active) and idles through the rest while the others
  // train; the outer average weighs each centre by the inner steps it trained since the fragment's last sync
  // (window_active_, centre-major × fragment). Empty: every centre trains every step.
  bool paced() const { return diloco() && cfg_.balance != "off"; }
  bool inner_active(int c, int64_t s) const {
    return inner_per_window_.empty() ||
           inner_step_active(inner_per_window_[static_cast<size_t>(c)], cfg_.outer_steps, s);
  }
  void pace_now();  // --balance auto under DiLoCo: times → inner steps per window. Collective.
  std::vector<int> inner_per_window_;
  std::vector<int64_t> window_active_;
  int64_t updates_ = 0;  // AdamW updates of this rank's replica: opt_.step, less the steps its centre idled
  // The loss of the last step this rank trained (an idle step reports it; NaN, written null, before the first).
  double last_loss_ = std::numeric_limits<double>::quiet_NaN();
  // --balance auto: the first timed step (0-based; a warm-up step comes before it). From the run's start, so a
  // run split by a save switches at the same step; a resume that could not restore the measurement times the
  // steps after its own first step instead.
  int64_t first_timed_ = 1;
  bool timed_for_balance(int64_t s) const {  // step s is one of --balance auto's timed steps
    return cfg_.balance == "auto" && s >= first_timed_ && s < first_timed_ + cfg_.balance_steps;
  }
  // The step's forward/backward, gradient reduction, clipping and AdamW (not for an idle step of a paced
  // centre). Collective over the step's groups.
  StepRecord inner_step(int64_t s, Timer& t);
  bool last_micro_ = true;  // the micro-batch running is the step's last
  std::ofstream log_file_;
  // Rank 0 with --save: the directory's lock for the whole run, and the id this run's checkpoints carry ("run_id",
  // kept across resumes) so a later fresh run can tell them from its own. guard_save_path() sets both.
  std::unique_ptr<PathLock> save_lock_;
  std::string run_id_;
  bool made_save_dir_ = false;
  void guard_save_path();
  typename ops::MultiAdamW<T>::Update* adamw_ = nullptr;
  ops::MultiAdamW<float>::SumSquares* sum_squares_ = nullptr;
};

// Resolves --device and --dtype (which decide the model's element type), then makes the job. (job.cpp)
std::unique_ptr<JobApi> make_job(const TrainConfig& cfg, ParallelContext& ctx);

}  // namespace aq
