// trainer.cpp — the training loop.
#include "model/trainer.h"

#include <omp.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "ops/cpu/blas.h"
#include "runtime/data.h"
#include "runtime/log.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"

namespace aq {

std::string state_path_for(const std::string& model_path) { return model_path + ".state"; }

int configure_threads(int threads) {
  const int n = threads > 0 ? threads : omp_get_num_procs();
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

std::string new_checkpoint_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

struct OptimizerState {
  std::vector<float> m, v;
  int64_t step = 0;  // completed optimizer steps
};

void save_checkpoint(const std::string& path, GPT2<float>& model, const OptimizerState& opt,
                     const LoaderPosition& data_pos, const Rng& rng, const TrainConfig& cfg) {
  const std::string id = new_checkpoint_id();
  // State first, then the model: if we die in between, the model file's id no longer matches the new state
  // and --resume refuses the pair instead of silently mixing two steps.
  std::vector<NamedTensor> moments;
  for (const ParamInfo& p : model.params_info()) {
    moments.push_back({"exp_avg." + p.name, Tensor(const_cast<float*>(opt.m.data()) + p.offset, DType::F32, p.shape)});
    moments.push_back({"exp_avg_sq." + p.name, Tensor(const_cast<float*>(opt.v.data()) + p.offset, DType::F32, p.shape)});
  }
  const auto rs = rng.state();
  nlohmann::json options = {{"lr", cfg.schedule.lr},         {"lr_schedule", cfg.schedule.kind},
                            {"warmup", cfg.schedule.warmup}, {"min_lr", cfg.schedule.min_lr},
                            {"weight_decay", cfg.weight_decay}, {"beta1", cfg.beta1},
                            {"beta2", cfg.beta2},           {"eps", cfg.eps},
                            {"grad_clip", cfg.grad_clip},   {"batch", cfg.batch},
                            {"seq", cfg.seq},               {"steps", cfg.steps},
                            {"seed", cfg.seed},             {"data", cfg.data}};
  std::map<std::string, std::string> meta = model.config().to_metadata();
  meta["checkpoint_id"] = id;
  meta["step"] = std::to_string(opt.step);
  std::map<std::string, std::string> state_meta = meta;
  state_meta["data_shard"] = std::to_string(data_pos.shard);
  state_meta["data_position"] = std::to_string(data_pos.position);
  state_meta["rng_state"] = nlohmann::json(std::vector<uint64_t>(rs.begin(), rs.end())).dump();
  state_meta["train_options"] = options.dump();
  write_safetensors(state_path_for(path), moments, state_meta);
  write_safetensors(path, model.named_params(), meta);
}

int64_t meta_int64(const SafeTensorsReader& f, const char* key) {
  const std::optional<int64_t> v = f.metadata_int(key);
  AQ_CHECK(v.has_value(), f.path(), " has no \"", key, "\" in its metadata: not a checkpoint written by ",
           "aq-train --save (use --init-from to start a new run from plain weights)");
  return *v;
}

// Loads the training state saved beside `model_path`; returns the data position.
LoaderPosition load_state(const std::string& model_path, const SafeTensorsReader& weights, GPT2<float>& model,
                          OptimizerState& opt, Rng& rng) {
  const std::string sp = state_path_for(model_path);
  AQ_CHECK(file_exists(sp), "--resume ", model_path, " needs its training state ", sp,
           " (written by --save beside the model); to start a new run from these weights use --init-from");
  SafeTensorsReader state(sp);
  const std::string id_model = weights.metadata().count("checkpoint_id") ? weights.metadata().at("checkpoint_id") : "";
  const std::string id_state = state.metadata().count("checkpoint_id") ? state.metadata().at("checkpoint_id") : "";
  AQ_CHECK(!id_state.empty() && id_model == id_state, model_path, " and ", sp, " belong to different saves (model at step ",
           weights.metadata().count("step") ? weights.metadata().at("step") : "?", ", state at step ",
           state.metadata().count("step") ? state.metadata().at("step") : "?",
           "): the save was interrupted between the two files; resume from an earlier checkpoint");
  for (const ParamInfo& p : model.params_info()) {
    state.read<float>("exp_avg." + p.name, p.shape, opt.m.data() + p.offset);
    state.read<float>("exp_avg_sq." + p.name, p.shape, opt.v.data() + p.offset);
  }
  opt.step = meta_int64(state, "step");
  try {
    auto words = nlohmann::json::parse(state.metadata().at("rng_state")).get<std::vector<uint64_t>>();
    AQ_CHECK(words.size() == 4, "bad size");
    rng.set_state({words[0], words[1], words[2], words[3]});
  } catch (const std::exception&) {
    fail(str(sp, ": rng_state in the metadata is missing or malformed"));
  }
  return LoaderPosition{meta_int64(state, "data_shard"), meta_int64(state, "data_position")};
}

// Names the first parameter whose gradient holds a NaN or Inf (for the error line).
std::string first_nonfinite_grad(GPT2<float>& model) {
  for (const ParamInfo& p : model.params_info()) {
    const float* g = model.grads() + p.offset;
    for (int64_t i = 0; i < shape_numel(p.shape); ++i)
      if (!std::isfinite(g[i])) return str(p.name, " (element ", i, " = ", g[i], ")");
  }
  return "(none found)";
}

std::string progress_line(const StepRecord& r, int64_t total, double eta_s) {
  char buf[256];
  std::snprintf(buf, sizeof(buf), "step %*lld/%lld | loss %.4f | lr %.2e | norm %.4f | %.1f ms | %.0f tok/s | ETA %s",
                static_cast<int>(std::to_string(total).size()), static_cast<long long>(r.step),
                static_cast<long long>(total), r.loss, r.lr, r.grad_norm, r.ms, r.tokens_per_s,
                format_duration(eta_s).c_str());
  return buf;
}

}  // namespace

TrainResult train(const TrainConfig& cfg_in, Communicator& comm) {
  TrainConfig cfg = cfg_in;
  cfg.validate();
  cfg.schedule.steps = cfg.steps;
  const int nthreads = configure_threads(cfg.threads);

  std::unique_ptr<SafeTensorsReader> weights;
  const GPT2Config mc = model_config(cfg, weights);
  AQ_CHECK(cfg.seq <= mc.max_seq, "--seq ", cfg.seq, " exceeds the model's context n_positions=", mc.max_seq,
           "; lower --seq", weights ? "" : str(" or raise --max-seq to at least ", cfg.seq));
  if (!cfg.save.empty()) check_writable(cfg.save, "checkpoint");
  if (!cfg.log.empty()) check_writable(cfg.log, "log");

  // Data first: a bad shard should fail before a large model is allocated.
  DataLoader train_data(cfg.data, cfg.batch, cfg.seq, mc.vocab_size, comm.rank(), comm.size(), "--data");
  std::unique_ptr<DataLoader> val_data;
  if (!cfg.val_data.empty())
    val_data = std::make_unique<DataLoader>(cfg.val_data, cfg.batch, cfg.seq, mc.vocab_size, comm.rank(), comm.size(),
                                            "--val-data");

  GPT2<float> model(mc, cfg.batch, cfg.seq);
  Rng rng(cfg.seed);
  OptimizerState opt;
  opt.m.assign(static_cast<size_t>(model.buffer_size()), 0.0f);
  opt.v.assign(static_cast<size_t>(model.buffer_size()), 0.0f);
  if (weights) {
    model.load(*weights);
  } else {
    model.init_random(rng.next_u64());
  }
  if (!cfg.resume.empty()) {
    train_data.set_position(load_state(cfg.resume, *weights, model, opt, rng));
    AQ_CHECK(opt.step < cfg.steps, cfg.resume, " is already at step ", opt.step, " and --steps is ", cfg.steps,
             ": nothing to do; raise --steps to train further");
  }
  weights.reset();  // unmap the checkpoint

  const int64_t tokens_per_step = static_cast<int64_t>(cfg.batch) * cfg.seq * comm.size();
  log_info("model: GPT-2 ", mc.describe(), " | ", model.num_params(), " parameters | activations ",
           model.activation_bytes() >> 20, " MiB");
  log_info("data: ", train_data.num_shards(), " shard(s), ", train_data.total_tokens(), " tokens | batch ", cfg.batch,
           " x ", cfg.seq, " = ", tokens_per_step, " tokens/step | ", comm.describe());
  log_info("threads: ", nthreads, " | BLAS: ", cpu::blas_description());
  if (!cfg.resume.empty()) log_info("resumed ", cfg.resume, " at step ", opt.step);

  std::ofstream log_file;
  if (!cfg.log.empty() && comm.rank() == 0) {
    log_file.open(cfg.log, cfg.resume.empty() ? std::ios::trunc : std::ios::app);
    AQ_CHECK(log_file.good(), "cannot open --log ", cfg.log, " for writing");
  }
  auto log_json = [&](const nlohmann::ordered_json& j) {
    if (log_file.is_open()) log_file << j.dump() << "\n" << std::flush;
  };

  auto& reg = ops::Registry::instance();
  auto* adamw = reg.find<ops::AdamW<float>::Update>("adamw_update", Device::CPU, DType::F32);
  auto* sum_squares = reg.find<ops::AdamW<float>::SumSquares>("sum_squares", Device::CPU, DType::F32);

  std::vector<int32_t> inputs(static_cast<size_t>(cfg.batch) * cfg.seq), targets(inputs.size());
  auto evaluate = [&](int64_t step) {
    val_data->reset();
    double sum = 0;
    for (int64_t i = 0; i < cfg.eval_batches; ++i) {
      val_data->next(inputs.data(), targets.data());
      sum += model.evaluate(inputs.data(), targets.data(), cfg.batch, cfg.seq);
    }
    double val = sum / static_cast<double>(cfg.eval_batches);
    comm.all_reduce_mean(&val, 1);
    log_info("step ", step, " | val loss ", val);
    log_json({{"step", step}, {"split", "val"}, {"loss", val}});
    return val;
  };

  TrainResult result;
  Timer run_timer;
  const int64_t first = opt.step;
  for (int64_t s = first; s < cfg.steps; ++s) {
    Timer t;
    train_data.next(inputs.data(), targets.data());
    double loss = model.forward_backward(inputs.data(), targets.data(), cfg.batch, cfg.seq);
    comm.all_reduce_mean(&loss, 1);
    AQ_CHECK(std::isfinite(loss), "loss is ", loss, " at step ", s + 1, " on rank ", comm.rank(),
             ": training stopped (no checkpoint written for this step); lower --lr or keep --grad-clip on");
    // Gradient reduction across data-parallel ranks starts here.
    comm.all_reduce_mean(model.grads(), model.buffer_size());
    const double norm = std::sqrt(sum_squares(model.grads(), model.buffer_size()));
    AQ_CHECK(std::isfinite(norm), "gradient norm is ", norm, " at step ", s + 1, " on rank ", comm.rank(),
             "; first non-finite gradient: ", first_nonfinite_grad(model), "; lower --lr");
    // torch.nn.utils.clip_grad_norm_: scale by clip/(norm + 1e-6) when that is below 1.
    double scale = 1.0;
    if (cfg.grad_clip > 0) scale = std::min(1.0, cfg.grad_clip / (norm + 1e-6));

    ops::AdamWParams hp;
    hp.lr = cfg.schedule.at(s);
    hp.beta1 = cfg.beta1;
    hp.beta2 = cfg.beta2;
    hp.eps = cfg.eps;
    hp.step = ++opt.step;
    hp.grad_scale = scale;
    for (const ParamInfo& p : model.params_info()) {
      hp.weight_decay = p.decay ? cfg.weight_decay : 0.0;
      adamw(model.params() + p.offset, model.grads() + p.offset, opt.m.data() + p.offset, opt.v.data() + p.offset,
            shape_numel(p.shape), hp);
    }

    StepRecord r{s + 1, loss, hp.lr, norm, t.ms(), 0.0};
    r.tokens_per_s = static_cast<double>(tokens_per_step) / (r.ms / 1000.0);
    result.steps.push_back(r);
    const double per_step_s = run_timer.ms() / 1000.0 / static_cast<double>(s + 1 - first);
    if (!cfg.quiet) log_info(progress_line(r, cfg.steps, per_step_s * static_cast<double>(cfg.steps - s - 1)));
    log_json({{"step", r.step}, {"loss", r.loss}, {"lr", r.lr}, {"grad_norm", r.grad_norm}, {"ms", r.ms},
              {"tokens_per_s", r.tokens_per_s}});

    const bool last = s + 1 == cfg.steps;
    if (val_data && ((cfg.eval_every > 0 && (s + 1) % cfg.eval_every == 0) || last))
      result.val_losses.emplace_back(s + 1, evaluate(s + 1));
    if (cfg.save_every > 0 && (s + 1) % cfg.save_every == 0 && !last && comm.rank() == 0) {
      save_checkpoint(cfg.save, model, opt, train_data.position(), rng, cfg);
      log_info("saved ", cfg.save, " (step ", s + 1, ")");
    }
  }
  if (!cfg.save.empty() && comm.rank() == 0) {
    save_checkpoint(cfg.save, model, opt, train_data.position(), rng, cfg);
    log_info("saved ", cfg.save, " and ", state_path_for(cfg.save), " (step ", opt.step, ")");
  }
  return result;
}

}  // namespace aq
