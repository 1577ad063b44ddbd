// flat.cpp — the backend's own collectives over the whole data-parallel group.
//
// Its cross-centre bytes are not observable from here (the backend chooses its algorithm), so they are those of
// a ring in DP-rank order: a rank whose ring successor sits in another centre sends 2(p−1)/p of an all-reduce's
// bytes ((p−1)/p of a reduce-scatter's or all-gather's) across; wan_ms is the time such collectives were in
// flight. The hierarchical algorithm counts its bytes exactly.
#include <vector>

#include "parallel/algo/dp_algorithm.h"

namespace aq {
namespace {

class FlatAlgorithm final : public DpAlgorithm {
 public:
  explicit FlatAlgorithm(const DpGroups& g) : dp_(*g.dp) {
    if (g.topo && g.topo->centres() > 1) {
      const Topology& t = *g.topo;
      const int p = dp_.size(), next = (dp_.rank() + 1) % p, tp_rank = g.world_rank % t.tp;
      crosses_ = t.centre_of[g.world_rank] != t.centre_of[next * t.tp + tp_rank];
    }
  }
  std::string describe() const override { return "flat (" + dp_.describe() + ")"; }

  WorkPtr all_reduce(float* data, int64_t count, int64_t, const CollectiveOptions& opts) override {
    return track(dp_.all_reduce(data, count, DType::F32, opts), 2.0 * count * sizeof(float));
  }
  WorkPtr reduce_scatter(const float* send, float* recv, int64_t slice, const CollectiveOptions& opts) override {
    return track(dp_.reduce_scatter(send, recv, slice, DType::F32, opts),
                 static_cast<double>(slice) * dp_.size() * sizeof(float));
  }
  WorkPtr all_gather(const void* send, void* recv, int64_t slice, DType dtype, const CollectiveOptions& opts) override {
    return track(dp_.all_gather(send, recv, slice, dtype, opts),
                 static_cast<double>(slice) * dp_.size() * dtype_size(dtype));
  }
  WanStats take_wan_stats() override {
    WanStats s = stats_;
    for (const WorkPtr& w : works_)
      if (w->test()) s.ms += w->completed_ms() - w->started_ms();
    works_.clear();
    stats_ = {};
    return s;
  }

 private:
  // ring_bytes: a ring's bytes per rank for p → ∞ (2n for an all-reduce, n for the others), scaled by (p−1)/p.
  WorkPtr track(WorkPtr w, double ring_bytes) {
    if (crosses_) {
      stats_.bytes += ring_bytes * (dp_.size() - 1) / dp_.size();
      works_.push_back(w);
    }
    return w;
  }
  Backend& dp_;
  bool crosses_ = false;
  WanStats stats_;
  std::vector<WorkPtr> works_;
};

}  // namespace

std::unique_ptr<DpAlgorithm> make_flat_algorithm(const DpGroups& g) { return std::make_unique<FlatAlgorithm>(g); }

}  // namespace aq
