// job.cpp — one training job on one rank: set-up (flags, files, memory), building the model, optimizer state
// and gradient buckets, the step (forward/backward over the micro-batches → gradient reduction → norm and
// clipping → AdamW [→ ZeRO-1 all-gather] [→ DiLoCo outer syncs]) and evaluation.
#include "train/job.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <numeric>
#include <thread>

#include "parallel/trace_session.h"
#include "runtime/bf16.h"
#include "runtime/file_io.h"
#include "runtime/op_profile.h"
#include "runtime/sysinfo.h"
#include "train/stop.h"
#ifdef AQ_HAVE_CUDA
#include "runtime/cuda/device.h"
#endif

namespace aq {

template <typename T>
void Job<T>::setup() {
  // ZeRO-1 over a single data-parallel rank has nothing to shard: run without it (one rule, here, instead of
  // a dp == 1 case at every use).
  if (idp() == 1 && cfg_.zero) {
    log_info("--zero 1: one data-parallel rank has no optimizer state to share; running without ZeRO-1");
    cfg_.zero = 0;
  }
  dp_opts_ = resolve_dp_algorithm(cfg_, ctx_.topology());
  std::unique_ptr<SafeTensorsReader>& weights = weights_;  // kept open for build()
  mc_ = model_config(cfg_, weights);
  AQ_CHECK(cfg_.seq <= mc_.max_seq, "--seq ", cfg_.seq, " exceeds the model's context n_positions=", mc_.max_seq,
           "; lower --seq", weights ? "" : str(" or raise --max-seq to at least ", cfg_.seq));
  // Memory, before anything large is allocated: the ranks of a node share its memory.
  mem_ = estimate_memory(mc_, cfg_.batch, cfg_.seq, ctx_.tp(), cfg_.zero ? 1.0 / idp() : 1.0, std::is_same_v<T, bf16>,
                         diloco());
  mem_avail_ = available_host_bytes() / std::max(1, ctx_.local_size());
  AQ_CHECK(
      device_ != Device::CPU || mem_avail_ <= 0 || mem_.total() <= mem_avail_ || std::getenv("AQ_SKIP_MEMORY_CHECK"),
      "the job needs about ", gib(mem_.total()), " per rank (parameters ", gib(mem_.params), ", gradients ",
      gib(mem_.grads), ", optimizer ", gib(mem_.optimizer + mem_.outer), ", activations ", gib(mem_.activations),
      ") but this node offers ", gib(mem_avail_), " to each of its ", ctx_.local_size(), " rank(s); lower ",
      "--batch, --seq, --layers or --dim, shard with --zero 1 or --tp, or use more nodes (AQ_SKIP_MEMORY_CHECK=1 ",
      "skips this check)");
  // Only rank 0 writes checkpoints and the log; its failures reach every rank through agree_on_failure.
  if (ctx_.world_rank() == 0) {
    if (!cfg_.save.empty()) guard_save_path();
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
               std::max<int64_t>(1, static_cast<int64_t>(val_data_->total_tokens()) /
                                        (static_cast<int64_t>(ctx_.dp()) * cfg_.batch * cfg_.seq)));
  }

  gpus_on_node_ = 0;
#ifdef AQ_HAVE_CUDA
  if (device_ == Device::CUDA) {
    gpus_on_node_ = cuda::device_count();
    gpu_index_ = cuda::current_device();
  }
#endif
}

template <typename T>
void Job<T>::check_build() {
  if (!diloco() || ctx_.dp() == 1) return;
  // A guard on build(): the outer exchange sums the centres' flat buffers element by element, so their lengths
  // must agree (the same TP shard on every DP rank; the max of n and of −n gives the range).
  const int64_t len = model_->buffer_size();
  double n[2] = {static_cast<double>(len), -static_cast<double>(len)};
  ctx_.dp_group().all_reduce(n, 2, DType::F64, {"DiLoCo buffer lengths", ReduceOp::Max})->wait();
  AQ_CHECK(n[0] == -n[1], "--outer diloco: the ranks' flat parameter buffers differ in length (",
           static_cast<int64_t>(-n[1]), " to ", static_cast<int64_t>(n[0]), " floats for TP shard ", ctx_.tp_rank(),
           "), so the centres' changes cannot be averaged; this is a bug in the layout (padding, vocabulary rows): ",
           "please report it with the job's flags");
}

