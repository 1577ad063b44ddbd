// op_check_sharding.cpp — the sharding check of `aq-op check` (see op_check.h): for each declared rule, the op
// run whole and then per shard (S(d) slices, B copies, P random summands), the shards' outputs and input
// gradients gathered (S concatenated, P summed, B compared shard by shard) against the whole op's. The ranks are
// simulated in this process, and under mpirun also real: each rank runs its own shard and all-reduces gather.
#include <algorithm>
#include <exception>

#include "ops/op_check_internal.h"

namespace aq::ops::opcheck {

namespace {

// ---- the sharding rule ---------------------------------------------------------------------------------------

// The stretches (offset in the whole, length) of dimension `dim` that rank r of n holds: each packed block is
// split into n equal contiguous parts and the rank takes part r of every block, in block order.
std::vector<std::pair<int64_t, int64_t>> segments(int64_t size, const std::vector<int64_t>& blocks, int r, int n) {
  std::vector<std::pair<int64_t, int64_t>> s;
  int64_t start = 0;
  for (int64_t b : blocks.empty() ? std::vector<int64_t>{size} : blocks) {
    s.push_back({start + r * (b / n), b / n});
    start += b;
  }
  return s;
}

// Copies rank r's shard out of `whole` (to_shard) or back into it (gathering).
void shard_copy(Buf& whole, Buf& shard, int dim, const std::vector<std::pair<int64_t, int64_t>>& segs, bool to_shard) {
  const Shape& s = whole.shape();
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < dim; ++i) outer *= s[static_cast<size_t>(i)];
  for (size_t i = static_cast<size_t>(dim) + 1; i < s.size(); ++i) inner *= s[i];
  const int64_t D = s[static_cast<size_t>(dim)], Ds = shard.shape()[static_cast<size_t>(dim)];
  const size_t es = dtype_size(whole.dtype());
  for (int64_t o = 0; o < outer; ++o) {
    int64_t c = 0;
    for (const auto& [off, len] : segs) {
      unsigned char* w = whole.body() + static_cast<size_t>((o * D + off) * inner) * es;
      unsigned char* p = shard.body() + static_cast<size_t>((o * Ds + c) * inner) * es;
      const size_t bytes = static_cast<size_t>(len * inner) * es;
      if (to_shard)
        std::memcpy(p, w, bytes);
      else
        std::memcpy(w, p, bytes);
      c += len;
    }
  }
}

struct Placement {
  int32_t sbp;  // resolved: a split dimension >= 0, or AQ_SBP_*
  std::vector<int64_t> blocks;
};

// Collects one tensor's shards: S(d) placed into a whole-shaped buffer, P summed, B compared shard by shard.
struct Gather {
  Placement pl{AQ_SBP_NONE, {}};
  Buf whole;                // the single-rank result
  Buf placed;               // S(d): the shards put back in place
  std::vector<double> sum;  // P
  double b_err = 0;         // B: worst shard against the whole
  std::string shape_err;
  int n = 0;

