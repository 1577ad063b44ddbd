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
#include "ops/op_def.h"
#include "ops/registry.h"

#ifdef AQ_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace aq::ops {

namespace {

constexpr size_t kFence = 64;            // canary bytes before and after every buffer
constexpr unsigned char kCanary = 0x5a;  // a byte pattern no kernel has a reason to write
constexpr int64_t kMaxDerivatives = 4096;

// ---- host buffers with canaries ------------------------------------------------------------------------------

class Buf {
 public:
  Buf() = default;  // an absent (optional, or not wanted) tensor
  Buf(DType t, Shape s) : dtype_(t), shape_(std::move(s)), present_(true) {
    bytes_.assign(2 * kFence + nbytes(), kCanary);
    std::memset(body(), 0, nbytes());
  }
  bool present() const { return present_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return present_ ? shape_numel(shape_) : 0; }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  unsigned char* body() { return bytes_.data() + kFence; }
  const unsigned char* body() const { return bytes_.data() + kFence; }
  Tensor view() const { return present_ ? Tensor(const_cast<unsigned char*>(body()), dtype_, shape_) : Tensor(); }

  double get(int64_t i) const {
    const unsigned char* p = body() + static_cast<size_t>(i) * dtype_size(dtype_);
    switch (dtype_) {
      case DType::F32:
        return load<float>(p);
      case DType::F64:
        return load<double>(p);
      case DType::BF16:
        return bf16_to_float(load<bf16>(p));
      case DType::I32:
        return load<int32_t>(p);
      case DType::U16:
        return load<uint16_t>(p);
      default:
        fail(str("aq-op check cannot read ", dtype_name(dtype_), " tensors"));
    }
  }
  void set(int64_t i, double v) {
    unsigned char* p = body() + static_cast<size_t>(i) * dtype_size(dtype_);
    switch (dtype_) {
      case DType::F32:
        return store(p, static_cast<float>(v));
      case DType::F64:
        return store(p, v);
      case DType::BF16:
        return store(p, float_to_bf16(static_cast<float>(v)));
      case DType::I32:
        return store(p, static_cast<int32_t>(v));
      case DType::U16:
        return store(p, static_cast<uint16_t>(v));
      default:
        fail(str("aq-op check cannot write ", dtype_name(dtype_), " tensors"));
    }
  }

  // NaN with a payload (integers: 0xa5 bytes): a kernel that leaves an element unwritten leaves this.
  void poison() {
    const std::vector<unsigned char> p = pattern();
    for (int64_t i = 0; i < numel(); ++i) std::memcpy(body() + i * p.size(), p.data(), p.size());
  }
  int64_t unwritten() const {
    const std::vector<unsigned char> p = pattern();
    int64_t n = 0;
    for (int64_t i = 0; i < numel(); ++i) n += std::memcmp(body() + i * p.size(), p.data(), p.size()) == 0;
    return n;
  }
  // Canary bytes overwritten before the first element and past the last.
  std::pair<size_t, size_t> damaged() const {
    size_t before = 0, after = 0;
    for (size_t i = 0; i < kFence; ++i) {
      before += bytes_[i] != kCanary;
      after += bytes_[kFence + nbytes() + i] != kCanary;
    }
    return {before, after};
  }
  bool same_bits(const Buf& o) const {
    return present_ == o.present_ && shape_ == o.shape_ && dtype_ == o.dtype_ &&
           std::memcmp(body(), o.body(), nbytes()) == 0;
  }

