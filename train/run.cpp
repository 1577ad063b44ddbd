// run.cpp — train(): set-up agreed over the ranks, then the loop of steps, evaluations, stops and saves.
#include <nlohmann/json.hpp>

#include "runtime/blas_setup.h"
#include "runtime/log.h"
#include "runtime/memory.h"
#include "train/job.h"
#include "train/metrics.h"
#include "train/stop.h"

namespace aq {
namespace {

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
    log_json(step_json(r, cfg, ctx));

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
      log_info("saved ", cfg.save, "/", save_dir_name(s + 1));
    }
  }
  if (cfg.steps > first) result.step_loop_device_mallocs = device_driver_allocations(job.device()) - allocs_after_first;
  // Exchanges still in flight (started in the last τ steps) complete here; a save keeps them for a resume.
  job.finish_communication();
  if (!cfg.save.empty()) {
    job.save(cfg.save);
    log_info("saved ", cfg.save, "/", save_dir_name(job.start_step()));
  }
  if (!result.stopped_by.empty())
    log_info("stopped by ", result.stopped_by, " after step ", job.start_step(), " of ", cfg.steps,
             cfg.save.empty() ? " (nothing saved: no --save)" : str("; continue with --resume ", cfg.save));
}

// --resume / --init-from name a checkpoint directory, one save, or a file: rank 0 finds the files (the newest
// intact save, checksums verified) and every rank takes its answer, so all load the same save.
void resolve_checkpoint_flag(TrainConfig& cfg, ParallelContext& ctx) {
  const bool resume = !cfg.resume.empty();
  std::string& path = resume ? cfg.resume : cfg.init_from;
  if (path.empty()) return;
  std::string error, model, chosen;
  if (ctx.world_rank() == 0) {
    try {
      const CheckpointRef ref = resolve_checkpoint(path, resume ? "--resume" : "--init-from");
      model = ref.model;
      chosen = ref.chosen;
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  error = ctx.agree_on_failure(error);
  if (!error.empty()) throw AgreedError(error);
  if (!chosen.empty()) log_info(resume ? "resume: " : "init: ", chosen);
  path = ctx.broadcast_string(model);
}

}  // namespace

TrainResult train(const TrainConfig& cfg_in, ParallelContext& ctx) {
  TrainConfig cfg = cfg_in;
  cfg.schedule.steps = cfg.steps;
  const int nthreads = configure_threads(cfg.threads, ctx.local_size());
  resolve_checkpoint_flag(cfg, ctx);
  std::unique_ptr<JobApi> job_ptr;
  // Set-up failures (bad flags, files, shapes, devices) are agreed on, so exactly one rank reports and all exit;
  // the collective part of building (device groups) starts only once every rank got that far, and the checks
  // across ranks of what was built once every rank built it.
  for (int phase = 0; phase < 3; ++phase) {
    std::string error;
    try {
      if (phase == 0) {
        if (!cfg.resume.empty()) restore_saved_options(cfg, ctx.dp());
        cfg.schedule.steps = cfg.steps;
        cfg.validate();
        job_ptr = make_job(cfg, ctx);
        job_ptr->setup();
      } else if (phase == 1) {
        job_ptr->build();
      } else {
        job_ptr->check_build();
      }
    } catch (const CommError&) {
      throw;
    } catch (const std::exception& e) {  // aq::Error, and anything else: every rank must reach the agreement
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
