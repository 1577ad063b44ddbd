// hier.cpp — the hierarchical all-reduce: reduce-scatter inside the centre, exchange across centres, all-gather
// inside the centre (dp_algorithm.h), with the slow hop optionally compressed (codec.h).
//
// Stages of one all-reduce of n values on a rank with intra index i in a centre of g DP ranks, S = the number
// of cross-centre shards (the smallest centre's DP size), C centres:
//   0. intra reduce-scatter: ranks 0..S−1 of the centre receive shard i (n/S values) summed over the centre;
//      ranks ≥ S receive nothing (their centre is larger than the smallest one).
//   1. cross A (carriers only, on the cross_rs group): the shard is cut into C chunks; chunk p is encoded
//      (with this rank's error-feedback residual) and sent to the carrier in centre p, who owns it.
//   2. cross B (on cross_ag): the owner decodes the C−1 contributions, adds them to its own chunk in centre
//      order in fp32, encodes the sum once, keeps the decoded value, and sends the encoding to every peer.
//   3. the peers decode; the shard goes back into the buffer; intra all-gather (in place) on intra_ag.
// The cross stage runs on host memory over the host (MPI) cross groups, staging device buffers through the
// host: across centres the link, not PCIe, is the bottleneck, and the cross groups can later be any host
// transport between separately launched centres.
#include <algorithm>
#include <deque>
#include <functional>

#include "parallel/algo/dp_algorithm.h"
#include "runtime/log.h"
#include "runtime/memory.h"
#include "runtime/sysinfo.h"

namespace aq {
namespace {

// Cuts n into k parts, the first n % k one larger: part sizes and offsets.
void split(int64_t n, int k, std::vector<int64_t>& len, std::vector<int64_t>& off) {
  len.assign(static_cast<size_t>(k), 0);
  off.assign(static_cast<size_t>(k), 0);
  for (int p = 0; p < k; ++p) {
    len[p] = n / k + (p < n % k ? 1 : 0);
    if (p) off[p] = off[p - 1] + len[p - 1];
  }
}

// Byte messages travel as 16-bit words (the backends' smallest type); buffers are padded to an even size.
int64_t words(size_t bytes) { return static_cast<int64_t>((bytes + 1) / 2); }

class HierAlgorithm;

// One call in flight: its stages, the Works of the stage that runs, and the buffers they use.
struct HierOp {
  std::string name;
  std::vector<std::function<void(HierOp&)>> stages;
  std::vector<const char*> stage_names;
  size_t started = 0;  // stages started so far
  std::vector<WorkPtr> pending;
  bool done() const {
    if (started < stages.size()) return false;
    for (const WorkPtr& w : pending)
      if (!w->test()) return false;
    return true;
  }
  // Buffers owned by the call.
  std::vector<float> host;                           // the shard in host memory (cross stages)
  DeviceBuffer<float> shard;                          // the intra reduce-scatter's output
  std::vector<std::vector<uint16_t>> out, in;         // encoded chunks, per peer
  std::vector<int64_t> counts, c_len, c_off;
  int64_t off_i = 0, len_i = 0;
};

class HierWork final : public Work {
 public:
  HierWork(HierAlgorithm* algo, std::shared_ptr<HierOp> op, uint64_t seq, const CollectiveOptions& opts);
  bool test() override;
  void wait(double timeout_s) override;

 private:
  HierAlgorithm* algo_;
  std::shared_ptr<HierOp> op_;
};

class HierAlgorithm final : public DpAlgorithm {
 public:
  HierAlgorithm(const DpAlgoOptions& o, const DpGroups& g) : o_(o), g_(g), topo_(*g.topo) {
    AQ_ASSERT(g.intra_rs && g.intra_ag, "hier algorithm without intra-centre groups");
    if (o_.error_feedback && o_.codec != WanCodec::None)
      residual_.assign(static_cast<size_t>(o_.buffer_size), 0.0f);
  }

  std::string describe() const override {
    return str("hier (", topo_.centres(), " centres, ", topo_.cross_shards(), " cross-centre shards, wan-compress ",
               wan_codec_name(o_.codec), o_.codec != WanCodec::None ? (residual_.empty() ? ", no error feedback" :
               ", error feedback") : "", ")");
  }

  WorkPtr all_reduce(float* data, int64_t count, int64_t offset, const CollectiveOptions& opts) override;

  WorkPtr reduce_scatter(const float*, float*, int64_t, const CollectiveOptions&) override {
    fail("--zero 1 with --dp-algo hier is not available yet; use --dp-algo flat with --zero 1");
  }
  WorkPtr all_gather(const void*, void*, int64_t, DType, const CollectiveOptions&) override {
    fail("--zero 1 with --dp-algo hier is not available yet; use --dp-algo flat with --zero 1");
  }

  WanStats take_wan_stats() override {
    WanStats s = stats_;
    stats_ = {};
    return s;
  }
  float* residuals() override { return residual_.empty() ? nullptr : residual_.data(); }

