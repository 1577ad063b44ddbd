// hier.cpp — the hierarchical algorithm: the fast network inside a centre, one exchange per shard across
// centres, the slow hop optionally compressed (dp_algorithm.h, codec.h).
//
// All-reduce of n values on a rank with intra index i in a centre of g DP ranks; S = the number of cross-centre
// shards (the smallest centre's DP size); C centres:
//   0. intra reduce-scatter: ranks 0..S−1 of the centre receive shard i (n/S values) summed over the centre;
//      ranks ≥ S receive nothing (their centre is larger than the smallest one).
//   1. cross A (carriers only, on the cross_rs group): the shard is cut into C chunks; chunk p is encoded
//      (with this rank's error-feedback residual) and sent to the carrier in centre p, who owns it.
//   2. cross B (on cross_ag): the owner decodes the C−1 contributions, adds them to its own chunk in centre
//      order in fp32, encodes the sum once, keeps the decoded value, and sends the encoding to every peer.
//   3. the peers decode; the shard goes back into the buffer; intra all-gather (in place) on intra_ag.
// ZeRO-1 (equal centres holding contiguous rank blocks, so DP rank d = c·g + i): the reduce-scatter runs C intra
// reduce-scatters (segment c' gives rank i the centre's sum of slice c'·g + i), then cross A delivers each
// slice to its owner, who adds in fp32 (no second hop, so no re-encoding); the parameter all-gather sends each
// slice to the other centres (uncompressed: weights are not compressed) and runs C in-place intra all-gathers.
// Values stay on the buffers' device: GPU buffers are encoded and decoded by the CUDA codecs (codec_cuda.h), and
// only the encoded bytes travel through host memory to the host (MPI) cross groups, which can later be any host
// transport between separately launched centres.
#include <algorithm>
#include <deque>
#include <functional>

#include "parallel/algo/dp_algorithm.h"
#ifdef AQ_HAVE_CUDA
#include "parallel/algo/codec_cuda.h"
#endif
#include "runtime/log.h"
#include "runtime/memory.h"
#include "runtime/sysinfo.h"
#include "runtime/trace.h"

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
using Words = std::vector<uint16_t>;
Words words_for(size_t bytes) { return Words((bytes + 1) / 2, 0); }
uint8_t* bytes_of(Words& w) { return reinterpret_cast<uint8_t*>(w.data()); }
const uint8_t* bytes_of(const Words& w) { return reinterpret_cast<const uint8_t*>(w.data()); }

// The communicators a stage uses. Stages of one family start in (call, stage) order on every rank. The two
// intra-centre communicators form one family when their backend needs one issue order across communicators
// (the staged backend blocks; NCCL asks for it), so an all-gather of one call and the reduce-scatter of the next
// never swap there; over MPI's non-blocking collectives each communicator is its own family (IntraAg apart),
// which lets one bucket's reduce-scatter start while an earlier one is still crossing centres.
enum class Family { Compute, Intra, IntraAg, CrossRs, CrossAg };

// One call in flight: its stages, the Works of the stage that runs, and the buffers they use.
struct HierOp {
  // Buffers owned by the call, declared before `pending` so they outlive the Works writing into them.
  DeviceBuffer<float> shard;     // intra reduce-scatter output on the buffers' device
  std::vector<Words> out, in;    // encoded chunks, per peer
  std::vector<int64_t> counts, c_len, c_off;
  int64_t off_i = 0, len_i = 0;

  std::string name;
  std::vector<std::function<void(HierOp&)>> stages;
  std::vector<const char*> stage_names;
  std::vector<Family> families;
  size_t started = 0;  // stages started so far
  std::vector<WorkPtr> pending;
  // --trace: when the running stage started and what it sent across centres.
  int64_t stage_t0 = 0;
  double stage_bytes = 0;
  ~HierOp() { pending.clear(); }  // an abandoned call finishes its requests while its buffers still exist

