// op_check.cpp — the checks of `aq-op check` (see op_check.h). Everything runs through the generic call path
// (OpRegistry::forward/backward on tensor views), so a built-in (through its adapter, ops/builtin_adapters.cpp)
// and a plugin op are held to exactly the same checks.
#include "ops/op_check.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <optional>
#include <random>

#include "ops/builtin_adapters.h"
#include "ops/op_check_internal.h"
#include "ops/op_def.h"
#include "ops/registry.h"

#ifdef AQ_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace aq::ops {

namespace opcheck {
namespace {

constexpr int64_t kMaxDerivatives = 4096;  // finite differences per input at most (a random sample beyond)

// ---- probes for plugin ops: the first candidate shapes the shape function accepts -----------------------------

std::optional<ProbeInputs> plugin_probe(const OpDef& def, DType kdt, std::string& why) {
  // Leading dimension 6 (divisible by 2 and 3, for split rules), the others odd; then all 6; then all 12.
  const std::vector<std::vector<int64_t>> candidates = {
      {6, 7, 5, 3, 3, 3, 3, 3}, {6, 6, 6, 6, 6, 6, 6, 6}, {12, 12, 12, 12, 12, 12, 12, 12}};
  ProbeInputs p;
  for (const AttrSpec& a : def.attrs)
    p.attrs.push_back(a.type == AQ_ATTR_INT ? AttrValue::integer(1) : AttrValue::real(0.5));
  for (const std::vector<int64_t>& c : candidates) {
    p.inputs.clear();
    std::vector<Buf> bufs;
    std::vector<Tensor> views;
    for (const TensorSpec& s : def.inputs) {
      const int nd = s.ndim < 0 ? 2 : s.ndim;
      p.inputs.emplace_back(c.begin(), c.begin() + nd);
      bufs.emplace_back(spec_dtype(s.dtype, kdt), p.inputs.back());
    }
    for (const Buf& b : bufs) views.push_back(b.view());
    try {
      OpRegistry::instance().infer(def.name, kdt, views, p.attrs);
      return p;
    } catch (const std::exception& e) {
      why = e.what();
    }
  }
  return std::nullopt;
}

// ---- the checks --------------------------------------------------------------------------------------------------

void check_kernels(Op& op, Reporter& rep) {
  const OpDef& d = op.def;
  const Registry& reg = Registry::instance();
  std::string have, missing;
  for (const KernelEntry& k : d.kernels) {
    const std::string kn = kname(k.device, k.dtype);
    have += (have.empty() ? "" : " ") + kn;
    if (k.typed) {
      if (!reg.contains(d.typed.forward, k.device, k.dtype))
        missing += str(" ", kn, " forward \"", d.typed.forward, "\"");
      if (d.has_backward && !reg.contains(d.typed.backward, k.device, k.dtype))
        missing += str(" ", kn, " backward \"", d.typed.backward, "\"");
    } else {
      if (!k.forward) missing += str(" ", kn, " forward");
      if (d.has_backward && !k.backward) missing += str(" ", kn, " backward");
    }
  }
  if (d.kernels.empty())
    rep.failed(d.name, "kernels", "no (device, dtype) kernel declared");
  else if (!missing.empty())
    rep.failed(d.name, "kernels", "declared but missing:" + missing);
  else
    rep.ok(d.name, "kernels", have + (d.has_backward ? ", forward and backward each" : ", forward each"));
}

// Poisoned outputs fully written, canaries intact, inputs untouched; the same for the backward's gradients.
void check_shape(Op& op, DType kdt, Reporter& rep) {
  const std::string check = str("shape ", kname(Device::CPU, kdt));
  std::string bad;
  int64_t elements = 0;
  auto inspect = [&](const Buf& b, const std::string& what, bool must_write) {
    if (!b.present()) return;
    if (must_write) elements += b.numel();
    const int64_t u = must_write ? b.unwritten() : 0;
    const auto [before, after] = b.damaged();
    if (u) bad += str("; ", what, ": ", u, " of ", b.numel(), " elements unwritten (shape ", shape_str(b.shape()), ")");
    if (after) bad += str("; ", what, ": ", after, " canary bytes past the end overwritten");
    if (before) bad += str("; ", what, ": ", before, " canary bytes before the start overwritten");
  };
  const Bufs in = op.inputs(kdt);
  const Bufs in_copy = in;
  const Bufs out = op.forward(kdt, in, op.probe.attrs);
  for (size_t j = 0; j < out.size(); ++j) inspect(out[j], str("output \"", op.def.outputs[j].name, "\""), true);
  for (size_t i = 0; i < in.size(); ++i) {
    if (!in[i].same_bits(in_copy[i])) bad += str("; input \"", op.def.inputs[i].name, "\" changed by the forward");
    inspect(in[i], str("input \"", op.def.inputs[i].name, "\""), false);
  }
  std::string what = str(out.size(), out.size() == 1 ? " output" : " outputs");
  if (op.has_generic_backward(Device::CPU, kdt) || op.fused_backward()) {
    const Bufs grads = op.grad_buffers(kdt, in, nullptr);
    if (op.fused_backward()) {
      const Bufs fout = op.fused(kdt, in, grads, op.probe.attrs);
      for (size_t j = 0; j < fout.size(); ++j)
        inspect(fout[j], str("output \"", op.def.outputs[j].name, "\" of the fused backward"), true);
    } else {
      op.backward(in, out, op.projection(out), grads, op.probe.attrs);
    }
    for (size_t i = 0; i < grads.size(); ++i)
      inspect(grads[i], str("gradient of \"", op.def.inputs[i].name, "\""), !op.accumulates(i));
    what += op.fused_backward() ? " and the fused backward's outputs and gradients" : " and the backward's gradients";
  }
  if (bad.empty())
    rep.ok(op.def.name, check,
           str(what, ": ", elements, " elements written, inputs unchanged, ", kFence, "-byte canaries intact"));
  else
    rep.failed(op.def.name, check, bad.substr(2));
}

void check_backward(Op& op, Reporter& rep) {
  const OpDef& d = op.def;
  if (!d.has_backward) return rep.na(d.name, "backward", "the op declares no backward (not differentiable)");
  const std::optional<DType> kdt = reference_dtype(d);
  if (!kdt) return rep.skip(d.name, "backward", "no CPU F64 or F32 kernel to run on this machine");
  const bool f64 = *kdt == DType::F64;
  const std::string check = str("backward ", kname(Device::CPU, *kdt));
  // F64: h 1e-6 leaves truncation (~h²) and rounding (~1e-16/h) far below the tolerance. F32: rounding of the
  // outputs is ~6e-8·|L|, so h must be large (1e-2) and the tolerance loose.
  const double h = f64 ? 1e-6 : 1e-2, tol = f64 ? 1e-6 : 2e-2;
  Bufs in = op.inputs(*kdt);
  Bufs analytic;
  std::function<double()> loss;
  std::string how;
  Bufs base;
  if (op.fused_backward()) {
    // The call that computes the losses also writes d(dscale·Σ output 0)/d input.
    analytic = op.grad_buffers(*kdt, in, &base);
    op.fused(*kdt, in, analytic, op.probe.attrs);
    const double dscale = op.probe.attrs[static_cast<size_t>(op.ad->fused_dscale_attr)].f;
    loss = [&, dscale] {
      const Bufs out = op.forward(*kdt, in, op.probe.attrs);
      double L = 0;
      for (int64_t k = 0; k < out[0].numel(); ++k) L += dscale * out[0].get(k);
      return L;
    };
    how = "backward fused in the forward call: L = dscale·Σ losses";
  } else {
    if (!op.has_generic_backward(Device::CPU, *kdt))
      return rep.skip(d.name, check, "the op's backward has no generic entry point");
    const Bufs out = op.forward(*kdt, in, op.probe.attrs);
    const Bufs r = op.projection(out);
    analytic = op.grad_buffers(*kdt, in, &base);
    op.backward(in, out, r, analytic, op.probe.attrs);
    loss = [&op, &in, r, kdt] { return projection_value(op.forward(*kdt, in, op.probe.attrs), r); };
    how = "L = Σ r·y, r random";
  }
  for (size_t i = 0; i < analytic.size(); ++i)  // an accumulating gradient: what the backward added to it
    if (analytic[i].present() && op.accumulates(i))
      for (int64_t k = 0; k < analytic[i].numel(); ++k) analytic[i].set(k, analytic[i].get(k) - base[i].get(k));
  double worst = 0;
  int64_t count = 0;
  std::string where;
  for (size_t i = 0; i < in.size(); ++i) {
    if (!analytic[i].present() || !op.differentiable_input(i)) continue;
    const int64_t n = in[i].numel();
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) idx[static_cast<size_t>(k)] = k;
    if (n > kMaxDerivatives) {
      std::shuffle(idx.begin(), idx.end(), op.rng);
      idx.resize(kMaxDerivatives);
    }
    for (int64_t k : idx) {
      const double x0 = in[i].get(k);
      in[i].set(k, x0 + h);
      const double xp = in[i].get(k), Lp = loss();
      in[i].set(k, x0 - h);
      const double xm = in[i].get(k), Lm = loss();
      in[i].set(k, x0);
      const double fd = (Lp - Lm) / (xp - xm), an = analytic[i].get(k);
      const double err = std::fabs(an - fd) / (1.0 + std::fabs(fd));
      ++count;
      if (!(err <= worst)) {
        worst = std::isnan(err) ? INFINITY : err;
        where = str("d/d ", d.inputs[i].name, "[", k, "]: backward ", fmt(an), ", finite differences ", fmt(fd),
                    op.accumulates(i) ? " (the gradient accumulates: what the backward added to it)" : "");
      }
    }
  }
  const std::string numbers =
      str(f64 ? "F64 kernel" : "no F64 kernel: F32 with looser tolerance", ", ", how, ", ", count,
          " derivatives, max |backward - fd|/(1+|fd|) ", fmt(worst), ", tol ", fmt(tol), ", h ", fmt(h));
  if (count == 0) return rep.na(d.name, check, "no differentiable input");
  if (worst <= tol)
    rep.ok(d.name, check, numbers);
  else
    rep.failed(d.name, check, str(where, " (", numbers, ")"));
}

void check_determinism(Op& op, DType kdt, Reporter& rep) {
  const std::string check = str("determinism ", kname(Device::CPU, kdt));
  const Bufs in = op.inputs(kdt);
  const Bufs a = op.forward(kdt, in, op.probe.attrs), b = op.forward(kdt, in, op.probe.attrs);
  std::string bad;
  for (size_t j = 0; j < a.size(); ++j)
    if (!a[j].same_bits(b[j])) bad += str("; output \"", op.def.outputs[j].name, "\" differs between two runs");
  std::string what = "forward";
  if (op.has_generic_backward(Device::CPU, kdt)) {
    const Bufs r = op.projection(a);
    Bufs base;
    const Bufs g1 = op.grad_buffers(kdt, in, &base);
    const Bufs g2 = base;
    op.backward(in, a, r, g1, op.probe.attrs);
    op.backward(in, a, r, g2, op.probe.attrs);
    for (size_t i = 0; i < g1.size(); ++i)
      if (!g1[i].same_bits(g2[i])) bad += str("; gradient of \"", op.def.inputs[i].name, "\" differs between two runs");
    what += " and backward";
  } else if (op.fused_backward()) {
    Bufs base;
    const Bufs g1 = op.grad_buffers(kdt, in, &base);
    const Bufs g2 = base;
    const Bufs o1 = op.fused(kdt, in, g1, op.probe.attrs), o2 = op.fused(kdt, in, g2, op.probe.attrs);
    for (size_t j = 0; j < o1.size(); ++j)
      if (!o1[j].same_bits(o2[j]))
        bad += str("; output \"", op.def.outputs[j].name, "\" of the fused backward differs");
    for (size_t i = 0; i < g1.size(); ++i)
      if (!g1[i].same_bits(g2[i])) bad += str("; gradient of \"", op.def.inputs[i].name, "\" differs between two runs");
    what += " and fused backward";
  }
  if (bad.empty())
    rep.ok(op.def.name, check, what + " bit-identical over two runs");
  else
    rep.failed(op.def.name, check, bad.substr(2));
}

// ---- CUDA against CPU ------------------------------------------------------------------------------------------

#ifdef AQ_HAVE_CUDA
// Device memory freed at the end of a check; kept in a deque so that adding one never moves (and frees) another.
struct DeviceBuf {
  void* p = nullptr;
  DeviceBuf() = default;
  DeviceBuf(const DeviceBuf&) = delete;
  DeviceBuf& operator=(const DeviceBuf&) = delete;
  ~DeviceBuf() {
    if (p) cudaFree(p);
  }
};

void cuda_ok(cudaError_t e, const char* what) { AQ_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e)); }