  // Starts every stage that may start: a call's next stage when its current one is done and every earlier call
  // has started that stage already (so each group sees its collectives in call order on every rank).
  void progress() {
    size_t earlier_min = SIZE_MAX;
    for (auto it = live_.begin(); it != live_.end();) {
      HierOp& op = **it;
      for (;;) {
        bool ready = op.started < op.stages.size() && op.started < earlier_min;
        for (const WorkPtr& w : op.pending) ready = ready && w->test();
        if (!ready) break;
        op.pending.clear();
        op.stages[op.started++](op);
      }
      earlier_min = std::min(earlier_min, op.started);
      if (op.done())
        it = live_.erase(it);
      else
        ++it;
    }
  }

  // The call is stuck past its timeout: let the backend Work it waits for report who did not arrive.
  [[noreturn]] void stuck(HierOp& op, double waited) {
    for (const auto& live : live_)
      for (const WorkPtr& w : live->pending)
        if (!w->test()) w->wait(0);  // reports the missing ranks and ends the job
    fail(str("hierarchical all-reduce \"", op.name, "\" made no progress in stage ",
             op.started ? op.stage_names[op.started - 1] : "(none)", " for ", static_cast<int>(waited), " s"));
  }
  double timeout_s() const { return g_.timeout_s; }

 private:
  void wan_begin() {
    if (wan_active_++ == 0) wan_t0_ = steady_ms();
  }
  void wan_end() {
    if (--wan_active_ == 0) stats_.ms += steady_ms() - wan_t0_;
  }

