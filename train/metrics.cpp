// metrics.cpp — see metrics.h.
#include "train/metrics.h"

#include <cstdio>

#include "runtime/log.h"
#include "runtime/sysinfo.h"

namespace aq {

std::string progress_line(const StepRecord& r, int64_t total, double eta_s, const ParallelContext& ctx) {
  const bool parallel = ctx.world_size() > 1;
  char buf[360];
  const int width = static_cast<int>(std::to_string(total).size());
  int n = r.idle ? std::snprintf(buf, sizeof(buf), "step %*lld/%lld | idle: this centre trains fewer steps per window "
                                 "(--balance) | %.1f ms", width, static_cast<long long>(r.step),
                                 static_cast<long long>(total), r.ms)
                 : std::snprintf(buf, sizeof(buf), "step %*lld/%lld | loss %.4f | lr %.2e | norm %.4f | %.1f ms | %.0f tok/s",
                                 width, static_cast<long long>(r.step), static_cast<long long>(total), r.loss, r.lr,
                                 r.grad_norm, r.ms, r.tokens_per_s);
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

nlohmann::ordered_json step_json(const StepRecord& r, const TrainConfig& cfg, const ParallelContext& ctx) {
  const bool parallel = ctx.world_size() > 1;
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
    if (r.idle) j["idle"] = true;  // the loss is then that of this centre's last trained step
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
  return j;
}

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

}  // namespace aq