  bool done() const {
    if (started < stages.size()) return false;
    for (const WorkPtr& w : pending)
      if (!w->test()) return false;
    return true;
  }
  void add_stage(const char* what, Family f, std::function<void(HierOp&)> fn) {
    stage_names.push_back(what);
    families.push_back(f);
    stages.push_back(std::move(fn));
  }
  // --trace: the running stage, now seen complete, as a span on the cross-centre stream.
  void trace_stage_end() {
    if (started == 0 || stage_t0 == 0 || !trace::active()) return;
    trace::record(trace::Stream::CrossCentre, str("hier: ", stage_names[started - 1]), stage_t0, trace::now_ns(),
                  {{"stage", static_cast<double>(started - 1)}, {"wan_bytes_sent", stage_bytes}}, name);
    stage_t0 = 0;  // recorded once, by whoever saw the stage complete first
  }
  // Whether every stage of family f has started (so a later call may start one).
  bool started_all(Family f) const {
    for (size_t s = started; s < stages.size(); ++s)
      if (families[s] == f) return false;
    return true;
  }
};

class HierAlgorithm;

class HierWork final : public Work {
 public:
  HierWork(HierAlgorithm* algo, std::shared_ptr<HierOp> op, uint64_t seq, const CollectiveOptions& opts, const char* what)
      : Work(seq, opts.name, what, opts.timeout_s), algo_(algo), op_(std::move(op)) {}
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
      residual_ = DeviceBuffer<float>(o_.device, static_cast<size_t>(o_.buffer_size));
  }

  std::string describe() const override {
    return str("hier (", topo_.centres(), " centres, ", topo_.cross_shards(), " cross-centre shards, wan-compress ",
               wan_codec_name(o_.codec), o_.codec != WanCodec::None ? (!residual_.size() ? ", no error feedback" :
               ", error feedback") : "", ")");
  }

  WorkPtr all_reduce(float* data, int64_t count, int64_t offset, const CollectiveOptions& opts) override;
  WorkPtr reduce_scatter(const float* send, float* recv, int64_t slice, const CollectiveOptions& opts) override;
  WorkPtr all_gather(const void* send, void* recv, int64_t slice, DType dtype, const CollectiveOptions& opts) override;

  WanStats take_wan_stats() override {
    WanStats s = stats_;
    stats_ = {};
    return s;
  }
  bool keeps_residuals() const override { return residual_.size() > 0; }
  bool residuals(std::vector<float>& host) override {
    if (!residual_.size()) return false;
    host.resize(residual_.size());
    device_copy(host.data(), Device::CPU, residual_.data(), o_.device, host.size() * sizeof(float));
    return true;
  }
  void drop_unclaimed_residuals() override {
    pending_residual_.clear();
    pending_residual_.shrink_to_fit();
  }
  void restore_residuals(std::vector<float> centre) override {
    if (!residual_.size()) return;
    AQ_ASSERT(centre.size() == residual_.size(), "residuals of ", centre.size(), " values for a buffer of ",
              residual_.size());
    device_zero(o_.device, residual_.data(), residual_.size() * sizeof(float));
    pending_residual_ = std::move(centre);
  }

  // Starts every stage that may start: a call's next stage when its current one is done and every earlier call
  // has started all its stages of the same family, so every communicator (and the intra-centre pair together)
  // sees its collectives in one order on every rank, whatever order they complete in.
  void progress() {
    for (auto it = live_.begin(); it != live_.end();) {
      HierOp& op = **it;
      for (;;) {
        if (op.started == op.stages.size()) break;
        bool ready = true;
        for (const WorkPtr& w : op.pending) ready = ready && w->test();
        const Family f = op.families[op.started];
        for (auto e = live_.begin(); ready && e != it; ++e) ready = (*e)->started_all(f);
        if (!ready) break;
        op.pending.clear();
        op.trace_stage_end();
        const double bytes0 = stats_.bytes;
        op.stage_t0 = trace::active() ? trace::now_ns() : 0;  // a stage begun outside the window is not drawn
        op.stages[op.started++](op);
        op.stage_bytes = stats_.bytes - bytes0;
      }
      if (op.done()) {
        op.trace_stage_end();
        it = live_.erase(it);
      } else {
        ++it;
      }
    }
  }

  // A call is stuck past its timeout: let the backend Work it waits for report who did not arrive.
  [[noreturn]] void stuck(HierOp& op, double waited) {
    log_error(str("aq: error: hierarchical collective \"", op.name, "\" made no progress for ", static_cast<int>(waited),
                  " s (", op.started ? op.stage_names[op.started - 1] : "first stage", "); the request it waits for:"));
    for (const auto& live : live_)
      for (const WorkPtr& w : live->pending)
        if (!w->test()) w->wait(0);  // reports the missing ranks and ends the job
    fail(str("hierarchical collective \"", op.name, "\" made no progress in its ",
             op.started ? op.stage_names[op.started - 1] : "first stage", " for ", static_cast<int>(waited),
             " s; raise --comm-timeout if a step legitimately takes longer"));
  }
  double timeout_s() const { return g_.timeout_s; }

 private:
  Family intra_ag_family() const {
    return g_.intra_rs->needs_global_issue_order() || g_.intra_ag->needs_global_issue_order() ? Family::Intra
                                                                                               : Family::IntraAg;
  }
  WorkPtr launch(std::shared_ptr<HierOp> op, const CollectiveOptions& opts, const char* what) {
    live_.push_back(op);
    auto w = std::make_shared<HierWork>(this, op, ++seq_, opts, what);
    progress();  // starts whatever may start now (stage 0, unless an earlier call holds its family)
    return w;
  }
  // The residual of n values at gradient position pos, with what a restored checkpoint holds for them moved in
  // on first use; null without error feedback.
  float* residual_at(int64_t pos, int64_t n) {
    if (!residual_.size()) return nullptr;
    float* r = residual_.data() + pos;
    if (!pending_residual_.empty()) {
      float* q = pending_residual_.data() + pos;
      add_into(r, q, Device::CPU, n);
      std::fill(q, q + n, 0.0f);
    }
    return r;
  }
  // The codecs on the buffers' device. GPU values are encoded there, and only the encoded bytes are copied to
  // and from the host words that the cross groups carry.
  void encode(const float* x, float* residual, int64_t n, Words& out) {
    out = words_for(codec_bytes(o_.codec, n));
    if (o_.device == Device::CPU) return codec_encode(o_.codec, x, residual, n, bytes_of(out));
#ifdef AQ_HAVE_CUDA
    DeviceBuffer<uint8_t> wire(o_.device, codec_bytes(o_.codec, n), DeviceBuffer<uint8_t>::Uninitialized{});
    cuda::codec_encode(o_.codec, x, residual, n, wire.data());
    device_copy(out.data(), Device::CPU, wire.data(), o_.device, wire.size());
#endif
  }
  void decode(const Words& in, int64_t n, float* acc, bool add) {
    if (o_.device == Device::CPU) return codec_decode(o_.codec, bytes_of(in), n, acc, add);
#ifdef AQ_HAVE_CUDA
    DeviceBuffer<uint8_t> wire(o_.device, codec_bytes(o_.codec, n), DeviceBuffer<uint8_t>::Uninitialized{});
    device_copy(wire.data(), o_.device, in.data(), Device::CPU, wire.size());
    cuda::codec_decode(o_.codec, wire.data(), n, acc, add);
#endif
  }
  // The owner's sum of its chunk (m values): acc (zeros) += every centre's contribution in centre order, its own
  // (`own`, on the device) and the decoded ones received in o.in, so every run adds in the same order.
  void owner_sum(float* acc, const float* own, const HierOp& o, int j, int64_t m) {
    for (int p = 0; p < static_cast<int>(o.in.size()); ++p) {
      if (p == j)
        add_into(acc, own, o_.device, m);
      else
        decode(o.in[p], m, acc, true);
    }
  }
  // acc (n, on the buffers' device) += x (n, on `where`).
  void add_into(float* acc, const float* x, Device where, int64_t n) {
    if (o_.device == Device::CPU) {
      for (int64_t k = 0; k < n; ++k) acc[k] += x[k];
      return;
    }
#ifdef AQ_HAVE_CUDA
    const float* src = x;
    DeviceBuffer<float> staged;
    if (where == Device::CPU) {
      staged = DeviceBuffer<float>(o_.device, static_cast<size_t>(n));
      device_copy(staged.data(), o_.device, x, Device::CPU, static_cast<size_t>(n) * sizeof(float));
      src = staged.data();
    }
    cuda::codec_decode(WanCodec::None, reinterpret_cast<const uint8_t*>(src), n, acc, true);
#else
    (void)where;
#endif
  }
  // Posts the receives (one message of in[p].size() words from each peer p ≠ me), then the sends of out[p].
  void exchange(HierOp& o, Backend& b, bool send_same, const std::string& what) {
    const int C = b.size(), me = b.rank();
    // The peer's centre in the name: a timeout then says whom this rank was waiting for.
    auto name = [&](int p) { return str(what, ", centre ", topo_.centre_names[static_cast<size_t>(p)]); };
    for (int p = 0; p < C; ++p)
      if (p != me)
        o.pending.push_back(b.recv(o.in[p].data(), static_cast<int64_t>(o.in[p].size()), DType::U16, p, {name(p)}));
    for (int p = 0; p < C; ++p) {
      if (p == me) continue;
      const Words& w = send_same ? o.out[me] : o.out[p];
      o.pending.push_back(b.send(w.data(), static_cast<int64_t>(w.size()), DType::U16, p, {name(p)}));
      stats_.bytes += 2.0 * static_cast<double>(w.size());
    }
  }
  void wan_begin() {
    if (wan_active_++ == 0) wan_t0_ = steady_ms();
  }
  void wan_end() {
    if (--wan_active_ == 0) stats_.ms += steady_ms() - wan_t0_;
  }
  void check_zero_layout() const {
    AQ_CHECK(topo_.uniform_blocks(), "--zero 1 with --dp-algo hier needs centres of equal size holding contiguous ",
             "blocks of ranks (", topo_.describe(), "); launch each centre's ranks together with equal counts, or use ",
             "--dp-algo flat");
  }

  DpAlgoOptions o_;
  DpGroups g_;
  const Topology& topo_;
  DeviceBuffer<float> residual_;         // error feedback, over the gradient buffer (on the buffers' device)
  std::vector<float> pending_residual_;  // restored from a checkpoint, claimed range by range on first use
  std::deque<std::shared_ptr<HierOp>> live_;
  uint64_t seq_ = 0;
  WanStats stats_;
  int wan_active_ = 0;
  double wan_t0_ = 0;
};

