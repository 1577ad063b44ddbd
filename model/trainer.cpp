// trainer.cpp — the training loop.
#include "model/trainer.h"

#include <omp.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "ops/cpu/blas.h"
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
  const int n = threads > 0 ? threads : std::max(1, omp_get_num_procs() / std::max(1, local_ranks));
  omp_set_num_threads(n);
  cpu::set_blas_threads(n);
  return n;
}

void TrainConfig::validate() const {
  AQ_CHECK(batch >= 1, "--batch must be >= 1 (got ", batch, ")");
  AQ_CHECK(seq >= 1, "--seq must be >= 1 (got ", seq, ")");
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
  AQ_CHECK(bucket_mb > 0, "--bucket-mb must be > 0 (got ", bucket_mb, ")");
  AQ_CHECK(zero == 0 || zero == 1, "--zero must be 0 or 1 (got ", zero, ")");
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
    if (log_file_.is_open()) log_file_ << dump_json(j) << "\n" << std::flush;
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
    log_info("data: ", train_data_->num_shards(), " shard(s), ", train_data_->total_tokens(), " tokens | batch ",
             cfg_.batch, " x ", cfg_.seq, " per rank, ", static_cast<int64_t>(cfg_.batch) * cfg_.seq * ctx_.dp(),
             " tokens/step over dp=", ctx_.dp(), buckets_ ? str(" | ", buckets_->num_buckets(), " gradient buckets") : "");
  }

 private:
  // This rank's share of the optimizer work: the whole buffer, or its ZeRO-1 slice.
  int64_t slice_begin() const { return cfg_.zero ? ctx_.dp_rank() * slice_len() : 0; }
  int64_t slice_len() const { return cfg_.zero ? model_->buffer_size() / ctx_.dp() : model_->buffer_size(); }
  double global_grad_norm(const float* grads);  // grads indexed from slice_begin()
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
  std::unique_ptr<GradBuckets> buckets_;
  Device device_;
  int gpus_on_node_ = 0;
  // This rank's share of the parameters (its ZeRO-1 slice or the whole buffer) as chunks for the multi-tensor
  // AdamW and norm, on the model's device; offsets relative to slice_begin().
  DeviceBuffer<ops::TensorChunk> chunks_;
  std::unique_ptr<SafeTensorsReader> weights_;  // --init-from / --resume file, opened in setup()
  OptimizerState opt_;
  DeviceBuffer<float> grad_slice_;  // ZeRO-1: this rank's reduced gradient slice
  std::vector<int32_t> inputs_, targets_;
  std::ofstream log_file_;
  typename ops::MultiAdamW<T>::Update* adamw_ = nullptr;
  ops::MultiAdamW<float>::SumSquares* sum_squares_ = nullptr;
};

template <typename T>
void Job<T>::setup() {
  // ZeRO-1 over a single data-parallel rank has nothing to shard: run without it (one rule, here, instead of
  // a dp == 1 case at every use).
  if (ctx_.dp() == 1) cfg_.zero = 0;
  std::unique_ptr<SafeTensorsReader>& weights = weights_;  // kept open for build()
  mc_ = model_config(cfg_, weights);
  AQ_CHECK(cfg_.seq <= mc_.max_seq, "--seq ", cfg_.seq, " exceeds the model's context n_positions=", mc_.max_seq,
           "; lower --seq", weights ? "" : str(" or raise --max-seq to at least ", cfg_.seq));
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
  train_data_ = std::make_unique<DataLoader>(cfg_.data, cfg_.batch, cfg_.seq, mc_.vocab_size, ctx_.dp_rank(), ctx_.dp(),
                                             "--data");
  if (!cfg_.val_data.empty())
    val_data_ = std::make_unique<DataLoader>(cfg_.val_data, cfg_.batch, cfg_.seq, mc_.vocab_size, ctx_.dp_rank(),
                                             ctx_.dp(), "--val-data");

  gpus_on_node_ = 0;
#ifdef AQ_HAVE_CUDA
  if (device_ == Device::CUDA) gpus_on_node_ = cuda::device_count();
#endif
}