// Copies host buffers to the device and returns device views (absent stays absent).
std::vector<Tensor> to_device(const Bufs& host, std::deque<DeviceBuf>& keep) {
  std::vector<Tensor> t;
  for (const Buf& b : host) {
    if (!b.present()) {
      t.emplace_back();
      continue;
    }
    keep.emplace_back();
    cuda_ok(cudaMalloc(&keep.back().p, std::max<size_t>(b.nbytes(), 1)), "cudaMalloc");
    cuda_ok(cudaMemcpy(keep.back().p, b.body(), b.nbytes(), cudaMemcpyHostToDevice), "cudaMemcpy to the device");
    t.emplace_back(keep.back().p, b.dtype(), b.shape(), Device::CUDA);
  }
  return t;
}

void to_host(const std::vector<Tensor>& dev, Bufs& host) {
  for (size_t i = 0; i < host.size(); ++i)
    if (host[i].present())
      cuda_ok(cudaMemcpy(host[i].body(), dev[i].raw(), host[i].nbytes(), cudaMemcpyDeviceToHost),
              "cudaMemcpy to the host");
}

// Converts every present buffer to dtype `t` where it holds the kernel's dtype `from` (integers stay).
Bufs convert(const Bufs& in, DType from, DType t) {
  Bufs out;
  for (const Buf& b : in) {
    if (!b.present() || b.dtype() != from) {
      out.push_back(b);
      continue;
    }
    Buf c(t, b.shape());
    for (int64_t k = 0; k < b.numel(); ++k) c.set(k, b.get(k));
    out.push_back(std::move(c));
  }
  return out;
}