bool HierWork::test() {
  if (completed_ms_ > 0) return true;
  algo_->progress();
  if (!op_->done()) return false;
  op_->trace_stage_end();  // the last stage (progress() erases the call only on its next pass)
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
    // A rank without a shard has an empty block at the end: the all-gather stays in place for it too.
    op->off_i = i < S ? off[i] : count;
    op->len_i = i < S ? len[i] : 0;
  }
  const bool carrier = xrs && xrs->size() > 1 && op->len_i > 0;
  const Device dev = o_.device;
  // This rank's shard on the buffers' device: the reduce-scatter needs a separate output (null for a rank
  // without a shard); with one rank per centre the shard is the buffer itself.
  float* shard = data + op->off_i;
  if (g > 1) {
    if (op->len_i > 0)  // the reduce-scatter writes all of it
      op->shard = DeviceBuffer<float>(dev, static_cast<size_t>(op->len_i), DeviceBuffer<float>::Uninitialized{});
    shard = op->shard.data();
  }
  const std::string nm = opts.name;
  const int64_t pos = offset + op->off_i;  // the shard's position in the gradient buffer

  op->add_stage("intra-centre reduce-scatter", Family::Intra, [=, &intra_rs](HierOp& o) {
    if (g > 1)
      o.pending.push_back(intra_rs.reduce_scatter_v(data, shard, o.counts, DType::F32, {nm + " (intra reduce-scatter)"}));
  });
  op->add_stage("cross-centre exchange to the owners", Family::CrossRs, [=, this](HierOp& o) {
    if (!carrier) return;
    wan_begin();
    const int C = xrs->size(), j = xrs->rank();
    split(o.len_i, C, o.c_len, o.c_off);
    o.out.resize(static_cast<size_t>(C));
    o.in.resize(static_cast<size_t>(C));
    for (int p = 0; p < C; ++p) {
      if (p == j) continue;
      o.in[p] = words_for(codec_bytes(o_.codec, o.c_len[j]));
      encode(shard + o.c_off[p], residual_at(pos + o.c_off[p], o.c_len[p]), o.c_len[p], o.out[p]);
    }
    exchange(o, *xrs, false, nm + " (cross-centre, to owners)");
  });
  op->add_stage("cross-centre exchange from the owners", Family::CrossAg, [=, this](HierOp& o) {
    if (!carrier) return;
    const int C = xrs->size(), j = xrs->rank();
    float* mine = shard + o.c_off[j];
    const int64_t m = o.c_len[j];
    DeviceBuffer<float> acc(dev, static_cast<size_t>(m));  // zeros
    owner_sum(acc.data(), mine, o, j, m);
    encode(acc.data(), residual_at(pos + o.c_off[j], m), m, o.out[j]);
    decode(o.out[j], m, mine, false);  // the owner keeps what the peers will see
    for (int p = 0; p < C; ++p)
      if (p != j) o.in[p] = words_for(codec_bytes(o_.codec, o.c_len[p]));
    exchange(o, *xag, true, nm + " (cross-centre, from owners)");
  });
  op->add_stage("intra-centre all-gather", intra_ag_family(), [=, this, &intra_ag](HierOp& o) {
    if (carrier) {
      const int C = xrs->size(), j = xrs->rank();
      for (int p = 0; p < C; ++p)
        if (p != j) decode(o.in[p], o.c_len[p], shard + o.c_off[p], false);
      wan_end();
    }
    if (g > 1) {
      if (o.len_i > 0) device_copy(data + o.off_i, dev, shard, dev, static_cast<size_t>(o.len_i) * sizeof(float));
      o.pending.push_back(intra_ag.all_gather_v(data + o.off_i, data, o.counts, DType::F32, {nm + " (intra all-gather)"}));
    }
  });
  return launch(op, opts, "hierarchical all_reduce");
}