 private:
  template <typename T>
  static T load(const unsigned char* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  template <typename T>
  static void store(unsigned char* p, T v) {
    std::memcpy(p, &v, sizeof v);
  }
  std::vector<unsigned char> pattern() const {
    std::vector<unsigned char> p(dtype_size(dtype_), 0xa5);
    if (dtype_ == DType::F32 || dtype_ == DType::BF16 || dtype_ == DType::F64) {
      // Sign 0, exponent all ones, a non-zero mantissa: a quiet NaN whose payload no arithmetic produces.
      p.back() = 0x7f;
      p[p.size() - 2] = dtype_ == DType::F64 ? 0xf5 : 0xa5 | 0x80;
    }
    return p;
  }

  std::vector<unsigned char> bytes_;
  DType dtype_ = DType::F32;
  Shape shape_;
  bool present_ = false;
};

using Bufs = std::vector<Buf>;

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

std::string kname(Device d, DType t) { return str(d == Device::CPU ? "cpu" : "cuda", "/", dtype_name(t)); }

// ---- one line per (op, check) --------------------------------------------------------------------------------

struct Reporter {
  std::FILE* out;
  CheckSummary sum;
  void line(const std::string& op, const std::string& check, const std::string& result) {
    if (!out) return;  // a rank other than 0 under mpirun: counts, prints nothing
    std::fprintf(out, "%-20s %-30s %s\n", op.c_str(), check.c_str(), result.c_str());
    std::fflush(out);
  }
  void ok(const std::string& op, const std::string& check, const std::string& numbers) {
    ++sum.ok;
    line(op, check, numbers.empty() ? "ok" : "ok (" + numbers + ")");
  }
  void failed(const std::string& op, const std::string& check, const std::string& numbers) {
    ++sum.failed;
    line(op, check, "FAIL " + numbers);
  }
  void skip(const std::string& op, const std::string& check, const std::string& reason) {
    ++sum.skipped;
    line(op, check, "skip " + reason);
  }
  void na(const std::string& op, const std::string& check, const std::string& reason) {
    ++sum.not_applicable;
    line(op, check, "not applicable: " + reason);
  }
};

// ---- running an op on host buffers ---------------------------------------------------------------------------

AqTensor abi_view(const Buf& b) {
  AqTensor v{};
  v.struct_size = sizeof v;
  v.dtype = to_abi(b.dtype());
  v.device = AQ_DEVICE_CPU;
  if (!b.present()) return v;  // data NULL: absent
  v.data = const_cast<unsigned char*>(b.body());
  v.ndim = static_cast<int32_t>(b.shape().size());
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = b.shape()[static_cast<size_t>(i)];
    v.strides[i] = stride;
    stride *= v.shape[i];
  }
  return v;
}

struct Op {
  const OpDef& def;
  const BuiltinAdapter* ad;  // null for a plugin op
  ProbeInputs probe;
  std::mt19937_64 rng;

  size_t n_in() const { return def.inputs.size(); }
  bool input_present(size_t i) const { return probe.absent.empty() || !probe.absent[i]; }
  bool differentiable_input(size_t i) const { return !(def.inputs[i].flags & AQ_TENSOR_NO_GRAD) && input_present(i); }
  bool differentiable_output(size_t j) const { return !(def.outputs[j].flags & AQ_TENSOR_NO_GRAD); }
  bool accumulates(size_t i) const { return def.inputs[i].flags & AQ_TENSOR_GRAD_ACCUMULATES; }
  // Built-in parameter gradients are in master precision (what the typed kernels write); a plugin's gradient has
  // its input's dtype (op_abi.h).
  DType grad_dtype(size_t i, DType kdt) const {
    if (ad && (def.inputs[i].flags & AQ_TENSOR_PARAM)) return spec_dtype(AQ_DTYPE_KERNEL_MASTER, kdt);
    return spec_dtype(def.inputs[i].dtype, kdt);
  }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

