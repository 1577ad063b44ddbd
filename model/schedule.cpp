#include "model/schedule.h"

#include <algorithm>
#include <cmath>

namespace aq {

double LrSchedule::at(int64_t s) const {
  if (kind == "constant") return lr;
  if (s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
  const double ratio = static_cast<double>(s - warmup) / static_cast<double>(std::max<int64_t>(1, steps - warmup));
  return min_lr + 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, ratio))) * (lr - min_lr);
}

}  // namespace aq