WorkPtr HierAlgorithm::reduce_scatter(const float* send, float* recv, int64_t L, const CollectiveOptions& opts) {
  check_zero_layout();
  auto op = std::make_shared<HierOp>();
  op->name = opts.name;
  Backend& intra = *g_.intra_rs;
  Backend* xrs = g_.cross_rs;
  const int g = intra.size(), i = intra.rank(), C = topo_.centres();
  const int j = xrs ? xrs->rank() : 0;
  const Device dev = o_.device;
  const size_t bytes = static_cast<size_t>(L) * sizeof(float);
  const std::string nm = opts.name;
  // slices (C·L on the device): slice c' = the centre's sum of the global slice c'·g + i. With one rank per centre
  // the global buffer already is that; with one centre, recv is.
  const float* slices = send;
  if (g > 1 && C > 1) {
    op->shard = DeviceBuffer<float>(dev, static_cast<size_t>(C * L), DeviceBuffer<float>::Uninitialized{});
    slices = op->shard.data();
  }
  op->add_stage("intra-centre reduce-scatters", Family::Intra, [=, &intra](HierOp& o) {
    if (g == 1) {
      if (C == 1) device_copy(recv, dev, send, dev, bytes);  // a DP group of one: the sum is the input
      return;
    }
    for (int c = 0; c < C; ++c)
      o.pending.push_back(intra.reduce_scatter(send + static_cast<int64_t>(c) * g * L,
                                               C > 1 ? const_cast<float*>(slices) + c * L : recv, L, DType::F32,
                                               {str(nm, " (intra reduce-scatter ", c, ")")}));
  });
  op->add_stage("cross-centre exchange to the owners", Family::CrossRs, [=, this](HierOp& o) {
    if (C == 1) return;
    wan_begin();
    o.out.resize(static_cast<size_t>(C));
    o.in.resize(static_cast<size_t>(C));
    for (int p = 0; p < C; ++p) {
      if (p == j) continue;
      o.in[p] = words_for(codec_bytes(o_.codec, L));
      encode(slices + p * L, residual_at((static_cast<int64_t>(p) * g + i) * L, L), L, o.out[p]);
    }
    exchange(o, *xrs, false, nm + " (cross-centre, to owners)");
  });
  op->add_stage("owner's sum", Family::Compute, [=, this](HierOp& o) {
    if (C == 1) return;
    device_zero(dev, recv, bytes);
    owner_sum(recv, slices + j * L, o, j, L);
    wan_end();
  });
  return launch(op, opts, "hierarchical reduce_scatter");
}

