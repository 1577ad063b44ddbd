// schedule.h — learning-rate schedules.
//
// constant: lr at every step.
// cosine:   linear warmup lr·(s+1)/warmup for s < warmup, then cosine decay from lr to min_lr over the
//           remaining steps: min_lr + ½(1 + cos(π·(s − warmup)/max(1, steps − warmup)))·(lr − min_lr).
// s is the 0-based step index; `steps` is the run's total step count.
#pragma once

#include <cstdint>
#include <string>

namespace aq {

struct LrSchedule {
  std::string kind = "constant";  // "constant" | "cosine"
  double lr = 3e-4, min_lr = 0.0;
  int64_t warmup = 0, steps = 1;

  double at(int64_t s) const;
};

}  // namespace aq