template <typename T>
void Job<T>::build() {
  ctx_.enable_device_groups(device_, gpus_on_node_);  // first: collective, and nothing before it can fail
  std::unique_ptr<SafeTensorsReader> weights = std::move(weights_);
  if (device_ != Device::CPU && ctx_.world_size() > 1) log_info("device collectives: ", ctx_.device_dp_group().describe());
  TensorParallel tp{ctx_.tp(), ctx_.tp_rank(), &ctx_.device_tp_group(), &ctx_.tp_group()};
  model_ = std::make_unique<GPT2<T>>(mc_, cfg_.batch, cfg_.seq, tp, cfg_.zero ? 16 * ctx_.dp() : 1, device_);
  opt_.m = DeviceBuffer<float>(device_, static_cast<size_t>(slice_len()));
  opt_.v = DeviceBuffer<float>(device_, static_cast<size_t>(slice_len()));
  if (cfg_.zero) grad_slice_ = DeviceBuffer<float>(device_, static_cast<size_t>(slice_len()));
  if (weights)
    model_->load(*weights);
  else
    model_->init_random(rng_.next_u64());
  if (!cfg_.resume.empty()) load_state(*weights);

  if (ctx_.dp() > 1 && !cfg_.zero) {
    std::vector<int64_t> boundaries;
    for (const ParamInfo& p : model_->params_info()) boundaries.push_back(p.offset);
    buckets_ = std::make_unique<GradBuckets>(ctx_.device_dp_group(), model_->grads(), model_->buffer_size(),
                                             boundaries, cfg_.bucket_mb);
    model_->set_grad_ready_hook([this](int64_t offset) { buckets_->on_ready(offset); });
  }
  inputs_.resize(static_cast<size_t>(cfg_.batch) * cfg_.seq);
  targets_.resize(inputs_.size());
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
  ctx_.dp_group().all_gather(mine.data(), full.data(), slice_len(), DType::F32, {what})->wait();
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
  train_data_->set_position(LoaderPosition{meta_int64(state, "data_shard"), meta_int64(state, "data_position")});
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
  std::vector<NamedTensor> params = model_->gather_full("", master.empty() ? nullptr : master.data());
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
                                {"seed", cfg_.seed},                {"data", cfg_.data},
                                {"tp", ctx_.tp()},                  {"dp", ctx_.dp()},
                                {"zero", cfg_.zero}};
      std::map<std::string, std::string> meta = model_->config().to_metadata();
      meta["checkpoint_id"] = id;
      meta["step"] = std::to_string(opt_.step);
      std::map<std::string, std::string> state_meta = meta;
      const LoaderPosition pos = train_data_->position();
      state_meta["data_shard"] = std::to_string(pos.shard);
      state_meta["data_position"] = std::to_string(pos.position);
      state_meta["rng_state"] = dump_json(nlohmann::json(std::vector<uint64_t>(rs.begin(), rs.end())));
      state_meta["train_options"] = dump_json(options);
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
double Job<T>::global_grad_norm(const float* grads) {
  // TP-sharded tensors are summed across TP ranks; replicated ones have equal gradients on every TP rank and
  // are counted once. Under ZeRO-1 each DP rank holds a slice, so the slices are summed across DP first.
  double sq[2] = {0, 0};  // [sharded, replicated]: the chunks' norm classes
  ProfileScope prof("grad norm");
  sum_squares_(sq, grads, chunks_.data(), static_cast<int64_t>(chunks_.size()));
  if (cfg_.zero) ctx_.dp_group().all_reduce(sq, 2, DType::F64, {"grad norm (ZeRO slices)"})->wait();
  if (ctx_.tp() > 1) ctx_.tp_group().all_reduce(sq, 1, DType::F64, {"grad norm (TP shards)"})->wait();
  return std::sqrt(sq[0] + sq[1]);
}