  // Fresh random inputs of the probe's shapes: floats in [-1, 1), integers in [0, int_high).
  Bufs inputs(DType kdt) {
    Bufs in;
    for (size_t i = 0; i < n_in(); ++i) {
      if (!input_present(i)) {
        in.emplace_back();
        continue;
      }
      const DType t = spec_dtype(def.inputs[i].dtype, kdt);
      Buf b(t, probe.inputs[i]);
      const bool integer = t == DType::I32 || t == DType::U16;
      const int64_t high = probe.int_high.empty() || probe.int_high[i] == 0 ? 5 : probe.int_high[i];
      for (int64_t k = 0; k < b.numel(); ++k)
        b.set(k, integer ? static_cast<double>(std::uniform_int_distribution<int64_t>(0, high - 1)(rng))
                         : uniform(-1.0, 1.0));
      in.push_back(std::move(b));
    }
    return in;
  }
  Buf random_like(DType t, const Shape& s) {
    Buf b(t, s);
    for (int64_t k = 0; k < b.numel(); ++k) b.set(k, uniform(-1.0, 1.0));
    return b;
  }

  // Outputs sized by the shape function, poisoned, then the forward kernel.
  Bufs forward(DType kdt, const Bufs& in, const std::vector<AttrValue>& attrs) const {
    std::vector<Tensor> tin;
    for (const Buf& b : in) tin.push_back(b.view());
    const ShapeResult sr = OpRegistry::instance().infer(def.name, kdt, tin, attrs);
    Bufs out;
    std::vector<Tensor> tout;
    for (size_t j = 0; j < sr.shapes.size(); ++j) {
      out.emplace_back(sr.dtypes[j], sr.shapes[j]);
      out.back().poison();
    }
    for (const Buf& b : out) tout.push_back(b.view());
    OpRegistry::instance().forward(def.name, tin, tout, attrs);
    return out;
  }

  // grads: one per input (absent where none is wanted), as the caller initialised them.
  void backward(const Bufs& in, const Bufs& out, const Bufs& dout, const Bufs& grads,
                const std::vector<AttrValue>& attrs) const {
    std::vector<Tensor> saved, tdout, tgrad;
    for (int32_t s : def.saved)
      saved.push_back(static_cast<size_t>(s) < n_in() ? in[static_cast<size_t>(s)].view()
                                                      : out[static_cast<size_t>(s) - n_in()].view());
    for (const Buf& b : dout) tdout.push_back(b.view());
    for (const Buf& b : grads) tgrad.push_back(b.view());
    OpRegistry::instance().backward(def.name, saved, tdout, tgrad, attrs);
  }

  // Random output gradients r (absent for non-differentiable outputs): the projection L = Σ r·y.
  Bufs projection(const Bufs& out) {
    Bufs r;
    for (size_t j = 0; j < out.size(); ++j)
      r.push_back(differentiable_output(j) ? random_like(out[j].dtype(), out[j].shape()) : Buf());
    return r;
  }

  // Gradient buffers for `in`: accumulating ones start at random values (returned in `base`), the others poisoned
  // so an element the kernel does not write shows as NaN.
  Bufs grad_buffers(DType kdt, const Bufs& in, Bufs* base, bool zero = false) {
    Bufs g;
    for (size_t i = 0; i < n_in(); ++i) {
      if (!differentiable_input(i)) {
        g.emplace_back();
        if (base) base->emplace_back();
        continue;
      }
      Buf b(grad_dtype(i, kdt), in[i].shape());  // zero-filled
      if (!zero && accumulates(i))
        for (int64_t k = 0; k < b.numel(); ++k) b.set(k, uniform(-1.0, 1.0));
      else if (!zero)
        b.poison();
      if (base) base->push_back(b);
      g.push_back(std::move(b));
    }
    return g;
  }

  bool has_generic_backward(Device dev, DType t) const {
    const KernelEntry* k = def.kernel(dev, t);
    return def.has_backward && k && k->backward;
  }
  bool fused_backward() const { return def.has_backward && ad && ad->fused; }

