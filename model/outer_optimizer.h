// outer_optimizer.h — DiLoCo's outer step: Nesterov SGD on the averaged parameter change, in place.
//
// With Δ̄ the mean over centres of Δ_c = θ_global − θ_c (passed as the SUM over DP ranks, `delta`, and the
// factor `inv` = 1 / DP ranks, so each centre weighs by its DP ranks, i.e. its tokens), the step is
// torch.optim.SGD(lr, momentum=μ, nesterov=True) with Δ̄ as the gradient:
//     m ← μ·m + Δ̄;   θ_global ← θ_global − lr·(Δ̄ + μ·m);   θ_local ← θ_global.
// With H = 1, lr = 1 and μ = 0 it is plain averaging of the replicas (θ_global − Δ̄ = mean θ_c).
#pragma once

#include <cstdint>

namespace aq {

// theta_global, momentum, local (n): updated in place; delta (n): the summed change, read only.
inline void outer_nesterov_step(float* theta_global, float* momentum, float* local, const float* delta, int64_t n,
                                float inv, float lr, float mu) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = delta[i] * inv;
    momentum[i] = mu * momentum[i] + g;
    theta_global[i] -= lr * (g + mu * momentum[i]);
    local[i] = theta_global[i];
  }
}

}  // namespace aq