// Fault injection for the failure tests: AQ_FAULT_INJECT="stall:RANK:STEP" makes that rank stop responding
// (sleep) at that 1-based step, "die:RANK:STEP" kills it with SIGKILL, "error:RANK:STEP" raises an error on
// that rank alone. Unset in normal runs.
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
  double loss = model_->forward_backward(inputs_.data(), targets_.data(), cfg_.batch, cfg_.seq);
  double comm = 0, exposed = 0;
  float* grads = model_->grads();
  if (buckets_) {
    buckets_->finish();  // data-parallel sum of the gradients (the mean is folded in below)
    comm += buckets_->comm_ms();
    exposed += buckets_->exposed_ms();
  } else if (cfg_.zero) {
    Timer c;
    ctx_.device_dp_group()
        .reduce_scatter(grads, grad_slice_.data(), slice_len(), DType::F32, {"ZeRO-1 gradient reduce-scatter"})
        ->wait();
    const double ms = c.ms();
    comm += ms;
    exposed += ms;
  }
  const float* my_grads = cfg_.zero ? grad_slice_.data() : grads;
  if (ctx_.dp() > 1) ctx_.dp_group().all_reduce(&loss, 1, DType::F64, {"loss"})->wait();
  loss /= ctx_.dp();
  if (!std::isfinite(loss))  // the loss is all-reduced, so every rank stops here together
    throw AgreedError(str("loss is ", loss, " at step ", s + 1, ": training stopped (no checkpoint written for this ",
                          "step); lower --lr or keep --grad-clip on"));
  // The reductions above sum over the DP ranks; the mean is taken here, once, instead of in another pass over
  // the gradients: the norm is divided by dp and the division is folded into AdamW's gradient scale.
  const double dp_scale = 1.0 / ctx_.dp();
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
    throw AgreedError(str("gradient norm is ", norm, " at step ", s + 1, "; first non-finite gradient on rank ",
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
    ctx_.device_dp_group()
        .all_gather(params + lo, params, slice_len(), dtype_of<T>(), {"ZeRO-1 parameter all-gather"})
        ->wait();
    const double ms = c.ms();
    comm += ms;
    exposed += ms;
  }
  device_synchronize(device_);  // the step's time includes the queued optimizer kernels
  const double tp_ms = model_->take_tp_comm_ms();
  StepRecord r{s + 1, loss, hp.lr, norm, t.ms(), 0.0, comm + tp_ms, exposed + tp_ms};
  r.tokens_per_s = static_cast<double>(cfg_.batch) * cfg_.seq * ctx_.dp() / (r.ms / 1000.0);
  return r;
}

template <typename T>
double Job<T>::evaluate() {
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


// The steps, evaluations and saves of one job.
void run_loop(JobApi& job, const TrainConfig& cfg, ParallelContext& ctx, TrainResult& result) {
  const bool parallel = ctx.world_size() > 1;
  auto log_json = [&](const nlohmann::ordered_json& j) { job.log_json(j); };
  Timer run_timer;
  const int64_t first = job.start_step();
  size_t allocs_after_first = 0;
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
    log_json(j);

    const bool last = s + 1 == cfg.steps;
    if (!cfg.val_data.empty() && ((cfg.eval_every > 0 && (s + 1) % cfg.eval_every == 0) || last)) {
      const double val = job.evaluate();
      log_info("step ", s + 1, " | val loss ", val);
      log_json({{"step", s + 1}, {"split", "val"}, {"loss", val}});
      result.val_losses.emplace_back(s + 1, val);
    }
    if (cfg.save_every > 0 && (s + 1) % cfg.save_every == 0 && !last) {
      job.save(cfg.save);
      log_info("saved ", cfg.save, " (step ", s + 1, ")");
    }
  }
  if (cfg.steps > first) result.step_loop_device_mallocs = device_driver_allocations(job.device()) - allocs_after_first;
  if (!cfg.save.empty()) {
    job.save(cfg.save);
    log_info("saved ", cfg.save, " and ", state_path_for(cfg.save), " (step ", job.start_step(), ")");
  }
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
  try {
    run_loop(job, cfg, ctx, result);
    job.describe(result);
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