  // The fused backward (BuiltinAdapter::fused): outputs sized by the shape function and poisoned, `grads` (one
  // per input, initialised by the caller) written by the same call. The host's call path has no such form, so
  // the kernel arguments are laid out here as OpRegistry::forward lays them out.
  Bufs fused(DType kdt, const Bufs& in, const Bufs& grads, const std::vector<AttrValue>& attrs) const {
    std::vector<Tensor> tin;
    for (const Buf& b : in) tin.push_back(b.view());
    const ShapeResult sr = OpRegistry::instance().infer(def.name, kdt, tin, attrs);
    Bufs out;
    for (size_t j = 0; j < sr.shapes.size(); ++j) {
      out.emplace_back(sr.dtypes[j], sr.shapes[j]);
      out.back().poison();
    }
    std::vector<AqTensor> vin, vout;
    for (const Buf& b : in) vin.push_back(abi_view(b));
    for (const Buf& b : out) vout.push_back(abi_view(b));
    for (const Buf& b : grads) vout.push_back(abi_view(b));
    std::vector<const AqTensor*> pin, pout;
    for (const AqTensor& v : vin) pin.push_back(&v);
    for (const AqTensor& v : vout) pout.push_back(&v);
    std::vector<AqAttrValue> av;
    std::vector<const AqAttrValue*> pav;
    for (const AttrValue& a : attrs) av.push_back({sizeof(AqAttrValue), a.type, a.i, a.f});
    for (const AqAttrValue& a : av) pav.push_back(&a);
    std::vector<unsigned char> ws(sr.workspace_bytes);
    AqKernelArgs args{};
    args.struct_size = sizeof args;
    args.device = AQ_DEVICE_CPU;
    args.dtype = to_abi(kdt);
    args.inputs = pin.data();
    args.n_inputs = static_cast<int32_t>(pin.size());
    args.outputs = pout.data();
    args.n_outputs = static_cast<int32_t>(pout.size());
    args.attrs = pav.data();
    args.n_attrs = static_cast<int32_t>(pav.size());
    args.workspace = ws.empty() ? nullptr : ws.data();
    args.workspace_bytes = sr.workspace_bytes;
    AqError err{};
    err.struct_size = sizeof err;
    const AqStatus st = ad->fused(nullptr, &args, &err);
    AQ_CHECK(st == AQ_STATUS_OK, def.name, " fused backward failed: ", err.message);
    return out;
  }
};

double projection_value(const Bufs& out, const Bufs& r) {
  double L = 0;
  for (size_t j = 0; j < out.size(); ++j)
    if (r[j].present())
      for (int64_t k = 0; k < out[j].numel(); ++k) L += r[j].get(k) * out[j].get(k);
  return L;
}

// The CPU dtype the float64 reference checks run in: F64 when the op has that kernel, else F32.
std::optional<DType> reference_dtype(const OpDef& def) {
  if (def.kernel(Device::CPU, DType::F64)) return DType::F64;
  if (def.kernel(Device::CPU, DType::F32)) return DType::F32;
  return std::nullopt;
}

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
      const Bufs in_dev_t = convert(op.inputs(*ref), *ref, k.dtype);
      const Bufs in_ref = convert(in_dev_t, k.dtype, *ref);
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
  const bool with_backward = op.has_generic_backward(Device::CPU, *kdt);
  Bufs dout, grads;
  if (with_backward) {
    dout = op.projection(out);
    grads = op.grad_buffers(*kdt, in, nullptr, true);
    op.backward(in, out, dout, grads, op.probe.attrs);
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
    // Output gradients: S(d) outputs get their slice of the whole gradient, B and P outputs the whole of it.
    Bufs sdout;
    for (size_t j = 0; j < out.size(); ++j)
      sdout.push_back(shard_of(dout[j], g_out[j].pl,
                               rule.outputs[j] == AQ_SBP_PARTIAL_SUM ? AQ_SBP_BROADCAST : rule.outputs[j], nullptr));
    Bufs sgrad;
    for (size_t i = 0; i < in.size(); ++i)
      sgrad.push_back(op.differentiable_input(i) && sin[i].present() ? Buf(op.grad_dtype(i, *kdt), sin[i].shape())
                                                                     : Buf());
    op.backward(sin, sout, sdout, sgrad, attrs);
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

CheckSummary check_ops(const CheckOptions& options, std::FILE* out) {
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