  DpAlgoOptions o_;
  DpGroups g_;
  const Topology& topo_;
  std::vector<float> residual_;  // error feedback, over the gradient buffer
  std::deque<std::shared_ptr<HierOp>> live_;
  uint64_t seq_ = 0;
  WanStats stats_;
  int wan_active_ = 0;
  double wan_t0_ = 0;
};

HierWork::HierWork(HierAlgorithm* algo, std::shared_ptr<HierOp> op, uint64_t seq, const CollectiveOptions& opts)
    : Work(seq, opts.name, "hierarchical all_reduce", opts.timeout_s), algo_(algo), op_(std::move(op)) {}

bool HierWork::test() {
  if (completed_ms_ > 0) return true;
  algo_->progress();
  if (!op_->done()) return false;
  completed_ms_ = steady_ms();
  return true;
}

void HierWork::wait(double timeout_s) {
  poll_until_done(timeout_s, algo_->timeout_s(), [&](double waited) { algo_->stuck(*op_, waited); });
}

WorkPtr HierAlgorithm::all_reduce(float* data, int64_t count, int64_t offset, const CollectiveOptions& opts) {
  auto op = std::make_shared<HierOp>();
  op->name = opts.name;
  Backend& intra_rs = *g_.intra_rs;
  Backend& intra_ag = *g_.intra_ag;
  Backend* xrs = g_.cross_rs;
  Backend* xag = g_.cross_ag;
  const int g = intra_rs.size(), i = intra_rs.rank(), S = topo_.cross_shards();
  op->counts.assign(static_cast<size_t>(g), 0);
  {
    std::vector<int64_t> len, off;
    split(count, S, len, off);
    for (int k = 0; k < S; ++k) op->counts[k] = len[k];
    if (i < S) op->off_i = off[i], op->len_i = len[i];
  }
  const bool carrier = xrs && xrs->size() > 1 && op->len_i > 0;
  const Device dev = o_.device;
  // Where this rank's shard lives on the buffers' device during the cross stage.
  float* shard = data + op->off_i;
  if (g > 1) {  // the reduce-scatter needs a separate output; ranks without a shard receive nothing
    if (op->len_i > 0) op->shard = DeviceBuffer<float>(dev, static_cast<size_t>(op->len_i));
    shard = op->shard.data();
  }
  // Host view of the shard: the shard itself on the CPU, a staging copy for device buffers.
  const bool staged = dev != Device::CPU;
  const std::string nm = opts.name;

  op->stage_names = {"intra-centre reduce-scatter", "cross-centre exchange (to owners)",
                     "cross-centre exchange (from owners)", "intra-centre all-gather"};
  // 0: intra reduce-scatter.
  op->stages.push_back([=, &intra_rs](HierOp& o) {
    if (g > 1)
      o.pending.push_back(intra_rs.reduce_scatter_v(data, shard, o.counts, DType::F32, {nm + " (intra reduce-scatter)"}));
  });
  // 1: encode chunk p for its owner p; post the receives of this rank's own chunk, then the sends.
  op->stages.push_back([=, this](HierOp& o) {
    if (!carrier) return;
    wan_begin();
    const int C = xrs->size(), j = xrs->rank();
    float* h = shard;
    if (staged) {
      o.host.resize(static_cast<size_t>(o.len_i));
      device_copy(o.host.data(), Device::CPU, shard, dev, o.host.size() * sizeof(float));
      h = o.host.data();
    }
    split(o.len_i, C, o.c_len, o.c_off);
    o.out.resize(static_cast<size_t>(C));
    o.in.resize(static_cast<size_t>(C));
    for (int p = 0; p < C; ++p) {
      if (p == j) continue;
      o.in[p].resize(static_cast<size_t>(words(codec_bytes(o_.codec, o.c_len[j]))));
      o.pending.push_back(xrs->recv(o.in[p].data(), static_cast<int64_t>(o.in[p].size()), DType::U16, p,
                                    {nm + " (cross-centre, to owner)"}));
    }
    for (int p = 0; p < C; ++p) {
      if (p == j) continue;
      const size_t bytes = codec_bytes(o_.codec, o.c_len[p]);
      o.out[p].assign(static_cast<size_t>(words(bytes)), 0);
      float* res = residual_.empty() ? nullptr : residual_.data() + offset + o.off_i + o.c_off[p];
      codec_encode(o_.codec, h + o.c_off[p], res, o.c_len[p], reinterpret_cast<uint8_t*>(o.out[p].data()));
      o.pending.push_back(xrs->send(o.out[p].data(), static_cast<int64_t>(o.out[p].size()), DType::U16, p,
                                    {nm + " (cross-centre, to owner)"}));
      stats_.bytes += 2.0 * static_cast<double>(o.out[p].size());
    }
  });
  // 2: the owner's sum, encoded once, sent to every peer; receive the other owners' chunks.
  op->stages.push_back([=, this](HierOp& o) {
    if (!carrier) return;
    const int C = xrs->size(), j = xrs->rank();
    float* h = staged ? o.host.data() : shard;
    float* mine = h + o.c_off[j];
    const int64_t m = o.c_len[j];
    std::vector<float> acc(static_cast<size_t>(m), 0.0f);
    for (int p = 0; p < C; ++p) {  // centre order: the same sum on every run
      if (p == j)
        for (int64_t k = 0; k < m; ++k) acc[k] += mine[k];
      else
        codec_decode(o_.codec, reinterpret_cast<const uint8_t*>(o.in[p].data()), m, acc.data(), true);
    }
    const size_t bytes = codec_bytes(o_.codec, m);
    std::vector<uint16_t> enc(static_cast<size_t>(words(bytes)), 0);
    float* res = residual_.empty() ? nullptr : residual_.data() + offset + o.off_i + o.c_off[j];
    codec_encode(o_.codec, acc.data(), res, m, reinterpret_cast<uint8_t*>(enc.data()));
    codec_decode(o_.codec, reinterpret_cast<const uint8_t*>(enc.data()), m, mine, false);  // as the peers see it
    for (int p = 0; p < C; ++p) {
      if (p == j) continue;
      o.in[p].resize(static_cast<size_t>(words(codec_bytes(o_.codec, o.c_len[p]))));
      o.pending.push_back(xag->recv(o.in[p].data(), static_cast<int64_t>(o.in[p].size()), DType::U16, p,
                                    {nm + " (cross-centre, from owner)"}));
    }
    o.out[j] = std::move(enc);
    for (int p = 0; p < C; ++p) {
      if (p == j) continue;
      o.pending.push_back(xag->send(o.out[j].data(), static_cast<int64_t>(o.out[j].size()), DType::U16, p,
                                    {nm + " (cross-centre, from owner)"}));
      stats_.bytes += 2.0 * static_cast<double>(o.out[j].size());
    }
  });
  // 3: decode the other owners' chunks, put the shard back, all-gather inside the centre.
  op->stages.push_back([=, this, &intra_ag](HierOp& o) {
    if (carrier) {
      const int C = xrs->size(), j = xrs->rank();
      float* h = staged ? o.host.data() : shard;
      for (int p = 0; p < C; ++p)
        if (p != j) codec_decode(o_.codec, reinterpret_cast<const uint8_t*>(o.in[p].data()), o.c_len[p], h + o.c_off[p], false);
      if (staged) device_copy(shard, dev, h, Device::CPU, static_cast<size_t>(o.len_i) * sizeof(float));
      wan_end();
    }
    if (g > 1) {
      if (o.len_i > 0) device_copy(data + o.off_i, dev, shard, dev, static_cast<size_t>(o.len_i) * sizeof(float));
      o.pending.push_back(intra_ag.all_gather_v(data + o.off_i, data, o.counts, DType::F32, {nm + " (intra all-gather)"}));
    }
  });
  live_.push_back(op);
  auto w = std::make_shared<HierWork>(this, op, ++seq_, opts);
  progress();  // starts stage 0 now (every earlier call has started it), and whatever else may start
  return w;
}

}  // namespace

std::unique_ptr<DpAlgorithm> make_flat_algorithm(const DpGroups& g);

std::unique_ptr<DpAlgorithm> make_dp_algorithm(const DpAlgoOptions& o, const DpGroups& g) {
  if (o.algo == "flat") return make_flat_algorithm(g);
  if (o.algo == "hier") return std::make_unique<HierAlgorithm>(o, g);
  fail(str("--dp-algo must be flat or hier (got \"", o.algo, "\")"));
}

}  // namespace aq
