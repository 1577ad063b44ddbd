// balance.cpp — work split by centre speed (--balance, --grad-accum). Synchronous data parallelism: how many
// micro-batches each DP rank runs per step, and where in the global batch they are. DiLoCo: how many inner steps
// of every window each centre trains (pace_now; the idle steps are in job.cpp, the token weights in diloco.cpp).
#include <algorithm>
#include <cmath>
#include <sstream>

#include "parallel/cost_model.h"
#include "runtime/cli_parse.h"
#include "train/job.h"

namespace aq {

template <typename T>
std::vector<int> Job<T>::balance_list(const char* what, int lo, int hi, const char* example) const {
  const Topology& topo = ctx_.topology();
  const std::vector<int> per_centre = parse_balance_list(cfg_.balance, what, lo, hi, example);
  AQ_CHECK(static_cast<int>(per_centre.size()) == topo.centres(), "--balance ", cfg_.balance, " gives ",
           per_centre.size(), " centre(s) ", what, " but the job has ", topo.describe(),
           "; give one number per centre, in that order");
  return per_centre;
}

template <typename T>
std::vector<int> Job<T>::initial_split() const {
  std::vector<int> micro(static_cast<size_t>(ctx_.dp()), cfg_.grad_accum);
  // Under DiLoCo the list paces the inner steps instead (build()); every rank runs --grad-accum micro-batches.
  if (cfg_.balance != "off" && cfg_.balance != "auto" && !diloco()) {
    const std::vector<int> per_centre = balance_list("micro-batches per rank", 1, 100000, "3,1");
    for (int d = 0; d < ctx_.dp(); ++d)
      micro[d] = per_centre[static_cast<size_t>(ctx_.topology().centre_of[d * ctx_.tp()])];
  }
  return micro;
}

template <typename T>
void Job<T>::apply_split(std::vector<int> micro) {
  // DP rank d reads its K_d·B sequences right after those of ranks < d: the global step is what one process
  // with batch M·B reads, whatever the split (the mathematics does not depend on it).
  micro_ = std::move(micro);
  int64_t total = 0, first = 0;
  for (int d = 0; d < static_cast<int>(micro_.size()); ++d) {
    if (d == ctx_.dp_rank()) first = total;
    total += micro_[static_cast<size_t>(d)];
  }
  K_ = micro_[static_cast<size_t>(ctx_.dp_rank())];
  // M: the micro-batches the optimizer's DP group sums over (with DiLoCo, this centre's, whose ranks all have K:
  // --balance paces whole inner steps there).
  M_ = diloco() ? static_cast<int64_t>(idp()) * K_ : total;
  train_data_->set_split(first * cfg_.batch, static_cast<int64_t>(K_) * cfg_.batch, total * cfg_.batch);
  inputs_.resize(static_cast<size_t>(cfg_.batch) * K_ * cfg_.seq);
  targets_.resize(inputs_.size());
}

template <typename T>
std::vector<double> Job<T>::centre_ms_per_micro() {
  // Each centre's time per micro-batch (per inner step under DiLoCo): the mean over its ranks, one report per DP
  // rank (tp_rank 0).
  const Topology& topo = ctx_.topology();
  const int C = topo.centres();
  std::vector<double> t(static_cast<size_t>(2 * C), 0.0);
  if (ctx_.tp_rank() == 0) {
    t[static_cast<size_t>(ctx_.centre())] = micro_ms_;
    t[static_cast<size_t>(C + ctx_.centre())] = 1.0;
  }
  ctx_.world().all_reduce(t.data(), 2 * C, DType::F64, {"balance: times per centre"})->wait();
  std::vector<double> ms(static_cast<size_t>(C));
  for (int c = 0; c < C; ++c) ms[c] = t[c] / std::max(t[C + c], 1.0) / static_cast<double>(cfg_.balance_steps);
  // Test hook: AQ_BALANCE_TEST_MS="a,b,…" replaces the measured time per micro-batch of each centre (tests need
  // an uneven, reproducible split on one machine). Unset in normal runs.
  if (const char* fake = std::getenv("AQ_BALANCE_TEST_MS")) {
    std::stringstream ss(fake);
    int c = 0;
    for (std::string tok; std::getline(ss, tok, ',') && c < C; ++c) ms[c] = std::stod(tok);
  }
  return ms;
}

template <typename T>
void Job<T>::balance_now() {
  // The M micro-batches of a step are dealt out one at a time to the rank that would finish it earliest (at
  // least one each; cost::deal_by_speed), which minimises the slowest rank's time, i.e. the step's. Once.
  const Topology& topo = ctx_.topology();
  const int C = topo.centres();
  const std::vector<double> ms = centre_ms_per_micro();
  const int dp = ctx_.dp();
  std::vector<double> rank_ms(static_cast<size_t>(dp));
  for (int d = 0; d < dp; ++d) rank_ms[d] = std::max(ms[topo.centre_of[d * ctx_.tp()]], 1e-9);
  std::vector<int> micro = cost::deal_by_speed(rank_ms, M_);
  // Every rank must apply the same split, and an all-reduce's floating-point sum may round differently on
  // different ranks: rank 0's decision is the job's.
  ctx_.world().broadcast(micro.data(), dp, DType::I32, 0, {"balance: the split"})->wait();
  std::string line = "balance: micro-batches per rank by centre speed:";
  for (int c = 0; c < C; ++c)
    for (int d = 0; d < dp; ++d)
      if (topo.centre_of[d * ctx_.tp()] == c) {
        line +=
            str(c ? "," : "", " centre ", topo.centre_names[c], ": ", micro[d], " (", ms[c], " ms per micro-batch)");
        break;
      }
  log_info(line);
  apply_split(std::move(micro));
}

template <typename T>
void Job<T>::pace_now() {
  // Time-based inner phases: centre c trains round(H · fastest time / its time) of every H steps (at least
  // one; cost::pace_by_speed), so all centres finish a window together. Once.
  const Topology& topo = ctx_.topology();
  const std::vector<double> ms = centre_ms_per_micro();
  const int64_t H = cfg_.outer_steps;
  const std::vector<int64_t> pace = cost::pace_by_speed(ms, H);
  inner_per_window_.assign(pace.begin(), pace.end());
  std::string line = str("balance: inner steps per window of ", H, " by centre speed:");
  // Ranks that disagreed on the pace would idle on different steps inside one centre and hang its collectives:
  // rank 0's decision is the job's (see balance_now).
  ctx_.world().broadcast(inner_per_window_.data(), topo.centres(), DType::I32, 0, {"balance: the pace"})->wait();
  for (int c = 0; c < topo.centres(); ++c)
    line +=
        str(c ? "," : "", " centre ", topo.centre_names[c], ": ", inner_per_window_[c], " (", ms[c], " ms per step)");
  log_info(line);
}

template class Job<float>;
template class Job<bf16>;

}  // namespace aq
