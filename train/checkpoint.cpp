// checkpoint.cpp — saving and resuming a job. A save is a directory (runtime/checkpoint_dir.h) holding the model
// as one consolidated Hugging Face safetensors file (GPT-2 or Llama names; with DiLoCo, θ_global) with its
// config.json, and state.safetensors (AdamW moments, step, data position, RNG, options, error-feedback residuals
// per centre, DiLoCo replicas and outer momentum), the same whatever layout wrote them.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "parallel/trace_session.h"
#include "runtime/checkpoint_dir.h"
#include "runtime/file_io.h"
#include "train/job.h"

namespace aq {
namespace {

std::string new_checkpoint_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

int64_t meta_int64(const SafeTensorsReader& f, const char* key) {
  const std::optional<int64_t> v = f.metadata_int(key);
  AQ_CHECK(v.has_value(), f.path(), " has no \"", key, "\" in its metadata: not a checkpoint written by ",
           "aq-train --save (use --init-from to start a new run from plain weights)");
  return *v;
}

// A JSON value of a checkpoint's metadata, typed: a malformed value (a damaged or foreign file: the checksums
// cover tensor bytes, not metadata) is one aq::Error naming the file and the key.
template <typename V>
V meta_json(const SafeTensorsReader& f, const char* key) {
  try {
    return nlohmann::json::parse(f.metadata().at(key)).get<V>();
  } catch (const std::exception& e) {
    fail(str(f.path(), ": \"", key, "\" in the metadata is missing or malformed (", e.what(),
             "); the file is damaged or was not written by aq-train --save"));
  }
}

}  // namespace

template <typename T>
std::vector<float> Job<T>::full_local(const float* part, int64_t n, const char* what, bool sliced) {
  std::vector<float> mine(static_cast<size_t>(n));
  device_copy(mine.data(), Device::CPU, part, device_, mine.size() * sizeof(float));
  if (!cfg_.zero || !sliced) return mine;
  std::vector<float> full(static_cast<size_t>(model_->buffer_size()));
  idp_group().all_gather(mine.data(), full.data(), slice_len(), DType::F32, {what})->wait();
  return full;
}

template <typename T>
void Job<T>::load_state(const SafeTensorsReader& weights) {
  const std::string sp = state_path_for(cfg_.resume);
  AQ_CHECK(file_exists(sp), "--resume ", cfg_.resume, " needs its training state ", sp,
           " (a save of aq-train --save has it beside the model; this file has none, or its save is damaged); to ",
           "start a new run from these weights use --init-from");
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
  updates_ = opt_.step;  // unless a paced DiLoCo centre idled (load_outer_state)
  const auto words = meta_json<std::vector<uint64_t>>(state, "rng_state");
  AQ_CHECK(words.size() == 4, sp, ": \"rng_state\" in the metadata has ", words.size(), " words, not 4; the file is ",
           "damaged or was not written by aq-train --save");
  rng_.set_state({words[0], words[1], words[2], words[3]});
  // The saved work split first: the data position is one of its global steps.
  // --balance auto keeps the split it measured; a fixed list or off follows the flags.
  // (Under DiLoCo --balance paces inner steps instead: load_outer_state.)
  if (sm.count("balance_micro") && cfg_.balance == "auto" && !diloco()) {
    auto micro = meta_json<std::vector<int>>(state, "balance_micro");
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
void Job<T>::guard_save_path() {
  const std::string& root = cfg_.save;
  std::error_code ec;
  const auto kind = std::filesystem::status(root, ec).type();
  const bool ends_st = root.size() > 12 && root.compare(root.size() - 12, 12, ".safetensors") == 0;
  AQ_CHECK(kind != std::filesystem::file_type::regular && (kind == std::filesystem::file_type::directory || !ends_st),
           "--save ", root, kind == std::filesystem::file_type::regular ? " is a file" : " looks like a file name",
           ", but --save takes a checkpoint directory (each save is DIR/step-N/ with ", kModelFile, ", ", kStateFile,
           " and ", kManifestFile, "); use e.g. --save ", ends_st ? root.substr(0, root.size() - 12) : root + ".ckpt");
  if (kind == std::filesystem::file_type::not_found) {
    made_save_dir_ = ::mkdir(root.c_str(), 0755) == 0;
    AQ_CHECK(made_save_dir_ || errno == EEXIST, "cannot create the checkpoint directory ", root, ": ",
             std::strerror(errno), " (create its parent directory, or choose another --save)");
  }
  AQ_CHECK(std::filesystem::is_directory(root, ec), "--save ", root, " is not a directory",
           ec ? str(" (", ec.message(), ")") : std::string(), "; choose a directory for the checkpoints");
  check_writable(root + "/.write-test", "checkpoint directory");
  // One writer per directory; what a writer that died left behind is settled while we hold the lock.
  save_lock_ = std::make_unique<PathLock>(root, "--save", root + "/.lock");
  for (const std::string& line : recover_saves(root)) log_info("--save ", root, ": ", line);
  // This run's id: a fresh one, or the resumed run's.
  run_id_ = new_checkpoint_id();
  int64_t resumed_step = -1;
  if (!cfg_.resume.empty() && file_exists(state_path_for(cfg_.resume))) {
    const SafeTensorsReader resumed(state_path_for(cfg_.resume));
    const auto& m = resumed.metadata();
    run_id_ = m.count("run_id") ? m.at("run_id") : m.count("checkpoint_id") ? m.at("checkpoint_id") : run_id_;
    resumed_step = resumed.metadata_int("step").value_or(-1);
  }
  // Saves this run must not leave for a later --resume DIR to take: another run's, and later ones of this run
  // (a timeline abandoned by resuming an older save). Without --overwrite, intact ones are refused; damaged
  // later ones of this run are dropped in any case.
  std::vector<SaveInfo> drop;
  for (const SaveInfo& s : list_saves(root)) {  // newest first
    if (s.run_id == run_id_ && s.step <= resumed_step) continue;
    if (cfg_.overwrite || (s.run_id == run_id_ && !check_save(s.dir).empty())) {
      drop.push_back(s);
      continue;
    }
    AQ_CHECK(s.run_id == run_id_, "--save ", root, " already holds saves of another run (newest: step ", s.step,
             "); continue that run with --resume ", root, ", save elsewhere, or pass --overwrite to replace them ",
             "(they are removed when this run starts)");
    fail(str("--save ", root, " holds a later save of this run (", s.dir, ") than the one resumed (step ", resumed_step,
             "); resume the newest with --resume ", root, ", save elsewhere, or pass --overwrite to ",
             "drop the later saves"));
  }
  drop_saves(root, drop);
  if (!drop.empty())
    log_info("--save ", root, ": removed ", drop.size(), " save(s) ", cfg_.overwrite ? "(--overwrite)" : "(damaged)",
             ", newest ", drop.front().dir);
}

template <typename T>
void Job<T>::save(const std::string& path) {
  // Everything is consolidated to whole Hugging Face tensors (collective over TP, and over DP for ZeRO-1), then
  // rank 0 writes one save directory (runtime/checkpoint_dir.h): committed as a unit, so a kill at any instant
  // leaves the previous saves loadable.
  trace::Span trace_span(trace::Stream::Compute, "checkpoint write");
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
      for (NamedTensor& t : model_->gather_full(str("outer_pending.", k, "."), full.data()))
        moments.push_back(std::move(t));
    }
    params = model_->gather_full("", theta_global_.data());
    for (NamedTensor& t : model_->gather_full("outer_momentum.", outer_mom_.data())) moments.push_back(std::move(t));
    // This centre's replica on the host: gathered above for a bf16 model under ZeRO-1, else copied whole.
    const std::vector<float> replica =
        master.empty() ? full_local(model_->params(), model_->buffer_size(), "checkpoint replica", false) : master;
    const std::pair<const char*, const std::vector<float>*> parts[] = {
        {"param", &replica}, {"exp_avg", &m}, {"exp_avg_sq", &v}};
    for (const auto& [what, buf] : parts)
      append_per_centre(
          *buf, what, [what = what](int c) { return str("centre.", c, ".", what, "."); }, moments);
  } else {
    params = model_->gather_full("", master.empty() ? nullptr : master.data());
  }
  const bool ef = save_residuals(moments);
  // Paced DiLoCo centres made different numbers of AdamW updates (bias correction): every centre's count.
  std::vector<int64_t> centre_updates;
  if (paced()) {
    std::vector<double> u(static_cast<size_t>(ctx_.topology().centres()), 0.0);  // exact below 2^53
    u[static_cast<size_t>(ctx_.centre())] = static_cast<double>(updates_);
    ctx_.world()
        .all_reduce(u.data(), static_cast<int64_t>(u.size()), DType::F64,
                    {"checkpoint AdamW updates per centre", ReduceOp::Max})
        ->wait();
    for (double x : u) centre_updates.push_back(static_cast<int64_t>(x));
  }
  std::string error;
  if (ctx_.world_rank() == 0) {
    try {
      const std::string id = new_checkpoint_id();
      const auto rs = rng_.state();
      nlohmann::json options = {{"lr", cfg_.schedule.lr},
                                {"lr_schedule", cfg_.schedule.kind},
                                {"warmup", cfg_.schedule.warmup},
                                {"min_lr", cfg_.schedule.min_lr},
                                {"weight_decay", cfg_.weight_decay},
                                {"beta1", cfg_.beta1},
                                {"beta2", cfg_.beta2},
                                {"eps", cfg_.eps},
                                {"grad_clip", cfg_.grad_clip},
                                {"batch", cfg_.batch},
                                {"seq", cfg_.seq},
                                {"steps", cfg_.steps},
                                {"grad_accum", cfg_.grad_accum},
                                {"seed", cfg_.seed},
                                {"data", cfg_.data},
                                {"tp", ctx_.tp()},
                                {"dp", ctx_.dp()},
                                {"zero", cfg_.zero},
                                {"outer", cfg_.outer},
                                {"outer_steps", cfg_.outer_steps},
                                {"outer_lr", cfg_.outer_lr},
                                {"outer_momentum", cfg_.outer_momentum}};
      std::map<std::string, std::string> meta = model_->config().to_metadata();
      meta["checkpoint_id"] = id;
      meta["run_id"] = run_id_;
      meta["step"] = std::to_string(opt_.step);
      std::map<std::string, std::string> state_meta = meta;
      const LoaderPosition pos = train_data_->position();
      state_meta["data_shard"] = std::to_string(pos.shard);
      state_meta["data_position"] = std::to_string(pos.position);
      state_meta["rng_state"] = dump_json(nlohmann::json(std::vector<uint64_t>(rs.begin(), rs.end())));
      state_meta["train_options"] = dump_json(options);
      // The work split, once it is final (a fixed list, or measured by auto).
      if (cfg_.balance != "off" && (cfg_.balance != "auto" || balanced_) && !diloco())
        state_meta["balance_micro"] = dump_json(nlohmann::json(micro_));
      if (ef) state_meta["ef_centres"] = dump_json(nlohmann::json(ctx_.topology().centre_names));
      if (diloco()) {
        state_meta["diloco_centres"] = dump_json(nlohmann::json(ctx_.topology().centre_names));
        nlohmann::json pend = nlohmann::json::array();
        for (const PendingSync& ps : pending_) pend.push_back({ps.fragment, ps.merge_step, ps.scale});
        state_meta["outer_pending"] = dump_json(pend);
        state_meta["outer_fragments"] = std::to_string(fragments_.size());
        if (paced()) {
          state_meta["outer_window_active"] = dump_json(nlohmann::json(window_active_));
          state_meta["centre_updates"] = dump_json(nlohmann::json(centre_updates));
          if (!inner_per_window_.empty())
            state_meta["outer_inner_steps"] = dump_json(nlohmann::json(inner_per_window_));
        }
      }
      // Into a hidden directory, renamed to step-N once both files and the manifest are on disk.
      SaveWriter save(path, opt_.step);
      write_safetensors(save.file(kStateFile), moments, state_meta);
      write_safetensors(save.file(kModelFile), params, meta);
      const std::string hf_config = model_->config().to_hf_config_json();
      AtomicWriter config(save.file(kConfigFile));
      config.write(hf_config.data(), hf_config.size());
      config.commit();
      const std::string dir = save.commit(id, run_id_, {kModelFile, kStateFile, kConfigFile});
      // The save is complete: a failure to remove older ones is a warning, not a failed save.
      try {
        const std::vector<std::string> pruned = prune_saves(path, dir, cfg_.keep, run_id_);
        if (!pruned.empty())
          log_info("removed ", pruned.size(), " older save(s) (--keep ", cfg_.keep, "): ", pruned.back());
      } catch (const std::exception& e) {
        log_info("warning: saved ", dir, " but could not remove older saves: ", e.what());
      }
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
  append_per_centre(
      centre, "error-feedback residuals", [](int c) { return str("ef_residual.", c, "."); }, out);
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
  const auto names = meta_json<std::vector<std::string>>(state, "ef_centres");
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
void Job<T>::append_per_centre(const std::vector<float>& mine, const std::string& what,
                               const std::function<std::string(int)>& prefix, std::vector<NamedTensor>& out) {
  const Topology& topo = ctx_.topology();
  const int64_t n = model_->buffer_size();
  std::vector<float> all(static_cast<size_t>(n) * topo.centres(), 0.0f);
  if (topo.centres() == 1)
    std::copy(mine.begin(), mine.end(), all.begin());
  else if (topo.intra_index[ctx_.world_rank()] == 0)  // one rank per centre and tp_rank gathers every centre's
    ctx_.cross_group()
        ->all_gather(mine.data(), all.data(), n, DType::F32, {"checkpoint " + what + " of every centre"})
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
    log_info("resume: ", state.path(),
             " has no DiLoCo state; every centre starts its replica from the model and "
             "the outer momentum from zero");
    return;
  }
  const int64_t n = model_->buffer_size();
  model_->load(state, "outer_momentum.", outer_mom_.data());
  std::vector<float> buf(static_cast<size_t>(n), 0.0f);
  // Exchanges that were in flight at the save: their summed changes, merged at their step.
  // [fragment, merge step, scale] each (files before the scale have two numbers).
  const auto pend = sm.count("outer_pending") ? meta_json<std::vector<std::vector<double>>>(state, "outer_pending")
                                              : std::vector<std::vector<double>>{};
  if (!pend.empty()) {
    const std::string saved_f = sm.count("outer_fragments") ? sm.at("outer_fragments") : "?";
    AQ_CHECK(saved_f == std::to_string(fragments_.size()), state.path(), " was saved with --outer-fragments ", saved_f,
             " and ", pend.size(), " outer exchange(s) not merged yet; resume with --outer-fragments ", saved_f);
    for (size_t k = 0; k < pend.size(); ++k) {
      std::fill(buf.begin(), buf.end(), 0.0f);
      model_->load(state, str("outer_pending.", k, "."), buf.data());
      const std::vector<double>& ps = pend[k];
      AQ_CHECK(ps.size() >= 2 && ps[0] >= 0 && ps[0] < static_cast<double>(fragments_.size()) && ps[1] > opt_.step,
               state.path(), ": \"outer_pending\" entry ", k, " is not [fragment < ", fragments_.size(),
               ", merge step > ", opt_.step, "(, scale)]; the file is damaged or was not written by aq-train --save");
      const int f = static_cast<int>(ps[0]);
      const auto [b, e] = fragments_[static_cast<size_t>(f)];
      // The merge's scale as saved (the sum was over the saving run's DP ranks); older files: 1 / DP ranks.
      const float scale = ps.size() > 2 ? static_cast<float>(ps[2]) : 1.0f / static_cast<float>(ctx_.dp());
      pending_.push_back(PendingSync{f, static_cast<int64_t>(ps[1]),
                                     std::vector<float>(buf.begin() + b, buf.begin() + e), nullptr, scale});
    }
  }

  const auto names = meta_json<std::vector<std::string>>(state, "diloco_centres");
  const std::string& mine = ctx_.topology().centre_names[static_cast<size_t>(ctx_.centre())];
  const auto it = std::find(names.begin(), names.end(), mine);
  // Time-based inner phases: the measured pace (auto; a list follows the flags), the inner steps each centre
  // trained since each fragment's last sync, and this centre's AdamW updates.
  // The pace and the window counts are per centre in the saving run's order: kept only when the centres are the
  // same, in the same order (and the same fragments); otherwise counting restarts and auto measures again.
  if (sm.count("centre_updates") && it != names.end()) {
    const auto upd = meta_json<std::vector<int64_t>>(state, "centre_updates");
    if (static_cast<size_t>(it - names.begin()) < upd.size()) updates_ = upd[static_cast<size_t>(it - names.begin())];
  }
  if (paced()) {
    const bool same = names == ctx_.topology().centre_names;
    if (sm.count("outer_inner_steps") && cfg_.balance == "auto") {
      auto pace = meta_json<std::vector<int>>(state, "outer_inner_steps");
      const bool fits = std::all_of(pace.begin(), pace.end(), [&](int a) { return a >= 1 && a <= cfg_.outer_steps; });
      if (same && fits) {
        inner_per_window_ = std::move(pace);
        balanced_ = true;
      } else {
        log_info(
            "resume: the saved pace of inner steps is for other centres or another --outer-steps; it is "
            "measured again");
      }
    }
    if (sm.count("outer_window_active")) {
      auto active = meta_json<std::vector<int64_t>>(state, "outer_window_active");
      if (same && active.size() == window_active_.size())
        window_active_ = std::move(active);
      else
        log_info(
            "resume: the saved counts of inner steps per fragment are for other centres or fragments; the "
            "next outer syncs weigh the centres from zero counts");
    }
  }
  if (it == names.end()) {
    log_info("resume: ", state.path(), " has no replica of centre ", mine, "; it starts from the global model");
    return;
  }
  const std::string c = str("centre.", it - names.begin(), ".");
  std::fill(buf.begin(), buf.end(), 0.0f);
  model_->load(state, c + "param.", buf.data());
  device_copy(model_->params(), device_, buf.data(), Device::CPU, buf.size() * sizeof(float));
  model_->refresh_working_copy();
  for (auto [what, dst] : {std::pair{"exp_avg.", &opt_.m}, std::pair{"exp_avg_sq.", &opt_.v}}) {
    std::fill(buf.begin(), buf.end(), 0.0f);
    model_->load(state, c + what, buf.data());
    device_copy(dst->data(), device_, buf.data() + slice_begin(), Device::CPU,
                static_cast<size_t>(slice_len()) * sizeof(float));
  }
}

template class Job<float>;
template class Job<bf16>;

}  // namespace aq