  void add(const Buf& shard, int r) {
    if (!shard.present() || !whole.present()) return;
    if (pl.sbp >= 0) {
      Shape want = whole.shape();
      const auto segs = segments(want[static_cast<size_t>(pl.sbp)], pl.blocks, r, n);
      int64_t len = 0;
      for (const auto& sg : segs) len += sg.second;
      want[static_cast<size_t>(pl.sbp)] = len;
      if (shard.shape() != want) {
        shape_err = str("shard ", r, " is ", shape_str(shard.shape()), ", the rule implies ", shape_str(want));
        return;
      }
      if (!placed.present()) placed = Buf(whole.dtype(), whole.shape());
      Buf s = shard;
      shard_copy(placed, s, pl.sbp, segs, false);
    } else if (pl.sbp == AQ_SBP_PARTIAL_SUM || pl.sbp == AQ_SBP_BROADCAST) {
      if (shard.shape() != whole.shape()) {
        shape_err = str("shard ", r, " is ", shape_str(shard.shape()), ", the whole is ", shape_str(whole.shape()));
        return;
      }
      if (pl.sbp == AQ_SBP_PARTIAL_SUM) {
        sum.resize(static_cast<size_t>(whole.numel()), 0.0);
        for (int64_t k = 0; k < whole.numel(); ++k) sum[static_cast<size_t>(k)] += shard.get(k);
      } else {
        for (int64_t k = 0; k < whole.numel(); ++k) {
          const double e = std::fabs(shard.get(k) - whole.get(k)) / (1.0 + std::fabs(whole.get(k)));
          b_err = std::isnan(e) ? INFINITY : std::max(b_err, e);
        }
      }
    }
  }
  // Under mpirun each rank added only its own shard: combine the ranks' pieces (S: placed into zeros and summed,
  // P: summed, B: the worst rank). Every rank calls this for the same tensors in the same order.
  void combine(const RankGroup& g) {
    if (!whole.present() || pl.sbp == AQ_SBP_NONE) return;
    double bad_shape = shape_err.empty() ? 0.0 : 1.0;
    g.all_reduce(&bad_shape, 1, true);
    if (bad_shape > 0 && shape_err.empty()) shape_err = "another rank's shard has a shape the rule does not imply";
    if (pl.sbp >= 0) {
      if (!placed.present()) placed = Buf(whole.dtype(), whole.shape());  // zeros
      std::vector<double> v(static_cast<size_t>(whole.numel()));
      for (int64_t k = 0; k < whole.numel(); ++k) v[static_cast<size_t>(k)] = placed.get(k);
      g.all_reduce(v.data(), whole.numel(), false);
      for (int64_t k = 0; k < whole.numel(); ++k) placed.set(k, v[static_cast<size_t>(k)]);
    } else if (pl.sbp == AQ_SBP_PARTIAL_SUM) {
      sum.resize(static_cast<size_t>(whole.numel()), 0.0);
      g.all_reduce(sum.data(), whole.numel(), false);
    } else {
      g.all_reduce(&b_err, 1, true);
    }
  }
  double error() const {
    if (!shape_err.empty()) return INFINITY;
    double worst = b_err;
    for (int64_t k = 0; k < whole.numel(); ++k) {
      double got;
      if (pl.sbp >= 0)
        got = placed.present() ? placed.get(k) : NAN;
      else if (pl.sbp == AQ_SBP_PARTIAL_SUM)
        got = sum.empty() ? NAN : sum[static_cast<size_t>(k)];
      else
        continue;
      const double e = std::fabs(got - whole.get(k)) / (1.0 + std::fabs(whole.get(k)));
      worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
    return worst;
  }
};

// group: null to simulate the n ranks in this process; else n is the group's size and this process is one rank.
void check_rule(Op& op, const ShardingRule& rule, int n, Reporter& rep, const RankGroup* group) {
  const OpDef& d = op.def;
  const std::string check = str("sharding ", rule.name, " x", n, group ? " mpi" : "");
  const std::optional<DType> kdt = reference_dtype(d);
  if (!kdt) return rep.skip(d.name, check, "no CPU F64 or F32 kernel to run on this machine");
  const double tol = *kdt == DType::F64 ? 1e-10 : 1e-4;
  const std::vector<Shape>& shapes = op.probe.inputs;
  // S(any): the first dimension that every input marked so has, divisible by n.
  int any = -1;
  for (int dim = 0; dim < AQ_MAX_DIMS && any < 0; ++dim) {
    bool fits = true, used = false;
    for (size_t i = 0; i < d.inputs.size(); ++i)
      if (rule.inputs[i] == AQ_SBP_SPLIT_ANY && op.input_present(i)) {
        used = true;
        fits &= static_cast<int>(shapes[i].size()) > dim && shapes[i][static_cast<size_t>(dim)] % n == 0;
      }
    if (!used) break;
    if (fits) any = dim;
  }
  auto resolve = [&](int32_t p) { return p == AQ_SBP_SPLIT_ANY ? any : p; };
  for (size_t i = 0; i < d.inputs.size(); ++i)
    if (rule.inputs[i] == AQ_SBP_SPLIT_ANY && any < 0)
      return rep.skip(d.name, check, str("no dimension of the S(any) inputs is divisible by ", n));
  auto placement = [&](int32_t sbp, int tensor, const Shape& s) {
    Placement p{resolve(sbp), {}};
    if (p.sbp >= 0 && op.ad && op.ad->blocks) p.blocks = op.ad->blocks(rule.name, tensor, p.sbp, s, op.probe.attrs);
    return p;
  };
  for (size_t i = 0; i < d.inputs.size(); ++i) {
    if (!op.input_present(i)) continue;
    const Placement p = placement(rule.inputs[i], static_cast<int>(i), shapes[i]);
    if (p.sbp < 0) continue;
    for (int64_t b : p.blocks.empty() ? std::vector<int64_t>{shapes[i][static_cast<size_t>(p.sbp)]} : p.blocks)
      if (b % n != 0)
        return rep.skip(
            d.name, check,
            str("input \"", d.inputs[i].name, "\" dimension ", p.sbp, " (", b, ") is not divisible by ", n));
  }

  // The whole op on one rank.
  const Bufs in = op.inputs(*kdt);
  const Bufs out = op.forward(*kdt, in, op.probe.attrs);
  // A fused backward (softmax_xent, classifier) gives the gradients of dscale·Σ output 0, per shard as whole.
  const bool fused = op.fused_backward();
  const bool with_backward = op.has_generic_backward(Device::CPU, *kdt) || fused;
  Bufs dout, grads;
  if (with_backward) {
    grads = op.grad_buffers(*kdt, in, nullptr, true);
    if (fused) {
      op.fused(*kdt, in, grads, op.probe.attrs);
    } else {
      dout = op.projection(out);
      op.backward(in, out, dout, grads, op.probe.attrs);
    }
  }

  // Random summands of every P input: n−1 random, the last the remainder.
  std::vector<Bufs> summands(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (rule.inputs[i] != AQ_SBP_PARTIAL_SUM || !in[i].present()) continue;
    Buf rest = in[i];
    for (int r = 0; r + 1 < n; ++r) {
      Buf s = op.random_like(in[i].dtype(), in[i].shape());
      for (int64_t k = 0; k < s.numel(); ++k) rest.set(k, rest.get(k) - s.get(k));
      summands[i].push_back(std::move(s));
    }
    summands[i].push_back(std::move(rest));
  }

  std::vector<Gather> g_out(out.size()), g_grad(in.size());
  for (size_t j = 0; j < out.size(); ++j) {
    g_out[j].pl = placement(rule.outputs[j], static_cast<int>(d.inputs.size() + j), out[j].shape());
    g_out[j].whole = out[j];
    g_out[j].n = n;
  }
  for (size_t i = 0; i < in.size(); ++i)
    if (with_backward && rule.input_grads[i] != AQ_SBP_NONE) {
      g_grad[i].pl = placement(rule.input_grads[i], static_cast<int>(i), in[i].shape());
      g_grad[i].whole = grads[i];
      g_grad[i].n = n;
    }

  std::vector<Shape> whole_shapes;
  for (const Buf& b : in) whole_shapes.push_back(b.shape());
  for (int r = group ? group->rank : 0; r < (group ? group->rank + 1 : n); ++r) {
    auto shard_of = [&](const Buf& whole, const Placement& p, int tensor_sbp, const Bufs* parts) -> Buf {
      if (!whole.present() || tensor_sbp == AQ_SBP_NONE) return Buf();
      if (tensor_sbp == AQ_SBP_PARTIAL_SUM && parts) return (*parts)[static_cast<size_t>(r)];
      if (p.sbp < 0) return whole;  // B (and P of an output gradient: the whole gradient on every rank)
      const auto segs = segments(whole.shape()[static_cast<size_t>(p.sbp)], p.blocks, r, n);
      Shape s = whole.shape();
      s[static_cast<size_t>(p.sbp)] = 0;
      for (const auto& sg : segs) s[static_cast<size_t>(p.sbp)] += sg.second;
      Buf shard(whole.dtype(), s);
      Buf w = whole;
      shard_copy(w, shard, p.sbp, segs, true);
      return shard;
    };
    Bufs sin;
    for (size_t i = 0; i < in.size(); ++i)
      sin.push_back(
          shard_of(in[i], placement(rule.inputs[i], static_cast<int>(i), in[i].shape()), rule.inputs[i], &summands[i]));
    std::vector<AttrValue> attrs = op.probe.attrs;
    if (op.ad && op.ad->shard_attrs) op.ad->shard_attrs(rule.name, r, n, whole_shapes, attrs);
    const Bufs sout = op.forward(*kdt, sin, attrs);
    for (size_t j = 0; j < sout.size(); ++j) g_out[j].add(sout[j], r);
    if (!with_backward) continue;
    Bufs sgrad;
    for (size_t i = 0; i < in.size(); ++i)
      sgrad.push_back(op.differentiable_input(i) && sin[i].present() ? Buf(op.grad_dtype(i, *kdt), sin[i].shape())
                                                                     : Buf());
    if (fused) {
      op.fused(*kdt, sin, sgrad, attrs);
    } else {
      // Output gradients: S(d) outputs get their slice of the whole gradient, B and P outputs the whole of it.
      Bufs sdout;
      for (size_t j = 0; j < out.size(); ++j)
        sdout.push_back(shard_of(dout[j], g_out[j].pl,
                                 rule.outputs[j] == AQ_SBP_PARTIAL_SUM ? AQ_SBP_BROADCAST : rule.outputs[j], nullptr));
      op.backward(sin, sout, sdout, sgrad, attrs);
    }
    for (size_t i = 0; i < in.size(); ++i)
      if (rule.input_grads[i] != AQ_SBP_NONE) g_grad[i].add(sgrad[i], r);
  }

  if (group) {
    for (Gather& g : g_out) g.combine(*group);
    for (Gather& g : g_grad) g.combine(*group);
  }
  double worst = 0;
  std::string where, what;
  auto judge = [&](const Gather& g, const std::string& name) {
    if (!g.whole.present() || g.pl.sbp == AQ_SBP_NONE) return;
    what += str(what.empty() ? "" : ", ", name, " ", sbp_str(g.pl.sbp));
    const double e = g.error();
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
    if (!(e <= tol))  // every tensor that disagrees, so a wrong rule shows which placements are off
      where += str(where.empty() ? "" : "; ",
                   g.shape_err.empty()
                       ? str(name, " ", sbp_str(g.pl.sbp), " gathered differs from the whole op's by ", fmt(e))
                       : str(name, ": ", g.shape_err));
  };
  for (size_t j = 0; j < out.size(); ++j) judge(g_out[j], d.outputs[j].name);
  for (size_t i = 0; i < in.size(); ++i)
    if (with_backward && rule.input_grads[i] != AQ_SBP_NONE) judge(g_grad[i], "d" + d.inputs[i].name);
  const std::string numbers = str(group ? str(n, " MPI ranks, ") : str("one process simulating ", n, " ranks, "),
                                  dtype_name(*kdt), "; ", what, "; max rel err ", fmt(worst), ", tol ", fmt(tol));
  if (worst <= tol)
    rep.ok(d.name, check, numbers);
  else
    rep.failed(d.name, check, str(where, " (", numbers, ")"));
}

}  // namespace

void check_sharding(Op& op, Reporter& rep, const RankGroup* ranks) {
  if (op.def.sharding.empty())
    return rep.na(op.def.name, "sharding", "no sharding rule declared (the op runs replicated only)");
  for (const ShardingRule& rule : op.def.sharding)
    for (int n : {2, 3}) {
      try {
        check_rule(op, rule, n, rep, nullptr);
      } catch (const std::exception& e) {
        rep.failed(op.def.name, str("sharding ", rule.name, " x", n), e.what());
      }
    }
  if (ranks && ranks->size > 1)
    for (const ShardingRule& rule : op.def.sharding) {
      try {
        check_rule(op, rule, ranks->size, rep, ranks);
      } catch (const std::exception& e) {
        rep.failed(op.def.name, str("sharding ", rule.name, " x", ranks->size, " mpi"), e.what());
      }
    }
}

}  // namespace aq::ops::opcheck