template <typename T>
void Job<T>::build() {
  ctx_.enable_device_groups(device_, gpus_on_node_, !diloco());  // first: collective, and nothing before it can fail
  DpGroups outer_groups;
  if (diloco()) outer_groups = ctx_.outer_dp_groups();  // collective too
  std::unique_ptr<SafeTensorsReader> weights = std::move(weights_);
  if (device_ != Device::CPU && ctx_.world_size() > 1)
    log_info("device collectives: ", diloco() ? str(ctx_.intra_dp_groups().dp->describe(), " (inside each centre)")
                                              : ctx_.device_dp_group().describe());
  TensorParallel tp{ctx_.tp(), ctx_.tp_rank(), &ctx_.device_tp_group(), &ctx_.tp_group()};
  // ZeRO-1 pads the buffer to split it evenly over the optimizer's DP group. With DiLoCo every centre pads to
  // the same length (a multiple of every centre's DP size, ZeRO-1 or not: a centre of one rank runs without
  // it), since the outer exchange spans centres.
  int pad = cfg_.zero ? 16 * idp() : 1;
  if (diloco())
    for (int g : ctx_.topology().centre_dp) pad = std::lcm(pad, 16 * g);
  // DiLoCo sums flat buffers across centres, so a CPU centre beside a GPU one lays its token table out as the
  // GPU does (the padding rows are zero and stay so).
  const int vocab_multiple = ctx_.mixed_devices() ? Transformer<T>::kGpuVocabRows : 0;
  model_ = std::make_unique<Transformer<T>>(mc_, cfg_.batch, cfg_.seq, tp, pad, device_, vocab_multiple);
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
    // Its buffers (Δ, θ_global) are host memory whatever the model's device: the outer state stays on the host.
    DpAlgoOptions outer = dp_opts_;
    outer.device = Device::CPU;
    outer_algo_ = make_dp_algorithm(outer, outer_groups);
    // Behind τ inner steps an exchange advances only while something tests it; the training thread tests once
    // or twice a step, so a thread of its own carries it (its communicators are the ones made just for it).
    if (cfg_.outer_overlap > 0 && ctx_.topology().centres() > 1) {
      if (ctx_.threads_multiple())
        outer_algo_ = progress_in_background(std::move(outer_algo_));
      else if (ctx_.world_rank() == 0)
        log_info("note: this MPI does not allow MPI calls from two threads (MPI_THREAD_MULTIPLE), so the outer "
                 "exchange advances only when the training thread tests it, once or twice a step; --outer-overlap "
                 "hides less of it");
    }
  } else {
    dp_algo_ = make_dp_algorithm(dp_opts_, ctx_.dp_groups());
  }
  if (weights)
    model_->load(*weights);
  else
    model_->init_random(rng_.next_u64());
  if (diloco()) {
    // Every centre starts from the same θ_global: init_random draws on the host from --seed whatever the
    // device (and the buffers line up, see vocab_multiple above), and a loaded file is the same file.
    theta_global_.resize(static_cast<size_t>(model_->buffer_size()));
    device_copy(theta_global_.data(), Device::CPU, model_->params(), device_, theta_global_.size() * sizeof(float));
    outer_mom_.assign(theta_global_.size(), 0.0f);
    cut_fragments();
    if (paced()) {
      window_active_.assign(static_cast<size_t>(ctx_.topology().centres()) * fragments_.size(), 0);
      if (cfg_.balance != "auto")
        inner_per_window_ = balance_list(str("inner steps per window of --outer-steps ", cfg_.outer_steps).c_str(), 1,
                                         static_cast<int>(std::min<int64_t>(cfg_.outer_steps, 1 << 30)),
                                         str(cfg_.outer_steps, ",", (cfg_.outer_steps + 1) / 2).c_str());
    }
  }
  if (!cfg_.resume.empty()) load_state(*weights);
  start_step_ = opt_.step;
  // A resume past the first timed step without the measured split (or pace) measures again from its own start:
  // the times of the steps before the save were not kept.
  if (cfg_.balance == "auto" && !balanced_ && start_step_ > first_timed_) first_timed_ = start_step_ + 1;

  if (idp() > 1 && !cfg_.zero) {
    std::vector<int64_t> boundaries;
    for (const ParamInfo& p : model_->params_info()) boundaries.push_back(p.offset);
    buckets_ =
        std::make_unique<GradBuckets>(*dp_algo_, model_->grads(), model_->buffer_size(), boundaries, cfg_.bucket_mb);
    // Buckets start during the last micro-batch's backward only: before it, the gradients are not final.
    model_->set_grad_ready_hook([this](int64_t offset) {
      if (last_micro_) buckets_->on_ready(offset);
    });
  }
  // The work split: --grad-accum micro-batches on every rank, or the fixed per-centre split of --balance K0,K1,…
  // (a resumed run keeps its saved split; see load_state).
  if (micro_.empty()) apply_split(initial_split());
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
double Job<T>::global_grad_norm(const float* grads) {
  // TP-sharded tensors are summed across TP ranks; replicated ones have equal gradients on every TP rank and
  // are counted once. Under ZeRO-1 each DP rank holds a slice, so the slices are summed across DP first.
  double sq[2] = {0, 0};  // [sharded, replicated]: the chunks' norm classes
  ProfileScope prof("grad norm");
  trace::Span trace_span(trace::Stream::Compute, "grad norm");
  sum_squares_(sq, grads, chunks_.data(), static_cast<int64_t>(chunks_.size()));
  if (cfg_.zero) idp_group().all_reduce(sq, 2, DType::F64, {"grad norm (ZeRO slices)"})->wait();
  if (ctx_.tp() > 1) ctx_.tp_group().all_reduce(sq, 1, DType::F64, {"grad norm (TP shards)"})->wait();
  return std::sqrt(sq[0] + sq[1]);
}