WorkPtr HierAlgorithm::all_gather(const void* send, void* recv, int64_t L, DType dtype, const CollectiveOptions& opts) {
  check_zero_layout();
  auto op = std::make_shared<HierOp>();
  op->name = opts.name;
  Backend& intra = *g_.intra_ag;
  Backend* xag = g_.cross_ag;
  const int g = intra.size(), i = intra.rank(), C = topo_.centres();
  const int j = xag ? xag->rank() : 0;
  const Device dev = o_.device;
  const size_t es = dtype_size(dtype), bytes = static_cast<size_t>(L) * es;
  char* out = static_cast<char*>(recv);
  // Global slice d = c·g + i sits at d·L; this rank's is (j·g + i)·L, which is where send points.
  auto at = [=](int c) { return out + (static_cast<size_t>(c) * g + i) * bytes; };
  const std::string nm = opts.name;
  op->add_stage("cross-centre exchange of slices", Family::CrossAg, [=, this](HierOp& o) {
    if (C == 1) return;
    wan_begin();
    o.out.resize(static_cast<size_t>(C));
    o.in.resize(static_cast<size_t>(C));
    o.out[j] = words_for(bytes);
    device_copy(bytes_of(o.out[j]), Device::CPU, send, dev, bytes);
    for (int p = 0; p < C; ++p)
      if (p != j) o.in[p] = words_for(bytes);
    exchange(o, *g_.cross_ag, true, nm + " (cross-centre)");
  });
  op->add_stage("intra-centre all-gathers", intra_ag_family(), [=, this, &intra](HierOp& o) {
    if (C > 1) {
      for (int p = 0; p < C; ++p)
        if (p != j) device_copy(at(p), dev, bytes_of(o.in[p]), Device::CPU, bytes);
      wan_end();
    }
    if (g == 1) {  // this rank's own slice, when it was not gathered in place
      if (send != at(j)) device_copy(at(j), dev, send, dev, bytes);
      return;
    }
    for (int c = 0; c < C; ++c)  // in place: this rank's slice of segment c is at(c)
      o.pending.push_back(intra.all_gather(c == j ? send : at(c), out + static_cast<size_t>(c) * g * bytes, L, dtype,
                                           {str(nm, " (intra all-gather ", c, ")")}));
  });
  (void)xag;
  return launch(op, opts, "hierarchical all_gather");
}

}  // namespace

std::unique_ptr<DpAlgorithm> make_flat_algorithm(const DpGroups& g);

std::unique_ptr<DpAlgorithm> make_dp_algorithm(const DpAlgoOptions& o, const DpGroups& g) {
  if (o.algo == "flat") return make_flat_algorithm(g);
  if (o.algo == "hier") return std::make_unique<HierAlgorithm>(o, g);
  fail(str("--dp-algo must be flat or hier (got \"", o.algo, "\")"));
}

}  // namespace aq
