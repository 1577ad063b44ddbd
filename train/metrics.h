// metrics.h — what a run reports per step: the progress line, the JSONL record, and the per-centre WAN totals.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "parallel/context.h"
#include "train/trainer.h"

namespace aq {

// "step 12/100 | loss … | ETA …" with communication, outer syncs and WAN figures when the job has them.
std::string progress_line(const StepRecord& r, int64_t total, double eta_s, const ParallelContext& ctx);
// The step's record for --log (JSON Lines).
nlohmann::ordered_json step_json(const StepRecord& r, const TrainConfig& cfg, const ParallelContext& ctx);
// Across centres: what each centre sent over the run (the sum of its ranks' wan_bytes), logged and stored in
// result, for comparison with the link's own byte counters. Collective.
void report_wan_totals(TrainResult& result, ParallelContext& ctx);

}  // namespace aq
