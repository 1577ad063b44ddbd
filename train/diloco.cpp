// diloco.cpp — --outer diloco: each centre trains its own replica, and every H inner steps (per fragment, on a
// staggered schedule) the centres average their change Δ = θ_global − θ_local through the cross-centre
// algorithm and an outer Nesterov step (outer_optimizer.h) updates θ_global. Exchanges may run behind τ inner
// steps (--outer-overlap). Checkpointing of this state is in checkpoint.cpp.
#include <array>
#include <utility>

#include "parallel/trace_session.h"
#include "train/job.h"
#include "train/outer_optimizer.h"

namespace aq {

template <typename T>
void Job<T>::cut_fragments() {
  // Fragments: consecutive tensors in buffer order (embeddings, blocks, final norm), cut at the first tensor
  // boundary past each 1/F of the model. The cuts are decided on the whole tensors' sizes, so every TP layout
  // (and a resume under another one) has the same fragments.
  const auto& info = model_->params_info();
  AQ_CHECK(cfg_.outer_fragments <= static_cast<int>(info.size()), "--outer-fragments ", cfg_.outer_fragments,
           " exceeds the model's ", info.size(), " tensors; use at most that many");
  int64_t whole = 0;
  for (const ParamInfo& p : info) whole += shape_numel(p.full_shape);
  int64_t begin = 0, upto = 0;
  for (size_t k = 1; k <= info.size(); ++k) {
    upto += shape_numel(info[k - 1].full_shape);
    const int64_t end = k < info.size() ? info[k].offset : model_->buffer_size();
    const int f = static_cast<int>(fragments_.size());
    const int left = cfg_.outer_fragments - f;                   // fragments still to cut, this one included
    const bool must = static_cast<int>(info.size() - k) < left;  // one tensor per remaining fragment at least
    if (left > 1 && (upto * cfg_.outer_fragments >= (f + 1) * whole || must)) {
      fragments_.emplace_back(begin, end);
      begin = end;
    }
  }
  fragments_.emplace_back(begin, model_->buffer_size());
}

template <typename T>
float* Job<T>::stage_params(int64_t b, int64_t e, int64_t t) {
  // A bf16 model under ZeRO-1 updates only its own slice of the master weights at each step (the working copy
  // is what the ranks all-gather), so the whole buffer is gathered first. Collective over the centre's DP
  // group; every rank of it stages the same fragments at the same steps. What was staged after inner step t
  // stays valid for the rest of step t's outer work (unstage_params writes the same values to the device), so
  // a launch and its merge at the same step (no overlap), or several fragments due together, copy once.
  const bool whole = !std::is_same_v<T, float> && cfg_.zero;
  if (!whole && device_ == Device::CPU) return model_->params() + b;  // no copy on the CPU
  const int64_t sb = whole ? 0 : b, se = whole ? model_->buffer_size() : e;
  if (staged_at_ != std::array<int64_t, 3>{t, sb, se}) {
    if (whole) {
      staged_ = full_local(model_->params() + slice_begin(), slice_len(), "DiLoCo master weights");
    } else {
      staged_.resize(static_cast<size_t>(e - b));
      device_copy(staged_.data(), Device::CPU, model_->params() + b, device_, staged_.size() * sizeof(float));
    }
    staged_at_ = {t, sb, se};
  }
  return staged_.data() + (b - sb);
}

template <typename T>
void Job<T>::unstage_params(int64_t b, int64_t e, const float* host) {
  device_copy(model_->params() + b, device_, host, Device::CPU, static_cast<size_t>(e - b) * sizeof(float));
  model_->refresh_working_copy(b, e);  // bf16: the kernels read the working copy
}

template <typename T>
void Job<T>::outer_launch(int f, int64_t t) {
  // DiLoCo's outer exchange for one fragment. Every rank of a centre holds the same θ_local, so summing
  // Δ = θ_global − θ_local over all DP ranks (and dividing by their number at the merge) weights each centre by
  // its DP ranks, i.e. by the tokens it trained on. Paced centres (time-based inner phases) trained different
  // numbers of inner steps, so each rank's Δ is also multiplied by its centre's count since the fragment's last
  // sync and the merge divides by the total (token_weighted_scale).
  trace::Span trace_span(trace::Stream::Compute, "outer launch", f);
  const auto [b, e] = fragments_[static_cast<size_t>(f)];
  PendingSync ps{f, t + cfg_.outer_overlap, std::vector<float>(static_cast<size_t>(e - b)), nullptr,
                 1.0f / static_cast<float>(ctx_.dp())};
  float w = 1.0f;
  if (paced()) {
    const Topology& topo = ctx_.topology();
    const size_t F = fragments_.size();
    std::vector<int64_t> active(static_cast<size_t>(topo.centres()));
    for (int c = 0; c < topo.centres(); ++c) active[c] = std::exchange(window_active_[c * F + f], 0);
    const double scale = token_weighted_scale(topo.centre_dp, active);
    if (scale > 0) {  // else no centre trained since the last sync: a plain average
      w = static_cast<float>(active[static_cast<size_t>(ctx_.centre())]);
      ps.scale = static_cast<float>(scale);
    }
  }
  const float* p = stage_params(b, e, t);
  const float* g = theta_global_.data() + b;
  float* d = ps.delta.data();
  if (w == 1.0f) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < e - b; ++i) d[i] = g[i] - p[i];
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < e - b; ++i) d[i] = (g[i] - p[i]) * w;
  }
  ps.work = outer_algo_->all_reduce(d, e - b, b, {str("DiLoCo outer change, fragment ", f)});
  pending_.push_back(std::move(ps));
}

