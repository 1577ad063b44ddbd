// outer_optimizer.h — DiLoCo's outer step: Nesterov SGD on the averaged parameter change, in place.
//
// With Δ̄ the mean over centres of Δ_c = θ_global − θ_c (passed as the SUM over DP ranks, `delta`, and the
// factor `inv` = 1 / DP ranks, so each centre weighs by its DP ranks, i.e. its tokens), the step is
// torch.optim.SGD(lr, momentum=μ, nesterov=True) with Δ̄ as the gradient:
//     m ← μ·m + Δ̄;   θ_global ← θ_global − lr·(Δ̄ + μ·m);   θ_local ← θ_global.
// With H = 1, lr = 1 and μ = 0 it is plain averaging of the replicas (θ_global − Δ̄ = mean θ_c).
// Streaming DiLoCo's overlapped syncs merge into a replica that trained on meanwhile: θ_local ← mix·θ_local +
// (1 − mix)·θ_global (mix = 0: the replica restarts from θ_global).
#pragma once

#include <cstdint>
#include <vector>

namespace aq {

// theta_global, momentum, local (n): updated in place; delta (n): the summed change, read only.
inline void outer_nesterov_step(float* theta_global, float* momentum, float* local, const float* delta, int64_t n,
                                float inv, float lr, float mu, float mix = 0.0f) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float g = delta[i] * inv;
    momentum[i] = mu * momentum[i] + g;
    theta_global[i] -= lr * (g + mu * momentum[i]);
    local[i] = mix == 0.0f ? theta_global[i] : mix * local[i] + (1.0f - mix) * theta_global[i];
  }
}

// Streaming DiLoCo's schedule: fragment f of F syncs at the steps t (1-based) with t ≡ ⌊(f+1)·H/F⌋ (mod H), so
// every fragment syncs once per H steps and the syncs are spread evenly (F = 1: every H steps).
inline bool fragment_syncs_at(int f, int F, int64_t H, int64_t t) {
  return t % H == ((f + 1) * H / F) % H;
}

// Time-based inner phases (--outer diloco with --balance): a centre that fits `a` inner steps into the window of
// H steps the fastest centre takes trains at step s (0-based) when ⌊(i+1)·a/H⌋ > ⌊i·a/H⌋, i = s mod H — `a`
// steps per window, spread evenly, so a slower centre reaches every fragment's sync about when the fastest does.
inline bool inner_step_active(int64_t a, int64_t H, int64_t s) {
  const int64_t i = s % H;
  return (i + 1) * a / H > i * a / H;
}

// Token-weighted outer average: centre c (dp[c] ranks, each with the same replica) trained active[c] inner steps
// since the fragment's last sync. Every rank sends active[c]·Δ_c, the exchange sums them over ranks, and the
// merge scales the sum by the value returned here, 1 / Σ_c dp[c]·active[c], so the average is
// Σ_c dp[c]·active[c]·Δ_c / Σ_c dp[c]·active[c]: each centre counts by the tokens it trained on. 0 when no
// centre trained (the caller then averages unweighted).
inline double token_weighted_scale(const std::vector<int>& dp, const std::vector<int64_t>& active) {
  double total = 0;
  for (size_t c = 0; c < dp.size(); ++c) total += static_cast<double>(dp[c]) * static_cast<double>(active[c]);
  return total > 0 ? 1.0 / total : 0.0;
}

}  // namespace aq
