// dp_algorithm.h — how the data-parallel ranks reduce gradients: an algorithm composed from backend calls,
// kept apart from the backends (Horovod's ordered algorithm list, c10d's comm hooks), so every algorithm runs
// on every backend.
//   * flat: the backend's own all-reduce over the whole DP group (one ring or tree through every rank);
//   * hier: reduce-scatter inside each centre (fast network) → exchange across centres, each shard carried by
//     one rank per centre in parallel, optionally compressed (codec.h) → all-gather inside the centre. A flat
//     ring across two centres pushes 2(p−1)/p·n bytes per rank over the WAN with 2(p−1) latencies; the
//     hierarchy pushes 2(C−1)/C·n/g per carrying rank with 2 latencies (C centres of g DP ranks).
// Each call returns a Work whose stages advance from test(), so gradient buckets keep overlapping backward.
// Every rank of the DP group must call the algorithm's collectives in the same order with the same counts
// (the backends' rule); the algorithm itself starts each stage of its calls in call order, which keeps the
// stage collectives matched on every rank even when they complete in another order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "parallel/algo/codec.h"
#include "parallel/backend.h"
#include "parallel/topology.h"

namespace aq {

// Cross-centre traffic of this rank since the last take: bytes it sent to other centres, and milliseconds
// during which at least one of its cross-centre stages was in flight.
struct WanStats {
  double bytes = 0, ms = 0;
};

class DpAlgorithm {
 public:
  virtual ~DpAlgorithm() = default;
  virtual std::string describe() const = 0;
  // In place, fp32, the sum over the DP group. `offset` is the position of data[0] in the gradient buffer:
  // error-feedback residuals are kept per position, so each call site must pass the same offset every step.
  virtual WorkPtr all_reduce(float* data, int64_t count, int64_t offset, const CollectiveOptions& opts) = 0;
  // ZeRO-1: send holds dp·slice fp32 values; DP rank d receives the sum of block d.
  virtual WorkPtr reduce_scatter(const float* send, float* recv, int64_t slice, const CollectiveOptions& opts) = 0;
  // ZeRO-1: recv holds dp·slice values; DP rank d contributes block d (send may be recv + d·slice).
  virtual WorkPtr all_gather(const void* send, void* recv, int64_t slice, DType dtype,
                             const CollectiveOptions& opts) = 0;
  virtual WanStats take_wan_stats() = 0;
  // Error feedback: a host copy of this rank's residuals over the gradient buffer; false without error
  // feedback. Inside a centre every position is quantised by at most one rank, so the sum over the centre's
  // DP ranks is the centre's residual, which is what a checkpoint keeps.
  virtual bool keeps_residuals() const { return false; }
  virtual bool residuals(std::vector<float>& host) {
    (void)host;
    return false;
  }
  // Resume: the centre's residual (buffer_size values). Each position is handed to the rank that quantises it,
  // the first time it does (so another layout inside the centre works too).
  virtual void restore_residuals(std::vector<float> centre_residual) { (void)centre_residual; }
  // Drops what restore_residuals handed over and no rank of this one claimed: call once every position has been
  // quantised at least once since (one step; H steps with DiLoCo).
  virtual void drop_unclaimed_residuals() {}
  // How many calls a background thread saw complete (progress_in_background below); 0 for the others.
  virtual int64_t completed_in_background() const { return 0; }
};

struct DpAlgoOptions {
  std::string algo = "flat";              // flat | hier
  WanCodec codec = WanCodec::None;        // hier only
  bool error_feedback = false;            // hier with a lossy codec only
  int64_t buffer_size = 0;                // gradient buffer length (residuals)
  Device device = Device::CPU;            // where the reduced buffers live
};

// The DP groups an algorithm may use, from ParallelContext: the whole DP group on the buffers' device, and the
// centre-aware ones (intra groups on the device, one for reduce-scatters and one for all-gathers so the two
// stages never share a communicator; cross groups in host memory, null where this rank carries no shard).
struct DpGroups {
  Backend* dp = nullptr;
  Backend* intra_rs = nullptr;
  Backend* intra_ag = nullptr;
  Backend* cross_rs = nullptr;
  Backend* cross_ag = nullptr;
  const Topology* topo = nullptr;
  int world_rank = 0;
  double timeout_s = 300;  // --comm-timeout: how long one call may take before the stuck stage is reported
};

std::unique_ptr<DpAlgorithm> make_dp_algorithm(const DpAlgoOptions& opts, const DpGroups& groups);

// `inner`, with a thread that tests its calls in flight every `poll_ms` (background.cpp), so they advance
// while the caller computes instead of only when it tests them: what DiLoCo's --outer-overlap needs on a slow
// link. Results are inner's, bit for bit. Only for an algorithm whose communicators nothing else uses, and only
// where MPI allows calls from two threads (ParallelContext::threads_multiple()).
std::unique_ptr<DpAlgorithm> progress_in_background(std::unique_ptr<DpAlgorithm> inner, double poll_ms = 1.0);

}  // namespace aq