template <typename T>
double Job<T>::outer_merge(PendingSync& ps) {
  // The outer Nesterov step on the fragment (outer_optimizer.h). With --outer-overlap the replica trained on
  // while the exchange ran, so it is mixed with the new θ_global instead of replaced.
  trace::Span trace_span(trace::Stream::Compute, "outer merge", ps.fragment);
  Timer w;
  if (ps.work) ps.work->wait();
  if (ps.work)
    trace_work(trace::Stream::CrossCentre, str("outer exchange ", ps.fragment), *ps.work,
               {{"bytes", 4.0 * ps.delta.size()}});
  ps.work.reset();
  const double waited = w.ms();
  const auto [b, e] = fragments_[static_cast<size_t>(ps.fragment)];
  float* local = stage_params(b, e, ps.merge_step);
  outer_nesterov_step(theta_global_.data() + b, outer_mom_.data() + b, local, ps.delta.data(), e - b, ps.scale,
                      static_cast<float>(cfg_.outer_lr), static_cast<float>(cfg_.outer_momentum),
                      cfg_.outer_overlap > 0 ? static_cast<float>(cfg_.outer_mix) : 0.0f);
  unstage_params(b, e, local);
  return waited;
}

template <typename T>
void Job<T>::outer_steps(int64_t t, StepRecord& r) {
  // After inner step t: start the exchanges of the fragments due now, then merge those due now (with no
  // overlap, the ones just started). Every rank runs the same schedule, so the exchanges match.
  Timer c;
  const int F = static_cast<int>(fragments_.size());
  for (int f = 0; f < F; ++f)
    if (fragment_syncs_at(f, F, cfg_.outer_steps, t)) {
      outer_launch(f, t);
      ++r.outer_launched;
    }
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->merge_step != t) {
      ++it;
      continue;
    }
    r.outer_exposed_ms += outer_merge(*it);
    ++r.outer_merged;
    it = pending_.erase(it);
  }
  outer_poll();
  r.outer_sync = r.outer_merged > 0;
  // What the step spent here is communication: the launches (encoding) and the waits at the merges.
  const double ms = c.ms();
  r.comm_ms += ms;
  r.exposed_comm_ms += ms;
}

template <typename T>
void Job<T>::outer_finish_exchanges() {
  for (PendingSync& ps : pending_)
    if (ps.work) {
      ps.work->wait();
      ps.work.reset();
    }
}

template class Job<float>;
template class Job<bf16>;

}  // namespace aq