template <typename T>
StepRecord Job<T>::step(int64_t s) {
  maybe_inject_fault(ctx_.world_rank(), s + 1);
  trace::StepSpan trace_step(s + 1);  // --trace: opens and closes the recorded window of steps
  profile_begin_step();
  Timer t;
  // Every rank reads its window of the global batch, an idle one too (its tokens go unused), so every rank's
  // data position stays that of the step.
  {
    trace::Span trace_span(trace::Stream::Compute, "data loading");
    train_data_->next(inputs_.data(), targets_.data());
  }
  StepRecord r;
  if (inner_active(ctx_.centre(), s)) {
    r = inner_step(s, t);
    last_loss_ = r.loss;
  } else {
    r.step = s + 1;
    r.loss = last_loss_;
    r.lr = cfg_.schedule.at(s);
    r.grad_norm = 0;
    r.idle = true;
  }
  ++opt_.step;
  // The DP ranks that trained in this step (all of them, unless DiLoCo paces the centres), and each paced
  // centre's count of trained steps towards every fragment's next sync.
  const Topology& topo = ctx_.topology();
  int64_t ranks_trained = 0;
  for (int c = 0; c < topo.centres(); ++c) {
    if (!inner_active(c, s)) continue;
    ranks_trained += topo.centre_dp[static_cast<size_t>(c)];
    const size_t F = fragments_.size();
    if (paced())
      for (size_t f = 0; f < F; ++f) ++window_active_[static_cast<size_t>(c) * F + f];
  }
  if (diloco()) {
    outer_steps(opt_.step, r);
    dp_algo_->take_wan_stats();  // inside the centre: nothing crossed
  }
  r.ms = t.ms();
  // DiLoCo paces whole inner steps, so it times them whole (data, forward, backward, the centre's all-reduce, the
  // optimizer): a slower centre's cgroup quota or a slower optimizer can land anywhere in the step.
  if (diloco() && timed_for_balance(s)) micro_ms_ += r.ms;
  const WanStats wan = wan_algo().take_wan_stats();
  r.wan_bytes = wan.bytes;
  r.wan_ms = wan.ms;
  const int64_t micro_batches = diloco() ? ranks_trained * K_ : M_;
  // An idle step's own time says nothing about the others' tokens: it reports none.
  r.tokens_per_s =
      r.idle ? 0.0 : static_cast<double>(cfg_.batch) * static_cast<double>(micro_batches) * cfg_.seq / (r.ms / 1000.0);
  // Restored error-feedback residuals have all been claimed once every position was quantised: one step, or
  // with DiLoCo one window of H steps.
  if (s + 1 == start_step_ + (diloco() ? cfg_.outer_steps + cfg_.outer_overlap : 1))
    wan_algo().drop_unclaimed_residuals();
  // --balance auto: the split (or pace) from the timed steps, once (see first_timed_).
  if (cfg_.balance == "auto" && s + 1 == first_timed_ + cfg_.balance_steps && !balanced_) {
    if (diloco())
      pace_now();
    else
      balance_now();
    balanced_ = true;
  }
  return r;
}