// The op's inputs drawn in `ref` (F64 or F32) and rounded to what the `kdt` kernel takes, input by input (T or
// its master type M, fixed dtypes as they are).
Bufs inputs_for(Op& op, DType ref, DType kdt) {
  Bufs in = op.inputs(ref), out;
  for (size_t i = 0; i < in.size(); ++i) {
    const DType want = in[i].present() ? spec_dtype(op.def.inputs[i].dtype, kdt) : in[i].dtype();
    out.push_back(in[i].dtype() == want ? in[i] : convert({in[i]}, in[i].dtype(), want)[0]);
  }
  return out;
}
#endif

void check_cuda(Op& op, Reporter& rep) {
  const OpDef& d = op.def;
  std::string declared;
  for (const KernelEntry& k : d.kernels)
    if (k.device == Device::CUDA) declared += (declared.empty() ? "" : " ") + kname(k.device, k.dtype);
#ifndef AQ_HAVE_CUDA
  // A CPU-only build registers no built-in CUDA kernel, so "declared" is empty for built-ins here.
  return rep.skip(d.name, "cuda-vs-cpu",
                  str("built without CUDA (AQ_CUDA=OFF), no GPU code to run",
                      declared.empty() ? "" : str("; the op declares ", declared)));
#else
  if (declared.empty()) return rep.skip(d.name, "cuda-vs-cpu", "no CUDA kernel declared");
  int count = 0;
  const cudaError_t ce = cudaGetDeviceCount(&count);
  if (ce != cudaSuccess || count == 0)
    return rep.skip(d.name, "cuda-vs-cpu",
                    str("no GPU visible (cudaGetDeviceCount: ",
                        ce == cudaSuccess ? "0 devices" : cudaGetErrorString(ce), "); declared ", declared));
  const std::optional<DType> ref = reference_dtype(d);
  if (!ref) return rep.skip(d.name, "cuda-vs-cpu", "no CPU kernel to compare against");
  for (const KernelEntry& k : d.kernels) {
    if (k.device != Device::CUDA) continue;
    const std::string check = str("cuda-vs-cpu ", kname(k.device, k.dtype));
    if (k.dtype != DType::F32 && k.dtype != DType::BF16) {
      rep.skip(d.name, check, "only F32 and BF16 CUDA kernels are compared");
      continue;
    }
    // fp32 kernels reorder sums (and may use TF32-free tensor-core paths); bf16 keeps 8 mantissa bits.
    const double tol = k.dtype == DType::BF16 ? 3e-2 : 2e-3;
    try {
      // Inputs drawn in the reference dtype and rounded to the CUDA dtype; the CPU reference runs on the rounded
      // values, so only the kernels' arithmetic differs.
      const Bufs in_dev_t = inputs_for(op, *ref, k.dtype);
      Bufs in_ref;
      for (size_t i = 0; i < in_dev_t.size(); ++i)  // the same values in the reference kernel's dtypes
        in_ref.push_back(in_dev_t[i].present()
                             ? convert({in_dev_t[i]}, in_dev_t[i].dtype(), spec_dtype(op.def.inputs[i].dtype, *ref))[0]
                             : in_dev_t[i]);
      const Bufs out_ref = op.forward(*ref, in_ref, op.probe.attrs);
      std::deque<DeviceBuf> keep;
      std::vector<Tensor> tin = to_device(in_dev_t, keep);
      const ShapeResult sr = OpRegistry::instance().infer(d.name, k.dtype, tin, op.probe.attrs);
      Bufs out_dev;
      for (size_t j = 0; j < sr.shapes.size(); ++j) out_dev.emplace_back(sr.dtypes[j], sr.shapes[j]);
      std::vector<Tensor> tout = to_device(out_dev, keep);
      keep.emplace_back();  // the workspace the shape function asks for (the host allocates one only on the CPU)
      if (sr.workspace_bytes) cuda_ok(cudaMalloc(&keep.back().p, sr.workspace_bytes), "cudaMalloc (workspace)");
      OpRegistry::instance().forward(d.name, tin, tout, op.probe.attrs, keep.back().p);
      cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the forward");
      to_host(tout, out_dev);
      double worst = 0;
      std::string where;
      auto compare = [&](const Buf& got, const Buf& want, const std::string& what) {
        for (int64_t e = 0; e < want.numel(); ++e) {
          const double err = std::fabs(got.get(e) - want.get(e)) / (1.0 + std::fabs(want.get(e)));
          if (!(err <= worst)) {
            worst = std::isnan(err) ? INFINITY : err;
            where = str(what, "[", e, "]: cuda ", fmt(got.get(e)), ", cpu ", fmt(want.get(e)));
          }
        }
      };
      for (size_t j = 0; j < out_ref.size(); ++j) compare(out_dev[j], out_ref[j], d.outputs[j].name);
      std::string what = "forward";
      if (op.has_generic_backward(Device::CUDA, k.dtype) && op.has_generic_backward(Device::CPU, *ref)) {
        const Bufs r_ref = convert(convert(op.projection(out_ref), *ref, k.dtype), k.dtype, *ref);
        Bufs g_ref = op.grad_buffers(*ref, in_ref, nullptr, true);
        op.backward(in_ref, out_ref, r_ref, g_ref, op.probe.attrs);
        Bufs r_dev = convert(r_ref, *ref, k.dtype);
        for (size_t j = 0; j < r_dev.size(); ++j)  // output gradients have the output's dtype (lse: master)
          if (r_dev[j].present() && out_dev[j].dtype() != r_dev[j].dtype())
            r_dev[j] = convert({r_ref[j]}, *ref, out_dev[j].dtype())[0];
        Bufs g_dev = op.grad_buffers(k.dtype, in_dev_t, nullptr, true);
        std::vector<Tensor> ts, tr = to_device(r_dev, keep), tg = to_device(g_dev, keep);
        for (int32_t s : d.saved)
          ts.push_back(static_cast<size_t>(s) < op.n_in() ? tin[static_cast<size_t>(s)]
                                                          : tout[static_cast<size_t>(s) - op.n_in()]);
        OpRegistry::instance().backward(d.name, ts, tr, tg, op.probe.attrs);
        cuda_ok(cudaDeviceSynchronize(), "cudaDeviceSynchronize after the backward");
        to_host(tg, g_dev);
        for (size_t i = 0; i < g_ref.size(); ++i)
          if (g_ref[i].present()) compare(g_dev[i], g_ref[i], "d" + d.inputs[i].name);
        what += " and backward";
      }
      const std::string numbers = str(what, " against the CPU ", dtype_name(*ref),
                                      " kernel, max |cuda - cpu|/(1+|cpu|) ", fmt(worst), ", tol ", fmt(tol));
      if (worst <= tol)
        rep.ok(d.name, check, numbers);
      else
        rep.failed(d.name, check, str(where, " (", numbers, ")"));
    } catch (const std::exception& e) {
      rep.failed(d.name, check, e.what());
    }
  }
#endif
}

