// cost_model.h — an α–β–γ model of one data-parallel training step across centres: what a layout, algorithm,
// compression and link rates cost, before anyone rents the machines.
//
// Every cost expression lives in cost_model.cpp, next to the guide's formula it implements (GUIDE.md, "Across
// centres"). Inputs come from a Calibration: α (s) and bandwidth (bytes/s) per link class, measured by a
// ping-pong sweep on the actual world (aq-bench calibrate) or assumed for a what-if; compute per token of the
// configuration (a one-process step measured under the job's own contention, or FLOPs / (peak · MFU)); codec
// throughput (γ of the slow hop: encode and decode, fp32 bytes per second).
// A centre's WAN link is one pipe per direction shared by all of its ranks (what scripts/wan_testbed.sh builds,
// and what a leased line between two sites is): its bandwidth is the centre's aggregate, not a per-GPU NIC.
// Not modelled: latency jitter, TCP slow start after idle, contention between a link's flows beyond fair
// sharing, pipelining of one bucket's stages. Centres of unequal speed are modelled by the balance rules below
// (predict_balance_sync, predict_balance_diloco); the collectives take C centres of g equal DP ranks.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "parallel/algo/codec.h"

namespace aq::cost {

// One link class: time(bytes) = α + bytes/bandwidth.
struct Link {
  double alpha_s = 0;        // latency of one message
  double bytes_per_s = 1e9;  // sustained bandwidth of the pipe, one direction
  double time(double bytes) const { return alpha_s + bytes / bytes_per_s; }
};

struct Calibration {
  Link node;    // two ranks of one node (shared memory, NVLink, or loopback TCP)
  Link centre;  // two nodes of one centre (InfiniBand, Ethernet)
  Link wan;     // one centre's link to the others (one direction), one flow at a time
  // The same link as hier's exchange loads it: every carrier pair sending both ways at once. A shaped link's
  // queue holds each direction's ACKs behind the other direction's data, and the more a stage sends, the longer
  // that queue and the round trip: on the testbed the exchange ran at 74% of the one-flow rate for 1 MiB and 60%
  // for 4 MiB. So it is a measured curve, not one β (as simulators use measured collective curves): pairs of
  // (bytes one stage puts on a centre's link, bandwidth achieved), ascending, interpolated in log(bytes) and
  // held flat beyond its ends; α stays `wan`'s. Empty: not measured, use `wan`.
  std::vector<std::pair<double, double>> wan_exchange;
  double exchange_bytes_per_s(double stage_bytes) const;  // the curve at this size, or wan.bytes_per_s
  // Compute of one rank per token of its batch: forward + backward + optimizer, measured on the configuration
  // with every rank of the job computing at once (so shared cores are priced in).
  double compute_s_per_token = 0;
  // The same per centre (index: centre), when the centres differ (a throttled or slower centre): each centre's
  // slowest rank. Empty: every centre computes at compute_s_per_token.
  std::vector<double> centre_compute_s_per_token;
  double backward_share = 2.0 / 3.0;  // the part of compute that is backward: the window buckets overlap with
  // Codec throughput in fp32 bytes per second, indexed by WanCodec (None: a copy).
  double encode_bytes_per_s[kWanCodecs] = {10e9, 2e9, 1e9, 1e9};
  double decode_bytes_per_s[kWanCodecs] = {10e9, 2e9, 1e9, 1e9};
  std::string source = "assumed";  // where the numbers came from (printed with every prediction)
};

// How the data-parallel gradient all-reduce runs.
enum class Algo {
  FlatRing,      // a ring through every DP rank in rank order (NCCL's, nccl-tests' busbw assumption)
  FlatBinomial,  // Open MPI 4.1 libnbc's in-place MPI_Iallreduce: binomial reduce to rank 0, then broadcast
  Hier,          // parallel/algo/hier.cpp: intra reduce-scatter, cross-centre exchange per shard, intra all-gather
};
const char* algo_name(Algo a);

struct Layout {
  int centres = 1;         // C
  int dp_per_centre = 1;   // g: data-parallel ranks of each centre (per TP rank)
  int ranks_per_node = 1;  // DP ranks sharing a node: within them the node link, beyond them the centre link
  int dp() const { return centres * dp_per_centre; }
};

struct StepJob {
  double params = 0;                     // gradient values per rank (the model's parameters / tp)
  double tokens_per_rank = 0;            // B·T of one rank per step
  double bucket_bytes = 25 * 1048576.0;  // --bucket-mb
  Layout layout;
  Algo algo = Algo::Hier;
  WanCodec codec = WanCodec::None;
};

// One all-reduce of n fp32 values.
struct Collective {
  double seconds = 0;
  double wan_bytes_per_centre = 0;  // bytes one centre sends to others (the busiest centre)
  double wan_bytes_total = 0;       // bytes all centres send to others
  double wan_seconds = 0;           // of `seconds`, time on the WAN stages
};

struct Prediction {
  double compute_s = 0;             // forward + backward + optimizer of one rank
  double comm_s = 0;                // the gradient all-reduces, launch to completion, summed over buckets
  double exposed_s = 0;             // what overlap with backward did not hide (plus the per-step loss all-reduce)
  double step_s = 0;                // compute_s + exposed_s
  double wan_bytes_per_centre = 0;  // per step, the busiest centre
  double wan_bytes_job = 0;         // per step, all centres
  int buckets = 0;
};

// --- the formulas (cost_model.cpp; guide references there) ---
// Ring all-reduce of n bytes over p ranks on one link class: 2(p−1)α + 2(p−1)/p·n·β.
double ring_all_reduce_s(int p, double n_bytes, const Link& l);
// Ring reduce-scatter or all-gather of n bytes (the whole buffer) over p ranks: (p−1)α + (p−1)/p·n·β.
double ring_half_s(int p, double n_bytes, const Link& l);
// n fp32 values all-reduced by `algo` over `layout` with `codec` on the slow hop.
Collective all_reduce(Algo algo, WanCodec codec, const Layout& layout, double n_values, const Calibration& cal);
// The step: compute, then buckets launched as backward frees them and served one at a time (they share the
// links), the last one after backward; exposed = when the last finishes − when backward finished.
Prediction predict_step(const StepJob& job, const Calibration& cal);
// Bucket sizes in bytes, as parallel/grad_sync.cpp cuts a buffer of n values (approximately: it cuts at tensor
// boundaries, this cuts evenly).
std::vector<double> bucket_bytes(double n_values, double bucket_bytes);

// DiLoCo across centres (--outer diloco): each centre steps on its own (its own data-parallel all-reduce inside
// the centre), and every H steps the parameter change crosses centres as one hierarchical all-reduce of the
// model, cut into F fragments on a staggered schedule; with overlap τ a fragment's exchange runs behind τ
// compute steps and only what does not fit is exposed.
struct DilocoJob {
  StepJob inner;    // the step inside a centre (its layout: centres = 1) and the model
  int centres = 2;  // C
  int64_t H = 50;
  int F = 1;
  int64_t tau = 0;
  WanCodec codec = WanCodec::None;  // of the outer exchange
};
struct DilocoPrediction {
  double step_s = 0;              // inner step + the outer exchanges' exposed time, averaged over H steps
  double exposed_s = 0;           // of step_s: outer exchange not hidden (averaged per step)
  double utilisation = 0;         // compute share of the step: compute / step
  double wan_bytes_per_step = 0;  // per centre, averaged
  double fragment_exchange_s = 0;
};
DilocoPrediction predict_diloco(const DilocoJob& job, const Calibration& cal);
// The WAN rate (bytes/s per centre and direction) at which the job reaches `utilisation` (0..1), by bisection
// over the rate; +inf when even an infinite rate does not (latency or compute-side costs).
double wan_rate_for_utilisation(const DilocoJob& job, Calibration cal, double utilisation);

// --- centres of different speed (--balance; train/balance.cpp applies the same rules) ---
// Synchronous data parallelism: the M micro-batches of a step go one at a time to the rank that would finish
// it earliest — smallest (k_d + 1)·ms_d, ties to the lower rank — after one each. For equal jobs on machines
// of different speed this greedy rule minimises the slowest rank's time, which is the step's; rounding the ideal
// shares does not (15 micro-batches at 1 and 1.3 ms: shares 8.48 + 6.52 round to 8 + 7, a step of 9.1 ms, where
// 9 + 6 takes 9). M >= the ranks; every rank gets at least one.
std::vector<int> deal_by_speed(const std::vector<double>& ms_per_micro, int64_t M);
// DiLoCo with time-based inner phases: centre c trains a_c = round(H · t_fastest / t_c) of every window of H
// steps (1 … H), so every centre finishes a window about when the fastest does.
std::vector<int64_t> pace_by_speed(const std::vector<double>& ms_per_step, int64_t H);

struct BalanceJob {
  std::vector<double> centre_s_per_token;  // compute per token of one rank of each centre
  std::vector<int> dp_per_centre;          // its data-parallel ranks
  double tokens_per_micro = 0;             // B·T of one micro-batch
  int64_t micro_batches = 0;               // M: one step's micro-batches over all DP ranks (synchronous)
  double sync_s = 0;                       // synchronous: what a step adds after the last micro-batch, on
                                           // every rank at once (the exposed gradient exchange: predict_step)
  int64_t H = 50;                          // DiLoCo: inner steps per window, micro-batches per inner step,
  int micro_per_step = 1;                  // and the outer exchange's exposed time per window (predict_diloco)
  double outer_s_per_window = 0;
};
struct BalancePrediction {
  std::vector<int64_t> share;          // per centre: micro-batches of each rank per step (synchronous), or
                                       // inner steps per window (DiLoCo)
  double period_s = 0;                 // one step (synchronous) or one window (DiLoCo)
  double compute_s = 0;                // of it, the slowest centre's compute
  std::vector<double> waiting_share;   // per centre: the part of the period its ranks do not compute
  double tokens_per_s = 0;             // the job's
  double standalone_tokens_per_s = 0;  // Σ_c dp_c / (t_c per token): every centre training by itself
};
// `balanced` false: the even split (synchronous: M/dp each; DiLoCo: every centre trains every step).
BalancePrediction predict_balance_sync(const BalanceJob& job, bool balanced);
BalancePrediction predict_balance_diloco(const BalanceJob& job, bool balanced);

// Compute per token from FLOPs: (6N + 6·L·C·T) / (peak_flops · mfu) (aq-bench's MFU convention).
double compute_s_per_token_from_flops(double params, int layers, int dim, int seq, double peak_flops, double mfu);

}  // namespace aq::cost