template <typename T>
StepRecord Job<T>::inner_step(int64_t s, Timer& t) {
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
    loss +=
        model_->forward_backward(inputs_.data() + k * micro, targets_.data() + k * micro, cfg_.batch, cfg_.seq, k > 0);
  }
  // --balance auto: the timed steps (see step()).
  if (!diloco() && timed_for_balance(s)) micro_ms_ += compute.ms() / K;
  if (diloco()) outer_poll();  // exchanges running behind the inner steps make progress
  double comm = 0, exposed = 0;
  float* grads = model_->grads();
  if (buckets_) {
    buckets_->finish();  // data-parallel sum of the gradients (the mean is folded in below)
    comm += buckets_->comm_ms();
    exposed += buckets_->exposed_ms();
  } else if (cfg_.zero) {
    trace::Span trace_span(trace::Stream::DataParallel, "ZeRO-1 gradient reduce-scatter");
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
    raise(str("gradient norm is ", norm, " at step ", s + 1, "; first non-finite gradient on rank ", ctx_.world_rank(),
              ": ", where, "; lower --lr"));
  }
  // torch.nn.utils.clip_grad_norm_: scale by clip/(norm + 1e-6) when that is below 1.
  ops::AdamWParams hp;
  hp.grad_scale = (cfg_.grad_clip > 0 ? std::min(1.0, cfg_.grad_clip / (norm + 1e-6)) : 1.0) * dp_scale;
  hp.lr = cfg_.schedule.at(s);
  hp.beta1 = cfg_.beta1;
  hp.beta2 = cfg_.beta2;
  hp.eps = cfg_.eps;
  hp.step = ++updates_;                 // AdamW's bias correction counts this replica's updates
  hp.weight_decay = cfg_.weight_decay;  // for the chunks of tensors that decay (2-D and up)
  // One launch for every tensor of this rank's slice; a bf16 model's working copy is written in the same pass.
  const int64_t lo = slice_begin();
  T* copy = std::is_same_v<T, float> ? nullptr : model_->working_params() + lo;
  {
    ProfileScope prof("adamw");
    trace::Span trace_span(trace::Stream::Compute, "optimizer step");
    adamw_(model_->params() + lo, copy, my_grads, opt_.m.data(), opt_.v.data(), chunks_.data(),
           static_cast<int64_t>(chunks_.size()), hp);
  }
  if (cfg_.zero) {
    // Every rank needs the updated weights the kernels read: fp32 parameters, or the bf16 working copy (half
    // the bytes; the fp32 master slices stay with their owners until a checkpoint gathers them).
    trace::Span trace_span(trace::Stream::DataParallel, "ZeRO-1 parameter all-gather");
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
  r.micro_batches = K;
  return r;
}

namespace {

// A host float as the model's element type T (bf16: round to nearest even, as the GPU's cast does).
template <typename T>
T to_working(float x) {
  if constexpr (std::is_same_v<T, bf16>)
    return float_to_bf16(x);
  else
    return x;
}

}  // namespace

template <typename T>
double Job<T>::evaluate() {
  // DiLoCo: the model a run delivers is θ_global (the checkpoint's model file), so that is what is evaluated;
  // the replica comes back afterwards. Only the working parameters the kernels read are swapped (a bf16 model's
  // master weights stay as they are: under ZeRO-1 parts of them are refreshed only at the outer syncs).
  trace::Span trace_span(trace::Stream::Compute, "evaluation");
  const size_t n = static_cast<size_t>(model_->buffer_size());
  std::vector<T> replica;
  if (diloco()) {
    replica.resize(n);
    device_copy(replica.data(), Device::CPU, model_->working_params(), device_, n * sizeof(T));
    std::vector<T> global(n);
    for (size_t i = 0; i < n; ++i) global[i] = to_working<T>(theta_global_[i]);
    device_copy(model_->working_params(), device_, global.data(), Device::CPU, n * sizeof(T));
  }
  // The replica comes back on every path (a failed copy throws: no destructor that could throw).
  const auto restore = [&] {
    if (!replica.empty()) device_copy(model_->working_params(), device_, replica.data(), Device::CPU, n * sizeof(T));
  };
  double sum = 0;
  try {
    val_data_->reset();
    for (int64_t i = 0; i < cfg_.eval_batches; ++i) {
      val_data_->next(inputs_.data(), targets_.data());
      sum += model_->evaluate(inputs_.data(), targets_.data(), cfg_.batch, cfg_.seq);
    }
  } catch (...) {
    restore();
    throw;
  }
  restore();
  double val = sum / static_cast<double>(cfg_.eval_batches);
  if (ctx_.dp() > 1) ctx_.dp_group().all_reduce(&val, 1, DType::F64, {"validation loss"})->wait();
  return val / ctx_.dp();
}

std::unique_ptr<JobApi> make_job(const TrainConfig& cfg, ParallelContext& ctx) {
  const Device device = choose_device(centre_devices(cfg, ctx.topology()), ctx);
  if (use_bf16(cfg.dtype, device)) return std::make_unique<Job<bf16>>(cfg, ctx, device);
  return std::make_unique<Job<float>>(cfg, ctx, device);
}

template class Job<float>;
template class Job<bf16>;

}  // namespace aq