// Runs one check, turning an exception (a kernel's error status, a shape refusal) into its FAIL line.
void guarded(Reporter& rep, const std::string& op, const std::string& check, const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    rep.failed(op, check, e.what());
  }
}

void check_op(const OpDef& def, uint64_t seed, Reporter& rep, const RankGroup* ranks) {
  const BuiltinAdapter* ad = builtin_adapter(def.name);
  const bool builtin = def.plugin.empty() && def.origin == "built-in";
  Op op{def, ad, {}, std::mt19937_64(seed ^ std::hash<std::string>{}(def.name))};
  check_kernels(op, rep);
  const std::vector<std::string> rest = {"shape", "backward", "determinism", "cuda-vs-cpu", "sharding"};
  if (builtin && !ad) {
    const auto& why = builtin_without_adapter();
    auto it = why.find(def.name);
    if (it == why.end()) {
      rep.failed(
          def.name, "adapter",
          "a built-in without an adapter in ops/builtin_adapters.cpp and no reason in builtin_without_adapter()");
      return;
    }
    for (const std::string& c : rest) rep.na(def.name, c, it->second);
    return;
  }
  std::vector<DType> cpu;
  for (const KernelEntry& k : def.kernels)
    if (k.device == Device::CPU) cpu.push_back(k.dtype);
  if (cpu.empty()) {
    for (const std::string& c : rest)
      if (c != "cuda-vs-cpu") rep.skip(def.name, c, "no CPU kernel declared; only CUDA kernels, and no CPU reference");
    return check_cuda(op, rep);
  }
  if (ad) {
    op.probe = ad->probe;
  } else {
    std::string why;
    std::optional<ProbeInputs> p = plugin_probe(def, cpu.front(), why);
    if (!p) {
      for (const std::string& c : rest)
        rep.skip(def.name, c, str("no probe shape accepted by the shape function (last refusal: ", why, ")"));
      return;
    }
    op.probe = *p;
  }
  auto na = [&](const std::string& c) -> const std::string* {
    if (!ad) return nullptr;
    auto it = ad->not_applicable.find(c);
    return it == ad->not_applicable.end() ? nullptr : &it->second;
  };
  for (DType t : cpu) {
    const std::string c = str("shape ", kname(Device::CPU, t));
    if (const std::string* why = na("shape"))
      rep.na(def.name, c, *why);
    else
      guarded(rep, def.name, c, [&] { check_shape(op, t, rep); });
  }
  if (const std::string* why = na("backward"))
    rep.na(def.name, "backward", *why);
  else
    guarded(rep, def.name, "backward", [&] { check_backward(op, rep); });
  for (DType t : cpu) {
    const std::string c = str("determinism ", kname(Device::CPU, t));
    if (const std::string* why = na("determinism"))
      rep.na(def.name, c, *why);
    else
      guarded(rep, def.name, c, [&] { check_determinism(op, t, rep); });
  }
  guarded(rep, def.name, "cuda-vs-cpu", [&] { check_cuda(op, rep); });
  if (const std::string* why = na("sharding"))
    rep.na(def.name, "sharding", *why);
  else
    check_sharding(op, rep, ranks);
}

}  // namespace
}  // namespace opcheck

CheckSummary check_ops(const CheckOptions& options, std::FILE* out) {
  using namespace opcheck;
  Reporter rep{options.ranks && options.ranks->rank != 0 ? nullptr : out, {}};
  const int world = options.ranks ? options.ranks->size : 1;
  std::vector<const OpDef*> ops;
  if (options.ops.empty())
    ops = OpRegistry::instance().list();
  else
    for (const std::string& n : options.ops) ops.push_back(&OpRegistry::instance().get(n));
  if (rep.out)
    std::fprintf(rep.out,
                 "aq-op check: %zu operators, seed %llu (rerun with --seed to replay); sharding rules run %s\n",
                 ops.size(), static_cast<unsigned long long>(options.seed),
                 world > 1 ? str("on 2 and 3 ranks simulated in one process, and on the ", world, " MPI ranks").c_str()
                           : "on 2 and 3 ranks simulated in this one process (start under mpirun for real ranks)");
  if (options.ops.empty()) {  // the adapter table and the declarations name the same built-ins
    std::string stray;
    for (const std::string& n : builtin_adapter_ops()) {
      const OpDef* d = OpRegistry::instance().find(n);
      if (!d || d->origin != "built-in") stray += " " + n;
    }
    for (const auto& [n, why] : builtin_without_adapter())
      if (!OpRegistry::instance().find(n)) stray += " " + n;
    if (stray.empty())
      rep.ok("aq-op", "adapters", "every adapter in ops/builtin_adapters.cpp names a declared built-in");
    else
      rep.failed("aq-op", "adapters", "ops/builtin_adapters.cpp names operators no built-in declares:" + stray);
  }
  for (const OpDef* d : ops) {
    check_op(*d, options.seed, rep, options.ranks);
    ++rep.sum.ops;
  }
  if (rep.out)
    std::fprintf(rep.out, "summary: %d operators, %d ok, %d FAIL, %d skip, %d not applicable\n", rep.sum.ops,
                 rep.sum.ok, rep.sum.failed, rep.sum.skipped, rep.sum.not_applicable);
  return rep.sum;
}

}  // namespace aq::ops
